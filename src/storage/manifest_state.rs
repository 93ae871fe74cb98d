//! The highest accepted federation manifest (serial and content hash).

use super::{Database, StorageError};
use crate::manifest::AcceptedSerial;

pub async fn load_accepted_manifest(db: &Database) -> Result<Option<AcceptedSerial>, StorageError> {
    let row: Option<(i64, Vec<u8>)> = on_each_engine!(db, Database, |pool| {
        sqlx::query_as("SELECT serial, content_hash FROM manifest_state WHERE id = 1")
            .fetch_optional(pool)
            .await?
    });
    row.map(|(serial, hash)| {
        let serial = u64::try_from(serial)
            .map_err(|_| StorageError::Invariant(format!("stored serial {serial} is negative")))?;
        let content_hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| StorageError::Invariant("stored manifest hash is not 32 bytes".into()))?;
        Ok(AcceptedSerial {
            serial,
            content_hash,
        })
    })
    .transpose()
}

/// Records a newly accepted manifest. The statement itself refuses to lower the serial, so two
/// replicas reloading at once cannot roll each other back.
pub async fn store_accepted_manifest(
    db: &Database,
    accepted: AcceptedSerial,
) -> Result<(), StorageError> {
    let serial = i64::try_from(accepted.serial)
        .map_err(|_| StorageError::Invariant("manifest serial exceeds 2^63".into()))?;
    let hash = accepted.content_hash.to_vec();
    let rows = match db {
        Database::Sqlite(pool) => sqlx::query(
            "INSERT INTO manifest_state (id, serial, content_hash, accepted_at) \
             VALUES (1, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
             ON CONFLICT (id) DO UPDATE SET serial = excluded.serial, \
             content_hash = excluded.content_hash, accepted_at = excluded.accepted_at \
             WHERE excluded.serial > manifest_state.serial \
                OR (excluded.serial = manifest_state.serial AND excluded.content_hash = manifest_state.content_hash)",
        )
        .bind(serial)
        .bind(hash)
        .execute(pool)
        .await?
        .rows_affected(),
        Database::Postgres(pool) => sqlx::query(
            "INSERT INTO manifest_state (id, serial, content_hash, accepted_at) \
             VALUES (1, $1, $2, now()) \
             ON CONFLICT (id) DO UPDATE SET serial = excluded.serial, \
             content_hash = excluded.content_hash, accepted_at = excluded.accepted_at \
             WHERE excluded.serial > manifest_state.serial \
                OR (excluded.serial = manifest_state.serial AND excluded.content_hash = manifest_state.content_hash)",
        )
        .bind(serial)
        .bind(hash)
        .execute(pool)
        .await?
        .rows_affected(),
    };
    if rows == 0 {
        return Err(StorageError::Invariant(format!(
            "manifest serial {} is not above the stored one (or reuses it with other content)",
            accepted.serial
        )));
    }
    Ok(())
}
