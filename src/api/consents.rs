//! The local consent API: record, read, withdraw, bind (DESIGN §3).
//!
//! Recording runs the same consent rule a counterpart runs on `consent.granted`
//! (`policy::decide_grant`), so a consent the counterpart would refuse is refused here first.
//! Every decision is appended to the audit log, with the consent change in the same
//! transaction, before the caller gets an answer. The counterpart is told directly over the
//! federation; the durable outbox that retries comes with the exchange of messages.

use super::Actor;
use super::scope::Reach;
use crate::admission::{self, AckPlan};
use crate::audit::entry::{AuditRecord, Decision as AuditDecision};
use crate::audited::{self, Audited};
use crate::boundary;
use crate::consent::{
    self, BindingCode, ConsentEvent, ConsentRecord, after_wrong_code, verify_binding_code,
};
use crate::domain::{ConsentId, MessageId, MessageType, OrgId, OrgKind, PurposeRef};
use crate::federation;
use crate::jwt::Role;
use crate::manifest::format_time;
use crate::node::NodeState;
use crate::policy::{self, Decision, Grant};
use crate::problem::{Problem, ProblemDoc};
use crate::storage::{self, NewConsent, NewOutboxMessage, StoredConsent};
use crate::wire::{
    AckV1, BodyV1, ConsentEndV1, ConsentGrantedV1, ConsentPolicyV1, ConsentWithdrawnV1,
    ConsentingRoleV1, ENVELOPE_VERSION, EnvelopeV1, EvidenceV1, PurposeRefV1, WithdrawalV1,
};
use crate::write_path::StateChange;
use actix_web::{HttpResponse, web};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The largest request body of the consent routes.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// `POST /api/v1/consents`: what the consent form says.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordConsentRequestV1 {
    /// The other organisation of this pairwise consent.
    pub counterpart: String,
    pub purposes: Vec<PurposeRefV1>,
    pub consented_by: Vec<ConsentingRoleV1>,
    pub policy: ConsentPolicyV1,
    pub evidence: EvidenceV1,
    /// The first day (Danish date, `YYYY-MM-DD`).
    pub valid_from: String,
    /// The last day the consent is valid (inclusive, Danish date).
    pub valid_until: String,
    pub retention_at_recipient_days: u32,
    pub withdrawal: WithdrawalV1,
    /// This node's own key for the child (never leaves the node; not a CPR number).
    pub local_subject_key: String,
}

/// The answer to recording: the binding code is shown this once, for the family's copy.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecordedV1 {
    pub consent_id: String,
    pub subject_ref: String,
    pub binding_code: String,
    pub status: String,
    pub valid_from: String,
    pub valid_until: String,
    pub audit_leaf_index: u64,
    /// The `consent.granted` notice queued for the counterpart (`GET /api/v1/messages/{id}`).
    pub notice_message_id: String,
}

/// One event of a consent, as shown.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentEventViewV1 {
    pub event: String,
    pub at: String,
    pub recorded_by: String,
}

/// `GET /api/v1/consents/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentViewV1 {
    pub consent_id: String,
    pub subject_ref: String,
    pub recording_org: String,
    pub counterpart: String,
    pub status: String,
    /// Whether the consent permits exchange right now (status and validity).
    pub active_now: bool,
    pub valid_from: String,
    pub valid_until: String,
    /// The terms as exchanged (the consent.granted body).
    #[schema(value_type = Object)]
    pub terms: serde_json::Value,
    pub events: Vec<ConsentEventViewV1>,
    pub bound: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_subject_key: Option<String>,
    pub binding_failures_total: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_locked_until: Option<String>,
    /// The consent notices this node sent, with their delivery and the other side's ack.
    pub notices: Vec<NoticeViewV1>,
}

/// A consent notice this node sent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoticeViewV1 {
    pub message_id: String,
    #[serde(rename = "type")]
    pub message_type: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The other side's acknowledgement of a withdrawal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckV1>,
}

/// `POST /api/v1/consents/{id}/withdraw`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawRequestV1 {
    /// How the consent ended: `withdrawn-by-subject` (the family withdrew), `revoked` (someone
    /// else ended it), `expired` or `invalidated` (it was found not to be valid).
    pub event: ConsentEndV1,
}

