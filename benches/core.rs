//! Micro-benchmarks of the pure core: the policy decision, the admission of each message type
//! (strict JSON, CPR guard, schema, wire types), an audit entry appended into the tree, and a
//! checkpoint signature. Run with `cargo bench --bench core`; the results are in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark set-up")]

use brobygger::audit::checkpoint::{Checkpoint, TreeHead};
use brobygger::audit::entry::{self, ActorRecord, AuditRecord, Decision as AuditDecision};
use brobygger::audit::merkle::{self, Frontier};
use brobygger::boundary::check_document;
use brobygger::domain::{MessageType, OrgId, OrgKind, PurposeRef};
use brobygger::policy::{
    Catalogue, ConsentFacts, ConsentStatus, Exchange, Flow, PurposeRule, PurposeStatus, decide,
};
use brobygger::schema::Schemas;
use brobygger::signed_note::{NoteSigner, generate_ed25519_pkcs8};
use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use time::macros::datetime;

fn policy(c: &mut Criterion) {
    let purpose = PurposeRef::new("smaaboernsklub-fremmoede".parse().unwrap(), 1).unwrap();
    let fields = [
        "month",
        "programme",
        "enrolment_status",
        "sessions_offered",
        "sessions_attended",
        "next_step",
    ];
    let catalogue = Catalogue::new([PurposeRule {
        purpose: purpose.clone(),
        status: PurposeStatus::Active,
        flow: Flow::NgoToMunicipality,
        allowed_fields: BTreeMap::from([(
            MessageType::ActivitySummary,
            fields.iter().map(|f| f.to_string()).collect(),
        )]),
        max_consent_validity_days: 365,
        max_retention_days: 730,
    }]);
    let ngo: OrgId = "red-barnet".parse().unwrap();
    let kommune: OrgId = "herning-kommune".parse().unwrap();
    let consent = ConsentFacts {
        id: "0192f0a4-7b1c-7def-8a00-0000000c0001".parse().unwrap(),
        subject: "5e1f0c2a9d4b47e8a3c6b0d2e4f61a7b".parse().unwrap(),
        recording_org: kommune.clone(),
        counterpart: ngo.clone(),
        purposes: BTreeSet::from([purpose.clone()]),
        status: ConsentStatus::Given,
        valid_from: datetime!(2026-10-01 00:00 UTC),
        valid_until: datetime!(2027-10-01 00:00 UTC),
    };
    let exchange = Exchange {
        message_type: MessageType::ActivitySummary,
        sender: &ngo,
        sender_kind: OrgKind::Ngo,
        recipient: &kommune,
        recipient_kind: OrgKind::Municipality,
        purpose: &purpose,
        consent: &consent.id,
        subject: &consent.subject,
        body_fields: &fields,
    };
    let now = datetime!(2026-11-22 12:00 UTC);
    c.bench_function("policy::decide (permit, 6 fields)", |b| {
        b.iter(|| decide(black_box(&exchange), &catalogue, Some(&consent), now))
    });
}

fn admission(c: &mut Criterion) {
    let schemas = Schemas::compile().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/v1/examples");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        assert!(check_document(&bytes, &schemas).is_ok(), "{name}");
        c.bench_function(&format!("boundary::check_document ({name})"), |b| {
            b.iter(|| check_document(black_box(&bytes), &schemas))
        });
    }
}

fn audit(c: &mut Criterion) {
    let record = AuditRecord {
        time: "2026-11-22T12:00:00.000Z".into(),
        action: "federation.envelope".into(),
        decision: Some(AuditDecision::Permit),
        reason: None,
        peer: Some("red-barnet".into()),
        actor: Some(ActorRecord {
            id_hmac: "a".repeat(64),
            role: Some("submitter".into()),
        }),
        message_id_hmac: Some("b".repeat(64)),
        message_type: Some("activity-summary".into()),
        purpose: Some("smaaboernsklub-fremmoede@1".into()),
        consent_hmac: Some("c".repeat(64)),
        subject_hmac: Some("d".repeat(64)),
        envelope_sha256: Some("e".repeat(64)),
        route: None,
    };
    let mut frontier = Frontier::new();
    let mut index = 0u64;
    c.bench_function(
        "audit entry encoded, hashed and appended to the tree",
        |b| {
            b.iter(|| {
                let bytes = entry::encode(black_box(&record), index, 1).unwrap();
                frontier.push(merkle::leaf_hash(&bytes));
                index += 1;
            })
        },
    );
    let pkcs8 = generate_ed25519_pkcs8().unwrap();
    let origin = "brobygger.test/herning-kommune/audit";
    let signer = NoteSigner::from_pkcs8(origin, &pkcs8).unwrap();
    let checkpoint = Checkpoint {
        origin: origin.into(),
        head: TreeHead {
            size: frontier.size(),
            root: frontier.root(),
        },
    };
    c.bench_function("checkpoint signed (Ed25519, C2SP signed note)", |b| {
        b.iter(|| black_box(&checkpoint).sign(&signer).unwrap())
    });
}

criterion_group!(benches, policy, admission, audit);
criterion_main!(benches);
