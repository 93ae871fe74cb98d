//! The auditor API and the checkpoint hand-off between nodes: every filter and identifier search
//! of `GET /api/v1/audit/entries` against exact entry sets, the role check and the audit of
//! every query, proofs cross-checked with the independent `tlog_tiles` crate and our verifier,
//! `GET /fed/v1/checkpoint`, and a peer whose log is rewritten by its operator being caught by
//! the other node (alarm counted, logged once, audited, shown in `/readyz`) while an honest peer
//! whose log grew raises nothing.

use crate::exchange::{
    ALL_PURPOSES, KOMMUNE, NGO, entries, local, new_message_id, record_consent, send, summary,
    wait_delivered,
};
use crate::support::{Engine, TestFederation};
use brobygger::audit::checkpoint::Checkpoint;
use brobygger::audit::entry::{AuditRecord, Decision, DecodedEntry, decode};
use brobygger::audit::merkle::{self, Hash};
use brobygger::domain::OrgKind;
use brobygger::federation::{self, PeerError};
use brobygger::jwt::Role;
use brobygger::node::{self, Clock};
use brobygger::peer_logs::{self, Inconsistency, Verdict};
use brobygger::signed_note::VerifierKey;
use brobygger::storage::{self, Database};
use brobygger::write_path::Writer;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const TWO: &[(&str, OrgKind)] = &[(KOMMUNE, OrgKind::Municipality), (NGO, OrgKind::Ngo)];

/// What the scenario did at the municipality, for exact expectations.
struct Scenario {
    fed: TestFederation,
    t0: OffsetDateTime,
    consent: Value,
    /// The leaf indexes at the municipality that admitted the two summaries (at t0 + 1 h), and
    /// their message ids.
    summaries: Vec<(u64, String)>,
    /// The leaf index that refused a summary holding a CPR number (at t0 + 2 h).
    refused: u64,
    /// The leaf index of a caseworker's timeline read by the local subject key (at t0 + 2 h).
    timeline_read: u64,
}

