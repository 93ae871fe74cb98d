//! `brobygger demo`, the README's first command: the real binary tells the whole story against
//! its three in-process nodes, states each outcome on a `✓` line, and leaves files that prove
//! them (audit logs that verify, the purge in Red Barnet's database, the transparency report).
//! Without `--exit` it keeps the nodes running for the printed commands until Ctrl-C.

use crate::support;
use brobygger::config::Config;
use brobygger::storage::{self, Database};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The demo takes about a second in a debug build; this is the bound for a slow machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// The outcome line `✓ <prefix>…`, trimmed.
fn outcome<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    let wanted = format!("✓ {prefix}");
    stdout
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(&wanted))
        .unwrap_or_else(|| panic!("no outcome line `{wanted}` in:\n{stdout}"))
}

/// The number that follows `after` in `line`.
fn number_after(line: &str, after: &str) -> u64 {
    let rest = line
        .split(after)
        .nth(1)
        .unwrap_or_else(|| panic!("{after:?} in {line:?}"));
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("a number after {after:?} in {line:?}"))
}

fn demo_command(dir: &Path, exit: bool) -> Command {
    let mut command = Command::new(support::binary());
    command.args(["demo", "--dir", dir.to_str().unwrap()]);
    if exit {
        command.arg("--exit");
    }
    command
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// `brobygger audit verify` on one of the demo's nodes (after the demo stopped them).
fn audit_verify(dir: &Path, org: &str, against: Option<&Path>) -> (i32, String) {
    let config = dir.join(format!("{org}.toml"));
    let mut command = std::process::Command::new(support::binary());
    command.args(["audit", "verify", "--config", config.to_str().unwrap()]);
    if let Some(against) = against {
        command.args(["--against", against.to_str().unwrap()]);
    }
    let output = command.output().unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// The messages in a stopped node's inbox, read from its SQLite file, read-only.
async fn inbox_types(dir: &Path, org: &str) -> Vec<String> {
    let config = Config::load_with_overrides(&dir.join(format!("{org}.toml")), &[]).unwrap();
    let db = Database::open_read_only(&config.database).await.unwrap();
    let inbox = storage::inbox_messages(&db).await.unwrap();
    db.close().await;
    inbox.into_iter().map(|m| m.message_type).collect()
}

#[tokio::test]
async fn the_demo_tells_the_story_and_leaves_files_that_prove_each_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::time::timeout(DEADLINE, demo_command(dir.path(), true).output())
        .await
        .expect("the demo did not finish in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    // Quiet by default: the narration is not drowned in node logs.
    assert!(stderr.trim().is_empty(), "{stderr}");

    // 1. The consent and the referral.
    outcome(&stdout, "consent recorded at Herning Kommune");
    let referral = outcome(&stdout, "referral delivered to Red Barnet (attempt 1;");
    number_after(referral, "leaf ");
    // 2. The binding.
    outcome(&stdout, "consent bound at Red Barnet to deltager-0017");
    // 3. The attendance report, with a receipt inside Herning's signed checkpoint.
    let summary = outcome(&stdout, "activity-summary delivered to Herning Kommune");
    let leaf = number_after(summary, "receipt leaf ");
    let kept_size = number_after(summary, "checkpoint of size ");
    assert!(leaf < kept_size, "{summary}");
    // 4. The refusals at the boundary, each with its reason (and pointer).
    assert_eq!(
        outcome(&stdout, "refused: 422"),
        "✓ refused: 422 schema-invalid at /body/note"
    );
    assert_eq!(
        outcome(&stdout, "refused: 403"),
        "✓ refused: 403 type-not-allowed"
    );
    outcome(&stdout, "referral-response (\"accepted\") delivered");
    // 5. The withdrawal: Red Barnet purged the referral and said so.
    let ack = outcome(&stdout, "withdrawal acknowledged by Red Barnet:");
    assert!(ack.contains("deleted-received 1"), "{ack}");
    assert!(ack.contains("cancelled-queued 0"), "{ack}");
    outcome(
        &stdout,
        "Red Barnet's inbox for this consent: 0 messages (1 before the withdrawal)",
    );
    // 6. The audit log against the checkpoint Red Barnet kept, and the family's report.
    let verified = outcome(&stdout, "audit log verified:");
    assert!(
        verified.ends_with(&format!(
            "it extends the checkpoint of size {kept_size} that Red Barnet kept"
        )),
        "{verified}"
    );
    assert!(
        number_after(verified, "verified: ") > kept_size,
        "{verified}"
    );
    let report = outcome(&stdout, "transparency report saved: ");
    let report_path = report
        .trim_start_matches("✓ transparency report saved: ")
        .split(" (")
        .next()
        .unwrap();
    let html = std::fs::read_to_string(report_path).unwrap();
    for expected in ["Herning Kommune", "Red Barnet", "Henvisning til et tilbud"] {
        assert!(html.contains(expected), "the report lacks {expected:?}");
    }
    outcome(&stdout, "the story is complete");
    assert!(
        stdout.contains("--exit: stopping the nodes now."),
        "{stdout}"
    );
    assert!(
        !stdout.contains("curl"),
        "no commands for nodes that are gone"
    );

    // The files prove it. The manifest lists the real ports as serial 2.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("federation/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["serial"], 2);
    assert!(
        !manifest["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["endpoint"].as_str().unwrap().ends_with(":7101")),
        "{manifest}"
    );
    // Herning's log extends the checkpoint Red Barnet kept; every log verifies.
    let kept = dir
        .path()
        .join("herning-kommune-checkpoint-kept-by-red-barnet.txt");
    let (code, out) = audit_verify(dir.path(), "herning-kommune", Some(&kept));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: the log extends the checkpoint seen earlier"),
        "{out}"
    );
    for org in ["herning-kommune", "fredericia-kommune", "red-barnet"] {
        let (code, out) = audit_verify(dir.path(), org, None);
        assert_eq!(code, 0, "{org}: {out}");
    }
    // Red Barnet purged the referral; Herning keeps what it received (arkivloven); Fredericia
    // never heard of the family.
    assert!(inbox_types(dir.path(), "red-barnet").await.is_empty());
    let mut herning = inbox_types(dir.path(), "herning-kommune").await;
    herning.sort();
    assert_eq!(herning, ["activity-summary", "referral-response"]);
    assert!(
        inbox_types(dir.path(), "fredericia-kommune")
            .await
            .is_empty()
    );

    // The directory now holds a federation: a second run there is a usage error (exit 2).
    let again = tokio::time::timeout(DEADLINE, demo_command(dir.path(), true).output())
        .await
        .expect("the second demo did not finish in time")
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("fresh directory"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[tokio::test]
async fn without_exit_the_nodes_answer_the_printed_commands_until_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = demo_command(dir.path(), false).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push_str(&line);
            stdout.push('\n');
            if line.contains("Press Ctrl-C") {
                return;
            }
        }
        panic!("the demo ended early:\n{stdout}");
    })
    .await
    .expect("the demo did not reach the end of its story in time");

    // The printed token and curl command work as printed.
    let token = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("HERNING_TOKEN='"))
        .and_then(|rest| rest.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no HERNING_TOKEN in:\n{stdout}"));
    let inbox_url = stdout
        .lines()
        .find(|l| l.contains("$HERNING_TOKEN") && l.trim_end().ends_with("/api/v1/inbox"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no inbox command in:\n{stdout}"));
    assert!(stdout.contains(&format!(
        "curl --cacert {}",
        dir.path().join("federation/ca.pem").display()
    )));
    let ca = std::fs::read(dir.path().join("federation/ca.pem")).unwrap();
    let response = support::local_client(&ca)
        .get(inbox_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page: serde_json::Value = response.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");

    // Ctrl-C stops all three nodes gracefully, and the demo exits 0.
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(DEADLINE, lines.next_line()).await {
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the demo did not stop after Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("Stopping the nodes..."), "{rest}");
    assert!(rest.contains("Stopped."), "{rest}");
    // Stopped cleanly: the logs still verify.
    let (code, out) = audit_verify(dir.path(), "red-barnet", None);
    assert_eq!(code, 0, "{out}");
}
