//! Reads of the audit log for auditors and peers, by index range: entries to filter and leaf
//! hashes to build proofs from, so that callers keep at most one range in memory, and the kept
//! signed checkpoint of a given size.
//!
//! Nothing here writes: appends belong to the write path (`storage::audit`, in a `WriteTx`).

use super::audit::{StoredEntry, to_hash, to_i64, to_u64};
use super::{Database, StorageError};
use crate::audit::merkle::Hash;

/// The stored leaf hashes of the entries `start..end`, in index order. Errs if one is missing,
/// so a proof is never built over a gap.
pub async fn audit_leaf_hash_range(
    db: &Database,
    start: u64,
    end: u64,
) -> Result<Vec<Hash>, StorageError> {
    let (first, below) = (to_i64(start)?, to_i64(end)?);
    let rows: Vec<Vec<u8>> = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar(
            "SELECT leaf_hash FROM audit_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
        )
        .bind(first)
        .bind(below)
        .fetch_all(pool)
        .await?
    });
    if rows.len() as u64 != end.saturating_sub(start) {
        return Err(StorageError::Invariant(format!(
            "the audit log holds {} of the entries {start}..{end}",
            rows.len()
        )));
    }
    rows.iter().map(|h| to_hash(h)).collect()
}

/// Up to `limit` entries with `start <= idx < end`, in index order, as stored.
pub async fn audit_entry_range(
    db: &Database,
    start: u64,
    end: u64,
    limit: u32,
) -> Result<Vec<StoredEntry>, StorageError> {
    let (first, below) = (to_i64(start)?, to_i64(end)?);
    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as(
            "SELECT idx, entry, leaf_hash FROM audit_entries \
             WHERE idx >= $1 AND idx < $2 ORDER BY idx LIMIT $3",
        )
        .bind(first)
        .bind(below)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(|(idx, entry, leaf_hash)| {
            Ok(StoredEntry {
                idx: to_u64(idx)?,
                entry,
                leaf_hash,
            })
        })
        .collect()
}

/// The signed checkpoint of exactly `size` entries, if this node kept one: the latest, or one
/// of the history of earlier checkpoints.
pub async fn audit_checkpoint_of_size(
    db: &Database,
    size: u64,
) -> Result<Option<String>, StorageError> {
    let size = to_i64(size)?;
    let latest: Option<String> = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar("SELECT checkpoint FROM audit_tree WHERE id = 1 AND size = $1")
            .bind(size)
            .fetch_optional(pool)
            .await?
    });
    if latest.is_some() {
        return Ok(latest);
    }
    let kept: Option<String> = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar("SELECT note FROM audit_checkpoints WHERE size = $1")
            .bind(size)
            .fetch_optional(pool)
            .await?
    });
    Ok(kept)
}
