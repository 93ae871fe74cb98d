//! Checkpoint hand-off: this node keeps the latest checkpoint of every peer's audit log that it
//! verified, and raises an alarm when a peer's log ever fails to extend it (DESIGN §7: what
//! protects a log against its own operator is that its checkpoints leave the node).
//!
//! Two sources feed it. The delivery worker hands over the checkpoint of every receipt it
//! verified ([`observe_receipt`]): the first one of a peer is stored, one of the same size must
//! have the same root, and a newer one waits (in memory) until the peer proves it extends the
//! stored one. The poller ([`run`], every [`POLL_INTERVAL`]; [`poll_peer_checkpoints_once`] for
//! one round) asks each member for `GET /fed/v1/checkpoint?since=<stored size>` and checks the
//! signature with the member's audit key from the manifest and the consistency proof from the
//! stored checkpoint; then it checks a waiting receipt checkpoint against the new one the same
//! way (`?since=<its size>&size=<new size>`).
//!
//! [`judge`] is the pure decision. An alarm is raised once per peer in the table, with the
//! conflicting signed checkpoint kept beside the stored one as evidence; raising it logs at
//! error level, counts in [`PeerLogs::alarms_raised`], is audited, and shows in `/readyz` as a
//! warning (the node stays ready: its own log is fine). A peer that cannot be reached, or
//! answers something that does not parse or verify, is not an alarm: nothing was proven.

use crate::audit::checkpoint::{Checkpoint, CheckpointError, TreeHead};
use crate::audit::entry::Decision;
use crate::audit::merkle::{self, Hash};
use crate::audited;
use crate::domain::OrgId;
use crate::federation::{self, CheckpointAnswerV1, PeerError};
use crate::node::NodeState;
use crate::signed_note::VerifierKey;
use crate::storage::{self, NewPeerCheckpoint, StorageError};
use actix_web::web;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often the poller asks every member for its latest checkpoint.
pub const POLL_INTERVAL: Duration = Duration::from_secs(60);

// ----- The pure decision. -----

/// Where a checkpoint of a peer's log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed<'a> {
    /// In a receipt: some checkpoint the peer signed, not necessarily its latest, and no proof.
    Receipt,
    /// The peer's answer to a checkpoint request: the checkpoint it claims extends the stored
    /// one, with the consistency proof from the stored size to its size.
    Answer { proof: &'a [Hash] },
}

/// How a peer's log failed to extend what it showed before. Each is a reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inconsistency {
    /// A signed checkpoint of the stored size with another root: two logs under one key.
    Forked,
    /// The peer's latest checkpoint is smaller than one it signed before.
    Truncated,
    /// The consistency proof does not show the stored tree as a prefix of the new one.
    NotExtended,
}

impl Inconsistency {
    pub const ALL: [Inconsistency; 3] = [
        Inconsistency::Forked,
        Inconsistency::Truncated,
        Inconsistency::NotExtended,
    ];

    /// The stable reason code (documented in docs/reason-codes.md, "Audit").
    pub const fn code(self) -> &'static str {
        match self {
            Inconsistency::Forked => "peer-log-forked",
            Inconsistency::Truncated => "peer-log-truncated",
            Inconsistency::NotExtended => "peer-log-inconsistent",
        }
    }
}

/// What a checkpoint means next to the one stored for its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing was stored: this checkpoint is the first known.
    First,
    /// The same size and root as stored.
    Unchanged,
    /// Larger, and the proof shows the stored tree is its prefix: it replaces the stored one.
    Extends,
    /// Larger, seen in a receipt: adopted only once the peer proves it extends the stored one.
    NeedsProof,
    /// Smaller, seen in a receipt (receipts may arrive out of order): proves nothing new.
    Older,
    /// The peer's log does not extend what it showed before: raise the alarm.
    Inconsistent(Inconsistency),
}

