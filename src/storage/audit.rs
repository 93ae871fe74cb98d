//! The audit log's tables: entries, the tree's right edge with the latest checkpoint, and a
//! history of earlier checkpoints (about one a second, and every one a receipt was given with).
//!
//! Appends happen inside a [`WriteTx`], the one transaction of a group commit. On PostgreSQL
//! that transaction first takes an advisory lock and then re-reads the tree state, so replicas
//! sharing one database append one after the other and never sign diverging checkpoints.

use super::{Database, StorageError, WriteTx};
use crate::audit::merkle::{Frontier, Hash};

/// Rows per PostgreSQL `UNNEST` statement: a whole group commit of ordinary size in one
/// statement, with bounded parameter arrays. (SQLite steps one prepared statement per row.)
const ROWS_PER_STATEMENT: usize = 2_000;

/// The tree as stored: size, right edge and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTree {
    pub frontier: Frontier,
    pub root: Hash,
}

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub idx: u64,
    pub entry: Vec<u8>,
    pub leaf_hash: Vec<u8>,
}

pub(super) fn to_i64(value: u64) -> Result<i64, StorageError> {
    i64::try_from(value).map_err(|_| StorageError::Invariant(format!("{value} exceeds 2^63")))
}

pub(super) fn to_u64(value: i64) -> Result<u64, StorageError> {
    u64::try_from(value)
        .map_err(|_| StorageError::Invariant(format!("stored value {value} is negative")))
}

pub(super) fn to_hash(bytes: &[u8]) -> Result<Hash, StorageError> {
    bytes
        .try_into()
        .map_err(|_| StorageError::Invariant("a stored hash is not 32 bytes".into()))
}

const TREE_QUERY: &str = "SELECT size, frontier, root FROM audit_tree WHERE id = 1";

/// The stored tree row, or the empty tree if nothing was ever appended.
fn tree_or_empty(row: Option<(i64, Vec<u8>, Vec<u8>)>) -> Result<StoredTree, StorageError> {
    match row {
        Some((size, frontier, root)) => decode_tree(size, &frontier, &root),
        None => {
            let frontier = Frontier::new();
            let root = frontier.root();
            Ok(StoredTree { frontier, root })
        }
    }
}

fn decode_tree(size: i64, frontier: &[u8], root: &[u8]) -> Result<StoredTree, StorageError> {
    let size = to_u64(size)?;
    let nodes = frontier
        .chunks(32)
        .map(to_hash)
        .collect::<Result<Vec<_>, _>>()?;
    let frontier = Frontier::from_parts(size, nodes).ok_or_else(|| {
        StorageError::Invariant(format!("the stored tree frontier does not fit size {size}"))
    })?;
    Ok(StoredTree {
        frontier,
        root: to_hash(root)?,
    })
}

