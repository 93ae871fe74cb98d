//! The pure decision for purpose and consent (DESIGN §5, steps 4 and 5).
//!
//! Plain values in, `Permit` or `Deny(reason)` out. No I/O, no clock (`now` is an argument), no
//! serde: this is the most tested code of the project. The boundary code does steps 1 to 3
//! (identity, replay, size, CPR guard, schema) and then asks [`decide`]. A [`Permit`] can only
//! be made here, so code that stores or releases a message can demand one.
//!
//! The checks run in a fixed order and the first failure is the answer:
//! 1. the purpose (id and version) is in the catalogue;
//! 2. it is active;
//! 3. it allows this message type;
//! 4. it allows this direction (NGO to public authority, or the reverse), and so does the
//!    message type itself (a summary goes to the municipality, a referral to the NGO);
//! 5. it allows every field of the body (the first other field is named);
//! 6. the consent exists, and is the consent of this child (its pairwise subject reference);
//! 7. its status permits processing (given or renewed): otherwise `consent-not-active`, or
//!    `consent-expired` for an expired one; now must be inside its validity (from `valid_from`
//!    inclusive to `valid_until` exclusive: before is not active, after is expired);
//! 8. it names exactly the sender and the recipient as its two parties;
//! 9. it names this purpose version.

use crate::domain::{ConsentId, MessageType, OrgId, OrgKind, PurposeRef, SubjectRef};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// Whether a purpose may be used for new exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurposeStatus {
    Active,
    Inactive,
}

/// Which way data may flow under a purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    NgoToMunicipality,
    MunicipalityToNgo,
    Both,
}

/// What the policy needs to know of one purpose version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposeRule {
    pub purpose: PurposeRef,
    pub status: PurposeStatus,
    pub flow: Flow,
    /// The allowed body fields per allowed message type. A type absent here is not allowed.
    pub allowed_fields: BTreeMap<MessageType, BTreeSet<String>>,
    /// The longest validity a consent naming this purpose may have, in days.
    pub max_consent_validity_days: u32,
    /// The longest the recipient may keep what it receives under this purpose, in days.
    pub max_retention_days: u32,
}

/// The purpose catalogue of the current manifest, by id and version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    rules: BTreeMap<PurposeRef, PurposeRule>,
}

impl Catalogue {
    pub fn new(rules: impl IntoIterator<Item = PurposeRule>) -> Self {
        Self {
            rules: rules.into_iter().map(|r| (r.purpose.clone(), r)).collect(),
        }
    }

    pub fn rule(&self, purpose: &PurposeRef) -> Option<&PurposeRule> {
        self.rules.get(purpose)
    }
}

/// The status of a consent, derived from its event log (W3C DPV terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentStatus {
    Given,
    Renewed,
    WithdrawnBySubject,
    Revoked,
    Expired,
    Invalidated,
}

impl ConsentStatus {
    /// Only given and renewed consents permit processing.
    pub fn permits_processing(self) -> bool {
        matches!(self, ConsentStatus::Given | ConsentStatus::Renewed)
    }
}

/// What the policy needs to know of one consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentFacts {
    pub id: ConsentId,
    /// The pairwise reference of the child the consent is about.
    pub subject: SubjectRef,
    /// The organisation that recorded the consent.
    pub recording_org: OrgId,
    /// The other party of the pairwise consent.
    pub counterpart: OrgId,
    pub purposes: BTreeSet<PurposeRef>,
    pub status: ConsentStatus,
    /// The first instant the consent is valid (inclusive).
    pub valid_from: OffsetDateTime,
    /// The first instant it is no longer valid (exclusive). A consent form's last day D becomes
    /// D+1 00:00 local time when the record is parsed, so the whole last day counts.
    pub valid_until: OffsetDateTime,
}

