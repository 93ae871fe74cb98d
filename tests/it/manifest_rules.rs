//! Manifest rules (DESIGN §2): signature, expiry, persisted highest serial, same serial with
//! other content, hot reload, fail closed on expiry.

use crate::support::{self, Engine, TestFederation, TestPki};
use brobygger::domain::OrgKind;
use brobygger::manifest::ManifestError;
use brobygger::node::{Clock, StartError};
use serde_json::Value;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, BufReader};

const ORGS: &[(&str, OrgKind)] = &[
    ("red-barnet", OrgKind::Ngo),
    ("herning-kommune", OrgKind::Municipality),
];

/// Runs `brobygger <args>` with ports chosen by the OS and returns (exit code, stderr), failing
/// the test if it does not end within the deadline.
async fn run_to_exit(args: &[&str], deadline: Duration) -> (i32, String) {
    let mut child = tokio::process::Command::new(support::binary())
        .args(args)
        .env("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0")
        .env("BROBYGGER_LOCAL_API__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let status = tokio::time::timeout(deadline, child.wait())
        .await
        .unwrap_or_else(|_| panic!("`brobygger {}` did not exit", args.join(" ")))
        .unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
        .await
        .unwrap();
    (status.code().unwrap_or(-1), text)
}

async fn serve_exit(pki: &TestPki) -> (i32, String) {
    let config = pki.config_path("red-barnet");
    run_to_exit(
        &["serve", "--config", config.to_str().unwrap()],
        Duration::from_secs(60),
    )
    .await
}

#[tokio::test]
async fn serve_refuses_a_bad_manifest_at_start_with_exit_code_2() {
    // Unsigned: the JSON alone.
    let pki = TestPki::new(ORGS);
    let json = std::fs::read_to_string(pki.path().join("federation/manifest.json")).unwrap();
    std::fs::write(pki.manifest_path(), &json).unwrap();
    let (code, stderr) = serve_exit(&pki).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not signed"), "{stderr}");

    // Signed by a key that has the operator's name but is not the operator's key.
    let pki = TestPki::new(ORGS);
    let impostor = brobygger::signed_note::NoteSigner::from_pkcs8(
        "brobygger.test/operator",
        &brobygger::signed_note::generate_ed25519_pkcs8().unwrap(),
    )
    .unwrap();
    let forged = brobygger::pki::sign_manifest_text(&json, &impostor).unwrap();
    std::fs::write(pki.manifest_path(), forged).unwrap();
    let (code, stderr) = serve_exit(&pki).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("not signed by the operator key"),
        "{stderr}"
    );

    // Properly signed but expired.
    let pki = TestPki::new(ORGS);
    let mut doc = pki.manifest_doc();
    doc.issued_at = OffsetDateTime::now_utc() - time::Duration::days(30);
    doc.expires_at = OffsetDateTime::now_utc() - time::Duration::days(1);
    pki.write_manifest(&doc);
    let (code, stderr) = serve_exit(&pki).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
}

