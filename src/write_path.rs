//! The one durable write path: a group-commit writer that owns every audit append.
//!
//! Callers hand the writer jobs (one decision, or all the decisions of a request) and wait. The
//! writer (a thread of its own on SQLite, a task on PostgreSQL) takes whatever has queued while
//! the previous commit was in flight (no timer), encodes the entries at their leaf indexes,
//! writes them in one transaction (on PostgreSQL many rows per statement, on SQLite one
//! prepared statement stepped per row), signs one checkpoint over the new tree, commits (one
//! fsync), and answers every waiter with its leaf index and that checkpoint. If the commit
//! fails, every waiter of the batch gets an error and nothing is answered as done.
//! The latest checkpoint is committed with its entries; earlier ones are kept about once a
//! second as history, and always when the commit admitted a message from a peer: its receipt is
//! kept as parts (the inclusion proof) and rebuilt with that checkpoint on a replay.
//!
//! The node refuses to sign a checkpoint smaller than the last one it published. The published
//! checkpoint is kept in a state file beside the signing key (not only in the database), written
//! at most about once a second and at shutdown, so a restored old database copy is noticed.

use crate::admission::AckPlan;
use crate::audit::checkpoint::{Checkpoint, TreeHead};
use crate::audit::entry::{self, AuditRecord, EntryError};
use crate::audit::merkle::{self, BatchTree};
use crate::consent::{CodeVerified, ConsentEvent};
use crate::domain::{ConsentId, MessageId, OrgId};
use crate::policy::Permit;
use crate::signed_note::NoteSigner;
use crate::storage::{
    self, Database, NewConsent, NewInboxMessage, NewOutboxMessage, StorageError, StoredTree,
    WriteTx, WriterDb,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

/// How many records one group commit takes at most; the rest waits for the next commit.
const MAX_BATCH_RECORDS: usize = 20_000;
/// How many callers may wait in the queue before new ones wait to enqueue (backpressure).
const QUEUE_DEPTH: usize = 16_384;
/// How often, at most, the published checkpoint state file is rewritten.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the state file may fail to be written before the writer refuses appends.
const PUBLISH_FAILURE_LIMIT: Duration = Duration::from_secs(10);
/// How often, at most, a checkpoint joins the database's history. Every commit's checkpoint is
/// committed as the latest; keeping all of them would make verification slow under light
/// traffic (one signature check per commit), and receipts carry their own anyway.
const HISTORY_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the write path has stopped")]
    Stopped,
    #[error("the audit entry cannot be encoded: {0}")]
    Entry(#[from] EntryError),
    #[error("the durable write failed: {0}")]
    Storage(String),
    #[error("refusing to append: {0}")]
    Refused(String),
}

/// A checkpoint that was committed together with the entries it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedCheckpoint {
    pub head: TreeHead,
    /// The signed note, as stored and as handed to peers.
    pub note: String,
}

/// Proof that a record is durable in the audit log: its leaf index and the signed checkpoint of
/// the commit that made it durable. Only the writer creates these.
#[derive(Debug, Clone)]
pub struct AuditReceipt {
    pub index: u64,
    pub checkpoint: Arc<CommittedCheckpoint>,
    /// What the commit knew of the tree and its entries, to prove the entry's inclusion in
    /// the checkpoint.
    batch: Arc<CommittedBatch>,
}

/// One group commit's entries and tree, shared by its receipts.
#[derive(Debug)]
struct CommittedBatch {
    tree: BatchTree,
    entries: Vec<Vec<u8>>,
}

impl AuditReceipt {
    /// The inclusion proof of this entry in the tree of the receipt's checkpoint.
    pub fn inclusion_proof(&self) -> Option<Vec<merkle::Hash>> {
        self.batch.tree.inclusion_proof(self.index)
    }

    /// The entry's bytes, exactly as stored and hashed.
    pub fn entry(&self) -> Option<&[u8]> {
        let offset = self.index.checked_sub(self.batch.tree.first())?;
        self.batch
            .entries
            .get(usize::try_from(offset).ok()?)
            .map(Vec::as_slice)
    }
}

/// What a caller hands the writer: one or more decisions, answered together. A batch of
/// decisions (the messages of one request) is one job, so it costs one hand-off and one answer,
/// not one per message; each decision still commits or fails on its own terms.
struct Job {
    decisions: Vec<Unit>,
    reply: oneshot::Sender<JobAnswer>,
    /// Kept until the job is committed (or failed), even if its caller is gone by then.
    _holds: Vec<Hold>,
}

/// The answer to a job: per decision its result, and the decisions themselves, handed back so
/// that the caller's thread frees what it allocated. (Freed on the writer's thread, every
/// message's strings and envelope would go back to another thread's heap arena, under that
/// arena's lock, contending with the threads that are allocating there.)
struct JobAnswer {
    results: Vec<Result<Committed, WriteError>>,
    spent: Vec<Unit>,
}

/// One decision: its audit records (consecutive entries) and the changes that commit in the
/// same transaction as them, or not at all.
struct Unit {
    records: Vec<AuditRecord>,
    changes: Vec<StateChange>,
}

/// Something a caller needs kept until its job is committed or has failed, such as the claim
/// that nobody else decides the same message meanwhile (`admission::InFlightGuard`). A request
/// whose client disconnects is dropped by the server while its job waits in the writer's queue;
/// its job still commits, so what it holds must live as long as the job, not the request.
pub type Hold = Box<dyn std::any::Any + Send + Sync>;

/// What a decision's commit returned: one receipt per record, and per change the rows it
/// touched.
struct Committed {
    receipts: Vec<AuditReceipt>,
    counts: Vec<u64>,
    /// The delivery receipt of a `remember_receipt` change.
    answer: Option<ReceiptAnswer>,
}