/// One exchange to decide on: who sends what to whom, under which purpose and consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange<'a> {
    pub message_type: MessageType,
    pub sender: &'a OrgId,
    pub sender_kind: OrgKind,
    pub recipient: &'a OrgId,
    pub recipient_kind: OrgKind,
    pub purpose: &'a PurposeRef,
    pub consent: &'a ConsentId,
    /// The child the message is about.
    pub subject: &'a SubjectRef,
    /// The names of the body's top-level fields, in the order given (the first field not
    /// allowed is the one named).
    pub body_fields: &'a [&'a str],
}

/// Why an exchange is refused. Each has a stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyReason {
    PurposeUnknown,
    PurposeInactive,
    TypeNotAllowed,
    DirectionNotAllowed,
    FieldNotAllowed,
    ConsentUnknown,
    SubjectNotInConsent,
    ConsentNotActive,
    ConsentExpired,
    PartyNotInConsent,
    PurposeNotInConsent,
    /// A `consent.granted` for a consent this node already holds.
    ConsentExists,
    /// A consent whose validity is empty or longer than one of its purposes allows.
    ConsentValidityInvalid,
    /// A consent that lets the recipient keep data longer than one of its purposes allows.
    RetentionTooLong,
}

impl DenyReason {
    /// Every reason of [`decide`] (the exchange of data about a child), in check order.
    pub const EXCHANGE: [DenyReason; 11] = [
        DenyReason::PurposeUnknown,
        DenyReason::PurposeInactive,
        DenyReason::TypeNotAllowed,
        DenyReason::DirectionNotAllowed,
        DenyReason::FieldNotAllowed,
        DenyReason::ConsentUnknown,
        DenyReason::SubjectNotInConsent,
        DenyReason::ConsentNotActive,
        DenyReason::ConsentExpired,
        DenyReason::PartyNotInConsent,
        DenyReason::PurposeNotInConsent,
    ];

    /// Every reason, including those of the consent notices.
    pub const ALL: [DenyReason; 14] = [
        DenyReason::PurposeUnknown,
        DenyReason::PurposeInactive,
        DenyReason::TypeNotAllowed,
        DenyReason::DirectionNotAllowed,
        DenyReason::FieldNotAllowed,
        DenyReason::ConsentUnknown,
        DenyReason::SubjectNotInConsent,
        DenyReason::ConsentNotActive,
        DenyReason::ConsentExpired,
        DenyReason::PartyNotInConsent,
        DenyReason::PurposeNotInConsent,
        DenyReason::ConsentExists,
        DenyReason::ConsentValidityInvalid,
        DenyReason::RetentionTooLong,
    ];

    pub fn code(self) -> &'static str {
        match self {
            DenyReason::PurposeUnknown => "purpose-unknown",
            DenyReason::PurposeInactive => "purpose-inactive",
            DenyReason::TypeNotAllowed => "type-not-allowed",
            DenyReason::DirectionNotAllowed => "direction-not-allowed",
            DenyReason::FieldNotAllowed => "field-not-allowed",
            DenyReason::ConsentUnknown => "consent-unknown",
            DenyReason::SubjectNotInConsent => "subject-not-in-consent",
            DenyReason::ConsentNotActive => "consent-not-active",
            DenyReason::ConsentExpired => "consent-expired",
            DenyReason::PartyNotInConsent => "party-not-in-consent",
            DenyReason::PurposeNotInConsent => "purpose-not-in-consent",
            DenyReason::ConsentExists => "consent-exists",
            DenyReason::ConsentValidityInvalid => "consent-validity-invalid",
            DenyReason::RetentionTooLong => "retention-too-long",
        }
    }
}

/// A refusal: the reason, and for field errors the JSON pointer of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    pub pointer: Option<String>,
}

/// Proof that the policy permitted an exchange. Only [`decide`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    _private: (),
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Permit(Permit),
    Deny(Denial),
}

impl Decision {
    /// The denial's reason, if it is one.
    pub fn reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Permit(_) => None,
            Decision::Deny(denial) => Some(denial.reason),
        }
    }
}

/// Which way an exchange goes between the two sides of the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// From an NGO to a public authority (municipality or region).
    FromNgo,
    /// From a public authority to an NGO.
    ToNgo,
    /// Between two public authorities or two NGOs: not what v1 purposes cover.
    Lateral,
}

