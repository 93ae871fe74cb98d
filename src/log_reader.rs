//! Reads over this node's own audit log for auditors and peers, in bounded memory: filtered
//! pages of decoded entries, and inclusion and consistency proofs for any tree size.
//!
//! Proofs are planned as leaf ranges (`audit::merkle::*_proof_ranges`) and each range's tree
//! hash is computed while its stored leaf hashes stream by in chunks of [`LEAF_CHUNK`], so a
//! proof holds O(log n) hashes plus one chunk whatever the log's size (it reads O(n) leaf
//! hashes: the node keeps no interior nodes). Entries are decoded (`audit::entry::decode`) in
//! index order, [`ENTRY_CHUNK`] at a time, and a page scans at most [`SCAN_BUDGET`] entries, so
//! a search for something rare answers in bounded time with a cursor to continue from. No HTTP
//! here, and no SQL: the ranges come from `storage`.

use crate::audit::entry::{self, Decision, DecodedEntry, EntryError};
use crate::audit::merkle::{self, Frontier, Hash};
use crate::domain::OrgId;
use crate::storage::{self, Database, StorageError};
use std::ops::Range;
use time::OffsetDateTime;

/// Leaf hashes read per query while hashing a range (2 MiB).
pub const LEAF_CHUNK: u64 = 65_536;
/// Entries read and decoded per query while filtering (at most 16 MiB of 64 KiB entries).
pub const ENTRY_CHUNK: u32 = 256;
/// The most entries one page scans; a page that stops here says where to continue.
pub const SCAN_BUDGET: u64 = 100_000;

/// Why the log could not be read as asked. Causes are for logs.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("the range {start}..{end} is not in a tree of {size} entries")]
    Range { start: u64, end: u64, size: u64 },
    #[error("the stored entry {index} does not decode ({source}); run `audit verify`")]
    Entry {
        index: u64,
        #[source]
        source: EntryError,
    },
    #[error("the stored entry at {stored} claims index {claimed}; run `audit verify`")]
    Misplaced { stored: u64, claimed: u64 },
}

/// MTH of the stored leaves `range` (RFC 6962 §2.1), streaming their hashes in chunks.
pub async fn range_root(db: &Database, range: Range<u64>) -> Result<Hash, ReadError> {
    let mut frontier = Frontier::new();
    let mut start = range.start;
    while start < range.end {
        let end = range.end.min(start.saturating_add(LEAF_CHUNK));
        for leaf in storage::audit_leaf_hash_range(db, start, end).await? {
            frontier.push(leaf);
        }
        start = end;
    }
    Ok(frontier.root())
}

async fn hash_ranges(db: &Database, ranges: Vec<Range<u64>>) -> Result<Vec<Hash>, ReadError> {
    let mut proof = Vec::with_capacity(ranges.len());
    for range in ranges {
        proof.push(range_root(db, range).await?);
    }
    Ok(proof)
}

/// The inclusion proof of entry `index` in the tree of the first `size` entries.
pub async fn inclusion_proof(db: &Database, index: u64, size: u64) -> Result<Vec<Hash>, ReadError> {
    let ranges = merkle::inclusion_proof_ranges(size, index).ok_or(ReadError::Range {
        start: index,
        end: index.saturating_add(1),
        size,
    })?;
    hash_ranges(db, ranges).await
}

/// The consistency proof from the tree of `old_size` entries to the tree of `new_size`.
pub async fn consistency_proof(
    db: &Database,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ReadError> {
    let ranges = merkle::consistency_proof_ranges(old_size, new_size).ok_or(ReadError::Range {
        start: old_size,
        end: new_size,
        size: new_size,
    })?;
    hash_ranges(db, ranges).await
}

/// What an auditor looks for. Identifier searches hold the HMACs of the values asked for, made
/// with this node's key, and match the entry's stored HMACs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Entries at or after this instant.
    pub from: Option<OffsetDateTime>,
    /// Entries strictly before this instant.
    pub to: Option<OffsetDateTime>,
    pub peer: Option<OrgId>,
    pub action: Option<String>,
    pub decision: Option<Decision>,
    pub consent_hmac: Option<String>,
    /// The HMAC of a pairwise subject reference (`subject`) or of a local subject key
    /// (`local-subject`): both are kept in the entry's `subject_hmac`.
    pub subject_hmac: Option<String>,
    pub message_hmac: Option<String>,
    pub actor_hmac: Option<String>,
}

fn same(wanted: Option<&str>, found: Option<&str>) -> bool {
    wanted.is_none_or(|wanted| found == Some(wanted))
}

