//! `audit verify` and `audit verify-export` against tampering, on real SQLite files and on
//! PostgreSQL: each kind of edit makes verification exit 1 naming the first bad index.

use crate::support::{self, Engine, TestPki, postgres};
use brobygger::audit::entry::{AuditRecord, Decision};
use brobygger::domain::OrgKind;
use brobygger::node::Clock;
use brobygger::storage::Database;
use brobygger::write_path::Writer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ORG: &str = "red-barnet";

fn record(n: usize) -> AuditRecord {
    AuditRecord {
        time: "2026-11-22T12:00:00.000Z".into(),
        action: "test.append".into(),
        decision: Some(Decision::Permit),
        reason: Some(format!("n{n:02}")),
        ..AuditRecord::default()
    }
}

/// A node's log of 40 entries in several commits, and the checkpoint of size 20 kept outside.
struct Log {
    pki: TestPki,
    env: Vec<(&'static str, String)>,
    earlier: PathBuf,
    _pg: Option<postgres::TestDatabase>,
}

impl Log {
    async fn build(engine: Engine) -> Log {
        support::init_tracing();
        let pki = TestPki::new(&[(ORG, OrgKind::Ngo)]);
        let mut env = Vec::new();
        let mut pg = None;
        if engine == Engine::Postgres {
            let db = postgres::fresh_database().await;
            env.push(("BROBYGGER_DATABASE__URL", db.url.clone()));
            pg = Some(db);
        }
        let node = brobygger::node::start(pki.config(ORG, &env), Clock::system())
            .await
            .unwrap();
        let audit = node.state.audit.clone();
        let receipts = audit
            .append_many((0..20).map(record).collect())
            .await
            .unwrap();
        let earlier = pki.path().join("earlier.checkpoint");
        std::fs::write(&earlier, &receipts[19].checkpoint.note).unwrap();
        for chunk in (20..40).collect::<Vec<_>>().chunks(7) {
            audit
                .append_many(chunk.iter().copied().map(record).collect())
                .await
                .unwrap();
        }
        node.stop().await;
        Log {
            pki,
            env,
            earlier,
            _pg: pg,
        }
    }

    async fn db(&self) -> Database {
        Database::open(&self.pki.config(ORG, &self.env).database)
            .await
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> (i32, String) {
        let mut command = std::process::Command::new(support::binary());
        command.args(args);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let output = command.output().unwrap();
        let mut text = String::from_utf8_lossy(&output.stdout).to_string();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    }

    fn config(&self) -> String {
        self.pki.config_path(ORG).to_str().unwrap().to_string()
    }

    fn verify(&self) -> (i32, String) {
        self.run(&["audit", "verify", "--config", &self.config()])
    }

    fn verify_against(&self) -> (i32, String) {
        self.run(&[
            "audit",
            "verify",
            "--config",
            &self.config(),
            "--against",
            self.earlier.to_str().unwrap(),
        ])
    }

    fn key(&self) -> String {
        let (code, out) = self.run(&["audit", "key", "--config", &self.config()]);
        assert_eq!(code, 0, "{out}");
        out.trim().to_string()
    }
}

/// Runs one SQL statement with bound blobs on either engine.
async fn exec(db: &Database, sql: &'static str, args: &[Vec<u8>]) {
    match db {
        Database::Sqlite(pool) => {
            let mut q = sqlx::query(sql);
            for a in args {
                q = q.bind(a.clone());
            }
            q.execute(pool).await.unwrap();
        }
        Database::Postgres(pool) => {
            let mut q = sqlx::query(sql);
            for a in args {
                q = q.bind(a.clone());
            }
            q.execute(pool).await.unwrap();
        }
    }
}

async fn entry_bytes(db: &Database, idx: i64) -> Vec<u8> {
    match db {
        Database::Sqlite(pool) => {
            sqlx::query_scalar("SELECT entry FROM audit_entries WHERE idx = $1")
                .bind(idx)
                .fetch_one(pool)
                .await
                .unwrap()
        }
        Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT entry FROM audit_entries WHERE idx = $1")
                .bind(idx)
                .fetch_one(pool)
                .await
                .unwrap()
        }
    }
}

fn assert_fails_at(result: (i32, String), index: u64, what: &str) {
    let (code, out) = result;
    assert_eq!(code, 1, "{what}: {out}");
    assert!(
        out.contains(&format!("entry {index}:")),
        "{what}: expected entry {index} in: {out}"
    );
}

async fn tamper_tests(engine: Engine) {
    // Untouched: exit 0, also against the earlier checkpoint.
    let log = Log::build(engine).await;
    let (code, out) = log.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("40 entries verified"), "{out}");
    let (code, out) = log.verify_against();
    assert_eq!(code, 0, "{out}");

