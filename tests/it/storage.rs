//! Storage on both engines: the same tests on SQLite and PostgreSQL.

use crate::support::postgres;
use brobygger::config::{DatabaseConfig, DatabaseUrl};
use brobygger::manifest::AcceptedSerial;
use brobygger::storage::{self, Database};

async fn manifest_state_rules(db: &Database) {
    assert_eq!(storage::load_accepted_manifest(db).await.unwrap(), None);
    let a = AcceptedSerial {
        serial: 3,
        content_hash: [1; 32],
    };
    storage::store_accepted_manifest(db, a).await.unwrap();
    assert_eq!(storage::load_accepted_manifest(db).await.unwrap(), Some(a));
    // Storing the same again is fine; lower, or same serial with other content, is refused.
    storage::store_accepted_manifest(db, a).await.unwrap();
    assert!(
        storage::store_accepted_manifest(
            db,
            AcceptedSerial {
                serial: 2,
                content_hash: [1; 32]
            }
        )
        .await
        .is_err()
    );
    assert!(
        storage::store_accepted_manifest(
            db,
            AcceptedSerial {
                serial: 3,
                content_hash: [2; 32]
            }
        )
        .await
        .is_err()
    );
    assert_eq!(storage::load_accepted_manifest(db).await.unwrap(), Some(a));
    let b = AcceptedSerial {
        serial: 4,
        content_hash: [2; 32],
    };
    storage::store_accepted_manifest(db, b).await.unwrap();
    assert_eq!(storage::load_accepted_manifest(db).await.unwrap(), Some(b));
}

fn config(url: DatabaseUrl) -> DatabaseConfig {
    DatabaseConfig {
        url,
        max_connections: 4,
    }
}

#[tokio::test]
async fn storage_on_sqlite_migrates_idempotently_is_durable_and_keeps_manifest_state() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(DatabaseUrl::Sqlite(dir.path().join("nested/node.db")));
    let db = Database::open(&cfg).await.unwrap();
    assert_eq!(db.engine(), "sqlite");
    assert_eq!(
        db.sqlite_synchronous().await.unwrap(),
        Some(2),
        "synchronous must be FULL"
    );
    assert_eq!(
        db.sqlite_journal_mode().await.unwrap().as_deref(),
        Some("wal")
    );
    manifest_state_rules(&db).await;
    db.close().await;
    // Reopening applies no migration twice and keeps the data.
    let db = Database::open(&cfg).await.unwrap();
    assert_eq!(
        storage::load_accepted_manifest(&db)
            .await
            .unwrap()
            .map(|a| a.serial),
        Some(4)
    );
    db.close().await;
}

#[tokio::test]
async fn storage_on_postgres_migrates_idempotently_and_keeps_manifest_state() {
    let test_db = postgres::fresh_database().await;
    println!("engine: {}", test_db.engine_label());
    let cfg = config(DatabaseUrl::Postgres(test_db.url.clone()));
    let db = Database::open(&cfg).await.unwrap();
    assert_eq!(db.engine(), "postgres");
    manifest_state_rules(&db).await;
    db.close().await;
    // Two replicas starting at once both migrate safely (the advisory lock serialises them).
    let (a, b) = tokio::join!(Database::open(&cfg), Database::open(&cfg));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        storage::load_accepted_manifest(&a)
            .await
            .unwrap()
            .map(|x| x.serial),
        Some(4)
    );
    a.close().await;
    b.close().await;
}

