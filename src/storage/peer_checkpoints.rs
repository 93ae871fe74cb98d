//! The latest checkpoint of each peer's audit log that this node verified, and the alarm raised
//! when a peer's log fails to extend it.
//!
//! Every change is a compare-and-set on the row: a checkpoint replaces the one it was verified
//! against and nothing else, and an alarm is raised once. So two replicas on one PostgreSQL
//! database (or a poll and a receipt at once) never overwrite each other's evidence.

use super::audit::{to_i64, to_u64};
use super::{Database, StorageError, db_time};
use crate::audit::merkle::Hash;
use crate::domain::OrgId;
use time::OffsetDateTime;

/// A peer's checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCheckpoint {
    pub peer: String,
    pub size: u64,
    pub root: Hash,
    /// The signed note, exactly as the peer sent it.
    pub note: String,
    pub seen_at: String,
    pub alarm: Option<PeerLogAlarm>,
}

/// Evidence that a peer's log did not extend the stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLogAlarm {
    /// The reason code, e.g. `peer-log-inconsistent`.
    pub reason: String,
    /// The peer's signed checkpoint that conflicts with the stored one.
    pub note: String,
    pub at: String,
}

type Row = (
    String,
    i64,
    Vec<u8>,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

const ONE: &str = "SELECT peer, size, root, note, seen_at, alarm_reason, alarm_note, alarm_at \
                   FROM peer_checkpoints WHERE peer = $1";
const ALL: &str = "SELECT peer, size, root, note, seen_at, alarm_reason, alarm_note, alarm_at \
                   FROM peer_checkpoints ORDER BY peer";

fn from_row(row: Row) -> Result<PeerCheckpoint, StorageError> {
    let (peer, size, root, note, seen_at, reason, alarm_note, at) = row;
    let root: Hash = root
        .as_slice()
        .try_into()
        .map_err(|_| StorageError::Invariant("a stored peer root is not 32 bytes".into()))?;
    let alarm = match (reason, alarm_note, at) {
        (Some(reason), Some(note), Some(at)) => Some(PeerLogAlarm { reason, note, at }),
        _ => None,
    };
    Ok(PeerCheckpoint {
        peer,
        size: to_u64(size)?,
        root,
        note,
        seen_at,
        alarm,
    })
}

/// The stored checkpoint of one peer.
pub async fn peer_checkpoint(
    db: &Database,
    peer: &OrgId,
) -> Result<Option<PeerCheckpoint>, StorageError> {
    let row: Option<Row> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as(ONE)
            .bind(peer.as_str())
            .fetch_optional(pool)
            .await?
    });
    row.map(from_row).transpose()
}

/// Every stored peer checkpoint, by peer.
pub async fn peer_checkpoints(db: &Database) -> Result<Vec<PeerCheckpoint>, StorageError> {
    let rows: Vec<Row> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as(ALL).fetch_all(pool).await?
    });
    rows.into_iter().map(from_row).collect()
}

/// A verified checkpoint of a peer's log.
#[derive(Debug, Clone, Copy)]
pub struct NewPeerCheckpoint<'a> {
    pub size: u64,
    pub root: &'a Hash,
    pub note: &'a str,
}

/// Stores `new` as the peer's checkpoint if the stored one is still `verified_against` (the
/// (size, root) it was checked against; `None`: the peer has no row yet). `false` if the row
/// changed meanwhile; the caller checks again next time.
pub async fn advance_peer_checkpoint(
    db: &Database,
    peer: &OrgId,
    verified_against: Option<(u64, &Hash)>,
    new: NewPeerCheckpoint<'_>,
    now: OffsetDateTime,
) -> Result<bool, StorageError> {
    let size = to_i64(new.size)?;
    let root = new.root.to_vec();
    let seen_at = db_time(now);
    let rows = match verified_against {
        None => on_each_engine!(db, Database, |pool| {
            sqlx::query(
                "INSERT INTO peer_checkpoints (peer, size, root, note, seen_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (peer) DO NOTHING",
            )
            .bind(peer.as_str())
            .bind(size)
            .bind(root)
            .bind(new.note)
            .bind(seen_at)
            .execute(pool)
            .await?
            .rows_affected()
        }),
        Some((old_size, old_root)) => {
            let old_size = to_i64(old_size)?;
            let old_root = old_root.to_vec();
            on_each_engine!(db, Database, |pool| {
                sqlx::query(
                    "UPDATE peer_checkpoints SET size = $2, root = $3, note = $4, seen_at = $5 \
                     WHERE peer = $1 AND size = $6 AND root = $7",
                )
                .bind(peer.as_str())
                .bind(size)
                .bind(root)
                .bind(new.note)
                .bind(seen_at)
                .bind(old_size)
                .bind(old_root)
                .execute(pool)
                .await?
                .rows_affected()
            })
        }
    };
    Ok(rows == 1)
}

/// Raises the alarm on a peer's log, keeping the conflicting signed checkpoint as evidence.
/// `true` if this call raised it; `false` if it was raised before (it is raised once).
pub async fn raise_peer_log_alarm(
    db: &Database,
    peer: &OrgId,
    reason: &str,
    conflicting_note: &str,
    now: OffsetDateTime,
) -> Result<bool, StorageError> {
    let at = db_time(now);
    let rows = on_each_engine!(db, Database, |pool| {
        sqlx::query(
            "UPDATE peer_checkpoints SET alarm_reason = $2, alarm_note = $3, alarm_at = $4 \
             WHERE peer = $1 AND alarm_reason IS NULL",
        )
        .bind(peer.as_str())
        .bind(reason)
        .bind(conflicting_note)
        .bind(at)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(rows == 1)
}
