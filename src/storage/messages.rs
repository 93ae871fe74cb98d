//! Messages at this node's boundary: the replay table (every message id a sender used, with the
//! first answer) and the inbox of admitted messages. Written only inside a [`WriteTx`], in the
//! same transaction as the audit entry of the decision.

use super::audit::{to_i64, to_u64};
use super::{Database, StorageError, WriteTx, db_time};
use crate::domain::{ConsentId, MessageId, MessageType, OrgId, PurposeRef, SubjectRef};
use std::collections::HashMap;
use time::OffsetDateTime;

/// The first answer to a message id, as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenMessage {
    /// SHA-256 (hex) of the exact envelope bytes first received under this id.
    pub envelope_sha256: String,
    pub status: u16,
    /// The problem document of a refusal; `None` if the message was admitted.
    pub problem: Option<String>,
    /// The audit entry of the first decision.
    pub audit_idx: u64,
    /// The receipt of an admitted message, once stored.
    pub receipt: Option<String>,
    /// Or what it is rebuilt from: the inclusion proof (concatenated hashes) and the size of
    /// the tree of the checkpoint it was first answered with.
    pub receipt_parts: Option<(Vec<u8>, u64)>,
}

/// The first answer to `message_id` from `sender`, if it was seen.
pub async fn seen_message(
    db: &Database,
    sender: &OrgId,
    message_id: &MessageId,
) -> Result<Option<SeenMessage>, StorageError> {
    Ok(seen_messages(db, sender, &[message_id])
        .await?
        .remove(message_id))
}

/// The first answers to these message ids from `sender`, for the ids that were seen.
pub async fn seen_messages(
    db: &Database,
    sender: &OrgId,
    message_ids: &[&MessageId],
) -> Result<HashMap<MessageId, SeenMessage>, StorageError> {
    type Row = (
        String,
        String,
        i32,
        Option<String>,
        i64,
        Option<String>,
        Option<Vec<u8>>,
        Option<i64>,
    );
    let mut found = HashMap::with_capacity(message_ids.len());
    for chunk in message_ids.chunks(IDS_PER_STATEMENT) {
        let keys: Vec<String> = chunk.iter().map(|id| id.as_str().to_owned()).collect();
        let rows: Vec<Row> = match db {
            Database::Sqlite(pool) => {
                let mut builder = sqlx::QueryBuilder::new(concat!(
                    "SELECT message_id, ",
                    seen_columns!(),
                    " FROM seen_messages WHERE sender = "
                ));
                builder.push_bind(sender.as_str().to_owned());
                builder.push(" AND message_id IN (");
                let mut list = builder.separated(", ");
                for key in &keys {
                    list.push_bind(key.clone());
                }
                builder.push(")");
                builder
                    .build_query_as()
                    .persistent(false)
                    .fetch_all(pool)
                    .await?
            }
            Database::Postgres(pool) => {
                sqlx::query_as(concat!(
                    "SELECT message_id, ",
                    seen_columns!(),
                    " FROM seen_messages WHERE sender = $1 AND message_id = ANY($2)"
                ))
                .bind(sender.as_str())
                .bind(&keys)
                .fetch_all(pool)
                .await?
            }
        };
        for (message_id, envelope_sha256, status, problem, audit_idx, receipt, proof, size) in rows
        {
            let message_id: MessageId = message_id
                .parse()
                .map_err(|_| StorageError::Invariant("a stored message id is invalid".into()))?;
            let seen = seen_from_row((
                envelope_sha256,
                status,
                problem,
                audit_idx,
                receipt,
                proof,
                size,
            ))?;
            found.insert(message_id, seen);
        }
    }
    Ok(found)
}

/// The columns of a [`SeenRow`], for a `SELECT` (a literal, so that it can be part of a static
/// SQL string).
macro_rules! seen_columns {
    () => {
        "envelope_sha256, status, problem, audit_idx, receipt, receipt_proof, receipt_tree_size"
    };
}
pub(super) use seen_columns;