    // One byte of entry 17 changed.
    let db = log.db().await;
    let mut bytes = entry_bytes(&db, 17).await;
    let pos = bytes.windows(3).position(|w| w == b"n17").unwrap();
    bytes[pos + 2] = b'8';
    exec(
        &db,
        "UPDATE audit_entries SET entry = $1 WHERE idx = 17",
        &[bytes],
    )
    .await;
    db.close().await;
    assert_fails_at(log.verify(), 17, "changed byte");

    // Entry 17 deleted.
    let log = Log::build(engine).await;
    let db = log.db().await;
    exec(&db, "DELETE FROM audit_entries WHERE idx = 17", &[]).await;
    db.close().await;
    assert_fails_at(log.verify(), 17, "deleted entry");

    // One entry inserted after the last one.
    let log = Log::build(engine).await;
    let db = log.db().await;
    let forged = brobygger::audit::entry::encode(&record(99), 40, 1).unwrap();
    let leaf = brobygger::audit::merkle::leaf_hash(&forged).to_vec();
    exec(
        &db,
        "INSERT INTO audit_entries (idx, entry, leaf_hash) VALUES (40, $1, $2)",
        &[forged, leaf],
    )
    .await;
    db.close().await;
    assert_fails_at(log.verify(), 40, "inserted entry");

    // Entries 11 and 23 swapped, with their leaf hashes.
    let log = Log::build(engine).await;
    let db = log.db().await;
    let (a, b) = (entry_bytes(&db, 11).await, entry_bytes(&db, 23).await);
    let (la, lb) = (
        brobygger::audit::merkle::leaf_hash(&a).to_vec(),
        brobygger::audit::merkle::leaf_hash(&b).to_vec(),
    );
    exec(
        &db,
        "UPDATE audit_entries SET entry = $1, leaf_hash = $2 WHERE idx = 11",
        &[b, lb],
    )
    .await;
    exec(
        &db,
        "UPDATE audit_entries SET entry = $1, leaf_hash = $2 WHERE idx = 23",
        &[a, la],
    )
    .await;
    db.close().await;
    assert_fails_at(log.verify(), 11, "swapped entries");

    // The tail truncated from 30 on: the latest checkpoint (size 40) still covers it.
    let log = Log::build(engine).await;
    let db = log.db().await;
    exec(&db, "DELETE FROM audit_entries WHERE idx >= 30", &[]).await;
    db.close().await;
    assert_fails_at(log.verify(), 30, "truncated tail");

