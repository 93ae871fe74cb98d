//! The family's transparency report, rendered by a real browser (headless Chromium), and the
//! caseworker's unit scope.

use crate::exchange::{
    ALL_PURPOSES, KOMMUNE, NGO, THREE, entries, local, new_message_id, record_consent, referral,
    wait_delivered,
};
use crate::support::{Engine, TestFederation};
use brobygger::jwt::Role;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

/// Where the test leaves its screenshots and pages for people to look at.
fn artefacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("transparency");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Renders a page in headless Chromium and returns the DOM it built; saves a screenshot.
fn render_in_chromium(html: &str, name: &str) -> String {
    let dir = artefacts();
    let page = dir.join(format!("{name}.html"));
    std::fs::write(&page, html).unwrap();
    let url = format!("file://{}", page.display());
    let profile = tempfile::tempdir().unwrap();
    let profile = profile.path().to_path_buf();
    let chromium = |args: &[&str]| {
        Command::new("chromium")
            // No background networking: this machine's network is closed, and the page needs
            // none.
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(&url)
            .output()
            .unwrap_or_else(|e| {
                panic!("headless Chromium is needed (Debian: apt-get install chromium; .ci/run installs it): {e}")
            })
    };
    let dom = chromium(&["--dump-dom"]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let screenshot = dir.join(format!("{name}.png"));
    let shot = chromium(&[
        &format!("--screenshot={}", screenshot.display()),
        "--window-size=1200,1400",
    ]);
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1_000);
    String::from_utf8(dom.stdout).unwrap()
}

/// A run of characters from `alphabet` at least `min` long, if there is one.
fn longest_run(text: &str, alphabet: impl Fn(char) -> bool) -> usize {
    let mut longest = 0;
    let mut current = 0;
    for c in text.chars() {
        if alphabet(c) {
            current += 1;
            longest = longest.max(current);
        } else {
            current = 0;
        }
    }
    longest
}

/// Nothing that looks like a UUID, a hex hash or base64.
fn assert_no_machine_strings(text: &str) {
    let hex = |c: char| c.is_ascii_hexdigit();
    assert!(
        longest_run(text, hex) < 16,
        "a hex-like run in the page: {text}"
    );
    let uuid_like = text.as_bytes().windows(36).any(|w| {
        w.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
    });
    assert!(!uuid_like, "a UUID in the page");
    // Base64: a long run of its alphabet that mixes digits and letters.
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '=' {
            run.push(c);
            continue;
        }
        let mixed =
            run.chars().any(|c| c.is_ascii_digit()) && run.chars().any(|c| c.is_ascii_alphabetic());
        assert!(
            !(run.len() >= 20 && mixed),
            "a base64-like run in the page: {run}"
        );
        run.clear();
    }
}

