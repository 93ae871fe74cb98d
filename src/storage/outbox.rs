//! The outbox: messages accepted for delivery, their claims, attempts and outcomes.
//!
//! Rows are added only inside a [`WriteTx`], with the audit entry that accepted them, and
//! cancelled there when their consent is withdrawn. The delivery worker claims due rows with a
//! lease (on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so replicas never claim the same row) and
//! records each outcome.

use super::audit::{to_i64, to_u64};
use super::{Database, StorageError, WriteTx, db_time};
use crate::domain::{ConsentId, MessageId, MessageType, OrgId};
use time::OffsetDateTime;

/// Rows per PostgreSQL `UNNEST` statement: a whole group commit of ordinary size in one
/// statement, with bounded parameter arrays. (SQLite steps one prepared statement per row.)
const ROWS_PER_STATEMENT: usize = 1_000;

/// One array per column, for PostgreSQL's `UNNEST`.
type OutboxColumns = (
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<i32>,
    Vec<Vec<u8>>,
    Vec<String>,
);

/// A message accepted for delivery.
#[derive(Debug, Clone)]
pub struct NewOutboxMessage {
    pub message_id: MessageId,
    pub recipient: OrgId,
    pub message_type: MessageType,
    pub consent: ConsentId,
    /// The exact bytes to send.
    pub envelope: Vec<u8>,
    pub accepted_at: OffsetDateTime,
}

impl NewOutboxMessage {
    /// Withdrawal notices go ahead of everything else queued.
    fn priority(&self) -> i32 {
        match self.message_type {
            MessageType::ConsentWithdrawn => 0,
            _ => 1,
        }
    }
}

/// A message as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub message_id: String,
    pub recipient: String,
    pub message_type: String,
    pub consent_id: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub attempts: u32,
    pub receipt: Option<String>,
    pub problem: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A claimed row, ready to send.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub message_id: String,
    pub recipient: String,
    pub envelope: Vec<u8>,
    pub attempts: u32,
    /// A consent notice (granted or withdrawn), which later data may depend on.
    pub is_notice: bool,
}

type OutboxRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
    String,
    String,
);

fn outbox_row(r: OutboxRow) -> Result<OutboxMessage, StorageError> {
    Ok(OutboxMessage {
        message_id: r.0,
        recipient: r.1,
        message_type: r.2,
        consent_id: r.3,
        status: r.4,
        status_reason: r.5,
        attempts: u32::try_from(r.6)
            .map_err(|_| StorageError::Invariant("an attempt count is out of range".into()))?,
        receipt: r.7,
        problem: r.8,
        created_at: r.9,
        updated_at: r.10,
    })
}

const OUTBOX_COLUMNS: &str = "message_id, recipient, message_type, consent_id, status, \
     status_reason, attempts, receipt, problem, created_at, updated_at";

/// One outbox message by id.
pub async fn outbox_message(
    db: &Database,
    id: &MessageId,
) -> Result<Option<OutboxMessage>, StorageError> {
    let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE message_id = $1");
    let row: Option<OutboxRow> = on_each_engine!(db, Database, |pool| {
        // Built from constants only.
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?
    });
    row.map(outbox_row).transpose()
}

/// The consent notices this node sent under a consent, oldest first (their receipts carry the
/// other side's acknowledgements).
pub async fn consent_notices(
    db: &Database,
    consent: &ConsentId,
) -> Result<Vec<OutboxMessage>, StorageError> {
    let sql = format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE consent_id = $1 \
         AND message_type IN ('consent.granted', 'consent.withdrawn') ORDER BY audit_idx"
    );
    let rows: Vec<OutboxRow> = on_each_engine!(db, Database, |pool| {
        // Built from constants only.
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(consent.as_str())
            .fetch_all(pool)
            .await?
    });
    rows.into_iter().map(outbox_row).collect()
}

/// How many outbox rows have each status.
pub async fn outbox_status_counts(db: &Database) -> Result<Vec<(String, u64)>, StorageError> {
    let rows: Vec<(String, i64)> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as("SELECT status, COUNT(*) FROM outbox GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await?
    });
    rows.into_iter()
        .map(|(status, n)| Ok((status, to_u64(n)?)))
        .collect()
}

/// Which of a peer's due rows a claim may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimScope {
    /// Any, most urgent first (withdrawal notices, then in order of acceptance), except data
    /// accepted after a queued consent notice that cannot be claimed now (waiting for its
    /// retry, or claimed by another replica): data must not overtake its grant.
    Any,
    /// Only data messages accepted before the peer's first queued consent notice: what may go
    /// while another batch is still in flight, since data never depends on other data, but
    /// data under a consent must not overtake the consent's own notice.
    DataBeforeNotices,
}

