//! The transaction of one group commit, and the handle the audit writer opens it through.
//!
//! On SQLite the writer has a connection of its own, driven synchronously (rusqlite) on the
//! writer's own thread: through sqlx every statement is a hand-off to the driver's thread and
//! back, which costs more than the statement itself (DESIGN §11), and a group commit runs
//! several statements per message. Synchronously, a row is a prepared statement's step, and
//! the commit's only wait is its fsync. On PostgreSQL the writer uses its own small sqlx pool;
//! the transaction first takes the audit advisory lock, so replicas append one after the other.
//!
//! Every `WriteTx` method has one arm per engine. The SQLite arms run no `.await`, so the
//! writer's thread is never handed to anything else in the middle of a commit.

use super::StorageError;
use sqlx::postgres::PgPool;
use std::path::{Path, PathBuf};
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
}

impl SqliteWriter {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            connection: None,
        }
    }

    fn connection(&mut self) -> Result<&mut rusqlite::Connection, StorageError> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => open_writer(&self.path)?,
        };
        Ok(self.connection.insert(connection))
    }
}

/// Opens the writer's connection with the node's durability settings. The file exists: the
/// node's pool created and migrated it.
fn open_writer(path: &Path) -> Result<rusqlite::Connection, StorageError> {
    use rusqlite::OpenFlags;
    let opened = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StorageError::Connect(format!("{}: {e}", path.display())))?;
    opened.busy_timeout(BUSY_TIMEOUT)?;
    // `synchronous` and `foreign_keys` belong to the connection, not the file: set them here
    // exactly as the pool does, and check that they took.
    opened.pragma_update(None, "synchronous", "FULL")?;
    opened.pragma_update(None, "foreign_keys", "ON")?;
    opened.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
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
            WriterDb::Sqlite(writer) => {
                let connection = writer.connection()?;
                connection.execute_batch("BEGIN IMMEDIATE")?;
                Ok(WriteTx::Sqlite(SqliteTx {
                    connection,
                    open: true,
                }))
            }
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
    open: bool,
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
        // A transaction abandoned on an error: nothing of it stays. (A failed COMMIT may have
        // ended the transaction itself; then there is nothing to roll back.)
        if self.open
            && !self.connection.is_autocommit()
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
            WriteTx::Sqlite(mut tx) => {
                tx.connection.execute_batch("COMMIT")?;
                tx.open = false;
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