fn is_public(kind: OrgKind) -> bool {
    match kind {
        OrgKind::Municipality | OrgKind::Region => true,
        OrgKind::Ngo => false,
    }
}

fn way(from: OrgKind, to: OrgKind) -> Way {
    match (is_public(from), is_public(to)) {
        (false, true) => Way::FromNgo,
        (true, false) => Way::ToNgo,
        (true, true) | (false, false) => Way::Lateral,
    }
}

/// Whether both the purpose's flow and the message type's own direction allow this way.
fn direction_allowed(flow: Flow, message_type: MessageType, way: Way) -> bool {
    let purpose_allows = matches!(
        (flow, way),
        (Flow::NgoToMunicipality | Flow::Both, Way::FromNgo)
            | (Flow::MunicipalityToNgo | Flow::Both, Way::ToNgo)
    );
    let type_allows = match message_type.from_ngo() {
        Some(true) => way == Way::FromNgo,
        Some(false) => way == Way::ToNgo,
        // Consent bookkeeping follows its own rules and is never permitted by a purpose.
        None => false,
    };
    purpose_allows && type_allows
}

/// Escapes a field name as one JSON pointer reference token (RFC 6901).
fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn deny(reason: DenyReason) -> Decision {
    Decision::Deny(Denial {
        reason,
        pointer: None,
    })
}

/// Decides one exchange. Total: every input yields a decision; nothing panics.
pub fn decide(
    exchange: &Exchange<'_>,
    catalogue: &Catalogue,
    consent: Option<&ConsentFacts>,
    now: OffsetDateTime,
) -> Decision {
    let Some(rule) = catalogue.rule(exchange.purpose) else {
        return deny(DenyReason::PurposeUnknown);
    };
    if rule.status != PurposeStatus::Active {
        return deny(DenyReason::PurposeInactive);
    }
    let Some(allowed) = rule.allowed_fields.get(&exchange.message_type) else {
        return deny(DenyReason::TypeNotAllowed);
    };
    let way = way(exchange.sender_kind, exchange.recipient_kind);
    if !direction_allowed(rule.flow, exchange.message_type, way) {
        return deny(DenyReason::DirectionNotAllowed);
    }
    if let Some(field) = exchange
        .body_fields
        .iter()
        .find(|field| !allowed.contains(**field))
    {
        return Decision::Deny(Denial {
            reason: DenyReason::FieldNotAllowed,
            pointer: Some(format!("/body/{}", pointer_token(field))),
        });
    }
    let Some(consent) = consent.filter(|c| &c.id == exchange.consent) else {
        return deny(DenyReason::ConsentUnknown);
    };
    if &consent.subject != exchange.subject {
        return deny(DenyReason::SubjectNotInConsent);
    }
    // A withdrawn, revoked or invalidated consent says so, even after its end date: the audit
    // log records why processing stopped, not merely that time ran out.
    match consent.status {
        ConsentStatus::Expired => return deny(DenyReason::ConsentExpired),
        status if !status.permits_processing() => return deny(DenyReason::ConsentNotActive),
        _ => {}
    }
    if now >= consent.valid_until {
        return deny(DenyReason::ConsentExpired);
    }
    if now < consent.valid_from {
        return deny(DenyReason::ConsentNotActive);
    }
    let parties_match = (&consent.recording_org == exchange.sender
        && &consent.counterpart == exchange.recipient)
        || (&consent.recording_org == exchange.recipient
            && &consent.counterpart == exchange.sender);
    if !parties_match {
        return deny(DenyReason::PartyNotInConsent);
    }
    if !consent.purposes.contains(exchange.purpose) {
        return deny(DenyReason::PurposeNotInConsent);
    }
    Decision::Permit(Permit { _private: () })
}

