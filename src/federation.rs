//! The peer-facing HTTP side: the mTLS federation listener's routes, the per-request peer
//! authentication, and the client that calls other members.
//!
//! Every request on the federation listener passes [`AuthenticatedPeer`]: the certificate the
//! TLS layer verified (kept per connection) is mapped to a current member of the manifest
//! snapshot taken for this request, so a member removed by a newer manifest is refused even on
//! a connection that was opened before. This module never speaks SQL.

use crate::admission::{self, Admission, Outcome};
use crate::audit::entry::Decision;
use crate::audited::{self, Audited};
use crate::domain::{NodeIdentity, OrgId};
use crate::identity::{IdentityError, certificate_validity, identity_from_certificate};
use crate::manifest::Member;
use crate::node::NodeState;
use crate::problem::Problem;
use crate::storage::SeenMessage;
use crate::wire::{AckV1, ReceiptV1};
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;

/// What the TLS layer proved about the client of one connection, parsed once per connection.
#[derive(Debug, Clone)]
pub struct ConnectionPeer {
    identity: Result<NodeIdentity, IdentityError>,
    not_after: Option<OffsetDateTime>,
}

/// `HttpServer::on_connect` hook: reads the verified client certificate from the TLS stream and
/// keeps its parsed identity as connection data.
pub fn on_connect(
    federation: crate::domain::FederationName,
) -> impl Fn(&dyn Any, &mut actix_web::dev::Extensions) + Send + Sync + Clone + 'static {
    move |connection, data| {
        use actix_tls::accept::rustls_0_23::TlsStream;
        let Some(tls) = connection.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>()
        else {
            return;
        };
        let (_, session) = tls.get_ref();
        if let Some(leaf) = session.peer_certificates().and_then(|chain| chain.first()) {
            data.insert(ConnectionPeer {
                identity: identity_from_certificate(leaf, &federation),
                not_after: certificate_validity(leaf).map(|(_, not_after)| not_after),
            });
        }
    }
}

/// A request whose client is a current member, checked against this request's manifest
/// snapshot. Handlers that take it cannot run for anyone else.
#[derive(Debug, Clone)]
pub struct AuthenticatedPeer {
    pub member: Member,
    pub identity: NodeIdentity,
}

impl FromRequest for AuthenticatedPeer {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<NodeState>>().cloned();
        let decision = state.as_ref().map(|state| authenticate_peer(req, state));
        // The route pattern, never the raw path: a path may carry identifiers, and the log keeps
        // identifiers only as HMACs.
        let route = req.match_pattern();
        Box::pin(async move {
            let Some(state) = state else {
                return Err(Problem::internal(
                    &"node state missing from the federation app",
                ));
            };
            match decision {
                Some(Ok(peer)) => Ok(peer),
                Some(Err((problem, claimed))) => {
                    // Every refusal at the boundary is a decision, and decisions are audited
                    // before the node answers.
                    let mut record =
                        audited::record(&state, "federation.request", Decision::Deny, None);
                    record.peer = claimed.map(|org| org.to_string());
                    record.route = route;
                    Err(audited::deny(&state, record, problem).await)
                }
                None => Err(Problem::internal(&"unreachable: state checked above")),
            }
        })
    }
}

/// The membership decision for one request: the peer, or the problem and the org the
/// certificate claimed (if it named one).
fn authenticate_peer(
    req: &HttpRequest,
    state: &NodeState,
) -> Result<AuthenticatedPeer, (Problem, Option<OrgId>)> {
    let now = state.clock.now();
    let manifest = state.manifest.snapshot();
    // The TLS layer requires and verifies a client certificate, so a missing one here means the
    // listener was misconfigured; refuse rather than guess.
    let peer = req.conn_data::<ConnectionPeer>().ok_or_else(|| {
        (
            Problem::peer_not_member("no verified client certificate on this connection"),
            None,
        )
    })?;
    let claimed = peer.identity.as_ref().ok().map(|id| id.org.clone());
    if manifest.is_expired(now) {
        return Err((Problem::manifest_expired(), claimed));
    }
    if peer.not_after.is_none_or(|not_after| now > not_after) {
        return Err((
            Problem::peer_not_member("the client certificate has expired"),
            claimed,
        ));
    }
    let identity = peer
        .identity
        .clone()
        .map_err(|e| (Problem::peer_not_member(e.to_string()), None))?;
    let member = manifest.member_for(&identity).cloned().ok_or_else(|| {
        (
            Problem::peer_not_member(format!(
                "`{}` is not a member in manifest serial {}",
                identity.org, manifest.serial
            )),
            claimed,
        )
    })?;
    Ok(AuthenticatedPeer { member, identity })
}