fn hour(t0: OffsetDateTime, hours: i64) -> OffsetDateTime {
    t0 + time::Duration::hours(hours)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// Two nodes on a manual clock. At t0 the municipality records a consent for the club (which
/// is delivered); at t0 + 1 h the club sends two summaries; at t0 + 2 h a summary with a CPR
/// number is refused and a caseworker reads the child's timeline.
async fn scenario(engine: Engine) -> Scenario {
    let t0 = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let clock = Clock::manual(t0);
    let fed = TestFederation::start_with_clock(TWO, engine, clock.clone()).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;

    clock.set(hour(t0, 1));
    let mut summaries = Vec::new();
    for _ in 0..2 {
        let doc = summary(&consent);
        let (status, receipt) = send(&fed, NGO, KOMMUNE, &doc).await;
        assert_eq!(status, 200, "{receipt}");
        summaries.push((
            receipt["leaf_index"].as_u64().unwrap(),
            doc["message_id"].as_str().unwrap().to_owned(),
        ));
    }

    clock.set(hour(t0, 2));
    let mut cpr = summary(&consent);
    cpr["body"]["month"] = json!("0101901234");
    let (status, problem) = send(&fed, NGO, KOMMUNE, &cpr).await;
    assert_eq!((status, &problem["reason"]), (422, &json!("cpr-detected")));
    let refused = entries(&fed, KOMMUNE).await.last().unwrap().idx;
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
    let timeline_read = entries(&fed, KOMMUNE).await.last().unwrap().idx;
    Scenario {
        fed,
        t0,
        consent,
        summaries,
        refused,
        timeline_read,
    }
}

/// `GET /api/v1/audit/entries?{query}` at the municipality, as an auditor.
async fn audit_entries(fed: &TestFederation, query: &str) -> (u16, Value) {
    local(
        fed,
        KOMMUNE,
        Method::GET,
        &format!("/api/v1/audit/entries?{query}"),
        &[Role::Auditor],
        None,
    )
    .await
}

/// The indexes of one page, checked to be increasing.
fn indexes(page: &Value) -> Vec<u64> {
    let found: Vec<u64> = page["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert!(found.windows(2).all(|w| w[0] < w[1]), "{found:?}");
    found
}

/// The indexes of the municipality's entries (read from the database) that satisfy `wanted`.
async fn expected(fed: &TestFederation, wanted: impl Fn(&DecodedEntry) -> bool) -> Vec<u64> {
    entries(fed, KOMMUNE)
        .await
        .iter()
        .filter(|e| wanted(e))
        .map(|e| e.idx)
        .collect()
}

/// Runs an entries query and checks its page against the entries satisfying `wanted` before it.
async fn assert_query(
    fed: &TestFederation,
    query: &str,
    wanted: impl Fn(&DecodedEntry) -> bool,
) -> Vec<u64> {
    let expected = expected(fed, wanted).await;
    let (status, page) = audit_entries(fed, query).await;
    assert_eq!(status, 200, "{query}: {page}");
    assert_eq!(indexes(&page), expected, "{query}");
    assert!(page.get("next").is_none(), "{query}: {page}");
    expected
}

fn time_of(entry: &DecodedEntry) -> OffsetDateTime {
    OffsetDateTime::parse(&entry.record.time, &Rfc3339).unwrap()
}

fn hmac(fed: &TestFederation, kind: &str, value: &str) -> String {
    fed.node(KOMMUNE).state.hmac.pseudonymise(kind, value)
}

#[tokio::test]
async fn auditors_filter_entries_by_time_range() {
    let s = scenario(Engine::Sqlite).await;
    let fed = &s.fed;
    let (from, to) = (rfc3339(hour(s.t0, 1)), rfc3339(hour(s.t0, 2)));
    // Exactly the two summaries were decided in the second hour.
    let found = assert_query(fed, &format!("from={from}&to={to}"), |e| {
        (hour(s.t0, 1)..hour(s.t0, 2)).contains(&time_of(e))
    })
    .await;
    let summaries: Vec<u64> = s.summaries.iter().map(|(i, _)| *i).collect();
    assert_eq!(found, summaries);
    // `from` is inclusive, `to` exclusive; each alone is a half-open range.
    let before = assert_query(fed, &format!("to={from}"), |e| time_of(e) < hour(s.t0, 1)).await;
    assert!(!before.is_empty() && before.iter().all(|i| *i < summaries[0]));
    let after = assert_query(fed, &format!("from={to}"), |e| time_of(e) >= hour(s.t0, 2)).await;
    assert!(after.contains(&s.refused) && after.contains(&s.timeline_read));
    // Any RFC 3339 offset names the same instant.
    let local_from = hour(s.t0, 1)
        .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap())
        .format(&Rfc3339)
        .unwrap()
        .replace('+', "%2B");
    let (status, page) = audit_entries(fed, &format!("from={local_from}&to={to}")).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(indexes(&page), summaries);
    let (status, problem) = audit_entries(fed, "from=yesterday").await;
    assert_eq!(
        (status, &problem["reason"]),
        (400, &json!("malformed-request"))
    );
    s.fed.stop().await;
}

#[tokio::test]
async fn auditors_filter_entries_by_peer() {
    let s = scenario(Engine::Sqlite).await;
    let fed = &s.fed;
    let found = assert_query(fed, &format!("peer={NGO}"), |e| {
        e.record.peer.as_deref() == Some(NGO)
    })
    .await;
    for (index, _) in &s.summaries {
        assert!(found.contains(index));
    }
    assert!(found.contains(&s.refused));
    assert_query(fed, "peer=fredericia-kommune", |_| false).await;
    let (status, problem) = audit_entries(fed, "peer=Not%20An%20Org").await;
    assert_eq!(
        (status, &problem["reason"]),
        (400, &json!("malformed-request"))
    );
    s.fed.stop().await;
}

#[tokio::test]
async fn auditors_filter_entries_by_action_and_decision() {
    let s = scenario(Engine::Sqlite).await;
    let fed = &s.fed;
    let summaries: Vec<u64> = s.summaries.iter().map(|(i, _)| *i).collect();
    let found = assert_query(fed, "action=federation.envelope&decision=permit", |e| {
        e.record.action == "federation.envelope" && e.record.decision == Some(Decision::Permit)
    })
    .await;
    assert_eq!(found, summaries);
    let found = assert_query(fed, "action=federation.envelope&decision=deny", |e| {
        e.record.action == "federation.envelope" && e.record.decision == Some(Decision::Deny)
    })
    .await;
    assert_eq!(found, vec![s.refused]);
    let found = assert_query(fed, "action=local.timeline.read", |e| {
        e.record.action == "local.timeline.read"
    })
    .await;
    assert_eq!(found, vec![s.timeline_read]);
    // A refused caller is a denial too.
    let (status, _) = audit_entries_as(fed, "", &[Role::Submitter]).await;
    assert_eq!(status, 403);
    let denials = assert_query(fed, "decision=deny", |e| {
        e.record.decision == Some(Decision::Deny)
    })
    .await;
    assert!(denials.contains(&s.refused) && denials.len() >= 2);
    for bad in ["decision=maybe", "action=Federation%20Envelope", "action="] {
        let (status, problem) = audit_entries(fed, bad).await;
        assert_eq!(
            (status, &problem["reason"]),
            (400, &json!("malformed-request")),
            "{bad}"
        );
    }
    s.fed.stop().await;
}

#[tokio::test]
async fn auditors_page_through_the_log() {
    page_through(Engine::Sqlite).await;
}

#[tokio::test]
async fn auditors_page_through_the_log_on_postgres() {
    page_through(Engine::Postgres).await;
}

async fn page_through(engine: Engine) {
    let s = scenario(engine).await;
    let fed = &s.fed;
    // One envelope decision per page, then an empty last page without a cursor.
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) =
            audit_entries(fed, &format!("action=federation.envelope&limit=1{after}")).await;
        assert_eq!(status, 200, "{page}");
        pages.push(indexes(&page));
        match page.get("next") {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let mut wanted: Vec<Vec<u64>> = s.summaries.iter().map(|(i, _)| vec![*i]).collect();
    wanted.push(vec![s.refused]);
    wanted.push(vec![]);
    assert_eq!(pages, wanted);

    // Unfiltered pages of three cover the whole log, each entry once, in order; each page's
    // own query entry is read by a later page.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = audit_entries(fed, &format!("limit=3{after}")).await;
        assert_eq!(status, 200, "{page}");
        let found = indexes(&page);
        assert!(found.len() <= 3);
        seen.extend(found);
        match page.get("next") {
            Some(next) => {
                assert_eq!(next.as_u64(), seen.last().copied());
                after = format!("&after={next}");
            }
            None => break,
        }
    }
    let last_query = entries(fed, KOMMUNE).await.last().unwrap().idx;
    assert_eq!(seen, (0..last_query).collect::<Vec<u64>>());
    // The default page is 100 entries; `limit` is at most 1,000.
    let (_, page) = audit_entries(fed, "").await;
    assert_eq!(indexes(&page).len(), 100.min(last_query as usize + 1));
    let (_, page) = audit_entries(fed, "limit=5000").await;
    assert_eq!(
        indexes(&page),
        (0..entries(fed, KOMMUNE).await.len() as u64 - 1).collect::<Vec<u64>>()
    );
    let (status, problem) = audit_entries(fed, "after=-1").await;
    assert_eq!(
        (status, &problem["reason"]),
        (400, &json!("malformed-request"))
    );
    s.fed.stop().await;
}

