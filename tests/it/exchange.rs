//! Consent and purpose enforced at both ends: real nodes on loopback exchange envelopes over
//! mTLS. Each refusal is checked for its HTTP status, its reason code (and pointer), that no
//! inbox row appeared, and that exactly one audit entry records the denial with its reason.

use crate::support::Engine;
use crate::support::{self, TestFederation};
use brobygger::audit::entry::{Decision, DecodedEntry, decode};
use brobygger::domain::{MessageId, OrgKind};
use brobygger::federation::{self, PeerError};
use brobygger::jwt::Role;
use brobygger::node::Clock;
use brobygger::pki::LeafSpec;
use brobygger::storage;
use serde_json::{Value, json};
use time::{Date, Duration, OffsetDateTime};

pub const THREE: &[(&str, OrgKind)] = &[
    ("herning-kommune", OrgKind::Municipality),
    ("fredericia-kommune", OrgKind::Municipality),
    ("red-barnet", OrgKind::Ngo),
];
pub const KOMMUNE: &str = "herning-kommune";
pub const OTHER_KOMMUNE: &str = "fredericia-kommune";
pub const NGO: &str = "red-barnet";
pub const ALL_PURPOSES: &[&str] = &[
    "smaaboernsklub-fremmoede",
    "henvisning-til-klub",
    "svar-paa-henvisning",
];

pub fn new_message_id() -> String {
    let now = OffsetDateTime::now_utc();
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap();
    let random = brobygger::consent::random_bytes::<10>().unwrap();
    MessageId::v7(millis, random).to_string()
}

pub fn date(days_from_today: i64) -> String {
    let today: Date = OffsetDateTime::now_utc().date();
    (today + Duration::days(days_from_today)).to_string()
}

