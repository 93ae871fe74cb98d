//! Consent records as the domain knows them: the event log and its derived status, the
//! conversion of a consent form's dates to instants, and the one-time binding codes.
//!
//! No I/O and no clock (`now` is an argument). The binding code uses the operating system's
//! random source and a deliberately slow hash (PBKDF2), and nothing else. Storage keeps the
//! records (`storage::consents`); `api` and `federation` turn wire input into these types once.

use crate::domain::{ConsentId, OrgId, PurposeRef, SubjectRef};
use crate::policy::{ConsentFacts, ConsentStatus};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use time::{Date, Month, OffsetDateTime, Time, UtcOffset, Weekday};

/// One event of a consent's log (ISO/IEC TS 27560; W3C DPV status terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentEvent {
    Given,
    Renewed,
    WithdrawnBySubject,
    Revoked,
    Expired,
    Invalidated,
}

impl ConsentEvent {
    pub const ALL: [ConsentEvent; 6] = [
        ConsentEvent::Given,
        ConsentEvent::Renewed,
        ConsentEvent::WithdrawnBySubject,
        ConsentEvent::Revoked,
        ConsentEvent::Expired,
        ConsentEvent::Invalidated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConsentEvent::Given => "given",
            ConsentEvent::Renewed => "renewed",
            ConsentEvent::WithdrawnBySubject => "withdrawn-by-subject",
            ConsentEvent::Revoked => "revoked",
            ConsentEvent::Expired => "expired",
            ConsentEvent::Invalidated => "invalidated",
        }
    }

    /// The status a consent has after this event.
    pub fn status(self) -> ConsentStatus {
        match self {
            ConsentEvent::Given => ConsentStatus::Given,
            ConsentEvent::Renewed => ConsentStatus::Renewed,
            ConsentEvent::WithdrawnBySubject => ConsentStatus::WithdrawnBySubject,
            ConsentEvent::Revoked => ConsentStatus::Revoked,
            ConsentEvent::Expired => ConsentStatus::Expired,
            ConsentEvent::Invalidated => ConsentStatus::Invalidated,
        }
    }

    /// Whether this event ends the consent (a withdrawal in the wide sense).
    pub fn ends(self) -> bool {
        !self.status().permits_processing()
    }
}

impl FromStr for ConsentEvent {
    type Err = crate::domain::ParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == value)
            .ok_or_else(|| {
                crate::domain::ParseError::new(format!("`{value}` is not a consent event"))
            })
    }
}

impl fmt::Display for ConsentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status derived from an event log: the last event decides. An empty log has no status.
pub fn derived_status(events: &[ConsentEvent]) -> Option<ConsentStatus> {
    events.last().map(|e| e.status())
}

/// A consent as this node holds it, in domain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    pub id: ConsentId,
    pub subject: SubjectRef,
    pub recording_org: OrgId,
    pub counterpart: OrgId,
    pub purposes: BTreeSet<PurposeRef>,
    pub valid_from: OffsetDateTime,
    pub valid_until: OffsetDateTime,
    /// How long the recipient may keep what it received under the consent.
    pub retention_at_recipient_days: u32,
    pub events: Vec<ConsentEvent>,
}

impl ConsentRecord {
    /// What the policy needs; `None` if the log is empty (a record is never stored so).
    pub fn facts(&self) -> Option<ConsentFacts> {
        Some(ConsentFacts {
            id: self.id.clone(),
            subject: self.subject,
            recording_org: self.recording_org.clone(),
            counterpart: self.counterpart.clone(),
            purposes: self.purposes.clone(),
            status: derived_status(&self.events)?,
            valid_from: self.valid_from,
            valid_until: self.valid_until,
        })
    }

    /// The other party, seen from `me`.
    pub fn other_party(&self, me: &OrgId) -> &OrgId {
        if &self.recording_org == me {
            &self.counterpart
        } else {
            &self.recording_org
        }
    }
}

// ----- Dates on the consent form -----

