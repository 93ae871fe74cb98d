//! Property tests of the pure purpose-and-consent decision (`policy::decide`) against an oracle
//! written separately here, as a plain reading of DESIGN §5 steps 4 and 5: the purpose exists,
//! is active, and allows this type, this direction and these fields; the consent exists, is
//! valid now, names both parties and this purpose version.

use brobygger::domain::{ConsentId, MessageType, OrgId, OrgKind, PurposeRef, SubjectRef};
use brobygger::policy::{
    Catalogue, ConsentFacts, ConsentStatus, Decision, DenyReason, Exchange, Flow, PurposeRule,
    PurposeStatus, decide,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

const ORGS: [(&str, OrgKind); 4] = [
    ("herning-kommune", OrgKind::Municipality),
    ("fredericia-kommune", OrgKind::Municipality),
    ("red-barnet", OrgKind::Ngo),
    ("region-midt", OrgKind::Region),
];
const FIELDS: [&str; 5] = [
    "month",
    "programme",
    "sessions_offered",
    "sessions_attended",
    "next_step",
];
const SUBJECTS: [&str; 2] = [
    "5e1f0c2a9d4b47e8a3c6b0d2e4f61a7b",
    "00000000000000000000000000000001",
];
const CONSENT_IDS: [&str; 2] = [
    "0192f0a4-7b1c-7def-8a00-000000000001",
    "0192f0a4-7b1c-7def-8a00-000000000002",
];

fn org(i: usize) -> OrgId {
    ORGS[i].0.parse().unwrap()
}

fn purpose(id: usize, version: u32) -> PurposeRef {
    PurposeRef::new(
        ["smaaboernsklub-fremmoede", "familieklub-henvisning"][id]
            .parse()
            .unwrap(),
        version,
    )
    .unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap()
}

/// A generated world: catalogue, maybe a consent, and an exchange, all as plain values.
#[derive(Debug, Clone)]
struct World {
    rules: Vec<PurposeRule>,
    consent: Option<ConsentFacts>,
    message_type: MessageType,
    sender: usize,
    recipient: usize,
    purpose: PurposeRef,
    consent_id: ConsentId,
    subject: SubjectRef,
    fields: Vec<&'static str>,
    now: OffsetDateTime,
}

fn subject(i: usize) -> SubjectRef {
    SUBJECTS[i].parse().unwrap()
}

/// An offset from now: mostly whole days, sometimes a second either side of now, so that the
/// validity boundaries themselves are exercised.
fn offset() -> impl Strategy<Value = time::Duration> {
    prop_oneof![
        3 => (-400i64..400).prop_map(time::Duration::days),
        1 => (-1i64..=1).prop_map(time::Duration::seconds),
    ]
}

fn flow() -> impl Strategy<Value = Flow> {
    prop_oneof![
        Just(Flow::NgoToMunicipality),
        Just(Flow::MunicipalityToNgo),
        Just(Flow::Both)
    ]
}

fn status() -> impl Strategy<Value = ConsentStatus> {
    prop_oneof![
        3 => Just(ConsentStatus::Given),
        2 => Just(ConsentStatus::Renewed),
        1 => Just(ConsentStatus::WithdrawnBySubject),
        1 => Just(ConsentStatus::Revoked),
        1 => Just(ConsentStatus::Expired),
        1 => Just(ConsentStatus::Invalidated),
    ]
}

fn rule() -> impl Strategy<Value = PurposeRule> {
    (
        0..2usize,
        1..3u32,
        prop::bool::weighted(0.85),
        flow(),
        // All types, consent bookkeeping included: a catalogue refuses those, but the decision
        // must not rely on that.
        prop::collection::btree_map(
            prop::sample::select(MessageType::ALL.to_vec()),
            prop::collection::btree_set(prop::sample::select(FIELDS.to_vec()), 0..=5),
            0..=3,
        ),
        prop::sample::select(vec![30u32, 365, 730]),
        prop::sample::select(vec![90u32, 365]),
    )
        .prop_map(
            |(id, version, active, flow, allowed, max_days, max_retention)| PurposeRule {
                purpose: purpose(id, version),
                status: if active {
                    PurposeStatus::Active
                } else {
                    PurposeStatus::Inactive
                },
                flow,
                allowed_fields: allowed
                    .into_iter()
                    .map(|(t, fields)| (t, fields.into_iter().map(String::from).collect()))
                    .collect(),
                max_consent_validity_days: max_days,
                max_retention_days: max_retention,
            },
        )
}

fn consent() -> impl Strategy<Value = ConsentFacts> {
    (
        (0..2usize, 0..2usize, 0..4usize, 0..4usize),
        prop::collection::btree_set((0..2usize, 1..3u32), 0..=3),
        status(),
        offset(),
        offset(),
    )
        .prop_map(
            |((id, child, a, b), purposes, status, from, until)| ConsentFacts {
                id: CONSENT_IDS[id].parse().unwrap(),
                subject: subject(child),
                recording_org: org(a),
                counterpart: org(b),
                purposes: purposes.into_iter().map(|(p, v)| purpose(p, v)).collect(),
                status,
                valid_from: now() + from,
                valid_until: now() + until,
            },
        )
}

/// Random choices that each either keep a part of the world consistent or break it, so that
/// generated worlds reach every rule (and permits), not only the first checks.
#[derive(Debug, Clone)]
struct Choices {
    same_child: bool,
    rule_for_purpose: bool,
    type_allowed: bool,
    fields_allowed: bool,
    consent_matches_id: bool,
    consent_names_parties: bool,
    consent_names_purpose: bool,
}

fn likely() -> impl Strategy<Value = bool> {
    prop::bool::weighted(0.85)
}

fn world() -> impl Strategy<Value = World> {
    let choices = (
        likely(),
        likely(),
        likely(),
        likely(),
        likely(),
        likely(),
        likely(),
    )
        .prop_map(|(a, b, c, d, e, f, g)| Choices {
            same_child: g,
            rule_for_purpose: a,
            type_allowed: b,
            fields_allowed: c,
            consent_matches_id: d,
            consent_names_parties: e,
            consent_names_purpose: f,
        });
    (
        (
            prop::collection::vec(rule(), 0..=3),
            rule(),
            prop::option::weighted(0.9, consent()),
            prop::sample::select(MessageType::ALL.to_vec()),
        ),
        (0..4usize, 0..4usize, (0..2usize, 1..3u32), 0..2usize),
        (
            prop::collection::vec(prop::sample::select(FIELDS.to_vec()), 0..=4),
            -2i64..2,
            choices,
            prop::bool::ANY,
        ),
    )
        .prop_map(
            |(
                (mut rules, mut main_rule, mut consent, message_type),
                (sender, recipient, (p, v), c),
                (fields, skew, choices, swap_parties),
            )| {
                let purpose = purpose(p, v);
                let consent_id: ConsentId = CONSENT_IDS[c].parse().unwrap();
                if choices.rule_for_purpose {
                    main_rule.purpose = purpose.clone();
                    if choices.type_allowed {
                        let allowed = main_rule.allowed_fields.entry(message_type).or_default();
                        if choices.fields_allowed {
                            allowed.extend(fields.iter().map(|f| f.to_string()));
                        }
                    }
                }
                rules.push(main_rule);
                let child = subject(c);
                if let Some(consent) = consent.as_mut() {
                    if choices.same_child {
                        consent.subject = child;
                    }
                    if choices.consent_matches_id {
                        consent.id = consent_id.clone();
                    }
                    if choices.consent_names_parties {
                        let (a, b) = if swap_parties {
                            (recipient, sender)
                        } else {
                            (sender, recipient)
                        };
                        consent.recording_org = org(a);
                        consent.counterpart = org(b);
                    }
                    if choices.consent_names_purpose {
                        consent.purposes.insert(purpose.clone());
                    }
                }
                World {
                    rules,
                    consent,
                    message_type,
                    sender,
                    recipient,
                    purpose,
                    consent_id,
                    subject: child,
                    fields,
                    now: now() + time::Duration::seconds(skew),
                }
            },
        )
}

/// The oracle: every rule of DESIGN §5 steps 4-5 as a list, in order; the first that fails is
/// the reason.
fn oracle(w: &World) -> Option<DenyReason> {
    // The catalogue keeps one rule per purpose reference (a later duplicate replaces an earlier).
    let mut by_ref = BTreeMap::new();
    for r in &w.rules {
        by_ref.insert(r.purpose.clone(), r.clone());
    }
    let rule = by_ref.get(&w.purpose);
    let public = |i: usize| ORGS[i].1 != OrgKind::Ngo;
    let ngo_to_public = !public(w.sender) && public(w.recipient);
    let public_to_ngo = public(w.sender) && !public(w.recipient);
    // Summaries and responses go from the NGO; referrals go to it.
    let type_way = match w.message_type {
        MessageType::ActivitySummary | MessageType::ReferralResponse => ngo_to_public,
        MessageType::Referral => public_to_ngo,
        // Consent messages are never data under a purpose.
        MessageType::ConsentGranted | MessageType::ConsentWithdrawn | MessageType::Ack => false,
    };
    let consent = w.consent.as_ref().filter(|c| c.id == w.consent_id);
    let checks: Vec<(bool, DenyReason)> = vec![
        (rule.is_some(), DenyReason::PurposeUnknown),
        (
            rule.is_some_and(|r| r.status == PurposeStatus::Active),
            DenyReason::PurposeInactive,
        ),
        (
            rule.is_some_and(|r| r.allowed_fields.contains_key(&w.message_type)),
            DenyReason::TypeNotAllowed,
        ),
        (
            type_way
                && rule.is_some_and(|r| match r.flow {
                    Flow::NgoToMunicipality => ngo_to_public,
                    Flow::MunicipalityToNgo => public_to_ngo,
                    Flow::Both => ngo_to_public || public_to_ngo,
                }),
            DenyReason::DirectionNotAllowed,
        ),
        (
            rule.and_then(|r| r.allowed_fields.get(&w.message_type))
                .is_some_and(|allowed| w.fields.iter().all(|f| allowed.contains(*f))),
            DenyReason::FieldNotAllowed,
        ),
        (consent.is_some(), DenyReason::ConsentUnknown),
        (
            consent.is_some_and(|c| c.subject == w.subject),
            DenyReason::SubjectNotInConsent,
        ),
        // An ending event speaks first: expired is expired, any other ending is not active.
        (
            consent.is_some_and(|c| c.status != ConsentStatus::Expired),
            DenyReason::ConsentExpired,
        ),
        (
            consent.is_some_and(|c| {
                c.status == ConsentStatus::Given || c.status == ConsentStatus::Renewed
            }),
            DenyReason::ConsentNotActive,
        ),
        // Then the window: from valid_from (inclusive) until valid_until (exclusive).
        (
            consent.is_some_and(|c| w.now < c.valid_until),
            DenyReason::ConsentExpired,
        ),
        (
            consent.is_some_and(|c| c.valid_from <= w.now),
            DenyReason::ConsentNotActive,
        ),
        (
            consent.is_some_and(|c| {
                // The consent's two parties are exactly the sender and the recipient.
                BTreeSet::from([c.recording_org.clone(), c.counterpart.clone()])
                    == BTreeSet::from([org(w.sender), org(w.recipient)])
            }),
            DenyReason::PartyNotInConsent,
        ),
        (
            consent.is_some_and(|c| c.purposes.contains(&w.purpose)),
            DenyReason::PurposeNotInConsent,
        ),
    ];
    checks
        .into_iter()
        .find(|(ok, _)| !ok)
        .map(|(_, reason)| reason)
}

fn run(w: &World) -> Decision {
    let sender = org(w.sender);
    let recipient = org(w.recipient);
    let catalogue = Catalogue::new(w.rules.clone());
    let exchange = Exchange {
        subject: &w.subject,
        message_type: w.message_type,
        sender: &sender,
        sender_kind: ORGS[w.sender].1,
        recipient: &recipient,
        recipient_kind: ORGS[w.recipient].1,
        purpose: &w.purpose,
        consent: &w.consent_id,
        body_fields: &w.fields,
    };
    decide(&exchange, &catalogue, w.consent.as_ref(), w.now)
}

/// A world that is permitted: red-barnet reports attendance to herning-kommune.
fn permitted() -> World {
    let p = purpose(0, 1);
    World {
        rules: vec![PurposeRule {
            purpose: p.clone(),
            status: PurposeStatus::Active,
            flow: Flow::NgoToMunicipality,
            allowed_fields: BTreeMap::from([(
                MessageType::ActivitySummary,
                ["month", "sessions_attended"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            )]),
            max_consent_validity_days: 365,
            max_retention_days: 365,
        }],
        consent: Some(ConsentFacts {
            id: CONSENT_IDS[0].parse().unwrap(),
            subject: subject(0),
            recording_org: org(0),
            counterpart: org(2),
            purposes: BTreeSet::from([p.clone()]),
            status: ConsentStatus::Given,
            valid_from: now() - time::Duration::days(30),
            valid_until: now() + time::Duration::days(300),
        }),
        message_type: MessageType::ActivitySummary,
        sender: 2,
        recipient: 0,
        purpose: p,
        consent_id: CONSENT_IDS[0].parse().unwrap(),
        subject: subject(0),
        fields: vec!["month", "sessions_attended"],
        now: now(),
    }
}

/// Each mutation breaks exactly one rule of a permitted world.
fn break_one(reason: DenyReason) -> World {
    let mut w = permitted();
    let consent = w.consent.as_mut().unwrap();
    match reason {
        DenyReason::PurposeUnknown => w.purpose = purpose(0, 2),
        DenyReason::PurposeInactive => w.rules[0].status = PurposeStatus::Inactive,
        DenyReason::TypeNotAllowed => w.message_type = MessageType::Referral,
        DenyReason::DirectionNotAllowed => w.rules[0].flow = Flow::MunicipalityToNgo,
        DenyReason::FieldNotAllowed => w.fields.push("next_step"),
        DenyReason::ConsentUnknown => w.consent_id = CONSENT_IDS[1].parse().unwrap(),
        DenyReason::SubjectNotInConsent => w.subject = subject(1),
        DenyReason::ConsentNotActive => consent.status = ConsentStatus::WithdrawnBySubject,
        DenyReason::ConsentExpired => consent.valid_until = now(),
        DenyReason::PartyNotInConsent => consent.counterpart = org(1),
        DenyReason::PurposeNotInConsent => consent.purposes = BTreeSet::from([purpose(1, 1)]),
        // Reasons of the consent notices, not of `decide`: the unit tests of `decide_grant`
        // break each of those.
        DenyReason::ConsentExists
        | DenyReason::ConsentValidityInvalid
        | DenyReason::RetentionTooLong => {
            unreachable!("not a reason of decide")
        }
    }
    w
}

#[test]
fn breaking_exactly_one_rule_yields_exactly_its_reason() {
    assert!(matches!(run(&permitted()), Decision::Permit(_)));
    assert_eq!(oracle(&permitted()), None);
    for reason in DenyReason::EXCHANGE {
        let w = break_one(reason);
        assert_eq!(run(&w).reason(), Some(reason), "{reason:?}");
        assert_eq!(oracle(&w), Some(reason), "oracle, {reason:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16384, ..ProptestConfig::default() })]

    #[test]
    fn the_decision_agrees_with_the_oracle(w in world()) {
        prop_assert_eq!(run(&w).reason(), oracle(&w));
    }

    /// The field error names the first offending field as a JSON pointer.
    #[test]
    fn field_denials_point_at_the_first_field_not_allowed(w in world()) {
        if let Decision::Deny(denial) = run(&w) {
            if denial.reason == DenyReason::FieldNotAllowed {
                let rule = w.rules.iter().rev().find(|r| r.purpose == w.purpose).unwrap();
                let allowed = &rule.allowed_fields[&w.message_type];
                let first = w.fields.iter().find(|f| !allowed.contains(**f)).unwrap();
                prop_assert_eq!(denial.pointer, Some(format!("/body/{first}")));
            } else {
                prop_assert_eq!(denial.pointer, None);
            }
        }
    }
}

/// The generator reaches every outcome, so the agreement above is not only about early exits.
#[test]
fn the_generated_worlds_cover_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = world();
    let mut seen: BTreeMap<Option<DenyReason>, usize> = BTreeMap::new();
    for _ in 0..20_000 {
        let w = strategy.new_tree(&mut runner).unwrap().current();
        *seen.entry(run(&w).reason()).or_default() += 1;
    }
    assert!(
        seen.contains_key(&None),
        "no permitted world generated: {seen:?}"
    );
    for reason in DenyReason::EXCHANGE {
        assert!(
            seen.contains_key(&Some(reason)),
            "{reason:?} never generated: {seen:?}"
        );
    }
    println!("outcomes over 20,000 generated worlds: {seen:?}");
}

// ----- The consent notices: `decide_grant` and `decide_withdrawal` against their own oracle. -----

/// A generated `consent.granted` and what the receiving node holds.
#[derive(Debug, Clone)]
struct GrantWorld {
    rules: Vec<PurposeRule>,
    sender: usize,
    recipient: usize,
    purpose: PurposeRef,
    purposes: BTreeSet<PurposeRef>,
    valid_from: OffsetDateTime,
    valid_until: OffsetDateTime,
    existing: Option<ConsentFacts>,
    withdrawn_before_granted: bool,
    retention_days: u32,
}

fn grant_world() -> impl Strategy<Value = GrantWorld> {
    (
        prop::collection::vec(rule(), 0..=3),
        0..ORGS.len(),
        0..ORGS.len(),
        (0..2usize, 1..3u32),
        prop::collection::btree_set((0..2usize, 1..3u32), 0..=3),
        offset(),
        prop_oneof![
            3 => (1i64..400).prop_map(time::Duration::days),
            1 => (-2i64..=2).prop_map(time::Duration::seconds),
            1 => (360i64..370).prop_map(time::Duration::days),
        ],
        prop::option::weighted(0.2, consent()),
        (
            prop::bool::weighted(0.1),
            prop::sample::select(vec![30u32, 365, 400]),
        ),
    )
        .prop_map(
            |(
                rules,
                sender,
                recipient,
                (id, version),
                purposes,
                from,
                length,
                existing,
                (withdrawn, retention_days),
            )| {
                let valid_from = now() + from;
                GrantWorld {
                    rules,
                    sender,
                    recipient,
                    purpose: purpose(id, version),
                    purposes: purposes
                        .into_iter()
                        .map(|(id, version)| purpose(id, version))
                        .collect(),
                    valid_from,
                    valid_until: valid_from + length,
                    existing,
                    withdrawn_before_granted: withdrawn,
                    retention_days,
                }
            },
        )
}

/// DESIGN §5, read plainly: a grant must come from the recording party (a second grant under
/// a held id is a conflict), not after its own withdrawal, between an NGO and a public authority, name only known and active
/// purposes including the envelope's, and have a validity that is neither empty, nor longer
/// than any of its purposes allows, a retention no longer than any of them allows, and not be
/// over.
fn grant_oracle(w: &GrantWorld) -> Option<DenyReason> {
    let sender = org(w.sender);
    if let Some(held) = &w.existing {
        return Some(if held.recording_org == sender {
            DenyReason::ConsentExists
        } else {
            DenyReason::PartyNotInConsent
        });
    }
    if w.withdrawn_before_granted {
        return Some(DenyReason::ConsentNotActive);
    }
    let ngo = |i: usize| ORGS[i].1 == OrgKind::Ngo;
    if ngo(w.sender) == ngo(w.recipient) {
        return Some(DenyReason::DirectionNotAllowed);
    }
    let catalogue = Catalogue::new(w.rules.clone());
    let mut shortest = i64::MAX;
    let mut keep_at_most = u32::MAX;
    for p in &w.purposes {
        match catalogue.rule(p) {
            None => return Some(DenyReason::PurposeUnknown),
            Some(rule) if rule.status != PurposeStatus::Active => {
                return Some(DenyReason::PurposeInactive);
            }
            Some(rule) => {
                shortest = shortest.min(i64::from(rule.max_consent_validity_days));
                keep_at_most = keep_at_most.min(rule.max_retention_days);
            }
        }
    }
    if !w.purposes.contains(&w.purpose) {
        return Some(DenyReason::PurposeNotInConsent);
    }
    // Validity counts calendar days: the span rounded to whole days (Danish midnights are 23
    // to 25 hours apart around the summer-time switches).
    let length = w.valid_until - w.valid_from;
    let whole_days = (length.whole_seconds() as f64 / 86_400.0).round() as i64;
    if length <= time::Duration::ZERO || whole_days > shortest {
        return Some(DenyReason::ConsentValidityInvalid);
    }
    if w.retention_days > keep_at_most {
        return Some(DenyReason::RetentionTooLong);
    }
    if now() >= w.valid_until {
        return Some(DenyReason::ConsentExpired);
    }
    None
}

fn run_grant(w: &GrantWorld) -> Decision {
    let id: ConsentId = CONSENT_IDS[0].parse().unwrap();
    let (sender, recipient) = (org(w.sender), org(w.recipient));
    brobygger::policy::decide_grant(
        &brobygger::policy::Grant {
            consent: &id,
            sender: &sender,
            sender_kind: ORGS[w.sender].1,
            recipient: &recipient,
            recipient_kind: ORGS[w.recipient].1,
            purpose: &w.purpose,
            purposes: &w.purposes,
            valid_from: w.valid_from,
            valid_until: w.valid_until,
            retention_days: w.retention_days,
            withdrawn_before_granted: w.withdrawn_before_granted,
        },
        &Catalogue::new(w.rules.clone()),
        w.existing.as_ref(),
        now(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8192, ..ProptestConfig::default() })]

    #[test]
    fn the_grant_decision_agrees_with_its_oracle(w in grant_world()) {
        prop_assert_eq!(run_grant(&w).reason(), grant_oracle(&w));
    }

    /// A withdrawal is admitted unless a held consent names neither the sender as a party nor
    /// the envelope's child.
    #[test]
    fn the_withdrawal_decision_agrees_with_its_oracle(
        sender in 0..ORGS.len(),
        child in 0..SUBJECTS.len(),
        held in prop::option::of(consent()),
    ) {
        let expected = match &held {
            None => None,
            Some(c) if c.recording_org != org(sender) && c.counterpart != org(sender) => {
                Some(DenyReason::PartyNotInConsent)
            }
            Some(c) if c.subject != subject(child) => Some(DenyReason::SubjectNotInConsent),
            Some(_) => None,
        };
        let decision =
            brobygger::policy::decide_withdrawal(&org(sender), &subject(child), held.as_ref());
        prop_assert_eq!(decision.reason(), expected);
    }
}

/// The grant generator reaches every outcome of the grant decision.
#[test]
fn the_generated_grants_cover_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = grant_world();
    let mut seen = BTreeSet::new();
    for _ in 0..20_000 {
        let w = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert(run_grant(&w).reason());
    }
    for reason in [
        None,
        Some(DenyReason::ConsentExists),
        Some(DenyReason::PartyNotInConsent),
        Some(DenyReason::ConsentNotActive),
        Some(DenyReason::DirectionNotAllowed),
        Some(DenyReason::PurposeUnknown),
        Some(DenyReason::PurposeInactive),
        Some(DenyReason::PurposeNotInConsent),
        Some(DenyReason::ConsentValidityInvalid),
        Some(DenyReason::RetentionTooLong),
        Some(DenyReason::ConsentExpired),
    ] {
        assert!(seen.contains(&reason), "never generated: {reason:?}");
    }
}
