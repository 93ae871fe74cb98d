//! The exchange end to end: local submission, the durable outbox, delivery with verified
//! receipts, the inbox and the child's timeline, withdrawal effects and retention.

use crate::exchange::{
    ALL_PURPOSES, KOMMUNE, NGO, THREE, entries, inbox_len, local, new_message_id, record_consent,
    referral, send, summary, wait_delivered,
};
use crate::support::process::{NodeProcess, publish_endpoints};
use crate::support::{self, Engine, TestFederation, TestPki};
use brobygger::audit::entry::Decision;
use brobygger::domain::OrgKind;
use brobygger::jwt::Role;
use brobygger::node::Clock;
use brobygger::storage::{self, Database};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use time::OffsetDateTime;

fn summary_body() -> Value {
    json!({
        "month": "2026-11",
        "programme": "smaaboernsklub",
        "enrolment_status": "enrolled",
        "sessions_offered": 4,
        "sessions_attended": 3,
        "next_step": "continue"
    })
}

/// A summary as the club's own system submits it.
fn submission(consent: &Value, message_id: &str) -> Value {
    json!({
        "message_id": message_id,
        "type": "activity-summary",
        "recipient": KOMMUNE,
        "purpose": {"id": "smaaboernsklub-fremmoede", "version": 1},
        "consent_id": consent["consent_id"],
        "body": summary_body(),
    })
}

async fn submit(fed: &TestFederation, org: &str, body: Value) -> (u16, Value) {
    local(
        fed,
        org,
        Method::POST,
        "/api/v1/messages",
        &[Role::Submitter],
        Some(body),
    )
    .await
}