/// A claimed row: id, recipient, envelope, attempts, priority, audit index, type.
type ClaimRow = (String, String, Vec<u8>, i64, i32, i64, String);

/// The rows a claim within a scope may take: `$1` now, `$4` the peer.
macro_rules! due_rows {
    ($($scope:tt)*) => {
        concat!(
            "FROM outbox WHERE recipient = $4 AND status = 'queued' \
             AND next_attempt_at <= $1 AND (claimed_until IS NULL OR claimed_until < $1) ",
            $($scope)*
        )
    };
}

/// The claim statement: `$1` now, `$2` the lease's end, `$3` the limit, `$4` the peer.
macro_rules! claim_sql {
    ($locking:literal; $($scope:tt)*) => {
        concat!(
            "UPDATE outbox SET claimed_until = $2 WHERE message_id IN (SELECT message_id ",
            due_rows!($($scope)*),
            " ORDER BY priority, audit_idx LIMIT $3 ",
            $locking,
            ") RETURNING message_id, recipient, envelope, attempts, priority, audit_idx, \
             message_type"
        )
    };
}

/// The extra condition of [`ClaimScope::DataBeforeNotices`]; the first queued notice is found
/// through the partial index `outbox_queued_notices`.
macro_rules! data_before_notices {
    () => {
        "AND message_type NOT IN ('consent.granted', 'consent.withdrawn') \
         AND audit_idx < COALESCE((SELECT MIN(n.audit_idx) FROM outbox n \
         WHERE n.recipient = $4 AND n.status = 'queued' \
         AND n.message_type IN ('consent.granted', 'consent.withdrawn')), 9223372036854775807)"
    };
}

/// The extra condition of [`ClaimScope::Any`]: nothing accepted after the peer's first queued
/// notice that this claim cannot take (in flight, or waiting for its retry).
macro_rules! before_waiting_notices {
    () => {
        "AND audit_idx < COALESCE((SELECT MIN(n.audit_idx) FROM outbox n \
         WHERE n.recipient = $4 AND n.status = 'queued' \
         AND n.message_type IN ('consent.granted', 'consent.withdrawn') \
         AND NOT (n.next_attempt_at <= $1 \
         AND (n.claimed_until IS NULL OR n.claimed_until < $1))), 9223372036854775807)"
    };
}

/// Whether `peer` has a consent notice that a claim could take now (queued, due, not claimed
/// under a live lease). Read through the partial index of queued notices.
pub async fn has_claimable_notice(
    db: &Database,
    now: OffsetDateTime,
    peer: &OrgId,
) -> Result<bool, StorageError> {
    let sql = "SELECT 1 FROM outbox WHERE recipient = $1 AND status = 'queued' \
               AND message_type IN ('consent.granted', 'consent.withdrawn') \
               AND next_attempt_at <= $2 AND (claimed_until IS NULL OR claimed_until < $2) \
               LIMIT 1";
    let now = db_time(now);
    let found: Option<i32> = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar(sql)
            .bind(peer.as_str())
            .bind(&now)
            .fetch_optional(pool)
            .await?
    });
    Ok(found.is_some())
}

/// Claims up to `limit` due rows for `peer` (queued, due, not claimed by a live lease) within
/// `scope`, most urgent first. Each claim lasts until `lease_until`. The index on (recipient,
/// status, priority, audit_idx) makes this a range read of that peer's queue: a long backlog
/// for another peer (one that is down, say) is never scanned.
pub async fn claim_due(
    db: &Database,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
    peer: &OrgId,
    limit: u32,
    scope: ClaimScope,
) -> Result<Vec<ClaimedMessage>, StorageError> {
    // On SQLite a claim is a write and takes the database's one write lock, which the group
    // commit then waits for (in SQLite's busy handler, which sleeps): look first, with a read
    // of exactly the rows the claim would take, which takes no lock.
    let look = match scope {
        ClaimScope::Any => concat!(
            "SELECT 1 ",
            due_rows!(before_waiting_notices!()),
            " LIMIT 1"
        ),
        ClaimScope::DataBeforeNotices => {
            concat!("SELECT 1 ", due_rows!(data_before_notices!()), " LIMIT 1")
        }
    };
    let sql = match (db, scope) {
        (Database::Sqlite(_), ClaimScope::Any) => claim_sql!(""; before_waiting_notices!()),
        (Database::Sqlite(_), ClaimScope::DataBeforeNotices) => {
            claim_sql!(""; data_before_notices!())
        }
        (Database::Postgres(_), ClaimScope::Any) => {
            claim_sql!("FOR UPDATE SKIP LOCKED"; before_waiting_notices!())
        }
        (Database::Postgres(_), ClaimScope::DataBeforeNotices) => {
            claim_sql!("FOR UPDATE SKIP LOCKED"; data_before_notices!())
        }
    };
    let now = db_time(now);
    let lease = db_time(lease_until);
    if let Database::Sqlite(pool) = db {
        // Bound like the claim itself, so that the numbered placeholders line up.
        let due: Option<i64> = sqlx::query_scalar(look)
            .bind(&now)
            .bind(&lease)
            .bind(i64::from(limit))
            .bind(peer.as_str())
            .fetch_optional(pool)
            .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
    }
    let mut rows: Vec<ClaimRow> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as(sql)
            .bind(&now)
            .bind(&lease)
            .bind(i64::from(limit))
            .bind(peer.as_str())
            .fetch_all(pool)
            .await?
    });
    // RETURNING does not keep the subquery's order.
    rows.sort_by_key(|r| (r.4, r.5));
    rows.into_iter()
        .map(
            |(message_id, recipient, envelope, attempts, _, _, message_type)| {
                Ok(ClaimedMessage {
                    message_id,
                    recipient,
                    envelope,
                    is_notice: message_type.starts_with("consent."),
                    attempts: u32::try_from(attempts).map_err(|_| {
                        StorageError::Invariant("an attempt count is out of range".into())
                    })?,
                })
            },
        )
        .collect()
}

