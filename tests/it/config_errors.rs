//! Invalid configuration: one test per class, each exit code 2 with a message naming the
//! problem, the same from `check` and from `serve`.

use crate::support::{self, TestPki};
use brobygger::domain::OrgKind;
use std::process::Output;

fn pki() -> TestPki {
    TestPki::new(&[("herning-kommune", OrgKind::Municipality)])
}

fn run(command: &str, pki: &TestPki) -> Output {
    std::process::Command::new(support::binary())
        .args([
            command,
            "--config",
            pki.config_path("herning-kommune").to_str().unwrap(),
        ])
        .env("BROBYGGER_FEDERATION__LISTEN", "127.0.0.1:0")
        .env("BROBYGGER_LOCAL_API__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap()
}

fn edit_config(pki: &TestPki, from: &str, to: &str) {
    let path = pki.config_path("herning-kommune");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "config has no `{from}`");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Both commands refuse with exit code 2 and a message containing every `needle`.
fn assert_refused(pki: &TestPki, needles: &[&str]) {
    for command in ["check", "serve"] {
        let output = run(command, pki);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{command}: missing `{needle}` in: {stderr}"
            );
        }
        assert!(
            stderr.contains("herning-kommune.toml"),
            "{command}: names no file: {stderr}"
        );
    }
}

#[test]
fn a_valid_generated_config_passes_check() {
    let pki = pki();
    let output = run("check", &pki);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ok: manifest serial 1"), "{stdout}");
    assert!(stdout.contains("and 3 purposes"), "{stdout}");
}

#[test]
fn a_missing_field_is_named() {
    let pki = pki();
    edit_config(&pki, "audience = \"brobygger:herning-kommune\"\n", "");
    assert_refused(&pki, &["local_api", "missing field `audience`"]);
}

#[test]
fn a_bad_value_is_named() {
    let pki = pki();
    edit_config(
        &pki,
        "listen = \"127.0.0.1:71",
        "listen = \"not-an-address:71",
    );
    // Run without the port overrides, so the bad value in the file is what gets parsed.
    for command in ["check", "serve"] {
        let output = std::process::Command::new(support::binary())
            .args([
                command,
                "--config",
                pki.config_path("herning-kommune").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("federation.listen"), "{stderr}");
        assert!(stderr.contains("not an address with a port"), "{stderr}");
    }
    // An unknown field is a bad value too.
    let pki = self::pki();
    edit_config(&pki, "[audit]\n", "[audit]\nsigning_keys = \"x\"\n");
    assert_refused(&pki, &["unknown field `signing_keys`"]);
}

#[test]
fn an_unreadable_certificate_is_named() {
    let pki = pki();
    std::fs::remove_file(pki.path().join("herning-kommune/node.pem")).unwrap();
    assert_refused(&pki, &["federation.cert", "cannot read"]);
    let pki = self::pki();
    std::fs::write(pki.path().join("herning-kommune/node.pem"), "garbage\n").unwrap();
    assert_refused(&pki, &["federation.cert"]);
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_named() {
    let pki = pki();
    // The local API key is a valid key, just not the node certificate's.
    std::fs::copy(
        pki.path().join("herning-kommune/local-api.key"),
        pki.path().join("herning-kommune/node.key"),
    )
    .unwrap();
    assert_refused(&pki, &["federation.key", "does not match the certificate"]);
}