/// A replay-table row as read: envelope hash, status, problem, audit index, receipt, receipt
/// proof and tree size.
pub(super) type SeenRow = (
    String,
    i32,
    Option<String>,
    i64,
    Option<String>,
    Option<Vec<u8>>,
    Option<i64>,
);

pub(super) fn seen_from_row(row: SeenRow) -> Result<SeenMessage, StorageError> {
    let (envelope_sha256, status, problem, audit_idx, receipt, proof, size) = row;
    Ok(SeenMessage {
        envelope_sha256,
        status: u16::try_from(status)
            .map_err(|_| StorageError::Invariant("a stored status is out of range".into()))?,
        problem,
        audit_idx: to_u64(audit_idx)?,
        receipt,
        receipt_parts: match (proof, size) {
            (Some(proof), Some(size)) => Some((proof, to_u64(size)?)),
            _ => None,
        },
    })
}

/// Ids per read statement: far below SQLite's limit of 32,766 bound parameters.
const IDS_PER_STATEMENT: usize = 1_000;

/// Stores the receipt of an admitted message, unless one is stored already (the first one
/// stays: a replay must get the same receipt). Returns whether this one was stored.
pub async fn store_receipt(
    db: &Database,
    sender: &OrgId,
    message_id: &MessageId,
    receipt: &str,
) -> Result<bool, StorageError> {
    let sql = "UPDATE seen_messages SET receipt = $3 \
               WHERE sender = $1 AND message_id = $2 AND receipt IS NULL";
    let rows = on_each_engine!(db, Database, |pool| {
        sqlx::query(sql)
            .bind(sender.as_str())
            .bind(message_id.as_str())
            .bind(receipt)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(rows == 1)
}

/// An admitted message to store in the inbox.
#[derive(Debug, Clone)]
pub struct NewInboxMessage {
    pub sender: OrgId,
    pub message_id: MessageId,
    pub message_type: MessageType,
    pub purpose: PurposeRef,
    pub consent: ConsentId,
    pub subject: SubjectRef,
    /// The exact bytes received.
    pub envelope: Vec<u8>,
    pub received_at: OffsetDateTime,
    /// When it must be deleted at the latest (the consent's retention at the recipient).
    pub delete_after: Option<OffsetDateTime>,
}

/// A message in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxMessage {
    pub sender: String,
    pub message_id: String,
    pub message_type: String,
    pub purpose: String,
    pub consent_id: String,
    pub subject_ref: String,
    pub envelope: Vec<u8>,
    pub received_at: String,
    pub audit_idx: u64,
}

/// The whole inbox, oldest first.
pub async fn inbox_messages(db: &Database) -> Result<Vec<InboxMessage>, StorageError> {
    let sql = "SELECT sender, message_id, message_type, purpose, consent_id, subject_ref, \
               envelope, received_at, audit_idx FROM inbox ORDER BY received_at, audit_idx";
    type Row = (
        String,
        String,
        String,
        String,
        String,
        String,
        Vec<u8>,
        String,
        i64,
    );
    let rows: Vec<Row> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as(sql).fetch_all(pool).await?
    });
    rows.into_iter()
        .map(|r| {
            Ok(InboxMessage {
                sender: r.0,
                message_id: r.1,
                message_type: r.2,
                purpose: r.3,
                consent_id: r.4,
                subject_ref: r.5,
                envelope: r.6,
                received_at: r.7,
                audit_idx: to_u64(r.8)?,
            })
        })
        .collect()
}

/// The first answer to a message, as remembered: a refusal's problem, or an admission's
/// receipt.
#[derive(Debug, Clone, Copy)]
pub struct RememberedAnswer<'a> {
    pub status: u16,
    pub problem: Option<&'a str>,
    pub receipt: Option<&'a str>,
    /// Instead of `receipt`: the parts a receipt is rebuilt from that are not stored
    /// elsewhere (see [`ReceiptParts`]).
    pub receipt_parts: Option<ReceiptParts<'a>>,
}