/// Decides what `new` (already opened with the peer's key) means next to the `stored` head.
/// Pure; `Observed::Answer` proofs are checked with `merkle::verify_consistency`.
pub fn judge(stored: Option<&TreeHead>, new: &TreeHead, observed: Observed<'_>) -> Verdict {
    let Some(stored) = stored else {
        return Verdict::First;
    };
    if new.size == stored.size {
        return if new.root == stored.root {
            Verdict::Unchanged
        } else {
            Verdict::Inconsistent(Inconsistency::Forked)
        };
    }
    match observed {
        Observed::Receipt if new.size < stored.size => Verdict::Older,
        Observed::Receipt => Verdict::NeedsProof,
        Observed::Answer { .. } if new.size < stored.size => {
            Verdict::Inconsistent(Inconsistency::Truncated)
        }
        Observed::Answer { proof } => {
            if merkle::verify_consistency(stored.size, new.size, &stored.root, &new.root, proof) {
                Verdict::Extends
            } else {
                Verdict::Inconsistent(Inconsistency::NotExtended)
            }
        }
    }
}

// ----- Answers from peers: wire to domain, once. -----

/// Why a peer's answer proves nothing (not an alarm).
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("the checkpoint does not open with the peer's audit key: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the consistency proof is missing or not for {old_size} to {new_size}")]
    ProofSizes { old_size: u64, new_size: u64 },
    #[error("a proof hash is not 32 bytes of lowercase hex")]
    ProofHash,
}

/// A peer's checkpoint answer, opened: the verified checkpoint and the proof hashes.
#[derive(Debug, Clone)]
struct PeerAnswer {
    head: TreeHead,
    note: String,
    /// The consistency proof from the size asked for, if one was needed.
    proof: Vec<Hash>,
}

/// Opens an answer: the checkpoint must verify with `key`; when the caller holds a checkpoint
/// of size `since` and the answer is not smaller, the proof must run from `since` to `to`
/// (default: the answer's own size). A smaller answer needs no proof: it is evidence itself.
fn open_answer(
    answer: CheckpointAnswerV1,
    key: &VerifierKey,
    since: Option<u64>,
    to: Option<u64>,
) -> Result<PeerAnswer, AnswerError> {
    let checkpoint = Checkpoint::open(&answer.checkpoint, key)?;
    let head = checkpoint.head;
    let new_size = to.unwrap_or(head.size);
    let proof = match since {
        Some(old_size) if old_size <= new_size => {
            let consistency = answer
                .consistency
                .filter(|c| c.old_size == old_size && c.new_size == new_size)
                .ok_or(AnswerError::ProofSizes { old_size, new_size })?;
            consistency
                .proof
                .iter()
                .map(|h| {
                    let mut hash = [0u8; 32];
                    let lowercase = h.bytes().all(|b| !b.is_ascii_uppercase());
                    hex::decode_to_slice(h, &mut hash)
                        .ok()
                        .filter(|()| lowercase)
                        .map(|()| hash)
                        .ok_or(AnswerError::ProofHash)
                })
                .collect::<Result<Vec<Hash>, _>>()?
        }
        _ => Vec::new(),
    };
    Ok(PeerAnswer {
        head,
        note: answer.checkpoint,
        proof,
    })
}

// ----- State shared by the node. -----

/// A receipt checkpoint newer than the stored one, waiting for a proof from the peer.
#[derive(Debug, Clone)]
struct Pending {
    head: TreeHead,
    note: String,
}