/// The answer to `GET /fed/v1/ping`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PingResponseV1 {
    /// The caller's org id as this node saw it in the client certificate.
    pub caller: String,
    /// This node's own org id.
    pub node: String,
    pub manifest_serial: u64,
}

async fn ping(
    peer: AuthenticatedPeer,
    state: web::Data<NodeState>,
) -> Result<Audited<HttpResponse>, Problem> {
    let mut record = audited::record(&state, "federation.ping", Decision::Permit, None);
    record.peer = Some(peer.member.org.to_string());
    let receipt = audited::permit(&state, record).await?;
    Ok(Audited::new(
        receipt,
        HttpResponse::Ok().json(PingResponseV1 {
            caller: peer.member.org.to_string(),
            node: state.identity.org.to_string(),
            manifest_serial: state.manifest.snapshot().serial,
        }),
    ))
}

/// The answer to `GET /fed/v1/checkpoint`: this node's latest signed checkpoint and, when asked,
/// a consistency proof that lets the caller check this log extends a checkpoint it kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointAnswerV1 {
    /// The latest signed checkpoint (C2SP `tlog-checkpoint` as a signed note); it covers the
    /// audit entry of this very request.
    pub checkpoint: String,
    /// The checkpoint's tree size and root (lowercase hex), for reading; the caller trusts only
    /// the signed note.
    pub size: u64,
    pub root: String,
    /// With `since`: the proof from that size to `new_size` (the checkpoint's size unless the
    /// caller asked for another with `size`). Absent when `since` is beyond this log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyProofV1>,
}

/// An RFC 9162 consistency proof between two sizes of one log, hashes as lowercase hex.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProofV1 {
    pub old_size: u64,
    pub new_size: u64,
    pub proof: Vec<String>,
}

/// `GET /fed/v1/checkpoint` query: `since` (a size the caller verified before) and, with it,
/// `size` (prove up to this size instead of the latest).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointQuery {
    since: Option<u64>,
    size: Option<u64>,
}

/// `GET /fed/v1/checkpoint[?since=A[&size=B]]`: the latest checkpoint, and a consistency proof
/// from size A to size B (default: the checkpoint's size). The read is audited before the
/// answer, and the checkpoint answered is the one that covers its entry. A `since` beyond this
/// log gets the checkpoint without a proof: the caller then holds a signed checkpoint smaller
/// than one it kept. `size` beyond the log, or below `since`, is a malformed request.
async fn checkpoint(
    peer: AuthenticatedPeer,
    state: web::Data<NodeState>,
    req: HttpRequest,
) -> Result<Audited<HttpResponse>, Problem> {
    let mut record = audited::record(&state, "federation.checkpoint", Decision::Permit, None);
    record.peer = Some(peer.member.org.to_string());
    let query = match web::Query::<CheckpointQuery>::from_query(req.query_string()) {
        Ok(query) => query.into_inner(),
        Err(e) => {
            let problem = Problem::malformed_request(format!("invalid query: {e}"));
            return Err(audited::deny(&state, record, problem).await);
        }
    };
    if let Some(size) = query.size {
        let stored = crate::storage::audit_tree(&state.db)
            .await
            .map_err(|e| Problem::unavailable(&e))?
            .frontier
            .size();
        let refusal = match query.since {
            None => Some("`size` needs `since`".to_owned()),
            Some(since) if since > size || size > stored => Some(format!(
                "no consistency proof from {since} to {size} in a log of {stored} entries"
            )),
            Some(_) => None,
        };
        if let Some(detail) = refusal {
            return Err(audited::deny(&state, record, Problem::malformed_request(detail)).await);
        }
    }
    let receipt = audited::permit(&state, record).await?;
    let head = receipt.checkpoint.head;
    let target = query.size.unwrap_or(head.size);
    let consistency = match query.since {
        Some(since) if since <= target => {
            let proof = crate::log_reader::consistency_proof(&state.db, since, target)
                .await
                .map_err(|e| Problem::from(&e))?;
            Some(ConsistencyProofV1 {
                old_size: since,
                new_size: target,
                proof: proof.iter().map(hex::encode).collect(),
            })
        }
        _ => None,
    };
    let answer = CheckpointAnswerV1 {
        checkpoint: receipt.checkpoint.note.clone(),
        size: head.size,
        root: hex::encode(head.root),
        consistency,
    };
    Ok(Audited::new(receipt, HttpResponse::Ok().json(answer)))
}

