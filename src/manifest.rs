//! The federation manifest: the operator-signed list of members and the purpose catalogue.
//!
//! A manifest file is a C2SP signed note whose text is the manifest JSON. This module parses
//! and verifies it (pure), decides whether a candidate may replace the current one (pure, with
//! `now` as an argument), and holds the current manifest for the running node, reloading a newer
//! valid file without a restart. The highest accepted serial is persisted by `storage`, so a
//! lower serial is refused after a restart too.

use crate::domain::{
    Cvr, FederationName, Kommunekode, MessageType, NodeIdentity, OrgId, OrgKind, PurposeId,
    PurposeRef,
};
use crate::policy::{Catalogue, Flow, PurposeRule, PurposeStatus};
use crate::signed_note::{NoteError, VerifierKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use time::OffsetDateTime;

pub const MANIFEST_FORMAT_V1: &str = "brobygger-manifest/v1";

/// Why a manifest was refused. Each variant is one thing an operator can fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the manifest file: {0}")]
    Unreadable(String),
    #[error("the manifest is not signed by the operator key: {0}")]
    Signature(#[from] NoteError),
    #[error("the manifest content is invalid: {0}")]
    Invalid(String),
    #[error("the manifest is for federation `{found}`, but this node belongs to `{expected}`")]
    WrongFederation { expected: String, found: String },
    #[error("the manifest expired at {0}")]
    Expired(String),
    #[error(
        "the manifest serial {candidate} is lower than serial {accepted}, which this node already accepted"
    )]
    SerialRollback { candidate: u64, accepted: u64 },
    #[error("the manifest has serial {0}, which this node already accepted with different content")]
    SerialReused(u64),
}

// ----- Wire form (JSON inside the signed note). -----

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDocV1 {
    pub format: String,
    pub federation: String,
    pub serial: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub members: Vec<MemberDocV1>,
    /// The purpose catalogue (DESIGN §4). A federation may start without purposes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<PurposeDocV1>,
}

/// Text in Danish and English.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalizedV1 {
    pub da: String,
    pub en: String,
}

/// The legal basis codes of each side's processing under a purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegalBasisV1 {
    pub municipality: Vec<String>,
    pub ngo: Vec<String>,
}

/// One purpose version as the manifest states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeDocV1 {
    pub id: String,
    pub version: u32,
    /// `active` or `inactive`.
    pub status: String,
    pub title: LocalizedV1,
    /// Plain-language description for families and caseworkers.
    pub description: LocalizedV1,
    /// `ngo-to-municipality`, `municipality-to-ngo` or `both`.
    pub direction: String,
    /// The allowed message types, each with its allowed body fields.
    pub messages: BTreeMap<String, Vec<String>>,
    pub legal_basis: LegalBasisV1,
    pub retention_at_recipient_days: u32,
    pub max_consent_validity_days: u32,
    /// The age from which a young person consents themself.
    pub self_consent_age: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDocV1 {
    pub org_id: String,
    pub name: String,
    pub kind: String,
    pub cvr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kommunekode: Option<String>,
    /// The federation endpoint, `https://HOST:PORT`.
    pub endpoint: String,
    /// The audit log origin, e.g. `brobygger.test/herning-kommune/audit`.
    pub audit_origin: String,
    /// The C2SP verifier key of the member's audit log (receipts and checkpoints).
    pub audit_verifier_key: String,
}

// ----- Parsed form. -----

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub org: OrgId,
    pub name: String,
    pub kind: OrgKind,
    pub cvr: Cvr,
    pub kommunekode: Option<Kommunekode>,
    pub endpoint: Endpoint,
    pub audit_origin: String,
    pub audit_key: VerifierKey,
}

