//! The delivery worker: sends what the outbox holds to its peers, verifies each receipt, and
//! records the outcome.
//!
//! The backlog lives in the database: each round claims at most [`CLAIM_LIMIT`] due rows per
//! peer (with a lease, so replicas on one PostgreSQL database never send the same row at once),
//! so memory is bounded whatever the backlog. Withdrawal notices are claimed first. Each batch
//! goes in one request from a task of its own, so a slow peer never holds up the others; a
//! peer has at most two batches in flight, and a batch with a consent notice goes alone, so
//! data never overtakes the notice it depends on (`deliver_once`). A failed attempt is
//! retried with exponential backoff and full jitter; a peer that keeps failing trips its
//! circuit breaker, and while it is open that peer's rows are not even claimed. A peer's
//! refusal (a 4xx problem) is final and recorded with its reason. Delivery is at-least-once on
//! the wire and exactly-once in effect: the receiver answers a replay with the first receipt.

use crate::consent;
use crate::domain::OrgId;
use crate::federation::{self, PeerError};
use crate::node::NodeState;
use crate::storage::{self, ClaimedMessage};
use actix_web::web;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::watch;

/// Rows claimed per peer and round: as many as a receiver takes in one batch request, so a
/// backlog goes in full batches (one round trip and a few group commits at the receiver each);
/// with envelopes of at most 64 KiB and [`BATCHES_IN_FLIGHT`] batches, at most 32 MiB per peer
/// in memory, however long the backlog.
const CLAIM_LIMIT: u32 = federation::MAX_BATCH_ENVELOPES as u32;
/// Batches in flight to one peer at most (see `deliver_once`).
const BATCHES_IN_FLIGHT: u32 = 2;
/// How long a claim lasts if the worker dies holding it.
const LEASE: time::Duration = time::Duration::seconds(60);
/// The first retry delay; it doubles with each attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Consecutive failures that open a peer's circuit breaker.
const BREAKER_THRESHOLD: u32 = 5;
const FIRST_COOLDOWN: Duration = Duration::from_millis(500);
const MAX_COOLDOWN: Duration = Duration::from_secs(30);
/// How long the worker sleeps when nothing is due and nobody wakes it.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Counters of the worker's work, for metrics and tests.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub refused: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub breaker_opened: AtomicU64,
    pub breaker_closed: AtomicU64,
}

impl DeliveryStats {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One peer's circuit breaker.
#[derive(Debug, Clone)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failures: 0,
            open_until: None,
            cooldown: FIRST_COOLDOWN,
        }
    }
}

/// What is in flight to one peer: how many batches, and whether one of them carries a consent
/// notice (then it goes alone, so that nothing overtakes it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Lane {
    batches: u32,
    notices: bool,
}

/// The breakers of all peers, and what each peer has in flight.
#[derive(Debug, Default)]
pub struct Breakers {
    peers: Mutex<HashMap<OrgId, Breaker>>,
    lanes: Mutex<HashMap<OrgId, Lane>>,
}

impl Breakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrgId, Breaker>> {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_lanes(&self) -> std::sync::MutexGuard<'_, HashMap<OrgId, Lane>> {
        self.lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lane(&self, peer: &OrgId) -> Lane {
        self.lock_lanes().get(peer).copied().unwrap_or_default()
    }

    /// A batch to `peer` is sent (`notices`: it carries a consent notice).
    fn start(&self, peer: &OrgId, notices: bool) {
        let mut lanes = self.lock_lanes();
        let lane = lanes.entry(peer.clone()).or_default();
        lane.batches = lane.batches.saturating_add(1);
        lane.notices |= notices;
    }

    /// A batch to `peer` is settled.
    fn finish(&self, peer: &OrgId, notices: bool) {
        let mut lanes = self.lock_lanes();
        let lane = lanes.entry(peer.clone()).or_default();
        lane.batches = lane.batches.saturating_sub(1);
        if notices {
            lane.notices = false;
        }
        if lane.batches == 0 {
            lanes.remove(peer);
        }
    }

