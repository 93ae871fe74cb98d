//! Responses that can only be built with proof that their decision is in the audit log.
//!
//! A handler on an audited route returns `Audited<HttpResponse>`, and the only way to make one
//! is [`Audited::new`] with the [`AuditReceipt`] the write path returned. So answering before
//! the audit append succeeded is a compile error, not a review finding. The helpers here build
//! the audit records of the HTTP layer with the node's clock.

use crate::audit::entry::{AuditRecord, Decision};
use crate::node::NodeState;
use crate::problem::Problem;
use crate::write_path::AuditReceipt;
use actix_web::body::BoxBody;
use actix_web::{HttpRequest, HttpResponse, Responder};

/// A response whose decision is durable in the audit log.
pub struct Audited<T> {
    response: T,
    receipt: AuditReceipt,
}

impl<T> Audited<T> {
    pub fn new(receipt: AuditReceipt, response: T) -> Self {
        Self { response, receipt }
    }

    pub fn receipt(&self) -> &AuditReceipt {
        &self.receipt
    }
}

impl<T: Responder> Responder for Audited<T> {
    type Body = T::Body;

    fn respond_to(self, req: &HttpRequest) -> HttpResponse<Self::Body> {
        self.response.respond_to(req)
    }
}

/// The audit entry's time format: RFC 3339 UTC with milliseconds.
pub fn audit_time(now: time::OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

/// A record of this node's decision, timed by the node's clock.
pub fn record(
    state: &NodeState,
    action: &str,
    decision: Decision,
    reason: Option<&str>,
) -> AuditRecord {
    AuditRecord {
        time: audit_time(state.clock.now()),
        action: action.to_owned(),
        decision: Some(decision),
        reason: reason.map(str::to_owned),
        ..AuditRecord::default()
    }
}

/// Appends a denial and returns the problem to answer with. If the append fails the answer is
/// 503 instead: the node does not refuse (or answer) anything it could not record.
pub async fn deny(state: &NodeState, mut record: AuditRecord, problem: Problem) -> Problem {
    record.decision = Some(Decision::Deny);
    record.reason = Some(problem.reason.to_owned());
    match state.audit.append(record).await {
        Ok(_) => problem,
        Err(e) => Problem::unavailable(&e),
    }
}

/// Appends a permit; the receipt is the licence to answer.
pub async fn permit(state: &NodeState, record: AuditRecord) -> Result<AuditReceipt, Problem> {
    state
        .audit
        .append(record)
        .await
        .map_err(|e| Problem::unavailable(&e))
}

impl Responder for Problem {
    type Body = BoxBody;

    fn respond_to(self, _req: &HttpRequest) -> HttpResponse<BoxBody> {
        self.respond()
    }
}

/// An admission whose decision, if it made one, is durable.
pub enum Settled {
    /// A replay: the first answer, recorded the first time.
    Replay(crate::storage::SeenMessage, crate::domain::MessageId),
    /// A fresh decision, committed: what to answer, and what the commit returned.
    Decided(
        crate::admission::Outcome,
        crate::write_path::CommittedDecision,
    ),
}

/// Appends the fresh decisions among `admissions` (the messages of one request) as one job of
/// the write path, and gives back every admission settled, in order. An admission that failed
/// stays its problem; a decision the writer could not commit becomes `unavailable`. Each
/// decision's claim on its message id is kept by the job until its commit.
pub async fn settle(
    state: &NodeState,
    admissions: Vec<Result<crate::admission::Admission, Problem>>,
) -> Vec<Result<Settled, Problem>> {
    use crate::admission::Admission;
    // Per admission: settled now (a problem, a replay), or its decision's place in the job.
    let mut planned = Vec::with_capacity(admissions.len());
    let mut decisions = Vec::new();
    let mut holds: Vec<crate::write_path::Hold> = Vec::new();
    let mut outcomes = Vec::new();
    for admission in admissions {
        match admission {
            Err(problem) => planned.push(Err(Err(problem))),
            Ok(Admission::Replay(seen, message_id)) => {
                planned.push(Err(Ok(Settled::Replay(seen, message_id))));
            }
            Ok(Admission::Decided(decided)) => {
                let decided = *decided;
                if let Some(guard) = decided.in_flight {
                    holds.push(Box::new(guard));
                }
                planned.push(Ok(decisions.len()));
                decisions.push((decided.record, decided.changes));
                outcomes.push(Some(decided.outcome));
            }
        }
    }
    let mut committed: Vec<Option<Result<_, Problem>>> = if decisions.is_empty() {
        Vec::new()
    } else {
        match state.audit.append_decisions(decisions, holds).await {
            Ok(results) => results
                .into_iter()
                .map(|result| Some(result.map_err(|e| Problem::unavailable(&e))))
                .collect(),
            Err(e) => {
                let problem = Problem::unavailable(&e);
                outcomes
                    .iter()
                    .map(|_| Some(Err(problem.clone())))
                    .collect()
            }
        }
    };
    planned
        .into_iter()
        .map(|plan| match plan {
            Err(now) => now,
            Ok(position) => match (
                committed.get_mut(position).and_then(Option::take),
                outcomes.get_mut(position).and_then(Option::take),
            ) {
                (Some(done), Some(outcome)) => {
                    done.map(|decision| Settled::Decided(outcome, decision))
                }
                _ => Err(Problem::internal(&"a decision without its commit")),
            },
        })
        .collect()
}
