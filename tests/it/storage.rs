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
