//! The audit log's write path: group commit, receipts, replicas, restore and fail-closed.

use crate::support::{self, Engine, TestFederation, TestPki, postgres};
use brobygger::audit::checkpoint::Checkpoint;
use brobygger::audit::entry::{self, AuditRecord, Decision};
use brobygger::audit::merkle;
use brobygger::config::{DatabaseConfig, DatabaseUrl};
use brobygger::domain::OrgKind;
use brobygger::node::Clock;
use brobygger::signed_note::{NoteSigner, generate_ed25519_pkcs8};
use brobygger::storage::{self, Database};
use brobygger::write_path::{AuditReceipt, Writer};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const ORIGIN: &str = "brobygger.test/test-org/audit";

fn signer() -> Arc<NoteSigner> {
    Arc::new(NoteSigner::from_pkcs8(ORIGIN, &generate_ed25519_pkcs8().unwrap()).unwrap())
}

fn record(n: usize) -> AuditRecord {
    AuditRecord {
        time: "2026-11-22T12:00:00.000Z".into(),
        action: "test.append".into(),
        decision: Some(Decision::Permit),
        reason: Some(format!("n{n}")),
        ..AuditRecord::default()
    }
}

async fn open(
    engine: Engine,
) -> (
    Database,
    DatabaseConfig,
    Option<postgres::TestDatabase>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let (url, pg) = match engine {
        Engine::Sqlite => (DatabaseUrl::Sqlite(dir.path().join("audit.db")), None),
        Engine::Postgres => {
            let db = postgres::fresh_database().await;
            (DatabaseUrl::Postgres(db.url.clone()), Some(db))
        }
    };
    let config = DatabaseConfig {
        url,
        max_connections: 4,
    };
    (Database::open(&config).await.unwrap(), config, pg, dir)
}

/// Every receipt's entry is in the log, covered by its checkpoint, with a valid inclusion proof.
async fn assert_receipts_prove_inclusion(
    db: &Database,
    receipts: &[AuditReceipt],
    key: &NoteSigner,
) {
    let entries = storage::audit_entries(db).await.unwrap();
    let leaves: Vec<merkle::Hash> = entries
        .iter()
        .map(|e| merkle::leaf_hash(&e.entry))
        .collect();
    for (position, stored) in entries.iter().enumerate() {
        assert_eq!(stored.idx, position as u64);
        assert_eq!(entry::decode(&stored.entry).unwrap().idx, position as u64);
    }
    for receipt in receipts {
        let checkpoint = Checkpoint::open(&receipt.checkpoint.note, key.verifier_key()).unwrap();
        assert_eq!(checkpoint.head, receipt.checkpoint.head);
        let size = checkpoint.head.size as usize;
        assert!(receipt.index < checkpoint.head.size);
        let proof = merkle::inclusion_proof(&leaves[..size], receipt.index as usize).unwrap();
        assert!(merkle::verify_inclusion(
            receipt.index,
            checkpoint.head.size,
            &leaves[receipt.index as usize],
            &proof,
            &checkpoint.head.root
        ));
    }
}