/// A call to a node's local API with a development token holding `roles`.
pub async fn local(
    fed: &TestFederation,
    org: &str,
    method: reqwest::Method,
    path: &str,
    roles: &[Role],
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = fed
        .local_client()
        .request(method, fed.local_url(org, path))
        .bearer_auth(fed.token(org, roles));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn consent_request(counterpart: &str, purposes: &[&str], from: &str, until: &str) -> Value {
    json!({
        "counterpart": counterpart,
        "purposes": purposes.iter().map(|p| json!({"id": p, "version": 1})).collect::<Vec<_>>(),
        "consented_by": ["custody-holder-1", "custody-holder-2"],
        "policy": "all-custody-holders",
        "evidence": "paper-witnessed",
        "valid_from": from,
        "valid_until": until,
        "retention_at_recipient_days": 365,
        "withdrawal": "contact-either-party",
        "local_subject_key": "sag-2026-0042",
    })
}

/// Waits until a message queued at `org` is delivered; returns its status document.
pub async fn wait_delivered(fed: &TestFederation, org: &str, message_id: &str) -> Value {
    let path = format!("/api/v1/messages/{message_id}");
    let read = || async {
        local(
            fed,
            org,
            reqwest::Method::GET,
            &path,
            &[Role::Submitter],
            None,
        )
        .await
        .1
    };
    support::wait_until(
        &format!("{message_id} delivered from {org}"),
        std::time::Duration::from_secs(20),
        || async {
            let status = read().await;
            assert_ne!(status["status"], "refused", "{message_id}: {status}");
            status["status"] == "delivered"
        },
    )
    .await;
    read().await
}

/// Records a consent at `at` for `counterpart` through the local API; waits until the
/// counterpart admitted it.
pub async fn record_consent(
    fed: &TestFederation,
    at: &str,
    counterpart: &str,
    purposes: &[&str],
) -> Value {
    let (status, body) = local(
        fed,
        at,
        reqwest::Method::POST,
        "/api/v1/consents",
        &[Role::ConsentAdmin],
        Some(consent_request(counterpart, purposes, &date(-1), &date(30))),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_delivered(fed, at, body["notice_message_id"].as_str().unwrap()).await;
    body
}

pub fn envelope(
    from: &str,
    to: &str,
    kind: &str,
    purpose: &str,
    consent: &Value,
    body: Value,
) -> Value {
    json!({
        "v": 1,
        "message_id": new_message_id(),
        "type": kind,
        "sender": from,
        "recipient": to,
        "purpose": {"id": purpose, "version": 1},
        "consent_id": consent["consent_id"],
        "subject_ref": consent["subject_ref"],
        "sent_at": "2026-11-22T10:00:00Z",
        "body": body,
    })
}

pub fn summary(consent: &Value) -> Value {
    envelope(
        NGO,
        KOMMUNE,
        "activity-summary",
        "smaaboernsklub-fremmoede",
        consent,
        json!({
            "month": "2026-11",
            "programme": "smaaboernsklub",
            "enrolment_status": "enrolled",
            "sessions_offered": 4,
            "sessions_attended": 3,
            "next_step": "continue"
        }),
    )
}

pub fn referral(consent: &Value) -> Value {
    envelope(
        KOMMUNE,
        NGO,
        "referral",
        "henvisning-til-klub",
        consent,
        json!({
            "programme": "smaaboernsklub",
            "requested_start_month": "2026-12",
            "child_age_band": "1-2",
            "referrer_role": "health-visitor"
        }),
    )
}

/// Sends exact bytes from one node to another over mTLS; the answer's status and JSON.
pub async fn send_bytes(
    fed: &TestFederation,
    from: &str,
    to: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let state = &fed.node(from).state;
    match federation::send_envelope(state, &to.parse().unwrap(), bytes).await {
        Ok(receipt) => (200, serde_json::to_value(receipt).unwrap()),
        Err(PeerError::Refused { status, body }) => (status, serde_json::from_str(&body).unwrap()),
        Err(e) => panic!("sending failed: {e}"),
    }
}

pub async fn send(fed: &TestFederation, from: &str, to: &str, doc: &Value) -> (u16, Value) {
    send_bytes(fed, from, to, serde_json::to_vec(doc).unwrap()).await
}

pub async fn entries(fed: &TestFederation, org: &str) -> Vec<DecodedEntry> {
    storage::audit_entries(&fed.node(org).state.db)
        .await
        .unwrap()
        .iter()
        .map(|e| decode(&e.entry).unwrap())
        .collect()
}

pub async fn inbox_len(fed: &TestFederation, org: &str) -> usize {
    storage::inbox_messages(&fed.node(org).state.db)
        .await
        .unwrap()
        .len()
}

/// What a node holds before a request, to compare with after.
pub struct Before {
    audit: usize,
    inbox: usize,
}

pub async fn before(fed: &TestFederation, org: &str) -> Before {
    Before {
        audit: entries(fed, org).await.len(),
        inbox: inbox_len(fed, org).await,
    }
}

/// The refusal had this status and reason, stored nothing, and is exactly one audit entry.
pub async fn assert_refused_once(
    fed: &TestFederation,
    at: &str,
    was: &Before,
    answer: &(u16, Value),
    status: u16,
    reason: &str,
) {
    let (got_status, problem) = answer;
    assert_eq!(*got_status, status, "{reason}: {problem}");
    assert_eq!(problem["reason"], reason, "{problem}");
    assert_eq!(problem["status"], status, "{problem}");
    assert_eq!(
        inbox_len(fed, at).await,
        was.inbox,
        "{reason}: no inbox row"
    );
    let after = entries(fed, at).await;
    assert_eq!(
        after.len(),
        was.audit + 1,
        "{reason}: exactly one audit entry"
    );
    let last = &after.last().unwrap().record;
    assert_eq!(last.decision, Some(Decision::Deny), "{reason}");
    assert_eq!(last.reason.as_deref(), Some(reason));
}

/// A catalogue for the refusal tests: a referral may not carry the optional `contact_channel`,
/// and an inactive purpose exists.
async fn install_test_catalogue(fed: &TestFederation) {
    let mut doc = fed.pki.manifest_doc();
    doc.serial = fed.node(KOMMUNE).state.manifest.snapshot().serial + 1;
    for member in &mut doc.members {
        member.endpoint = format!("https://{}", fed.node(&member.org_id).federation_addr);
    }
    let mut inactive = doc.purposes[0].clone();
    inactive.id = "familieklub-fremmoede".into();
    inactive.status = "inactive".into();
    for purpose in &mut doc.purposes {
        if purpose.id == "henvisning-til-klub" {
            for fields in purpose.messages.values_mut() {
                fields.retain(|f| f != "contact_channel");
            }
        }
    }
    doc.purposes.push(inactive);
    fed.install_manifest(&doc).await;
}

#[tokio::test]
async fn a_consent_recorded_at_the_municipality_lets_the_club_report_and_replays_change_nothing() {
    exchange_happy_path(Engine::Sqlite).await;
}

#[tokio::test]
async fn a_consent_recorded_at_the_municipality_lets_the_club_report_on_postgres() {
    exchange_happy_path(Engine::Postgres).await;
}

async fn exchange_happy_path(engine: Engine) {
    let fed = TestFederation::start(THREE, engine).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let path = format!(
        "/api/v1/consents/{}",
        consent["consent_id"].as_str().unwrap()
    );
    // The club holds the consent too, not yet bound to a child of its own: its consent-admin
    // sees it, its caseworkers do not (no unit of theirs recorded or bound it).
    let (status, problem) = local(
        &fed,
        NGO,
        reqwest::Method::GET,
        &path,
        &[Role::Caseworker],
        None,
    )
    .await;
    assert_eq!((status, &problem["reason"]), (403, &json!("out-of-scope")));
    let (status, held) = local(
        &fed,
        NGO,
        reqwest::Method::GET,
        &path,
        &[Role::ConsentAdmin],
        None,
    )
    .await;
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["status"], "given");
    assert_eq!(held["active_now"], true);
    assert_eq!(held["recording_org"], KOMMUNE);
    assert_eq!(held["bound"], false);
    assert!(held.get("local_subject_key").is_none());

    let was = before(&fed, KOMMUNE).await;
    let doc = summary(&consent);
    let bytes = serde_json::to_vec(&doc).unwrap();
    let (status, receipt) = send_bytes(&fed, NGO, KOMMUNE, bytes.clone()).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(inbox_len(&fed, KOMMUNE).await, was.inbox + 1);
    let after = entries(&fed, KOMMUNE).await;
    assert_eq!(after.len(), was.audit + 1);
    let entry = after.last().unwrap();
    assert_eq!(entry.record.decision, Some(Decision::Permit));
    assert_eq!(receipt["leaf_index"], entry.idx);
    // The receipt proves the admission of exactly these bytes in the receiver's log, with the
    // receiver's audit key from the manifest.
    let manifest = fed.node(NGO).state.manifest.snapshot();
    let key = &manifest
        .member(&KOMMUNE.parse().unwrap())
        .unwrap()
        .audit_key;
    let wire: brobygger::wire::ReceiptV1 = serde_json::from_value(receipt.clone()).unwrap();
    let message_id = doc["message_id"].as_str().unwrap();
    let verified = brobygger::receipt::verify(&wire, message_id, &bytes, key).unwrap();
    assert!(verified.tree_size > entry.idx);
    // Not for other bytes, and not under another key.
    assert!(brobygger::receipt::verify(&wire, message_id, b"{}", key).is_err());
    let other_key = &manifest.member(&NGO.parse().unwrap()).unwrap().audit_key;
    assert!(brobygger::receipt::verify(&wire, message_id, &bytes, other_key).is_err());

    // The same bytes again: the first receipt, and nothing recorded or stored.
    let (status, again) = send_bytes(&fed, NGO, KOMMUNE, bytes).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, receipt);
    assert_eq!(inbox_len(&fed, KOMMUNE).await, was.inbox + 1);
    assert_eq!(entries(&fed, KOMMUNE).await.len(), was.audit + 1);

    // The same id with another body: refused, and the first message stays as it was.
    let was = before(&fed, KOMMUNE).await;
    let mut changed = doc.clone();
    changed["body"]["sessions_attended"] = json!(4);
    let answer = send(&fed, NGO, KOMMUNE, &changed).await;
    assert_refused_once(&fed, KOMMUNE, &was, &answer, 409, "message-id-conflict").await;
    assert_eq!(answer.1["pointer"], "/message_id");

    // A batch: a new summary, a refused one, and a replay of the first; one result each.
    let was = before(&fed, KOMMUNE).await;
    let fresh = summary(&consent);
    let mut cpr = summary(&consent);
    cpr["body"]["month"] = json!("0101901234");
    let (fresh_bytes, cpr_bytes) = (
        serde_json::to_vec(&fresh).unwrap(),
        serde_json::to_vec(&cpr).unwrap(),
    );
    let first_bytes = serde_json::to_vec(&doc).unwrap();
    let results = federation::send_batch(
        &fed.node(NGO).state,
        &KOMMUNE.parse().unwrap(),
        &[&fresh_bytes, &cpr_bytes, &first_bytes],
    )
    .await
    .unwrap();
    assert!(
        matches!(&results[0], federation::ItemResult::Receipt(r) if r.message_id == fresh["message_id"])
    );
    assert!(
        matches!(&results[1], federation::ItemResult::Problem { status: 422, body } if body.contains("cpr-detected"))
    );
    assert!(
        matches!(&results[2], federation::ItemResult::Receipt(r) if serde_json::to_value(r).unwrap() == receipt)
    );
    assert_eq!(inbox_len(&fed, KOMMUNE).await, was.inbox + 1);
    assert_eq!(entries(&fed, KOMMUNE).await.len(), was.audit + 2);

    // The other direction under the same consent: a referral to the club.
    let (status, receipt) = send(&fed, KOMMUNE, NGO, &referral(&consent)).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(inbox_len(&fed, NGO).await, 1);
    fed.stop().await;
}