/// Puts a queued outbox row straight into the table (the write path is tested elsewhere).
async fn queue_row(db: &Database, id: &str, recipient: &str, message_type: &str, audit_idx: i64) {
    let sql = "INSERT INTO outbox (message_id, recipient, message_type, consent_id, priority, \
               audit_idx, envelope, status, next_attempt_at, created_at, updated_at) \
               VALUES ($1, $2, $3, 'c', $4, $5, $6, 'queued', $7, $7, $7)";
    let priority = i32::from(message_type != "consent.withdrawn");
    let at = "2026-01-01T00:00:00.000000Z";
    match db {
        Database::Sqlite(pool) => {
            sqlx::query(sql)
                .bind(id)
                .bind(recipient)
                .bind(message_type)
                .bind(priority)
                .bind(audit_idx)
                .bind(id.as_bytes())
                .bind(at)
                .execute(pool)
                .await
                .unwrap();
        }
        Database::Postgres(pool) => {
            sqlx::query(sql)
                .bind(id)
                .bind(recipient)
                .bind(message_type)
                .bind(priority)
                .bind(audit_idx)
                .bind(id.as_bytes())
                .bind(at)
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

async fn claims_follow_each_peers_queue_and_keep_data_behind_its_notice(db: &Database) {
    let club: brobygger::domain::OrgId = "red-barnet".parse().unwrap();
    let other: brobygger::domain::OrgId = "other-org".parse().unwrap();
    queue_row(db, "d1", "red-barnet", "activity-summary", 1).await;
    queue_row(db, "grant", "red-barnet", "consent.granted", 2).await;
    queue_row(db, "d2", "red-barnet", "activity-summary", 3).await;
    queue_row(db, "x", "other-org", "referral", 4).await;
    let now = time::macros::datetime!(2026-01-02 00:00 UTC);
    let lease = now + time::Duration::minutes(1);
    let claim = |peer: &brobygger::domain::OrgId, scope| {
        let peer = peer.clone();
        async move {
            storage::claim_due(db, now, lease, &peer, 10, scope)
                .await
                .unwrap()
                .into_iter()
                .map(|m| (m.message_id, m.is_notice))
                .collect::<Vec<_>>()
        }
    };
    // Beside a batch in flight, only data accepted before the first queued notice may go.
    assert_eq!(
        claim(&club, storage::ClaimScope::DataBeforeNotices).await,
        vec![("d1".to_owned(), false)]
    );
    // Alone, the notice goes first of what is left, then the data after it; the other peer's
    // queue is its own.
    assert_eq!(
        claim(&club, storage::ClaimScope::Any).await,
        vec![("grant".to_owned(), true), ("d2".to_owned(), false)]
    );
    assert_eq!(
        claim(&other, storage::ClaimScope::Any).await,
        vec![("x".to_owned(), false)]
    );
    // Everything is claimed under a live lease now.
    assert!(claim(&club, storage::ClaimScope::Any).await.is_empty());
    // A grant in flight (claimed, here by another replica) holds back what was accepted after
    // it; so does a grant waiting for its retry, but not what came before it.
    queue_row(db, "d3", "red-barnet", "activity-summary", 5).await;
    assert!(claim(&club, storage::ClaimScope::Any).await.is_empty());
    execute(
        db,
        "UPDATE outbox SET status = 'delivered' WHERE message_id IN ('d1', 'grant', 'd2')",
    )
    .await;
    queue_row(db, "grant2", "red-barnet", "consent.granted", 6).await;
    queue_row(db, "d4", "red-barnet", "activity-summary", 7).await;
    execute(db, "UPDATE outbox SET next_attempt_at = '2026-02-01T00:00:00.000000Z' WHERE message_id = 'grant2'").await;
    assert_eq!(
        claim(&club, storage::ClaimScope::Any).await,
        vec![("d3".to_owned(), false)]
    );
    // A notice waiting for its retry cannot be claimed now; a queued withdrawal can, and then
    // delivery opens no second lane for the peer until it has gone.
    assert!(!storage::has_claimable_notice(db, now, &club).await.unwrap());
    queue_row(db, "withdrawal", "red-barnet", "consent.withdrawn", 8).await;
    assert!(storage::has_claimable_notice(db, now, &club).await.unwrap());
    assert!(
        !storage::has_claimable_notice(db, now, &other)
            .await
            .unwrap()
    );
}

async fn execute(db: &Database, sql: &'static str) {
    match db {
        Database::Sqlite(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
        Database::Postgres(pool) => {
            sqlx::query(sql).execute(pool).await.unwrap();
        }
    }
}

#[tokio::test]
async fn claims_follow_each_peers_queue_and_keep_data_behind_its_notice_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&config(DatabaseUrl::Sqlite(dir.path().join("node.db"))))
        .await
        .unwrap();
    claims_follow_each_peers_queue_and_keep_data_behind_its_notice(&db).await;
    db.close().await;
}

#[tokio::test]
async fn claims_follow_each_peers_queue_and_keep_data_behind_its_notice_on_postgres() {
    let test_db = postgres::fresh_database().await;
    let db = Database::open(&config(DatabaseUrl::Postgres(test_db.url.clone())))
        .await
        .unwrap();
    claims_follow_each_peers_queue_and_keep_data_behind_its_notice(&db).await;
    db.close().await;
}

/// Migration 10 rebuilds SQLite's outbox (its status check without an `IN` list): a database
/// migrated to 9 with queued and delivered rows keeps every row, its indexes and its check.
#[tokio::test]
async fn the_outbox_rebuild_keeps_every_row_its_indexes_and_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.db");
    {
        let before = rusqlite::Connection::open(&file).unwrap();
        before
            .execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
                 checksum TEXT NOT NULL, applied_at TEXT NOT NULL)",
            )
            .unwrap();
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(&migrations)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        for (version, path) in (1..=9).zip(&files) {
            let sql = std::fs::read_to_string(path).unwrap();
            before.execute_batch(&sql).unwrap();
            let checksum = hex::encode(ring::digest::digest(&ring::digest::SHA256, sql.as_bytes()));
            before
                .execute(
                    "INSERT INTO schema_migrations VALUES (?1, 'before', ?2, 'then')",
                    (version, checksum),
                )
                .unwrap();
        }
        for (id, status) in [("a", "queued"), ("b", "delivered"), ("c", "cancelled")] {
            before
                .execute(
                    "INSERT INTO outbox (message_id, recipient, message_type, consent_id, \
                     priority, audit_idx, envelope, status, next_attempt_at, created_at, \
                     updated_at) VALUES (?1, 'red-barnet', 'activity-summary', 'k', 1, 7, \
                     x'7b7d', ?2, 't', 't', 't')",
                    (id, status),
                )
                .unwrap();
        }
    }
    let db = Database::open(&config(DatabaseUrl::Sqlite(file.clone())))
        .await
        .unwrap();
    db.close().await;
    let after = rusqlite::Connection::open(&file).unwrap();
    let rows: Vec<(String, String, Vec<u8>)> = after
        .prepare("SELECT message_id, status, envelope FROM outbox ORDER BY message_id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [
            ("a".into(), "queued".into(), b"{}".to_vec()),
            ("b".into(), "delivered".into(), b"{}".to_vec()),
            ("c".into(), "cancelled".into(), b"{}".to_vec()),
        ]
    );
    let indexes: Vec<String> = after
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        indexes,
        [
            "outbox_by_consent",
            "outbox_due_by_peer",
            "outbox_queued_notices",
            "sqlite_autoindex_outbox_1"
        ]
    );
    let bad = after.execute(
        "UPDATE outbox SET status = 'lost' WHERE message_id = 'a'",
        [],
    );
    assert!(bad.is_err(), "the status check must still hold");
    let version: i64 = after
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(version, 10);
}