/// The last Sunday of a month (the EU switches summer time on the last Sundays of March and
/// October).
fn last_sunday(year: i32, month: Month) -> Option<Date> {
    let first_of_next = match month {
        Month::December => Date::from_calendar_date(year + 1, Month::January, 1),
        _ => Date::from_calendar_date(year, month.next(), 1),
    }
    .ok()?;
    let mut day = first_of_next.previous_day()?;
    while day.weekday() != Weekday::Sunday {
        day = day.previous_day()?;
    }
    Some(day)
}

/// Danish local time's offset at 00:00 on `date`: +02:00 (CEST) from the day after the last
/// Sunday of March up to and including the last Sunday of October, otherwise +01:00 (CET).
/// Midnight is never inside a switch (those happen at 02:00 and 03:00 local).
fn copenhagen_offset_at_midnight(date: Date) -> Option<UtcOffset> {
    let summer_starts = last_sunday(date.year(), Month::March)?;
    let summer_ends = last_sunday(date.year(), Month::October)?;
    let hours = if date > summer_starts && date <= summer_ends {
        2
    } else {
        1
    };
    UtcOffset::from_hms(hours, 0, 0).ok()
}

/// 00:00 Danish local time on `date`, as an instant.
pub fn start_of_day_in_denmark(date: Date) -> Option<OffsetDateTime> {
    let offset = copenhagen_offset_at_midnight(date)?;
    Some(date.with_time(Time::MIDNIGHT).assume_offset(offset))
}

/// Danish local time's offset at an instant: +02:00 (CEST) from 01:00 UTC on the last Sunday of
/// March to 01:00 UTC on the last Sunday of October, otherwise +01:00 (CET).
pub fn danish_offset(at: OffsetDateTime) -> UtcOffset {
    let utc = at.to_offset(UtcOffset::UTC);
    let switch = |month| {
        last_sunday(utc.year(), month)
            .map(|day| day.with_time(Time::MIDNIGHT).assume_utc() + time::Duration::hours(1))
    };
    let summer = matches!(
        (switch(Month::March), switch(Month::October)),
        (Some(start), Some(end)) if utc >= start && utc < end
    );
    UtcOffset::from_hms(if summer { 2 } else { 1 }, 0, 0).unwrap_or(UtcOffset::UTC)
}

/// An instant in Danish local time.
pub fn in_denmark(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(danish_offset(at))
}

/// A consent form's validity (first day, last day, both inclusive, Danish dates) as instants:
/// from 00:00 on the first day (inclusive) to 00:00 on the day after the last (exclusive), so
/// the whole last day counts. `None` if a date is out of range.
pub fn validity_instants(
    first_day: Date,
    last_day: Date,
) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let from = start_of_day_in_denmark(first_day)?;
    let until = start_of_day_in_denmark(last_day.next_day()?)?;
    Some((from, until))
}

/// Parses a form date `YYYY-MM-DD`.
pub fn parse_date(value: &str) -> Option<Date> {
    Date::parse(
        value,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()
}

// ----- Binding codes -----

/// The alphabet of binding codes: Crockford's base 32 (no I, L, O or U), so a code read aloud
/// or from paper survives the usual confusions.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Twelve symbols: 60 bits, printed as three groups of four.
const CODE_SYMBOLS: usize = 12;
/// PBKDF2 rounds of the stored hash: slow enough that a copy of the database does not reveal
/// codes, fast enough for a consent-admin's one check.
const CODE_HASH_ROUNDS: u32 = 50_000;
const CODE_HASH_SCHEME: &str = "pbkdf2-sha256";

/// A freshly minted one-time binding code, shown once (for the family's copy of the consent).
#[derive(Clone, PartialEq, Eq)]
pub struct BindingCode(String);

impl fmt::Debug for BindingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BindingCode([redacted])")
    }
}

/// The operating system's random source failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the system random source failed")]
pub struct RandomUnavailable;

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomUnavailable> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomUnavailable)?;
    Ok(bytes)
}

/// A new random pairwise subject reference (128 bits, derived from nothing).
pub fn mint_subject_ref() -> Result<SubjectRef, RandomUnavailable> {
    Ok(SubjectRef::from_bytes(random_bytes::<16>()?))
}