#[tokio::test]
async fn the_highest_serial_survives_a_restart() {
    let pki = TestPki::new(ORGS);
    let config = pki.config_path("red-barnet");
    let config = config.to_str().unwrap();
    let mut doc = pki.manifest_doc();
    doc.serial = 5;
    pki.write_manifest(&doc);
    // A node starts on serial 5 and persists it (`check` only reads, so it records nothing).
    let node = brobygger::node::start(pki.config("red-barnet", &[]), Clock::system())
        .await
        .unwrap();
    node.stop().await;

    // After that, serial 4 is refused at start...
    let mut lower = doc.clone();
    lower.serial = 4;
    pki.write_manifest(&lower);
    let (code, stderr) = serve_exit(&pki).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("lower than serial 5"), "{stderr}");

    // ...and so is serial 5 with other content.
    let mut changed = doc.clone();
    changed.members[0].name = "Red Barnet Ungdom".into();
    pki.write_manifest(&changed);
    let (code, stderr) = serve_exit(&pki).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("already accepted with different content"),
        "{stderr}"
    );

    // The very same serial 5 starts fine.
    pki.write_manifest(&doc);
    let (code, stderr) = run_to_exit(&["check", "--config", config], Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn reload_keeps_out_bad_manifests_and_the_current_one_stays() {
    let fed = TestFederation::start(ORGS, Engine::Sqlite).await;
    let state = &fed.node("red-barnet").state;
    let current = fed.pki.manifest_doc();
    let serial = current.serial;

    let mut lower = current.clone();
    lower.serial = serial - 1;
    let mut same_changed = current.clone();
    same_changed.members[0].name = "Omdøbt".into();
    let mut expired = current.clone();
    expired.serial = serial + 1;
    expired.issued_at = OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.expires_at = OffsetDateTime::now_utc() - time::Duration::days(1);

    for (doc, expected) in [
        (&lower, "lower"),
        (&same_changed, "reused"),
        (&expired, "expired"),
    ] {
        fed.pki.write_manifest(doc);
        let error = state.reload_manifest().await.unwrap_err();
        let StartError::Manifest { source, .. } = &error else {
            panic!("{error}");
        };
        let matches = matches!(
            (expected, source),
            ("lower", ManifestError::SerialRollback { .. })
                | ("reused", ManifestError::SerialReused(_))
                | ("expired", ManifestError::Expired(_))
        );
        assert!(matches, "{expected}: {error}");
        assert_eq!(state.manifest.snapshot().serial, serial);
    }
    std::fs::write(fed.pki.manifest_path(), "not a manifest\n").unwrap();
    assert!(state.reload_manifest().await.is_err());
    assert_eq!(state.manifest.snapshot().serial, serial);
    fed.stop().await;
}

/// A served node, reading its stdout for the bound addresses and collecting its stderr.
struct ServedNode {
    child: tokio::process::Child,
    local_addr: String,
    stderr: Arc<Mutex<String>>,
}

async fn serve(pki: &TestPki, org: &str) -> ServedNode {
    let mut child = tokio::process::Command::new(support::binary())
        .args(["serve", "--config", pki.config_path(org).to_str().unwrap()])
        .env("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0")
        .env("BROBYGGER_LOCAL_API__LISTEN", "127.0.0.1:0")
        .env("BROBYGGER_FEDERATION__MANIFEST_POLL_INTERVAL_MS", "50")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .expect("the node did not start")
        .unwrap()
        .unwrap_or_else(|| panic!("no start line; stderr: {}", stderr.lock().unwrap()));
    let local_addr = line.rsplit("://").next().unwrap().trim().to_string();
    ServedNode {
        child,
        local_addr,
        stderr,
    }
}

#[tokio::test]
async fn a_running_node_loads_a_newer_manifest_and_logs_why_it_keeps_one_out() {
    let pki = TestPki::new(ORGS);
    let mut node = serve(&pki, "red-barnet").await;
    let client = support::local_client(&pki.ca_pem());
    let readyz = format!("https://{}/readyz", node.local_addr);
    let serial = || async {
        let body: Value = client
            .get(&readyz)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["manifest"]["serial"].as_u64().unwrap()
    };
    assert_eq!(serial().await, 1);

    let mut doc = pki.manifest_doc();
    doc.serial = 2;
    pki.write_manifest(&doc);
    support::wait_until(
        "the node serves serial 2",
        Duration::from_secs(20),
        || async { serial().await == 2 },
    )
    .await;

    let mut lower = doc.clone();
    lower.serial = 1;
    pki.write_manifest(&lower);
    let log = node.stderr.clone();
    support::wait_until("the refusal is logged", Duration::from_secs(20), || {
        let log = log.clone();
        async move { log.lock().unwrap().contains("lower than serial 2") }
    })
    .await;
    assert!(node.stderr.lock().unwrap().contains("kept out"));
    assert_eq!(serial().await, 2);
    node.child.kill().await.unwrap();
}

#[tokio::test]
async fn an_expiring_manifest_warns_in_readyz_and_an_expired_one_fails_closed() {
    support::init_tracing();
    let pki = TestPki::new(ORGS);
    let now = OffsetDateTime::now_utc();
    let clock = Clock::manual(now);
    let config = pki.config("red-barnet", &[]);
    let node = brobygger::node::start(config, clock.clone()).await.unwrap();
    let manifest = node.state.manifest.snapshot();
    let client = support::local_client(&pki.ca_pem());
    let readyz = format!("https://{}/readyz", node.local_addr);

    let body: Value = client
        .get(&readyz)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["warnings"], serde_json::json!([]));

    clock.set(manifest.expires_at - time::Duration::days(3));
    let response = client.get(&readyz).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["warnings"].to_string().contains("manifest expires"),
        "{body}"
    );

    clock.set(manifest.expires_at + time::Duration::seconds(1));
    let response = client.get(&readyz).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["manifest"]["expired"], true);

    // The federation listener refuses even a current member while the manifest is expired.
    let dir = pki.path();
    let chain_key = support::chain_and_key(
        &std::fs::read_to_string(dir.join("herning-kommune/node.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("herning-kommune/node.key")).unwrap(),
    );
    let mut stream = support::raw_connect(
        node.federation_addr,
        support::raw_client_config(Some(chain_key)),
    )
    .await
    .unwrap();
    let (status, body) = support::raw_get(&mut stream, "/fed/v1/ping").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("manifest-expired"));
    node.stop().await;
}
