//! Consents and their event logs. Every change happens inside a [`WriteTx`], in the same
//! transaction as the audit entry that records it.

use super::audit::to_i64;
use super::db_time as format_time;
use super::{Database, StorageError, WriteTx};
use crate::consent::{ConsentEvent, ConsentRecord};
use crate::domain::{ConsentId, OrgId, PurposeId, PurposeRef};
use std::collections::{BTreeSet, HashMap};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A consent to store, with its first event.
#[derive(Debug, Clone)]
pub struct NewConsent {
    pub record: ConsentRecord,
    /// The consent.granted body (JSON) as exchanged.
    pub terms: String,
    /// This node's key for the child: known when this node recorded the consent.
    pub local_subject_key: Option<String>,
    pub binding_code_hash: String,
    pub created_at: OffsetDateTime,
    /// The unit of the consent-admin who recorded it here (from their token), if any.
    pub recorded_unit: Option<String>,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub event: ConsentEvent,
    pub at: OffsetDateTime,
    pub recorded_by: OrgId,
}

/// A consent as stored.
#[derive(Debug, Clone)]
pub struct StoredConsent {
    pub record: ConsentRecord,
    pub terms: String,
    pub local_subject_key: Option<String>,
    pub bound_at: Option<OffsetDateTime>,
    pub binding_code_hash: String,
    /// Wrong codes in a row since the last lock.
    pub binding_failures: u32,
    /// Wrong codes ever entered.
    pub binding_failures_total: u32,
    pub binding_locked_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub events: Vec<StoredEvent>,
    /// The unit that recorded the consent here, and the unit that bound it.
    pub recorded_unit: Option<String>,
    pub bound_unit: Option<String>,
}

impl StoredConsent {
    /// Whether the consent was recorded or bound by `unit`.
    pub fn belongs_to_unit(&self, unit: &str) -> bool {
        self.recorded_unit.as_deref() == Some(unit) || self.bound_unit.as_deref() == Some(unit)
    }
}

fn invariant(what: &str) -> StorageError {
    StorageError::Invariant(format!("a stored consent has an invalid {what}"))
}

fn parse_time(value: &str, what: &str) -> Result<OffsetDateTime, StorageError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|_| invariant(what))
}

fn encode_purposes(purposes: &BTreeSet<PurposeRef>) -> String {
    purposes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn decode_purposes(value: &str) -> Result<BTreeSet<PurposeRef>, StorageError> {
    value
        .split_whitespace()
        .map(|p| {
            let (id, version) = p.split_once('@').ok_or_else(|| invariant("purpose"))?;
            let id: PurposeId = id.parse().map_err(|_| invariant("purpose id"))?;
            let version: u32 = version.parse().map_err(|_| invariant("purpose version"))?;
            PurposeRef::new(id, version).map_err(|_| invariant("purpose"))
        })
        .collect()
}

fn to_u32(value: i64, what: &str) -> Result<u32, StorageError> {
    u32::try_from(value).map_err(|_| invariant(what))
}

type ConsentRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    String,
    i64,
    i64,
    Option<String>,
    String,
);

// Each query ends in `WHERE consent_id`: the caller adds `IN (...)` (SQLite) or `= ANY($1)`
// (PostgreSQL) for the ids it reads.
const CONSENTS_QUERY: &str = "SELECT consent_id, subject_ref, recording_org, counterpart, purposes, \
     terms, valid_from, valid_until, retention_days, local_subject_key, bound_at, binding_code_hash, \
     binding_failures, binding_failures_total, binding_locked_until, created_at \
     FROM consents WHERE consent_id";
// Separate, because a row tuple holds at most 16 columns.
const UNITS_QUERY: &str =
    "SELECT consent_id, recorded_unit, bound_unit FROM consents WHERE consent_id";
const EVENTS_QUERY: &str =
    "SELECT consent_id, event, at, recorded_by FROM consent_events WHERE consent_id";
const EVENTS_ORDER: &str = " ORDER BY consent_id, seq";

type UnitsRow = (String, Option<String>, Option<String>);
type EventRow = (String, String, String, String);

/// Ids per read statement: far below SQLite's limit of 32,766 bound parameters.
const IDS_PER_STATEMENT: usize = 1_000;

/// `head IN (?, ?, ...) tail` for SQLite, with the keys bound.
fn sqlite_in(head: &str, keys: &[String], tail: &str) -> sqlx::QueryBuilder<sqlx::Sqlite> {
    let mut builder = sqlx::QueryBuilder::new(head);
    builder.push(" IN (");
    let mut list = builder.separated(", ");
    for key in keys {
        list.push_bind(key.clone());
    }
    builder.push(")");
    builder.push(tail);
    builder
}

/// The consent with this id and its events, if this node holds it.
pub async fn consent(db: &Database, id: &ConsentId) -> Result<Option<StoredConsent>, StorageError> {
    Ok(consents(db, &[id]).await?.remove(id))
}