impl BindingCode {
    pub fn generate() -> Result<Self, RandomUnavailable> {
        let bytes = random_bytes::<CODE_SYMBOLS>()?;
        let mut text = String::with_capacity(CODE_SYMBOLS + 2);
        for (i, byte) in bytes.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                text.push('-');
            }
            // 256 is a multiple of 32, so taking the low five bits is unbiased.
            let symbol = CODE_ALPHABET
                .get(usize::from(byte & 0x1f))
                .copied()
                .unwrap_or(b'0');
            text.push(char::from(symbol));
        }
        Ok(Self(text))
    }

    /// The code as printed, e.g. `7K2M-XQ4D-91TB`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The stored form: `pbkdf2-sha256$ROUNDS$HEX`, salted with the consent id.
    pub fn hash(&self, consent: &ConsentId) -> String {
        hash_normalised(&normalise(&self.0), consent, CODE_HASH_ROUNDS)
    }
}

/// What a person typed, reduced to the code's symbols: case, spaces and dashes do not matter,
/// and O, I and L read as 0, 1 and 1.
fn normalise(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\u{2013}' | '\u{2212}'))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect()
}

fn hash_normalised(code: &str, consent: &ConsentId, rounds: u32) -> String {
    let mut out = [0u8; 32];
    let salt = format!("brobygger-binding-code-v1|{consent}");
    let rounds = NonZeroU32::new(rounds).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt.as_bytes(),
        code.as_bytes(),
        &mut out,
    );
    format!("{CODE_HASH_SCHEME}${rounds}${}", hex::encode(out))
}

/// Proof that a binding code was verified: only [`verify_binding_code`] makes one, and binding a
/// consent to a local subject needs one.
#[derive(Debug)]
pub struct CodeVerified {
    _private: (),
}

/// Verifies a typed binding code against the stored hash.
pub fn verify_binding_code(typed: &str, consent: &ConsentId, stored: &str) -> Option<CodeVerified> {
    binding_code_matches(typed, consent, stored).then_some(CodeVerified { _private: () })
}

/// Whether `typed` is the code whose hash is `stored`, compared in constant time. A stored hash
/// in an unknown form never matches.
pub fn binding_code_matches(typed: &str, consent: &ConsentId, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(scheme), Some(rounds), Some(expected), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(rounds) = rounds.parse::<u32>() else {
        return false;
    };
    let Ok(expected) = hex::decode(expected) else {
        return false;
    };
    let code = normalise(typed);
    if scheme != CODE_HASH_SCHEME || code.len() != CODE_SYMBOLS || rounds == 0 {
        return false;
    }
    let salt = format!("brobygger-binding-code-v1|{consent}");
    let Some(rounds) = NonZeroU32::new(rounds) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt.as_bytes(),
        code.as_bytes(),
        &expected,
    )
    .is_ok()
}

/// Whether a stored binding hash is well formed (as received in a `consent.granted`).
pub fn is_binding_hash(value: &str) -> bool {
    let mut parts = value.split('$');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(CODE_HASH_SCHEME), Some(rounds), Some(digest), None)
            if rounds.parse::<u32>().is_ok_and(|r| (10_000..=1_000_000).contains(&r))
                && digest.len() == 64
                && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    )
}

/// After this many wrong codes in a row, binding is locked for [`BINDING_LOCK`].
pub const BINDING_ATTEMPTS_BEFORE_LOCK: u32 = 5;
/// How long binding stays locked after too many wrong codes.
pub const BINDING_LOCK: time::Duration = time::Duration::minutes(15);