/// The delivery receipt of an admitted message, as the commit left it. Turning it into JSON is
/// the caller's work, on the caller's thread: the writer is the one thread every commit waits
/// for.
enum ReceiptAnswer {
    /// Built in the commit (a withdrawal's, whose acknowledgement needs the commit's counts).
    Json(String),
    /// The inclusion proof the commit computed (and stored as the receipt's parts); the rest
    /// is the decision's own entry and checkpoint.
    Proof {
        message_id: MessageId,
        proof: Vec<merkle::Hash>,
    },
}

/// A decision made durable: its receipt, per change the rows it touched, and the delivery
/// receipt (JSON) of an admitted message.
pub struct CommittedDecision {
    pub receipt: AuditReceipt,
    pub counts: Vec<u64>,
    pub answer: Option<String>,
}

impl Committed {
    /// The first record's receipt, with the delivery receipt built from it.
    fn into_decision(self) -> Result<CommittedDecision, WriteError> {
        let receipt =
            self.receipts.into_iter().next().ok_or_else(|| {
                WriteError::Storage("the writer answered without a receipt".into())
            })?;
        let answer = match self.answer {
            None => None,
            Some(ReceiptAnswer::Json(json)) => Some(json),
            Some(ReceiptAnswer::Proof { message_id, proof }) => {
                let entry = receipt
                    .entry()
                    .ok_or_else(|| WriteError::Storage("a receipt without its entry".into()))?;
                let built = crate::receipt::build(
                    message_id.as_str(),
                    receipt.index,
                    entry,
                    &proof,
                    &receipt.checkpoint.note,
                    None,
                );
                Some(
                    serde_json::to_string(&built)
                        .map_err(|e| WriteError::Storage(e.to_string()))?,
                )
            }
        };
        Ok(CommittedDecision {
            receipt,
            counts: self.counts,
            answer,
        })
    }
}

/// A change to durable state that commits together with the audit entry recording the decision
/// behind it, or not at all (DESIGN §6: a message is stored in the same transaction as its
/// audit entry). Changes that store or release data about a child can only be made with the
/// policy's [`Permit`] in hand.
pub struct StateChange(Change);

enum Change {
    /// Remembers an admitted message with the delivery receipt built inside the commit.
    RememberReceipt {
        sender: OrgId,
        message_id: MessageId,
        envelope_sha256: String,
        /// A withdrawal's acknowledgement: which earlier changes of the decision give its
        /// counts, and when.
        ack: Option<(AckPlan, String)>,
    },
    RememberAnswer {
        sender: OrgId,
        message_id: MessageId,
        envelope_sha256: String,
        status: u16,
        problem: Option<String>,
    },
    StoreInbound(NewInboxMessage),
    RecordConsent(Box<NewConsent>),
    ConsentEvent {
        id: ConsentId,
        event: ConsentEvent,
        at: OffsetDateTime,
        recorded_by: OrgId,
    },
    DeleteReceived(ConsentId),
    CountReceived(ConsentId),
    BindingFailure {
        id: ConsentId,
        failures_in_a_row: u32,
        locked_until: Option<OffsetDateTime>,
    },
    Bind {
        id: ConsentId,
        local_subject_key: String,
        at: OffsetDateTime,
        unit: Option<String>,
    },
    Enqueue(Box<NewOutboxMessage>),
    CancelQueued {
        consent: ConsentId,
        at: OffsetDateTime,
    },
    PurgeExpired(OffsetDateTime),
    Tombstone {
        consent: ConsentId,
        sender: OrgId,
        at: OffsetDateTime,
    },
}

/// What a commit knows when it applies changes: its entries, tree and signed checkpoint.
struct ApplyContext<'a> {
    batch: &'a CommittedBatch,
    note: &'a str,
    /// The size of the tree the commit's checkpoint signs.
    tree_size: u64,
}

impl ApplyContext<'_> {
    /// The delivery receipt of the entry at `index` (in this commit), as JSON.
    fn receipt_json(
        &self,
        index: u64,
        message_id: &MessageId,
        ack: Option<&(AckPlan, String)>,
        counts_so_far: &[u64],
    ) -> Result<String, StorageError> {
        let missing =
            || StorageError::Invariant("a receipt for an entry outside its commit".into());
        let offset = index
            .checked_sub(self.batch.tree.first())
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(missing)?;
        let entry = self.batch.entries.get(offset).ok_or_else(missing)?;
        let proof = self.inclusion_proof(index)?;
        let ack = ack.map(|(plan, at)| plan.fill(message_id, counts_so_far, at.clone()));
        let receipt =
            crate::receipt::build(message_id.as_str(), index, entry, &proof, self.note, ack);
        serde_json::to_string(&receipt).map_err(|e| StorageError::Invariant(e.to_string()))
    }

    /// The inclusion proof of the entry at `index` (in this commit) in the commit's tree.
    fn inclusion_proof(&self, index: u64) -> Result<Vec<merkle::Hash>, StorageError> {
        self.batch.tree.inclusion_proof(index).ok_or_else(|| {
            StorageError::Invariant("a receipt for an entry outside its commit".into())
        })
    }
}

impl StateChange {
    /// Remembers the answer to a message id, so that a replay gets the same answer.
    pub fn remember_answer(
        sender: OrgId,
        message_id: MessageId,
        envelope_sha256: String,
        status: u16,
        problem: Option<String>,
    ) -> Self {
        Self(Change::RememberAnswer {
            sender,
            message_id,
            envelope_sha256,
            status,
            problem,
        })
    }