/// A federation endpoint: host and port of an `https://` URL, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("endpoint `{url}` must start with https://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
            format!("endpoint `{url}` must name a port, e.g. https://127.0.0.1:7101")
        })?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("endpoint `{url}` has an invalid port"))?;
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
        if !host_ok || port == 0 {
            return Err(format!("endpoint `{url}` is not https://HOST:PORT"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    pub fn base_url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }
}

/// A purpose version with what people read about it; the decision rule lives in
/// [`Manifest::catalogue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purpose {
    pub purpose: PurposeRef,
    pub title_da: String,
    pub title_en: String,
    pub description_da: String,
    pub description_en: String,
    pub legal_basis_municipality: Vec<String>,
    pub legal_basis_ngo: Vec<String>,
    pub retention_at_recipient_days: u32,
    pub max_consent_validity_days: u32,
    pub self_consent_age: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub federation: FederationName,
    pub serial: u64,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub members: BTreeMap<OrgId, Member>,
    pub purposes: BTreeMap<PurposeRef, Purpose>,
    /// The decision rules of the purposes, for `policy::decide`.
    pub catalogue: Catalogue,
    /// SHA-256 of the signed text: two manifests with one serial must have the same hash.
    pub content_hash: [u8; 32],
}

impl Manifest {
    pub fn member(&self, org: &OrgId) -> Option<&Member> {
        self.members.get(org)
    }

    /// A member whose identity (federation and org) matches a verified certificate.
    pub fn member_for(&self, identity: &NodeIdentity) -> Option<&Member> {
        (identity.federation == self.federation)
            .then(|| self.members.get(&identity.org))
            .flatten()
    }

    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now >= self.expires_at
    }
}

/// Verifies a signed manifest note with the operator key and parses it.
pub fn open(
    note: &str,
    operator_key: &VerifierKey,
    expected_federation: &FederationName,
) -> Result<Manifest, ManifestError> {
    let text = operator_key.open(note)?;
    let doc: ManifestDocV1 =
        serde_json::from_str(text).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    let manifest = parse_doc(
        doc,
        ring::digest::digest(&ring::digest::SHA256, text.as_bytes()),
    )?;
    if &manifest.federation != expected_federation {
        return Err(ManifestError::WrongFederation {
            expected: expected_federation.to_string(),
            found: manifest.federation.to_string(),
        });
    }
    Ok(manifest)
}

fn parse_doc(doc: ManifestDocV1, hash: ring::digest::Digest) -> Result<Manifest, ManifestError> {
    let invalid = |m: String| ManifestError::Invalid(m);
    if doc.format != MANIFEST_FORMAT_V1 {
        return Err(invalid(format!(
            "format `{}` is not supported (expected `{MANIFEST_FORMAT_V1}`)",
            doc.format
        )));
    }
    let federation: FederationName = doc
        .federation
        .parse()
        .map_err(|e| invalid(format!("federation: {e}")))?;
    if doc.serial == 0 {
        return Err(invalid("serial must be at least 1".into()));
    }
    if doc.expires_at <= doc.issued_at {
        return Err(invalid("expires_at must be after issued_at".into()));
    }
    let mut members = BTreeMap::new();
    for m in doc.members {
        let org: OrgId = m
            .org_id
            .parse()
            .map_err(|e| invalid(format!("member: {e}")))?;
        let ctx =
            |what: &str, e: &dyn std::fmt::Display| invalid(format!("member `{org}`: {what}: {e}"));
        let kind: OrgKind = m.kind.parse().map_err(|e| ctx("kind", &e))?;
        let cvr: Cvr = m.cvr.parse().map_err(|e| ctx("cvr", &e))?;
        let kommunekode = m
            .kommunekode
            .map(|k| k.parse::<Kommunekode>())
            .transpose()
            .map_err(|e| ctx("kommunekode", &e))?;
        if kind == OrgKind::Municipality && kommunekode.is_none() {
            return Err(ctx("kommunekode", &"a municipality must have one"));
        }
        if kind != OrgKind::Municipality && kommunekode.is_some() {
            return Err(ctx("kommunekode", &"only municipalities have one"));
        }
        if m.name.trim().is_empty() || m.name.len() > 200 {
            return Err(ctx("name", &"must be 1 to 200 characters"));
        }
        let endpoint = Endpoint::parse(&m.endpoint).map_err(|e| ctx("endpoint", &e))?;
        let audit_key: VerifierKey = m
            .audit_verifier_key
            .parse()
            .map_err(|e| ctx("audit_verifier_key", &e))?;
        if audit_key.name() != m.audit_origin {
            return Err(ctx(
                "audit_verifier_key",
                &"the key name must equal the member's audit_origin",
            ));
        }
        let member = Member {
            org: org.clone(),
            name: m.name,
            kind,
            cvr,
            kommunekode,
            endpoint,
            audit_origin: m.audit_origin,
            audit_key,
        };
        if members.insert(org.clone(), member).is_some() {
            return Err(invalid(format!("member `{org}` is listed twice")));
        }
    }
    let mut purposes = BTreeMap::new();
    let mut rules = Vec::new();
    for p in doc.purposes {
        let (purpose, rule) = parse_purpose(p)?;
        if purposes.contains_key(&purpose.purpose) {
            return Err(invalid(format!(
                "purpose `{}` is listed twice",
                purpose.purpose
            )));
        }
        purposes.insert(purpose.purpose.clone(), purpose);
        rules.push(rule);
    }
    let mut content_hash = [0u8; 32];
    content_hash.copy_from_slice(hash.as_ref());
    Ok(Manifest {
        federation,
        serial: doc.serial,
        issued_at: doc.issued_at,
        expires_at: doc.expires_at,
        members,
        purposes,
        catalogue: Catalogue::new(rules),
        content_hash,
    })
}