async fn get_text(
    fed: &TestFederation,
    org: &str,
    path: &str,
    token: &str,
) -> (u16, String, String) {
    let response = fed
        .local_client()
        .get(fed.local_url(org, path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn the_transparency_page_tells_the_family_what_was_shared_in_a_real_browser() {
    let fed = TestFederation::start(THREE, Engine::Sqlite).await;
    // The scenario: the municipality records the consent and refers the family to the club;
    // the club binds the consent and reports attendance.
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let id = consent["consent_id"].as_str().unwrap().to_owned();
    let club_bind = local(
        &fed,
        NGO,
        Method::POST,
        &format!("/api/v1/consents/{id}/bind"),
        &[Role::ConsentAdmin],
        Some(json!({"binding_code": consent["binding_code"], "local_subject_key": "deltager-17"})),
    )
    .await;
    assert_eq!(club_bind.0, 200, "{}", club_bind.1);
    let referral_id = new_message_id();
    let (status, body) = local(
        &fed,
        KOMMUNE,
        Method::POST,
        "/api/v1/messages",
        &[Role::Submitter],
        Some(json!({
            "message_id": referral_id,
            "type": "referral",
            "recipient": NGO,
            "purpose": {"id": "henvisning-til-klub", "version": 1},
            "consent_id": id,
            "body": referral(&consent)["body"],
        })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    wait_delivered(&fed, KOMMUNE, &referral_id).await;
    let summary_id = new_message_id();
    let (status, body) = local(
        &fed,
        NGO,
        Method::POST,
        "/api/v1/messages",
        &[Role::Submitter],
        Some(json!({
            "message_id": summary_id,
            "type": "activity-summary",
            "recipient": KOMMUNE,
            "purpose": {"id": "smaaboernsklub-fremmoede", "version": 1},
            "consent_id": id,
            "body": {"month": "2026-11", "programme": "smaaboernsklub",
                     "enrolment_status": "enrolled", "sessions_offered": 4,
                     "sessions_attended": 3, "next_step": "continue"},
        })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    wait_delivered(&fed, NGO, &summary_id).await;

    // The caseworker at the municipality fetches the page for the family.
    let token = fed.token(KOMMUNE, &[Role::Caseworker]);
    let path = format!("/api/v1/consents/{id}/transparency");
    let (status, content_type, html) = get_text(&fed, KOMMUNE, &path, &token).await;
    assert_eq!(status, 200, "{html}");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let dom = render_in_chromium(&html, "herning-kommune-da");
    let manifest = fed.node(KOMMUNE).state.manifest.snapshot();
    for expected in [
        "Hvad er delt om jeres barn",
        "Herning Kommune",
        "Red Barnet",
        "Samtykket gælder",
        "Henvisning til et tilbud",
        "Opsummering af fremmøde i klubben",
        "Godkendt til afsendelse",
        "Modtaget",
        "Sådan trækker I samtykket tilbage",
    ] {
        assert!(dom.contains(expected), "the page lacks {expected:?}: {dom}");
    }
    for purpose in manifest.purposes.values() {
        assert!(dom.contains(&purpose.title_da), "{}", purpose.title_da);
    }
    assert_no_machine_strings(&dom);
    assert!(!dom.contains(&id));

    // In English, and as JSON with the same lines and no identifiers either.
    let (status, _, english) = get_text(&fed, KOMMUNE, &format!("{path}?lang=en"), &token).await;
    assert_eq!(status, 200);
    let dom = render_in_chromium(&english, "herning-kommune-en");
    assert!(dom.contains("What has been shared about your child"));
    assert!(dom.contains("How to withdraw"));
    assert_no_machine_strings(&dom);
    let (status, _, json_text) =
        get_text(&fed, KOMMUNE, &format!("{path}?format=json"), &token).await;
    assert_eq!(status, 200);
    let report: Value = serde_json::from_str(&json_text).unwrap();
    let whats: Vec<&str> = report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["what"].as_str().unwrap())
        .collect();
    assert!(whats.contains(&"Henvisning til et tilbud"), "{report}");
    assert!(
        whats.contains(&"Opsummering af fremmøde i klubben"),
        "{report}"
    );
    assert_no_machine_strings(&json_text);

    // The report comes from the audit log, so it survives the purge of the data: after the
    // family withdraws at the club, the club deletes the referral but still reports it.
    let (status, answer) = local(
        &fed,
        NGO,
        Method::POST,
        &format!("/api/v1/consents/{id}/withdraw"),
        &[Role::ConsentAdmin],
        Some(json!({"event": "withdrawn-by-subject"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(crate::exchange::inbox_len(&fed, NGO).await, 0);
    let club_token = fed.token(NGO, &[Role::Caseworker]);
    let (status, _, club_html) = get_text(&fed, NGO, &path, &club_token).await;
    assert_eq!(status, 200, "{club_html}");
    let dom = render_in_chromium(&club_html, "red-barnet-da");
    assert!(dom.contains("Henvisning til et tilbud"), "{dom}");
    assert!(dom.contains("I har trukket samtykket tilbage"), "{dom}");
    assert_no_machine_strings(&dom);
    fed.stop().await;
}

#[tokio::test]
async fn a_caseworker_of_another_unit_is_refused_and_the_attempt_is_audited() {
    let fed = TestFederation::start(THREE, Engine::Sqlite).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let id = consent["consent_id"].as_str().unwrap().to_owned();
    let other = fed.token_for_unit(KOMMUNE, &[Role::Caseworker], Some("jobcenteret"));
    let no_unit = fed.token_for_unit(KOMMUNE, &[Role::Caseworker], None);
    for path in [
        format!("/api/v1/consents/{id}/transparency"),
        format!("/api/v1/consents/{id}"),
        "/api/v1/subjects/sag-2026-0042/timeline".to_owned(),
    ] {
        for token in [&other, &no_unit] {
            let before = entries(&fed, KOMMUNE).await.len();
            let (status, _, body) = get_text(&fed, KOMMUNE, &path, token).await;
            let problem: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                (status, &problem["reason"]),
                (403, &json!("out-of-scope")),
                "{path}"
            );
            let after = entries(&fed, KOMMUNE).await;
            assert_eq!(after.len(), before + 1, "{path}: one audit entry");
            assert_eq!(
                after.last().unwrap().record.reason.as_deref(),
                Some("out-of-scope")
            );
        }
    }
    // The inbox of a caseworker without a unit is refused; another unit's is empty.
    let (status, _, _) = get_text(&fed, KOMMUNE, "/api/v1/inbox", &no_unit).await;
    assert_eq!(status, 403);
    // The caseworker of the recording unit reads them.
    let own = fed.token(KOMMUNE, &[Role::Caseworker]);
    let (status, _, _) = get_text(
        &fed,
        KOMMUNE,
        &format!("/api/v1/consents/{id}/transparency"),
        &own,
    )
    .await;
    assert_eq!(status, 200);
    fed.stop().await;
}