/// Binds a consent at the club with the family's code.
async fn bind_at_club(fed: &TestFederation, consent: &Value, key: &str) {
    let id = consent["consent_id"].as_str().unwrap();
    let (status, body) = local(
        fed,
        NGO,
        Method::POST,
        &format!("/api/v1/consents/{id}/bind"),
        &[Role::ConsentAdmin],
        Some(json!({"binding_code": consent["binding_code"], "local_subject_key": key})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_summary_pushed_at_the_club_reaches_the_inbox_and_the_timeline_with_a_verified_receipt() {
    let fed = TestFederation::start(THREE, Engine::Sqlite).await;
    // The municipality records the consent for its case; the club binds it when the family
    // comes to the first meeting.
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    bind_at_club(&fed, &consent, "deltager-17").await;

    let message_id = new_message_id();
    let item = submission(&consent, &message_id);
    let (status, accepted) = submit(&fed, NGO, item.clone()).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["state"], "queued");
    assert_eq!(accepted["message_id"], message_id.as_str());

    // A retry with the same id and body gets the first answer and queues nothing new.
    let (status, again) = submit(&fed, NGO, item.clone()).await;
    assert_eq!((status, &again), (202, &accepted));
    // The same id with another body is refused.
    let mut changed = item.clone();
    changed["body"]["sessions_attended"] = json!(4);
    let (status, problem) = submit(&fed, NGO, changed).await;
    assert_eq!(
        (status, &problem["reason"]),
        (409, &json!("message-id-conflict"))
    );

    let delivered = wait_delivered(&fed, NGO, &message_id).await;
    assert_eq!(delivered["status"], "delivered");
    assert_eq!(delivered["attempts"], 1);

    // The municipality's inbox holds exactly the bytes the receipt proves.
    let inbox = storage::inbox_messages(&fed.node(KOMMUNE).state.db)
        .await
        .unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].message_id, message_id);
    let receipt: brobygger::wire::ReceiptV1 =
        serde_json::from_value(delivered["receipt"].clone()).unwrap();
    let manifest = fed.node(NGO).state.manifest.snapshot();
    let key = &manifest
        .member(&KOMMUNE.parse().unwrap())
        .unwrap()
        .audit_key;
    brobygger::receipt::verify(&receipt, &message_id, &inbox[0].envelope, key).unwrap();

    // The caseworker reads it, and the read is audited.
    let audit_before = entries(&fed, KOMMUNE).await.len();
    let (status, page) = local(
        &fed,
        KOMMUNE,
        Method::GET,
        &format!(
            "/api/v1/inbox?consent={}",
            consent["consent_id"].as_str().unwrap()
        ),
        &[Role::Caseworker],
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["body"], summary_body());
    assert_eq!(page["items"][0]["sender"], NGO);
    let after = entries(&fed, KOMMUNE).await;
    assert_eq!(after.len(), audit_before + 1);
    assert_eq!(after.last().unwrap().record.action, "local.inbox.read");
    // Filters narrow it.
    let (_, none) = local(
        &fed,
        KOMMUNE,
        Method::GET,
        "/api/v1/inbox?type=referral-response",
        &[Role::Caseworker],
        None,
    )
    .await;
    assert!(none["items"].as_array().unwrap().is_empty());
    let (status, problem) = local(
        &fed,
        KOMMUNE,
        Method::GET,
        "/api/v1/inbox?colour=blue",
        &[Role::Caseworker],
        None,
    )
    .await;
    assert_eq!(
        (status, &problem["reason"]),
        (400, &json!("malformed-request"))
    );

    // The red thread at the municipality: the consent, then the club's report.
    let (status, timeline) = local(
        &fed,
        KOMMUNE,
        Method::GET,
        "/api/v1/subjects/sag-2026-0042/timeline",
        &[Role::Caseworker],
        None,
    )
    .await;
    assert_eq!(status, 200, "{timeline}");
    let kinds: Vec<(&str, &str)> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["what"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("consent", "given"), ("received", "activity-summary")]
    );
    // And at the club, under its own key for the child: what it sent.
    let (_, club) = local(
        &fed,
        NGO,
        Method::GET,
        "/api/v1/subjects/deltager-17/timeline",
        &[Role::Caseworker],
        None,
    )
    .await;
    let club_kinds: Vec<&str> = club["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(club_kinds, ["consent", "sent"], "{club}");
    // An unknown child is out of the caseworker's scope, like any other child they may not
    // read (and the attempt is audited).
    let (status, _) = local(
        &fed,
        KOMMUNE,
        Method::GET,
        "/api/v1/subjects/sag-0000/timeline",
        &[Role::Caseworker],
        None,
    )
    .await;
    assert_eq!(status, 403);
    fed.stop().await;
}

#[tokio::test]
async fn a_batch_with_bad_items_accepts_the_good_ones_and_names_each_bad_reason() {
    let fed = TestFederation::start(THREE, Engine::Sqlite).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let good = |id: &str| submission(&consent, id);
    let mut cpr = good(&new_message_id());
    cpr["body"]["month"] = json!("0101901234");
    let mut unknown_consent = good(&new_message_id());
    unknown_consent["consent_id"] = json!("0192f0a4-7b1c-7def-8a00-00000000dead");
    let mut free_text = good(&new_message_id());
    free_text["body"]["next_step"] = json!("we will see");
    let mut extra_field = good(&new_message_id());
    extra_field["priority"] = json!("high");
    // A referral from the club: the purpose lets referrals go to the club, not from it.
    let mut wrong_way = good(&new_message_id());
    wrong_way["type"] = json!("referral");
    wrong_way["purpose"]["id"] = json!("henvisning-til-klub");
    wrong_way["body"] = referral(&consent)["body"].clone();
    let (first, last) = (new_message_id(), new_message_id());
    let batch = json!([
        good(&first),
        cpr,
        unknown_consent,
        free_text,
        extra_field,
        wrong_way,
        good(&last)
    ]);
    let (status, answer) = submit(&fed, NGO, batch).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let outcome: Vec<(u64, Option<&str>)> = results
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["problem"]["reason"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            (202, None),
            (422, Some("cpr-detected")),
            (403, Some("consent-unknown")),
            (422, Some("schema-invalid")),
            (422, Some("schema-invalid")),
            (403, Some("direction-not-allowed")),
            (202, None),
        ]
    );
    assert_eq!(results[1]["problem"]["pointer"], "/body/month");
    assert_eq!(results[3]["problem"]["pointer"], "/body/next_step");
    assert!(!answer.to_string().contains("0101901234"));
    wait_delivered(&fed, NGO, &first).await;
    wait_delivered(&fed, NGO, &last).await;
    assert_eq!(inbox_len(&fed, KOMMUNE).await, 2);
    // Every item is its own audited decision.
    let submits: Vec<_> = entries(&fed, NGO)
        .await
        .into_iter()
        .filter(|e| e.record.action == "local.message.submit")
        .collect();
    assert_eq!(submits.len(), 7);
    assert_eq!(
        submits
            .iter()
            .filter(|e| e.record.decision == Some(Decision::Permit))
            .count(),
        2
    );
    // Too many messages in one request.
    let (status, problem) = submit(&fed, NGO, Value::Array(vec![json!({}); 1001])).await;
    assert_eq!(
        (status, &problem["reason"]),
        (400, &json!("malformed-request"))
    );
    fed.stop().await;
}