async fn group_commit(engine: Engine) {
    let (db, _config, _pg, dir) = open(engine).await;
    let key = signer();
    let writer = Writer::spawn(
        db.clone(),
        key.clone(),
        1,
        dir.path().join("published"),
        None,
    );
    let tasks: Vec<_> = (0..400)
        .map(|n| {
            let path = writer.path.clone();
            tokio::spawn(async move { path.append(record(n)).await.unwrap() })
        })
        .collect();
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.push(task.await.unwrap());
    }
    let indexes: BTreeSet<u64> = receipts.iter().map(|r| r.index).collect();
    assert_eq!(indexes, (0..400).collect());
    // An empty request is answered at once and commits nothing.
    assert!(
        writer
            .path
            .append_many(Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
    let commits: BTreeSet<u64> = receipts.iter().map(|r| r.checkpoint.head.size).collect();
    println!(
        "{engine:?}: 400 concurrent appends in {} group commits",
        commits.len()
    );
    assert!(commits.len() < 400, "appends were not grouped");
    // The latest checkpoint is kept with the tree; earlier ones at most about once a second.
    let kept = storage::audit_checkpoints(&db).await.unwrap();
    assert!(kept.len() <= commits.len());
    let latest = storage::latest_audit_checkpoint(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.last(), Some(&latest));
    assert_eq!(
        Checkpoint::open(&latest, key.verifier_key())
            .unwrap()
            .head
            .size,
        400
    );
    assert_receipts_prove_inclusion(&db, &receipts, &key).await;
    writer.stop().await;
    // At shutdown the latest checkpoint is published to the state file.
    let published = std::fs::read_to_string(dir.path().join("published")).unwrap();
    let published = Checkpoint::open(&published, key.verifier_key()).unwrap();
    assert_eq!(published.head.size, 400);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_group_commit_on_sqlite_answers_every_waiter_with_a_provable_receipt() {
    group_commit(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_group_commit_on_postgres_answers_every_waiter_with_a_provable_receipt() {
    group_commit(Engine::Postgres).await;
}

/// On SQLite the writer commits through its own connection at `synchronous=FULL` and leaves
/// the WAL to the checkpointer thread: the database file itself grows while the node runs,
/// though no commit checkpoints (`wal_autocheckpoint=0` on the writer) and nobody else writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_are_full_and_the_checkpointer_copies_the_wal_back() {
    let (db, config, _pg, dir) = open(Engine::Sqlite).await;
    let DatabaseUrl::Sqlite(file) = &config.url else {
        unreachable!("an SQLite test database")
    };
    let size = || std::fs::metadata(file).unwrap().len();
    let before = size();
    let writer = Writer::spawn(db.clone(), signer(), 1, dir.path().join("published"), None);
    for chunk in 0..20 {
        let records = (0..100).map(|n| record(chunk * 100 + n)).collect();
        writer.path.append_many(records).await.unwrap();
    }
    assert_eq!(
        writer.path.stats().sqlite_synchronous(),
        Some(2),
        "the writer's own connection must commit at synchronous=FULL"
    );
    support::wait_until(
        "the checkpointer to copy the WAL into the database file",
        Duration::from_secs(10),
        || async { size() > before + 200 * 1024 },
    )
    .await;
    assert_eq!(storage::audit_entries(&db).await.unwrap().len(), 2_000);
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_append_concurrently_into_one_log() {
    let (db_a, config, _pg, dir) = open(Engine::Postgres).await;
    let db_b = Database::open(&config).await.unwrap();
    let key = signer();
    let a = Writer::spawn(db_a.clone(), key.clone(), 1, dir.path().join("a"), None);
    let b = Writer::spawn(db_b.clone(), key.clone(), 1, dir.path().join("b"), None);
    let mut tasks = Vec::new();
    for n in 0..300 {
        for writer in [&a, &b] {
            let path = writer.path.clone();
            tasks.push(tokio::spawn(async move {
                path.append(record(n)).await.unwrap()
            }));
        }
    }
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.push(task.await.unwrap());
    }
    let indexes: BTreeSet<u64> = receipts.iter().map(|r| r.index).collect();
    assert_eq!(
        indexes,
        (0..600).collect(),
        "every index exactly once across replicas"
    );
    // Every checkpoint either replica signed is a prefix of the one log.
    let entries = storage::audit_entries(&db_a).await.unwrap();
    let leaves: Vec<merkle::Hash> = entries
        .iter()
        .map(|e| merkle::leaf_hash(&e.entry))
        .collect();
    for note in storage::audit_checkpoints(&db_a).await.unwrap() {
        let checkpoint = Checkpoint::open(&note, key.verifier_key()).unwrap();
        assert_eq!(
            merkle::root(&leaves[..checkpoint.head.size as usize]),
            checkpoint.head.root
        );
    }
    assert_receipts_prove_inclusion(&db_a, &receipts, &key).await;
    a.stop().await;
    b.stop().await;
    // And the one log verifies as `audit verify` checks it.
    let snapshot = storage::audit_snapshot(&db_a).await.unwrap();
    let bytes: Vec<&[u8]> = snapshot
        .entries
        .iter()
        .map(|e| e.entry.as_slice())
        .collect();
    let notes: Vec<&str> = snapshot.checkpoints.iter().map(String::as_str).collect();
    let verified =
        brobygger::audit::verify::verify_log(&bytes, None, &notes, key.verifier_key(), None)
            .unwrap();
    assert_eq!(verified.size, 600);
}

#[tokio::test]
async fn pings_and_refused_tokens_leave_audit_entries() {
    let fed = TestFederation::start(
        &[
            ("herning-kommune", OrgKind::Municipality),
            ("red-barnet", OrgKind::Ngo),
        ],
        Engine::Sqlite,
    )
    .await;
    let herning = &fed.node("herning-kommune").state;
    let before = storage::audit_entries(&herning.db).await.unwrap().len();
    // red-barnet pings herning-kommune: herning records the permitted ping.
    brobygger::federation::ping_peer(
        &fed.node("red-barnet").state,
        &"herning-kommune".parse().unwrap(),
    )
    .await
    .unwrap();
    // A request without a token: refused and recorded.
    let response = fed
        .local_client()
        .get(fed.local_url("herning-kommune", "/api/v1/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let entries = storage::audit_entries(&herning.db).await.unwrap();
    let new: Vec<_> = entries[before..]
        .iter()
        .map(|e| entry::decode(&e.entry).unwrap().record)
        .collect();
    assert_eq!(new.len(), 2, "{new:?}");
    assert_eq!(new[0].action, "federation.ping");
    assert_eq!(new[0].peer.as_deref(), Some("red-barnet"));
    assert_eq!(new[0].decision, Some(Decision::Permit));
    assert_eq!(new[1].action, "local.authentication");
    assert_eq!(new[1].decision, Some(Decision::Deny));
    assert_eq!(new[1].reason.as_deref(), Some("unauthenticated"));
    fed.stop().await;
}

#[tokio::test]
async fn a_restored_older_database_copy_is_refused_and_the_node_says_why() {
    support::init_tracing();
    let pki = TestPki::new(&[("red-barnet", OrgKind::Ngo)]);
    let db_file = pki.path().join("data/red-barnet/brobygger.db");
    let append = |node: &brobygger::node::RunningNode, n: usize| {
        let path = node.state.audit.clone();
        async move {
            for i in 0..n {
                path.append(record(i)).await.unwrap();
            }
        }
    };
    let node = brobygger::node::start(pki.config("red-barnet", &[]), Clock::system())
        .await
        .unwrap();
    append(&node, 5).await;
    node.stop().await;
    let backup = pki.path().join("backup.db");
    std::fs::copy(&db_file, &backup).unwrap();

    let node = brobygger::node::start(pki.config("red-barnet", &[]), Clock::system())
        .await
        .unwrap();
    append(&node, 5).await;
    node.stop().await;

    // The operator restores yesterday's copy.
    std::fs::copy(&backup, &db_file).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(
            pki.path()
                .join(format!("data/red-barnet/brobygger.db{suffix}")),
        );
    }
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(support::binary())
            .args([
                "serve",
                "--config",
                pki.config_path("red-barnet").to_str().unwrap(),
            ])
            .env("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0")
            .env("BROBYGGER_LOCAL_API__LISTEN", "127.0.0.1:0")
            .output(),
    )
    .await
    .expect("serve did not refuse")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("has 5 entries"), "{stderr}");
    assert!(
        stderr.contains("published a signed checkpoint of size 10"),
        "{stderr}"
    );
    assert!(stderr.contains("restored from an older copy"), "{stderr}");
}

#[tokio::test]
async fn with_the_database_made_read_only_requests_needing_an_audit_entry_are_refused() {
    let fed = TestFederation::start(
        &[
            ("herning-kommune", OrgKind::Municipality),
            ("red-barnet", OrgKind::Ngo),
        ],
        Engine::Postgres,
    )
    .await;
    let herning = &fed.node("herning-kommune").state;
    let red_barnet = &fed.node("red-barnet").state;
    let target: brobygger::domain::OrgId = "herning-kommune".parse().unwrap();
    brobygger::federation::ping_peer(red_barnet, &target)
        .await
        .unwrap();
    let entries_before = storage::audit_entries(&herning.db).await.unwrap().len();

    // Make herning-kommune's database read-only and drop its connections so new ones pick it up.
    let brobygger::config::DatabaseUrl::Postgres(url) = &herning.config.database.url else {
        panic!("expected PostgreSQL")
    };
    // An administrator's own session, so that every one of the node's sessions is ended.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{name}\" SET default_transaction_read_only = on"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    // The ping now needs an audit entry the node cannot write: refused, never answered as done.
    support::wait_until("the ping is refused", Duration::from_secs(20), || async {
        match brobygger::federation::ping_peer(red_barnet, &target).await {
            Err(brobygger::federation::PeerError::Refused { status, body }) => {
                assert!(status >= 500, "{status}: {body}");
                true
            }
            Err(other) => panic!("{other}"),
            Ok(_) => false,
        }
    })
    .await;
    let response = fed
        .local_client()
        .get(fed.local_url("herning-kommune", "/api/v1/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "a refusal that cannot be audited is a 503"
    );
    // The database itself is up (reads work): the refusals come from the read-only setting,
    // and nothing was written.
    herning.db.ping().await.unwrap();
    let after = storage::audit_entries(&herning.db).await.unwrap().len();
    assert_eq!(after, entries_before);
    fed.stop().await;
}

/// Records, when dropped, how many group commits the writer had made by then.
struct CommitsAtDrop {
    stats: brobygger::write_path::WritePath,
    seen: Arc<std::sync::Mutex<Option<u64>>>,
}

impl Drop for CommitsAtDrop {
    fn drop(&mut self) {
        *self.seen.lock().unwrap() = Some(self.stats.stats().snapshot().0);
    }
}

#[tokio::test]
async fn what_a_caller_holds_lives_until_its_job_commits_even_if_the_caller_is_gone() {
    // A request whose client disconnects is dropped while its job waits in the writer's queue;
    // the job still commits, so the message's in-flight claim must live until then, or a resent
    // copy would be decided a second time.
    let (db, _config, _pg, dir) = open(Engine::Sqlite).await;
    let writer = Writer::spawn(db.clone(), signer(), 1, dir.path().join("published"), None);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let hold = CommitsAtDrop {
        stats: writer.path.clone(),
        seen: seen.clone(),
    };
    let mut call = Box::pin(writer.path.append_decision(
        record(0),
        Vec::new(),
        Some(Box::new(hold)),
    ));
    // One poll queues the job (this test's runtime has one thread, so the writer has not run
    // yet); then the caller is gone.
    let waker = futures_util::task::noop_waker();
    let mut context = std::task::Context::from_waker(&waker);
    assert!(call.as_mut().poll(&mut context).is_pending());
    drop(call);
    assert_eq!(*seen.lock().unwrap(), None, "dropped with its caller");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "never dropped");
        tokio::task::yield_now().await;
    }
    assert_eq!(*seen.lock().unwrap(), Some(1), "dropped after its commit");
    assert_eq!(storage::audit_entries(&db).await.unwrap().len(), 1);
}

/// Under commits without pause the WAL is still reset now and then, so it does not grow
/// without bound: the checkpointer copies it back, and the writer itself checkpoints the last
/// few frames once the WAL is long (only a writer between two commits can complete a
/// checkpoint that its next transaction may start the WAL over from).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_is_reset_under_continuous_commits() {
    let (db, config, _pg, dir) = open(Engine::Sqlite).await;
    let DatabaseUrl::Sqlite(file) = &config.url else {
        unreachable!("an SQLite test database")
    };
    let writer = Writer::spawn(db.clone(), signer(), 1, dir.path().join("published"), None);
    // Readers all the time, as admission's replay lookups are under load: a reader inside a
    // transaction keeps the WAL from being started over.
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (file, reading) = (file.clone(), reading.clone());
            std::thread::spawn(move || {
                let reader = rusqlite::Connection::open(file).unwrap();
                while reading.load(std::sync::atomic::Ordering::Relaxed) {
                    let _: Option<Vec<u8>> = reader
                        .query_row("SELECT entry FROM audit_entries WHERE idx = 1", [], |row| {
                            row.get(0)
                        })
                        .ok();
                }
            })
        })
        .collect();
    // Eight callers that never pause: the writer commits back to back, as under load.
    let callers: Vec<_> = (0..8)
        .map(|caller| {
            let path = writer.path.clone();
            tokio::spawn(async move {
                for chunk in 0..60 {
                    // About a kilobyte an entry, as admission entries and their rows are.
                    let records = (0..100)
                        .map(|n| {
                            let mut record = record(caller * 100_000 + chunk * 100 + n);
                            record.route = Some("r".repeat(1_000));
                            record
                        })
                        .collect();
                    path.append_many(records).await.unwrap();
                }
            })
        })
        .collect();
    let load = tokio::spawn(futures_util::future::join_all(callers));
    // The frames in use, read from the WAL index's header (`mxFrame`, a native-endian u32 at
    // byte 16 of the -shm file) without taking part: a probe that checkpointed would help.
    let mut shm = file.clone().into_os_string();
    shm.push("-shm");
    let wal_frames = || {
        let header = std::fs::read(&shm).unwrap_or_default();
        header
            .get(16..20)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut most = 0;
    while !load.is_finished() {
        most = most.max(wal_frames());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for caller in load.await.unwrap() {
        caller.unwrap();
    }
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    println!("the WAL held at most {most} frames");
    assert!(
        most < 8_192,
        "the WAL grew to {most} frames: it is not being reset"
    );
    writer.stop().await;
}