/// The consents with these ids that this node holds, with their events, by id. Each chunk of
/// ids is read in one read transaction, so a consent and its events are read together.
pub async fn consents(
    db: &Database,
    ids: &[&ConsentId],
) -> Result<HashMap<ConsentId, StoredConsent>, StorageError> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let keys: Vec<String> = chunk.iter().map(|id| id.as_str().to_owned()).collect();
        let (rows, units, events): (Vec<ConsentRow>, Vec<UnitsRow>, Vec<EventRow>) = match db {
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let rows = sqlite_in(CONSENTS_QUERY, &keys, "")
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await?;
                let units = sqlite_in(UNITS_QUERY, &keys, "")
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await?;
                let events = sqlite_in(EVENTS_QUERY, &keys, EVENTS_ORDER)
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                (rows, units, events)
            }
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let rows = sqlx::query_as(concat!(
                    "SELECT consent_id, subject_ref, recording_org, counterpart, purposes, \
                     terms, valid_from, valid_until, retention_days, local_subject_key, bound_at, \
                     binding_code_hash, binding_failures, binding_failures_total, \
                     binding_locked_until, created_at FROM consents",
                    " WHERE consent_id = ANY($1)"
                ))
                .bind(&keys)
                .fetch_all(&mut *tx)
                .await?;
                let units = sqlx::query_as(
                    "SELECT consent_id, recorded_unit, bound_unit FROM consents \
                     WHERE consent_id = ANY($1)",
                )
                .bind(&keys)
                .fetch_all(&mut *tx)
                .await?;
                let events = sqlx::query_as(
                    "SELECT consent_id, event, at, recorded_by FROM consent_events \
                     WHERE consent_id = ANY($1) ORDER BY consent_id, seq",
                )
                .bind(&keys)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                (rows, units, events)
            }
        };
        let mut units: HashMap<String, (Option<String>, Option<String>)> = units
            .into_iter()
            .map(|(id, recorded, bound)| (id, (recorded, bound)))
            .collect();
        let mut events_of: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
        for (id, event, at, by) in events {
            events_of.entry(id).or_default().push((event, at, by));
        }
        for row in rows {
            let Some((recorded_unit, bound_unit)) = units.remove(&row.0) else {
                continue;
            };
            let events = events_of.remove(&row.0).unwrap_or_default();
            let consent = assemble(row, events, recorded_unit, bound_unit)?;
            found.insert(consent.record.id.clone(), consent);
        }
    }
    Ok(found)
}

