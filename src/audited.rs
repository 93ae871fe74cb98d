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