/// What this process knows of its peers' logs beyond the table: a cache of the stored heads,
/// the receipt checkpoints waiting for a proof, and the alarm counter.
#[derive(Debug, Default)]
pub struct PeerLogs {
    known: Mutex<HashMap<OrgId, TreeHead>>,
    pending: Mutex<HashMap<OrgId, Pending>>,
    /// Peers whose alarm this process has logged.
    reported: Mutex<HashSet<OrgId>>,
    alarms: AtomicU64,
    /// One poll round at a time (the poller's and a triggered one).
    round: tokio::sync::Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PeerLogs {
    /// How many alarms this process raised (each peer's log at most once), for tests and
    /// metrics.
    pub fn alarms_raised(&self) -> u64 {
        self.alarms.load(Ordering::Relaxed)
    }

    /// The size of the receipt checkpoint of `peer` waiting for a proof, if any.
    pub fn pending_size(&self, peer: &OrgId) -> Option<u64> {
        lock(&self.pending).get(peer).map(|p| p.head.size)
    }

    fn known(&self, peer: &OrgId) -> Option<TreeHead> {
        lock(&self.known).get(peer).copied()
    }

    fn set_known(&self, peer: &OrgId, head: TreeHead) {
        lock(&self.known).insert(peer.clone(), head);
    }

    fn forget(&self, peer: &OrgId) {
        lock(&self.known).remove(peer);
    }

    /// Keeps the larger of the waiting checkpoint and `pending`.
    fn wait_for_proof(&self, peer: &OrgId, pending: Pending) {
        let mut waiting = lock(&self.pending);
        if waiting
            .get(peer)
            .is_none_or(|p| p.head.size < pending.head.size)
        {
            waiting.insert(peer.clone(), pending);
        }
    }

    fn take_pending(&self, peer: &OrgId) -> Option<Pending> {
        lock(&self.pending).remove(peer)
    }
}

/// Why a poll of one peer proved nothing.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("`{0}` is not a current member")]
    NotMember(OrgId),
    #[error("{0}")]
    Peer(#[from] PeerError),
    #[error("{0}")]
    Answer(#[from] AnswerError),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

fn stored_head(stored: &storage::PeerCheckpoint) -> TreeHead {
    TreeHead {
        size: stored.size,
        root: stored.root,
    }
}

fn audit_key(state: &NodeState, peer: &OrgId) -> Option<VerifierKey> {
    state
        .manifest
        .snapshot()
        .member(peer)
        .map(|m| m.audit_key.clone())
}

/// Stores `new` in place of `stored` (what it was verified against) and caches it.
async fn adopt(
    state: &NodeState,
    peer: &OrgId,
    stored: Option<&TreeHead>,
    new: &TreeHead,
    note: &str,
) -> Result<(), StorageError> {
    let stored_now = storage::advance_peer_checkpoint(
        &state.db,
        peer,
        stored.map(|s| (s.size, &s.root)),
        NewPeerCheckpoint {
            size: new.size,
            root: &new.root,
            note,
        },
        state.clock.now(),
    )
    .await?;
    if stored_now {
        state.peer_logs.set_known(peer, *new);
    } else {
        // Another replica, or a receipt, moved the row meanwhile: read it again next time.
        state.peer_logs.forget(peer);
    }
    Ok(())
}

/// Raises the alarm on `peer`'s log (once), keeping `conflicting` (the peer's signed
/// checkpoint that does not extend the stored one) as evidence.
async fn raise_alarm(
    state: &NodeState,
    peer: &OrgId,
    stored: &TreeHead,
    kind: Inconsistency,
    conflicting: &TreeHead,
    conflicting_note: &str,
) {
    let raised = match storage::raise_peer_log_alarm(
        &state.db,
        peer,
        kind.code(),
        conflicting_note,
        state.clock.now(),
    )
    .await
    {
        Ok(raised) => raised,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "could not record the alarm on a peer's log; checking again next round");
            return;
        }
    };
    let first_report = lock(&state.peer_logs.reported).insert(peer.clone());
    if raised {
        state.peer_logs.alarms.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            %peer,
            reason = kind.code(),
            stored_size = stored.size,
            stored_root = %hex::encode(stored.root),
            new_size = conflicting.size,
            new_root = %hex::encode(conflicting.root),
            "ALARM: the peer's audit log does not extend the checkpoint this node verified \
             before; both signed checkpoints are kept in peer_checkpoints as evidence"
        );
        let mut record = audited::record(
            state,
            "federation.peer-log",
            Decision::Deny,
            Some(kind.code()),
        );
        record.peer = Some(peer.to_string());
        if let Err(e) = state.audit.append(record).await {
            tracing::error!(%peer, error = %e, "could not audit the alarm on a peer's log");
        }
    } else if first_report {
        tracing::error!(
            %peer,
            "ALARM (raised before): the peer's audit log does not extend the checkpoint this \
             node verified; see peer_checkpoints"
        );
    }
}

/// Acts on a verdict about `new` (seen with `note`) against `stored`; returns the verdict.
async fn apply(
    state: &NodeState,
    peer: &OrgId,
    stored: Option<&TreeHead>,
    new: &TreeHead,
    note: &str,
    verdict: Verdict,
) -> Result<Verdict, StorageError> {
    match (verdict, stored) {
        (Verdict::First | Verdict::Extends, _) => adopt(state, peer, stored, new, note).await?,
        (Verdict::Unchanged, Some(stored)) => state.peer_logs.set_known(peer, *stored),
        (Verdict::NeedsProof, _) => state.peer_logs.wait_for_proof(
            peer,
            Pending {
                head: *new,
                note: note.to_owned(),
            },
        ),
        (Verdict::Inconsistent(kind), Some(stored)) => {
            raise_alarm(state, peer, stored, kind, new, note).await;
        }
        (Verdict::Unchanged | Verdict::Older | Verdict::Inconsistent(_), _) => {}
    }
    Ok(verdict)
}