/// The answer to a withdrawal.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawnV1 {
    pub consent_id: String,
    pub status: String,
    pub audit_leaf_index: u64,
    /// What this node did under the consent.
    pub local: AckV1,
    /// The `consent.withdrawn` notice queued (ahead of everything else) for the other party.
    /// Its acknowledgement shows in the consent's notices once delivered.
    pub notice_message_id: String,
}

/// `POST /api/v1/consents/{id}/bind`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindRequestV1 {
    /// The code from the family's copy of the consent.
    pub binding_code: String,
    /// This node's own key for the child.
    pub local_subject_key: String,
}

/// The answer to binding.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BoundV1 {
    pub consent_id: String,
    pub subject_ref: String,
    pub bound: bool,
    pub audit_leaf_index: u64,
}

/// Reads a strict JSON request body into `T` (closed: unknown fields are refused).
async fn read_request<T: DeserializeOwned>(payload: web::Payload) -> Result<T, Problem> {
    let bytes = federation::read_limited(payload, MAX_REQUEST_BYTES)
        .await?
        .ok_or_else(|| Problem::body_too_large(MAX_REQUEST_BYTES))?;
    let value = crate::strict_json::parse(&bytes).map_err(|e| {
        Problem::malformed_request(format!(
            "not a single strict JSON document: {}",
            crate::strict_json::describe(&e)
        ))
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        Problem::malformed_request(format!("at `{path}`: {}", e.into_inner()))
    })
}

/// A local key for a child: short, plain characters, and never a CPR number.
fn parse_local_subject_key(key: &str) -> Result<String, Problem> {
    let plain = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !plain {
        return Err(Problem::malformed_request(
            "local_subject_key must be 1 to 128 letters, digits, '-', '_', '.' or ':'",
        ));
    }
    if crate::cpr::contains_cpr(key) {
        return Err(Problem::refused(
            "cpr-detected",
            "a local subject key must be a pseudonymous key of the case system, never a CPR number",
            Some("/local_subject_key".into()),
        ));
    }
    Ok(key.to_owned())
}

fn parse_consent_id(raw: &str) -> Result<ConsentId, Problem> {
    raw.parse()
        .map_err(|e: crate::domain::ParseError| Problem::malformed_request(e.to_string()))
}

/// The audit record of a consent operation.
fn consent_record(
    state: &NodeState,
    actor: &Actor,
    action: &str,
    consent: &ConsentId,
    subject: Option<&crate::domain::SubjectRef>,
    peer: Option<&OrgId>,
) -> AuditRecord {
    let mut record = audited::record(state, action, AuditDecision::Permit, None);
    record.actor = Some(actor.audit_actor(state));
    record.consent_hmac = Some(state.hmac.pseudonymise("consent", consent.as_str()));
    record.subject_hmac = subject.map(|s| state.hmac.pseudonymise("subject", &s.to_string()));
    record.peer = peer.map(ToString::to_string);
    record
}

/// Appends a refusal and returns the problem (or 503 if it could not be recorded).
async fn refuse(state: &NodeState, record: AuditRecord, problem: Problem) -> Problem {
    audited::deny(state, record, problem).await
}

fn write_failed(e: &crate::write_path::WriteError) -> Problem {
    Problem::unavailable(e)
}

/// Builds an envelope from this node, checks it as any node would, and returns its bytes.
fn outbound_envelope(
    state: &NodeState,
    recipient: &OrgId,
    purpose: &PurposeRef,
    consent: &ConsentId,
    subject: &crate::domain::SubjectRef,
    body: BodyV1,
) -> Result<(MessageId, Vec<u8>), Problem> {
    let now = state.clock.now();
    let random = consent::random_bytes::<10>().map_err(|e| Problem::internal(&e))?;
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let message_type = match &body {
        BodyV1::ConsentGranted(_) => "consent.granted",
        BodyV1::ConsentWithdrawn(_) => "consent.withdrawn",
        BodyV1::ActivitySummary(_) => "activity-summary",
        BodyV1::Referral(_) => "referral",
        BodyV1::ReferralResponse(_) => "referral-response",
        BodyV1::Ack(_) => "ack",
    };
    let message_id = MessageId::v7(millis, random);
    let envelope = EnvelopeV1 {
        v: ENVELOPE_VERSION,
        message_id: message_id.to_string(),
        message_type: message_type.to_owned(),
        sender: state.identity.org.to_string(),
        recipient: recipient.to_string(),
        purpose: PurposeRefV1 {
            id: purpose.id.as_str().to_owned(),
            version: purpose.version,
        },
        consent_id: consent.to_string(),
        subject_ref: subject.to_string(),
        sent_at: format_time(
            now.replace_nanosecond(0)
                .unwrap_or(now)
                .to_offset(time::UtcOffset::UTC),
        ),
        body,
    };
    let bytes = serde_json::to_vec(&envelope).map_err(|e| Problem::internal(&e))?;
    // The same document checks run outbound, so a bad message never leaves this node.
    boundary::check_document(&bytes, &state.schemas).map_err(|refusal| {
        Problem::internal(&format!(
            "an envelope built by this node fails its own check: {}",
            refusal.reason
        ))
    })?;
    Ok((message_id, bytes))
}