impl WriteTx<'_> {
    /// The tree as committed so far (empty if nothing was ever appended).
    pub async fn audit_tree(&mut self) -> Result<StoredTree, StorageError> {
        use rusqlite::OptionalExtension as _;
        let row = match self {
            WriteTx::Sqlite(tx) => tx
                .prepare(TREE_QUERY)?
                .query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .optional()?,
            WriteTx::Postgres(tx) => sqlx::query_as(TREE_QUERY).fetch_optional(&mut **tx).await?,
        };
        tree_or_empty(row)
    }

    /// Inserts entries at consecutive indexes from `first_idx` (on PostgreSQL many rows per
    /// statement; on SQLite one prepared statement per row, which costs no more in-process).
    pub async fn insert_audit_entries(
        &mut self,
        first_idx: u64,
        rows: &[(Vec<u8>, Hash)],
    ) -> Result<(), StorageError> {
        let mut idx = to_i64(first_idx)?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let start = idx;
            let numbered = chunk
                .iter()
                .zip(start..)
                .map(|((entry, leaf), i)| (i, entry, leaf));
            match self {
                WriteTx::Sqlite(tx) => {
                    let mut insert = tx.prepare(
                        "INSERT INTO audit_entries (idx, entry, leaf_hash) VALUES (?1, ?2, ?3)",
                    )?;
                    for (i, entry, leaf) in numbered {
                        insert.execute((i, entry, leaf.as_slice()))?;
                    }
                }
                WriteTx::Postgres(tx) => {
                    // One fixed statement with three array parameters, whatever the row count:
                    // PostgreSQL parses and plans it once instead of once per batch size.
                    let mut ids = Vec::with_capacity(chunk.len());
                    let mut entries = Vec::with_capacity(chunk.len());
                    let mut leaves = Vec::with_capacity(chunk.len());
                    for (i, entry, leaf) in numbered {
                        ids.push(i);
                        entries.push(entry.clone());
                        leaves.push(leaf.to_vec());
                    }
                    sqlx::query(
                        "INSERT INTO audit_entries (idx, entry, leaf_hash) \
                         SELECT * FROM UNNEST($1::BIGINT[], $2::BYTEA[], $3::BYTEA[])",
                    )
                    .bind(ids)
                    .bind(entries)
                    .bind(leaves)
                    .execute(&mut **tx)
                    .await?;
                }
            }
            idx += to_i64(chunk.len() as u64)?;
        }
        Ok(())
    }

    /// Records the tree after the appends and the checkpoint signed over it; with
    /// `keep_history`, the checkpoint also joins the history of earlier checkpoints.
    pub async fn save_audit_tree(
        &mut self,
        tree: &StoredTree,
        checkpoint_note: &str,
        keep_history: bool,
    ) -> Result<(), StorageError> {
        let size = to_i64(tree.frontier.size())?;
        let frontier: Vec<u8> = tree.frontier.nodes().concat();
        let root = tree.root.to_vec();
        let upsert = "INSERT INTO audit_tree (id, size, frontier, root, checkpoint) \
                      VALUES (1, $1, $2, $3, $4) \
                      ON CONFLICT (id) DO UPDATE SET size = excluded.size, \
                      frontier = excluded.frontier, root = excluded.root, \
                      checkpoint = excluded.checkpoint";
        let checkpoint = "INSERT INTO audit_checkpoints (size, note) VALUES ($1, $2)";
        match self {
            WriteTx::Sqlite(tx) => {
                tx.prepare(upsert)?
                    .execute((size, frontier, root, checkpoint_note))?;
                if keep_history {
                    tx.prepare(checkpoint)?.execute((size, checkpoint_note))?;
                }
            }
            WriteTx::Postgres(tx) => {
                sqlx::query(upsert)
                    .bind(size)
                    .bind(frontier)
                    .bind(root)
                    .bind(checkpoint_note)
                    .execute(&mut **tx)
                    .await?;
                if keep_history {
                    sqlx::query(checkpoint)
                        .bind(size)
                        .bind(checkpoint_note)
                        .execute(&mut **tx)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// The committed tree, outside any write transaction (start-up checks, `/readyz`).
pub async fn audit_tree(db: &Database) -> Result<StoredTree, StorageError> {
    let row = on_each_engine!(db, Database, |pool| {
        sqlx::query_as(TREE_QUERY).fetch_optional(pool).await?
    });
    tree_or_empty(row)
}

/// The latest signed checkpoint, if any.
pub async fn latest_audit_checkpoint(db: &Database) -> Result<Option<String>, StorageError> {
    let note = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar("SELECT checkpoint FROM audit_tree WHERE id = 1")
            .fetch_optional(pool)
            .await?
    });
    Ok(note)
}

/// Every entry in index order, as stored (for verification and export).
pub async fn audit_entries(db: &Database) -> Result<Vec<StoredEntry>, StorageError> {
    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as("SELECT idx, entry, leaf_hash FROM audit_entries ORDER BY idx")
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

/// One entry's bytes, as stored.
pub async fn audit_entry(db: &Database, idx: u64) -> Result<Option<Vec<u8>>, StorageError> {
    let idx = to_i64(idx)?;
    let entry = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar("SELECT entry FROM audit_entries WHERE idx = $1")
            .bind(idx)
            .fetch_optional(pool)
            .await?
    });
    Ok(entry)
}

/// The kept signed checkpoints in size order, ending with the latest.
pub async fn audit_checkpoints(db: &Database) -> Result<Vec<String>, StorageError> {
    let mut notes: Vec<String> = on_each_engine!(db, Database, |pool| {
        sqlx::query_scalar("SELECT note FROM audit_checkpoints ORDER BY size")
            .fetch_all(pool)
            .await?
    });
    if let Some(latest) = latest_audit_checkpoint(db).await?
        && notes.last() != Some(&latest)
    {
        notes.push(latest);
    }
    Ok(notes)
}

/// Everything verification and export read, from one consistent snapshot, so that a commit
/// landing between two reads on a live node cannot look like tampering.
#[derive(Debug, Clone)]
pub struct AuditSnapshot {
    pub entries: Vec<StoredEntry>,
    /// The kept checkpoints in size order, ending with the latest.
    pub checkpoints: Vec<String>,
    /// The stored tree row (size, frontier, root) and its latest checkpoint.
    pub tree: Option<(StoredTree, String)>,
}

const SNAPSHOT_ENTRIES: &str = "SELECT idx, entry, leaf_hash FROM audit_entries ORDER BY idx";
const SNAPSHOT_HISTORY: &str = "SELECT note FROM audit_checkpoints ORDER BY size";
const SNAPSHOT_TREE: &str = "SELECT size, frontier, root, checkpoint FROM audit_tree WHERE id = 1";

type EntryRow = (i64, Vec<u8>, Vec<u8>);
type TreeRow = (i64, Vec<u8>, Vec<u8>, String);

/// Reads the whole audit log in one read-only transaction.
pub async fn audit_snapshot(db: &Database) -> Result<AuditSnapshot, StorageError> {
    // SQLite in WAL mode: a read transaction sees one snapshot from its first read on.
    // PostgreSQL: REPEATABLE READ gives the same for the whole transaction.
    let begin = match db {
        Database::Sqlite(_) => "BEGIN",
        Database::Postgres(_) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    };
    let (rows, history, tree): (Vec<EntryRow>, Vec<String>, Option<TreeRow>) =
        on_each_engine!(db, Database, |pool| {
            let mut tx = pool.begin_with(begin).await?;
            let tree = sqlx::query_as(SNAPSHOT_TREE)
                .fetch_optional(&mut *tx)
                .await?;
            let rows = sqlx::query_as(SNAPSHOT_ENTRIES).fetch_all(&mut *tx).await?;
            let history = sqlx::query_scalar(SNAPSHOT_HISTORY)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            (rows, history, tree)
        });
    let entries = rows
        .into_iter()
        .map(|(idx, entry, leaf_hash)| {
            Ok(StoredEntry {
                idx: to_u64(idx)?,
                entry,
                leaf_hash,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    let tree = tree
        .map(|(size, frontier, root, note)| {
            Ok::<_, StorageError>((decode_tree(size, &frontier, &root)?, note))
        })
        .transpose()?;
    let mut checkpoints = history;
    if let Some((_, latest)) = &tree
        && checkpoints.last() != Some(latest)
    {
        checkpoints.push(latest.clone());
    }
    Ok(AuditSnapshot {
        entries,
        checkpoints,
        tree,
    })
}