/// What a wrong code leads to: the new count of consecutive failures and, if it reached the
/// limit, the instant until which binding is locked (the count then starts again).
pub fn after_wrong_code(
    failures_in_a_row: u32,
    now: OffsetDateTime,
) -> (u32, Option<OffsetDateTime>) {
    let failures = failures_in_a_row.saturating_add(1);
    if failures >= BINDING_ATTEMPTS_BEFORE_LOCK {
        (0, Some(now + BINDING_LOCK))
    } else {
        (failures, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn the_whole_last_day_counts_in_danish_time() {
        // Winter: CET is UTC+1.
        let (from, until) =
            validity_instants(date!(2026 - 01 - 10), date!(2026 - 02 - 14)).unwrap();
        assert_eq!(from, datetime!(2026-01-09 23:00 UTC));
        assert_eq!(until, datetime!(2026-02-14 23:00 UTC));
        // Summer: CEST is UTC+2.
        let (from, until) =
            validity_instants(date!(2026 - 06 - 01), date!(2026 - 08 - 31)).unwrap();
        assert_eq!(from, datetime!(2026-05-31 22:00 UTC));
        assert_eq!(until, datetime!(2026-08-31 22:00 UTC));
    }

    #[test]
    fn midnight_around_the_summer_time_switches() {
        // 2026: summer time from Sunday 29 March to Sunday 25 October.
        let offset = |d| {
            start_of_day_in_denmark(d)
                .map(|t| t.offset().whole_hours())
                .unwrap()
        };
        assert_eq!(offset(date!(2026 - 03 - 29)), 1);
        assert_eq!(offset(date!(2026 - 03 - 30)), 2);
        assert_eq!(offset(date!(2026 - 10 - 25)), 2);
        assert_eq!(offset(date!(2026 - 10 - 26)), 1);
        assert_eq!(offset(date!(2026 - 12 - 31)), 1);
    }

    #[test]
    fn instants_convert_to_danish_time_around_the_switches() {
        // 2026: CEST from 29 March 01:00 UTC to 25 October 01:00 UTC.
        let hour = |t| in_denmark(t).hour();
        assert_eq!(hour(datetime!(2026-03-29 00:59 UTC)), 1);
        assert_eq!(hour(datetime!(2026-03-29 01:00 UTC)), 3);
        assert_eq!(hour(datetime!(2026-10-25 00:59 UTC)), 2);
        assert_eq!(hour(datetime!(2026-10-25 01:00 UTC)), 2);
        assert_eq!(hour(datetime!(2026-11-22 10:00 UTC)), 11);
    }

    #[test]
    fn binding_codes_verify_once_typed_loosely_and_never_otherwise() {
        let consent: ConsentId = "0192f0a4-7b1c-7def-8a00-0000000c0001".parse().unwrap();
        let other: ConsentId = "0192f0a4-7b1c-7def-8a00-0000000c0002".parse().unwrap();
        let code = BindingCode::generate().unwrap();
        assert_eq!(code.as_str().len(), 14);
        let stored = code.hash(&consent);
        assert!(is_binding_hash(&stored));
        assert!(!stored.contains(code.as_str()));
        assert!(binding_code_matches(code.as_str(), &consent, &stored));
        let loose = code.as_str().to_lowercase().replace('-', " ");
        assert!(binding_code_matches(&loose, &consent, &stored));
        assert!(!binding_code_matches(code.as_str(), &other, &stored));
        assert!(!binding_code_matches("0000-0000-0000", &consent, &stored));
        assert!(!binding_code_matches("", &consent, &stored));
        assert!(!binding_code_matches(code.as_str(), &consent, "plain"));
        assert_ne!(BindingCode::generate().unwrap(), code);
    }

    #[test]
    fn the_fifth_wrong_code_locks_binding_for_a_while() {
        let now = datetime!(2026-11-22 10:00 UTC);
        let mut failures = 0;
        for _ in 1..BINDING_ATTEMPTS_BEFORE_LOCK {
            let (next, lock) = after_wrong_code(failures, now);
            assert_eq!(lock, None);
            failures = next;
        }
        assert_eq!(
            after_wrong_code(failures, now),
            (0, Some(now + BINDING_LOCK))
        );
    }

    #[test]
    fn the_last_event_decides_the_status() {
        assert_eq!(derived_status(&[]), None);
        assert_eq!(
            derived_status(&[ConsentEvent::Given, ConsentEvent::Revoked]),
            Some(ConsentStatus::Revoked)
        );
        for event in ConsentEvent::ALL {
            assert_eq!(event.as_str().parse::<ConsentEvent>().unwrap(), event);
        }
    }
}
