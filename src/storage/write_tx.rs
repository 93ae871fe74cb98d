//! The transaction of one group commit, and the handle the audit writer opens it through.
//!
//! On SQLite the writer has a connection of its own, driven synchronously (rusqlite) on the
//! writer's own thread: through sqlx every statement is a hand-off to the driver's thread and
//! back, which costs more than the statement itself (DESIGN §11), and a group commit runs
//! several statements per message. Synchronously, a row is a prepared statement's step, and
//! the commit's only wait is its fsync. On PostgreSQL the writer commits through the node's
//! pool; the transaction first takes the audit advisory lock, so replicas append one after the
//! other.
//!
//! Every `WriteTx` method has one arm per engine. The SQLite arms run no `.await`, so the
//! writer's thread is never handed to anything else in the middle of a commit.
//!
//! SQLite's WAL is copied back into the database file (checkpointed) by a thread of its own,
//! `brobygger-checkpointer`, at most a few times a second, instead of by whichever commit
//! crosses SQLite's threshold: a commit then never waits for a checkpoint, and a page that
//! many commits rewrote (the right edge of every table and index) is copied once per
//! checkpoint, not once per thousand frames. Only a checkpoint that copied *every* frame lets
//! the next transaction start the WAL over from its beginning, and under load the writer has
//! always committed more by the time the checkpointer is done; so once the WAL is long, the
//! writer copies the last few frames itself, between two commits (see `WAL_RESTART_FRAMES`).

use super::StorageError;
use sqlx::postgres::PgPool;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The advisory lock every audit append takes on PostgreSQL ("audit" in ASCII).
const AUDIT_LOCK_KEY: i64 = 0x0061_7564_6974;

/// The page cache of the SQLite writer's connection, in KiB: the pages a whole group commit
/// touches stay cached between commits.
const WRITER_CACHE_KIB: i64 = 8 * 1024;

/// Prepared statements the SQLite writer keeps (every statement of the write path fits).
const WRITER_STATEMENTS: usize = 64;

/// How long a statement waits for SQLite's write lock, which delivery bookkeeping on the
/// node's pool can hold for a moment.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often, at most, the checkpointer copies the WAL back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// The WAL's size, in bytes, above which it is truncated once it has been checkpointed (it is
/// otherwise reused from its start, whatever its size).
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// WAL frames (pages) past which the writer completes the checkpoint itself before its next
/// transaction, so that the transaction starts the WAL over (16 MiB of 4 KiB pages).
const WAL_RESTART_FRAMES: i64 = 4_096;

/// What the audit writer commits through.
pub enum WriterDb {
    Sqlite(SqliteWriter),
    Postgres(PgPool),
}

/// The SQLite writer's own connection, opened at the first commit (and again after a failure
/// to open it), so that a node starts the same way whether or not the file is reachable yet.
pub struct SqliteWriter {
    path: PathBuf,
    connection: Option<rusqlite::Connection>,
    /// Wakes the checkpointer after a commit; the checkpointer ends when this is dropped.
    checkpointer: Option<std::sync::mpsc::SyncSender<()>>,
    /// Set by the checkpointer when the WAL is long: the writer then completes the checkpoint
    /// before its next transaction.
    restart_wanted: Arc<AtomicBool>,
}

impl SqliteWriter {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            connection: None,
            checkpointer: None,
            restart_wanted: Arc::new(AtomicBool::new(false)),
        }
    }

    fn connection(&mut self) -> Result<&mut rusqlite::Connection, StorageError> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                let connection = open_writer(&self.path)?;
                if self.checkpointer.is_none() {
                    self.checkpointer =
                        Some(start_checkpointer(&self.path, self.restart_wanted.clone())?);
                }
                connection
            }
        };
        Ok(self.connection.insert(connection))
    }

    fn begin(&mut self) -> Result<SqliteTx<'_>, StorageError> {
        // Open first: a connection that cannot be opened leaves the request for later.
        self.connection()?;
        let SqliteWriter {
            connection,
            checkpointer,
            restart_wanted,
            ..
        } = self;
        let connection = connection
            .as_mut()
            .ok_or_else(|| StorageError::Invariant("the writer's connection is gone".into()))?;
        if restart_wanted.swap(false, Ordering::Relaxed) {
            // The writer commits nothing between this checkpoint and the transaction below
            // (the pool's rare bookkeeping writes aside), so the checkpoint copies every frame
            // (the checkpointer copied most of them already), and the transaction starts the
            // WAL over (unless a reader still reads an older snapshot from it; then the
            // checkpointer asks again).
            if let Err(e) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "completing the WAL checkpoint failed");
            }
        }
        connection.execute_batch("BEGIN IMMEDIATE")?;
        Ok(SqliteTx {
            connection,
            checkpointer: checkpointer.as_ref(),
        })
    }
}

/// Starts the thread that checkpoints the WAL after commits, at most every
/// [`CHECKPOINT_INTERVAL`], on a connection of its own. A PASSIVE checkpoint never waits for
/// the writer or a reader: it copies what it can, and the rest goes at the next one. When the
/// WAL holds [`WAL_RESTART_FRAMES`] or more, it sets `restart_wanted` for the writer.
fn start_checkpointer(
    path: &Path,
    restart_wanted: Arc<AtomicBool>,
) -> Result<std::sync::mpsc::SyncSender<()>, StorageError> {
    let connection = open_direct(path)?;
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("brobygger-checkpointer".into())
        .spawn(move || {
            // Ends when the writer's handle is dropped.
            while woken.recv().is_ok() {
                std::thread::sleep(CHECKPOINT_INTERVAL);
                while woken.try_recv().is_ok() {}
                // (busy, frames in the WAL, frames copied back)
                match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    row.get::<_, i64>(1)
                }) {
                    Ok(frames) if frames >= WAL_RESTART_FRAMES => {
                        restart_wanted.store(true, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "checkpointing the WAL failed; trying again after the next commit");
                    }
                }
            }
        })
        .map_err(|e| StorageError::Connect(format!("cannot start the WAL checkpointer: {e}")))?;
    Ok(wake)
}