/// A body field name: lowercase snake case.
fn is_field_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 64
}

fn parse_purpose(doc: PurposeDocV1) -> Result<(Purpose, PurposeRule), ManifestError> {
    let id: PurposeId = doc
        .id
        .parse()
        .map_err(|e| ManifestError::Invalid(format!("purpose: {e}")))?;
    let purpose = PurposeRef::new(id, doc.version)
        .map_err(|e| ManifestError::Invalid(format!("purpose `{}`: {e}", doc.id)))?;
    let ctx = |what: &str, problem: &dyn std::fmt::Display| {
        ManifestError::Invalid(format!("purpose `{purpose}`: {what}: {problem}"))
    };
    let status = match doc.status.as_str() {
        "active" => PurposeStatus::Active,
        "inactive" => PurposeStatus::Inactive,
        other => {
            return Err(ctx(
                "status",
                &format!("`{other}` is not active or inactive"),
            ));
        }
    };
    let flow = match doc.direction.as_str() {
        "ngo-to-municipality" => Flow::NgoToMunicipality,
        "municipality-to-ngo" => Flow::MunicipalityToNgo,
        "both" => Flow::Both,
        other => {
            return Err(ctx(
                "direction",
                &format!("`{other}` is not ngo-to-municipality, municipality-to-ngo or both"),
            ));
        }
    };
    let mut allowed_fields = BTreeMap::new();
    for (type_name, fields) in doc.messages {
        let message_type: MessageType = type_name.parse().map_err(|e| ctx("messages", &e))?;
        if !message_type.carries_child_data() {
            return Err(ctx(
                "messages",
                &format!("`{message_type}` follows the consent rules, not a purpose's"),
            ));
        }
        let type_fits_flow = match (flow, message_type.from_ngo()) {
            (Flow::Both, _) | (_, None) => true,
            (Flow::NgoToMunicipality, Some(from_ngo)) => from_ngo,
            (Flow::MunicipalityToNgo, Some(from_ngo)) => !from_ngo,
        };
        if !type_fits_flow {
            return Err(ctx(
                "messages",
                &format!("`{message_type}` does not travel in this purpose's direction"),
            ));
        }
        let mut set = BTreeSet::new();
        for field in fields {
            if !is_field_name(&field) {
                return Err(ctx("messages", &format!("`{field}` is not a field name")));
            }
            set.insert(field);
        }
        allowed_fields.insert(message_type, set);
    }
    if allowed_fields.is_empty() {
        return Err(ctx(
            "messages",
            &"a purpose allows at least one message type",
        ));
    }
    for (what, text) in [
        ("title.da", &doc.title.da),
        ("title.en", &doc.title.en),
        ("description.da", &doc.description.da),
        ("description.en", &doc.description.en),
    ] {
        if text.trim().is_empty() {
            return Err(ctx(what, &"must not be empty"));
        }
    }
    if doc.retention_at_recipient_days == 0 {
        return Err(ctx("retention_at_recipient_days", &"must be at least 1"));
    }
    if !(1..=3650).contains(&doc.max_consent_validity_days) {
        return Err(ctx("max_consent_validity_days", &"must be 1 to 3650"));
    }
    if doc.self_consent_age > 18 {
        return Err(ctx("self_consent_age", &"must be 18 or less"));
    }
    let rule = PurposeRule {
        purpose: purpose.clone(),
        status,
        flow,
        allowed_fields,
        max_consent_validity_days: doc.max_consent_validity_days,
        max_retention_days: doc.retention_at_recipient_days,
    };
    Ok((
        Purpose {
            purpose,
            title_da: doc.title.da,
            title_en: doc.title.en,
            description_da: doc.description.da,
            description_en: doc.description.en,
            legal_basis_municipality: doc.legal_basis.municipality,
            legal_basis_ngo: doc.legal_basis.ngo,
            retention_at_recipient_days: doc.retention_at_recipient_days,
            max_consent_validity_days: doc.max_consent_validity_days,
            self_consent_age: doc.self_consent_age,
        },
        rule,
    ))
}