/// `POST /api/v1/consents` (consent-admin).
#[utoipa::path(
    post,
    path = "/api/v1/consents",
    tag = "consents",
    operation_id = "recordConsent",
    summary = "Record a consent",
    description = "Needs the consent-admin role. Runs the consent rule the counterpart runs, records the consent and queues its `consent.granted` notice for the counterpart. The binding code in the answer is shown this once, for the family's copy. The decision is audited before the answer.",
    request_body(content = RecordConsentRequestV1, description = "What the consent form says."),
    responses(
        (status = 201, description = "The consent is recorded and its `consent.granted` notice queued for the counterpart.", body = ConsentRecordedV1),
        (status = 400, description = "The request is malformed (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the consent-admin role (`forbidden-role`), or the consent does not fit the purpose catalogue (`purpose-unknown`, `purpose-inactive`, ...).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "The counterpart is not a current member of the federation (`unknown-peer`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "The request body is larger than 16 KiB (`body-too-large`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The local subject key looks like a CPR number (`cpr-detected`), or the validity does not fit the purposes (`consent-validity-invalid`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot record the decision right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn record(
    actor: Actor,
    state: web::Data<NodeState>,
    payload: web::Payload,
) -> Result<Audited<HttpResponse>, Problem> {
    actor
        .require(&state, "/api/v1/consents", &[Role::ConsentAdmin])
        .await?;
    let request: RecordConsentRequestV1 = read_request(payload).await?;
    let local_subject_key = parse_local_subject_key(&request.local_subject_key)?;
    if !(1..=3650).contains(&request.retention_at_recipient_days) {
        return Err(Problem::malformed_request(
            "retention_at_recipient_days is 1 to 3650",
        ));
    }
    let counterpart: OrgId = request
        .counterpart
        .parse()
        .map_err(|e: crate::domain::ParseError| Problem::malformed_request(e.to_string()))?;
    if counterpart == state.identity.org {
        return Err(Problem::malformed_request(
            "the counterpart must be another organisation",
        ));
    }
    let manifest = state.manifest.snapshot();
    // With an expired manifest nobody is a member: no consent can be recorded for one.
    if manifest.is_expired(state.clock.now()) {
        return Err(Problem::manifest_expired());
    }
    let counterpart_kind = manifest
        .member(&counterpart)
        .map(|m| m.kind)
        .ok_or_else(|| Problem::unknown_peer(counterpart.to_string()))?;
    let own_kind = manifest
        .member(&state.identity.org)
        .map(|m| m.kind)
        .unwrap_or(OrgKind::Municipality);
    let purposes: BTreeSet<PurposeRef> = request
        .purposes
        .iter()
        .map(|p| {
            p.id.parse()
                .ok()
                .and_then(|id| PurposeRef::new(id, p.version).ok())
                .ok_or_else(|| Problem::malformed_request("a purpose id or version is not valid"))
        })
        .collect::<Result<_, _>>()?;
    let Some(first_purpose) = purposes.iter().next().cloned() else {
        return Err(Problem::malformed_request(
            "a consent names at least one purpose",
        ));
    };
    let (Some(first_day), Some(last_day)) = (
        consent::parse_date(&request.valid_from),
        consent::parse_date(&request.valid_until),
    ) else {
        return Err(Problem::malformed_request(
            "valid_from and valid_until are dates, YYYY-MM-DD",
        ));
    };
    let (valid_from, valid_until) = consent::validity_instants(first_day, last_day)
        .ok_or_else(|| Problem::malformed_request("a date is out of range"))?;
    let now = state.clock.now();
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let random = consent::random_bytes::<10>().map_err(|e| Problem::internal(&e))?;
    let consent_id = ConsentId::v7(millis, random);
    let subject = consent::mint_subject_ref().map_err(|e| Problem::internal(&e))?;
    let code = BindingCode::generate().map_err(|e| Problem::internal(&e))?;
    let mut audit = consent_record(
        &state,
        &actor,
        "local.consent.record",
        &consent_id,
        Some(&subject),
        Some(&counterpart),
    );
    audit.purpose = Some(first_purpose.to_string());
    let decision = policy::decide_grant(
        &Grant {
            consent: &consent_id,
            sender: &state.identity.org,
            sender_kind: own_kind,
            recipient: &counterpart,
            recipient_kind: counterpart_kind,
            purpose: &first_purpose,
            purposes: &purposes,
            valid_from,
            valid_until,
            retention_days: request.retention_at_recipient_days,
            withdrawn_before_granted: false,
        },
        &manifest.catalogue,
        None,
        now,
    );
    let permit = match decision {
        Decision::Permit(permit) => permit,
        Decision::Deny(denial) => {
            let problem = Problem::refused(
                denial.reason.code(),
                "the consent does not fit the purpose catalogue",
                None,
            );
            return Err(refuse(&state, audit, problem).await);
        }
    };
    let body = ConsentGrantedV1 {
        purposes: purposes
            .iter()
            .map(|p| PurposeRefV1 {
                id: p.id.as_str().to_owned(),
                version: p.version,
            })
            .collect(),
        consented_by: request.consented_by.clone(),
        policy: request.policy,
        evidence: request.evidence,
        valid_from: request.valid_from.clone(),
        valid_until: request.valid_until.clone(),
        retention_at_recipient_days: request.retention_at_recipient_days,
        withdrawal: request.withdrawal,
        binding_code_hash: code.hash(&consent_id),
    };
    let terms = serde_json::to_string(&body).map_err(|e| Problem::internal(&e))?;
    let (notice_id, envelope) = outbound_envelope(
        &state,
        &counterpart,
        &first_purpose,
        &consent_id,
        &subject,
        BodyV1::ConsentGranted(body.clone()),
    )?;
    let change = StateChange::record_consent(
        &permit,
        NewConsent {
            record: ConsentRecord {
                id: consent_id.clone(),
                subject,
                recording_org: state.identity.org.clone(),
                counterpart: counterpart.clone(),
                purposes,
                valid_from,
                valid_until,
                retention_at_recipient_days: request.retention_at_recipient_days,
                events: vec![ConsentEvent::Given],
            },
            terms,
            local_subject_key: Some(local_subject_key),
            binding_code_hash: body.binding_code_hash.clone(),
            created_at: now,
            recorded_unit: actor.unit.clone(),
        },
    );
    let notice = StateChange::enqueue(
        &permit,
        NewOutboxMessage {
            message_id: notice_id.clone(),
            recipient: counterpart.clone(),
            message_type: MessageType::ConsentGranted,
            consent: consent_id.clone(),
            envelope,
            accepted_at: now,
        },
    );
    let (receipt, _) = state
        .audit
        .append_with(audit, vec![change, notice])
        .await
        .map_err(|e| write_failed(&e))?;
    state.delivery_wake.notify_one();
    let answer = ConsentRecordedV1 {
        consent_id: consent_id.to_string(),
        subject_ref: subject.to_string(),
        binding_code: code.as_str().to_owned(),
        status: ConsentEvent::Given.as_str().to_owned(),
        valid_from: format_time(valid_from),
        valid_until: format_time(valid_until),
        audit_leaf_index: receipt.index,
        notice_message_id: notice_id.to_string(),
    };
    Ok(Audited::new(receipt, HttpResponse::Created().json(answer)))
}

/// Loads a consent, or records the refusal of an unknown one.
async fn load_or_refuse(
    state: &NodeState,
    record: AuditRecord,
    id: &ConsentId,
) -> Result<StoredConsent, Problem> {
    match storage::consent(&state.db, id).await {
        Ok(Some(consent)) => Ok(consent),
        Ok(None) => Err(refuse(state, record, consent_unknown()).await),
        Err(e) => Err(Problem::unavailable(&e)),
    }
}

fn consent_unknown() -> Problem {
    Problem::refused(
        "consent-unknown",
        "this node holds no consent with that id",
        None,
    )
}

fn notice_view(notice: storage::OutboxMessage) -> NoticeViewV1 {
    let ack = notice
        .receipt
        .as_deref()
        .and_then(|r| serde_json::from_str::<crate::wire::ReceiptV1>(r).ok())
        .and_then(|r| r.ack);
    NoticeViewV1 {
        message_id: notice.message_id,
        message_type: notice.message_type,
        status: notice.status,
        reason: notice.status_reason,
        ack,
    }
}

fn view(
    consent: &StoredConsent,
    notices: Vec<storage::OutboxMessage>,
    now: time::OffsetDateTime,
) -> ConsentViewV1 {
    let record = &consent.record;
    let status = consent::derived_status(&record.events);
    let active_now = status.is_some_and(|s| s.permits_processing())
        && now >= record.valid_from
        && now < record.valid_until;
    ConsentViewV1 {
        consent_id: record.id.to_string(),
        subject_ref: record.subject.to_string(),
        recording_org: record.recording_org.to_string(),
        counterpart: record.counterpart.to_string(),
        status: record
            .events
            .last()
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default(),
        active_now,
        valid_from: format_time(record.valid_from),
        valid_until: format_time(record.valid_until),
        terms: serde_json::from_str(&consent.terms).unwrap_or(serde_json::Value::Null),
        events: consent
            .events
            .iter()
            .map(|e| ConsentEventViewV1 {
                event: e.event.as_str().to_owned(),
                at: format_time(e.at),
                recorded_by: e.recorded_by.to_string(),
            })
            .collect(),
        bound: consent.local_subject_key.is_some(),
        local_subject_key: consent.local_subject_key.clone(),
        binding_failures_total: consent.binding_failures_total,
        binding_locked_until: consent.binding_locked_until.map(format_time),
        notices: notices.into_iter().map(notice_view).collect(),
    }
}

/// `GET /api/v1/consents/{id}` (caseworker or consent-admin). The read is audited.
#[utoipa::path(
    get,
    path = "/api/v1/consents/{id}",
    tag = "consents",
    operation_id = "getConsent",
    summary = "Read a consent",
    description = "Needs the caseworker or consent-admin role. The consent's terms and events, whether it is bound, and the notices this node sent about it with their delivery. The read is audited.",
    params(("id" = String, Path, description = "The consent id (a UUID).")),
    responses(
        (status = 200, description = "The consent, its events and the notices this node sent about it.", body = ConsentViewV1),
        (status = 400, description = "The id is not a consent id (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the caseworker and consent-admin roles (`forbidden-role`), or this node holds no consent with that id (`consent-unknown`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot read or audit right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    actor: Actor,
    state: web::Data<NodeState>,
    path: web::Path<String>,
) -> Result<Audited<HttpResponse>, Problem> {
    actor
        .require(
            &state,
            "/api/v1/consents/{id}",
            &[Role::Caseworker, Role::ConsentAdmin],
        )
        .await?;
    let id = parse_consent_id(&path)?;
    let record = consent_record(&state, &actor, "local.consent.read", &id, None, None);
    let reach = Reach::of(&state, &actor);
    let consent = match storage::consent(&state.db, &id).await {
        Ok(Some(consent)) => consent,
        // A caseworker limited to a unit learns nothing of what exists outside it: an unknown
        // consent is out of scope too.
        Ok(None) if reach != Reach::Organisation => {
            return Err(refuse(&state, record, Problem::out_of_scope()).await);
        }
        Ok(None) => return Err(refuse(&state, record, consent_unknown()).await),
        Err(e) => return Err(Problem::unavailable(&e)),
    };
    if !reach.covers(&consent) {
        return Err(refuse(&state, record, Problem::out_of_scope()).await);
    }
    let mut record = record;
    record.subject_hmac = Some(
        state
            .hmac
            .pseudonymise("subject", &consent.record.subject.to_string()),
    );
    let notices = storage::consent_notices(&state.db, &id)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let receipt = audited::permit(&state, record).await?;
    Ok(Audited::new(
        receipt,
        HttpResponse::Ok().json(view(&consent, notices, state.clock.now())),
    ))
}

/// `POST /api/v1/consents/{id}/withdraw` (consent-admin): records the end of the consent, deals
/// with what was received under it, and tells the other party.
#[utoipa::path(
    post,
    path = "/api/v1/consents/{id}/withdraw",
    tag = "consents",
    operation_id = "withdrawConsent",
    summary = "Withdraw a consent",
    description = "Needs the consent-admin role. Records the end of the consent, deals with what was received under it (cancels queued messages, deletes or retains received ones) and queues a `consent.withdrawn` notice for the other party, ahead of everything else.",
    params(("id" = String, Path, description = "The consent id (a UUID).")),
    request_body(content = WithdrawRequestV1, description = "How the consent ended."),
    responses(
        (status = 200, description = "The end of the consent is recorded, what was received under it dealt with, and the other party's notice queued.", body = WithdrawnV1),
        (status = 400, description = "The request or the id is malformed (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the consent-admin role (`forbidden-role`), the consent is unknown (`consent-unknown`), has ended already (`consent-not-active`), or this node is not a party of it (`party-not-in-consent`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "The request body is larger than 16 KiB (`body-too-large`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot record the decision right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn withdraw(
    actor: Actor,
    state: web::Data<NodeState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<Audited<HttpResponse>, Problem> {
    actor
        .require(
            &state,
            "/api/v1/consents/{id}/withdraw",
            &[Role::ConsentAdmin],
        )
        .await?;
    let id = parse_consent_id(&path)?;
    let request: WithdrawRequestV1 = read_request(payload).await?;
    let event = admission::end_event(request.event);
    let mut audit = consent_record(&state, &actor, "local.consent.withdraw", &id, None, None);
    let consent = load_or_refuse(&state, audit.clone(), &id).await?;
    let record = &consent.record;
    let other = record.other_party(&state.identity.org).clone();
    audit.subject_hmac = Some(
        state
            .hmac
            .pseudonymise("subject", &record.subject.to_string()),
    );
    audit.peer = Some(other.to_string());
    let Some(facts) = record.facts() else {
        return Err(Problem::internal(&"a stored consent without events"));
    };
    if !facts.status.permits_processing() {
        let problem = Problem::refused("consent-not-active", "the consent has ended already", None);
        return Err(refuse(&state, audit, problem).await);
    }
    let permit = match policy::decide_withdrawal(&state.identity.org, &record.subject, Some(&facts))
    {
        Decision::Permit(permit) => permit,
        Decision::Deny(denial) => {
            let problem =
                Problem::refused(denial.reason.code(), "not a party of this consent", None);
            return Err(refuse(&state, audit, problem).await);
        }
    };
    let now = state.clock.now();
    let own_kind = state
        .manifest
        .snapshot()
        .member(&state.identity.org)
        .map(|m| m.kind)
        .unwrap_or(OrgKind::Municipality);
    let mut changes = vec![StateChange::consent_event(
        &permit,
        id.clone(),
        event,
        now,
        state.identity.org.clone(),
    )];
    let plan: AckPlan =
        admission::withdrawal_consequences(&permit, own_kind, &id, now, &mut changes);
    let purpose = record
        .purposes
        .iter()
        .next()
        .cloned()
        .ok_or_else(|| Problem::internal(&"a stored consent without purposes"))?;
    let (message_id, envelope) = outbound_envelope(
        &state,
        &other,
        &purpose,
        &id,
        &record.subject,
        BodyV1::ConsentWithdrawn(ConsentWithdrawnV1 {
            event: request.event,
            effective_at: crate::audited::audit_time(now),
        }),
    )?;
    changes.push(StateChange::enqueue(
        &permit,
        NewOutboxMessage {
            message_id: message_id.clone(),
            recipient: other.clone(),
            message_type: MessageType::ConsentWithdrawn,
            consent: id.clone(),
            envelope,
            accepted_at: now,
        },
    ));
    let (receipt, counts) = state
        .audit
        .append_with(audit, changes)
        .await
        .map_err(|e| write_failed(&e))?;
    state.delivery_wake.notify_one();
    let local = federation::fill_ack(&state, &message_id, &plan, &counts);
    let answer = WithdrawnV1 {
        consent_id: id.to_string(),
        status: event.as_str().to_owned(),
        audit_leaf_index: receipt.index,
        local,
        notice_message_id: message_id.to_string(),
    };
    Ok(Audited::new(receipt, HttpResponse::Ok().json(answer)))
}

/// `POST /api/v1/consents/{id}/bind` (consent-admin): links the pairwise reference to this
/// node's own key for the child with the family's one-time code. Wrong codes are counted and,
/// after a few in a row, binding is locked for a while.
#[utoipa::path(
    post,
    path = "/api/v1/consents/{id}/bind",
    tag = "consents",
    operation_id = "bindConsent",
    summary = "Bind a consent to the local key for the child",
    description = "Needs the consent-admin role. Links the consent's pairwise reference to this node's own key for the child with the family's one-time code. Wrong codes are counted and, after a few in a row, binding is locked for a while.",
    params(("id" = String, Path, description = "The consent id (a UUID).")),
    request_body(content = BindRequestV1, description = "The family's one-time code and this node's own key for the child."),
    responses(
        (status = 200, description = "The consent is bound to the local key.", body = BoundV1),
        (status = 400, description = "The request or the id is malformed (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the consent-admin role (`forbidden-role`), the consent is unknown (`consent-unknown`), or the code is not right (`binding-code-wrong`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The consent is bound already; a binding code works once (`already-bound`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "The request body is larger than 16 KiB (`body-too-large`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, description = "The local subject key looks like a CPR number (`cpr-detected`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong codes; binding is locked for a while (`binding-locked`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot record the decision right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn bind(
    actor: Actor,
    state: web::Data<NodeState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<Audited<HttpResponse>, Problem> {
    actor
        .require(&state, "/api/v1/consents/{id}/bind", &[Role::ConsentAdmin])
        .await?;
    let id = parse_consent_id(&path)?;
    let request: BindRequestV1 = read_request(payload).await?;
    let local_subject_key = parse_local_subject_key(&request.local_subject_key)?;
    // One check at a time on this node: a check and its recording are not split by another.
    let _guard = state.binding.lock().await;
    let mut audit = consent_record(&state, &actor, "local.consent.bind", &id, None, None);
    let consent = load_or_refuse(&state, audit.clone(), &id).await?;
    audit.subject_hmac = Some(
        state
            .hmac
            .pseudonymise("subject", &consent.record.subject.to_string()),
    );
    let now = state.clock.now();
    if consent.local_subject_key.is_some() {
        let problem = Problem::refused(
            "already-bound",
            "this consent is bound already; a binding code works once",
            None,
        );
        return Err(refuse(&state, audit, problem).await);
    }
    if let Some(until) = consent.binding_locked_until
        && now < until
    {
        let problem = Problem::refused(
            "binding-locked",
            format!(
                "too many wrong codes; binding is locked until {}",
                format_time(until)
            ),
            None,
        );
        return Err(refuse(&state, audit, problem).await);
    }
    let Some(verified) =
        verify_binding_code(&request.binding_code, &id, &consent.binding_code_hash)
    else {
        let (failures, locked_until) = after_wrong_code(consent.binding_failures, now);
        let detail = match locked_until {
            Some(until) => format!(
                "the code is not right; binding is now locked until {}",
                format_time(until)
            ),
            None => format!(
                "the code is not right; {} more wrong codes lock binding for a while",
                consent::BINDING_ATTEMPTS_BEFORE_LOCK.saturating_sub(failures)
            ),
        };
        let problem = Problem::refused("binding-code-wrong", detail, Some("/binding_code".into()));
        audit.decision = Some(AuditDecision::Deny);
        audit.reason = Some(problem.reason.to_owned());
        return match state
            .audit
            .append_with(
                audit,
                vec![StateChange::binding_failure(
                    id.clone(),
                    failures,
                    locked_until,
                )],
            )
            .await
        {
            Ok(_) => Err(problem),
            Err(e) => Err(write_failed(&e)),
        };
    };
    let (receipt, counts) = state
        .audit
        .append_with(
            audit,
            vec![StateChange::bind(
                &verified,
                id.clone(),
                local_subject_key,
                now,
                actor.unit.clone(),
            )],
        )
        .await
        .map_err(|e| write_failed(&e))?;
    if counts.first().copied() != Some(1) {
        // Bound by a request on another replica between the check and the write.
        return Err(Problem::refused(
            "already-bound",
            "this consent is bound already; a binding code works once",
            None,
        ));
    }
    let answer = BoundV1 {
        consent_id: id.to_string(),
        subject_ref: consent.record.subject.to_string(),
        bound: true,
        audit_leaf_index: receipt.index,
    };
    Ok(Audited::new(receipt, HttpResponse::Ok().json(answer)))
}