    /// Remembers an admitted message with its delivery receipt, from the decision's first
    /// entry (its bytes, inclusion proof and the commit's signed checkpoint), kept as the parts
    /// a replay rebuilds it from; `append_decision` returns the receipt. A withdrawal's ack is
    /// filled in from the results of the decision's earlier changes (that receipt is built
    /// and kept whole in the commit).
    pub fn remember_receipt(
        sender: OrgId,
        message_id: MessageId,
        envelope_sha256: String,
        ack: Option<(AckPlan, String)>,
    ) -> Self {
        Self(Change::RememberReceipt {
            sender,
            message_id,
            envelope_sha256,
            ack,
        })
    }

    /// Stores a message about a child in the inbox: only with a permit for it.
    pub fn store_inbound(_permit: &Permit, message: NewInboxMessage) -> Self {
        Self(Change::StoreInbound(message))
    }

    /// Stores a consent with its first event: only with a permit for it.
    pub fn record_consent(_permit: &Permit, consent: NewConsent) -> Self {
        Self(Change::RecordConsent(Box::new(consent)))
    }

    /// Appends an event to a consent's log: only with a permit for it.
    pub fn consent_event(
        _permit: &Permit,
        id: ConsentId,
        event: ConsentEvent,
        at: OffsetDateTime,
        recorded_by: OrgId,
    ) -> Self {
        Self(Change::ConsentEvent {
            id,
            event,
            at,
            recorded_by,
        })
    }

    /// Deletes what was received under a withdrawn consent (the count is the change's result).
    pub fn delete_received(_permit: &Permit, id: ConsentId) -> Self {
        Self(Change::DeleteReceived(id))
    }

    /// Counts what is kept under a consent (changes nothing; the count is the result).
    pub fn count_received(id: ConsentId) -> Self {
        Self(Change::CountReceived(id))
    }

    /// Records a wrong binding code.
    pub fn binding_failure(
        id: ConsentId,
        failures_in_a_row: u32,
        locked_until: Option<OffsetDateTime>,
    ) -> Self {
        Self(Change::BindingFailure {
            id,
            failures_in_a_row,
            locked_until,
        })
    }

    /// Binds a consent to this node's key for the child: only with a verified binding code.
    /// The result is 0 if the consent was bound already (by a racing request).
    pub fn bind(
        _code: &CodeVerified,
        id: ConsentId,
        local_subject_key: String,
        at: OffsetDateTime,
        unit: Option<String>,
    ) -> Self {
        Self(Change::Bind {
            id,
            local_subject_key,
            at,
            unit,
        })
    }

    /// Queues a message for delivery: only with a permit for it.
    pub fn enqueue(_permit: &Permit, message: NewOutboxMessage) -> Self {
        Self(Change::Enqueue(Box::new(message)))
    }

    /// Cancels the queued data messages under a withdrawn consent (the count is the result).
    pub fn cancel_queued(consent: ConsentId, at: OffsetDateTime) -> Self {
        Self(Change::CancelQueued { consent, at })
    }

    /// Remembers a withdrawal of a consent this node does not hold, so that its grant, should
    /// it arrive later, is refused.
    pub fn tombstone(consent: ConsentId, sender: OrgId, at: OffsetDateTime) -> Self {
        Self(Change::Tombstone {
            consent,
            sender,
            at,
        })
    }

    /// Deletes received messages whose retention ended (the count is the result).
    pub fn purge_expired(now: OffsetDateTime) -> Self {
        Self(Change::PurgeExpired(now))
    }

    /// The consent whose row or events this change alters, if any.
    fn changed_consent(&self) -> Option<&ConsentId> {
        match &self.0 {
            Change::RecordConsent(consent) => Some(&consent.record.id),
            Change::ConsentEvent { id, .. }
            | Change::BindingFailure { id, .. }
            | Change::Bind { id, .. } => Some(id),
            Change::RememberReceipt { .. }
            | Change::RememberAnswer { .. }
            | Change::StoreInbound(_)
            | Change::DeleteReceived(_)
            | Change::CountReceived(_)
            | Change::Enqueue(_)
            | Change::CancelQueued { .. }
            | Change::PurgeExpired(_)
            | Change::Tombstone { .. } => None,
        }
    }

    /// Applies the change. `answer` receives a receipt built by a `remember_receipt` change.
    async fn apply(
        &self,
        tx: &mut WriteTx<'_>,
        audit_idx: u64,
        context: &ApplyContext<'_>,
        counts_so_far: &[u64],
        answer: &mut Option<ReceiptAnswer>,
    ) -> Result<u64, StorageError> {
        match &self.0 {
            Change::RememberReceipt {
                sender,
                message_id,
                envelope_sha256,
                ack,
            } => {
                let json =
                    context.receipt_json(audit_idx, message_id, ack.as_ref(), counts_so_far)?;
                let stored = tx
                    .remember_messages(&[storage::RememberRow {
                        sender,
                        message_id,
                        envelope_sha256,
                        answer: storage::RememberedAnswer {
                            status: 200,
                            problem: None,
                            receipt: Some(&json),
                            receipt_parts: None,
                        },
                        audit_idx,
                    }])
                    .await?;
                *answer = Some(ReceiptAnswer::Json(json));
                Ok(stored.iter().sum())
            }
            // `PendingRows::take` takes these (and a receipt without an acknowledgement) to be
            // written together per table; they never come here.
            Change::RememberAnswer { .. } | Change::StoreInbound(_) | Change::Enqueue(_) => Err(
                StorageError::Invariant("a common insert outside the pending rows".into()),
            ),
            Change::RecordConsent(consent) => {
                // A racing grant under the same id (decided before either committed) records
                // nothing: the first one stands, and one decision's conflict never fails the whole
                // group commit for everyone else.
                let inserted = tx.insert_consent(consent).await?;
                if inserted == 0 {
                    return Ok(0);
                }
                for event in &consent.record.events {
                    tx.append_consent_event(
                        &consent.record.id,
                        *event,
                        consent.created_at,
                        &consent.record.recording_org,
                        audit_idx,
                    )
                    .await?;
                }
                Ok(inserted)
            }
            Change::ConsentEvent {
                id,
                event,
                at,
                recorded_by,
            } => {
                tx.append_consent_event(id, *event, *at, recorded_by, audit_idx)
                    .await
            }
            Change::DeleteReceived(id) => tx.delete_inbox_for_consent(id).await,
            Change::CountReceived(id) => tx.count_inbox_for_consent(id).await,
            Change::BindingFailure {
                id,
                failures_in_a_row,
                locked_until,
            } => {
                tx.record_binding_failure(id, *failures_in_a_row, *locked_until)
                    .await
            }
            Change::Bind {
                id,
                local_subject_key,
                at,
                unit,
            } => {
                tx.bind_consent(id, local_subject_key, *at, unit.as_deref())
                    .await
            }
            Change::CancelQueued { consent, at } => {
                tx.cancel_queued_for_consent(consent, *at).await
            }
            Change::PurgeExpired(now) => tx.purge_expired_inbox(*now).await,
            Change::Tombstone {
                consent,
                sender,
                at,
            } => tx.insert_consent_tombstone(consent, sender, *at).await,
        }
    }
}

