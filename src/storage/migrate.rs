//! A small migration runner: ordered SQL files per engine, embedded in the binary, each applied
//! once in its own transaction and recorded with a checksum, so an edited migration is noticed.

use super::{Database, StorageError};

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../../migrations/sqlite/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "audit",
        sql: include_str!("../../migrations/sqlite/0002_audit.sql"),
    },
    Migration {
        version: 3,
        name: "consent_exchange",
        sql: include_str!("../../migrations/sqlite/0003_consent_exchange.sql"),
    },
    Migration {
        version: 4,
        name: "outbox",
        sql: include_str!("../../migrations/sqlite/0004_outbox.sql"),
    },
    Migration {
        version: 5,
        name: "consent_units",
        sql: include_str!("../../migrations/sqlite/0005_consent_units.sql"),
    },
    Migration {
        version: 6,
        name: "peer_checkpoints",
        sql: include_str!("../../migrations/sqlite/0006_peer_checkpoints.sql"),
    },
    Migration {
        version: 7,
        name: "consent_tombstones",
        sql: include_str!("../../migrations/sqlite/0007_consent_tombstones.sql"),
    },
    Migration {
        version: 8,
        name: "outbox_by_peer",
        sql: include_str!("../../migrations/sqlite/0008_outbox_by_peer.sql"),
    },
    Migration {
        version: 9,
        name: "compact_receipts",
        sql: include_str!("../../migrations/sqlite/0009_compact_receipts.sql"),
    },
    // SQLite only: PostgreSQL plans a constant `IN` list without a temporary table.
    Migration {
        version: 10,
        name: "outbox_status_check",
        sql: include_str!("../../migrations/sqlite/0010_outbox_status_check.sql"),
    },
];

const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../../migrations/postgres/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "audit",
        sql: include_str!("../../migrations/postgres/0002_audit.sql"),
    },
    Migration {
        version: 3,
        name: "consent_exchange",
        sql: include_str!("../../migrations/postgres/0003_consent_exchange.sql"),
    },
    Migration {
        version: 4,
        name: "outbox",
        sql: include_str!("../../migrations/postgres/0004_outbox.sql"),
    },
    Migration {
        version: 5,
        name: "consent_units",
        sql: include_str!("../../migrations/postgres/0005_consent_units.sql"),
    },
    Migration {
        version: 6,
        name: "peer_checkpoints",
        sql: include_str!("../../migrations/postgres/0006_peer_checkpoints.sql"),
    },
    Migration {
        version: 7,
        name: "consent_tombstones",
        sql: include_str!("../../migrations/postgres/0007_consent_tombstones.sql"),
    },
    Migration {
        version: 8,
        name: "outbox_by_peer",
        sql: include_str!("../../migrations/postgres/0008_outbox_by_peer.sql"),
    },
    Migration {
        version: 9,
        name: "compact_receipts",
        sql: include_str!("../../migrations/postgres/0009_compact_receipts.sql"),
    },
];

/// Replicas may start together: on PostgreSQL a session advisory lock makes them migrate one
/// after the other. The number is arbitrary but fixed ("bro" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x62726f;

fn checksum(sql: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, sql.as_bytes()))
}

pub(super) async fn run(db: &Database) -> Result<(), StorageError> {
    let fail = |e: sqlx::Error| StorageError::Migration(e.to_string());
    match db {
        Database::Sqlite(pool) => {
            let mut conn = pool.acquire().await.map_err(fail)?;
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, \
                 name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)",
            )
            .execute(&mut *conn)
            .await
            .map_err(fail)?;
            for m in SQLITE {
                let applied: Option<String> =
                    sqlx::query_scalar("SELECT checksum FROM schema_migrations WHERE version = ?")
                        .bind(m.version)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(fail)?;
                if check_applied(m, applied)? {
                    continue;
                }
                let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(fail)?;
                sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(fail)?;
                sqlx::query(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) \
                     VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                )
                .bind(m.version)
                .bind(m.name)
                .bind(checksum(m.sql))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
                tx.commit().await.map_err(fail)?;
            }
        }
        Database::Postgres(pool) => {
            let mut conn = pool.acquire().await.map_err(fail)?;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK_KEY)
                .execute(&mut *conn)
                .await
                .map_err(fail)?;
            let result = run_postgres(&mut conn).await;
            // Unlock whatever happened; the lock also ends with the session.
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK_KEY)
                .execute(&mut *conn)
                .await;
            result?;
        }
    }
    Ok(())
}

async fn run_postgres(conn: &mut sqlx::PgConnection) -> Result<(), StorageError> {
    let fail = |e: sqlx::Error| StorageError::Migration(e.to_string());
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
         name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&mut *conn)
    .await
    .map_err(fail)?;
    for m in POSTGRES {
        let applied: Option<String> =
            sqlx::query_scalar("SELECT checksum FROM schema_migrations WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut *conn)
                .await
                .map_err(fail)?;
        if check_applied(m, applied)? {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(fail)?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(fail)?;
        sqlx::query("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(checksum(m.sql))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
    }
    Ok(())
}

/// `true` if the migration is applied already; an error if it was applied with other content.
fn check_applied(m: &Migration, applied: Option<String>) -> Result<bool, StorageError> {
    match applied {
        None => Ok(false),
        Some(sum) if sum == checksum(m.sql) => Ok(true),
        Some(_) => Err(StorageError::Migration(format!(
            "migration {} ({}) was applied with different content than this build carries",
            m.version, m.name
        ))),
    }
}
