//! Measures the audit write path and the verifier, for BENCHMARKS.md.
//!
//! `cargo run --release --example audit_bench` appends through the group-commit writer on a
//! fresh SQLite file (WAL, synchronous=FULL) and, if `BROBYGGER_TEST_POSTGRES_URL` names a
//! server, on a fresh PostgreSQL database; it reports durable appends per second and the batch
//! sizes the writer reached, then times `verify_log` over 1,000,000 entries. It also measures the
//! disk's fsync latency in the same run, since that bounds how often a commit can happen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use brobygger::audit::checkpoint::{Checkpoint, TreeHead};
use brobygger::audit::entry::{self, AuditRecord, Decision};
use brobygger::audit::{merkle, verify};
use brobygger::config::{DatabaseConfig, DatabaseUrl};
use brobygger::signed_note::{NoteSigner, generate_ed25519_pkcs8};
use brobygger::storage::{self, Database};
use brobygger::write_path::Writer;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ORIGIN: &str = "brobygger.test/bench/audit";

fn record(n: u64) -> AuditRecord {
    AuditRecord {
        time: "2026-11-22T12:00:00.000Z".into(),
        action: "envelope.admit".into(),
        decision: Some(Decision::Permit),
        peer: Some("herning-kommune".into()),
        message_type: Some("activity-summary".into()),
        purpose: Some("smaabornsklub-fremmoede@1".into()),
        consent_hmac: Some(format!("{:064x}", n)),
        subject_hmac: Some(format!("{:064x}", n + 1)),
        envelope_sha256: Some(format!("{:064x}", n + 2)),
        ..AuditRecord::default()
    }
}

/// Appends from `callers` concurrent tasks, each sending `per_call` records per request, for
/// `duration`; returns (appends per second, mean records per commit).
async fn append_load(
    db: Database,
    callers: usize,
    per_call: usize,
    duration: Duration,
) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let signer =
        Arc::new(NoteSigner::from_pkcs8(ORIGIN, &generate_ed25519_pkcs8().unwrap()).unwrap());
    let size_before = storage::audit_tree(&db).await.unwrap().frontier.size();
    let writer = Writer::spawn(db.clone(), signer, 1, dir.path().join("published"), None);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let path = writer.path.clone();
            tokio::spawn(async move {
                let mut n = c as u64 * 1_000_000_000;
                while Instant::now() < deadline {
                    let batch: Vec<AuditRecord> =
                        (0..per_call).map(|i| record(n + i as u64)).collect();
                    n += per_call as u64;
                    path.append_many(batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (commits, records) = writer.path.stats().snapshot();
    writer.stop().await;
    let appended = storage::audit_tree(&db).await.unwrap().frontier.size() - size_before;
    assert_eq!(appended, records, "every counted record is in the log");
    (
        appended as f64 / elapsed,
        appended as f64 / commits.max(1) as f64,
    )
}

/// fsync latency of the disk under the temp directory: p50 and p99 over 200 write+fsync.
fn fsync_latency() -> (f64, f64) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("probe")).unwrap();
    let mut samples = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&[0u8; 4096]).unwrap();
        file.sync_data().unwrap();
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (samples[100], samples[197])
}

fn verify_million() -> f64 {
    let signer = NoteSigner::from_pkcs8(ORIGIN, &generate_ed25519_pkcs8().unwrap()).unwrap();
    let n = 1_000_000u64;
    let entries: Vec<Vec<u8>> = (0..n)
        .map(|i| entry::encode(&record(i), i, 1).unwrap())
        .collect();
    let mut frontier = merkle::Frontier::new();
    let mut notes = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        frontier.push(merkle::leaf_hash(e));
        // One checkpoint per 1,000 entries, as a busy writer's group commits would sign.
        if (i + 1) % 1000 == 0 {
            let head = TreeHead {
                size: frontier.size(),
                root: frontier.root(),
            };
            notes.push(
                Checkpoint {
                    origin: ORIGIN.into(),
                    head,
                }
                .sign(&signer)
                .unwrap(),
            );
        }
    }
    let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    // `audit verify` also compares the stored leaf hashes, as here.
    let stored: Vec<merkle::Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
    let mean = entries.iter().map(Vec::len).sum::<usize>() / entries.len();
    println!("verify: 1,000,000 entries of {mean} bytes on average");
    let note_refs: Vec<&str> = notes.iter().map(String::as_str).collect();
    let start = Instant::now();
    let verified = verify::verify_log(
        &refs,
        Some(&stored),
        &note_refs,
        signer.verifier_key(),
        None,
    )
    .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(verified.size, n);
    elapsed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(seconds);
    let (fsync_p50, fsync_p99) = fsync_latency();
    println!("fsync (4 KiB write + fdatasync): p50 {fsync_p50:.2} ms, p99 {fsync_p99:.2} ms");

    let dir = tempfile::tempdir().unwrap();
    for (callers, per_call) in [(1, 1), (64, 1), (256, 1), (64, 100)] {
        let config = DatabaseConfig {
            url: DatabaseUrl::Sqlite(dir.path().join(format!("bench-{callers}-{per_call}.db"))),
            max_connections: 4,
        };
        let db = Database::open(&config).await.unwrap();
        assert_eq!(db.sqlite_synchronous().await.unwrap(), Some(2));
        let (rate, batch) = append_load(db.clone(), callers, per_call, duration).await;
        println!(
            "sqlite   callers {callers:>3} x {per_call:>3} records/request: {rate:>9.0} durable appends/s, {batch:>7.1} records per commit"
        );
        db.close().await;
    }
    if let Ok(admin) = std::env::var("BROBYGGER_TEST_POSTGRES_URL") {
        let name = format!("brobygger_bench_{}", std::process::id());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        // Keep any query (e.g. `?host=/var/run/postgresql` for the Unix socket).
        let (location, query) = admin.split_once('?').unwrap_or((admin.as_str(), ""));
        let base = location
            .rsplit_once('/')
            .map(|(base, _)| base)
            .expect("BROBYGGER_TEST_POSTGRES_URL must end in /DATABASE");
        let url = if query.is_empty() {
            format!("{base}/{name}")
        } else {
            format!("{base}/{name}?{query}")
        };
        for (callers, per_call) in [(1, 1), (64, 1), (256, 1), (64, 100)] {
            let db = Database::open(&DatabaseConfig {
                url: DatabaseUrl::Postgres(url.clone()),
                max_connections: 4,
            })
            .await
            .unwrap();
            let (rate, batch) = append_load(db.clone(), callers, per_call, duration).await;
            println!(
                "postgres callers {callers:>3} x {per_call:>3} records/request: {rate:>9.0} durable appends/s, {batch:>7.1} records per commit"
            );
            db.close().await;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let secs = verify_million();
    println!("verify_log over 1,000,000 entries (1,000 checkpoints): {secs:.2} s");
}