/// A failed read of this node's own log: the database is unavailable, or the log is broken.
/// Reads a request body up to `limit` bytes; `None` if it is longer (the rest is not read).
pub(crate) async fn read_limited(
    mut payload: web::Payload,
    limit: usize,
) -> Result<Option<Vec<u8>>, Problem> {
    use futures_util::StreamExt as _;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Problem::malformed_request("the body could not be read"))?;
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// How much request data (in KiB) a node reads and decides at once on one side (the peers'
/// batches, or the local submissions). Decoding and deciding a body holds several times its
/// size, so this bounds a node's memory however many clients send large batches at once; the
/// others wait their turn (their bodies wait in the socket).
pub const BODY_BUDGET_KIB: u32 = 2 * 1024;

/// The budget of request bodies being decided at once (see [`BODY_BUDGET_KIB`]).
#[derive(Debug)]
pub struct BodyBudget(tokio::sync::Semaphore);

impl Default for BodyBudget {
    fn default() -> Self {
        Self(tokio::sync::Semaphore::new(BODY_BUDGET_KIB as usize))
    }
}

/// A request body read within a [`BodyBudget`], which it holds until dropped.
pub struct BudgetedBody<'a> {
    pub bytes: Vec<u8>,
    _reserved: tokio::sync::SemaphorePermit<'a>,
}

/// Like [`read_limited`], but first reserves the body's declared length (or `limit` if none is
/// declared) in `budget`, in one step (so that two bodies never each hold half of what both
/// need). A declared length over `limit` is refused at once, unread.
pub(crate) async fn read_budgeted<'a>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    budget: &'a BodyBudget,
) -> Result<Option<BudgetedBody<'a>>, Problem> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Ok(None);
    }
    let kib = u32::try_from(declared.unwrap_or(limit).div_ceil(1024))
        .unwrap_or(BODY_BUDGET_KIB)
        .clamp(1, BODY_BUDGET_KIB);
    let reserved = budget
        .0
        .acquire_many(kib)
        .await
        .map_err(|e| Problem::internal(&e))?;
    // A body that stops arriving must not hold the budget for long: the others wait on it.
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, read_limited(payload, limit))
        .await
        .map_err(|_| {
            Problem::malformed_request(format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ))
        })??;
    Ok(read.map(|bytes| BudgetedBody {
        bytes,
        _reserved: reserved,
    }))
}

/// How long reading a budgeted request body may take (8 MiB, the largest, at about 1 Mbit/s).
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The answer to an envelope: a fresh decision (audited before it is answered), or the first
/// answer again for a replay (whose decision was audited the first time).
pub enum EnvelopeAnswer {
    Fresh(Audited<HttpResponse>),
    Replay(HttpResponse),
}

impl actix_web::Responder for EnvelopeAnswer {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, req: &HttpRequest) -> HttpResponse {
        match self {
            EnvelopeAnswer::Fresh(answer) => answer.respond_to(req),
            EnvelopeAnswer::Replay(response) => response,
        }
    }
}

/// The header that marks the answer to a replay (the body is the first answer, unchanged).
pub const REPLAYED_HEADER: &str = "brobygger-replayed";

/// The most envelopes one batch request may carry.
pub const MAX_BATCH_ENVELOPES: usize = 256;
/// The largest batch request.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// The answer to one envelope: its status and JSON body (a receipt or a problem document), and
/// the audit receipt of a fresh decision (`None` for a replay).
struct ItemAnswer {
    status: u16,
    body: String,
    audit: Option<crate::write_path::AuditReceipt>,
}