#[tokio::test]
async fn a_withdrawal_cancels_queued_messages_jumps_the_queue_and_purges_the_clubs_inbox() {
    let fed = TestFederation::start(THREE, Engine::Sqlite).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let id = consent["consent_id"].as_str().unwrap().to_owned();
    // The club received a referral under the consent.
    assert_eq!(send(&fed, KOMMUNE, NGO, &referral(&consent)).await.0, 200);
    assert_eq!(inbox_len(&fed, NGO).await, 1);

    // The municipality cannot reach the club for now: its manifest names a dead endpoint.
    let mut doc = fed.pki.manifest_doc();
    doc.serial = fed.node(KOMMUNE).state.manifest.snapshot().serial + 1;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    for member in &mut doc.members {
        member.endpoint = if member.org_id == NGO {
            format!("https://{dead_addr}")
        } else {
            format!("https://{}", fed.node(&member.org_id).federation_addr)
        };
    }
    fed.install_manifest(&doc).await;
    // Three referrals wait in the municipality's outbox.
    let mut queued = Vec::new();
    for _ in 0..3 {
        let message_id = new_message_id();
        let item = json!({
            "message_id": message_id,
            "type": "referral",
            "recipient": NGO,
            "purpose": {"id": "henvisning-til-klub", "version": 1},
            "consent_id": id,
            "body": referral(&consent)["body"],
        });
        let (status, body) = submit(&fed, KOMMUNE, item).await;
        assert_eq!(status, 202, "{body}");
        queued.push(message_id);
    }

    // The family withdraws at the municipality.
    let (status, answer) = local(
        &fed,
        KOMMUNE,
        Method::POST,
        &format!("/api/v1/consents/{id}/withdraw"),
        &[Role::ConsentAdmin],
        Some(json!({"event": "withdrawn-by-subject"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["local"]["actions"][0]["action"], "cancelled-queued");
    assert_eq!(answer["local"]["actions"][0]["count"], 3);
    for message_id in &queued {
        let (_, status) = local(
            &fed,
            KOMMUNE,
            Method::GET,
            &format!("/api/v1/messages/{message_id}"),
            &[Role::Submitter],
            None,
        )
        .await;
        assert_eq!(status["status"], "cancelled");
        assert_eq!(status["reason"], "cancelled-consent-withdrawn");
    }

    // The club is reachable again: the notice goes first, the club deletes what it received
    // and its ack is stored at the municipality.
    let mut doc = fed.pki.manifest_doc();
    doc.serial = fed.node(KOMMUNE).state.manifest.snapshot().serial + 1;
    for member in &mut doc.members {
        member.endpoint = format!("https://{}", fed.node(&member.org_id).federation_addr);
    }
    fed.install_manifest(&doc).await;
    let notice = answer["notice_message_id"].as_str().unwrap();
    let delivered = wait_delivered(&fed, KOMMUNE, notice).await;
    assert_eq!(
        delivered["receipt"]["ack"]["actions"][1]["action"],
        "deleted-received"
    );
    assert_eq!(delivered["receipt"]["ack"]["actions"][1]["count"], 1);
    assert_eq!(inbox_len(&fed, NGO).await, 0);
    let (_, view) = local(
        &fed,
        KOMMUNE,
        Method::GET,
        &format!("/api/v1/consents/{id}"),
        &[Role::Caseworker],
        None,
    )
    .await;
    let stored = view["notices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["message_id"] == notice)
        .unwrap();
    assert_eq!(stored["ack"], delivered["receipt"]["ack"]);
    // Nothing cancelled reached the club.
    assert_eq!(inbox_len(&fed, NGO).await, 0);
    fed.stop().await;
}

#[tokio::test]
async fn received_messages_are_deleted_when_their_retention_ends() {
    let start = OffsetDateTime::now_utc();
    let clock = Clock::manual(start);
    let fed = TestFederation::start_with_clock(THREE, Engine::Sqlite, clock.clone()).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    assert_eq!(send(&fed, NGO, KOMMUNE, &summary(&consent)).await.0, 200);
    let state = &fed.node(KOMMUNE).state;
    // The consent keeps what the municipality receives for 365 days.
    clock.set(start + time::Duration::days(365) - time::Duration::minutes(1));
    assert_eq!(brobygger::retention::purge_once(state).await.unwrap(), 0);
    assert_eq!(inbox_len(&fed, KOMMUNE).await, 1);
    clock.set(start + time::Duration::days(365) + time::Duration::minutes(1));
    let audit_before = entries(&fed, KOMMUNE).await.len();
    assert_eq!(brobygger::retention::purge_once(state).await.unwrap(), 1);
    assert_eq!(inbox_len(&fed, KOMMUNE).await, 0);
    let after = entries(&fed, KOMMUNE).await;
    assert_eq!(after.len(), audit_before + 1);
    assert_eq!(after.last().unwrap().record.action, "retention.purge");
    fed.stop().await;
}

/// Opens a process node's SQLite database for reading.
async fn open_read_only(pki: &TestPki, org: &str) -> Database {
    let config = pki.config(org, &[]);
    Database::open_read_only(&config.database).await.unwrap()
}

async fn local_call(
    pki: &TestPki,
    node: &NodeProcess,
    method: Method,
    path: &str,
    roles: &[Role],
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = support::local_client(&pki.ca_pem())
        .request(method, format!("https://{}{path}", node.local_addr))
        .bearer_auth(pki.token(&node.org, roles));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_thousand_messages_sent_while_the_receiver_is_down_arrive_exactly_once() {
    let pki = TestPki::new(&[
        ("herning-kommune", OrgKind::Municipality),
        ("red-barnet", OrgKind::Ngo),
    ]);
    let kommune = NodeProcess::spawn(&pki, KOMMUNE, &[]).await;
    let club = NodeProcess::spawn(&pki, NGO, &[]).await;
    publish_endpoints(&pki, &[&kommune, &club]);
    // Record a consent at the municipality and wait until the club holds it.
    let request = crate::exchange::consent_request(
        NGO,
        ALL_PURPOSES,
        &crate::exchange::date(-1),
        &crate::exchange::date(30),
    );
    let mut consent = Value::Null;
    support::wait_until(
        "both nodes know each other's endpoint",
        Duration::from_secs(20),
        || async {
            let (status, _) = local_call(
                &pki,
                &kommune,
                Method::POST,
                &format!("/api/v1/peers/{NGO}/ping"),
                &[Role::Admin],
                None,
            )
            .await;
            status == 200
        },
    )
    .await;
    let (status, recorded) = local_call(
        &pki,
        &kommune,
        Method::POST,
        "/api/v1/consents",
        &[Role::ConsentAdmin],
        Some(request),
    )
    .await;
    assert_eq!(status, 201, "{recorded}");
    consent["consent_id"] = recorded["consent_id"].clone();
    let notice = recorded["notice_message_id"].as_str().unwrap().to_owned();
    support::wait_until(
        "the club holds the consent",
        Duration::from_secs(20),
        || async {
            let (_, status) = local_call(
                &pki,
                &kommune,
                Method::GET,
                &format!("/api/v1/messages/{notice}"),
                &[Role::Submitter],
                None,
            )
            .await;
            status["status"] == "delivered"
        },
    )
    .await;

    // The municipality goes down; the club's system submits 1,000 summaries.
    assert_eq!(kommune.terminate().await, Some(0));
    let ids: Vec<String> = (0..1_000).map(|_| new_message_id()).collect();
    let batch: Vec<Value> = ids.iter().map(|id| submission(&consent, id)).collect();
    let rss_before = club.rss_kib();
    let (status, answer) = local_call(
        &pki,
        &club,
        Method::POST,
        "/api/v1/messages",
        &[Role::Submitter],
        Some(Value::Array(batch)),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == 202),
        "{answer}"
    );
    let rss_peak = std::cell::Cell::new(rss_before);
    support::wait_until(
        "the circuit breaker opens",
        Duration::from_secs(30),
        || async {
            rss_peak.set(rss_peak.get().max(club.rss_kib()));
            club.log().contains("circuit breaker opened")
        },
    )
    .await;

    // It comes back on a new port; the operator publishes the new endpoint.
    let kommune = NodeProcess::spawn(&pki, KOMMUNE, &[]).await;
    publish_endpoints(&pki, &[&kommune, &club]);
    let club_db = open_read_only(&pki, NGO).await;
    support::wait_until("all 1,000 delivered", Duration::from_secs(120), || async {
        rss_peak.set(rss_peak.get().max(club.rss_kib()));
        let counts = storage::outbox_status_counts(&club_db).await.unwrap();
        counts
            .iter()
            .any(|(status, n)| status == "delivered" && *n == 1_000)
    })
    .await;
    assert!(
        club.log().contains("circuit breaker closed"),
        "{}",
        club.log()
    );
    // Memory stayed bounded: the backlog lives in the database.
    let rss_peak = rss_peak.get();
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_peak} KiB"
    );

    // Exactly once in effect: 1,000 inbox rows and one admitting audit entry per message.
    let kommune_pid = kommune.pid();
    assert_eq!(kommune.terminate().await, Some(0), "pid {kommune_pid}");
    let kommune_db = open_read_only(&pki, KOMMUNE).await;
    let inbox = storage::inbox_messages(&kommune_db).await.unwrap();
    assert_eq!(inbox.len(), 1_000);
    let mut received: Vec<&str> = inbox.iter().map(|m| m.message_id.as_str()).collect();
    received.sort_unstable();
    let mut sent: Vec<&str> = ids.iter().map(String::as_str).collect();
    sent.sort_unstable();
    assert_eq!(received, sent);
    let admitted = storage::audit_entries(&kommune_db)
        .await
        .unwrap()
        .iter()
        .map(|e| brobygger::audit::entry::decode(&e.entry).unwrap().record)
        .filter(|r| {
            r.action == "federation.envelope"
                && r.decision == Some(Decision::Permit)
                && r.message_type.as_deref() == Some("activity-summary")
        })
        .map(|r| r.message_id_hmac.unwrap())
        .collect::<Vec<_>>();
    assert_eq!(admitted.len(), 1_000);
    let distinct: std::collections::BTreeSet<_> = admitted.iter().collect();
    assert_eq!(distinct.len(), 1_000);
    club.terminate().await;
}