    /// The peers whose breaker is open now.
    fn open(&self) -> Vec<OrgId> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, b)| b.open_until.is_some_and(|until| until > now))
            .map(|(org, _)| org.clone())
            .collect()
    }

    /// Whether the breaker is half open: its cooldown passed, one trial may go.
    fn half_open(&self, peer: &OrgId) -> bool {
        self.lock()
            .get(peer)
            .is_some_and(|b| b.open_until.is_some())
    }

    fn success(&self, peer: &OrgId, stats: &DeliveryStats) {
        let mut peers = self.lock();
        let breaker = peers.entry(peer.clone()).or_default();
        if breaker.open_until.is_some() {
            tracing::info!(%peer, "circuit breaker closed: the peer answers again");
            DeliveryStats::add(&stats.breaker_closed);
        }
        *breaker = Breaker::default();
    }

    fn failure(&self, peer: &OrgId, stats: &DeliveryStats) {
        let mut peers = self.lock();
        let breaker = peers.entry(peer.clone()).or_default();
        breaker.failures = breaker.failures.saturating_add(1);
        let reopening = breaker.open_until.is_some();
        if reopening || breaker.failures >= BREAKER_THRESHOLD {
            if reopening {
                breaker.cooldown = (breaker.cooldown * 2).min(MAX_COOLDOWN);
            } else {
                tracing::warn!(%peer, failures = breaker.failures, "circuit breaker opened: not calling the peer for a while");
                DeliveryStats::add(&stats.breaker_opened);
            }
            breaker.open_until = Some(Instant::now() + breaker.cooldown);
        }
    }
}

/// The delay before attempt `attempts + 1`: exponential, capped, with full jitter in its upper
/// half so that retries from many nodes do not line up.
fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.min(16);
    let cap = BASE_BACKOFF
        .saturating_mul(1u32 << exponent)
        .min(MAX_BACKOFF);
    let jitter = consent::random_bytes::<2>()
        .map(u16::from_le_bytes)
        .unwrap_or(u16::MAX);
    let half = cap / 2;
    half + half.mul_f64(f64::from(jitter) / f64::from(u16::MAX))
}

fn to_time(duration: Duration) -> time::Duration {
    time::Duration::try_from(duration).unwrap_or(time::Duration::MAX)
}

/// Whether a refusal is final: the peer's admission decided about this message (one of the
/// admission reason codes). Anything else (the peer could not decide now, does not take us as a
/// member yet, or is overloaded) is worth retrying.
fn is_final(status: u16, body: &str) -> bool {
    (400..500).contains(&status)
        && status != 408
        && status != 429
        && crate::problem::REFUSAL_CODES.contains(&problem_reason(body).as_str())
}

/// The reason code of a problem document, if it is one.
fn problem_reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "refused".into())
}

/// What became of one attempt at one message.
enum Attempt {
    Receipt(crate::wire::ReceiptV1),
    /// The peer answered with a problem for this message.
    Problem {
        status: u16,
        body: String,
    },
    /// The request did not get an answer about this message.
    Failed(String),
}

/// What to record of one attempt. Outcomes of a batch are recorded together, so that a batch
/// of deliveries costs one commit at the sender, not one per message.
enum Settled {
    Delivered {
        id: String,
        receipt: String,
    },
    Refused {
        id: String,
        problem: String,
        reason: String,
    },
    Retry {
        id: String,
        attempts: u32,
        next: OffsetDateTime,
    },
}

/// What judging a batch's receipts shares: the peer's checkpoints, each opened (its signature
/// checked) once.
struct ReceiptJudge<'k> {
    checkpoints: Option<crate::receipt::OpenedCheckpoints<'k>>,
}

impl<'k> ReceiptJudge<'k> {
    fn new(key: Option<&'k crate::signed_note::VerifierKey>) -> Self {
        Self {
            checkpoints: key.map(crate::receipt::OpenedCheckpoints::new),
        }
    }