/// A `consent.granted` to decide on: a consent as its recording party states it. The same
/// decision runs when a consent is recorded locally (the sender is then this node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'a> {
    pub consent: &'a ConsentId,
    /// The recording party.
    pub sender: &'a OrgId,
    pub sender_kind: OrgKind,
    /// The counterpart.
    pub recipient: &'a OrgId,
    pub recipient_kind: OrgKind,
    /// The purpose the envelope names; it must be one of the consent's.
    pub purpose: &'a PurposeRef,
    pub purposes: &'a BTreeSet<PurposeRef>,
    pub valid_from: OffsetDateTime,
    pub valid_until: OffsetDateTime,
    /// How long the recipient may keep what it receives, in days.
    pub retention_days: u32,
    /// A withdrawal of this consent arrived before its grant (out of order after an outage).
    pub withdrawn_before_granted: bool,
}

/// Decides a `consent.granted` (DESIGN §5: it must come from the recording party, name this
/// node as the counterpart, and reference active purposes). `existing` is the consent this node
/// already holds under that id, if any. In order: the id is new (a second grant from the
/// recording party is `consent-exists`, one from anyone else `party-not-in-consent`); it was not
/// withdrawn before it arrived (`consent-not-active`); the two
/// parties are an NGO and a public authority; every purpose is known and active; the envelope's
/// purpose is one of them; the validity is not empty and not longer than every purpose allows;
/// the retention at the recipient is not longer than every purpose allows; it has not ended.
pub fn decide_grant(
    grant: &Grant<'_>,
    catalogue: &Catalogue,
    existing: Option<&ConsentFacts>,
    now: OffsetDateTime,
) -> Decision {
    if let Some(existing) = existing {
        return deny(if &existing.recording_org == grant.sender {
            DenyReason::ConsentExists
        } else {
            DenyReason::PartyNotInConsent
        });
    }
    // A consent already withdrawn never comes to life, whatever order its notices arrive in.
    if grant.withdrawn_before_granted {
        return deny(DenyReason::ConsentNotActive);
    }
    if way(grant.sender_kind, grant.recipient_kind) == Way::Lateral {
        return deny(DenyReason::DirectionNotAllowed);
    }
    let mut max_days = u32::MAX;
    let mut max_retention = u32::MAX;
    for purpose in grant.purposes {
        let Some(rule) = catalogue.rule(purpose) else {
            return deny(DenyReason::PurposeUnknown);
        };
        if rule.status != PurposeStatus::Active {
            return deny(DenyReason::PurposeInactive);
        }
        max_days = max_days.min(rule.max_consent_validity_days);
        max_retention = max_retention.min(rule.max_retention_days);
    }
    if !grant.purposes.contains(grant.purpose) {
        return deny(DenyReason::PurposeNotInConsent);
    }
    // The validity in calendar days: the instants are Danish midnights, which lie 23 to 25
    // hours apart around the summer-time switches, so the span is rounded to whole days.
    let length = grant.valid_until - grant.valid_from;
    let days = (length.whole_hours() + 12).div_euclid(24);
    if length <= time::Duration::ZERO || days > i64::from(max_days) {
        return deny(DenyReason::ConsentValidityInvalid);
    }
    if grant.retention_days > max_retention {
        return deny(DenyReason::RetentionTooLong);
    }
    if now >= grant.valid_until {
        return deny(DenyReason::ConsentExpired);
    }
    Decision::Permit(Permit { _private: () })
}

