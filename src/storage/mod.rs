//! Durable state through sqlx, on SQLite (the embedded default) or PostgreSQL.
//!
//! Invariant: this is the only module that speaks SQL; `federation` and `api` never do. Queries
//! are built at runtime (`query` + `bind`), one file per aggregate, with a migration folder per
//! engine under `migrations/`. SQLite runs in WAL mode with `synchronous=FULL`, so a commit is
//! on disk before it is acknowledged.

/// Runs the same sqlx expression on whichever pool (or transaction) the value holds. The two
/// arms are type-checked separately, once per engine, so the expression must yield the same
/// type on both (map engine-specific results, e.g. `rows_affected()`).
macro_rules! on_each_engine {
    ($value:expr, $ty:ident, |$binding:ident| $body:expr) => {
        match $value {
            $ty::Sqlite($binding) => $body,
            $ty::Postgres($binding) => $body,
        }
    };
}

// Statements built for a number of rows (multi-row inserts, `IN (...)` lists) are run with
// `persistent(false)`: each row count is another SQL text, and a cached prepared statement of
// a thousand rows holds hundreds of KiB in every pooled connection (about 60 MB of a node's
// resident memory in the load run). Preparing one costs far less than writing its rows.
mod audit;
mod audit_query;
mod consents;
mod lookups;
mod manifest_state;
mod messages;
mod migrate;
mod outbox;
mod peer_checkpoints;
mod write_tx;

pub use consents::{NewConsent, StoredConsent, StoredEvent, consent, consent_tombstoned, consents};
pub use lookups::{ConsentCache, Lookups};
pub use messages::{
    InboxFilter, InboxMessage, NewInboxMessage, ReceiptParts, RememberRow, RememberedAnswer,
    SeenMessage, SentMessage, SubjectStory, inbox_messages, inbox_page, seen_message,
    seen_messages, store_receipt, subject_story,
};

pub use write_tx::{SqliteTx, WriteTx, WriterDb};

pub use audit::{
    AuditSnapshot, StoredEntry, StoredTree, audit_checkpoints, audit_entries, audit_entry,
    audit_snapshot, audit_tree, latest_audit_checkpoint,
};
pub use audit_query::{audit_checkpoint_of_size, audit_entry_range, audit_leaf_hash_range};
pub use manifest_state::{load_accepted_manifest, store_accepted_manifest};
pub use outbox::{
    ClaimScope, ClaimedMessage, NewOutboxMessage, OutboxMessage, claim_due, consent_notices,
    expired_inbox_count, has_claimable_notice, mark_delivered_many, mark_refused, outbox_message,
    outbox_status_counts, release_claims_many, release_own_stale_claims,
};
pub use peer_checkpoints::{
    NewPeerCheckpoint, PeerCheckpoint, PeerLogAlarm, advance_peer_checkpoint, peer_checkpoint,
    peer_checkpoints, raise_peer_log_alarm,
};

use crate::config::{DatabaseConfig, DatabaseUrl};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

/// Storage failures. The inner text is for logs, never for a peer or a client.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the database: {0}")]
    Connect(String),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// An error of a connection this process drives itself (rusqlite): the SQLite writer's,
    /// the checkpointer's, admission's readers'.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("refused by a storage invariant: {0}")]
    Invariant(String),
    /// A read shared by several requests failed (each of them gets the cause as text).
    #[error("a shared database read failed: {0}")]
    SharedRead(String),
}

/// An instant as stored: RFC 3339 in UTC with exactly six fractional digits, so that stored
/// times compare correctly as text.
pub(crate) fn db_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// SQLite's soft limit on its own heap, in bytes (see `Database::open`).
const SQLITE_SOFT_HEAP_LIMIT: u64 = 16 * 1024 * 1024;

/// A connection pool on one of the two supported engines.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Database {
    /// The handle the audit writer commits through. On SQLite that is a connection of its
    /// own, driven synchronously (see `WriterDb`); it also keeps its page cache, which SQLite
    /// drops whenever another connection has written. PostgreSQL's handle is the pool itself.
    pub fn for_writer(&self) -> WriterDb {
        match self {
            Database::Sqlite(pool) => WriterDb::Sqlite(write_tx::SqliteWriter::new(
                pool.connect_options().get_filename(),
            )),
            Database::Postgres(pool) => WriterDb::Postgres(pool.clone()),
        }
    }

    /// Opens (and for SQLite creates) the database named in the configuration, then applies
    /// pending migrations.
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StorageError> {
        let db = match &config.url {
            DatabaseUrl::Sqlite(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StorageError::Connect(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10))
                    // SQLite's memory for the whole process (page caches of every pooled
                    // connection and prepared statements): past this it reuses its own pages
                    // instead of growing. The working set of the hot tables fits easily; the
                    // operating system's file cache holds the rest.
                    .pragma("soft_heap_limit", SQLITE_SOFT_HEAP_LIMIT.to_string());
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.max_connections)
                    .connect_with(options)
                    .await
                    .map_err(|e| StorageError::Connect(e.to_string()))?;
                Database::Sqlite(pool)
            }
            DatabaseUrl::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| StorageError::Connect(format!("invalid PostgreSQL URL: {e}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(|e| StorageError::Connect(e.to_string()))?;
                Database::Postgres(pool)
            }
        };
        migrate::run(&db).await?;
        Ok(db)
    }

    /// Opens an existing database for reading only: no file is created and no migration runs
    /// (for `audit verify` and `audit export`, which must change nothing).
    pub async fn open_read_only(config: &DatabaseConfig) -> Result<Self, StorageError> {
        match &config.url {
            DatabaseUrl::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(false)
                    .read_only(true)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .map_err(|e| StorageError::Connect(format!("{}: {e}", path.display())))?;
                Ok(Database::Sqlite(pool))
            }
            DatabaseUrl::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| StorageError::Connect(format!("invalid PostgreSQL URL: {e}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
                    .map_err(|e| StorageError::Connect(e.to_string()))?;
                Ok(Database::Postgres(pool))
            }
        }
    }

    pub fn engine(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }

    /// A round trip to the database, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        match self {
            Database::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?,
            Database::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?,
        }
        Ok(())
    }

    /// SQLite's `PRAGMA synchronous` (2 = FULL); `None` on PostgreSQL. Tests assert it.
    pub async fn sqlite_synchronous(&self) -> Result<Option<i64>, StorageError> {
        match self {
            Database::Sqlite(pool) => {
                let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(pool)
                    .await?;
                Ok(Some(level))
            }
            Database::Postgres(_) => Ok(None),
        }
    }

    /// SQLite's journal mode (`wal` expected); `None` on PostgreSQL.
    pub async fn sqlite_journal_mode(&self) -> Result<Option<String>, StorageError> {
        match self {
            Database::Sqlite(pool) => {
                let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(pool)
                    .await?;
                Ok(Some(mode))
            }
            Database::Postgres(_) => Ok(None),
        }
    }

    /// Waits for open connections to finish and closes the pool (at shutdown).
    pub async fn close(&self) {
        match self {
            Database::Sqlite(pool) => pool.close().await,
            Database::Postgres(pool) => pool.close().await,
        }
    }
}