impl ItemAnswer {
    fn response(&self) -> HttpResponse {
        let status = actix_web::http::StatusCode::from_u16(self.status)
            .unwrap_or(actix_web::http::StatusCode::FORBIDDEN);
        let mut response = HttpResponse::build(status);
        response.content_type(if self.status >= 400 {
            crate::problem::CONTENT_TYPE
        } else {
            "application/json"
        });
        if self.audit.is_none() {
            response.insert_header((REPLAYED_HEADER, "true"));
        }
        response.body(self.body.clone())
    }
}

/// Admits one envelope, appends the decision with its changes, and builds the answer.
async fn answer_one(
    state: &NodeState,
    peer: &AuthenticatedPeer,
    bytes: &[u8],
) -> Result<ItemAnswer, Problem> {
    match admission::admit_inbound(state, &peer.member, bytes).await? {
        Admission::Replay(seen, message_id) => {
            let status = seen.status;
            let body = replay_answer(state, &peer.member.org, seen, &message_id).await?;
            Ok(ItemAnswer {
                status,
                body,
                audit: None,
            })
        }
        Admission::Decided(decided) => {
            let decided = *decided;
            // The claim on this message id lives until the commit, even if this request is
            // dropped first (its client gone): a resent copy must then find the decision.
            let hold = decided
                .in_flight
                .map(|guard| Box::new(guard) as crate::write_path::Hold);
            let (receipt, _, answer) = state
                .audit
                .append_decision(decided.record, decided.changes, hold)
                .await
                .map_err(|e| Problem::unavailable(&e))?;
            crate::failpoint::hit(crate::failpoint::RECEIVER_AFTER_COMMIT);
            decided_answer(decided.outcome, receipt, answer)
        }
    }
}

/// The answer to a decision made durable: its refusal, or the delivery receipt the commit
/// remembered with the admitted message (so a replay gets exactly this one).
fn decided_answer(
    outcome: Outcome,
    receipt: crate::write_path::AuditReceipt,
    answer: Option<String>,
) -> Result<ItemAnswer, Problem> {
    let (status, body) = match outcome {
        Outcome::Refused(problem) => (
            problem.status,
            serde_json::to_string(&problem).map_err(|e| Problem::internal(&e))?,
        ),
        Outcome::Admitted { .. } => (
            200,
            answer.ok_or_else(|| Problem::internal(&"an admitted message without its receipt"))?,
        ),
    };
    Ok(ItemAnswer {
        status,
        body,
        audit: Some(receipt),
    })
}

/// Answers the data envelopes of a batch: admitted together (one read of the replay table),
/// their decisions appended as one job (one hand-off to the writer, one commit wait), each
/// answered on its own.
async fn answer_data(
    state: &NodeState,
    peer: &AuthenticatedPeer,
    items: &[&[u8]],
) -> Vec<Result<ItemAnswer, Problem>> {
    let admissions = admission::admit_inbound_batch(state, &peer.member, items).await;
    let settled = audited::settle(state, admissions).await;
    if settled
        .iter()
        .any(|s| matches!(s, Ok(audited::Settled::Decided(..))))
    {
        crate::failpoint::hit(crate::failpoint::RECEIVER_AFTER_COMMIT);
    }
    let mut answers = Vec::with_capacity(settled.len());
    for settled in settled {
        answers.push(match settled {
            Err(problem) => Err(problem),
            Ok(audited::Settled::Replay(seen, message_id)) => {
                let status = seen.status;
                replay_answer(state, &peer.member.org, seen, &message_id)
                    .await
                    .map(|body| ItemAnswer {
                        status,
                        body,
                        audit: None,
                    })
            }
            Ok(audited::Settled::Decided(outcome, decision)) => {
                decided_answer(outcome, decision.receipt, decision.answer)
            }
        });
    }
    answers
}

