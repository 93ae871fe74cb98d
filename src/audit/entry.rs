//! Audit entries: what is recorded, and its one canonical byte encoding.
//!
//! An entry is encoded once, by the writer, as compact JSON with a fixed field order, including
//! its own leaf index (so a moved, swapped or inserted entry names itself). The bytes are stored
//! and hashed as they are and never re-serialised. Identifiers that could be looked up (consent
//! ids, subject references, local actor ids) are stored only as keyed HMACs under a separate,
//! versioned key, so the log itself leaks nothing. Pure: no I/O.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The largest entry the tlog-tiles entry bundles can carry (a two-byte length prefix).
pub const MAX_ENTRY_BYTES: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("the entry encodes to {0} bytes, more than the limit of 65,535")]
    TooLarge(usize),
    #[error("the entry bytes are not a valid v1 entry: {0}")]
    Malformed(String),
    #[error("the entry bytes are not in canonical form")]
    NotCanonical,
}

/// Whether the node allowed what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Permit,
    Deny,
}

/// A pseudonymous local actor: HMAC of the token subject, and the role used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorRecord {
    pub id_hmac: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<String>,
}

/// What one audit entry says. `None` fields are left out of the encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecord {
    /// When, as RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What happened, e.g. `federation.ping` or `local.authentication`.
    pub action: String,
    pub decision: Option<Decision>,
    /// The stable reason code of a denial (or of a notable permit).
    pub reason: Option<String>,
    /// The peer organisation (org ids are public, so they are stored as they are).
    pub peer: Option<String>,
    pub actor: Option<ActorRecord>,
    pub message_id_hmac: Option<String>,
    pub message_type: Option<String>,
    pub purpose: Option<String>,
    pub consent_hmac: Option<String>,
    pub subject_hmac: Option<String>,
    /// SHA-256 (hex) of the exact envelope bytes.
    pub envelope_sha256: Option<String>,
    /// The HTTP route pattern of a request refused before any message was read (never the raw
    /// path, which may carry identifiers).
    pub route: Option<String>,
}

/// The wire form of an encoded entry, field order fixed. Strings borrow from the record when
/// encoding and from the bytes when checking, so neither copies text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryV1<'a> {
    v: u8,
    idx: u64,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    decision: Option<Decision>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    peer: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    actor: Option<ActorV1<'a>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    message_id_hmac: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    message_type: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    purpose: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    consent_hmac: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    subject_hmac: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    envelope_sha256: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    route: Option<Cow<'a, str>>,
    /// The version of the HMAC key the `*_hmac` fields were made with.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    hmac_key: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActorV1<'a> {
    #[serde(borrow)]
    id_hmac: Cow<'a, str>,
    #[serde(borrow, skip_serializing_if = "Option::is_none", default)]
    role: Option<Cow<'a, str>>,
}

fn borrowed(value: &Option<String>) -> Option<Cow<'_, str>> {
    value.as_deref().map(Cow::Borrowed)
}

fn owned(value: Option<Cow<'_, str>>) -> Option<String> {
    value.map(Cow::into_owned)
}