    /// The receipts' checkpoints left the peer: keep them to hold the peer's log to them.
    async fn observe(self, state: &NodeState, peer: &OrgId) {
        for (note, head) in self.checkpoints.iter().flat_map(|c| c.opened_heads()) {
            crate::peer_logs::observe_receipt(state, peer, note, head).await;
        }
    }
}

/// Judges one attempt: a receipt that verifies, a final refusal, or a retry.
fn judge_attempt(
    state: &NodeState,
    peer: &OrgId,
    message: &ClaimedMessage,
    attempt: Attempt,
    judge: &mut ReceiptJudge<'_>,
) -> Settled {
    let stats = &state.delivery_stats;
    match attempt {
        Attempt::Receipt(receipt) => {
            let verified = judge.checkpoints.as_mut().map(|checkpoints| {
                checkpoints.verify(&receipt, &message.message_id, &message.envelope)
            });
            match (verified, serde_json::to_string(&receipt)) {
                (Some(Ok(_)), Ok(json)) => {
                    state.breakers.success(peer, stats);
                    DeliveryStats::add(&stats.delivered);
                    Settled::Delivered {
                        id: message.message_id.clone(),
                        receipt: json,
                    }
                }
                (verified, _) => {
                    // A receipt that does not verify proves nothing: keep the message queued
                    // and say so loudly. The peer answers a retry with the same receipt, so
                    // this needs an operator.
                    tracing::error!(%peer, message_id = %message.message_id, problem = ?verified, "the peer's receipt does not verify");
                    retry(state, peer, message)
                }
            }
        }
        Attempt::Problem { status, body } if is_final(status, &body) => {
            state.breakers.success(peer, stats);
            DeliveryStats::add(&stats.refused);
            let reason = problem_reason(&body);
            tracing::info!(%peer, message_id = %message.message_id, %reason, "the peer refused a message");
            Settled::Refused {
                id: message.message_id.clone(),
                problem: body,
                reason,
            }
        }
        Attempt::Problem { status, .. } => {
            tracing::debug!(%peer, status, "the peer could not take a message now");
            retry(state, peer, message)
        }
        Attempt::Failed(error) => {
            tracing::debug!(%peer, %error, "delivery attempt failed");
            retry(state, peer, message)
        }
    }
}

/// Records what became of a batch of attempts: deliveries in one transaction, retries in one.
async fn record(state: &NodeState, settled: Vec<Settled>) {
    let now = state.clock.now();
    let mut delivered = Vec::new();
    let mut retries = Vec::new();
    let mut outcome = Ok(());
    for item in settled {
        match item {
            Settled::Delivered { id, receipt } => delivered.push((id, receipt)),
            Settled::Retry { id, attempts, next } => retries.push((id, attempts, next)),
            Settled::Refused {
                id,
                problem,
                reason,
            } => {
                if let Err(e) = storage::mark_refused(&state.db, &id, &problem, &reason, now).await
                {
                    outcome = Err(e);
                }
            }
        }
    }
    if !delivered.is_empty()
        && let Err(e) = storage::mark_delivered_many(&state.db, &delivered, now).await
    {
        outcome = Err(e);
    }
    if !retries.is_empty()
        && let Err(e) = storage::release_claims_many(&state.db, &retries, now).await
    {
        outcome = Err(e);
    }
    if let Err(e) = outcome {
        // The claims' leases end and the rows are attempted again; the receiver answers a
        // repeated message with its first answer, so nothing is applied twice.
        tracing::error!(error = %e, "could not record delivery outcomes");
    }
}