/// `POST /fed/v1/envelopes`: one envelope (a JSON object), or a batch (a JSON array of
/// envelopes). Each envelope is admitted on its own (DESIGN §5), its decision appended with its
/// state changes in one transaction, then answered: a receipt or a problem. A batch is answered
/// 200 with one result per envelope, in order; the envelopes of a batch share group commits.
async fn receive_envelope(
    peer: AuthenticatedPeer,
    state: web::Data<NodeState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<EnvelopeAnswer, Problem> {
    let Some(body) = read_budgeted(&req, payload, MAX_BATCH_BYTES, &state.peer_bodies).await?
    else {
        return Err(refuse_request(&state, &peer, Problem::body_too_large(MAX_BATCH_BYTES)).await);
    };
    let bytes = &body.bytes;
    let is_batch = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    if !is_batch {
        let answer = answer_one(&state, &peer, bytes).await?;
        let response = answer.response();
        return Ok(match answer.audit {
            Some(receipt) => EnvelopeAnswer::Fresh(Audited::new(receipt, response)),
            None => EnvelopeAnswer::Replay(response),
        });
    }
    // The whole batch must be one strict JSON document before any envelope is read from it.
    let items: Vec<&serde_json::value::RawValue> = match crate::strict_json::parse(bytes)
        .ok()
        .and_then(|_| serde_json::from_slice(bytes).ok())
    {
        Some(items) => items,
        None => {
            let problem = Problem::refused(
                "malformed-json",
                "a batch is one strict JSON array of envelopes",
                None,
            );
            return Err(refuse_request(&state, &peer, problem).await);
        }
    };
    if items.is_empty() || items.len() > MAX_BATCH_ENVELOPES {
        let problem = Problem::malformed_request(format!(
            "a batch holds 1 to {MAX_BATCH_ENVELOPES} envelopes"
        ));
        return Err(refuse_request(&state, &peer, problem).await);
    }
    let answers = answer_batch(&state, &peer, &items).await;
    let mut results = Vec::with_capacity(answers.len());
    let mut last_receipt = None;
    for answer in answers {
        let answer = answer?;
        let body = serde_json::value::RawValue::from_string(answer.body)
            .map_err(|e| Problem::internal(&e))?;
        results.push(BatchResultV1 {
            status: answer.status,
            replayed: answer.audit.is_none(),
            answer: body,
        });
        last_receipt = answer.audit.or(last_receipt);
    }
    let response = HttpResponse::Ok().json(BatchAnswerV1 { results });
    Ok(match last_receipt {
        Some(receipt) => EnvelopeAnswer::Fresh(Audited::new(receipt, response)),
        None => EnvelopeAnswer::Replay(response),
    })
}

/// What admission needs to know of a batch item before reading it properly: its type and id.
fn peek(item: &serde_json::value::RawValue) -> (Option<String>, Option<String>) {
    let value: serde_json::Value = serde_json::from_str(item.get()).unwrap_or_default();
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    (text("type"), text("message_id"))
}

/// Answers the envelopes of a batch, in order. Consent notices go first, one after the other in
/// the order given, so that data under a consent granted in the same batch finds it; the data
/// messages then go together (sharing group commits). A message id used twice in one batch is
/// refused the second time (`message-id-conflict`): both cannot be admitted.
async fn answer_batch(
    state: &NodeState,
    peer: &AuthenticatedPeer,
    items: &[&serde_json::value::RawValue],
) -> Vec<Result<ItemAnswer, Problem>> {
    let mut answers: Vec<Option<Result<ItemAnswer, Problem>>> =
        (0..items.len()).map(|_| None).collect();
    let mut seen_ids = std::collections::HashSet::new();
    let mut notices = Vec::new();
    let mut data = Vec::new();
    for (position, item) in items.iter().enumerate() {
        let (kind, id) = peek(item);
        if let Some(id) = id
            && !seen_ids.insert(id)
        {
            let problem = Problem::refused(
                "message-id-conflict",
                "this message id is used by an earlier envelope of the same batch",
                Some("/message_id".into()),
            );
            if let Some(slot) = answers.get_mut(position) {
                *slot = Some(refuse_item(state, peer, problem).await);
            }
            continue;
        }
        if kind.as_deref().is_some_and(|k| k.starts_with("consent.")) {
            notices.push(position);
        } else {
            data.push(position);
        }
    }
    let mut notice_failed = None;
    for position in notices {
        if let (Some(item), Some(slot)) = (items.get(position), answers.get_mut(position)) {
            let answer = answer_one(state, peer, item.get().as_bytes()).await;
            if let Err(problem) = &answer {
                notice_failed.get_or_insert_with(|| problem.clone());
            }
            *slot = Some(answer);
        }
    }
    // A notice that could not be decided now (the node could not record it) fails the request,
    // and the sender sends the batch again. Its data is then not decided at all: decided now,
    // without the consent its notice brings, it would be refused, and that refusal remembered
    // as the answer to every retry.
    let data_answers = match notice_failed {
        Some(problem) => data.iter().map(|_| Err(problem.clone())).collect(),
        None => {
            let bytes: Vec<&[u8]> = data
                .iter()
                .filter_map(|position| items.get(*position).map(|item| item.get().as_bytes()))
                .collect();
            answer_data(state, peer, &bytes).await
        }
    };
    for (position, answer) in data.into_iter().zip(data_answers) {
        if let Some(slot) = answers.get_mut(position) {
            *slot = Some(answer);
        }
    }
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| Err(Problem::internal(&"a batch item without an answer")))
        })
        .collect()
}