#[tokio::test]
async fn auditors_search_by_consent_subject_message_and_actor() {
    let s = scenario(Engine::Sqlite).await;
    let fed = &s.fed;
    let consent_id = s.consent["consent_id"].as_str().unwrap();
    let subject_ref = s.consent["subject_ref"].as_str().unwrap();
    let summaries: Vec<u64> = s.summaries.iter().map(|(i, _)| *i).collect();

    // By consent id: the recording and both summaries (the CPR refusal was refused before the
    // consent was read).
    let consent_hmac = hmac(fed, "consent", consent_id);
    let by_consent = assert_query(fed, &format!("consent={consent_id}"), |e| {
        e.record.consent_hmac.as_deref() == Some(consent_hmac.as_str())
    })
    .await;
    let recorded = entries(fed, KOMMUNE)
        .await
        .iter()
        .find(|e| e.record.action == "local.consent.record")
        .unwrap()
        .idx;
    for index in summaries.iter().chain([&recorded]) {
        assert!(by_consent.contains(index), "{index} in {by_consent:?}");
    }
    assert!(!by_consent.contains(&s.refused));
    // The search itself was audited with the consent's HMAC, so the same search now finds it.
    let search = entries(fed, KOMMUNE).await.last().unwrap().clone();
    assert_eq!(search.record.action, "local.audit.query");
    assert_eq!(
        search.record.consent_hmac.as_deref(),
        Some(consent_hmac.as_str())
    );
    let again = assert_query(fed, &format!("consent={consent_id}"), |e| {
        e.record.consent_hmac.as_deref() == Some(consent_hmac.as_str())
    })
    .await;
    assert_eq!(again.last(), Some(&search.idx));

    // By subject reference.
    let subject_hmac = hmac(fed, "subject", subject_ref);
    let by_subject = assert_query(fed, &format!("subject={subject_ref}"), |e| {
        e.record.subject_hmac.as_deref() == Some(subject_hmac.as_str())
    })
    .await;
    for index in &summaries {
        assert!(by_subject.contains(index));
    }
    // By local subject key: the timeline read (and nothing by the pairwise reference).
    let local_hmac = hmac(fed, "local-subject", "sag-2026-0042");
    let by_key = assert_query(fed, "local_subject=sag-2026-0042", |e| {
        e.record.subject_hmac.as_deref() == Some(local_hmac.as_str())
    })
    .await;
    assert_eq!(by_key, vec![s.timeline_read]);

    // By message id: exactly the entry that admitted it.
    for (index, message_id) in &s.summaries {
        let message_hmac = hmac(fed, "message", message_id);
        let found = assert_query(fed, &format!("message={message_id}"), |e| {
            e.record.message_id_hmac.as_deref() == Some(message_hmac.as_str())
        })
        .await;
        assert_eq!(found, vec![*index]);
    }
    assert_query(fed, &format!("message={}", new_message_id()), |_| false).await;

    // By actor (the token subject of the tests' users), combined with an action.
    let actor_hmac = hmac(fed, "actor", "test-user");
    let found = assert_query(fed, "actor=test-user&action=local.timeline.read", |e| {
        e.record.action == "local.timeline.read"
            && e.record.actor.as_ref().map(|a| a.id_hmac.as_str()) == Some(actor_hmac.as_str())
    })
    .await;
    assert_eq!(found, vec![s.timeline_read]);
    assert_query(fed, "actor=someone-else", |_| false).await;

    // The answer shows every field as stored, HMACs included.
    let (_, page) = audit_entries(fed, &format!("message={}", s.summaries[0].1)).await;
    let entry = &page["entries"][0];
    assert_eq!(entry["index"], s.summaries[0].0);
    assert_eq!(entry["action"], "federation.envelope");
    assert_eq!(entry["decision"], "permit");
    assert_eq!(entry["peer"], NGO);
    assert_eq!(entry["consent_hmac"], consent_hmac.as_str());
    assert_eq!(entry["subject_hmac"], subject_hmac.as_str());
    assert_eq!(entry["message_type"], "activity-summary");
    assert_eq!(entry["envelope_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(entry["hmac_key"], 1);

    for bad in [
        "consent=not-a-uuid",
        "subject=XYZ",
        "message=123",
        &format!("subject={subject_ref}&local_subject=sag-2026-0042"),
        "unknown=1",
    ] {
        let (status, problem) = audit_entries(fed, bad).await;
        assert_eq!(
            (status, &problem["reason"]),
            (400, &json!("malformed-request")),
            "{bad}"
        );
    }
    s.fed.stop().await;
}

async fn audit_entries_as(fed: &TestFederation, path_query: &str, roles: &[Role]) -> (u16, Value) {
    local(
        fed,
        KOMMUNE,
        Method::GET,
        &format!("/api/v1/audit/entries{path_query}"),
        roles,
        None,
    )
    .await
}

#[tokio::test]
async fn only_auditors_read_the_log_and_every_query_is_one_audit_entry() {
    let fed = TestFederation::start(TWO, Engine::Sqlite).await;
    let paths = [
        "/api/v1/audit/entries",
        "/api/v1/audit/checkpoint",
        "/api/v1/audit/proof?index=0",
    ];
    for roles in [
        vec![Role::Submitter],
        vec![Role::Caseworker],
        vec![Role::ConsentAdmin],
        vec![Role::Admin],
        vec![
            Role::Submitter,
            Role::Caseworker,
            Role::ConsentAdmin,
            Role::Admin,
        ],
    ] {
        for path in paths {
            let before = entries(&fed, KOMMUNE).await.len();
            let (status, problem) = local(&fed, KOMMUNE, Method::GET, path, &roles, None).await;
            assert_eq!(
                (status, &problem["reason"]),
                (403, &json!("forbidden-role")),
                "{roles:?} {path}"
            );
            let after = entries(&fed, KOMMUNE).await;
            assert_eq!(after.len(), before + 1);
            let denial = &after.last().unwrap().record;
            assert_eq!(denial.action, "local.authorization");
            assert_eq!(denial.decision, Some(Decision::Deny));
        }
    }
    let unauthenticated = fed
        .local_client()
        .get(fed.local_url(KOMMUNE, "/api/v1/audit/entries"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);

    // Each auditor query, answered or refused, is exactly one entry, appended before the
    // answer: the checkpoint answered already covers it.
    for (path, status, decision) in [
        ("/api/v1/audit/entries?limit=2", 200, Decision::Permit),
        ("/api/v1/audit/checkpoint", 200, Decision::Permit),
        ("/api/v1/audit/proof?index=0", 200, Decision::Permit),
        ("/api/v1/audit/proof?old=1", 200, Decision::Permit),
        ("/api/v1/audit/proof?index=100000", 400, Decision::Deny),
        ("/api/v1/audit/entries?decision=maybe", 400, Decision::Deny),
    ] {
        let before = entries(&fed, KOMMUNE).await.len();
        let (got, body) = local(&fed, KOMMUNE, Method::GET, path, &[Role::Auditor], None).await;
        assert_eq!(got, status, "{path}: {body}");
        let after = entries(&fed, KOMMUNE).await;
        assert_eq!(after.len(), before + 1, "{path}");
        let query = after.last().unwrap();
        assert_eq!(query.record.action, "local.audit.query");
        assert_eq!(query.record.decision, Some(decision), "{path}");
        assert_eq!(
            query.record.route.as_deref(),
            Some(path.split('?').next().unwrap())
        );
        let actor = query.record.actor.as_ref().unwrap();
        assert_eq!(actor.role.as_deref(), Some("auditor"));
        assert_eq!(actor.id_hmac, hmac(&fed, "actor", "test-user"));
        if path == "/api/v1/audit/checkpoint" {
            assert_eq!(body["size"], query.idx + 1);
        }
    }
    fed.stop().await;
}

/// The municipality's audit verifier key, from the club's manifest.
fn kommune_key(fed: &TestFederation) -> VerifierKey {
    fed.node(NGO)
        .state
        .manifest
        .snapshot()
        .member(&KOMMUNE.parse().unwrap())
        .unwrap()
        .audit_key
        .clone()
}

fn hash(text: &Value) -> Hash {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.as_str().unwrap(), &mut out).unwrap();
    out
}

fn hashes(list: &Value) -> Vec<Hash> {
    list.as_array().unwrap().iter().map(hash).collect()
}

fn tiles(proof: &[Hash]) -> Vec<tlog_tiles::Hash> {
    proof.iter().map(|h| tlog_tiles::Hash(*h)).collect()
}

async fn auditor_get(fed: &TestFederation, path: &str) -> Value {
    let (status, body) = local(fed, KOMMUNE, Method::GET, path, &[Role::Auditor], None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// An inclusion proof answer verifies (or not) with both verifiers against `root`.
fn inclusion_verifies(answer: &Value, proof: &[Hash], root: &Hash) -> bool {
    let index = answer["index"].as_u64().unwrap();
    let size = answer["size"].as_u64().unwrap();
    let entry = base64_decode(answer["entry"].as_str().unwrap());
    let leaf = merkle::leaf_hash(&entry);
    let ours = merkle::verify_inclusion(index, size, &leaf, proof, root);
    let theirs = tlog_tiles::check_record(
        &tiles(proof),
        size,
        tlog_tiles::Hash(*root),
        index,
        tlog_tiles::record_hash(&entry),
    )
    .is_ok();
    assert_eq!(ours, theirs, "the two verifiers disagree on {answer}");
    ours
}

fn consistency_verifies(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    let ours = merkle::verify_consistency(old, new, old_root, new_root, proof);
    let theirs = tlog_tiles::check_tree(
        &tiles(proof),
        new,
        tlog_tiles::Hash(*new_root),
        old,
        tlog_tiles::Hash(*old_root),
    )
    .is_ok();
    assert_eq!(ours, theirs, "the two verifiers disagree on {old}..{new}");
    ours
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn audit_proofs_verify_with_tlog_tiles_and_our_verifier() {
    proofs(Engine::Sqlite).await;
}

#[tokio::test]
async fn audit_proofs_verify_with_tlog_tiles_and_our_verifier_on_postgres() {
    proofs(Engine::Postgres).await;
}

async fn proofs(engine: Engine) {
    let fed = TestFederation::start(TWO, engine).await;
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    for _ in 0..3 {
        assert_eq!(send(&fed, NGO, KOMMUNE, &summary(&consent)).await.0, 200);
    }
    let key = kommune_key(&fed);

    // The checkpoint opens with the key the manifest publishes and says what the JSON says.
    let answer = auditor_get(&fed, "/api/v1/audit/checkpoint").await;
    let earlier = Checkpoint::open(answer["checkpoint"].as_str().unwrap(), &key).unwrap();
    assert_eq!(answer["size"], earlier.head.size);
    assert_eq!(hash(&answer["root"]), earlier.head.root);
    assert_eq!(answer["origin"], earlier.origin);
    let size = earlier.head.size;
    assert!(size > 5);

    // Inclusion in that earlier tree, for the first, a middle and the last entry.
    for index in [0, size / 2, size - 1] {
        let answer = auditor_get(
            &fed,
            &format!("/api/v1/audit/proof?index={index}&size={size}"),
        )
        .await;
        assert_eq!(
            (answer["index"].as_u64(), answer["size"].as_u64()),
            (Some(index), Some(size))
        );
        assert_eq!(hash(&answer["root"]), earlier.head.root);
        let entry = base64_decode(answer["entry"].as_str().unwrap());
        assert_eq!(hash(&answer["leaf_hash"]), merkle::leaf_hash(&entry));
        assert_eq!(decode(&entry).unwrap().idx, index);
        let proof = hashes(&answer["proof"]);
        assert!(
            inclusion_verifies(&answer, &proof, &earlier.head.root),
            "{index}"
        );
        // A tampered proof, or another root, does not verify.
        if let Some(first) = proof.first() {
            let mut tampered = proof.clone();
            tampered[0] = merkle::node_hash(first, first);
            assert!(!inclusion_verifies(&answer, &tampered, &earlier.head.root));
        }
        let mut other_root = earlier.head.root;
        other_root[31] ^= 1;
        assert!(!inclusion_verifies(&answer, &proof, &other_root));
    }

    // In the latest tree (the default): the answer carries the signed checkpoint itself.
    let answer = auditor_get(&fed, "/api/v1/audit/proof?index=1").await;
    let latest = Checkpoint::open(answer["checkpoint"].as_str().unwrap(), &key).unwrap();
    assert_eq!(answer["size"], latest.head.size);
    assert_eq!(hash(&answer["root"]), latest.head.root);
    assert!(inclusion_verifies(
        &answer,
        &hashes(&answer["proof"]),
        &latest.head.root
    ));

    // Consistency from the earlier checkpoint to the latest, and between two explicit sizes.
    let answer = auditor_get(&fed, &format!("/api/v1/audit/proof?old={size}")).await;
    let latest = Checkpoint::open(answer["checkpoint"].as_str().unwrap(), &key).unwrap();
    assert_eq!(answer["new_size"], latest.head.size);
    assert_eq!(hash(&answer["old_root"]), earlier.head.root);
    assert_eq!(hash(&answer["new_root"]), latest.head.root);
    let proof = hashes(&answer["proof"]);
    assert!(consistency_verifies(
        size,
        latest.head.size,
        &earlier.head.root,
        &latest.head.root,
        &proof
    ));
    let mut tampered = proof.clone();
    tampered[0][0] ^= 1;
    assert!(!consistency_verifies(
        size,
        latest.head.size,
        &earlier.head.root,
        &latest.head.root,
        &tampered
    ));
    let mut forged_old = earlier.head.root;
    forged_old[0] ^= 1;
    assert!(!consistency_verifies(
        size,
        latest.head.size,
        &forged_old,
        &latest.head.root,
        &proof
    ));
    for (old, new) in [(1, size), (3, 4), (size, size), (2, latest.head.size)] {
        let answer = auditor_get(&fed, &format!("/api/v1/audit/proof?old={old}&new={new}")).await;
        assert_eq!(
            (answer["old_size"].as_u64(), answer["new_size"].as_u64()),
            (Some(old), Some(new))
        );
        assert!(
            consistency_verifies(
                old,
                new,
                &hash(&answer["old_root"]),
                &hash(&answer["new_root"]),
                &hashes(&answer["proof"])
            ),
            "{old}..{new}"
        );
    }
    // The roots the node reports for explicit sizes are the tree's own.
    let leaves: Vec<Hash> = storage::audit_entries(&fed.node(KOMMUNE).state.db)
        .await
        .unwrap()
        .iter()
        .map(|e| merkle::leaf_hash(&e.entry))
        .collect();
    let answer = auditor_get(&fed, "/api/v1/audit/proof?old=3&new=4").await;
    assert_eq!(hash(&answer["old_root"]), merkle::root(&leaves[..3]));
    assert_eq!(hash(&answer["new_root"]), merkle::root(&leaves[..4]));

    // Bad ranges and mixed requests are malformed.
    let stored = entries(&fed, KOMMUNE).await.len() as u64;
    for bad in [
        format!("index={}", stored + 10),
        format!("index=2&size={}", stored + 10),
        "index=4&size=4".to_owned(),
        "old=0".to_owned(),
        "old=5&new=4".to_owned(),
        format!("old=1&new={}", stored + 10),
        "index=1&old=1".to_owned(),
        "size=3".to_owned(),
        String::new(),
        "index=x".to_owned(),
    ] {
        let (status, problem) = local(
            &fed,
            KOMMUNE,
            Method::GET,
            &format!("/api/v1/audit/proof?{bad}"),
            &[Role::Auditor],
            None,
        )
        .await;
        assert_eq!(
            (status, &problem["reason"]),
            (400, &json!("malformed-request")),
            "{bad}: {problem}"
        );
    }
    fed.stop().await;
}

#[tokio::test]
async fn peers_fetch_a_checkpoint_with_a_consistency_proof_and_the_read_is_audited() {
    let fed = TestFederation::start(TWO, Engine::Sqlite).await;
    let ngo = &fed.node(NGO).state;
    let kommune: brobygger::domain::OrgId = KOMMUNE.parse().unwrap();
    let key = kommune_key(&fed);

    let before = entries(&fed, KOMMUNE).await.len();
    let first = federation::fetch_checkpoint(ngo, &kommune, None, None)
        .await
        .unwrap();
    let after = entries(&fed, KOMMUNE).await;
    assert_eq!(after.len(), before + 1);
    let read = &after.last().unwrap().record;
    assert_eq!(
        (read.action.as_str(), read.decision, read.peer.as_deref()),
        ("federation.checkpoint", Some(Decision::Permit), Some(NGO))
    );
    let first_cp = Checkpoint::open(&first.checkpoint, &key).unwrap();
    assert_eq!(
        first_cp.head.size,
        after.len() as u64,
        "it covers its own read"
    );
    assert_eq!(first.size, first_cp.head.size);
    assert!(first.consistency.is_none());

    let second = federation::fetch_checkpoint(ngo, &kommune, Some(first.size), None)
        .await
        .unwrap();
    let second_cp = Checkpoint::open(&second.checkpoint, &key).unwrap();
    let proof = second.consistency.unwrap();
    assert_eq!(
        (proof.old_size, proof.new_size),
        (first.size, second_cp.head.size)
    );
    let hashes: Vec<Hash> = proof.proof.iter().map(|h| hash(&json!(h))).collect();
    assert!(consistency_verifies(
        first.size,
        second_cp.head.size,
        &first_cp.head.root,
        &second_cp.head.root,
        &hashes
    ));
    // A proof up to an explicit size.
    let third = federation::fetch_checkpoint(ngo, &kommune, Some(1), Some(first.size))
        .await
        .unwrap();
    let proof = third.consistency.unwrap();
    assert_eq!((proof.old_size, proof.new_size), (1, first.size));
    // `since` beyond the log: the checkpoint alone.
    let beyond = federation::fetch_checkpoint(ngo, &kommune, Some(1_000_000), None)
        .await
        .unwrap();
    assert!(beyond.consistency.is_none());

    // Bad ranges are malformed requests, audited as denials.
    for (since, size) in [
        (Some(5), Some(3)),
        (None, Some(3)),
        (Some(1), Some(1_000_000)),
    ] {
        let before = entries(&fed, KOMMUNE).await.len();
        match federation::fetch_checkpoint(ngo, &kommune, since, size).await {
            Err(PeerError::Refused { status: 400, body }) => {
                assert!(body.contains("malformed-request"), "{body}");
            }
            other => panic!("{since:?} {size:?}: {other:?}"),
        }
        let after = entries(&fed, KOMMUNE).await;
        assert_eq!(after.len(), before + 1);
        let denial = &after.last().unwrap().record;
        assert_eq!(denial.action, "federation.checkpoint");
        assert_eq!(denial.decision, Some(Decision::Deny));
        assert_eq!(denial.reason.as_deref(), Some("malformed-request"));
    }
    fed.stop().await;
}

/// A summary as the club's own system submits it.
fn submission(consent: &Value) -> Value {
    let doc = summary(consent);
    json!({
        "message_id": new_message_id(),
        "type": "activity-summary",
        "recipient": KOMMUNE,
        "purpose": doc["purpose"],
        "consent_id": consent["consent_id"],
        "body": doc["body"],
    })
}

/// The club binds the consent and submits `count` summaries, and waits until each is delivered
/// with a verified receipt; returns the last delivery status.
async fn club_delivers(fed: &TestFederation, consent: &Value, count: usize) -> Value {
    let mut last = Value::Null;
    for _ in 0..count {
        let (status, accepted) = local(
            fed,
            NGO,
            Method::POST,
            "/api/v1/messages",
            &[Role::Submitter],
            Some(submission(consent)),
        )
        .await;
        assert_eq!(status, 202, "{accepted}");
        last = wait_delivered(fed, NGO, accepted["message_id"].as_str().unwrap()).await;
    }
    last
}

async fn bind_at_club(fed: &TestFederation, consent: &Value) {
    let id = consent["consent_id"].as_str().unwrap();
    let (status, body) = local(
        fed,
        NGO,
        Method::POST,
        &format!("/api/v1/consents/{id}/bind"),
        &[Role::ConsentAdmin],
        Some(json!({"binding_code": consent["binding_code"], "local_subject_key": "deltager-17"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn readyz(fed: &TestFederation, org: &str) -> (u16, Value) {
    let response = fed
        .local_client()
        .get(fed.local_url(org, "/readyz"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn verdict_for(
    outcomes: &[(
        brobygger::domain::OrgId,
        Result<Verdict, peer_logs::PollError>,
    )],
    peer: &str,
) -> Verdict {
    let (_, outcome) = outcomes
        .iter()
        .find(|(org, _)| org.as_str() == peer)
        .unwrap();
    match outcome {
        Ok(verdict) => *verdict,
        Err(e) => panic!("the poll of {peer} failed: {e}"),
    }
}

#[tokio::test]
async fn an_honest_peer_whose_log_grew_raises_no_alarm() {
    honest_growth(Engine::Sqlite).await;
}

#[tokio::test]
async fn an_honest_peer_whose_log_grew_raises_no_alarm_on_postgres() {
    honest_growth(Engine::Postgres).await;
}

async fn honest_growth(engine: Engine) {
    let fed = TestFederation::start(TWO, engine).await;
    let (kommune, ngo) = (&fed.node(KOMMUNE).state, &fed.node(NGO).state);
    let (kommune_org, ngo_org) = (KOMMUNE.parse().unwrap(), NGO.parse().unwrap());

    // The municipality's delivery of the consent notice left it the club's checkpoint.
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    let notice = wait_delivered(
        &fed,
        KOMMUNE,
        consent["notice_message_id"].as_str().unwrap(),
    )
    .await;
    let stored = storage::peer_checkpoint(&kommune.db, &ngo_org)
        .await
        .unwrap()
        .expect("the receipt's checkpoint is stored");
    assert_eq!(
        stored.note,
        notice["receipt"]["checkpoint"].as_str().unwrap()
    );
    assert!(stored.alarm.is_none());

    // The club's first delivery stores the municipality's; later receipts wait for a proof.
    bind_at_club(&fed, &consent).await;
    let first = club_delivers(&fed, &consent, 1).await;
    let stored = storage::peer_checkpoint(&ngo.db, &kommune_org)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.note,
        first["receipt"]["checkpoint"].as_str().unwrap()
    );
    let last = club_delivers(&fed, &consent, 2).await;
    let last_size = last["receipt"]["checkpoint"]
        .as_str()
        .map(|note| {
            Checkpoint::open(note, &kommune_key(&fed))
                .unwrap()
                .head
                .size
        })
        .unwrap();
    assert_eq!(ngo.peer_logs.pending_size(&kommune_org), Some(last_size));

    // Polls prove the growth, each time, both ways; nothing is raised.
    for round in 0..3 {
        let outcomes = peer_logs::poll_peer_checkpoints_once(ngo).await;
        assert_eq!(
            verdict_for(&outcomes, KOMMUNE),
            Verdict::Extends,
            "round {round}"
        );
        assert_eq!(ngo.peer_logs.pending_size(&kommune_org), None);
        let outcomes = peer_logs::poll_peer_checkpoints_once(kommune).await;
        assert_eq!(
            verdict_for(&outcomes, NGO),
            Verdict::Extends,
            "round {round}"
        );
        club_delivers(&fed, &consent, 1).await;
    }
    let latest = entries(&fed, KOMMUNE).await;
    let stored = storage::peer_checkpoint(&ngo.db, &kommune_org)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.size + 5 > latest.len() as u64 && stored.size < latest.len() as u64);
    assert!(latest.iter().any(
        |e| e.record.action == "federation.checkpoint" && e.record.peer.as_deref() == Some(NGO)
    ));
    for (org, state) in [(KOMMUNE, kommune), (NGO, ngo)] {
        assert_eq!(state.peer_logs.alarms_raised(), 0, "{org}");
        let (status, ready) = readyz(&fed, org).await;
        assert_eq!(status, 200, "{ready}");
        assert_eq!(ready["warnings"], json!([]), "{org}");
        assert!(
            storage::peer_checkpoints(&state.db)
                .await
                .unwrap()
                .iter()
                .all(|p| p.alarm.is_none())
        );
    }
    fed.stop().await;
}

/// Collects what this thread logs at error level.
#[derive(Clone, Default)]
struct ErrorLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for ErrorLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ErrorLog {
    type Writer = ErrorLog;

    fn make_writer(&'a self) -> ErrorLog {
        self.clone()
    }
}

impl ErrorLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The operator of `org` rewrites its stopped node's log: entry `edited` says something else,
/// and every leaf hash, the tree, and the checkpoint are recomputed and signed with the node's
/// own key, so the log is self-consistent. The published-checkpoint file goes too, so the node
/// starts again.
async fn rewrite_log(fed: &TestFederation, org: &str, edited: u64) {
    let config = fed.pki.config(org, &[]);
    let db = Database::open(&config.database).await.unwrap();
    let original = storage::audit_entries(&db).await.unwrap();
    let mut records: Vec<AuditRecord> = original
        .iter()
        .map(|e| decode(&e.entry).unwrap().record)
        .collect();
    let target = &mut records[edited as usize];
    assert_eq!(target.decision, Some(Decision::Permit));
    target.decision = Some(Decision::Deny);
    target.reason = Some("consent-not-active".into());
    let Database::Sqlite(pool) = &db else {
        panic!("the rewrite edits a SQLite file")
    };
    for table in ["audit_entries", "audit_checkpoints", "audit_tree"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(pool)
            .await
            .unwrap();
    }
    let published = brobygger::write_path::published_state_path(&config.audit.signing_key);
    std::fs::remove_file(&published).unwrap();
    let signer = Arc::new(node::load_signing_key(&config).unwrap());
    let writer = Writer::spawn(
        db.clone(),
        signer,
        config.audit.hmac_key_version,
        published,
        None,
    );
    writer.path.append_many(records).await.unwrap();
    writer.stop().await;
    // Only the edited entry differs; every other one is byte for byte what it was.
    let rewritten = storage::audit_entries(&db).await.unwrap();
    assert_eq!(rewritten.len(), original.len());
    for (before, after) in original.iter().zip(&rewritten) {
        assert_eq!(
            before.entry == after.entry,
            before.idx != edited,
            "{}",
            before.idx
        );
    }
    db.close().await;
}

#[tokio::test]
async fn a_peer_log_rewritten_by_its_operator_is_caught_by_the_other_node() {
    let mut fed = TestFederation::start(TWO, Engine::Sqlite).await;
    let kommune_org: brobygger::domain::OrgId = KOMMUNE.parse().unwrap();
    let consent = record_consent(&fed, KOMMUNE, NGO, ALL_PURPOSES).await;
    bind_at_club(&fed, &consent).await;
    // The club delivers a summary; its receipt pins the municipality's log, and a poll moves
    // the pin forward.
    let delivered = club_delivers(&fed, &consent, 1).await;
    let admitted = delivered["receipt"]["leaf_index"].as_u64().unwrap();
    let outcomes = peer_logs::poll_peer_checkpoints_once(&fed.node(NGO).state).await;
    assert_eq!(verdict_for(&outcomes, KOMMUNE), Verdict::Extends);
    let pinned = storage::peer_checkpoint(&fed.node(NGO).state.db, &kommune_org)
        .await
        .unwrap()
        .unwrap();
    assert!(pinned.size > admitted);

    // The municipality's operator stops the node and rewrites the admission of that summary.
    let position = fed
        .nodes
        .iter()
        .position(|(org, _)| org.as_str() == KOMMUNE)
        .unwrap();
    let (org, stopped) = fed.nodes.remove(position);
    stopped.stop().await;
    rewrite_log(&fed, KOMMUNE, admitted).await;
    let restarted = node::start(fed.pki.config(KOMMUNE, &[]), Clock::system())
        .await
        .expect("the rewritten log is self-consistent, so the node starts");
    fed.nodes.push((org, restarted));
    let mut doc = fed.pki.manifest_doc();
    doc.serial = fed.node(NGO).state.manifest.snapshot().serial + 1;
    for member in &mut doc.members {
        member.endpoint = format!("https://{}", fed.node(&member.org_id).federation_addr);
    }
    fed.install_manifest(&doc).await;

    // The club's next poll catches it: counted, logged at error level once, audited, kept
    // with the conflicting checkpoint as evidence, and shown in /readyz, which stays ready.
    let ngo = &fed.node(NGO).state;
    let log = ErrorLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_max_level(tracing::Level::ERROR)
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let outcomes = peer_logs::poll_peer_checkpoints_once(ngo).await;
    assert_eq!(
        verdict_for(&outcomes, KOMMUNE),
        Verdict::Inconsistent(Inconsistency::NotExtended)
    );
    assert_eq!(ngo.peer_logs.alarms_raised(), 1);
    let stored = storage::peer_checkpoint(&ngo.db, &kommune_org)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.size, stored.root),
        (pinned.size, pinned.root),
        "the pin stays"
    );
    let alarm = stored.alarm.expect("the alarm is kept");
    assert_eq!(alarm.reason, "peer-log-inconsistent");
    let conflicting = Checkpoint::open(&alarm.note, &kommune_key(&fed)).unwrap();
    assert!(conflicting.head.size > pinned.size);
    let audited: Vec<DecodedEntry> = entries(&fed, NGO)
        .await
        .into_iter()
        .filter(|e| e.record.action == "federation.peer-log")
        .collect();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].record.decision, Some(Decision::Deny));
    assert_eq!(
        audited[0].record.reason.as_deref(),
        Some("peer-log-inconsistent")
    );
    assert_eq!(audited[0].record.peer.as_deref(), Some(KOMMUNE));
    let (status, ready) = readyz(&fed, NGO).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    let warnings = ready["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains(KOMMUNE) && w.contains("peer-log-inconsistent")
        }),
        "{ready}"
    );

    // Again: the same verdict, but no second alarm, log line or audit entry.
    let outcomes = peer_logs::poll_peer_checkpoints_once(ngo).await;
    assert_eq!(
        verdict_for(&outcomes, KOMMUNE),
        Verdict::Inconsistent(Inconsistency::NotExtended)
    );
    drop(guard);
    assert_eq!(ngo.peer_logs.alarms_raised(), 1);
    let text = log.text();
    assert_eq!(text.matches("ALARM").count(), 1, "{text}");
    assert!(text.contains("ERROR") && text.contains(KOMMUNE), "{text}");
    let audited = entries(&fed, NGO)
        .await
        .into_iter()
        .filter(|e| e.record.action == "federation.peer-log")
        .count();
    assert_eq!(audited, 1);
    // The municipality's own view of the club is untouched.
    let kommune = &fed.node(KOMMUNE).state;
    let outcomes = peer_logs::poll_peer_checkpoints_once(kommune).await;
    assert_eq!(verdict_for(&outcomes, NGO), Verdict::Extends);
    assert_eq!(kommune.peer_logs.alarms_raised(), 0);
    fed.stop().await;
}

#[test]
fn the_alarm_reason_codes_are_documented() {
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reason-codes.md"),
    )
    .unwrap();
    for kind in Inconsistency::ALL {
        assert!(
            docs.contains(&format!("| `{}` |", kind.code())),
            "docs/reason-codes.md must list `{}`",
            kind.code()
        );
    }
}