/// Decides a `consent.withdrawn` notice. It is always admitted after the boundary's own checks
/// (DESIGN §5), with two exceptions that protect the family's consent from third parties: the
/// sender must be one of the consent's two parties, and the notice must name the consent's
/// child. A notice for a consent this node does not hold is permitted and changes nothing, so
/// the sender gets a clean answer.
pub fn decide_withdrawal(
    sender: &OrgId,
    subject: &SubjectRef,
    existing: Option<&ConsentFacts>,
) -> Decision {
    match existing {
        None => Decision::Permit(Permit { _private: () }),
        Some(c) if &c.recording_org != sender && &c.counterpart != sender => {
            deny(DenyReason::PartyNotInConsent)
        }
        Some(c) if &c.subject != subject => deny(DenyReason::SubjectNotInConsent),
        Some(_) => Decision::Permit(Permit { _private: () }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn purpose() -> PurposeRef {
        PurposeRef::new("smaaboernsklub-fremmoede".parse().unwrap(), 1).unwrap()
    }

    fn catalogue(status: PurposeStatus) -> Catalogue {
        Catalogue::new([PurposeRule {
            purpose: purpose(),
            status,
            flow: Flow::NgoToMunicipality,
            allowed_fields: BTreeMap::from([(
                MessageType::ActivitySummary,
                ["month", "sessions_offered", "sessions_attended"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            )]),
            max_consent_validity_days: 365,
            max_retention_days: 730,
        }])
    }

    fn consent() -> ConsentFacts {
        ConsentFacts {
            id: "0192f0a4-7b1c-7def-8a00-1234567890ab".parse().unwrap(),
            subject: "5e1f0c2a9d4b47e8a3c6b0d2e4f61a7b".parse().unwrap(),
            recording_org: "herning-kommune".parse().unwrap(),
            counterpart: "red-barnet".parse().unwrap(),
            purposes: BTreeSet::from([purpose()]),
            status: ConsentStatus::Given,
            valid_from: datetime!(2026-09-01 00:00 UTC),
            valid_until: datetime!(2027-09-01 00:00 UTC),
        }
    }

    #[test]
    fn a_summary_from_the_club_to_the_municipality_is_permitted_and_each_rule_bites() {
        let ngo: OrgId = "red-barnet".parse().unwrap();
        let kommune: OrgId = "herning-kommune".parse().unwrap();
        let purpose = purpose();
        let consent_facts = consent();
        let child = consent_facts.subject;
        let other_child: SubjectRef = "00000000000000000000000000000001".parse().unwrap();
        let fields = ["month", "sessions_attended"];
        let exchange = Exchange {
            message_type: MessageType::ActivitySummary,
            sender: &ngo,
            sender_kind: OrgKind::Ngo,
            recipient: &kommune,
            recipient_kind: OrgKind::Municipality,
            purpose: &purpose,
            consent: &consent_facts.id,
            subject: &child,
            body_fields: &fields,
        };
        let now = datetime!(2026-11-22 12:00 UTC);
        let active = catalogue(PurposeStatus::Active);
        assert!(matches!(
            decide(&exchange, &active, Some(&consent_facts), now),
            Decision::Permit(_)
        ));
        let reason = |e: &Exchange<'_>, c: &Catalogue, f: Option<&ConsentFacts>, t| {
            decide(e, c, f, t).reason()
        };
        assert_eq!(
            reason(
                &exchange,
                &catalogue(PurposeStatus::Inactive),
                Some(&consent_facts),
                now
            ),
            Some(DenyReason::PurposeInactive)
        );
        let reverse = Exchange {
            sender: &kommune,
            sender_kind: OrgKind::Municipality,
            recipient: &ngo,
            recipient_kind: OrgKind::Ngo,
            ..exchange.clone()
        };
        assert_eq!(
            reason(&reverse, &active, Some(&consent_facts), now),
            Some(DenyReason::DirectionNotAllowed)
        );
        let extra = ["month", "notes/free~text"];
        let with_extra = Exchange {
            body_fields: &extra,
            ..exchange.clone()
        };
        assert_eq!(
            decide(&with_extra, &active, Some(&consent_facts), now),
            Decision::Deny(Denial {
                reason: DenyReason::FieldNotAllowed,
                pointer: Some("/body/notes~1free~0text".into())
            })
        );
        assert_eq!(
            reason(&exchange, &active, None, now),
            Some(DenyReason::ConsentUnknown)
        );
        let other = Exchange {
            subject: &other_child,
            ..exchange.clone()
        };
        assert_eq!(
            reason(&other, &active, Some(&consent_facts), now),
            Some(DenyReason::SubjectNotInConsent)
        );
        // The validity window: valid_from inclusive, valid_until exclusive.
        assert!(matches!(
            decide(
                &exchange,
                &active,
                Some(&consent_facts),
                consent_facts.valid_from
            ),
            Decision::Permit(_)
        ));
        let last_instant = consent_facts.valid_until - time::Duration::nanoseconds(1);
        assert!(matches!(
            decide(&exchange, &active, Some(&consent_facts), last_instant),
            Decision::Permit(_)
        ));
        // A withdrawal after the end date still reads as a withdrawal.
        let withdrawn_late = ConsentFacts {
            status: ConsentStatus::Revoked,
            ..consent()
        };
        assert_eq!(
            reason(
                &exchange,
                &active,
                Some(&withdrawn_late),
                datetime!(2028-01-01 00:00 UTC)
            ),
            Some(DenyReason::ConsentNotActive)
        );
        assert_eq!(
            reason(
                &exchange,
                &active,
                Some(&consent_facts),
                datetime!(2027-09-01 00:00 UTC)
            ),
            Some(DenyReason::ConsentExpired)
        );
        assert_eq!(
            reason(
                &exchange,
                &active,
                Some(&consent_facts),
                datetime!(2026-08-31 23:59 UTC)
            ),
            Some(DenyReason::ConsentNotActive)
        );
        let withdrawn = ConsentFacts {
            status: ConsentStatus::WithdrawnBySubject,
            ..consent()
        };
        assert_eq!(
            reason(&exchange, &active, Some(&withdrawn), now),
            Some(DenyReason::ConsentNotActive)
        );
        let other_party = ConsentFacts {
            counterpart: "fredericia-kommune".parse().unwrap(),
            ..consent()
        };
        assert_eq!(
            reason(&exchange, &active, Some(&other_party), now),
            Some(DenyReason::PartyNotInConsent)
        );
        let other_purpose = ConsentFacts {
            purposes: BTreeSet::new(),
            ..consent()
        };
        assert_eq!(
            reason(&exchange, &active, Some(&other_purpose), now),
            Some(DenyReason::PurposeNotInConsent)
        );
        let referral = Exchange {
            message_type: MessageType::Referral,
            ..exchange.clone()
        };
        assert_eq!(
            reason(&referral, &active, Some(&consent_facts), now),
            Some(DenyReason::TypeNotAllowed)
        );
        assert_eq!(
            reason(&exchange, &Catalogue::default(), Some(&consent_facts), now),
            Some(DenyReason::PurposeUnknown)
        );
    }

    #[test]
    fn a_grant_is_permitted_and_each_of_its_rules_bites() {
        let kommune: OrgId = "herning-kommune".parse().unwrap();
        let ngo: OrgId = "red-barnet".parse().unwrap();
        let other_kommune: OrgId = "fredericia-kommune".parse().unwrap();
        let id: ConsentId = "0192f0a4-7b1c-7def-8a00-1234567890ab".parse().unwrap();
        let purposes = BTreeSet::from([purpose()]);
        let unknown = PurposeRef::new("familieklub".parse().unwrap(), 1).unwrap();
        let now = datetime!(2026-11-22 12:00 UTC);
        let grant = Grant {
            consent: &id,
            sender: &kommune,
            sender_kind: OrgKind::Municipality,
            recipient: &ngo,
            recipient_kind: OrgKind::Ngo,
            purpose: &purposes.iter().next().unwrap().clone(),
            purposes: &purposes,
            valid_from: datetime!(2026-11-01 00:00 UTC),
            valid_until: datetime!(2027-10-31 00:00 UTC),
            retention_days: 730,
            withdrawn_before_granted: false,
        };
        let active = catalogue(PurposeStatus::Active);
        let reason = |g: &Grant<'_>, c: &Catalogue, e: Option<&ConsentFacts>| {
            decide_grant(g, c, e, now).reason()
        };
        assert_eq!(reason(&grant, &active, None), None);
        let withdrawn_first = Grant {
            withdrawn_before_granted: true,
            ..grant.clone()
        };
        assert_eq!(
            reason(&withdrawn_first, &active, None),
            Some(DenyReason::ConsentNotActive)
        );
        let held = consent();
        assert_eq!(
            reason(&grant, &active, Some(&held)),
            Some(DenyReason::ConsentExists)
        );
        let from_other = Grant {
            sender: &ngo,
            sender_kind: OrgKind::Ngo,
            recipient: &kommune,
            recipient_kind: OrgKind::Municipality,
            ..grant.clone()
        };
        assert_eq!(reason(&from_other, &active, None), None);
        assert_eq!(
            reason(&from_other, &active, Some(&held)),
            Some(DenyReason::PartyNotInConsent)
        );
        let lateral = Grant {
            recipient: &other_kommune,
            recipient_kind: OrgKind::Municipality,
            ..grant.clone()
        };
        assert_eq!(
            reason(&lateral, &active, None),
            Some(DenyReason::DirectionNotAllowed)
        );
        let with_unknown = BTreeSet::from([purpose(), unknown.clone()]);
        assert_eq!(
            reason(
                &Grant {
                    purposes: &with_unknown,
                    ..grant.clone()
                },
                &active,
                None
            ),
            Some(DenyReason::PurposeUnknown)
        );
        assert_eq!(
            reason(&grant, &catalogue(PurposeStatus::Inactive), None),
            Some(DenyReason::PurposeInactive)
        );
        assert_eq!(
            reason(
                &Grant {
                    purpose: &unknown,
                    ..grant.clone()
                },
                &active,
                None
            ),
            Some(DenyReason::PurposeNotInConsent)
        );
        // The catalogue allows 365 days: exactly that is fine, a day more is not, nor is none.
        let full_year = Grant {
            valid_until: grant.valid_from + time::Duration::days(365),
            ..grant.clone()
        };
        assert_eq!(reason(&full_year, &active, None), None);
        for valid_until in [
            grant.valid_from + time::Duration::days(366),
            grant.valid_from,
        ] {
            assert_eq!(
                reason(
                    &Grant {
                        valid_until,
                        ..grant.clone()
                    },
                    &active,
                    None
                ),
                Some(DenyReason::ConsentValidityInvalid)
            );
        }
        // 365 calendar days across the switch to winter time are 365 days and one hour.
        let across_the_switch = Grant {
            valid_from: datetime!(2027-10-30 22:00 UTC),
            valid_until: datetime!(2028-10-29 23:00 UTC),
            ..grant.clone()
        };
        assert_eq!(
            decide_grant(
                &across_the_switch,
                &active,
                None,
                datetime!(2027-11-01 00:00 UTC)
            )
            .reason(),
            None
        );
        let kept_too_long = Grant {
            retention_days: 731,
            ..grant.clone()
        };
        assert_eq!(
            reason(&kept_too_long, &active, None),
            Some(DenyReason::RetentionTooLong)
        );
        let ended = Grant {
            valid_from: datetime!(2026-01-01 00:00 UTC),
            valid_until: now,
            ..grant.clone()
        };
        assert_eq!(
            reason(&ended, &active, None),
            Some(DenyReason::ConsentExpired)
        );
    }

    #[test]
    fn a_withdrawal_is_admitted_unless_a_third_party_or_another_child() {
        let held = consent();
        let kommune: OrgId = "herning-kommune".parse().unwrap();
        let ngo: OrgId = "red-barnet".parse().unwrap();
        let stranger: OrgId = "fredericia-kommune".parse().unwrap();
        let child = held.subject;
        let other_child: SubjectRef = "00000000000000000000000000000001".parse().unwrap();
        assert_eq!(decide_withdrawal(&stranger, &child, None).reason(), None);
        assert_eq!(
            decide_withdrawal(&kommune, &child, Some(&held)).reason(),
            None
        );
        assert_eq!(decide_withdrawal(&ngo, &child, Some(&held)).reason(), None);
        assert_eq!(
            decide_withdrawal(&stranger, &child, Some(&held)).reason(),
            Some(DenyReason::PartyNotInConsent)
        );
        assert_eq!(
            decide_withdrawal(&ngo, &other_child, Some(&held)).reason(),
            Some(DenyReason::SubjectNotInConsent)
        );
    }

    #[test]
    fn reason_codes_are_distinct_kebab_case() {
        let codes: BTreeSet<&str> = DenyReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), DenyReason::ALL.len());
        assert!(
            codes
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        );
    }
}
