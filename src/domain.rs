//! Domain newtypes, parsed exactly once at the boundary (config, wire JSON, certificates, tokens).
//!
//! Invariant: this module does no I/O and imports no sqlx, actix, reqwest or tokio. Inner code
//! takes these types and never re-checks raw strings.

use std::fmt;
use std::str::FromStr;

/// Why a raw value could not become a domain value. The message is safe to show to the person
/// who supplied the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Checks the lowercase-slug shape shared by org ids and federation name parts: starts with a
/// letter, then letters, digits and single hyphens, no trailing hyphen.
fn is_slug(value: &str, max_len: usize) -> bool {
    let bytes = value.as_bytes();
    let starts_with_letter = bytes.first().is_some_and(u8::is_ascii_lowercase);
    let allowed = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    starts_with_letter
        && allowed
        && value.len() <= max_len
        && !value.ends_with('-')
        && !value.contains("--")
}

/// A member organisation's id in the federation, e.g. `herning-kommune` or `red-barnet`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

impl OrgId {
    pub const MAX_LEN: usize = 63;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OrgId {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if is_slug(value, Self::MAX_LEN) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ParseError::new(format!(
                "`{value}` is not an organisation id: use a lowercase slug such as `herning-kommune` \
                 (letters a-z, digits and single hyphens, starting with a letter, at most {} characters)",
                Self::MAX_LEN
            )))
        }
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of a federation, e.g. `brobygger.test`: dot-separated lowercase labels. It is the
/// trust domain of the SPIFFE ids in node certificates and the prefix of audit log origins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FederationName(String);

impl FederationName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FederationName {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let labels_ok = !value.is_empty() && value.split('.').all(|label| is_slug(label, 63));
        if labels_ok && value.len() <= 253 {
            Ok(Self(value.to_owned()))
        } else {
            Err(ParseError::new(format!(
                "`{value}` is not a federation name: use dot-separated lowercase labels such as `brobygger.test`"
            )))
        }
    }
}

impl fmt::Display for FederationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity a node certificate carries as its single URI SAN:
/// `spiffe://<federation>/org/<org-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    pub federation: FederationName,
    pub org: OrgId,
}

impl NodeIdentity {
    pub fn uri(&self) -> String {
        format!("spiffe://{}/org/{}", self.federation, self.org)
    }

    /// Parses a SPIFFE URI of the exact form above; anything else (other paths, ports, query,
    /// user info, trailing slash) is refused.
    pub fn parse_uri(uri: &str) -> Result<Self, ParseError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| ParseError::new(format!("`{uri}` is not a spiffe:// URI")))?;
        let (trust_domain, path) = rest
            .split_once("/org/")
            .ok_or_else(|| ParseError::new(format!("`{uri}` has no /org/<org-id> path")))?;
        Ok(Self {
            federation: trust_domain.parse()?,
            org: path.parse()?,
        })
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// What kind of organisation a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrgKind {
    Municipality,
    Ngo,
    Region,
}

impl OrgKind {
    pub const ALL: [OrgKind; 3] = [OrgKind::Municipality, OrgKind::Ngo, OrgKind::Region];

    pub fn as_str(self) -> &'static str {
        match self {
            OrgKind::Municipality => "municipality",
            OrgKind::Ngo => "ngo",
            OrgKind::Region => "region",
        }
    }
}

impl FromStr for OrgKind {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == value)
            .ok_or_else(|| {
                ParseError::new(format!(
                    "`{value}` is not an organisation kind: use municipality, ngo or region"
                ))
            })
    }
}

impl fmt::Display for OrgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Danish CVR number (company register number): exactly eight digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cvr(String);

impl Cvr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Cvr {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.len() == 8 && value.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ParseError::new(format!(
                "`{value}` is not a CVR number: exactly eight digits"
            )))
        }
    }
}

/// A municipality's kommunekode: three digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kommunekode(String);

impl Kommunekode {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Kommunekode {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.len() == 3 && value.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ParseError::new(format!(
                "`{value}` is not a kommunekode: exactly three digits"
            )))
        }
    }
}

/// A purpose's id in the catalogue, e.g. `smaaboernsklub-fremmoede`: a lowercase slug.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PurposeId(String);