/// Audits the refusal of one batch item that admission never read, and answers it.
async fn refuse_item(
    state: &NodeState,
    peer: &AuthenticatedPeer,
    problem: Problem,
) -> Result<ItemAnswer, Problem> {
    let mut record = audited::record(state, "federation.envelope", Decision::Deny, None);
    record.peer = Some(peer.member.org.to_string());
    record.reason = Some(problem.reason.to_owned());
    let receipt = audited::permit(state, record).await?;
    Ok(ItemAnswer {
        status: problem.status,
        body: serde_json::to_string(&problem).map_err(|e| Problem::internal(&e))?,
        audit: Some(receipt),
    })
}

/// One envelope's result in a batch: its status and its answer (a receipt or a problem).
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchResultV1 {
    pub status: u16,
    #[serde(default)]
    pub replayed: bool,
    pub answer: Box<serde_json::value::RawValue>,
}

/// The answer to a batch of envelopes, one result per envelope in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchAnswerV1 {
    pub results: Vec<BatchResultV1>,
}

/// Records the refusal of a whole request (before any envelope in it was read) and returns it.
async fn refuse_request(state: &NodeState, peer: &AuthenticatedPeer, problem: Problem) -> Problem {
    let mut record = audited::record(state, "federation.envelope", Decision::Deny, None);
    record.peer = Some(peer.member.org.to_string());
    record.route = Some("/fed/v1/envelopes".into());
    audited::deny(state, record, problem).await
}

/// The acknowledgement of a withdrawal, with the counts the changes returned.
pub fn fill_ack(
    state: &NodeState,
    message_id: &crate::domain::MessageId,
    plan: &admission::AckPlan,
    counts: &[u64],
) -> AckV1 {
    plan.fill(
        message_id,
        counts,
        crate::audited::audit_time(state.clock.now()),
    )
}

/// The first answer to a replayed message: the same problem, or the same receipt.
async fn replay_answer(
    state: &NodeState,
    sender: &OrgId,
    seen: SeenMessage,
    message_id: &crate::domain::MessageId,
) -> Result<String, Problem> {
    if let Some(problem) = seen.problem {
        return Ok(problem);
    }
    match (seen.receipt, seen.receipt_parts) {
        (Some(receipt), _) => Ok(receipt),
        (None, Some((proof, tree_size))) => {
            receipt_from_parts(state, message_id, seen.audit_idx, &proof, tree_size).await
        }
        (None, None) => rebuild_receipt(state, sender, message_id, seen.audit_idx).await,
    }
}

/// The receipt first answered for an admitted message, rebuilt from its stored parts: the
/// admitting entry, the inclusion proof and the checkpoint its commit signed. The same inputs
/// as at the commit, so the same bytes.
async fn receipt_from_parts(
    state: &NodeState,
    message_id: &crate::domain::MessageId,
    index: u64,
    proof: &[u8],
    tree_size: u64,
) -> Result<String, Problem> {
    use crate::storage;
    let unavailable = |e: storage::StorageError| Problem::unavailable(&e);
    let entry = storage::audit_entry(&state.db, index)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::internal(&"the admitting entry is missing"))?;
    let note = storage::audit_checkpoint_of_size(&state.db, tree_size)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::internal(&"the checkpoint of a stored receipt is missing"))?;
    let hashes: Vec<crate::audit::merkle::Hash> = proof
        .chunks(32)
        .map(|chunk| <[u8; 32]>::try_from(chunk).ok())
        .collect::<Option<_>>()
        .ok_or_else(|| Problem::internal(&"a stored inclusion proof is not whole hashes"))?;
    let answer = crate::receipt::build(message_id.as_str(), index, &entry, &hashes, &note, None);
    serde_json::to_string(&answer).map_err(|e| Problem::internal(&e))
}