/// The delivery worker verified a receipt of `peer` carrying `note`: stores its checkpoint if
/// none was known, compares one of the stored size, and keeps a newer one until the next poll
/// proves it. Never fails the delivery: problems are logged.
///
/// `new` is the head of `note`, which the caller opened (checked its signature) with the peer's
/// audit key while checking the receipts it came with (`receipt::OpenedCheckpoints`).
pub async fn observe_receipt(state: &NodeState, peer: &OrgId, note: &str, new: TreeHead) {
    // The common cases need no database: the same checkpoint again, an older one, or a newer
    // one to prove at the next poll.
    if let Some(known) = state.peer_logs.known(peer) {
        if new.size != known.size {
            let verdict = judge(Some(&known), &new, Observed::Receipt);
            if verdict == Verdict::NeedsProof {
                state.peer_logs.wait_for_proof(
                    peer,
                    Pending {
                        head: new,
                        note: note.to_owned(),
                    },
                );
            }
            return;
        }
        if new.root == known.root {
            return;
        }
    }
    let outcome = async {
        let stored = storage::peer_checkpoint(&state.db, peer)
            .await?
            .map(|s| stored_head(&s));
        let verdict = judge(stored.as_ref(), &new, Observed::Receipt);
        apply(state, peer, stored.as_ref(), &new, note, verdict).await
    }
    .await;
    if let Err(e) = outcome {
        tracing::warn!(%peer, error = %e, "could not record a peer's checkpoint from a receipt");
    }
}

/// One poll of one peer; the verdict on its latest checkpoint (or on a waiting receipt
/// checkpoint, if that one is the inconsistent one).
async fn poll_peer(state: &NodeState, peer: &OrgId) -> Result<Verdict, PollError> {
    // The waiting receipt checkpoint is taken before the peer is asked: every one seen by then
    // was signed before the peer answers, so its latest is at least as large. Taken after, one
    // signed meanwhile would look like a truncated log. If the poll proves nothing, it waits
    // again for the next one.
    let pending = state.peer_logs.take_pending(peer);
    let result = poll_peer_with(state, peer, pending.as_ref()).await;
    if result.is_err()
        && let Some(pending) = pending
    {
        state.peer_logs.wait_for_proof(peer, pending);
    }
    result
}

async fn poll_peer_with(
    state: &NodeState,
    peer: &OrgId,
    pending: Option<&Pending>,
) -> Result<Verdict, PollError> {
    let key = audit_key(state, peer).ok_or_else(|| PollError::NotMember(peer.clone()))?;
    let stored = storage::peer_checkpoint(&state.db, peer)
        .await?
        .map(|s| stored_head(&s));
    let since = stored.map(|s| s.size);
    let answer = federation::fetch_checkpoint(state, peer, since, None).await?;
    let latest = open_answer(answer, &key, since, None)?;
    let verdict = judge(
        stored.as_ref(),
        &latest.head,
        Observed::Answer {
            proof: &latest.proof,
        },
    );
    let verdict = apply(
        state,
        peer,
        stored.as_ref(),
        &latest.head,
        &latest.note,
        verdict,
    )
    .await?;
    let Some(pending) = pending else {
        return Ok(verdict);
    };
    if matches!(verdict, Verdict::Inconsistent(_)) {
        return Ok(verdict);
    }
    // The waiting receipt checkpoint must be a prefix of the latest (or be it).
    let proof = if pending.head.size < latest.head.size {
        let answer = federation::fetch_checkpoint(
            state,
            peer,
            Some(pending.head.size),
            Some(latest.head.size),
        )
        .await?;
        open_answer(
            answer,
            &key,
            Some(pending.head.size),
            Some(latest.head.size),
        )?
        .proof
    } else {
        Vec::new()
    };
    let pending_verdict = judge(
        Some(&pending.head),
        &latest.head,
        Observed::Answer { proof: &proof },
    );
    if let Verdict::Inconsistent(kind) = pending_verdict {
        // The peer signed `pending` in a receipt, and its latest log does not extend it.
        raise_alarm(
            state,
            peer,
            &latest.head,
            kind,
            &pending.head,
            &pending.note,
        )
        .await;
        return Ok(pending_verdict);
    }
    Ok(verdict)
}

