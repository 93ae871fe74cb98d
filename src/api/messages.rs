//! The local message API: submit messages for delivery (one or a batch), follow their delivery,
//! read the inbox, and the child's timeline (DESIGN §6).
//!
//! Submission runs the receiver's checks outbound (`admission::admit_outbound`), so a bad
//! message is refused at once; an accepted one is queued in the outbox in the same transaction
//! as its audit entry and answered 202. Every read of child data is audited.

use super::Actor;
use super::scope::Reach;
use crate::admission::SubmissionV1;
use crate::admission::{self, Admission, Outcome};
use crate::audit::entry::Decision as AuditDecision;
use crate::audited::{self, Audited, Settled};
use crate::domain::{ConsentId, MessageId};
use crate::jwt::Role;
use crate::node::NodeState;
use crate::problem::{Problem, ProblemDoc};
use crate::storage::{self, SeenMessage};
use crate::write_path::AuditReceipt;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, Responder, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Ref, Schema};

/// The most messages one request may submit.
pub const MAX_BATCH: usize = 1_000;
/// The largest submission request: a full batch of ordinary summaries fits easily.
const MAX_SUBMISSION_BYTES: usize = 8 * 1024 * 1024;

/// The answer for one submitted message.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmittedV1 {
    /// The HTTP status this message alone would have had (202 queued, or the refusal's).
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `queued` when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The audit entry that accepted (or refused) the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_leaf_index: Option<u64>,
    /// The refusal, a problem document with its reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ProblemDoc>)]
    pub problem: Option<Value>,
}

/// The answer to a batch: one result per message, in order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSubmittedV1 {
    pub results: Vec<SubmittedV1>,
}

/// The body of `POST /api/v1/messages` as documented (`SubmissionBodyV1`): one submission, or a
/// batch of 1 to [`MAX_BATCH`]. Only the OpenAPI document uses this type; the handler reads the
/// body itself.
pub struct SubmissionBody;

impl utoipa::PartialSchema for SubmissionBody {
    fn schema() -> RefOr<Schema> {
        let one = || RefOr::Ref(Ref::from_schema_name(<SubmissionV1 as ToSchema>::name()));
        OneOfBuilder::new()
            .description(Some(format!(
                "One message, or an array of 1 to {MAX_BATCH} messages."
            )))
            .item(one())
            .item(
                ArrayBuilder::new()
                    .items(one())
                    .min_items(Some(1))
                    .max_items(Some(MAX_BATCH)),
            )
            .into()
    }
}

impl ToSchema for SubmissionBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SubmissionBodyV1")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            <SubmissionV1 as ToSchema>::name().into_owned(),
            <SubmissionV1 as utoipa::PartialSchema>::schema(),
        ));
        <SubmissionV1 as ToSchema>::schemas(schemas);
    }
}

/// The answer to a submission: fresh decisions are audited before the answer exists; a
/// submission made only of retries gets the first answers, audited the first time.
pub enum SubmitAnswer {
    Fresh(Audited<HttpResponse>),
    Replay(HttpResponse),
}

impl Responder for SubmitAnswer {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, req: &HttpRequest) -> HttpResponse {
        match self {
            SubmitAnswer::Fresh(answer) => answer.respond_to(req),
            SubmitAnswer::Replay(response) => response,
        }
    }
}

fn replayed(seen: SeenMessage, message_id: &MessageId) -> SubmittedV1 {
    match seen.problem {
        Some(problem) => SubmittedV1 {
            status: seen.status,
            message_id: Some(message_id.to_string()),
            state: None,
            audit_leaf_index: Some(seen.audit_idx),
            problem: serde_json::from_str(&problem).ok(),
        },
        None => SubmittedV1 {
            status: seen.status,
            message_id: Some(message_id.to_string()),
            state: Some("queued".into()),
            audit_leaf_index: Some(seen.audit_idx),
            problem: None,
        },
    }
}