impl EntryFilter {
    /// Whether the entry matches every condition set. An entry whose time does not parse
    /// matches no time range.
    pub fn matches(&self, entry: &DecodedEntry) -> bool {
        let record = &entry.record;
        if self.from.is_some() || self.to.is_some() {
            let Ok(at) =
                OffsetDateTime::parse(&record.time, &time::format_description::well_known::Rfc3339)
            else {
                return false;
            };
            if self.from.is_some_and(|from| at < from) || self.to.is_some_and(|to| at >= to) {
                return false;
            }
        }
        same(
            self.peer.as_ref().map(OrgId::as_str),
            record.peer.as_deref(),
        ) && same(self.action.as_deref(), Some(record.action.as_str()))
            && self
                .decision
                .is_none_or(|decision| record.decision == Some(decision))
            && same(self.consent_hmac.as_deref(), record.consent_hmac.as_deref())
            && same(self.subject_hmac.as_deref(), record.subject_hmac.as_deref())
            && same(
                self.message_hmac.as_deref(),
                record.message_id_hmac.as_deref(),
            )
            && same(
                self.actor_hmac.as_deref(),
                record.actor.as_ref().map(|a| a.id_hmac.as_str()),
            )
    }
}

/// One page of matching entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPage {
    pub entries: Vec<DecodedEntry>,
    /// Where the next page starts (pass it as `after`): the last entry returned when the page
    /// is full, or the last entry scanned when the scan budget ran out. `None` when the scan
    /// reached `end`.
    pub next: Option<u64>,
}

/// Up to `limit` entries matching `filter` among the entries after index `after` (from the
/// first without it) and before `end`, in index order.
pub async fn filtered_entries(
    db: &Database,
    filter: &EntryFilter,
    after: Option<u64>,
    end: u64,
    limit: usize,
) -> Result<EntryPage, ReadError> {
    let mut start = after.map_or(0, |a| a.saturating_add(1));
    let budget_end = end.min(start.saturating_add(SCAN_BUDGET));
    let mut entries = Vec::new();
    while start < budget_end {
        let chunk = storage::audit_entry_range(db, start, budget_end, ENTRY_CHUNK).await?;
        let Some(last) = chunk.last().map(|e| e.idx) else {
            break;
        };
        for stored in chunk {
            let decoded = entry::decode(&stored.entry).map_err(|source| ReadError::Entry {
                index: stored.idx,
                source,
            })?;
            if decoded.idx != stored.idx {
                return Err(ReadError::Misplaced {
                    stored: stored.idx,
                    claimed: decoded.idx,
                });
            }
            if filter.matches(&decoded) {
                entries.push(decoded);
                if entries.len() >= limit {
                    return Ok(EntryPage {
                        entries,
                        next: Some(stored.idx),
                    });
                }
            }
        }
        start = last.saturating_add(1);
    }
    let next = (budget_end < end).then(|| budget_end.saturating_sub(1));
    Ok(EntryPage { entries, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entry::{ActorRecord, AuditRecord};

    fn entry(time: &str, action: &str, decision: Decision, peer: Option<&str>) -> DecodedEntry {
        DecodedEntry {
            idx: 0,
            hmac_key: None,
            record: AuditRecord {
                time: time.into(),
                action: action.into(),
                decision: Some(decision),
                peer: peer.map(str::to_owned),
                consent_hmac: Some("c1".into()),
                actor: Some(ActorRecord {
                    id_hmac: "a1".into(),
                    role: None,
                }),
                ..AuditRecord::default()
            },
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn every_condition_must_hold_and_time_ranges_are_half_open() {
        let e = entry(
            "2026-11-22T12:00:00.000Z",
            "federation.envelope",
            Decision::Permit,
            Some("red-barnet"),
        );
        assert!(EntryFilter::default().matches(&e));
        let mut f = EntryFilter {
            from: Some(at("2026-11-22T12:00:00Z")),
            to: Some(at("2026-11-22T12:00:00.001Z")),
            ..EntryFilter::default()
        };
        assert!(f.matches(&e));
        f.to = Some(at("2026-11-22T13:00:00+01:00"));
        assert!(!f.matches(&e), "`to` is exclusive, in any offset");
        let peer = |p: &str| EntryFilter {
            peer: Some(p.parse().unwrap()),
            ..EntryFilter::default()
        };
        assert!(peer("red-barnet").matches(&e));
        assert!(!peer("herning-kommune").matches(&e));
        let decision = |d| EntryFilter {
            decision: Some(d),
            ..EntryFilter::default()
        };
        assert!(decision(Decision::Permit).matches(&e));
        assert!(!decision(Decision::Deny).matches(&e));
        let hmacs = EntryFilter {
            consent_hmac: Some("c1".into()),
            actor_hmac: Some("a1".into()),
            ..EntryFilter::default()
        };
        assert!(hmacs.matches(&e));
        let other = EntryFilter {
            subject_hmac: Some("s1".into()),
            ..hmacs
        };
        assert!(!other.matches(&e), "an entry without a subject HMAC");
        let bad_time = entry("yesterday", "x", Decision::Deny, None);
        assert!(EntryFilter::default().matches(&bad_time));
        assert!(
            !EntryFilter {
                from: Some(at("2026-11-22T12:00:00Z")),
                ..EntryFilter::default()
            }
            .matches(&bad_time)
        );
    }
}