/// What a receipt is rebuilt from besides the admitting entry (in `audit_entries`) and the
/// checkpoint of its commit (kept in `audit_checkpoints`): the inclusion proof's hashes,
/// concatenated, and the size of that checkpoint's tree. About 600 bytes instead of the
/// receipt's 2,400, which is most of what admitting a message writes.
#[derive(Debug, Clone, Copy)]
pub struct ReceiptParts<'a> {
    pub proof: &'a [u8],
    pub tree_size: u64,
}

/// One message id's first answer, to be remembered in the replay table.
#[derive(Debug, Clone, Copy)]
pub struct RememberRow<'a> {
    pub sender: &'a OrgId,
    pub message_id: &'a MessageId,
    pub envelope_sha256: &'a str,
    pub answer: RememberedAnswer<'a>,
    /// The audit entry of the decision.
    pub audit_idx: u64,
}

/// Rows per PostgreSQL `UNNEST` statement: a whole group commit of ordinary size in one
/// statement, with bounded parameter arrays. (SQLite steps one prepared statement per row.)
const ROWS_PER_STATEMENT: usize = 1_000;

/// One array per column, for PostgreSQL's `UNNEST`.
type InboxColumns = (
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<Vec<u8>>,
    Vec<String>,
    Vec<i64>,
    Vec<Option<String>>,
);

/// Whether a consent event is one after which nothing more is stored under the consent (a
/// literal, so that it can be part of a static SQL string). Comparisons joined by OR, not
/// `event IN (...)`: SQLite evaluates an `IN` list of more than two constants through a
/// temporary b-tree it builds for every row.
macro_rules! is_ending_event {
    () => {
        "(event = 'withdrawn-by-subject' OR event = 'revoked' OR event = 'expired' \
         OR event = 'invalidated')"
    };
}

/// Per row, 1 if the statement stored it and 0 if not. Of several rows with one key only the
/// first can have been stored (the others conflicted with it).
pub(super) fn stored_per_row<'k>(
    keys: impl Iterator<Item = (&'k str, &'k str)>,
    stored: &std::collections::HashSet<(String, String)>,
) -> Vec<u64> {
    let mut counted = std::collections::HashSet::new();
    keys.map(|(a, b)| {
        let key = (a.to_owned(), b.to_owned());
        u64::from(stored.contains(&key) && counted.insert(key))
    })
    .collect()
}

