//! Messages at this node's boundary: the replay table (every message id a sender used, with the
//! first answer) and the inbox of admitted messages. Written only inside a [`WriteTx`], in the
//! same transaction as the audit entry of the decision.

use super::audit::{to_i64, to_u64};
use super::{Database, StorageError, WriteTx, db_time};
use crate::domain::{ConsentId, MessageId, MessageType, OrgId, PurposeRef, SubjectRef};
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
}

/// The first answer to `message_id` from `sender`, if it was seen.
pub async fn seen_message(
    db: &Database,
    sender: &OrgId,
    message_id: &MessageId,
) -> Result<Option<SeenMessage>, StorageError> {
    let sql = "SELECT envelope_sha256, status, problem, audit_idx, receipt FROM seen_messages \
               WHERE sender = $1 AND message_id = $2";
    type Row = (String, i32, Option<String>, i64, Option<String>);
    let row: Option<Row> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as(sql)
            .bind(sender.as_str())
            .bind(message_id.as_str())
            .fetch_optional(pool)
            .await?
    });
    row.map(|(envelope_sha256, status, problem, audit_idx, receipt)| {
        Ok(SeenMessage {
            envelope_sha256,
            status: u16::try_from(status)
                .map_err(|_| StorageError::Invariant("a stored status is out of range".into()))?,
            problem,
            audit_idx: to_u64(audit_idx)?,
            receipt,
        })
    })
    .transpose()
}

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
}

impl WriteTx {
    /// Remembers the first answer to a message id. A second answer to the same id (a replay
    /// that raced the first) changes nothing.
    pub async fn remember_message(
        &mut self,
        sender: &OrgId,
        message_id: &MessageId,
        envelope_sha256: &str,
        answer: RememberedAnswer<'_>,
        audit_idx: u64,
    ) -> Result<u64, StorageError> {
        let RememberedAnswer {
            status,
            problem,
            receipt,
        } = answer;
        let sql = "INSERT INTO seen_messages (sender, message_id, envelope_sha256, status, \
                   problem, audit_idx, receipt) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                   ON CONFLICT (sender, message_id) DO NOTHING";
        let audit_idx = to_i64(audit_idx)?;
        let rows = on_each_engine!(self, WriteTx, |tx| {
            sqlx::query(sql)
                .bind(sender.as_str())
                .bind(message_id.as_str())
                .bind(envelope_sha256)
                .bind(i32::from(status))
                .bind(problem)
                .bind(audit_idx)
                .bind(receipt)
                .execute(&mut **tx)
                .await?
                .rows_affected()
        });
        Ok(rows)
    }

    /// Stores an admitted message, unless its consent ended meanwhile; a second copy of the
    /// same message changes nothing. Returns how many rows were stored.
    pub async fn insert_inbox(
        &mut self,
        message: &NewInboxMessage,
        audit_idx: u64,
    ) -> Result<u64, StorageError> {
        // The consent is checked again here, inside the commit: a withdrawal that committed
        // after this message was decided but before it is stored wins, and nothing is stored
        // (as if the message had come first and been deleted by the withdrawal).
        let sql = "INSERT INTO inbox (sender, message_id, message_type, purpose, consent_id, \
                   subject_ref, envelope, received_at, audit_idx, delete_after) \
                   SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
                   WHERE NOT EXISTS (SELECT 1 FROM consent_events WHERE consent_id = $5 \
                   AND event IN ('withdrawn-by-subject', 'revoked', 'expired', 'invalidated')) \
                   ON CONFLICT (sender, message_id) DO NOTHING";
        let audit_idx = to_i64(audit_idx)?;
        let rows = on_each_engine!(self, WriteTx, |tx| {
            sqlx::query(sql)
                .bind(message.sender.as_str())
                .bind(message.message_id.as_str())
                .bind(message.message_type.as_str())
                .bind(message.purpose.to_string())
                .bind(message.consent.as_str())
                .bind(message.subject.to_string())
                .bind(message.envelope.as_slice())
                .bind(db_time(message.received_at))
                .bind(audit_idx)
                .bind(message.delete_after.map(db_time))
                .execute(&mut **tx)
                .await?
                .rows_affected()
        });
        Ok(rows)
    }

    /// Deletes what was received under a consent (after its withdrawal); returns how many.
    pub async fn delete_inbox_for_consent(&mut self, id: &ConsentId) -> Result<u64, StorageError> {
        let rows = on_each_engine!(self, WriteTx, |tx| {
            sqlx::query("DELETE FROM inbox WHERE consent_id = $1")
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?
                .rows_affected()
        });
        Ok(rows)
    }

    /// How many messages received under a consent are kept.
    pub async fn count_inbox_for_consent(&mut self, id: &ConsentId) -> Result<u64, StorageError> {
        let count: i64 = on_each_engine!(self, WriteTx, |tx| {
            sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE consent_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut **tx)
                .await?
        });
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