/// The starter purpose catalogue for the Danish case (`config/purposes.v1.json`), which
/// `pki init` puts into a development manifest.
pub fn starter_purposes() -> Result<Vec<PurposeDocV1>, ManifestError> {
    serde_json::from_str(include_str!("../config/purposes.v1.json"))
        .map_err(|e| ManifestError::Invalid(format!("config/purposes.v1.json: {e}")))
}

/// The highest manifest a node has accepted, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedSerial {
    pub serial: u64,
    pub content_hash: [u8; 32],
}

/// Whether a verified candidate may become the current manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Succession {
    /// A higher serial than any accepted before: take it and persist it.
    Newer,
    /// The manifest already accepted, byte for byte: nothing to do.
    Same,
}

/// The succession rule of DESIGN §2: not expired, never a lower serial, never the same serial
/// with other content. Pure.
pub fn check_succession(
    accepted: Option<AcceptedSerial>,
    candidate: &Manifest,
    now: OffsetDateTime,
) -> Result<Succession, ManifestError> {
    if candidate.is_expired(now) {
        return Err(ManifestError::Expired(format_time(candidate.expires_at)));
    }
    match accepted {
        None => Ok(Succession::Newer),
        Some(a) if candidate.serial > a.serial => Ok(Succession::Newer),
        Some(a) if candidate.serial < a.serial => Err(ManifestError::SerialRollback {
            candidate: candidate.serial,
            accepted: a.serial,
        }),
        Some(a) if a.content_hash == candidate.content_hash => Ok(Succession::Same),
        Some(a) => Err(ManifestError::SerialReused(a.serial)),
    }
}

pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The current manifest of a running node, shared by all request handlers. Readers take a
/// cheap `Arc` snapshot per request, so membership is decided on every request.
#[derive(Debug)]
pub struct ManifestHolder {
    current: RwLock<Arc<Manifest>>,
}

impl ManifestHolder {
    pub fn new(manifest: Manifest) -> Self {
        Self {
            current: RwLock::new(Arc::new(manifest)),
        }
    }