/// Marks several messages delivered, each with its verified receipt, in one transaction (one
/// commit for a whole batch). Returns how many changed (a cancelled one does not).
pub async fn mark_delivered_many(
    db: &Database,
    delivered: &[(String, String)],
    now: OffsetDateTime,
) -> Result<u64, StorageError> {
    // A message cancelled by a withdrawal while it was in flight, and admitted by the peer all
    // the same, was delivered: the record says so, with its receipt.
    let sql = "UPDATE outbox SET status = 'delivered', receipt = $2, claimed_until = NULL, \
               attempts = attempts + 1, updated_at = $3 \
               WHERE message_id = $1 AND status IN ('queued', 'cancelled')";
    let now = db_time(now);
    let changed = on_each_engine!(db, Database, |pool| {
        let mut tx = pool.begin().await?;
        let mut changed = 0;
        for (id, receipt) in delivered {
            changed += sqlx::query(sql)
                .bind(id)
                .bind(receipt)
                .bind(&now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        changed
    });
    Ok(changed)
}

/// Gives several claimed messages back for later attempts, in one transaction.
pub async fn release_claims_many(
    db: &Database,
    releases: &[(String, u32, OffsetDateTime)],
    now: OffsetDateTime,
) -> Result<(), StorageError> {
    let sql = "UPDATE outbox SET claimed_until = NULL, attempts = $2, next_attempt_at = $3, \
               updated_at = $4 WHERE message_id = $1 AND status = 'queued'";
    let now = db_time(now);
    on_each_engine!(db, Database, |pool| {
        let mut tx = pool.begin().await?;
        for (id, attempts, next) in releases {
            sqlx::query(sql)
                .bind(id)
                .bind(i64::from(*attempts))
                .bind(db_time(*next))
                .bind(&now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Marks a message refused by the peer, with its problem document and reason.
pub async fn mark_refused(
    db: &Database,
    id: &str,
    problem: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<bool, StorageError> {
    let sql = "UPDATE outbox SET status = 'refused', problem = $2, status_reason = $3, \
               claimed_until = NULL, attempts = attempts + 1, updated_at = $4 \
               WHERE message_id = $1 AND status = 'queued'";
    let rows = on_each_engine!(db, Database, |pool| {
        sqlx::query(sql)
            .bind(id)
            .bind(problem)
            .bind(reason)
            .bind(db_time(now))
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(rows == 1)
}

/// On SQLite (one node per database), frees every claim: called at start, when no delivery of
/// this node is in flight. Does nothing on PostgreSQL, where other replicas' claims are live.
pub async fn release_own_stale_claims(db: &Database) -> Result<u64, StorageError> {
    match db {
        Database::Sqlite(pool) => Ok(sqlx::query(
            "UPDATE outbox SET claimed_until = NULL WHERE claimed_until IS NOT NULL",
        )
        .execute(pool)
        .await?
        .rows_affected()),
        Database::Postgres(_) => Ok(0),
    }
}

impl WriteTx<'_> {
    /// Queues messages for delivery (each with the audit entry that accepted it), many rows per
    /// statement on PostgreSQL. Returns, per message, 1 if it was queued and 0 if its id was
    /// queued already.
    pub async fn enqueue_outbox_many(
        &mut self,
        messages: &[(&NewOutboxMessage, u64)],
    ) -> Result<Vec<u64>, StorageError> {
        let tx = match self {
            WriteTx::Sqlite(tx) => {
                let mut insert = tx.prepare(
                    "INSERT INTO outbox (message_id, recipient, message_type, consent_id, \
                     priority, audit_idx, envelope, status, next_attempt_at, created_at, \
                     updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?8, ?8) \
                     ON CONFLICT (message_id) DO NOTHING",
                )?;
                return messages
                    .iter()
                    .map(|(message, audit_idx)| {
                        Ok(insert.execute((
                            message.message_id.as_str(),
                            message.recipient.as_str(),
                            message.message_type.as_str(),
                            message.consent.as_str(),
                            message.priority(),
                            to_i64(*audit_idx)?,
                            message.envelope.as_slice(),
                            db_time(message.accepted_at),
                        ))? as u64)
                    })
                    .collect();
            }
            WriteTx::Postgres(tx) => tx,
        };
        let mut stored = std::collections::HashSet::new();
        for chunk in messages.chunks(ROWS_PER_STATEMENT) {
            let indexes = chunk
                .iter()
                .map(|(_, audit_idx)| to_i64(*audit_idx))
                .collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<(String,)> = {
                let mut columns: OutboxColumns = Default::default();
                for (message, _) in chunk {
                    columns.0.push(message.message_id.as_str().to_owned());
                    columns.1.push(message.recipient.as_str().to_owned());
                    columns.2.push(message.message_type.as_str().to_owned());
                    columns.3.push(message.consent.as_str().to_owned());
                    columns.4.push(message.priority());
                    columns.5.push(message.envelope.clone());
                    columns.6.push(db_time(message.accepted_at));
                }
                sqlx::query_as(
                    "INSERT INTO outbox (message_id, recipient, message_type, consent_id, \
                     priority, audit_idx, envelope, status, next_attempt_at, created_at, \
                     updated_at) \
                     SELECT v.message_id, v.recipient, v.message_type, v.consent_id, \
                     v.priority, v.audit_idx, v.envelope, 'queued', v.at, v.at, v.at \
                     FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
                     $5::INTEGER[], $6::BIGINT[], $7::BYTEA[], $8::TEXT[]) \
                     AS v(message_id, recipient, message_type, consent_id, priority, \
                     audit_idx, envelope, at) \
                     ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
                )
                .bind(columns.0)
                .bind(columns.1)
                .bind(columns.2)
                .bind(columns.3)
                .bind(columns.4)
                .bind(indexes)
                .bind(columns.5)
                .bind(columns.6)
                .fetch_all(&mut **tx)
                .await?
            };
            stored.extend(ids.into_iter().map(|(id,)| (id, String::new())));
        }
        Ok(super::messages::stored_per_row(
            messages.iter().map(|(m, _)| (m.message_id.as_str(), "")),
            &stored,
        ))
    }

    /// Cancels every queued message under a consent except its withdrawal notice; returns how
    /// many.
    pub async fn cancel_queued_for_consent(
        &mut self,
        consent: &ConsentId,
        now: OffsetDateTime,
    ) -> Result<u64, StorageError> {
        // Rows in flight are cancelled too: if the peer admitted one before it learnt of the
        // withdrawal, the delivery is recorded when its attempt ends (`mark_delivered_many`
        // lets the truth win). A grant notice still waiting is cancelled as well: the
        // counterpart then never learns of a consent that has already ended, and a withdrawal
        // can never overtake its own grant.
        let sql = "UPDATE outbox SET status = 'cancelled', \
                   status_reason = 'cancelled-consent-withdrawn', updated_at = $2 \
                   WHERE consent_id = $1 AND status = 'queued' \
                   AND message_type <> 'consent.withdrawn'";
        Ok(match self {
            WriteTx::Sqlite(tx) => {
                tx.prepare(sql)?.execute((consent.as_str(), db_time(now)))? as u64
            }
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(consent.as_str())
                .bind(db_time(now))
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// Deletes received messages whose retention ended; returns how many.
    pub async fn purge_expired_inbox(&mut self, now: OffsetDateTime) -> Result<u64, StorageError> {
        let sql = "DELETE FROM inbox WHERE delete_after IS NOT NULL AND delete_after <= $1";
        Ok(match self {
            WriteTx::Sqlite(tx) => tx.prepare(sql)?.execute([db_time(now)])? as u64,
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(db_time(now))
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }
}

/// How many received messages are past their retention.
pub async fn expired_inbox_count(db: &Database, now: OffsetDateTime) -> Result<u64, StorageError> {
    let count: i64 = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox WHERE delete_after IS NOT NULL AND delete_after <= $1",
        )
        .bind(db_time(now))
        .fetch_one(pool)
        .await?
    });
    to_u64(count)
}
