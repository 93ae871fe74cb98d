//! Crash safety with real processes: named failpoints (compiled into test builds only) abort a
//! node at the worst moments, and random SIGKILLs hit either node during a stream of messages.
//! After restarts every accepted message is delivered exactly once, the receipts the sender
//! holds are what the receiver answers now, and each message has exactly one admitting audit
//! entry.

use crate::exchange::{ALL_PURPOSES, KOMMUNE, NGO, consent_request, date, new_message_id};
use crate::support::process::{NodeProcess, publish_endpoints};
use crate::support::{self, TestPki};
use brobygger::audit::entry::{Decision, decode};
use brobygger::domain::OrgKind;
use brobygger::jwt::Role;
use brobygger::storage::{self, Database};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

fn pki() -> TestPki {
    TestPki::new(&[
        ("herning-kommune", OrgKind::Municipality),
        ("red-barnet", OrgKind::Ngo),
    ])
}

async fn call(
    pki: &TestPki,
    org: &str,
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    roles: &[Role],
    body: Option<Value>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut request = support::local_client(&pki.ca_pem())
        .request(method, format!("https://{addr}{path}"))
        .bearer_auth(pki.token(org, roles))
        .timeout(Duration::from_secs(60));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn open(pki: &TestPki, org: &str) -> Database {
    Database::open_read_only(&pki.config(org, &[]).database)
        .await
        .unwrap()
}

/// Records a consent at the municipality and waits until the club holds it; the consent id.
async fn consent(pki: &TestPki, kommune: &NodeProcess) -> Value {
    support::wait_until(
        "the nodes reach each other",
        Duration::from_secs(30),
        || async {
            call(
                pki,
                KOMMUNE,
                kommune.local_addr,
                Method::POST,
                &format!("/api/v1/peers/{NGO}/ping"),
                &[Role::Admin],
                None,
            )
            .await
            .is_ok_and(|(status, _)| status == 200)
        },
    )
    .await;
    let request = consent_request(NGO, ALL_PURPOSES, &date(-1), &date(30));
    let (status, recorded) = call(
        pki,
        KOMMUNE,
        kommune.local_addr,
        Method::POST,
        "/api/v1/consents",
        &[Role::ConsentAdmin],
        Some(request),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{recorded}");
    let notice: brobygger::domain::MessageId = recorded["notice_message_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let db = open(pki, KOMMUNE).await;
    support::wait_until(
        "the club holds the consent",
        Duration::from_secs(30),
        || async {
            storage::outbox_message(&db, &notice)
                .await
                .unwrap()
                .is_some_and(|m| m.status == "delivered")
        },
    )
    .await;
    json!({"consent_id": recorded["consent_id"]})
}

fn summary(consent: &Value, message_id: &str) -> Value {
    json!({
        "message_id": message_id,
        "type": "activity-summary",
        "recipient": KOMMUNE,
        "purpose": {"id": "smaaboernsklub-fremmoede", "version": 1},
        "consent_id": consent["consent_id"],
        "body": {
            "month": "2026-11",
            "programme": "smaaboernsklub",
            "enrolment_status": "enrolled",
            "sessions_offered": 4,
            "sessions_attended": 3,
            "next_step": "continue"
        },
    })
}

/// Waits until the club's outbox shows `count` delivered messages and nothing queued.
async fn wait_all_delivered(pki: &TestPki, count: u64, within: Duration) {
    let db = open(pki, NGO).await;
    support::wait_until(&format!("{count} delivered"), within, || async {
        let counts = storage::outbox_status_counts(&db).await.unwrap();
        counts
            .iter()
            .any(|(status, n)| status == "delivered" && *n == count)
            && !counts.iter().any(|(status, _)| status == "queued")
    })
    .await;
}

/// A client of the municipality's federation listener presenting the club's certificate.
fn as_the_club(pki: &TestPki) -> reqwest::Client {
    let dir = pki.path();
    let identity = support::chain_and_key(
        &std::fs::read_to_string(dir.join("red-barnet/node.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("red-barnet/node.key")).unwrap(),
    );
    let config = Arc::unwrap_or_clone(support::raw_client_config(Some(identity)));
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .build()
        .unwrap()
}

/// Everything the acceptance asks after the dust settles: each id delivered exactly once into
/// the municipality's inbox, one admitting audit entry per message, the receipts the club holds
/// identical to what the municipality answers now, and SQLite at `synchronous=FULL`.
async fn assert_exactly_once(pki: &TestPki, ids: &[String]) {
    let kommune = NodeProcess::spawn(pki, KOMMUNE, &[]).await;
    let kommune_db = open(pki, KOMMUNE).await;
    let inbox = storage::inbox_messages(&kommune_db).await.unwrap();
    let mut received: Vec<&str> = inbox.iter().map(|m| m.message_id.as_str()).collect();
    received.sort_unstable();
    let mut sent: Vec<&str> = ids.iter().map(String::as_str).collect();
    sent.sort_unstable();
    assert_eq!(
        received, sent,
        "every accepted message arrived exactly once"
    );
    let admitting: Vec<String> = storage::audit_entries(&kommune_db)
        .await
        .unwrap()
        .iter()
        .map(|e| decode(&e.entry).unwrap().record)
        .filter(|r| {
            r.action == "federation.envelope"
                && r.decision == Some(Decision::Permit)
                && r.message_type.as_deref() == Some("activity-summary")
        })
        .map(|r| r.message_id_hmac.unwrap())
        .collect();
    assert_eq!(
        admitting.len(),
        ids.len(),
        "one admitting entry per message"
    );
    let distinct: std::collections::BTreeSet<&String> = admitting.iter().collect();
    assert_eq!(distinct.len(), ids.len());

    // The receipts the club holds are what the municipality answers to a replay now.
    let club_db = open(pki, NGO).await;
    let client = as_the_club(pki);
    let url = format!("https://{}/fed/v1/envelopes", kommune.federation_addr);
    let checks = inbox.iter().map(|message| {
        let (client, url, club_db) = (&client, &url, &club_db);
        async move {
            let id: brobygger::domain::MessageId = message.message_id.parse().unwrap();
            let held = storage::outbox_message(club_db, &id)
                .await
                .unwrap()
                .unwrap()
                .receipt
                .unwrap();
            let answer = client
                .post(url)
                .header("content-type", "application/json")
                .body(message.envelope.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(answer.headers()["brobygger-replayed"], "true");
            assert_eq!(answer.text().await.unwrap(), held, "receipt of {id}");
        }
    });
    futures_util::StreamExt::collect::<Vec<()>>(futures_util::StreamExt::buffer_unordered(
        futures_util::stream::iter(checks),
        16,
    ))
    .await;
    let (_, ready) = call(
        pki,
        KOMMUNE,
        kommune.local_addr,
        Method::GET,
        "/readyz",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(ready["database"]["sqlite_synchronous"], 2, "{ready}");
    kommune.terminate().await;
}

#[tokio::test]
async fn a_receiver_killed_after_its_commit_but_before_its_answer_applies_the_message_once() {
    let pki = pki();
    let kommune =
        NodeProcess::spawn(&pki, KOMMUNE, &[("FAILPOINTS", "receiver-after-commit")]).await;
    let club = NodeProcess::spawn(&pki, NGO, &[]).await;
    publish_endpoints(&pki, &[&kommune, &club]);
    let consent = consent(&pki, &kommune).await;
    let id = new_message_id();
    let (status, answer) = call(
        &pki,
        NGO,
        club.local_addr,
        Method::POST,
        "/api/v1/messages",
        &[Role::Submitter],
        Some(summary(&consent, &id)),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{answer}");
    // The municipality commits the message and dies before it answers.
    let status = kommune.exited(Duration::from_secs(30)).await;
    assert!(!status.success());
    let kommune = NodeProcess::spawn(&pki, KOMMUNE, &[]).await;
    publish_endpoints(&pki, &[&kommune, &club]);
    wait_all_delivered(&pki, 1, Duration::from_secs(60)).await;
    kommune.terminate().await;
    assert_exactly_once(&pki, &[id]).await;
    club.terminate().await;
}

#[tokio::test]
async fn a_sender_killed_after_sending_but_before_recording_it_delivers_once() {
    let pki = pki();
    let kommune = NodeProcess::spawn(&pki, KOMMUNE, &[]).await;
    let club = NodeProcess::spawn(&pki, NGO, &[("FAILPOINTS", "sender-after-send")]).await;
    publish_endpoints(&pki, &[&kommune, &club]);
    let consent = consent(&pki, &kommune).await;
    let id = new_message_id();
    let (status, answer) = call(
        &pki,
        NGO,
        club.local_addr,
        Method::POST,
        "/api/v1/messages",
        &[Role::Submitter],
        Some(summary(&consent, &id)),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{answer}");
    // The club sends, gets the receipt, and dies before it records the delivery.
    let status = club.exited(Duration::from_secs(30)).await;
    assert!(!status.success());
    let club = NodeProcess::spawn(&pki, NGO, &[]).await;
    publish_endpoints(&pki, &[&kommune, &club]);
    wait_all_delivered(&pki, 1, Duration::from_secs(60)).await;
    kommune.terminate().await;
    assert_exactly_once(&pki, &[id]).await;
    club.terminate().await;
}

/// A random number below `n`.
fn random_below(n: u64) -> u64 {
    u64::from_le_bytes(brobygger::consent::random_bytes::<8>().unwrap()) % n
}

#[tokio::test]
async fn twenty_random_kills_during_five_thousand_messages_lose_and_duplicate_nothing() {
    let pki = Arc::new(pki());
    let kommune = NodeProcess::spawn(&pki, KOMMUNE, &[]).await;
    let club = NodeProcess::spawn(&pki, NGO, &[]).await;
    publish_endpoints(&pki, &[&kommune, &club]);
    let consent = consent(&pki, &kommune).await;
    let ids: Vec<String> = (0..5_000).map(|_| new_message_id()).collect();
    let club_addr = Arc::new(std::sync::Mutex::new(club.local_addr));

    // The club's system submits in batches of 500 and retries a batch (same ids, same bodies)
    // until every message in it is accepted, whatever happens to the node meanwhile.
    let submitter = {
        let (pki, ids, consent, club_addr) =
            (pki.clone(), ids.clone(), consent.clone(), club_addr.clone());
        tokio::spawn(async move {
            for chunk in ids.chunks(500) {
                let batch: Vec<Value> = chunk.iter().map(|id| summary(&consent, id)).collect();
                loop {
                    let addr = *club_addr.lock().unwrap();
                    let result = call(
                        &pki,
                        NGO,
                        addr,
                        Method::POST,
                        "/api/v1/messages",
                        &[Role::Submitter],
                        Some(Value::Array(batch.clone())),
                    )
                    .await;
                    if let Ok((200, answer)) = &result
                        && answer["results"]
                            .as_array()
                            .is_some_and(|r| r.iter().all(|r| r["status"] == 202))
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };

    // Meanwhile, twenty SIGKILLs of either node, each restarted at once.
    let (mut kommune, mut club) = (kommune, club);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200 + random_below(600))).await;
        if random_below(2) == 0 {
            kommune.kill().await;
            kommune = NodeProcess::spawn(&pki, KOMMUNE, &[]).await;
        } else {
            club.kill().await;
            club = NodeProcess::spawn(&pki, NGO, &[]).await;
            *club_addr.lock().unwrap() = club.local_addr;
        }
        publish_endpoints(&pki, &[&kommune, &club]);
    }
    tokio::time::timeout(Duration::from_secs(300), submitter)
        .await
        .expect("the submitter did not finish")
        .unwrap();
    // The consent notice plus the 5,000 summaries.
    wait_all_delivered(&pki, 5_000, Duration::from_secs(300)).await;
    let (_, ready) = call(
        &pki,
        NGO,
        club.local_addr,
        Method::GET,
        "/readyz",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(ready["database"]["sqlite_synchronous"], 2, "{ready}");
    kommune.terminate().await;
    assert_exactly_once(&pki, &ids).await;
    club.terminate().await;
}