/// Encodes a record as the entry at leaf index `idx`.
pub fn encode(
    record: &AuditRecord,
    idx: u64,
    hmac_key_version: u32,
) -> Result<Vec<u8>, EntryError> {
    let uses_hmac = record.actor.is_some()
        || record.message_id_hmac.is_some()
        || record.consent_hmac.is_some()
        || record.subject_hmac.is_some();
    let entry = EntryV1 {
        v: 1,
        idx,
        time: Cow::Borrowed(&record.time),
        action: Cow::Borrowed(&record.action),
        decision: record.decision,
        reason: borrowed(&record.reason),
        peer: borrowed(&record.peer),
        actor: record.actor.as_ref().map(|a| ActorV1 {
            id_hmac: Cow::Borrowed(&a.id_hmac),
            role: borrowed(&a.role),
        }),
        message_id_hmac: borrowed(&record.message_id_hmac),
        message_type: borrowed(&record.message_type),
        purpose: borrowed(&record.purpose),
        consent_hmac: borrowed(&record.consent_hmac),
        subject_hmac: borrowed(&record.subject_hmac),
        envelope_sha256: borrowed(&record.envelope_sha256),
        route: borrowed(&record.route),
        hmac_key: uses_hmac.then_some(hmac_key_version),
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| EntryError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(EntryError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// A cheap bound: `true` if the record's encoding is certainly within [`MAX_ENTRY_BYTES`]
/// (even if every character needed a six-byte JSON escape), so the writer can skip a trial
/// encoding.
pub fn surely_fits(record: &AuditRecord) -> bool {
    let text_len = [
        Some(&record.time),
        Some(&record.action),
        record.reason.as_ref(),
        record.peer.as_ref(),
        record.actor.as_ref().map(|a| &a.id_hmac),
        record.actor.as_ref().and_then(|a| a.role.as_ref()),
        record.message_id_hmac.as_ref(),
        record.message_type.as_ref(),
        record.purpose.as_ref(),
        record.consent_hmac.as_ref(),
        record.subject_hmac.as_ref(),
        record.envelope_sha256.as_ref(),
        record.route.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(String::len)
    .sum::<usize>();
    // Field names, punctuation, the version, index and key version fit in 512 bytes.
    text_len.saturating_mul(6).saturating_add(512) <= MAX_ENTRY_BYTES
}

/// What a verifier reads back from stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEntry {
    pub idx: u64,
    pub record: AuditRecord,
    /// The HMAC key version the identifiers were pseudonymised with, if any.
    pub hmac_key: Option<u32>,
}

/// An `io::Write` that compares what is written with the expected bytes, without allocating.
struct SameAs<'a> {
    expected: &'a [u8],
    position: usize,
    equal: bool,
}

impl std::io::Write for SameAs<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.position.saturating_add(buf.len());
        self.equal = self.equal && self.expected.get(self.position..end) == Some(buf);
        self.position = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parses stored bytes and checks they are the canonical encoding (re-encoding gives exactly
/// these bytes), without copying any text.
fn parse(bytes: &[u8]) -> Result<EntryV1<'_>, EntryError> {
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(EntryError::TooLarge(bytes.len()));
    }
    let entry: EntryV1<'_> =
        serde_json::from_slice(bytes).map_err(|e| EntryError::Malformed(e.to_string()))?;
    if entry.v != 1 {
        return Err(EntryError::Malformed(format!(
            "version {} is unknown",
            entry.v
        )));
    }
    let mut same = SameAs {
        expected: bytes,
        position: 0,
        equal: true,
    };
    serde_json::to_writer(&mut same, &entry).map_err(|e| EntryError::Malformed(e.to_string()))?;
    if !(same.equal && same.position == bytes.len()) {
        return Err(EntryError::NotCanonical);
    }
    Ok(entry)
}

/// Checks stored bytes are a canonical v1 entry and returns the leaf index it claims. This is
/// what verification needs, at the least cost.
pub fn check(bytes: &[u8]) -> Result<u64, EntryError> {
    parse(bytes).map(|entry| entry.idx)
}

/// Decodes stored entry bytes and checks they are canonical.
pub fn decode(bytes: &[u8]) -> Result<DecodedEntry, EntryError> {
    let entry = parse(bytes)?;
    Ok(DecodedEntry {
        idx: entry.idx,
        hmac_key: entry.hmac_key,
        record: AuditRecord {
            time: entry.time.into_owned(),
            action: entry.action.into_owned(),
            decision: entry.decision,
            reason: owned(entry.reason),
            peer: owned(entry.peer),
            actor: entry.actor.map(|a| ActorRecord {
                id_hmac: a.id_hmac.into_owned(),
                role: owned(a.role),
            }),
            message_id_hmac: owned(entry.message_id_hmac),
            message_type: owned(entry.message_type),
            purpose: owned(entry.purpose),
            consent_hmac: owned(entry.consent_hmac),
            subject_hmac: owned(entry.subject_hmac),
            envelope_sha256: owned(entry.envelope_sha256),
            route: owned(entry.route),
        },
    })
}

/// The keyed HMAC that pseudonymises identifiers in the log. The key is separate from every
/// other key and versioned, so it can be rotated; an auditor who knows a value can search by
/// asking the node to hash it.
pub struct HmacKey {
    version: u32,
    key: ring::hmac::Key,
}

impl HmacKey {
    /// At least 32 bytes of key material.
    pub fn new(version: u32, material: &[u8]) -> Option<Self> {
        (material.len() >= 32).then(|| Self {
            version,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, material),
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// `hex(HMAC-SHA256(key, kind || 0x00 || value))`; the kind keeps a consent id and a subject
    /// reference with the same text apart.
    pub fn pseudonymise(&self, kind: &str, value: &str) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(kind.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        lower_hex(ctx.sign().as_ref())
    }
}

/// Lowercase hex of `bytes`, written through `hex`'s table into one buffer (`hex::encode` goes
/// character by character, and every admitted message has several hashes to write).
pub fn lower_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    match hex::encode_to_slice(bytes, &mut out)
        .ok()
        .and_then(|()| String::from_utf8(out).ok())
    {
        Some(text) => text,
        // Unreachable: the buffer has exactly the length needed and hex digits are ASCII.
        None => hex::encode(bytes),
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HmacKey(v{}, [redacted])", self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            time: "2026-11-22T12:00:00.000Z".into(),
            action: "federation.ping".into(),
            decision: Some(Decision::Permit),
            peer: Some("red-barnet".into()),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn encoding_is_canonical_and_round_trips() {
        let bytes = encode(&record(), 7, 1).unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"v":1,"idx":7,"time":"2026-11-22T12:00:00.000Z","action":"federation.ping","decision":"permit","peer":"red-barnet"}"#
        );
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.idx, 7);
        assert_eq!(decoded.record, record());
        // The same content with other whitespace or field order is not canonical.
        let spaced = String::from_utf8(bytes).unwrap().replace(',', ", ");
        assert_eq!(decode(spaced.as_bytes()), Err(EntryError::NotCanonical));
        assert!(decode(br#"{"v":1,"idx":7,"time":"t","action":"a","extra":1}"#).is_err());
    }

    #[test]
    fn oversize_entries_are_refused() {
        let mut big = record();
        big.reason = Some("x".repeat(MAX_ENTRY_BYTES));
        assert!(!surely_fits(&big));
        assert!(matches!(encode(&big, 0, 1), Err(EntryError::TooLarge(_))));
        // Worst-case escaping: every control character becomes a six-byte escape.
        let mut escaped = record();
        escaped.reason = Some("\u{1}".repeat(10_837));
        assert!(!surely_fits(&escaped));
        assert!(encode(&escaped, u64::MAX, 1).unwrap().len() <= MAX_ENTRY_BYTES);
        assert!(surely_fits(&record()));
    }

    #[test]
    fn hmac_separates_kinds_and_keys() {
        let key = HmacKey::new(1, &[7; 32]).unwrap();
        let other = HmacKey::new(1, &[8; 32]).unwrap();
        assert_eq!(
            key.pseudonymise("consent", "c-1"),
            key.pseudonymise("consent", "c-1")
        );
        assert_ne!(
            key.pseudonymise("consent", "c-1"),
            key.pseudonymise("subject", "c-1")
        );
        assert_ne!(
            key.pseudonymise("consent", "c-1"),
            other.pseudonymise("consent", "c-1")
        );
        assert!(HmacKey::new(1, &[0; 16]).is_none());
        assert!(!format!("{key:?}").contains('7'));
    }
}