/// Where a change's count goes: the decision and the change's position in it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    decision: usize,
    position: usize,
}

/// A replay-table row waiting to be written, with its receipt built already.
struct PendingAnswer<'a> {
    slot: Slot,
    sender: &'a OrgId,
    message_id: &'a MessageId,
    envelope_sha256: &'a str,
    status: u16,
    problem: Option<&'a str>,
    /// An admission's receipt, as the parts it is rebuilt from (the proof's hashes,
    /// concatenated, and the commit's tree size).
    receipt_parts: Option<(Vec<u8>, u64)>,
    audit_idx: u64,
}

/// The common inserts of a group commit, gathered to be written together per table.
#[derive(Default)]
struct PendingRows<'a> {
    /// Whether a receipt was stored as its parts in this commit.
    stored_receipt_parts: bool,
    answers: Vec<PendingAnswer<'a>>,
    inbox: Vec<(Slot, (&'a NewInboxMessage, u64))>,
    outbox: Vec<(Slot, (&'a NewOutboxMessage, u64))>,
}

impl<'a> PendingRows<'a> {
    /// Takes `change` into the pending rows if it is a common insert that depends on nothing
    /// else in the commit; returns whether it did. A receipt's inclusion proof is computed
    /// here, so `answer` gets it at once. A receipt with an acknowledgement needs the counts
    /// of the changes before it, so it is not taken.
    fn take(
        &mut self,
        change: &'a StateChange,
        slot: Slot,
        audit_idx: u64,
        context: &ApplyContext<'_>,
        answer: &mut Option<ReceiptAnswer>,
    ) -> Result<bool, StorageError> {
        match &change.0 {
            Change::RememberReceipt {
                sender,
                message_id,
                envelope_sha256,
                ack: None,
            } => {
                let proof = context.inclusion_proof(audit_idx)?;
                let receipt_parts = Some((proof.concat(), context.tree_size));
                *answer = Some(ReceiptAnswer::Proof {
                    message_id: message_id.clone(),
                    proof,
                });
                self.answers.push(PendingAnswer {
                    slot,
                    sender,
                    message_id,
                    envelope_sha256,
                    status: 200,
                    problem: None,
                    receipt_parts,
                    audit_idx,
                });
            }
            Change::RememberAnswer {
                sender,
                message_id,
                envelope_sha256,
                status,
                problem,
            } => self.answers.push(PendingAnswer {
                slot,
                sender,
                message_id,
                envelope_sha256,
                status: *status,
                problem: problem.as_deref(),
                receipt_parts: None,
                audit_idx,
            }),
            Change::StoreInbound(message) => self.inbox.push((slot, (message, audit_idx))),
            Change::Enqueue(message) => self.outbox.push((slot, (message.as_ref(), audit_idx))),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Writes the pending rows, table by table (on PostgreSQL one statement per table and
    /// thousand rows), and puts each row's count in its slot.
    async fn write(
        &mut self,
        tx: &mut WriteTx<'_>,
        counts: &mut [Vec<u64>],
    ) -> Result<(), StorageError> {
        let mut place = |slot: Slot, count: u64| {
            if let Some(cell) = counts
                .get_mut(slot.decision)
                .and_then(|decision| decision.get_mut(slot.position))
            {
                *cell = count;
            }
        };
        if !self.answers.is_empty() {
            let rows: Vec<storage::RememberRow<'_>> = self
                .answers
                .iter()
                .map(|p| storage::RememberRow {
                    sender: p.sender,
                    message_id: p.message_id,
                    envelope_sha256: p.envelope_sha256,
                    answer: storage::RememberedAnswer {
                        status: p.status,
                        problem: p.problem,
                        receipt: None,
                        receipt_parts: p.receipt_parts.as_ref().map(|(proof, tree_size)| {
                            storage::ReceiptParts {
                                proof,
                                tree_size: *tree_size,
                            }
                        }),
                    },
                    audit_idx: p.audit_idx,
                })
                .collect();
            let stored = tx.remember_messages(&rows).await?;
            self.stored_receipt_parts |= self.answers.iter().any(|p| p.receipt_parts.is_some());
            for (pending, count) in self.answers.iter().zip(stored) {
                place(pending.slot, count);
            }
            self.answers.clear();
        }
        if !self.inbox.is_empty() {
            let rows: Vec<_> = self.inbox.iter().map(|(_, row)| *row).collect();
            let stored = tx.insert_inbox_many(&rows).await?;
            for ((slot, _), count) in self.inbox.iter().zip(stored) {
                place(*slot, count);
            }
            self.inbox.clear();
        }
        if !self.outbox.is_empty() {
            let rows: Vec<_> = self.outbox.iter().map(|(_, row)| *row).collect();
            let stored = tx.enqueue_outbox_many(&rows).await?;
            for ((slot, _), count) in self.outbox.iter().zip(stored) {
                place(*slot, count);
            }
            self.outbox.clear();
        }
        Ok(())
    }
}

/// The handle request handlers use to append.
#[derive(Clone)]
pub struct WritePath {
    sender: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
}

/// Counters of the writer's work, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    commits: AtomicU64,
    records: AtomicU64,
    /// `PRAGMA synchronous` of the SQLite writer's own connection, plus one (0: not known).
    sqlite_synchronous: AtomicU64,
}

impl WriterStats {
    /// `PRAGMA synchronous` of the connection the SQLite writer commits through (2 = FULL), once
    /// it has been opened; `None` before, and on PostgreSQL.
    pub fn sqlite_synchronous(&self) -> Option<i64> {
        match self.sqlite_synchronous.load(Ordering::Relaxed) {
            0 => None,
            level => i64::try_from(level - 1).ok(),
        }
    }

    /// (group commits, records committed) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::Relaxed),
            self.records.load(Ordering::Relaxed),
        )
    }
}

impl Job {
    fn record_count(&self) -> usize {
        self.decisions.iter().map(|unit| unit.records.len()).sum()
    }
}

impl WritePath {
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Appends one record and waits until it is durable.
    pub async fn append(&self, record: AuditRecord) -> Result<AuditReceipt, WriteError> {
        self.append_many(vec![record])
            .await?
            .pop()
            .ok_or_else(|| WriteError::Storage("the writer answered without a receipt".into()))
    }

    /// Appends records at consecutive indexes, all in the same commit.
    pub async fn append_many(
        &self,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditReceipt>, WriteError> {
        let unit = Unit {
            records,
            changes: Vec::new(),
        };
        Ok(self.submit_one(unit, Vec::new()).await?.receipts)
    }

    /// Appends one record together with state changes, in one transaction: either all of it
    /// is durable or none. Returns the receipt and, per change, the rows it touched.
    pub async fn append_with(
        &self,
        record: AuditRecord,
        changes: Vec<StateChange>,
    ) -> Result<(AuditReceipt, Vec<u64>), WriteError> {
        let (receipt, counts, _) = self.append_decision(record, changes, None).await?;
        Ok((receipt, counts))
    }

    /// As [`WritePath::append_with`], also returning the delivery receipt (JSON) of a
    /// `remember_receipt` change, and keeping `hold` until the job is committed or has failed,
    /// whether or not the caller still waits (see [`Hold`]).
    pub async fn append_decision(
        &self,
        record: AuditRecord,
        changes: Vec<StateChange>,
        hold: Option<Hold>,
    ) -> Result<(AuditReceipt, Vec<u64>, Option<String>), WriteError> {
        let unit = Unit {
            records: vec![record],
            changes,
        };
        let decision = self
            .submit_one(unit, hold.into_iter().collect())
            .await?
            .into_decision()?;
        Ok((decision.receipt, decision.counts, decision.answer))
    }

    /// Appends many decisions (each a record with its changes) as one job: one hand-off to the
    /// writer and one answer for all of them, instead of one per decision. Each decision
    /// commits with its own changes or fails on its own (a record too large, say); the answers
    /// come in the order given. `holds` are kept until the job is committed or has failed.
    pub async fn append_decisions(
        &self,
        decisions: Vec<(AuditRecord, Vec<StateChange>)>,
        holds: Vec<Hold>,
    ) -> Result<Vec<Result<CommittedDecision, WriteError>>, WriteError> {
        let units = decisions
            .into_iter()
            .map(|(record, changes)| Unit {
                records: vec![record],
                changes,
            })
            .collect();
        Ok(self
            .submit(units, holds)
            .await?
            .into_iter()
            .map(|result| result.and_then(Committed::into_decision))
            .collect())
    }

    async fn submit_one(&self, unit: Unit, holds: Vec<Hold>) -> Result<Committed, WriteError> {
        self.submit(vec![unit], holds)
            .await?
            .pop()
            .ok_or_else(|| WriteError::Storage("the writer answered without a result".into()))?
    }

    async fn submit(
        &self,
        decisions: Vec<Unit>,
        holds: Vec<Hold>,
    ) -> Result<Vec<Result<Committed, WriteError>>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Job {
                decisions,
                reply,
                _holds: holds,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        let JobAnswer { results, spent } = answer.await.map_err(|_| WriteError::Stopped)?;
        drop(spent);
        Ok(results)
    }
}

/// Why the writer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    #[error("{path}: {problem}")]
    StateFile { path: PathBuf, problem: String },
    #[error(
        "the audit log in the database has {stored} entries, but this node already published a \
         signed checkpoint of size {published} (recorded in {path}). The database was probably \
         restored from an older copy; signing a smaller checkpoint would fork the log, so the node \
         refuses. Restore a copy that holds all {published} entries."
    )]
    BehindPublished {
        stored: u64,
        published: u64,
        path: PathBuf,
    },
    #[error(
        "the audit log in the database does not extend the checkpoint of size {published} that \
         this node published (recorded in {path}): the log was replaced or rewritten"
    )]
    Forked { published: u64, path: PathBuf },
    #[error("database: {0}")]
    Storage(#[from] StorageError),
}