/// Rebuilds the receipt of an admitted message whose receipt was never stored (the node stopped
/// between the commit and the answer): its entry, a proof in the latest checkpoint's tree, and
/// that checkpoint. Stored, so every later replay gets the same. Only rows from before receipts
/// were kept as parts (migration 0009) can need this.
async fn rebuild_receipt(
    state: &NodeState,
    sender: &OrgId,
    message_id: &crate::domain::MessageId,
    index: u64,
) -> Result<String, Problem> {
    use crate::storage;
    let unavailable = |e: storage::StorageError| Problem::unavailable(&e);
    let note = storage::latest_audit_checkpoint(&state.db)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::internal(&"no checkpoint for a remembered message"))?;
    let checkpoint = crate::audit::checkpoint::Checkpoint::open(&note, &state.audit_verifier_key)
        .map_err(|e| Problem::internal(&e))?;
    let entry = storage::audit_entry(&state.db, index)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Problem::internal(&"the admitting entry is missing"))?;
    let proof = crate::log_reader::inclusion_proof(&state.db, index, checkpoint.head.size)
        .await
        .map_err(|e| Problem::from(&e))?;
    let answer = crate::receipt::build(message_id.as_str(), index, &entry, &proof, &note, None);
    let json = serde_json::to_string(&answer).map_err(|e| Problem::internal(&e))?;
    storage::store_receipt(&state.db, sender, message_id, &json)
        .await
        .map_err(unavailable)?;
    // Another replay may have stored its own first: answer with whatever is stored.
    let stored = storage::seen_message(&state.db, sender, message_id)
        .await
        .map_err(unavailable)?
        .and_then(|seen| seen.receipt);
    Ok(stored.unwrap_or(json))
}

/// The federation listener's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/fed/v1")
            .route("/ping", web::get().to(ping))
            .route("/checkpoint", web::get().to(checkpoint))
            .route("/envelopes", web::post().to(receive_envelope)),
    )
    .default_service(web::to(|| async { Problem::not_found().respond() }));
}

// ----- Client side -----

/// Why a call to a peer failed. Causes are for logs.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("`{0}` is not a current member of the federation")]
    UnknownPeer(OrgId),
    #[error("this node's federation manifest has expired")]
    ManifestExpired,
    #[error("cannot build a TLS client: {0}")]
    Tls(String),
    #[error("the request to the peer failed: {0}")]
    Transport(String),
    #[error("the peer answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the peer's answer is not valid: {0}")]
    BadAnswer(String),
}

/// One HTTP client per peer, each pinned to that peer's identity and keeping its connections
/// alive. Built on first use.
#[derive(Default)]
pub struct PeerClients {
    clients: Mutex<HashMap<OrgId, reqwest::Client>>,
}

impl PeerClients {
    fn client_for(
        &self,
        state: &NodeState,
        peer: &NodeIdentity,
    ) -> Result<reqwest::Client, PeerError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&peer.org) {
            return Ok(client.clone());
        }
        let tls = state
            .tls
            .client_config_for(peer.clone())
            .map_err(|e| PeerError::Tls(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .http1_only()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(90))
            .no_proxy()
            .build()
            .map_err(|e| PeerError::Tls(e.to_string()))?;
        clients.insert(peer.org.clone(), client.clone());
        Ok(client)
    }
}