impl WriteTx<'_> {
    /// Remembers the first answer to each message id (on PostgreSQL many rows per statement,
    /// on SQLite one prepared statement per row, in-process). A second answer
    /// to the same id (a replay that raced the first) changes nothing. Returns, per row, 1 if
    /// it was stored and 0 if the id was remembered already.
    pub async fn remember_messages(
        &mut self,
        rows: &[RememberRow<'_>],
    ) -> Result<Vec<u64>, StorageError> {
        let tx = match self {
            WriteTx::Sqlite(tx) => {
                let mut insert = tx.prepare(
                    "INSERT INTO seen_messages (sender, message_id, envelope_sha256, status, \
                     problem, audit_idx, receipt, receipt_proof, receipt_tree_size) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                     ON CONFLICT (sender, message_id) DO NOTHING",
                )?;
                return rows
                    .iter()
                    .map(|row| {
                        let parts = row.answer.receipt_parts;
                        Ok(insert.execute((
                            row.sender.as_str(),
                            row.message_id.as_str(),
                            row.envelope_sha256,
                            i32::from(row.answer.status),
                            row.answer.problem,
                            to_i64(row.audit_idx)?,
                            row.answer.receipt,
                            parts.map(|p| p.proof),
                            parts.map(|p| to_i64(p.tree_size)).transpose()?,
                        ))? as u64)
                    })
                    .collect();
            }
            WriteTx::Postgres(tx) => tx,
        };
        let mut stored = std::collections::HashSet::new();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let keys: Vec<(String, String)> = {
                // One fixed statement with array parameters, whatever the row count.
                let mut senders = Vec::with_capacity(chunk.len());
                let mut ids = Vec::with_capacity(chunk.len());
                let mut hashes = Vec::with_capacity(chunk.len());
                let mut statuses = Vec::with_capacity(chunk.len());
                let mut problems = Vec::with_capacity(chunk.len());
                let mut indexes = Vec::with_capacity(chunk.len());
                let mut receipts = Vec::with_capacity(chunk.len());
                let mut proofs = Vec::with_capacity(chunk.len());
                let mut sizes = Vec::with_capacity(chunk.len());
                for row in chunk {
                    proofs.push(row.answer.receipt_parts.map(|p| p.proof.to_vec()));
                    sizes.push(
                        row.answer
                            .receipt_parts
                            .map(|p| to_i64(p.tree_size))
                            .transpose()?,
                    );
                    senders.push(row.sender.as_str().to_owned());
                    ids.push(row.message_id.as_str().to_owned());
                    hashes.push(row.envelope_sha256.to_owned());
                    statuses.push(i32::from(row.answer.status));
                    problems.push(row.answer.problem.map(str::to_owned));
                    indexes.push(to_i64(row.audit_idx)?);
                    receipts.push(row.answer.receipt.map(str::to_owned));
                }
                sqlx::query_as(
                    "INSERT INTO seen_messages (sender, message_id, envelope_sha256, status, \
                     problem, audit_idx, receipt, receipt_proof, receipt_tree_size) \
                     SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::INTEGER[], \
                     $5::TEXT[], $6::BIGINT[], $7::TEXT[], $8::BYTEA[], $9::BIGINT[]) \
                     ON CONFLICT (sender, message_id) DO NOTHING RETURNING sender, message_id",
                )
                .bind(senders)
                .bind(ids)
                .bind(hashes)
                .bind(statuses)
                .bind(problems)
                .bind(indexes)
                .bind(receipts)
                .bind(proofs)
                .bind(sizes)
                .fetch_all(&mut **tx)
                .await?
            };
            stored.extend(keys);
        }
        Ok(stored_per_row(
            rows.iter()
                .map(|r| (r.sender.as_str(), r.message_id.as_str())),
            &stored,
        ))
    }

    /// Stores admitted messages (each with the audit entry of its decision), many rows per
    /// statement on PostgreSQL, except those whose consent ended meanwhile; a second copy of a message
    /// changes nothing. Returns, per message, 1 if it was stored and 0 if not.
    pub async fn insert_inbox_many(
        &mut self,
        messages: &[(&NewInboxMessage, u64)],
    ) -> Result<Vec<u64>, StorageError> {
        // The consent is checked again here, inside the commit: a withdrawal that committed
        // after a message was decided but before it is stored wins, and nothing is stored (as
        // if the message had come first and been deleted by the withdrawal).
        let tx = match self {
            WriteTx::Sqlite(tx) => {
                let mut insert = tx.prepare(concat!(
                    "INSERT INTO inbox (sender, message_id, message_type, purpose, consent_id, \
                     subject_ref, envelope, received_at, audit_idx, delete_after) \
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 \
                     WHERE NOT EXISTS (SELECT 1 FROM consent_events \
                     WHERE consent_events.consent_id = ?5 AND ",
                    is_ending_event!(),
                    ") ON CONFLICT (sender, message_id) DO NOTHING"
                ))?;
                return messages
                    .iter()
                    .map(|(message, audit_idx)| {
                        Ok(insert.execute((
                            message.sender.as_str(),
                            message.message_id.as_str(),
                            message.message_type.as_str(),
                            message.purpose.to_string(),
                            message.consent.as_str(),
                            message.subject.to_string(),
                            message.envelope.as_slice(),
                            db_time(message.received_at),
                            to_i64(*audit_idx)?,
                            message.delete_after.map(db_time),
                        ))? as u64)
                    })
                    .collect();
            }
            WriteTx::Postgres(tx) => tx,
        };
        let mut stored = std::collections::HashSet::new();
        for chunk in messages.chunks(ROWS_PER_STATEMENT) {
            let keys: Vec<(String, String)> = {
                let mut columns: InboxColumns = Default::default();
                for (message, audit_idx) in chunk {
                    columns.0.push(message.sender.as_str().to_owned());
                    columns.1.push(message.message_id.as_str().to_owned());
                    columns.2.push(message.message_type.as_str().to_owned());
                    columns.3.push(message.purpose.to_string());
                    columns.4.push(message.consent.as_str().to_owned());
                    columns.5.push(message.subject.to_string());
                    columns.6.push(message.envelope.clone());
                    columns.7.push(db_time(message.received_at));
                    columns.8.push(to_i64(*audit_idx)?);
                    columns.9.push(message.delete_after.map(db_time));
                }
                sqlx::query_as(concat!(
                        "INSERT INTO inbox (sender, message_id, message_type, purpose, consent_id, \
                         subject_ref, envelope, received_at, audit_idx, delete_after) \
                         SELECT v.* FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
                         $5::TEXT[], $6::TEXT[], $7::BYTEA[], $8::TEXT[], $9::BIGINT[], $10::TEXT[]) \
                         AS v(sender, message_id, message_type, purpose, consent_id, subject_ref, \
                         envelope, received_at, audit_idx, delete_after) \
                         WHERE NOT EXISTS (SELECT 1 FROM consent_events e \
                         WHERE e.consent_id = v.consent_id AND ",
                        is_ending_event!(),
                        ") ON CONFLICT (sender, message_id) DO NOTHING RETURNING sender, message_id"
                    ))
                    .bind(columns.0)
                    .bind(columns.1)
                    .bind(columns.2)
                    .bind(columns.3)
                    .bind(columns.4)
                    .bind(columns.5)
                    .bind(columns.6)
                    .bind(columns.7)
                    .bind(columns.8)
                    .bind(columns.9)
                    .fetch_all(&mut **tx)
                    .await?
            };
            stored.extend(keys);
        }
        Ok(stored_per_row(
            messages
                .iter()
                .map(|(m, _)| (m.sender.as_str(), m.message_id.as_str())),
            &stored,
        ))
    }

    /// Deletes what was received under a consent (after its withdrawal); returns how many.
    pub async fn delete_inbox_for_consent(&mut self, id: &ConsentId) -> Result<u64, StorageError> {
        let sql = "DELETE FROM inbox WHERE consent_id = $1";
        Ok(match self {
            WriteTx::Sqlite(tx) => tx.prepare(sql)?.execute([id.as_str()])? as u64,
            WriteTx::Postgres(tx) => sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    /// How many messages received under a consent are kept.
    pub async fn count_inbox_for_consent(&mut self, id: &ConsentId) -> Result<u64, StorageError> {
        let sql = "SELECT COUNT(*) FROM inbox WHERE consent_id = $1";
        let count: i64 = match self {
            WriteTx::Sqlite(tx) => tx
                .prepare(sql)?
                .query_row([id.as_str()], |row| row.get(0))?,
            WriteTx::Postgres(tx) => {
                sqlx::query_scalar(sql)
                    .bind(id.as_str())
                    .fetch_one(&mut **tx)
                    .await?
            }
        };
        to_u64(count)
    }
}

/// Which received messages to read.
#[derive(Debug, Clone, Default)]
pub struct InboxFilter {
    pub consent: Option<ConsentId>,
    pub message_type: Option<MessageType>,
    pub since: Option<OffsetDateTime>,
    /// Only after this cursor (an audit index).
    pub after: Option<u64>,
    pub limit: u32,
    /// Only under consents recorded or bound by this unit.
    pub unit: Option<String>,
}

const INBOX_COLUMNS: &str = "sender, message_id, message_type, purpose, consent_id, subject_ref, \
     envelope, received_at, audit_idx";

type InboxRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    Vec<u8>,
    String,
    i64,
);

fn inbox_row(r: InboxRow) -> Result<InboxMessage, StorageError> {
    Ok(InboxMessage {
        sender: r.0,
        message_id: r.1,
        message_type: r.2,
        purpose: r.3,
        consent_id: r.4,
        subject_ref: r.5,
        envelope: r.6,
        received_at: r.7,
        audit_idx: to_u64(r.8)?,
    })
}

/// One page of the inbox in the order received (by audit index).
pub async fn inbox_page(
    db: &Database,
    filter: &InboxFilter,
) -> Result<Vec<InboxMessage>, StorageError> {
    // Every filter is always bound; an absent one matches everything.
    let sql = format!(
        "SELECT {INBOX_COLUMNS} FROM inbox WHERE ($1 IS NULL OR consent_id = $1) \
         AND ($2 IS NULL OR message_type = $2) AND ($3 IS NULL OR received_at >= $3) \
         AND audit_idx > $4 AND ($6 IS NULL OR consent_id IN (SELECT consent_id FROM consents \
         WHERE recorded_unit = $6 OR bound_unit = $6)) ORDER BY audit_idx LIMIT $5"
    );
    let consent = filter.consent.as_ref().map(|c| c.as_str().to_owned());
    let message_type = filter.message_type.map(|t| t.as_str().to_owned());
    let since = filter.since.map(db_time);
    let after = match filter.after {
        Some(after) => to_i64(after)?,
        None => -1,
    };
    let rows: Vec<InboxRow> = on_each_engine!(db, Database, |pool| {
        // Built from constants only.
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(consent.clone())
            .bind(message_type.clone())
            .bind(since.clone())
            .bind(after)
            .bind(i64::from(filter.limit))
            .bind(filter.unit.clone())
            .fetch_all(pool)
            .await?
    });
    rows.into_iter().map(inbox_row).collect()
}

/// A message this node sent (or has queued), for the timeline.
#[derive(Debug, Clone)]
pub struct SentMessage {
    pub recipient: String,
    pub consent_id: String,
    pub message_type: String,
    pub purpose: String,
    pub envelope: Vec<u8>,
    pub created_at: String,
}

/// Everything this node knows of one child, by its local key.
#[derive(Debug, Clone, Default)]
pub struct SubjectStory {
    pub consents: Vec<super::StoredConsent>,
    pub received: Vec<InboxMessage>,
    pub sent: Vec<SentMessage>,
}

/// The consents bound to a local subject key, what was received under them, and the data
/// messages sent under them (not cancelled).
pub async fn subject_story(db: &Database, local_key: &str) -> Result<SubjectStory, StorageError> {
    let ids: Vec<String> = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar(
            "SELECT consent_id FROM consents WHERE local_subject_key = $1 ORDER BY created_at",
        )
        .bind(local_key)
        .fetch_all(pool)
        .await?
    });
    let mut story = SubjectStory::default();
    for id in ids {
        let consent: ConsentId = id
            .parse()
            .map_err(|_| StorageError::Invariant("a stored consent id is invalid".into()))?;
        if let Some(stored) = super::consent(db, &consent).await? {
            story.consents.push(stored);
        }
        let sql =
            format!("SELECT {INBOX_COLUMNS} FROM inbox WHERE consent_id = $1 ORDER BY audit_idx");
        let rows: Vec<InboxRow> = on_each_engine!(db, Database, |pool| {
            // Built from constants only.
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(consent.as_str())
                .fetch_all(pool)
                .await?
        });
        for row in rows {
            story.received.push(inbox_row(row)?);
        }
        let sent: Vec<(String, String, String, Vec<u8>, String)> =
            on_each_engine!(db, Database, |pool| {
                sqlx::query_as(
                    "SELECT recipient, consent_id, message_type, envelope, created_at FROM outbox \
                     WHERE consent_id = $1 AND status <> 'cancelled' \
                     AND message_type NOT IN ('consent.granted', 'consent.withdrawn') \
                     ORDER BY audit_idx",
                )
                .bind(consent.as_str())
                .fetch_all(pool)
                .await?
            });
        for (recipient, consent_id, message_type, envelope, created_at) in sent {
            let purpose = serde_json::from_slice::<serde_json::Value>(&envelope)
                .ok()
                .and_then(|e| {
                    let p = e.get("purpose")?;
                    Some(format!("{}@{}", p.get("id")?.as_str()?, p.get("version")?))
                })
                .unwrap_or_default();
            story.sent.push(SentMessage {
                recipient,
                consent_id,
                message_type,
                purpose,
                envelope,
                created_at,
            });
        }
    }
    Ok(story)
}