/// Opens a connection of this process's own to the node's database (the writer's, the
/// checkpointer's, admission's readers'). The file exists: the node's pool created and
/// migrated it.
pub(super) fn open_direct(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    use rusqlite::OpenFlags;
    let opened = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StorageError::Connect(format!("{}: {e}", path.display())))?;
    opened.busy_timeout(BUSY_TIMEOUT)?;
    Ok(opened)
}

/// Opens the writer's connection with the node's durability settings.
fn open_writer(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    let opened = open_direct(path)?;
    // `synchronous` and `foreign_keys` belong to the connection, not the file: set them here
    // exactly as the pool does, and check that they took.
    opened.pragma_update(None, "synchronous", "FULL")?;
    opened.pragma_update(None, "foreign_keys", "ON")?;
    opened.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    // The checkpointer thread copies the WAL back, not the commits (see the module comment).
    opened.pragma_update(None, "wal_autocheckpoint", 0)?;
    opened.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    opened.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    let journal: String = opened.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    let synchronous: i64 = opened.query_row("PRAGMA synchronous", [], |row| row.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") || synchronous != 2 {
        return Err(StorageError::Invariant(format!(
            "the writer's connection runs journal_mode={journal}, synchronous={synchronous}; \
             it must be wal and 2 (FULL)"
        )));
    }
    Ok(opened)
}

impl WriterDb {
    /// Begins the transaction of a group commit. SQLite takes its write lock at once
    /// (`BEGIN IMMEDIATE`); PostgreSQL takes the audit advisory lock for the transaction.
    pub async fn begin_write(&mut self) -> Result<WriteTx<'_>, StorageError> {
        match self {
            WriterDb::Sqlite(writer) => Ok(WriteTx::Sqlite(writer.begin()?)),
            WriterDb::Postgres(pool) => {
                // READ COMMITTED explicitly: each statement then sees what committed before it,
                // so the tree re-read after the lock is current whatever the server default.
                let mut tx = pool
                    .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
                    .await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(AUDIT_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
                Ok(WriteTx::Postgres(tx))
            }
        }
    }

    /// SQLite's `PRAGMA synchronous` on the writer's own connection (2 = FULL), opening it if
    /// needed; `None` on PostgreSQL.
    pub fn sqlite_synchronous(&mut self) -> Result<Option<i64>, StorageError> {
        match self {
            WriterDb::Sqlite(writer) => Ok(Some(writer.connection()?.query_row(
                "PRAGMA synchronous",
                [],
                |row| row.get(0),
            )?)),
            WriterDb::Postgres(_) => Ok(None),
        }
    }

    /// Whether commits run synchronously on the caller's thread (SQLite): the writer then
    /// needs a thread of its own.
    pub fn is_synchronous(&self) -> bool {
        matches!(self, WriterDb::Sqlite(_))
    }
}

/// The transaction of one group commit.
pub enum WriteTx<'a> {
    Sqlite(SqliteTx<'a>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// An open SQLite write transaction on the writer's connection; rolled back if dropped before
/// its commit.
pub struct SqliteTx<'a> {
    connection: &'a mut rusqlite::Connection,
    /// Woken after the commit: the WAL grew.
    checkpointer: Option<&'a std::sync::mpsc::SyncSender<()>>,
}

impl SqliteTx<'_> {
    /// A statement from the connection's cache of prepared statements. The SQL may use
    /// PostgreSQL's `$1` parameters (one text for both engines): they become SQLite's `?1`,
    /// which binds by number. (SQLite reads `$1` as a *named* parameter and numbers those in
    /// order of first appearance, so `SET a = $2 WHERE b = $1` would bind the wrong values.)
    pub(super) fn prepare(&self, sql: &str) -> Result<rusqlite::CachedStatement<'_>, StorageError> {
        Ok(self.connection.prepare_cached(&numbered_parameters(sql))?)
    }
}

/// `sql` with every `$` that starts a parameter number written as `?` (see [`SqliteTx::prepare`]).
fn numbered_parameters(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains('$') {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        // A transaction abandoned on an error: nothing of it stays. (After a COMMIT, or a failed
        // one that ended the transaction itself, there is nothing to roll back.)
        if !self.connection.is_autocommit()
            && let Err(e) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rolling back the writer's transaction failed");
        }
    }
}

impl WriteTx<'_> {
    /// Commits: on SQLite with `synchronous=FULL` this is the one fsync of the group commit.
    pub async fn commit(self) -> Result<(), StorageError> {
        match self {
            WriteTx::Sqlite(tx) => {
                tx.connection.execute_batch("COMMIT")?;
                if let Some(wake) = tx.checkpointer {
                    // A wake-up already waiting covers this commit too.
                    let _ = wake.try_send(());
                }
            }
            WriteTx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::numbered_parameters;

    #[test]
    fn postgres_parameters_become_numbered_sqlite_parameters() {
        assert_eq!(
            numbered_parameters("UPDATE t SET a = $2, b = $10 WHERE c = $1"),
            "UPDATE t SET a = ?2, b = ?10 WHERE c = ?1"
        );
        assert_eq!(numbered_parameters("SELECT 1"), "SELECT 1");
        assert_eq!(numbered_parameters("SELECT '$x'"), "SELECT '$x'");
    }
}