/// Calls a member's federation route `path` over mTLS (a POST with a JSON body, or a GET),
/// checking that the server is that member. Fails closed in this direction too: with an
/// expired manifest nobody is a member. Returns the body of a successful answer; any other answer is
/// [`PeerError::Refused`] with (the start of) its body.
async fn call_peer(
    state: &NodeState,
    org: &OrgId,
    path: String,
    body: Option<Vec<u8>>,
) -> Result<Vec<u8>, PeerError> {
    let manifest = state.manifest.snapshot();
    if manifest.is_expired(state.clock.now()) {
        return Err(PeerError::ManifestExpired);
    }
    let member = manifest
        .member(org)
        .ok_or_else(|| PeerError::UnknownPeer(org.clone()))?;
    let expected = NodeIdentity {
        federation: manifest.federation.clone(),
        org: org.clone(),
    };
    let client = state.peers.client_for(state, &expected)?;
    let url = format!("{}{path}", member.endpoint.base_url());
    let request = match body {
        Some(body) => client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body),
        None => client.get(url),
    };
    let response = request
        .send()
        .await
        .map_err(|e| PeerError::Transport(error_chain(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| PeerError::Transport(error_chain(&e)))?;
    if !status.is_success() {
        return Err(PeerError::Refused {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(2000).collect(),
        });
    }
    Ok(bytes.to_vec())
}

/// Calls a member's `GET /fed/v1/ping` over mTLS, checking that the server is that member.
pub async fn ping_peer(state: &NodeState, org: &OrgId) -> Result<PingResponseV1, PeerError> {
    let body = call_peer(state, org, "/fed/v1/ping".into(), None).await?;
    serde_json::from_slice(&body).map_err(|e| PeerError::BadAnswer(e.to_string()))
}

/// Calls a member's `GET /fed/v1/checkpoint` over mTLS (checking the server is that member),
/// with `since` and `size` as given. The answer is parsed, not trusted: the caller opens the
/// checkpoint with the member's audit key and checks the proof.
pub async fn fetch_checkpoint(
    state: &NodeState,
    org: &OrgId,
    since: Option<u64>,
    size: Option<u64>,
) -> Result<CheckpointAnswerV1, PeerError> {
    let mut path = "/fed/v1/checkpoint".to_owned();
    let parameters: Vec<String> = [("since", since), ("size", size)]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
        .collect();
    if !parameters.is_empty() {
        path.push('?');
        path.push_str(&parameters.join("&"));
    }
    let body = call_peer(state, org, path, None).await?;
    serde_json::from_slice(&body).map_err(|e| PeerError::BadAnswer(e.to_string()))
}

/// Sends one envelope's exact bytes to a member's `POST /fed/v1/envelopes` over mTLS, checking
/// that the server is that member. A refusal comes back as [`PeerError::Refused`] with the
/// problem document.
pub async fn send_envelope(
    state: &NodeState,
    org: &OrgId,
    envelope: Vec<u8>,
) -> Result<ReceiptV1, PeerError> {
    let body = call_peer(state, org, "/fed/v1/envelopes".into(), Some(envelope)).await?;
    serde_json::from_slice(&body).map_err(|e| PeerError::BadAnswer(e.to_string()))
}

/// The answer to one envelope of a batch sent to a peer.
#[derive(Debug, Clone)]
pub enum ItemResult {
    Receipt(ReceiptV1),
    /// A problem document and its status (a refusal, or a failure of that one envelope).
    Problem {
        status: u16,
        body: String,
    },
}

/// Sends several envelopes in one request to a member's `POST /fed/v1/envelopes` (a JSON
/// array of their exact bytes); one result per envelope, in order.
pub async fn send_batch(
    state: &NodeState,
    org: &OrgId,
    envelopes: &[&[u8]],
) -> Result<Vec<ItemResult>, PeerError> {
    let mut body = Vec::with_capacity(envelopes.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, envelope) in envelopes.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(envelope);
    }
    body.push(b']');
    let bytes = call_peer(state, org, "/fed/v1/envelopes".into(), Some(body)).await?;
    let answer: BatchAnswerV1 =
        serde_json::from_slice(&bytes).map_err(|e| PeerError::BadAnswer(e.to_string()))?;
    if answer.results.len() != envelopes.len() {
        return Err(PeerError::BadAnswer(format!(
            "{} results for {} envelopes",
            answer.results.len(),
            envelopes.len()
        )));
    }
    answer
        .results
        .into_iter()
        .map(|result| {
            if result.status == 200 {
                serde_json::from_str(result.answer.get())
                    .map(ItemResult::Receipt)
                    .map_err(|e| PeerError::BadAnswer(e.to_string()))
            } else {
                Ok(ItemResult::Problem {
                    status: result.status,
                    body: result.answer.get().to_owned(),
                })
            }
        })
        .collect()
}

/// The whole cause chain of an error, so logs show the TLS reason behind "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