/// Checks, records and queues the messages of one submission (one, or a batch), each on its
/// own terms, in order: the results, each with the receipt of its fresh decision (`None` for a
/// retry, answered as the first time). The decisions go to the write path as one job, so a
/// batch costs one hand-off and one commit wait, not one per message. A message id used twice
/// in one submission is refused the second time (`message-id-conflict`): both cannot be
/// queued. If any message cannot be decided now (`unavailable`, an expired manifest), the
/// whole submission is refused and nothing of it is recorded; if the commit fails, nothing is
/// either. A message the writer refuses on its own (its audit record could not be encoded) is
/// answered `unavailable` alone, and the others are queued.
async fn submit_all(
    state: &NodeState,
    actor: &Actor,
    items: Vec<Value>,
) -> Result<Vec<(SubmittedV1, Option<AuditReceipt>)>, Problem> {
    // One record made, then copied per message: its time and actor are the request's.
    let template = {
        let mut record = audited::record(state, "local.message.submit", AuditDecision::Deny, None);
        record.actor = Some(actor.audit_actor(state));
        record
    };
    let record = || template.clone();
    let client_ids: Vec<Option<String>> = items
        .iter()
        .map(|item| {
            item.get("message_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let mut ids_used = std::collections::HashSet::new();
    let duplicate: Vec<bool> = client_ids
        .iter()
        .map(|id| id.as_ref().is_some_and(|id| !ids_used.insert(id)))
        .collect();
    let fresh = items
        .into_iter()
        .zip(&duplicate)
        .filter(|(_, duplicate)| !**duplicate)
        .map(|(item, _)| (record(), item))
        .collect();
    let mut admissions = admission::admit_outbound(state, fresh).await.into_iter();
    // Every message is decided before anything is recorded: one that cannot be decided now
    // refuses the whole submission.
    let mut decided = Vec::with_capacity(duplicate.len());
    for duplicate in duplicate {
        decided.push(Ok(if duplicate {
            let problem = Problem::refused(
                "message-id-conflict",
                "this message id is used by an earlier message of the same batch",
                Some("/message_id".into()),
            );
            let mut record = record();
            record.reason = Some(problem.reason.to_owned());
            Admission::Decided(Box::new(admission::Decided {
                record,
                changes: Vec::new(),
                outcome: Outcome::Refused(problem),
                in_flight: None,
            }))
        } else {
            admissions
                .next()
                .ok_or_else(|| Problem::internal(&"a submitted message without an admission"))??
        }));
    }
    let settled = audited::settle(state, decided).await;
    // A commit that failed failed every decision in it: nothing of the submission is recorded.
    let is_decision = |s: &&Result<Settled, Problem>| !matches!(s, Ok(Settled::Replay(..)));
    if let Some(Err(problem)) = settled.iter().find(is_decision)
        && settled.iter().filter(is_decision).all(Result::is_err)
    {
        return Err(problem.clone());
    }
    let mut queued = false;
    let mut results = Vec::with_capacity(client_ids.len());
    for (client_id, settled) in client_ids.into_iter().zip(settled) {
        results.push(match settled {
            Ok(Settled::Replay(seen, message_id)) => (replayed(seen, &message_id), None),
            // This message alone was not recorded; a retry with its id decides it again.
            Err(problem) => (
                SubmittedV1 {
                    status: problem.status,
                    message_id: client_id,
                    state: None,
                    audit_leaf_index: None,
                    problem: serde_json::to_value(&problem).ok(),
                },
                None,
            ),
            Ok(Settled::Decided(Outcome::Refused(problem), decision)) => (
                SubmittedV1 {
                    status: problem.status,
                    message_id: client_id,
                    state: None,
                    audit_leaf_index: Some(decision.receipt.index),
                    problem: serde_json::to_value(&problem).ok(),
                },
                Some(decision.receipt),
            ),
            Ok(Settled::Decided(Outcome::Admitted { message_id, .. }, decision)) => {
                queued = true;
                (
                    SubmittedV1 {
                        status: 202,
                        message_id: Some(message_id.to_string()),
                        state: Some("queued".into()),
                        audit_leaf_index: Some(decision.receipt.index),
                        problem: None,
                    },
                    Some(decision.receipt),
                )
            }
        });
    }
    if queued {
        state.delivery_wake.notify_one();
    }
    Ok(results)
}

/// The response for a single message: 202 with the result, or the refusal itself.
fn single_response(result: &SubmittedV1) -> HttpResponse {
    let status = StatusCode::from_u16(result.status).unwrap_or(StatusCode::FORBIDDEN);
    match &result.problem {
        Some(problem) => HttpResponse::build(status)
            .content_type(crate::problem::CONTENT_TYPE)
            .json(problem),
        None => HttpResponse::build(status).json(result),
    }
}

/// `POST /api/v1/messages` (submitter): one message object, or an array of up to 1,000.
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messages",
    operation_id = "submitMessages",
    summary = "Submit messages for delivery",
    description = "Needs the submitter role. Every message is checked as its receiver would check it, audited, and queued for delivery. One message is answered 202 or with its refusal; a batch is answered 200 with one result per message, in order. A retry with the same client-chosen `message_id` gets the first answer.",
    request_body(content = SubmissionBody, description = "One message, or an array of 1 to 1,000 messages. The node adds the sender, the child's pairwise reference and the time."),
    responses(
        (status = 200, description = "A batch was decided: one result per message, in order, each with its own status.", body = BatchSubmittedV1),
        (status = 202, description = "The one message was accepted and queued for delivery.", body = SubmittedV1),
        (status = 400, description = "The body is not one strict JSON document, or not one message or a batch of 1 to 1,000 (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the submitter role (`forbidden-role`), or the one message was refused by the purpose or consent rules (`purpose-unknown`, `consent-not-active`, ...).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The one message reuses a message id with a different body (`message-id-conflict`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "The request body is larger than 8 MiB (`body-too-large`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 421, description = "The one message is not addressed to another member of the federation (`recipient-mismatch`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The one message does not have the fields of a submission or does not match its schema (`schema-invalid`, `field-not-allowed`), or holds a CPR number (`cpr-detected`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot record the decision right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn submit(
    actor: Actor,
    state: web::Data<NodeState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<SubmitAnswer, Problem> {
    actor
        .require(&state, "/api/v1/messages", &[Role::Submitter])
        .await?;
    let body =
        crate::federation::read_budgeted(&req, payload, MAX_SUBMISSION_BYTES, &state.local_bodies)
            .await?
            .ok_or_else(|| Problem::body_too_large(MAX_SUBMISSION_BYTES))?;
    let document = crate::strict_json::parse(&body.bytes).map_err(|e| {
        Problem::malformed_request(format!(
            "not a single strict JSON document: {}",
            crate::strict_json::describe(&e)
        ))
    })?;
    match document {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                return Err(Problem::malformed_request(format!(
                    "a batch holds 1 to {MAX_BATCH} messages"
                )));
            }
            let outcomes = submit_all(&state, &actor, items).await?;
            let mut results = Vec::with_capacity(outcomes.len());
            let mut last_receipt = None;
            for (result, receipt) in outcomes {
                results.push(result);
                last_receipt = receipt.or(last_receipt);
            }
            let response = HttpResponse::Ok().json(BatchSubmittedV1 { results });
            Ok(match last_receipt {
                Some(receipt) => SubmitAnswer::Fresh(Audited::new(receipt, response)),
                None => SubmitAnswer::Replay(response),
            })
        }
        item @ Value::Object(_) => {
            let (result, receipt) = submit_all(&state, &actor, vec![item])
                .await?
                .pop()
                .ok_or_else(|| Problem::internal(&"a submitted message without a result"))?;
            let response = single_response(&result);
            Ok(match receipt {
                Some(receipt) => SubmitAnswer::Fresh(Audited::new(receipt, response)),
                None => SubmitAnswer::Replay(response),
            })
        }
        _ => Err(Problem::malformed_request(
            "the body is one message object or an array of them",
        )),
    }
}

/// `GET /api/v1/messages/{id}`: a submitted message's delivery.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageStatusV1 {
    pub message_id: String,
    pub recipient: String,
    #[serde(rename = "type")]
    pub message_type: String,
    /// `queued`, `delivered`, `refused` or `cancelled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub attempts: u32,
    /// The receiver's verified receipt, once delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<crate::wire::ReceiptV1>,
    /// The receiver's refusal, if it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ProblemDoc>)]
    pub problem: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /api/v1/messages/{id}` (submitter or caseworker): a submitted message's delivery. The
/// read is audited.
#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    tag = "messages",
    operation_id = "getMessageStatus",
    summary = "Follow a submitted message",
    description = "Needs the submitter or caseworker role. The message's delivery, with the receiver's verified receipt or refusal. The read is audited.",
    params(("id" = String, Path, description = "The message id (a UUID).")),
    responses(
        (status = 200, description = "The message's delivery, with the receiver's receipt or refusal.", body = MessageStatusV1),
        (status = 400, description = "The id is not a message id (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the submitter and caseworker roles (`forbidden-role`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "This node sent no message with that id (`not-found`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot read or audit right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn status(
    actor: Actor,
    state: web::Data<NodeState>,
    path: web::Path<String>,
) -> Result<Audited<HttpResponse>, Problem> {
    let route = "/api/v1/messages/{id}";
    actor
        .require(&state, route, &[Role::Submitter, Role::Caseworker])
        .await?;
    let id: MessageId = path
        .parse()
        .map_err(|e: crate::domain::ParseError| Problem::malformed_request(e.to_string()))?;
    let mut record = audited::record(&state, "local.message.read", AuditDecision::Permit, None);
    record.actor = Some(actor.audit_actor(&state));
    record.route = Some(route.to_owned());
    record.message_id_hmac = Some(state.hmac.pseudonymise("message", id.as_str()));
    let Some(message) = storage::outbox_message(&state.db, &id)
        .await
        .map_err(|e| Problem::unavailable(&e))?
    else {
        return Err(audited::deny(&state, record, Problem::not_found()).await);
    };
    record.peer = Some(message.recipient.clone());
    record.message_type = Some(message.message_type.clone());
    let receipt = audited::permit(&state, record).await?;
    let answer = MessageStatusV1 {
        message_id: message.message_id,
        recipient: message.recipient,
        message_type: message.message_type,
        status: message.status,
        reason: message.status_reason,
        attempts: message.attempts,
        receipt: message
            .receipt
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        problem: message
            .problem
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok()),
        created_at: message.created_at,
        updated_at: message.updated_at,
    };
    Ok(Audited::new(receipt, HttpResponse::Ok().json(answer)))
}

/// `GET /api/v1/inbox` filters and paging.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// Only messages under this consent (its id).
    pub consent: Option<String>,
    /// Only messages of this type, e.g. `activity-summary`.
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    /// Only messages received at or after this instant (RFC 3339).
    pub since: Option<String>,
    /// Only messages after this cursor (the `next` of the previous page).
    pub after: Option<u64>,
    /// The most items on a page: 1 to 1,000, 100 when absent.
    pub limit: Option<u32>,
}

/// One received message as a caseworker reads it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxItemV1 {
    pub message_id: String,
    pub sender: String,
    #[serde(rename = "type")]
    pub message_type: String,
    pub purpose: String,
    pub consent_id: String,
    pub subject_ref: String,
    pub received_at: String,
    /// The message body as received.
    #[schema(value_type = Object)]
    pub body: Value,
    /// The cursor of this item.
    pub cursor: u64,
}

/// `GET /api/v1/inbox`: one page of received messages, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxPageV1 {
    pub items: Vec<InboxItemV1>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

fn inbox_item(message: storage::InboxMessage) -> InboxItemV1 {
    let body = serde_json::from_slice::<Value>(&message.envelope)
        .ok()
        .and_then(|e| e.get("body").cloned())
        .unwrap_or(Value::Null);
    InboxItemV1 {
        message_id: message.message_id,
        sender: message.sender,
        message_type: message.message_type,
        purpose: message.purpose,
        consent_id: message.consent_id,
        subject_ref: message.subject_ref,
        received_at: message.received_at,
        body,
        cursor: message.audit_idx,
    }
}

/// `GET /api/v1/inbox` (caseworker): received messages, oldest first, filtered and paged. The
/// read is audited.
#[utoipa::path(
    get,
    path = "/api/v1/inbox",
    tag = "messages",
    operation_id = "readInbox",
    summary = "Read the inbox",
    description = "Needs the caseworker role. Received messages, oldest first, filtered and paged. The read is audited.",
    params(InboxQuery),
    responses(
        (status = 200, description = "One page of received messages, oldest first.", body = InboxPageV1),
        (status = 400, description = "A filter is malformed (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the caseworker role (`forbidden-role`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot read or audit right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn inbox(
    actor: Actor,
    state: web::Data<NodeState>,
    query: web::Query<InboxQuery>,
) -> Result<Audited<HttpResponse>, Problem> {
    let route = "/api/v1/inbox";
    actor.require(&state, route, &[Role::Caseworker]).await?;
    let query = query.into_inner();
    let consent: Option<ConsentId> = query
        .consent
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: crate::domain::ParseError| Problem::malformed_request(e.to_string()))?;
    let message_type: Option<crate::domain::MessageType> = query
        .message_type
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: crate::domain::ParseError| Problem::malformed_request(e.to_string()))?;
    let since = query
        .since
        .as_deref()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| Problem::malformed_request("since is an RFC 3339 instant"))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1_000);
    let reach = Reach::of(&state, &actor);
    if reach == Reach::Nothing {
        let mut record = audited::record(&state, "local.inbox.read", AuditDecision::Deny, None);
        record.actor = Some(actor.audit_actor(&state));
        record.route = Some(route.to_owned());
        return Err(audited::deny(&state, record, Problem::out_of_scope()).await);
    }
    let filter = storage::InboxFilter {
        consent,
        message_type,
        since,
        after: query.after,
        limit,
        unit: reach.unit().map(str::to_owned),
    };
    let page = storage::inbox_page(&state.db, &filter)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let mut record = audited::record(&state, "local.inbox.read", AuditDecision::Permit, None);
    record.actor = Some(actor.audit_actor(&state));
    record.route = Some(route.to_owned());
    if let Some(consent) = &filter.consent {
        record.consent_hmac = Some(state.hmac.pseudonymise("consent", consent.as_str()));
    }
    let receipt = audited::permit(&state, record).await?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|m| m.audit_idx))
        .flatten();
    let answer = InboxPageV1 {
        items: page.into_iter().map(inbox_item).collect(),
        next,
    };
    Ok(Audited::new(receipt, HttpResponse::Ok().json(answer)))
}

/// One event of a child's timeline.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimelineEventV1 {
    pub at: String,
    /// `consent` (an event of a consent), `received` (a partner reported) or `sent` (this
    /// organisation reported or referred).
    pub kind: String,
    /// The other organisation.
    pub partner: String,
    pub consent_id: String,
    /// The consent event, or the message type.
    pub what: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The message body, for a message received or sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
}

/// `GET /api/v1/subjects/{key}/timeline`: one child's events in time order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimelineV1 {
    /// The local key the timeline was asked for.
    pub subject: String,
    pub events: Vec<TimelineEventV1>,
}

/// `GET /api/v1/subjects/{key}/timeline` (caseworker): the red thread of one child, by this
/// node's own key for it. It joins the consents bound to that key, what partners reported under
/// them, and what this organisation sent, in time order. The read is audited.
#[utoipa::path(
    get,
    path = "/api/v1/subjects/{key}/timeline",
    tag = "messages",
    operation_id = "readTimeline",
    summary = "Read a child's timeline",
    description = "Needs the caseworker role. The red thread of one child, by this node's own key for it: the consents bound to that key, what partners reported under them, and what this organisation sent, in time order. The read is audited.",
    params(("key" = String, Path, description = "This node's own key for the child (the `local_subject_key` of a bound consent).")),
    responses(
        (status = 200, description = "The child's consents, received and sent messages, in time order.", body = TimelineV1),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the caseworker role (`forbidden-role`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No consent is bound to that key (`not-found`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot read or audit right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn timeline(
    actor: Actor,
    state: web::Data<NodeState>,
    path: web::Path<String>,
) -> Result<Audited<HttpResponse>, Problem> {
    let route = "/api/v1/subjects/{key}/timeline";
    actor.require(&state, route, &[Role::Caseworker]).await?;
    let key = path.into_inner();
    let mut record = audited::record(&state, "local.timeline.read", AuditDecision::Permit, None);
    record.actor = Some(actor.audit_actor(&state));
    record.route = Some(route.to_owned());
    record.subject_hmac = Some(state.hmac.pseudonymise("local-subject", &key));
    let mut story = storage::subject_story(&state.db, &key)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    // Only what the caller's unit may read: its consents, and what travelled under them. A
    // caseworker limited to a unit learns nothing of what exists outside it.
    let reach = Reach::of(&state, &actor);
    if story.consents.is_empty() {
        let problem = if reach == Reach::Organisation {
            Problem::not_found()
        } else {
            Problem::out_of_scope()
        };
        return Err(audited::deny(&state, record, problem).await);
    }
    story.consents.retain(|c| reach.covers(c));
    if story.consents.is_empty() {
        return Err(audited::deny(&state, record, Problem::out_of_scope()).await);
    }
    let in_scope: std::collections::BTreeSet<String> = story
        .consents
        .iter()
        .map(|c| c.record.id.to_string())
        .collect();
    story.received.retain(|m| in_scope.contains(&m.consent_id));
    story.sent.retain(|m| in_scope.contains(&m.consent_id));
    let me = &state.identity.org;
    let mut events = Vec::new();
    for consent in &story.consents {
        let partner = consent.record.other_party(me).to_string();
        for event in &consent.events {
            events.push(TimelineEventV1 {
                at: crate::storage::db_time(event.at),
                kind: "consent".into(),
                partner: partner.clone(),
                consent_id: consent.record.id.to_string(),
                what: event.event.as_str().to_owned(),
                purpose: None,
                body: None,
            });
        }
    }
    for message in story.received {
        let item = inbox_item(message);
        events.push(TimelineEventV1 {
            at: item.received_at,
            kind: "received".into(),
            partner: item.sender,
            consent_id: item.consent_id,
            what: item.message_type,
            purpose: Some(item.purpose),
            body: Some(item.body),
        });
    }
    for sent in story.sent {
        let body = serde_json::from_slice::<Value>(&sent.envelope)
            .ok()
            .and_then(|e| e.get("body").cloned());
        events.push(TimelineEventV1 {
            at: sent.created_at,
            kind: "sent".into(),
            partner: sent.recipient,
            consent_id: sent.consent_id,
            what: sent.message_type,
            purpose: Some(sent.purpose),
            body,
        });
    }
    events.sort_by(|a, b| a.at.cmp(&b.at));
    let receipt = audited::permit(&state, record).await?;
    Ok(Audited::new(
        receipt,
        HttpResponse::Ok().json(TimelineV1 {
            subject: key,
            events,
        }),
    ))
}