fn attempt_of(result: Result<crate::wire::ReceiptV1, PeerError>) -> Attempt {
    match result {
        Ok(receipt) => Attempt::Receipt(receipt),
        Err(PeerError::Refused { status, body }) => Attempt::Problem { status, body },
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

/// Sends one peer's claimed messages: alone, or as one batch request, and records each.
async fn deliver_to_peer(state: &NodeState, peer: &OrgId, messages: Vec<ClaimedMessage>) {
    let mut settled = Vec::with_capacity(messages.len());
    let key = state
        .manifest
        .snapshot()
        .member(peer)
        .map(|m| m.audit_key.clone());
    let mut judge = ReceiptJudge::new(key.as_ref());
    if let [message] = messages.as_slice() {
        let result = federation::send_envelope(state, peer, message.envelope.clone()).await;
        crate::failpoint::hit(crate::failpoint::SENDER_AFTER_SEND);
        settled.push(judge_attempt(
            state,
            peer,
            message,
            attempt_of(result),
            &mut judge,
        ));
        judge.observe(state, peer).await;
        record(state, settled).await;
        return;
    }
    let envelopes: Vec<&[u8]> = messages.iter().map(|m| m.envelope.as_slice()).collect();
    let result = federation::send_batch(state, peer, &envelopes).await;
    crate::failpoint::hit(crate::failpoint::SENDER_AFTER_SEND);
    match result {
        Ok(results) => {
            for (message, result) in messages.iter().zip(results) {
                let attempt = match result {
                    federation::ItemResult::Receipt(receipt) => Attempt::Receipt(receipt),
                    federation::ItemResult::Problem { status, body } => {
                        Attempt::Problem { status, body }
                    }
                };
                settled.push(judge_attempt(state, peer, message, attempt, &mut judge));
            }
        }
        // The request as a whole got no per-envelope answers (the peer was down, did not take
        // us as a member yet, or refused the batch itself): nothing was decided about any one
        // message, so every one is retried.
        Err(e) => {
            let error = e.to_string();
            for message in &messages {
                let again = Attempt::Failed(error.clone());
                settled.push(judge_attempt(state, peer, message, again, &mut judge));
            }
        }
    }
    judge.observe(state, peer).await;
    record(state, settled).await;
}

/// A retry of `message`: counts the failure and schedules the next attempt with backoff.
fn retry(state: &NodeState, peer: &OrgId, message: &ClaimedMessage) -> Settled {
    DeliveryStats::add(&state.delivery_stats.failed_attempts);
    state.breakers.failure(peer, &state.delivery_stats);
    Settled::Retry {
        id: message.message_id.clone(),
        attempts: message.attempts.saturating_add(1),
        next: state.clock.now() + to_time(backoff(message.attempts)),
    }
}

/// One round: for each peer that is not behind an open breaker and has room for another
/// batch, claims its due rows and starts a task for them. Returns how many rows were claimed.
///
/// A peer may have [`BATCHES_IN_FLIGHT`] batches in flight, so that its admissions overlap
/// with this node's work on the previous batch's receipts. Order still holds where it matters:
/// a batch with a consent notice goes only when nothing else is in flight and alone, and a
/// batch sent beside another holds only data accepted before the peer's first queued notice
/// (data never depends on other data, but data under a consent must not overtake its grant).
async fn deliver_once(
    state: &web::Data<NodeState>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<usize, storage::StorageError> {
    let now: OffsetDateTime = state.clock.now();
    let open = state.breakers.open();
    let peers: Vec<OrgId> = state
        .manifest
        .snapshot()
        .members
        .keys()
        .filter(|org| **org != state.identity.org && !open.contains(org))
        .cloned()
        .collect();
    let mut count = 0;
    for peer in peers {
        let lane = state.breakers.lane(&peer);
        let half_open = state.breakers.half_open(&peer);
        // A half-open breaker lets one trial through; the rest wait for its outcome.
        if lane.notices || lane.batches >= BATCHES_IN_FLIGHT || (half_open && lane.batches > 0) {
            continue;
        }
        // A notice that could go now must not wait behind the data of a second lane (a
        // withdrawal goes ahead of queued data, DESIGN §3): then the lane drains first, and the
        // next round claims the notice.
        if lane.batches > 0 && storage::has_claimable_notice(&state.db, now, &peer).await? {
            continue;
        }
        let limit = if half_open { 1 } else { CLAIM_LIMIT };
        let scope = if lane.batches == 0 {
            storage::ClaimScope::Any
        } else {
            storage::ClaimScope::DataBeforeNotices
        };
        let messages = storage::claim_due(&state.db, now, now + LEASE, &peer, limit, scope).await?;
        if messages.is_empty() {
            continue;
        }
        count += messages.len();
        let notices = messages.iter().any(|m| m.is_notice);
        state.breakers.start(&peer, notices);
        // The lane is given back however the task ends, a panic included: a lane never given
        // back would hold the peer's notices (and what follows them) back for good.
        let lane = LaneInUse {
            state: state.clone(),
            peer,
            notices,
        };
        tasks.spawn(async move {
            deliver_to_peer(&lane.state, &lane.peer, messages).await;
        });
    }
    Ok(count)
}

/// A batch in flight to a peer: its lane is given back when this is dropped.
struct LaneInUse {
    state: web::Data<NodeState>,
    peer: OrgId,
    notices: bool,
}

impl Drop for LaneInUse {
    fn drop(&mut self) {
        self.state.breakers.finish(&self.peer, self.notices);
        // The peer may have more due: look again now.
        self.state.delivery_wake.notify_one();
    }
}

/// How long a stopping node waits for deliveries in flight before it abandons them (their
/// claims run out and they are sent again; the receiver answers a repeat with its first answer).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The worker: rounds until stopped; sleeps when idle until woken by a new message or a
/// finished peer task. Each peer has its own task, so a slow peer never holds up the others.
pub async fn run(state: web::Data<NodeState>, mut stop: watch::Receiver<bool>) {
    // An SQLite database belongs to this one node, so claims left by a previous run of it (say,
    // killed mid-delivery) are stale: free them now rather than wait for their lease. On
    // PostgreSQL another replica may hold a live claim, so leases simply run out.
    if let Err(e) = storage::release_own_stale_claims(&state.db).await {
        tracing::warn!(error = %e, "could not release stale delivery claims");
    }
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if *stop.borrow() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let claimed = match deliver_once(&state, &mut tasks).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "delivery round failed");
                0
            }
        };
        if claimed > 0 {
            continue;
        }
        tokio::select! {
            _ = state.delivery_wake.notified() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = stop.changed() => {}
        }
    }
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_in_its_upper_half() {
        for attempts in 0..30 {
            let cap = BASE_BACKOFF
                .saturating_mul(1u32 << attempts.min(16))
                .min(MAX_BACKOFF);
            let delay = backoff(attempts);
            assert!(delay >= cap / 2 && delay <= cap, "{attempts}: {delay:?}");
        }
        assert!(backoff(30) <= MAX_BACKOFF);
    }

    #[test]
    fn only_a_decision_of_the_peer_about_the_message_is_final() {
        let problem = |reason: &str| format!("{{\"reason\":\"{reason}\"}}");
        assert!(is_final(403, &problem("consent-not-active")));
        assert!(is_final(409, &problem("message-id-conflict")));
        assert!(is_final(422, &problem("schema-invalid")));
        // Membership and capacity are not decisions about the message.
        assert!(!is_final(403, &problem("peer-not-member")));
        assert!(!is_final(429, &problem("consent-not-active")));
        assert!(!is_final(408, &problem("schema-invalid")));
        assert!(!is_final(503, &problem("unavailable")));
        assert!(!is_final(502, "not json"));
    }

    #[test]
    fn the_breaker_opens_after_repeated_failures_and_closes_on_success() {
        let breakers = Breakers::default();
        let stats = DeliveryStats::default();
        let peer: OrgId = "red-barnet".parse().unwrap();
        for _ in 1..BREAKER_THRESHOLD {
            breakers.failure(&peer, &stats);
        }
        assert!(breakers.open().is_empty());
        breakers.failure(&peer, &stats);
        assert_eq!(breakers.open(), vec![peer.clone()]);
        assert_eq!(stats.breaker_opened.load(Ordering::Relaxed), 1);
        breakers.success(&peer, &stats);
        assert!(breakers.open().is_empty());
        assert_eq!(stats.breaker_closed.load(Ordering::Relaxed), 1);
    }
}