/// One refusal case: sender node, receiver node, the bytes, status, reason, pointer.
type Case = (
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    &'static str,
    Option<&'static str>,
);

#[tokio::test]
async fn every_refusal_between_two_nodes_has_its_status_reason_and_one_audit_entry() {
    let fed = TestFederation::start(THREE, Engine::Sqlite).await;
    install_test_catalogue(&fed).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let summary_only = record_consent(&fed, KOMMUNE, NGO, &["smaaboernsklub-fremmoede"]).await;
    let elsewhere = record_consent(&fed, OTHER_KOMMUNE, NGO, ALL_PURPOSES).await;

    // Each case: (sender node, receiver node, the document, status, reason, pointer).
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |from, to, mut doc: Value, status, reason, pointer| {
        // Each case is a new message: reusing an id would be a conflict, not the case.
        doc["message_id"] = json!(new_message_id());
        cases.push((
            from,
            to,
            serde_json::to_vec(&doc).unwrap(),
            status,
            reason,
            pointer,
        ));
    };
    let mut doc = summary(&consent);
    doc["sender"] = json!(OTHER_KOMMUNE);
    add(NGO, KOMMUNE, doc, 403, "sender-mismatch", Some("/sender"));
    let mut doc = summary(&consent);
    doc["recipient"] = json!(OTHER_KOMMUNE);
    add(
        NGO,
        KOMMUNE,
        doc,
        421,
        "recipient-mismatch",
        Some("/recipient"),
    );
    let mut doc = summary(&consent);
    doc["body"]["month"] = json!("0101901234");
    add(NGO, KOMMUNE, doc, 422, "cpr-detected", Some("/body/month"));
    let mut doc = summary(&consent);
    doc["body"]["notes"] = json!("coming along");
    add(
        NGO,
        KOMMUNE,
        doc,
        422,
        "schema-invalid",
        Some("/body/notes"),
    );
    let mut doc = summary(&consent);
    doc["body"]["next_step"] = json!("we will see");
    add(
        NGO,
        KOMMUNE,
        doc,
        422,
        "schema-invalid",
        Some("/body/next_step"),
    );
    // The test catalogue does not let a referral carry `contact_channel`.
    let mut doc = referral(&consent);
    doc["body"]["contact_channel"] = json!("club-contacts-family");
    add(
        KOMMUNE,
        NGO,
        doc,
        422,
        "field-not-allowed",
        Some("/body/contact_channel"),
    );
    let valid_summary = summary(&consent);
    let mut doc = valid_summary.clone();
    doc["purpose"]["version"] = json!(2);
    add(NGO, KOMMUNE, doc, 403, "purpose-unknown", None);
    let mut doc = valid_summary.clone();
    doc["purpose"]["id"] = json!("familieklub-fremmoede");
    add(NGO, KOMMUNE, doc, 403, "purpose-inactive", None);
    let mut doc = referral(&consent);
    doc["purpose"]["id"] = json!("smaaboernsklub-fremmoede");
    add(KOMMUNE, NGO, doc, 403, "type-not-allowed", None);
    let mut doc = referral(&consent);
    doc["type"] = json!("activity-summary");
    doc["purpose"]["id"] = json!("smaaboernsklub-fremmoede");
    doc["body"] = valid_summary["body"].clone();
    add(KOMMUNE, NGO, doc, 403, "direction-not-allowed", None);
    let mut doc = valid_summary.clone();
    doc["consent_id"] = json!("0192f0a4-7b1c-7def-8a00-00000000dead");
    add(NGO, KOMMUNE, doc, 403, "consent-unknown", None);
    let mut doc = valid_summary.clone();
    doc["subject_ref"] = json!("00000000000000000000000000000001");
    add(NGO, KOMMUNE, doc, 403, "subject-not-in-consent", None);
    // The club holds fredericia-kommune's consent; herning-kommune is not a party to it.
    add(
        KOMMUNE,
        NGO,
        referral(&elsewhere),
        403,
        "party-not-in-consent",
        None,
    );
    add(
        KOMMUNE,
        NGO,
        referral(&summary_only),
        403,
        "purpose-not-in-consent",
        None,
    );
    // A second consent.granted under a consent id the club holds already.
    let mut doc = envelope(
        KOMMUNE,
        NGO,
        "consent.granted",
        "henvisning-til-klub",
        &consent,
        serde_json::from_str(include_str!(
            "../../schemas/v1/examples/consent.granted.json"
        ))
        .map(|v: Value| v["body"].clone())
        .unwrap(),
    );
    doc["body"]["valid_from"] = json!(date(-1));
    doc["body"]["valid_until"] = json!(date(30));
    add(KOMMUNE, NGO, doc, 409, "consent-exists", None);
    let mut duplicate = serde_json::to_string(&valid_summary).unwrap();
    duplicate.insert_str(1, "\"v\":1,");
    cases.push((
        NGO,
        KOMMUNE,
        duplicate.into_bytes(),
        400,
        "malformed-json",
        None,
    ));
    let mut big = serde_json::to_vec(&valid_summary).unwrap();
    big.extend(std::iter::repeat_n(b' ', 64 * 1024));
    cases.push((NGO, KOMMUNE, big, 413, "body-too-large", None));

    for (from, to, bytes, status, reason, pointer) in cases {
        let was = before(&fed, to).await;
        let answer = send_bytes(&fed, from, to, bytes).await;
        assert_refused_once(&fed, to, &was, &answer, status, reason).await;
        if let Some(pointer) = pointer {
            assert_eq!(answer.1["pointer"], pointer, "{reason}");
        }
        // Details say what rule failed, never the refused content.
        assert!(!answer.1.to_string().contains("0101901234"));
    }

    // A certificate from the federation CA for an organisation that is not a member.
    let was = before(&fed, KOMMUNE).await;
    let stranger = "ukendt-forening".parse().unwrap();
    let cert = fed.pki.ca_issue(&LeafSpec::node(
        &fed.pki.federation,
        &stranger,
        OffsetDateTime::now_utc(),
        30,
    ));
    let config =
        support::raw_client_config(Some(support::chain_and_key(&cert.cert_pem, &cert.key_pem)));
    let mut stream = support::raw_connect(fed.node(KOMMUNE).federation_addr, config)
        .await
        .unwrap();
    let bytes = serde_json::to_vec(&valid_summary).unwrap();
    let (status, body) =
        support::raw_request(&mut stream, "POST", "/fed/v1/envelopes", Some(&bytes))
            .await
            .unwrap();
    let answer = (status, serde_json::from_str(&body).unwrap());
    assert_refused_once(&fed, KOMMUNE, &was, &answer, 403, "peer-not-member").await;

    // Nothing refused was stored: the one summary that passes is admitted now.
    let (status, receipt) = send(&fed, NGO, KOMMUNE, &valid_summary).await;
    assert_eq!(status, 200, "{receipt}");
    fed.stop().await;
}