impl PurposeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PurposeId {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if is_slug(value, 63) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ParseError::new(format!(
                "`{value}` is not a purpose id: a lowercase slug of letters, digits and single hyphens"
            )))
        }
    }
}

impl fmt::Display for PurposeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A purpose by id and version: consents and messages name both, so a changed purpose needs a
/// new consent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PurposeRef {
    pub id: PurposeId,
    pub version: u32,
}

impl PurposeRef {
    pub fn new(id: PurposeId, version: u32) -> Result<Self, ParseError> {
        if version == 0 {
            return Err(ParseError::new("a purpose version starts at 1"));
        }
        Ok(Self { id, version })
    }
}

impl fmt::Display for PurposeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

/// A consent's id: a UUID in its canonical lowercase form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsentId(String);

impl ConsentId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `true` for `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex.
fn is_canonical_uuid(value: &str) -> bool {
    value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

impl FromStr for ConsentId {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if is_canonical_uuid(value) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ParseError::new(format!(
                "`{value}` is not a consent id: a UUID in lowercase canonical form"
            )))
        }
    }
}

impl fmt::Display for ConsentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A UUIDv7 (RFC 9562) in canonical lowercase form, from a Unix time in milliseconds and 10
/// random bytes (74 of their bits are used).
fn uuid_v7(unix_ms: u64, random: [u8; 10]) -> String {
    let [_, _, t0, t1, t2, t3, t4, t5] = unix_ms.to_be_bytes();
    let [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9] = random;
    let bytes = [
        t0,
        t1,
        t2,
        t3,
        t4,
        t5,
        0x70 | (r0 & 0x0f),
        r1,
        0x80 | (r2 & 0x3f),
        r3,
        r4,
        r5,
        r6,
        r7,
        r8,
        r9,
    ];
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8).unwrap_or_default(),
        hex.get(8..12).unwrap_or_default(),
        hex.get(12..16).unwrap_or_default(),
        hex.get(16..20).unwrap_or_default(),
        hex.get(20..32).unwrap_or_default()
    )
}

impl ConsentId {
    /// A new consent id: a UUIDv7 from the recording time and random bytes.
    pub fn v7(unix_ms: u64, random: [u8; 10]) -> Self {
        Self(uuid_v7(unix_ms, random))
    }
}

/// A message's id: a UUID in canonical lowercase form (UUIDv7 when this node makes one). The
/// sender chooses it; with the sender's org id it names the message for replay detection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A new message id: a UUIDv7 from the sending time and random bytes.
    pub fn v7(unix_ms: u64, random: [u8; 10]) -> Self {
        Self(uuid_v7(unix_ms, random))
    }
}

impl FromStr for MessageId {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if is_canonical_uuid(value) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ParseError::new(
                "a message id must be a UUID in lowercase canonical form",
            ))
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pairwise subject reference: 128 random bits, written as 32 lowercase hex digits. It names
/// a child between exactly two organisations and is not derived from any identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectRef([u8; 16]);

impl SubjectRef {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl FromStr for SubjectRef {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let lowercase = value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut bytes = [0u8; 16];
        match (lowercase, hex::decode_to_slice(value, &mut bytes)) {
            (true, Ok(())) => Ok(Self(bytes)),
            _ => Err(ParseError::new(format!(
                "`{value}` is not a subject reference: 32 lowercase hex digits"
            ))),
        }
    }
}

impl fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The v1 message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageType {
    ActivitySummary,
    Referral,
    ReferralResponse,
    ConsentGranted,
    ConsentWithdrawn,
    Ack,
}

impl MessageType {
    pub const ALL: [MessageType; 6] = [
        MessageType::ActivitySummary,
        MessageType::Referral,
        MessageType::ReferralResponse,
        MessageType::ConsentGranted,
        MessageType::ConsentWithdrawn,
        MessageType::Ack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::ActivitySummary => "activity-summary",
            MessageType::Referral => "referral",
            MessageType::ReferralResponse => "referral-response",
            MessageType::ConsentGranted => "consent.granted",
            MessageType::ConsentWithdrawn => "consent.withdrawn",
            MessageType::Ack => "ack",
        }
    }

    /// Which way a data message type travels: `true` from an NGO to a public authority,
    /// `false` the other way; `None` for consent bookkeeping, which goes both ways.
    pub fn from_ngo(self) -> Option<bool> {
        match self {
            MessageType::ActivitySummary | MessageType::ReferralResponse => Some(true),
            MessageType::Referral => Some(false),
            MessageType::ConsentGranted | MessageType::ConsentWithdrawn | MessageType::Ack => None,
        }
    }

    /// Data about a child (as opposed to consent bookkeeping): these need a purpose's permit.
    pub fn carries_child_data(self) -> bool {
        matches!(
            self,
            MessageType::ActivitySummary | MessageType::Referral | MessageType::ReferralResponse
        )
    }
}

impl FromStr for MessageType {
    type Err = ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == value)
            .ok_or_else(|| ParseError::new(format!("`{value}` is not a v1 message type")))
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_are_lowercase_slugs() {
        for good in ["herning-kommune", "red-barnet", "a", "kommune-607"] {
            assert!(good.parse::<OrgId>().is_ok(), "{good}");
        }
        for bad in [
            "", "Herning", "-x", "x-", "a--b", "a_b", "a b", "æble", "1abc", "a/b",
        ] {
            assert!(bad.parse::<OrgId>().is_err(), "{bad}");
        }
        assert!("a".repeat(64).parse::<OrgId>().is_err());
    }

    #[test]
    fn spiffe_uri_round_trips_and_rejects_variants() {
        let id = NodeIdentity::parse_uri("spiffe://brobygger.test/org/red-barnet").unwrap();
        assert_eq!(id.org.as_str(), "red-barnet");
        assert_eq!(id.uri(), "spiffe://brobygger.test/org/red-barnet");
        for bad in [
            "https://brobygger.test/org/red-barnet",
            "spiffe://brobygger.test/org/red-barnet/",
            "spiffe://brobygger.test/org/red-barnet?x=1",
            "spiffe://brobygger.test:443/org/red-barnet",
            "spiffe://user@brobygger.test/org/red-barnet",
            "spiffe://brobygger.test/orgs/red-barnet",
            "spiffe://brobygger.test/org/Red-Barnet",
            "spiffe:///org/red-barnet",
        ] {
            assert!(NodeIdentity::parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cvr_and_kommunekode_shapes() {
        assert!("99000001".parse::<Cvr>().is_ok());
        assert!("9900000".parse::<Cvr>().is_err());
        assert!("99a00001".parse::<Cvr>().is_err());
        assert!("901".parse::<Kommunekode>().is_ok());
        assert!("0901".parse::<Kommunekode>().is_err());
    }

    #[test]
    fn consent_ids_subject_refs_and_message_types_parse_once() {
        assert!(
            "0192f0a4-7b1c-7def-8a00-1234567890ab"
                .parse::<ConsentId>()
                .is_ok()
        );
        for bad in [
            "0192F0A4-7B1C-7DEF-8A00-1234567890AB",
            "0192f0a47b1c7def8a001234567890ab",
            "0192f0a4-7b1c-7def-8a00-1234567890a",
            "0192f0a4-7b1c-7def-8a00-1234567890ag",
        ] {
            assert!(bad.parse::<ConsentId>().is_err(), "{bad}");
        }
        let subject: SubjectRef = "00112233445566778899aabbccddeeff".parse().unwrap();
        assert_eq!(subject.to_string(), "00112233445566778899aabbccddeeff");
        assert!(
            "00112233445566778899AABBCCDDEEFF"
                .parse::<SubjectRef>()
                .is_err()
        );
        assert!("0011".parse::<SubjectRef>().is_err());
        for t in MessageType::ALL {
            assert_eq!(t.as_str().parse::<MessageType>().unwrap(), t);
        }
        assert!(PurposeRef::new("smaaboernsklub-fremmoede".parse().unwrap(), 0).is_err());
    }

    #[test]
    fn org_kind_parses_wire_names() {
        for kind in OrgKind::ALL {
            assert_eq!(kind.as_str().parse::<OrgKind>().unwrap(), kind);
        }
        assert!("company".parse::<OrgKind>().is_err());
    }
}