/// The state file of the last published checkpoint, beside the signing key.
pub fn published_state_path(signing_key: &Path) -> PathBuf {
    let mut name = signing_key.as_os_str().to_owned();
    name.push(".published-checkpoint");
    PathBuf::from(name)
}

/// Reads the last published checkpoint, verified with the node's own key.
pub fn read_published(
    path: &Path,
    signer: &NoteSigner,
) -> Result<Option<Checkpoint>, PublishedError> {
    let note = match std::fs::read_to_string(path) {
        Ok(note) => note,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PublishedError::StateFile {
                path: path.to_path_buf(),
                problem: e.to_string(),
            });
        }
    };
    Checkpoint::open(&note, signer.verifier_key())
        .map(Some)
        .map_err(|e| PublishedError::StateFile {
            path: path.to_path_buf(),
            problem: format!("not a checkpoint signed by this node's key: {e}"),
        })
}

/// Writes the state file atomically: a temporary file, fsync, rename, fsync of the directory.
fn write_published(path: &Path, note: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(note.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Checks that the state file's directory is writable, so that the guard cannot be silently
/// off (e.g. signing keys on a read-only mount).
pub fn check_published_writable(path: &Path) -> Result<(), PublishedError> {
    let probe = path.with_extension("probe");
    std::fs::write(&probe, b"probe")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| PublishedError::StateFile {
            path: path.to_path_buf(),
            problem: format!(
                "the published checkpoint state file must be writable beside the signing key: {e}"
            ),
        })
}

/// Checks, before the writer starts, that the database holds at least what was published and
/// extends it.
pub async fn check_against_published(
    db: &Database,
    published: Option<&Checkpoint>,
    path: &Path,
) -> Result<(), PublishedError> {
    let Some(published) = published else {
        return Ok(());
    };
    let tree = storage::audit_tree(db).await?;
    let stored = tree.frontier.size();
    let wanted = published.head.size;
    if stored < wanted {
        return Err(PublishedError::BehindPublished {
            stored,
            published: wanted,
            path: path.to_path_buf(),
        });
    }
    // The stored tree must extend the published one: compare the root at the published size.
    // (The stored leaf hashes suffice here: this guards against a replaced database, while
    // `audit verify` recomputes every hash from the entries themselves.)
    let root_at_published = if stored == wanted {
        tree.root
    } else {
        merkle::root(&storage::audit_leaf_hash_range(db, 0, wanted).await?)
    };
    if root_at_published != published.head.root {
        return Err(PublishedError::Forked {
            published: wanted,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// The running writer: a task on the node's runtime (PostgreSQL), or a thread of its own
/// (SQLite, whose commits run synchronously and must not hold up the runtime's workers).
pub struct Writer {
    pub path: WritePath,
    /// Answered when the writer has finished.
    finished: oneshot::Receiver<()>,
    stop: watch::Sender<bool>,
}

impl Writer {
    /// Starts the writer. `published_path` is the state file; `published` what it holds.
    pub fn spawn(
        db: Database,
        signer: Arc<NoteSigner>,
        hmac_key_version: u32,
        published_path: PathBuf,
        published: Option<Checkpoint>,
    ) -> Writer {
        Self::spawn_clearing(
            db,
            signer,
            hmac_key_version,
            published_path,
            published,
            None,
        )
    }

    /// Like [`Writer::spawn`], and after each commit clears `consent_cache` of every consent
    /// the commit changed.
    pub fn spawn_clearing(
        db: Database,
        signer: Arc<NoteSigner>,
        hmac_key_version: u32,
        published_path: PathBuf,
        published: Option<Checkpoint>,
        consent_cache: Option<Arc<storage::ConsentCache>>,
    ) -> Writer {
        let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
        let (stop, stop_rx) = watch::channel(false);
        let (done, finished) = oneshot::channel();
        let stats = Arc::new(WriterStats::default());
        let db = db.for_writer();
        let own_thread = db.is_synchronous();
        let state = WriterState {
            stats: stats.clone(),
            db,
            signer,
            hmac_key_version,
            published_path,
            floor: published.map(|p| p.head.size).unwrap_or(0),
            unpublished: None,
            last_publish: None,
            last_history: None,
            publish_failing_since: None,
            consent_cache,
        };
        let run = async move {
            state.run(receiver, stop_rx).await;
            let _ = done.send(());
        };
        if own_thread {
            // A runtime of its own on the writer's thread, for the channels and the publish
            // timer; the commits themselves never yield.
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .and_then(|runtime| {
                    std::thread::Builder::new()
                        .name("brobygger-writer".into())
                        .spawn(move || runtime.block_on(run))
                });
            if let Err(e) = started {
                // Without its thread the writer's channel is closed: every append is refused
                // with `WriteError::Stopped`, and the node fails closed.
                tracing::error!(error = %e, "cannot start the audit writer's thread");
            }
        } else {
            tokio::spawn(run);
        }
        Writer {
            path: WritePath { sender, stats },
            finished,
            stop,
        }
    }

    /// Finishes what is queued, publishes the latest checkpoint and ends the writer.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.finished.await;
    }
}

struct WriterState {
    stats: Arc<WriterStats>,
    db: WriterDb,
    signer: Arc<NoteSigner>,
    hmac_key_version: u32,
    published_path: PathBuf,
    /// The size below which this node never signs (what it published last).
    floor: u64,
    /// The newest committed checkpoint not yet written to the state file.
    unpublished: Option<Arc<CommittedCheckpoint>>,
    last_publish: Option<Instant>,
    /// When a checkpoint last joined the database's history of earlier checkpoints.
    last_history: Option<Instant>,
    /// Since when writing the state file has failed, if it does.
    publish_failing_since: Option<Instant>,
    /// Consents as the lookups keep them; cleared of what each commit changed.
    consent_cache: Option<Arc<storage::ConsentCache>>,
}

impl WriterState {
    async fn run(mut self, mut receiver: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
        // Open SQLite's connection now, so that /readyz can show its durability setting; a
        // failure here is met again (and answered) at the first commit, after which the
        // setting is read again.
        self.note_sqlite_synchronous();
        loop {
            let publish_in = self
                .last_publish
                .map(|t| PUBLISH_INTERVAL.saturating_sub(t.elapsed()))
                .unwrap_or_default();
            let first = tokio::select! {
                job = receiver.recv() => job,
                _ = stop.changed() => None,
                _ = tokio::time::sleep(publish_in), if self.unpublished.is_some() => {
                    self.publish(false);
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut count = first.record_count();
            let mut jobs = vec![first];
            while count < MAX_BATCH_RECORDS {
                match receiver.try_recv() {
                    Ok(job) => {
                        count += job.record_count();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_and_answer(jobs).await;
            self.publish(false);
        }
        // Shutting down: whatever is still queued is committed (or answered with an error),
        // then the latest checkpoint is published.
        receiver.close();
        let mut rest = Vec::new();
        while let Ok(job) = receiver.try_recv() {
            rest.push(job);
        }
        if !rest.is_empty() {
            self.commit_and_answer(rest).await;
        }
        self.publish(true);
    }

    async fn commit_and_answer(&mut self, jobs: Vec<Job>) {
        // Each decision gets a result slot; a decision that cannot be committed fails alone,
        // not the group: a record too large to encode (checked, for any record that could be,
        // with the widest possible index before the transaction; ordinary records are far
        // below the limit and skip the extra encoding), or changes without a record.
        let mut results: Vec<Vec<Option<Result<Committed, WriteError>>>> = jobs
            .iter()
            .map(|job| job.decisions.iter().map(|_| None).collect())
            .collect();
        let mut accepted: Vec<(usize, usize, &Unit)> = Vec::new();
        for (job_no, job) in jobs.iter().enumerate() {
            for (unit_no, unit) in job.decisions.iter().enumerate() {
                let refused = if unit.records.is_empty() {
                    // Changes never commit without an audit entry saying why.
                    (!unit.changes.is_empty())
                        .then(|| WriteError::Refused("a state change needs an audit record".into()))
                } else {
                    unit.records
                        .iter()
                        .filter(|r| !entry::surely_fits(r))
                        .try_for_each(|r| {
                            entry::encode(r, u64::MAX, self.hmac_key_version).map(drop)
                        })
                        .err()
                        .map(WriteError::Entry)
                };
                let slot = results.get_mut(job_no).and_then(|job| job.get_mut(unit_no));
                match refused {
                    Some(e) => {
                        if let Some(slot) = slot {
                            *slot = Some(Err(e));
                        }
                    }
                    // Nothing to record and nothing to change: answered at once.
                    None if unit.records.is_empty() => {
                        if let Some(slot) = slot {
                            *slot = Some(Ok(Committed {
                                receipts: Vec::new(),
                                counts: Vec::new(),
                                answer: None,
                            }));
                        }
                    }
                    None => accepted.push((job_no, unit_no, unit)),
                }
            }
        }
        if !accepted.is_empty() {
            let units: Vec<&Unit> = accepted.iter().map(|(_, _, unit)| *unit).collect();
            match self.commit(&units).await {
                Ok((first_index, checkpoint, batch, counts, answers)) => {
                    let mut index = first_index;
                    for (((job_no, unit_no, unit), counts), answer) in
                        accepted.iter().zip(counts).zip(answers)
                    {
                        let receipts = unit
                            .records
                            .iter()
                            .map(|_| {
                                let receipt = AuditReceipt {
                                    index,
                                    checkpoint: checkpoint.clone(),
                                    batch: batch.clone(),
                                };
                                index += 1;
                                receipt
                            })
                            .collect();
                        if let Some(slot) = results
                            .get_mut(*job_no)
                            .and_then(|job| job.get_mut(*unit_no))
                        {
                            *slot = Some(Ok(Committed {
                                receipts,
                                counts,
                                answer,
                            }));
                        }
                    }
                    self.unpublished = Some(checkpoint);
                }
                Err(e) => {
                    tracing::error!(error = %e, records = units.iter().map(|u| u.records.len()).sum::<usize>(), "audit append failed; refusing the requests that needed it");
                    for (job_no, unit_no, _) in &accepted {
                        if let Some(slot) = results
                            .get_mut(*job_no)
                            .and_then(|job| job.get_mut(*unit_no))
                        {
                            *slot = Some(Err(e.clone()));
                        }
                    }
                }
            }
        }
        for (job, results) in jobs.into_iter().zip(results) {
            let answers = results
                .into_iter()
                .map(|result| {
                    result.unwrap_or_else(|| {
                        Err(WriteError::Storage("a decision was left unanswered".into()))
                    })
                })
                .collect();
            let _ = job.reply.send(JobAnswer {
                results: answers,
                spent: job.decisions,
            });
        }
    }

    /// One transaction: re-read the tree (another replica may have appended), append, sign,
    /// commit. Returns the first index, the checkpoint, the batch, and per decision its
    /// changes' counts and its delivery receipt.
    async fn commit(
        &mut self,
        units: &[&Unit],
    ) -> Result<
        (
            u64,
            Arc<CommittedCheckpoint>,
            Arc<CommittedBatch>,
            Vec<Vec<u64>>,
            Vec<Option<ReceiptAnswer>>,
        ),
        WriteError,
    > {
        let storage_error = |e: StorageError| WriteError::Storage(e.to_string());
        let mut tx = self.db.begin_write().await.map_err(storage_error)?;
        let tree = tx.audit_tree().await.map_err(storage_error)?;
        if tree.frontier.root() != tree.root {
            return Err(WriteError::Refused(
                "the stored tree frontier does not hash to the stored root: refusing to sign over it"
                    .into(),
            ));
        }
        if let Some(since) = self.publish_failing_since
            && since.elapsed() >= PUBLISH_FAILURE_LIMIT
        {
            return Err(WriteError::Refused(format!(
                "the published checkpoint state file {} cannot be written: without it a restored \
                 old database would go unnoticed",
                self.published_path.display()
            )));
        }
        let mut frontier = tree.frontier;
        let before = frontier.clone();
        let first = frontier.size();
        if first < self.floor {
            return Err(WriteError::Refused(format!(
                "the log holds {first} entries but this node published a checkpoint of size {}",
                self.floor
            )));
        }
        let records = units.iter().flat_map(|unit| unit.records.iter());
        let mut rows = Vec::with_capacity(units.iter().map(|unit| unit.records.len()).sum());
        for (offset, record) in (0u64..).zip(records) {
            let bytes = entry::encode(record, first + offset, self.hmac_key_version)?;
            let leaf = merkle::leaf_hash(&bytes);
            frontier.push(leaf);
            rows.push((bytes, leaf));
        }
        let root = frontier.root();
        let head = TreeHead {
            size: frontier.size(),
            root,
        };
        let note = Checkpoint {
            origin: self.signer.verifier_key().name().to_owned(),
            head,
        }
        .sign(&self.signer)
        .map_err(|e| WriteError::Storage(format!("signing the checkpoint: {e}")))?;
        tx.insert_audit_entries(first, &rows)
            .await
            .map_err(storage_error)?;
        let record_count = rows.len() as u64;
        let leaves = rows.iter().map(|(_, leaf)| *leaf).collect();
        let batch = Arc::new(CommittedBatch {
            tree: BatchTree::new(before, leaves),
            entries: rows.into_iter().map(|(bytes, _)| bytes).collect(),
        });
        let context = ApplyContext {
            batch: &batch,
            note: &note,
            tree_size: head.size,
        };
        // Each decision's changes carry the index of its first record: the entry that
        // records the decision behind them.
        // The common inserts (replay rows, inbox rows, outbox rows) wait in `pending` and go
        // in together per table (on PostgreSQL as one `UNNEST` statement each: a statement is
        // a round trip). Any other change first writes what is pending, so every change still
        // sees the ones before it, in order.
        let mut counts: Vec<Vec<u64>> = Vec::with_capacity(units.len());
        let mut answers = Vec::with_capacity(units.len());
        let mut pending = PendingRows::default();
        let mut unit_first = first;
        for (decision, unit) in units.iter().enumerate() {
            counts.push(Vec::with_capacity(unit.changes.len()));
            let mut answer = None;
            for (position, change) in unit.changes.iter().enumerate() {
                let slot = Slot { decision, position };
                let count = if pending
                    .take(change, slot, unit_first, &context, &mut answer)
                    .map_err(storage_error)?
                {
                    // Filled in when the pending rows are written.
                    0
                } else {
                    pending
                        .write(&mut tx, &mut counts)
                        .await
                        .map_err(storage_error)?;
                    let so_far = counts.get(decision).map(Vec::as_slice).unwrap_or_default();
                    change
                        .apply(&mut tx, unit_first, &context, so_far, &mut answer)
                        .await
                        .map_err(storage_error)?
                };
                if let Some(decision_counts) = counts.get_mut(decision) {
                    decision_counts.push(count);
                }
            }
            answers.push(answer);
            unit_first += unit.records.len() as u64;
        }
        pending
            .write(&mut tx, &mut counts)
            .await
            .map_err(storage_error)?;
        // A receipt stored as its parts is rebuilt with this commit's checkpoint, so a commit
        // that stored one keeps its checkpoint in the history.
        let keep_history = pending.stored_receipt_parts
            || self
                .last_history
                .is_none_or(|t| t.elapsed() >= HISTORY_INTERVAL);
        tx.save_audit_tree(&StoredTree { frontier, root }, &note, keep_history)
            .await
            .map_err(storage_error)?;
        tx.commit().await.map_err(storage_error)?;
        if let Some(cache) = &self.consent_cache {
            let changed: Vec<&ConsentId> = units
                .iter()
                .flat_map(|unit| &unit.changes)
                .filter_map(StateChange::changed_consent)
                .collect();
            if !changed.is_empty() {
                cache.forget(changed);
            }
        }
        if self.db.is_synchronous() && self.stats.sqlite_synchronous().is_none() {
            self.note_sqlite_synchronous();
        }
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(record_count, Ordering::Relaxed);
        self.floor = head.size;
        if keep_history {
            self.last_history = Some(Instant::now());
        }
        Ok((
            first,
            Arc::new(CommittedCheckpoint { head, note }),
            batch,
            counts,
            answers,
        ))
    }

    /// Reads the SQLite writer connection's `synchronous` setting into the stats, for /readyz.
    fn note_sqlite_synchronous(&mut self) {
        match self.db.sqlite_synchronous() {
            Ok(Some(level)) => {
                let known = u64::try_from(level).map_or(0, |level| level + 1);
                self.stats
                    .sqlite_synchronous
                    .store(known, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "the audit writer cannot open its database connection yet");
            }
        }
    }

    /// Writes the newest checkpoint to the state file, at most once per interval unless forced.
    fn publish(&mut self, force: bool) {
        let due = force
            || self
                .last_publish
                .is_none_or(|t| t.elapsed() >= PUBLISH_INTERVAL);
        if !due {
            return;
        }
        if let Some(checkpoint) = self.unpublished.take() {
            if let Err(e) = write_published(&self.published_path, &checkpoint.note) {
                tracing::error!(error = %e, path = %self.published_path.display(), "cannot write the published checkpoint state file");
                self.unpublished = Some(checkpoint);
                self.publish_failing_since.get_or_insert_with(Instant::now);
                self.last_publish = Some(Instant::now());
                return;
            }
            self.publish_failing_since = None;
            self.last_publish = Some(Instant::now());
        }
    }
}