#[tokio::test]
async fn a_withdrawal_at_either_side_stops_both_sides_and_each_says_what_it_did() {
    let fed = TestFederation::start(THREE, Engine::Sqlite).await;
    for withdrawing_side in [NGO, KOMMUNE] {
        let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
        let id = consent["consent_id"].as_str().unwrap().to_owned();
        assert_eq!(send(&fed, NGO, KOMMUNE, &summary(&consent)).await.0, 200);
        assert_eq!(send(&fed, KOMMUNE, NGO, &referral(&consent)).await.0, 200);
        let ngo_inbox = inbox_len(&fed, NGO).await;
        let kommune_inbox = inbox_len(&fed, KOMMUNE).await;

        let (status, answer) = local(
            &fed,
            withdrawing_side,
            reqwest::Method::POST,
            &format!("/api/v1/consents/{id}/withdraw"),
            &[Role::ConsentAdmin],
            Some(json!({"event": "withdrawn-by-subject"})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "withdrawn-by-subject");
        let notice = answer["notice_message_id"].as_str().unwrap();
        let delivered = wait_delivered(&fed, withdrawing_side, notice).await;
        let counterpart_ack = &delivered["receipt"]["ack"];
        // The other side's ack is stored here with the notice's receipt.
        let (_, view) = local(
            &fed,
            withdrawing_side,
            reqwest::Method::GET,
            &format!("/api/v1/consents/{id}"),
            &[Role::ConsentAdmin],
            None,
        )
        .await;
        let stored = view["notices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["message_id"] == notice)
            .unwrap();
        assert_eq!(&stored["ack"], counterpart_ack, "{view}");
        // The club deletes what it received; the municipality keeps it under archival law.
        let (ngo_ack, kommune_ack) = if withdrawing_side == NGO {
            (&answer["local"], counterpart_ack)
        } else {
            (counterpart_ack, &answer["local"])
        };
        assert_eq!(
            ngo_ack["actions"][0]["action"], "cancelled-queued",
            "{answer}"
        );
        assert_eq!(
            ngo_ack["actions"][1]["action"], "deleted-received",
            "{answer}"
        );
        assert_eq!(ngo_ack["actions"][1]["count"], 1);
        assert_eq!(kommune_ack["actions"][1]["action"], "retained-with-basis");
        assert_eq!(kommune_ack["actions"][1]["basis"], "arkivloven");
        assert_eq!(kommune_ack["actions"][1]["count"], 1);
        assert_eq!(inbox_len(&fed, NGO).await, ngo_inbox - 1);
        assert_eq!(inbox_len(&fed, KOMMUNE).await, kommune_inbox);

        // Both sides now refuse new messages under the consent.
        for (from, to, doc) in [
            (NGO, KOMMUNE, summary(&consent)),
            (KOMMUNE, NGO, referral(&consent)),
        ] {
            let was = before(&fed, to).await;
            let answer = send(&fed, from, to, &doc).await;
            assert_refused_once(&fed, to, &was, &answer, 403, "consent-not-active").await;
        }
        // And both show the status.
        for org in [NGO, KOMMUNE] {
            let (_, view) = local(
                &fed,
                org,
                reqwest::Method::GET,
                &format!("/api/v1/consents/{id}"),
                &[Role::ConsentAdmin],
                None,
            )
            .await;
            assert_eq!(view["status"], "withdrawn-by-subject", "{org}: {view}");
            assert_eq!(view["active_now"], false);
        }
        // A second withdrawal is refused: the consent has ended already.
        let (status, problem) = local(
            &fed,
            withdrawing_side,
            reqwest::Method::POST,
            &format!("/api/v1/consents/{id}/withdraw"),
            &[Role::ConsentAdmin],
            Some(json!({"event": "revoked"})),
        )
        .await;
        assert_eq!(
            (status, &problem["reason"]),
            (403, &json!("consent-not-active"))
        );
    }

    // A notice for a consent this node never held is answered cleanly and changes nothing.
    let unknown = json!({
        "consent_id": "0192f0a4-7b1c-7def-8a00-00000000beef",
        "subject_ref": "00000000000000000000000000000002",
    });
    let notice = envelope(
        NGO,
        KOMMUNE,
        "consent.withdrawn",
        "smaaboernsklub-fremmoede",
        &unknown,
        json!({"event": "withdrawn-by-subject", "effective_at": "2026-11-22T10:00:00Z"}),
    );
    let was = before(&fed, KOMMUNE).await;
    let (status, receipt) = send(&fed, NGO, KOMMUNE, &notice).await;
    assert_eq!(status, 200, "{receipt}");
    assert!(receipt["ack"]["actions"].as_array().unwrap().is_empty());
    let after = entries(&fed, KOMMUNE).await;
    assert_eq!(after.len(), was.audit + 1);
    assert_eq!(
        after.last().unwrap().record.decision,
        Some(Decision::Permit)
    );
    assert_eq!(inbox_len(&fed, KOMMUNE).await, was.inbox);
    fed.stop().await;
}

#[tokio::test]
async fn a_consent_expires_at_the_end_of_its_last_day_in_danish_time() {
    let start = OffsetDateTime::now_utc();
    let clock = Clock::manual(start);
    let fed = TestFederation::start_with_clock(THREE, Engine::Sqlite, clock.clone()).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let valid_until = OffsetDateTime::parse(
        consent["valid_until"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    // The last day is date(30); its end is 00:00 Danish time on the day after.
    let last_day = start.date() + Duration::days(30);
    let end = brobygger::consent::start_of_day_in_denmark(last_day.next_day().unwrap()).unwrap();
    assert_eq!(valid_until, end);

    clock.set(end - Duration::seconds(1));
    let (status, receipt) = send(&fed, NGO, KOMMUNE, &summary(&consent)).await;
    assert_eq!(status, 200, "{receipt}");

    clock.set(end);
    let was = before(&fed, KOMMUNE).await;
    let answer = send(&fed, NGO, KOMMUNE, &summary(&consent)).await;
    assert_refused_once(&fed, KOMMUNE, &was, &answer, 403, "consent-expired").await;
    fed.stop().await;
}

#[tokio::test]
async fn a_binding_code_binds_once_and_wrong_codes_are_counted_and_locked_out() {
    let start = OffsetDateTime::now_utc();
    let clock = Clock::manual(start);
    let fed = TestFederation::start_with_clock(THREE, Engine::Sqlite, clock.clone()).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let id = consent["consent_id"].as_str().unwrap();
    let code = consent["binding_code"].as_str().unwrap();
    let bind = |code: &str| json!({"binding_code": code, "local_subject_key": "deltager-17"});
    let bind_path = format!("/api/v1/consents/{id}/bind");
    let view_path = format!("/api/v1/consents/{id}");

    // A wrong code is refused, audited and counted.
    let was = before(&fed, NGO).await;
    let answer = local(
        &fed,
        NGO,
        reqwest::Method::POST,
        &bind_path,
        &[Role::ConsentAdmin],
        Some(bind("0000-0000-0000")),
    )
    .await;
    assert_refused_once(&fed, NGO, &was, &answer, 403, "binding-code-wrong").await;
    let (_, view) = local(
        &fed,
        NGO,
        reqwest::Method::GET,
        &view_path,
        &[Role::ConsentAdmin],
        None,
    )
    .await;
    assert_eq!(view["binding_failures_total"], 1);
    assert_eq!(view["bound"], false);

    // Four more wrong codes lock binding, even for the right code, until the lock ends.
    for _ in 0..4 {
        let (status, _) = local(
            &fed,
            NGO,
            reqwest::Method::POST,
            &bind_path,
            &[Role::ConsentAdmin],
            Some(bind("1111-2222-3333")),
        )
        .await;
        assert_eq!(status, 403);
    }
    let was = before(&fed, NGO).await;
    let answer = local(
        &fed,
        NGO,
        reqwest::Method::POST,
        &bind_path,
        &[Role::ConsentAdmin],
        Some(bind(code)),
    )
    .await;
    assert_refused_once(&fed, NGO, &was, &answer, 429, "binding-locked").await;
    let (_, view) = local(
        &fed,
        NGO,
        reqwest::Method::GET,
        &view_path,
        &[Role::ConsentAdmin],
        None,
    )
    .await;
    assert_eq!(view["binding_failures_total"], 5);
    assert_eq!(view["bound"], false);

    clock.set(start + Duration::minutes(16));
    // Typed loosely, the right code binds.
    let (status, bound) = local(
        &fed,
        NGO,
        reqwest::Method::POST,
        &bind_path,
        &[Role::ConsentAdmin],
        Some(bind(&code.to_lowercase().replace('-', " "))),
    )
    .await;
    assert_eq!(status, 200, "{bound}");
    assert_eq!(bound["bound"], true);
    let (_, view) = local(
        &fed,
        NGO,
        reqwest::Method::GET,
        &view_path,
        &[Role::Caseworker],
        None,
    )
    .await;
    assert_eq!(view["bound"], true);
    assert_eq!(view["local_subject_key"], "deltager-17");

    // Never again, not even with the right code.
    let was = before(&fed, NGO).await;
    let answer = local(
        &fed,
        NGO,
        reqwest::Method::POST,
        &bind_path,
        &[Role::ConsentAdmin],
        Some(bind(code)),
    )
    .await;
    assert_refused_once(&fed, NGO, &was, &answer, 409, "already-bound").await;
    // The recording side bound its own key when it recorded.
    let (status, problem) = local(
        &fed,
        KOMMUNE,
        reqwest::Method::POST,
        &bind_path,
        &[Role::ConsentAdmin],
        Some(bind(code)),
    )
    .await;
    assert_eq!((status, &problem["reason"]), (409, &json!("already-bound")));
    fed.stop().await;
}

#[tokio::test]
async fn bad_consent_requests_are_refused_and_record_nothing() {
    let fed = TestFederation::start(THREE, Engine::Sqlite).await;
    let post = |body: Value, roles: &'static [Role]| {
        let fed = &fed;
        async move {
            local(
                fed,
                KOMMUNE,
                reqwest::Method::POST,
                "/api/v1/consents",
                roles,
                Some(body),
            )
            .await
        }
    };
    let good = consent_request(NGO, ALL_PURPOSES, &date(-1), &date(30));
    let mut unknown_field = good.clone();
    unknown_field["child_name"] = json!("Testbarn Testesen");
    let mut cpr_key = good.clone();
    cpr_key["local_subject_key"] = json!("010190-1234");
    let mut too_long = good.clone();
    too_long["valid_until"] = json!(date(400));
    let mut lateral = good.clone();
    lateral["counterpart"] = json!(OTHER_KOMMUNE);
    let mut kept_too_long = good.clone();
    kept_too_long["retention_at_recipient_days"] = json!(3000);
    let mut no_retention = good.clone();
    no_retention["retention_at_recipient_days"] = json!(0);
    let mut unknown_purpose = good.clone();
    unknown_purpose["purposes"] = json!([{"id": "familieklub", "version": 1}]);
    let cases = [
        (unknown_field, 400, "malformed-request"),
        (cpr_key, 422, "cpr-detected"),
        (too_long, 422, "consent-validity-invalid"),
        (lateral, 403, "direction-not-allowed"),
        (unknown_purpose, 403, "purpose-unknown"),
        (kept_too_long, 422, "retention-too-long"),
        (no_retention, 400, "malformed-request"),
    ];
    for (body, status, reason) in cases {
        let (got, problem) = post(body, &[Role::ConsentAdmin]).await;
        assert_eq!(
            (got, &problem["reason"]),
            (status, &json!(reason)),
            "{problem}"
        );
        assert!(!problem.to_string().contains("Testbarn"));
    }
    let (got, problem) = post(good.clone(), &[Role::Caseworker]).await;
    assert_eq!((got, &problem["reason"]), (403, &json!("forbidden-role")));
    // Nothing reached the club.
    assert_eq!(inbox_len(&fed, NGO).await, 0);
    let club_entries = entries(&fed, NGO).await;
    assert!(
        club_entries
            .iter()
            .all(|e| e.record.message_type.as_deref() != Some("consent.granted"))
    );
    // The good request still works.
    let (status, _) = post(good, &[Role::ConsentAdmin]).await;
    assert_eq!(status, 201);
    fed.stop().await;
}