    // A careful truncation back to the first commit (20 entries), with the tree state's
    // checkpoint set back to that commit's: self-consistent, but shorter than what the node
    // published (the state file beside the signing key).
    let log = Log::build(engine).await;
    let db = log.db().await;
    let first: String = match &db {
        Database::Sqlite(pool) => {
            sqlx::query_scalar("SELECT note FROM audit_checkpoints WHERE size = 20")
                .fetch_one(pool)
                .await
                .unwrap()
        }
        Database::Postgres(pool) => {
            sqlx::query_scalar("SELECT note FROM audit_checkpoints WHERE size = 20")
                .fetch_one(pool)
                .await
                .unwrap()
        }
    };
    exec(&db, "DELETE FROM audit_entries WHERE idx >= 20", &[]).await;
    exec(&db, "DELETE FROM audit_checkpoints WHERE size > 20", &[]).await;
    match &db {
        Database::Sqlite(pool) => {
            sqlx::query("UPDATE audit_tree SET checkpoint = $1")
                .bind(first)
                .execute(pool)
                .await
                .unwrap();
        }
        Database::Postgres(pool) => {
            sqlx::query("UPDATE audit_tree SET checkpoint = $1")
                .bind(first)
                .execute(pool)
                .await
                .unwrap();
        }
    }
    db.close().await;
    assert_fails_at(log.verify(), 20, "truncated tail with its checkpoints");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_on_sqlite_finds_every_kind_of_tampering() {
    tamper_tests(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_on_postgres_finds_every_kind_of_tampering() {
    tamper_tests(Engine::Postgres).await;
}

#[tokio::test]
async fn audit_verify_changes_nothing_and_creates_no_database() {
    let log = Log::build(Engine::Sqlite).await;
    let missing = log.pki.path().join("nowhere/brobygger.db");
    let output = std::process::Command::new(support::binary())
        .args(["audit", "verify", "--config", &log.config()])
        .env(
            "BROBYGGER_DATABASE__URL",
            format!("sqlite://{}", missing.display()),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(!missing.exists(), "audit verify must not create a database");
}

/// The operator rewrites history with the node's own key: self-consistent, so plain verify
/// passes, but not against a checkpoint that left the node earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_rewrite_resigned_with_the_nodes_key_fails_against_an_earlier_checkpoint() {
    let log = Log::build(Engine::Sqlite).await;
    let db = log.db().await;
    exec(&db, "DELETE FROM audit_entries", &[]).await;
    exec(&db, "DELETE FROM audit_checkpoints", &[]).await;
    exec(&db, "DELETE FROM audit_tree", &[]).await;
    let config = log.pki.config(ORG, &[]);
    let signer = Arc::new(brobygger::node::load_signing_key(&config).unwrap());
    let published = brobygger::write_path::published_state_path(&config.audit.signing_key);
    std::fs::remove_file(&published).unwrap();
    let writer = Writer::spawn(db.clone(), signer, 1, published, None);
    let mut rewritten: Vec<AuditRecord> = (0..40).map(record).collect();
    rewritten[5].decision = Some(Decision::Deny);
    writer.path.append_many(rewritten).await.unwrap();
    writer.stop().await;
    db.close().await;

    let (code, out) = log.verify();
    assert_eq!(code, 0, "the rewrite is self-consistent: {out}");
    let (code, out) = log.verify_against();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not extend"), "{out}");
}

fn export(log: &Log) -> PathBuf {
    let out = log.pki.path().join(format!("export-{}", rand_suffix()));
    let (code, text) = log.run(&[
        "audit",
        "export",
        "--config",
        &log.config(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    out
}

fn rand_suffix() -> String {
    brobygger::audit::merkle::leaf_hash(format!("{:?}", std::time::Instant::now()).as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn verify_export(log: &Log, dir: &Path, against: bool) -> (i32, String) {
    let key = log.key();
    let mut args = vec![
        "audit",
        "verify-export",
        dir.to_str().unwrap(),
        "--key",
        key.as_str(),
    ];
    let earlier = log.earlier.to_str().unwrap().to_string();
    if against {
        args.push("--against");
        args.push(&earlier);
    }
    // Offline: no config, no database in the environment.
    let output = std::process::Command::new(support::binary())
        .args(&args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// The entry bundle file holding all 40 entries (one partial bundle).
fn bundle(dir: &Path) -> PathBuf {
    dir.join("tile/entries/000.p/40")
}

/// Splits a bundle into its entries (two-byte big-endian length prefixes).
fn split_bundle(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        out.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    out
}

fn join_bundle(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_export_works_offline_and_finds_tampering() {
    let log = Log::build(Engine::Sqlite).await;
    let dir = export(&log);
    assert!(dir.join("checkpoint").exists());
    let (code, out) = verify_export(&log, &dir, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("40 entries verified"), "{out}");

    let original = split_bundle(&std::fs::read(bundle(&dir)).unwrap());
    assert_eq!(original.len(), 40);
    let cases: Vec<(&str, Vec<Vec<u8>>, u64)> = vec![
        (
            "changed byte",
            {
                let mut e = original.clone();
                let pos = e[17].windows(3).position(|w| w == b"n17").unwrap();
                e[17][pos + 2] = b'8';
                e
            },
            17,
        ),
        (
            "deleted entry",
            {
                let mut e = original.clone();
                e.remove(17);
                e
            },
            17,
        ),
        (
            "swapped entries",
            {
                let mut e = original.clone();
                e.swap(11, 23);
                e
            },
            11,
        ),
        (
            "inserted entry",
            {
                let mut e = original.clone();
                e.insert(17, original[16].clone());
                e
            },
            17,
        ),
        ("truncated tail", original[..30].to_vec(), 30),
    ];
    for (what, entries, index) in cases {
        let copy = export(&log);
        std::fs::write(bundle(&copy), join_bundle(&entries)).unwrap();
        assert_fails_at(verify_export(&log, &copy, false), index, what);
    }
}
