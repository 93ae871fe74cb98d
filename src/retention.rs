//! Retention: received messages are deleted when the retention their consent states for the
//! recipient has passed. Each purge that deletes anything is an audit entry, committed with the
//! deletion.

use crate::audit::entry::Decision;
use crate::audited;
use crate::node::NodeState;
use crate::write_path::{StateChange, WriteError};
use actix_web::web;
use std::time::Duration;
use tokio::sync::watch;

/// How often the node looks for received messages past their retention.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Deletes what is past its retention now; returns how many messages were deleted.
pub async fn purge_once(state: &NodeState) -> Result<u64, WriteError> {
    let now = state.clock.now();
    let due = crate::storage::expired_inbox_count(&state.db, now)
        .await
        .map_err(|e| WriteError::Storage(e.to_string()))?;
    if due == 0 {
        return Ok(0);
    }
    let record = audited::record(
        state,
        "retention.purge",
        Decision::Permit,
        Some("retention-expired"),
    );
    let (_, counts) = state
        .audit
        .append_with(record, vec![StateChange::purge_expired(now)])
        .await?;
    let deleted = counts.first().copied().unwrap_or(0);
    tracing::info!(
        deleted,
        "received messages past their retention were deleted"
    );
    Ok(deleted)
}

/// Purges at start and then every [`PURGE_INTERVAL`] until stopped.
pub async fn run(state: web::Data<NodeState>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = purge_once(&state).await {
            tracing::warn!(error = %e, "retention purge failed; trying again later");
        }
        tokio::select! {
            _ = tokio::time::sleep(PURGE_INTERVAL) => {}
            _ = stop.changed() => break,
        }
    }
}
