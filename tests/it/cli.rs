//! The command line as an operator meets it: pki init, federation sign, token, help, exit
//! codes, and graceful shutdown.

use crate::support::{self, TestPki};
use brobygger::domain::OrgKind;
use std::process::{Command, Stdio};
use std::time::Duration;

fn brobygger(args: &[&str]) -> std::process::Output {
    Command::new(support::binary()).args(args).output().unwrap()
}

#[test]
fn help_and_usage_errors_use_exit_codes_0_and_2() {
    let output = brobygger(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["pki", "federation", "serve", "check", "token"] {
        assert!(help.contains(command), "{help}");
    }
    assert_eq!(brobygger(&["serve"]).status.code(), Some(2));
    assert_eq!(brobygger(&["no-such-command"]).status.code(), Some(2));
    let output = brobygger(&[
        "pki",
        "init",
        "--dir",
        "/tmp/x",
        "--federation",
        "brobygger.test",
        "--org",
        "red-barnet:charity",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("municipality, ngo or region"));
}

#[test]
fn pki_init_writes_private_keys_0600_and_never_overwrites_without_force() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("dev");
    let args = [
        "pki",
        "init",
        "--dir",
        target.to_str().unwrap(),
        "--federation",
        "brobygger.test",
        "--org",
        "herning-kommune:municipality",
        "--org",
        "red-barnet:ngo",
    ];
    let output = brobygger(&args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for key in [
        "federation/ca.key",
        "federation/operator.key",
        "red-barnet/node.key",
        "red-barnet/local-api.key",
        "red-barnet/audit-signing.key",
        "red-barnet/jwt-issuer.key",
    ] {
        let mode = std::fs::metadata(target.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // Exactly one URI SAN naming the org, usable for client and server.
    let pem = std::fs::read(target.join("red-barnet/node.pem")).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice_first(&pem);
    let identity =
        brobygger::identity::identity_from_certificate(&der, &"brobygger.test".parse().unwrap())
            .unwrap();
    assert_eq!(identity.uri(), "spiffe://brobygger.test/org/red-barnet");

    let before = std::fs::read(target.join("federation/ca.key")).unwrap();
    let output = brobygger(&args);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(target.join("federation/ca.key")).unwrap(),
        before
    );

    let mut forced = args.to_vec();
    forced.push("--force");
    assert_eq!(brobygger(&forced).status.code(), Some(0));
    assert_ne!(
        std::fs::read(target.join("federation/ca.key")).unwrap(),
        before
    );
}

trait FirstPem {
    fn from_pem_slice_first(pem: &[u8]) -> rustls::pki_types::CertificateDer<'static>;
}

impl FirstPem for rustls::pki_types::CertificateDer<'static> {
    fn from_pem_slice_first(pem: &[u8]) -> Self {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem).unwrap()
    }
}

#[test]
fn federation_sign_produces_a_manifest_nodes_accept() {
    let pki = TestPki::new(&[("red-barnet", OrgKind::Ngo)]);
    let dir = pki.path();
    let mut doc = pki.manifest_doc();
    doc.serial = 7;
    std::fs::write(
        dir.join("next.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
    let output = brobygger(&[
        "federation",
        "sign",
        "--manifest",
        dir.join("next.json").to_str().unwrap(),
        "--key",
        dir.join("federation/operator.key").to_str().unwrap(),
        "--out",
        pki.manifest_path().to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = brobygger(&[
        "check",
        "--config",
        pki.config_path("red-barnet").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("manifest serial 7"));

    // Signing with a key that is not the operator's is caught by the nodes.
    let output = brobygger(&[
        "federation",
        "sign",
        "--manifest",
        dir.join("next.json").to_str().unwrap(),
        "--key",
        dir.join("red-barnet/audit-signing.key").to_str().unwrap(),
        "--out",
        dir.join("forged.note").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0));
    std::fs::copy(dir.join("forged.note"), pki.manifest_path()).unwrap();
    let output = brobygger(&[
        "check",
        "--config",
        pki.config_path("red-barnet").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn token_mints_a_working_token_and_sigterm_stops_the_node_gracefully() {
    let pki = TestPki::new(&[("red-barnet", OrgKind::Ngo)]);
    let config = pki.config_path("red-barnet");
    let output = brobygger(&[
        "token",
        "--config",
        config.to_str().unwrap(),
        "--role",
        "caseworker",
        "--sub",
        "cw-1",
        "--ttl",
        "10m",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3);

    let mut child = tokio::process::Command::new(support::binary())
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0")
        .env("BROBYGGER_LOCAL_API__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let local = line.rsplit("://").next().unwrap().trim().to_string();
    let client = support::local_client(&pki.ca_pem());
    let response = client
        .get(format!("https://{local}/api/v1/whoami"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["subject"], "cw-1");
    assert_eq!(body["roles"], serde_json::json!(["caseworker"]));

    let pid = nix_pid(child.id().unwrap());
    assert_eq!(unsafe_kill(pid, 15), 0);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the node did not stop within 20 s of SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("node stopped"), "{stderr}");
}

fn nix_pid(pid: u32) -> i32 {
    i32::try_from(pid).unwrap()
}

/// Sends a signal with the `kill` command, to keep the test free of unsafe code.
fn unsafe_kill(pid: i32, signal: i32) -> i32 {
    Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .code()
        .unwrap()
}