    pub fn snapshot(&self) -> Arc<Manifest> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            // A poisoned lock only means a writer panicked between two whole assignments; the
            // value inside is still a complete manifest.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Installs `manifest` if its serial is higher than the current one, checked under the
    /// write lock so that two concurrent reloads (watcher and SIGHUP) can never step back.
    /// Returns whether it was installed.
    pub fn replace_if_newer(&self, manifest: Manifest) -> bool {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if manifest.serial > guard.serial {
            *guard = Arc::new(manifest);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signed_note::{NoteSigner, generate_ed25519_pkcs8};
    use time::macros::datetime;

    fn operator() -> NoteSigner {
        NoteSigner::from_pkcs8(
            "brobygger.test/operator",
            &generate_ed25519_pkcs8().unwrap(),
        )
        .unwrap()
    }

    fn doc(serial: u64) -> ManifestDocV1 {
        let audit = NoteSigner::from_pkcs8(
            "brobygger.test/red-barnet/audit",
            &generate_ed25519_pkcs8().unwrap(),
        )
        .unwrap();
        ManifestDocV1 {
            format: MANIFEST_FORMAT_V1.into(),
            federation: "brobygger.test".into(),
            serial,
            issued_at: datetime!(2026-11-01 00:00 UTC),
            expires_at: datetime!(2027-11-01 00:00 UTC),
            members: vec![MemberDocV1 {
                org_id: "red-barnet".into(),
                name: "Red Barnet (test)".into(),
                kind: "ngo".into(),
                cvr: "99000003".into(),
                kommunekode: None,
                endpoint: "https://127.0.0.1:7103".into(),
                audit_origin: "brobygger.test/red-barnet/audit".into(),
                audit_verifier_key: audit.verifier_key().to_string(),
            }],
            purposes: starter_purposes().unwrap(),
        }
    }

    fn sign(op: &NoteSigner, doc: &ManifestDocV1) -> String {
        op.sign(&format!("{}\n", serde_json::to_string_pretty(doc).unwrap()))
            .unwrap()
    }

    fn fed() -> FederationName {
        "brobygger.test".parse().unwrap()
    }

    #[test]
    fn signed_manifest_opens_and_unsigned_or_foreign_does_not() {
        let op = operator();
        let note = sign(&op, &doc(1));
        let m = open(&note, op.verifier_key(), &fed()).unwrap();
        assert_eq!(m.serial, 1);
        assert!(m.member(&"red-barnet".parse().unwrap()).is_some());
        let text = note.split("\n\n").next().unwrap();
        assert!(matches!(
            open(text, op.verifier_key(), &fed()),
            Err(ManifestError::Signature(NoteError::Unsigned))
        ));
        assert!(matches!(
            open(&note, operator().verifier_key(), &fed()),
            Err(ManifestError::Signature(_))
        ));
        assert!(matches!(
            open(&note, op.verifier_key(), &"other.test".parse().unwrap()),
            Err(ManifestError::WrongFederation { .. })
        ));
    }

    #[test]
    fn succession_rules() {
        let op = operator();
        let now = datetime!(2026-11-22 12:00 UTC);
        let m1 = open(&sign(&op, &doc(1)), op.verifier_key(), &fed()).unwrap();
        let m2 = open(&sign(&op, &doc(2)), op.verifier_key(), &fed()).unwrap();
        let accepted2 = AcceptedSerial {
            serial: 2,
            content_hash: m2.content_hash,
        };
        assert_eq!(check_succession(None, &m1, now), Ok(Succession::Newer));
        assert_eq!(
            check_succession(Some(accepted2), &m2, now),
            Ok(Succession::Same)
        );
        assert_eq!(
            check_succession(Some(accepted2), &m1, now),
            Err(ManifestError::SerialRollback {
                candidate: 1,
                accepted: 2
            })
        );
        let m2b = open(&sign(&op, &doc(2)), op.verifier_key(), &fed()).unwrap();
        assert_eq!(
            check_succession(Some(accepted2), &m2b, now),
            Err(ManifestError::SerialReused(2))
        );
        assert!(matches!(
            check_succession(None, &m1, datetime!(2027-11-01 00:00 UTC)),
            Err(ManifestError::Expired(_))
        ));
    }

    #[test]
    fn the_current_manifest_never_steps_back() {
        let op = operator();
        let m2 = open(&sign(&op, &doc(2)), op.verifier_key(), &fed()).unwrap();
        let m3 = open(&sign(&op, &doc(3)), op.verifier_key(), &fed()).unwrap();
        let holder = ManifestHolder::new(m2.clone());
        assert!(holder.replace_if_newer(m3));
        assert!(!holder.replace_if_newer(m2));
        assert_eq!(holder.snapshot().serial, 3);
    }

    #[test]
    fn the_starter_catalogue_is_signed_into_the_manifest_and_decides() {
        use crate::domain::{ConsentId, OrgId};
        use crate::policy::{ConsentFacts, ConsentStatus, Decision, Exchange, decide};
        use time::macros::datetime;
        let op = operator();
        let m = open(&sign(&op, &doc(1)), op.verifier_key(), &fed()).unwrap();
        assert_eq!(m.purposes.len(), 3);
        let attendance = PurposeRef::new("smaaboernsklub-fremmoede".parse().unwrap(), 1).unwrap();
        assert_eq!(m.purposes[&attendance].title_da, "Fremmøde i småbørnsklub");
        let ngo: OrgId = "red-barnet".parse().unwrap();
        let kommune: OrgId = "herning-kommune".parse().unwrap();
        let consent_id: ConsentId = "0192f0a4-7b1c-7def-8a00-1234567890ab".parse().unwrap();
        let child: crate::domain::SubjectRef = "5e1f0c2a9d4b47e8a3c6b0d2e4f61a7b".parse().unwrap();
        let consent = ConsentFacts {
            id: consent_id.clone(),
            subject: child,
            recording_org: kommune.clone(),
            counterpart: ngo.clone(),
            purposes: BTreeSet::from([attendance.clone()]),
            status: ConsentStatus::Given,
            valid_from: datetime!(2026-09-01 00:00 UTC),
            valid_until: datetime!(2027-09-01 00:00 UTC),
        };
        let fields = [
            "month",
            "programme",
            "sessions_offered",
            "sessions_attended",
        ];
        let exchange = Exchange {
            message_type: MessageType::ActivitySummary,
            sender: &ngo,
            sender_kind: OrgKind::Ngo,
            recipient: &kommune,
            recipient_kind: OrgKind::Municipality,
            purpose: &attendance,
            consent: &consent_id,
            subject: &child,
            body_fields: &fields,
        };
        assert!(matches!(
            decide(
                &exchange,
                &m.catalogue,
                Some(&consent),
                datetime!(2026-11-22 12:00 UTC)
            ),
            Decision::Permit(_)
        ));
    }

    #[test]
    fn purpose_rules_are_enforced() {
        let op = operator();
        let mut d = doc(1);
        d.purposes[0]
            .messages
            .insert("consent.granted".into(), vec![]);
        assert!(matches!(
            open(&sign(&op, &d), op.verifier_key(), &fed()),
            Err(ManifestError::Invalid(m)) if m.contains("consent rules")
        ));
        let mut d = doc(1);
        d.purposes[0]
            .messages
            .insert("activity-summary".into(), vec!["Fri Tekst".into()]);
        assert!(open(&sign(&op, &d), op.verifier_key(), &fed()).is_err());
        let mut d = doc(1);
        d.purposes.push(d.purposes[0].clone());
        assert!(matches!(
            open(&sign(&op, &d), op.verifier_key(), &fed()),
            Err(ManifestError::Invalid(m)) if m.contains("twice")
        ));
        let mut d = doc(1);
        d.purposes[0].direction = "sideways".into();
        assert!(open(&sign(&op, &d), op.verifier_key(), &fed()).is_err());
    }

    #[test]
    fn member_rules_are_enforced() {
        let op = operator();
        let mut d = doc(1);
        d.members[0].kind = "municipality".into();
        assert!(matches!(
            open(&sign(&op, &d), op.verifier_key(), &fed()),
            Err(ManifestError::Invalid(m)) if m.contains("kommunekode")
        ));
        let mut d = doc(1);
        d.members.push(d.members[0].clone());
        assert!(matches!(
            open(&sign(&op, &d), op.verifier_key(), &fed()),
            Err(ManifestError::Invalid(m)) if m.contains("twice")
        ));
        let mut d = doc(1);
        d.members[0].endpoint = "http://127.0.0.1:7103".into();
        assert!(open(&sign(&op, &d), op.verifier_key(), &fed()).is_err());
    }
}