/// One round: asks every other current member for its latest checkpoint and checks it against
/// the stored one. Returns each peer's verdict, or why nothing was proven.
pub async fn poll_peer_checkpoints_once(
    state: &NodeState,
) -> Vec<(OrgId, Result<Verdict, PollError>)> {
    let _round = state.peer_logs.round.lock().await;
    let manifest = state.manifest.snapshot();
    if manifest.is_expired(state.clock.now()) {
        return Vec::new();
    }
    let peers: Vec<OrgId> = manifest
        .members
        .keys()
        .filter(|org| **org != state.identity.org)
        .cloned()
        .collect();
    let results =
        futures_util::future::join_all(peers.iter().map(|peer| poll_peer(state, peer))).await;
    let outcomes: Vec<(OrgId, Result<Verdict, PollError>)> =
        peers.into_iter().zip(results).collect();
    for (peer, outcome) in &outcomes {
        if let Err(e) = outcome {
            tracing::debug!(%peer, error = %e, "checkpoint poll proved nothing");
        }
    }
    outcomes
}

/// The poller: one round every [`POLL_INTERVAL`] until stopped.
pub async fn run(state: web::Data<NodeState>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        poll_peer_checkpoints_once(&state).await;
    }
}

/// The `/readyz` warnings for peers whose log failed to extend what it showed before.
pub async fn readiness_warnings(state: &NodeState) -> Vec<String> {
    match storage::peer_checkpoints(&state.db).await {
        Ok(peers) => peers
            .into_iter()
            .filter_map(|p| {
                let alarm = p.alarm?;
                Some(format!(
                    "the audit log of peer `{}` does not extend the checkpoint of size {} this \
                     node verified before ({}, since {}): both signed checkpoints are kept as \
                     evidence; tell the federation operator",
                    p.peer, p.size, alarm.reason, alarm.at
                ))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: peer checkpoints could not be read");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{consistency_proof, leaf_hash, root};

    fn leaves(n: usize, salt: &str) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("{salt} {i}").as_bytes()))
            .collect()
    }

    fn head(leaves: &[Hash]) -> TreeHead {
        TreeHead {
            size: leaves.len() as u64,
            root: root(leaves),
        }
    }

    #[test]
    fn the_first_checkpoint_is_stored_whatever_its_source() {
        let log = leaves(5, "a");
        assert_eq!(judge(None, &head(&log), Observed::Receipt), Verdict::First);
        assert_eq!(
            judge(None, &head(&log), Observed::Answer { proof: &[] }),
            Verdict::First
        );
    }

    #[test]
    fn an_honest_log_that_grew_extends_the_stored_checkpoint() {
        let log = leaves(21, "a");
        for old in 1..=log.len() {
            let stored = head(&log[..old]);
            let proof = consistency_proof(&log, old).unwrap();
            let verdict = judge(
                Some(&stored),
                &head(&log),
                Observed::Answer { proof: &proof },
            );
            let expected = if old == log.len() {
                Verdict::Unchanged
            } else {
                Verdict::Extends
            };
            assert_eq!(verdict, expected, "from {old}");
        }
    }

    #[test]
    fn a_rewritten_entry_fails_the_proof() {
        let honest = leaves(12, "a");
        let mut rewritten = honest.clone();
        rewritten[3] = leaf_hash(b"edited");
        rewritten.extend(leaves(3, "more"));
        let stored = head(&honest[..8]);
        let proof = consistency_proof(&rewritten, 8).unwrap();
        assert_eq!(
            judge(
                Some(&stored),
                &head(&rewritten),
                Observed::Answer { proof: &proof }
            ),
            Verdict::Inconsistent(Inconsistency::NotExtended)
        );
        // An edit after the stored size is not this node's business: it never saw it.
        let mut later = honest.clone();
        later[10] = leaf_hash(b"edited");
        let proof = consistency_proof(&later, 8).unwrap();
        assert_eq!(
            judge(
                Some(&stored),
                &head(&later),
                Observed::Answer { proof: &proof }
            ),
            Verdict::Extends
        );
        // A proof for another tree, or a tampered proof, fails too.
        let mut tampered = consistency_proof(&honest, 8).unwrap();
        tampered[0][0] ^= 1;
        assert_eq!(
            judge(
                Some(&stored),
                &head(&honest),
                Observed::Answer { proof: &tampered }
            ),
            Verdict::Inconsistent(Inconsistency::NotExtended)
        );
    }

    #[test]
    fn the_same_size_must_have_the_same_root_from_either_source() {
        let honest = leaves(8, "a");
        let other = leaves(8, "b");
        for observed in [Observed::Receipt, Observed::Answer { proof: &[] }] {
            assert_eq!(
                judge(Some(&head(&honest)), &head(&honest), observed),
                Verdict::Unchanged
            );
            assert_eq!(
                judge(Some(&head(&honest)), &head(&other), observed),
                Verdict::Inconsistent(Inconsistency::Forked)
            );
        }
    }

    #[test]
    fn a_smaller_latest_checkpoint_is_truncation_but_an_older_receipt_is_not() {
        let log = leaves(10, "a");
        let stored = head(&log);
        let smaller = head(&log[..6]);
        assert_eq!(
            judge(Some(&stored), &smaller, Observed::Answer { proof: &[] }),
            Verdict::Inconsistent(Inconsistency::Truncated)
        );
        assert_eq!(
            judge(Some(&stored), &smaller, Observed::Receipt),
            Verdict::Older
        );
        assert_eq!(
            judge(Some(&smaller), &stored, Observed::Receipt),
            Verdict::NeedsProof
        );
    }

    #[test]
    fn reason_codes_are_distinct_and_prefixed() {
        let codes: HashSet<&str> = Inconsistency::ALL.iter().map(|i| i.code()).collect();
        assert_eq!(codes.len(), Inconsistency::ALL.len());
        assert!(codes.iter().all(|c| c.starts_with("peer-log-")));
    }

    #[test]
    fn answers_are_opened_with_the_key_and_their_proof_sizes_checked() {
        use crate::federation::ConsistencyProofV1;
        use crate::signed_note::{NoteSigner, generate_ed25519_pkcs8};
        let origin = "brobygger.test/red-barnet/audit";
        let signer = NoteSigner::from_pkcs8(origin, &generate_ed25519_pkcs8().unwrap()).unwrap();
        let log = leaves(9, "a");
        let note = Checkpoint {
            origin: origin.into(),
            head: head(&log),
        }
        .sign(&signer)
        .unwrap();
        let proof: Vec<String> = consistency_proof(&log, 4)
            .unwrap()
            .iter()
            .map(hex::encode)
            .collect();
        let answer = |old_size, proof: Vec<String>| CheckpointAnswerV1 {
            checkpoint: note.clone(),
            size: 9,
            root: hex::encode(root(&log)),
            consistency: Some(ConsistencyProofV1 {
                old_size,
                new_size: 9,
                proof,
            }),
        };
        let key = signer.verifier_key();
        let opened = open_answer(answer(4, proof.clone()), key, Some(4), None).unwrap();
        assert_eq!(opened.head, head(&log));
        assert_eq!(opened.proof, consistency_proof(&log, 4).unwrap());
        assert!(matches!(
            open_answer(answer(3, proof.clone()), key, Some(4), None),
            Err(AnswerError::ProofSizes { .. })
        ));
        let upper: Vec<String> = proof.iter().map(|h| h.to_uppercase()).collect();
        assert!(matches!(
            open_answer(answer(4, upper), key, Some(4), None),
            Err(AnswerError::ProofHash)
        ));
        let other = NoteSigner::from_pkcs8(origin, &generate_ed25519_pkcs8().unwrap()).unwrap();
        assert!(matches!(
            open_answer(
                answer(4, proof.clone()),
                other.verifier_key(),
                Some(4),
                None
            ),
            Err(AnswerError::Checkpoint(_))
        ));
        // An answer smaller than what the caller holds needs no proof: it is evidence itself.
        let mut bare = answer(4, proof);
        bare.consistency = None;
        assert!(
            open_answer(bare, key, Some(12), None)
                .unwrap()
                .proof
                .is_empty()
        );
    }
}