/// A consent from its stored row, events and units.
fn assemble(
    row: ConsentRow,
    events: Vec<(String, String, String)>,
    recorded_unit: Option<String>,
    bound_unit: Option<String>,
) -> Result<StoredConsent, StorageError> {
    let (
        consent_id,
        subject_ref,
        recording_org,
        counterpart,
        purposes,
        terms,
        valid_from,
        valid_until,
        retention_days,
        local_subject_key,
        bound_at,
        binding_code_hash,
        binding_failures,
        binding_failures_total,
        binding_locked_until,
        created_at,
    ) = row;
    let events = events
        .into_iter()
        .map(|(event, at, by)| {
            Ok(StoredEvent {
                event: event.parse().map_err(|_| invariant("event"))?,
                at: parse_time(&at, "event time")?,
                recorded_by: by.parse().map_err(|_| invariant("event org"))?,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let record = ConsentRecord {
        id: consent_id.parse().map_err(|_| invariant("id"))?,
        subject: subject_ref.parse().map_err(|_| invariant("subject"))?,
        recording_org: recording_org
            .parse()
            .map_err(|_| invariant("recording org"))?,
        counterpart: counterpart.parse().map_err(|_| invariant("counterpart"))?,
        purposes: decode_purposes(&purposes)?,
        valid_from: parse_time(&valid_from, "valid_from")?,
        valid_until: parse_time(&valid_until, "valid_until")?,
        retention_at_recipient_days: to_u32(retention_days, "retention")?,
        events: events.iter().map(|e| e.event).collect(),
    };
    Ok(StoredConsent {
        record,
        terms,
        local_subject_key,
        bound_at: bound_at
            .as_deref()
            .map(|t| parse_time(t, "bound_at"))
            .transpose()?,
        binding_code_hash,
        binding_failures: to_u32(binding_failures, "failure count")?,
        binding_failures_total: to_u32(binding_failures_total, "failure count")?,
        binding_locked_until: binding_locked_until
            .as_deref()
            .map(|t| parse_time(t, "lock"))
            .transpose()?,
        created_at: parse_time(&created_at, "created_at")?,
        events,
        recorded_unit,
        bound_unit,
    })
}

/// Whether a withdrawal arrived for this consent before this node held it.
pub async fn consent_tombstoned(db: &Database, id: &ConsentId) -> Result<bool, StorageError> {
    let found: Option<String> = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar("SELECT consent_id FROM consent_tombstones WHERE consent_id = $1")
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?
    });
    Ok(found.is_some())
}

impl WriteTx<'_> {
    /// Remembers a withdrawal of a consent this node does not hold.
    pub async fn insert_consent_tombstone(
        &mut self,
        id: &ConsentId,
        sender: &OrgId,
        at: OffsetDateTime,
    ) -> Result<u64, StorageError> {
        let sql = "INSERT INTO consent_tombstones (consent_id, sender, at) VALUES ($1, $2, $3) \
                   ON CONFLICT (consent_id) DO NOTHING";
        Ok(match self {
            WriteTx::Sqlite(tx) => {
                tx.prepare(sql)?
                    .execute((id.as_str(), sender.as_str(), format_time(at)))?
                    as u64
            }
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(id.as_str())
                .bind(sender.as_str())
                .bind(format_time(at))
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Stores a new consent. Returns 0 if a consent with that id exists already (nothing is
    /// changed then), 1 otherwise.
    pub async fn insert_consent(&mut self, new: &NewConsent) -> Result<u64, StorageError> {
        let r = &new.record;
        let sql = "INSERT INTO consents (consent_id, subject_ref, recording_org, counterpart, \
                   purposes, terms, valid_from, valid_until, retention_days, local_subject_key, \
                   bound_at, binding_code_hash, created_at, recorded_unit) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                   ON CONFLICT (consent_id) DO NOTHING";
        let bound_at = new
            .local_subject_key
            .as_ref()
            .map(|_| format_time(new.created_at));
        let retention = i64::from(r.retention_at_recipient_days);
        Ok(match self {
            WriteTx::Sqlite(tx) => tx.prepare(sql)?.execute(rusqlite::params![
                r.id.as_str(),
                r.subject.to_string(),
                r.recording_org.as_str(),
                r.counterpart.as_str(),
                encode_purposes(&r.purposes),
                &new.terms,
                format_time(r.valid_from),
                format_time(r.valid_until),
                retention,
                new.local_subject_key.as_deref(),
                bound_at,
                &new.binding_code_hash,
                format_time(new.created_at),
                new.recorded_unit.as_deref(),
            ])? as u64,
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(r.id.as_str())
                .bind(r.subject.to_string())
                .bind(r.recording_org.as_str())
                .bind(r.counterpart.as_str())
                .bind(encode_purposes(&r.purposes))
                .bind(&new.terms)
                .bind(format_time(r.valid_from))
                .bind(format_time(r.valid_until))
                .bind(retention)
                .bind(new.local_subject_key.as_deref())
                .bind(bound_at)
                .bind(&new.binding_code_hash)
                .bind(format_time(new.created_at))
                .bind(new.recorded_unit.as_deref())
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Appends an event to a consent's log.
    pub async fn append_consent_event(
        &mut self,
        id: &ConsentId,
        event: ConsentEvent,
        at: OffsetDateTime,
        recorded_by: &OrgId,
        audit_idx: u64,
    ) -> Result<u64, StorageError> {
        let sql = "INSERT INTO consent_events (consent_id, seq, event, at, recorded_by, audit_idx) \
                   SELECT $1, COALESCE(MAX(seq) + 1, 0), $2, $3, $4, $5 \
                   FROM consent_events WHERE consent_id = $1";
        let audit_idx = to_i64(audit_idx)?;
        Ok(match self {
            WriteTx::Sqlite(tx) => tx.prepare(sql)?.execute((
                id.as_str(),
                event.as_str(),
                format_time(at),
                recorded_by.as_str(),
                audit_idx,
            ))? as u64,
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(id.as_str())
                .bind(event.as_str())
                .bind(format_time(at))
                .bind(recorded_by.as_str())
                .bind(audit_idx)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Records a wrong binding code: the count in a row, one more in total, and the lock.
    pub async fn record_binding_failure(
        &mut self,
        id: &ConsentId,
        failures_in_a_row: u32,
        locked_until: Option<OffsetDateTime>,
    ) -> Result<u64, StorageError> {
        let sql = "UPDATE consents SET binding_failures = $2, \
                   binding_failures_total = binding_failures_total + 1, \
                   binding_locked_until = $3 WHERE consent_id = $1";
        let failures = i64::from(failures_in_a_row);
        let locked_until = locked_until.map(format_time);
        Ok(match self {
            WriteTx::Sqlite(tx) => {
                tx.prepare(sql)?
                    .execute((id.as_str(), failures, locked_until))? as u64
            }
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(id.as_str())
                .bind(failures)
                .bind(locked_until)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Binds an unbound consent to this node's key for the child. The statement itself
    /// refuses a second binding: it returns 0 if the consent was bound already.
    pub async fn bind_consent(
        &mut self,
        id: &ConsentId,
        local_subject_key: &str,
        at: OffsetDateTime,
        unit: Option<&str>,
    ) -> Result<u64, StorageError> {
        let sql = "UPDATE consents SET local_subject_key = $2, bound_at = $3, \
                   binding_failures = 0, binding_locked_until = NULL, bound_unit = $4 \
                   WHERE consent_id = $1 AND local_subject_key IS NULL";
        Ok(match self {
            WriteTx::Sqlite(tx) => {
                tx.prepare(sql)?
                    .execute((id.as_str(), local_subject_key, format_time(at), unit))?
                    as u64
            }
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(id.as_str())
                .bind(local_subject_key)
                .bind(format_time(at))
                .bind(unit)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }
}
