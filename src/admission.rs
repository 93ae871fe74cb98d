//! Admission of an envelope at this node's boundary, in the order of DESIGN §5: identity and
//! routing, replay, the document checks of [`crate::boundary`] (size, CPR guard, schema), then
//! the pure decision of [`crate::policy`].
//!
//! This is where a message is checked. The result is a decision that has not been answered
//! yet: an audit record, the state changes that commit with it (the inbox row, the consent
//! event, the remembered answer), and what to answer once the write path returned its receipt.
//! `federation` appends and answers; nothing here writes. Reads (the replay table, consents)
//! go through `storage`.

use crate::audit::entry::{AuditRecord, Decision as AuditDecision};
use crate::audited;
use crate::boundary::{self, Refusal};
use crate::consent::{self, ConsentEvent, ConsentRecord};
use crate::domain::{
    ConsentId, MessageId, MessageType, OrgId, OrgKind, PurposeId, PurposeRef, SubjectRef,
};
use crate::manifest::Member;
use crate::node::NodeState;
use crate::policy::{self, Decision, Denial, Exchange, Grant, Permit};
use crate::problem::Problem;
use crate::storage::{self, NewConsent, NewInboxMessage, SeenMessage};
use crate::wire::{
    AckActionKindV1, AckActionV1, AckV1, BodyV1, ConsentEndV1, EnvelopeV1, PurposeRefV1,
    RetentionBasisV1,
};
use crate::write_path::StateChange;
use serde_json::Value;
use std::collections::BTreeSet;

/// What admission came to.
pub enum Admission {
    /// The same message id and the same bytes as before: the first answer again, and nothing
    /// is recorded or changed.
    Replay(SeenMessage, MessageId),
    /// A decision to append to the audit log (with its changes) before answering.
    Decided(Box<Decided>),
}

/// A decision not yet answered.
pub struct Decided {
    pub record: AuditRecord,
    pub changes: Vec<StateChange>,
    pub outcome: Outcome,
    /// Keeps other copies of this message waiting until this decision is committed: drop it
    /// after the append.
    pub in_flight: Option<InFlightGuard>,
}

/// What to answer once the decision is durable.
pub enum Outcome {
    Refused(Problem),
    Admitted {
        message_id: MessageId,
        /// For a withdrawal notice: the acknowledgement, whose counts are the results of the
        /// changes at the given positions.
        ack: Option<AckPlan>,
    },
}

/// The acknowledgement of a withdrawal notice, to fill in from the change results.
#[derive(Debug, Clone)]
pub struct AckPlan {
    pub actions: Vec<(AckActionKindV1, usize, Option<RetentionBasisV1>)>,
}

impl AckPlan {
    /// The acknowledgement of withdrawal notice `message_id`, with the counts the changes
    /// returned (`counts[position]`) and the time `at`.
    pub fn fill(&self, message_id: &MessageId, counts: &[u64], at: String) -> AckV1 {
        AckV1 {
            in_reply_to: message_id.to_string(),
            actions: self
                .actions
                .iter()
                .map(|(action, position, basis)| AckActionV1 {
                    action: *action,
                    count: counts.get(*position).copied().unwrap_or(0),
                    basis: *basis,
                })
                .collect(),
            at,
        }
    }
}

/// The fields of a document that admission reads before the schema: who claims to send it, to
/// whom, and under which id.
struct Header {
    sender: Option<String>,
    recipient: Option<String>,
    message_id: Option<MessageId>,
}

fn header(document: &Value) -> Header {
    let text = |key: &str| document.get(key).and_then(Value::as_str).map(str::to_owned);
    Header {
        sender: text("sender"),
        recipient: text("recipient"),
        message_id: text("message_id").and_then(|id| id.parse().ok()),
    }
}

/// A value's JSON serialization, in a buffer sized for an ordinary message at once (growing it
/// from serde_json's default would copy it three times).
fn json_bytes(value: &Value) -> Result<Vec<u8>, Problem> {
    let mut bytes = Vec::with_capacity(1024);
    serde_json::to_writer(&mut bytes, value).map_err(|e| Problem::internal(&e))?;
    Ok(bytes)
}

/// SHA-256 (hex) of the exact bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::audit::entry::lower_hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// An envelope in domain types, converted once from the checked wire form.
pub struct Envelope {
    pub message_id: MessageId,
    pub message_type: MessageType,
    pub sender: OrgId,
    pub recipient: OrgId,
    pub purpose: PurposeRef,
    pub consent: ConsentId,
    pub subject: SubjectRef,
    pub body: BodyV1,
}

fn purpose_ref(wire: &PurposeRefV1) -> Option<PurposeRef> {
    let id: PurposeId = wire.id.parse().ok()?;
    PurposeRef::new(id, wire.version).ok()
}

impl Envelope {
    /// Converts a schema-valid envelope. The schema already constrains every field, so a
    /// failure here is one more schema refusal.
    fn from_wire(wire: EnvelopeV1) -> Result<Self, Refusal> {
        let invalid = |pointer: &str| Refusal {
            reason: "schema-invalid",
            pointer: Some(pointer.to_owned()),
            detail: "the value is not valid here".into(),
        };
        Ok(Self {
            message_id: wire
                .message_id
                .parse()
                .map_err(|_| invalid("/message_id"))?,
            message_type: wire.message_type.parse().map_err(|_| invalid("/type"))?,
            sender: wire.sender.parse().map_err(|_| invalid("/sender"))?,
            recipient: wire.recipient.parse().map_err(|_| invalid("/recipient"))?,
            purpose: purpose_ref(&wire.purpose).ok_or_else(|| invalid("/purpose"))?,
            consent: wire
                .consent_id
                .parse()
                .map_err(|_| invalid("/consent_id"))?,
            subject: wire
                .subject_ref
                .parse()
                .map_err(|_| invalid("/subject_ref"))?,
            body: wire.body,
        })
    }
}

/// The audit record of an envelope decision, with what is known so far.
fn envelope_record(
    state: &NodeState,
    peer: &OrgId,
    envelope_sha256: &str,
    envelope: Option<&Envelope>,
) -> AuditRecord {
    let mut record = audited::record(state, "federation.envelope", AuditDecision::Deny, None);
    record.peer = Some(peer.to_string());
    record.envelope_sha256 = Some(envelope_sha256.to_owned());
    if let Some(envelope) = envelope {
        record_envelope(state, &mut record, envelope);
    }
    record
}

/// Fills in what the record says of the envelope: its type and purpose, and its identifiers as
/// keyed HMACs.
fn record_envelope(state: &NodeState, record: &mut AuditRecord, e: &Envelope) {
    record.message_id_hmac = Some(state.hmac.pseudonymise("message", e.message_id.as_str()));
    record.message_type = Some(e.message_type.as_str().to_owned());
    record.purpose = Some(e.purpose.to_string());
    record.consent_hmac = Some(state.hmac.pseudonymise("consent", e.consent.as_str()));
    record.subject_hmac = Some(state.hmac.pseudonymise("subject", &e.subject.to_string()));
}

/// Everything a refusal needs: the record, and what to remember for a replay.
struct Refuse<'a> {
    state: &'a NodeState,
    peer: &'a OrgId,
    envelope_sha256: &'a str,
}

impl Refuse<'_> {
    /// A refusal; remembered under the message id when there is one, so that a replay of the
    /// same bytes gets the same answer.
    fn refuse(
        &self,
        problem: Problem,
        message_id: Option<&MessageId>,
        envelope: Option<&Envelope>,
    ) -> Admission {
        let mut record = envelope_record(self.state, self.peer, self.envelope_sha256, envelope);
        record.decision = Some(AuditDecision::Deny);
        record.reason = Some(problem.reason.to_owned());
        let mut changes = Vec::new();
        if let Some(id) = message_id
            && let Ok(json) = serde_json::to_string(&problem)
        {
            changes.push(StateChange::remember_answer(
                self.peer.clone(),
                id.clone(),
                self.envelope_sha256.to_owned(),
                problem.status,
                Some(json),
            ));
        }
        Admission::Decided(Box::new(Decided {
            record,
            changes,
            outcome: Outcome::Refused(problem),
            in_flight: None,
        }))
    }
}

fn refusal_problem(refusal: Refusal) -> Problem {
    Problem::refused(refusal.reason, refusal.detail, refusal.pointer)
}

fn denial_problem(denial: &Denial) -> Problem {
    let detail = match denial.reason {
        policy::DenyReason::FieldNotAllowed => {
            "the purpose does not allow this field; nothing is stripped, so leave it out"
        }
        _ => "refused by the purpose and consent rules",
    };
    Problem::refused(denial.reason.code(), detail, denial.pointer.clone())
}

/// The kind of the member `org` in the current manifest.
fn kind_of(state: &NodeState, org: &OrgId) -> Option<OrgKind> {
    state.manifest.snapshot().member(org).map(|m| m.kind)
}

/// The consent this node holds under `id` (shared with the lookups' cache, not copied).
async fn held_consent(
    state: &NodeState,
    id: &ConsentId,
) -> Result<Option<std::sync::Arc<storage::StoredConsent>>, Problem> {
    state
        .lookups
        .consent(id)
        .await
        .map_err(|e| Problem::unavailable(&e))
}

/// Admits (or refuses) one envelope from an authenticated peer. Another copy of the same message
/// being decided at the same time waits for that decision and then gets its answer.
pub async fn admit_inbound(
    state: &NodeState,
    peer: &Member,
    bytes: &[u8],
) -> Result<Admission, Problem> {
    admit_inbound_batch(state, peer, &[bytes])
        .await
        .pop()
        .unwrap_or_else(|| Err(Problem::internal(&"an envelope without an admission")))
}

/// Admits (or refuses) the envelopes of one batch from an authenticated peer, each on its own
/// terms, in order, with one read of the replay table for all of them. The message ids must be
/// distinct (a batch's second use of an id is refused before admission). Another copy of one of
/// these messages being decided at the same time waits for that decision first.
pub async fn admit_inbound_batch(
    state: &NodeState,
    peer: &Member,
    items: &[&[u8]],
) -> Vec<Result<Admission, Problem>> {
    // The size limit comes first in practice: a node does not parse what it will not accept.
    let documents: Vec<_> = items
        .iter()
        .map(|bytes| boundary::parse_document(bytes))
        .collect();
    let ids: Vec<Option<MessageId>> = documents
        .iter()
        .map(|document| {
            document
                .as_ref()
                .ok()
                .and_then(|document| header(document).message_id)
        })
        .collect();
    let mut claimed = match Claimed::enter(state, &peer.org, &ids).await {
        Ok(claimed) => claimed,
        Err(problem) => return items.iter().map(|_| Err(problem.clone())).collect(),
    };
    let mut admissions = Vec::with_capacity(items.len());
    for ((bytes, document), id) in items.iter().zip(documents).zip(ids) {
        let first_answer = claimed.first_answer(id.as_ref());
        let admission = admit_inbound_unguarded(state, peer, bytes, document, first_answer).await;
        admissions.push(claimed.attach(admission, id.as_ref()));
    }
    admissions
}

/// The message ids of a batch claimed (`InFlight::enter_all`), with their rows of the replay
/// table read after the claim.
struct Claimed {
    guards: std::collections::HashMap<MessageId, InFlightGuard>,
    seen: std::collections::HashMap<MessageId, SeenMessage>,
}

impl Claimed {
    async fn enter(
        state: &NodeState,
        sender: &OrgId,
        ids: &[Option<MessageId>],
    ) -> Result<Self, Problem> {
        let guards = state
            .in_flight
            .enter_all(sender, ids.iter().flatten())
            .await;
        let known: Vec<&MessageId> = ids.iter().flatten().collect();
        let seen = state
            .lookups
            .seen_messages(sender, &known)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
        Ok(Self { guards, seen })
    }

    /// The first answer to `id`, if it was seen.
    fn first_answer(&self, id: Option<&MessageId>) -> Option<SeenMessage> {
        id.and_then(|id| self.seen.get(id)).cloned()
    }

    /// Hands the claim on `id` to a fresh decision, which keeps it until its commit.
    fn attach(
        &mut self,
        mut admission: Result<Admission, Problem>,
        id: Option<&MessageId>,
    ) -> Result<Admission, Problem> {
        if let (Ok(Admission::Decided(decided)), Some(id)) = (&mut admission, id) {
            decided.in_flight = self.guards.remove(id);
        }
        admission
    }
}

/// DESIGN §5 for one envelope whose message id this caller holds (if it has one), with the
/// replay table's row for that id (`seen`), read by the caller.
async fn admit_inbound_unguarded(
    state: &NodeState,
    peer: &Member,
    bytes: &[u8],
    document: Result<Value, boundary::Refusal>,
    seen: Option<SeenMessage>,
) -> Result<Admission, Problem> {
    let envelope_sha256 = sha256_hex(bytes);
    let refuse = Refuse {
        state,
        peer: &peer.org,
        envelope_sha256: &envelope_sha256,
    };
    let now = state.clock.now();
    let document = match document {
        Ok(document) => document,
        Err(refusal) => return Ok(refuse.refuse(refusal_problem(refusal), None, None)),
    };
    // Step 1: the authenticated peer is the envelope's sender, and this node its recipient.
    let header = header(&document);
    if let Some(sender) = &header.sender
        && sender != peer.org.as_str()
    {
        let problem = Problem::refused(
            "sender-mismatch",
            "the envelope's sender must be the organisation of the client certificate",
            Some("/sender".into()),
        );
        return Ok(refuse.refuse(problem, None, None));
    }
    if let Some(recipient) = &header.recipient
        && recipient != state.identity.org.as_str()
    {
        let problem = Problem::refused(
            "recipient-mismatch",
            format!("this node is `{}`", state.identity.org),
            Some("/recipient".into()),
        );
        return Ok(refuse.refuse(problem, None, None));
    }
    // Step 2: replay. The same id and bytes get the first answer; other bytes are a conflict.
    if let Some(id) = &header.message_id {
        match seen {
            Some(seen) if seen.envelope_sha256 == envelope_sha256 => {
                return Ok(Admission::Replay(seen, id.clone()));
            }
            Some(_) => {
                let problem = Problem::refused(
                    "message-id-conflict",
                    "this message id was used before with a different body; a new message needs a new id",
                    Some("/message_id".into()),
                );
                return Ok(refuse.refuse(problem, None, None));
            }
            None => {}
        }
    }
    let message_id = header.message_id.as_ref();
    // Step 3: the CPR guard and the schema, then the conversion to domain types, once.
    let envelope =
        match boundary::check_parsed(document, &state.schemas).and_then(Envelope::from_wire) {
            Ok(envelope) => envelope,
            Err(refusal) => return Ok(refuse.refuse(refusal_problem(refusal), message_id, None)),
        };
    // Steps 4 and 5: the pure decision, by kind of message.
    let (Some(sender_kind), Some(recipient_kind)) = (
        kind_of(state, &envelope.sender),
        kind_of(state, &envelope.recipient),
    ) else {
        // Both are members (the peer was authenticated, this node is in its own manifest).
        return Err(Problem::internal(
            &"a party of an admitted envelope is not in the manifest",
        ));
    };
    // Borrowed from this request's snapshot of the manifest, not copied.
    let manifest = state.manifest.snapshot();
    let catalogue = &manifest.catalogue;
    let existing = held_consent(state, &envelope.consent).await?;
    let existing_facts = existing.as_ref().and_then(|c| c.record.facts());
    match &envelope.body {
        BodyV1::ConsentGranted(grant) => {
            let purposes: Option<BTreeSet<PurposeRef>> =
                grant.purposes.iter().map(purpose_ref).collect();
            let dates = consent::parse_date(&grant.valid_from)
                .zip(consent::parse_date(&grant.valid_until))
                .and_then(|(from, last)| consent::validity_instants(from, last));
            let (Some(purposes), Some((valid_from, valid_until))) = (purposes, dates) else {
                let problem = Problem::refused(
                    "schema-invalid",
                    "a purpose or a date of the consent is not valid",
                    Some("/body".into()),
                );
                return Ok(refuse.refuse(problem, message_id, Some(&envelope)));
            };
            // The binding hash's work factor is the sender's choice: keep it within what a
            // consent-admin's check can afford.
            if !consent::is_binding_hash(&grant.binding_code_hash) {
                let problem = Problem::refused(
                    "schema-invalid",
                    "the binding code hash must be pbkdf2-sha256 with 10,000 to 1,000,000 rounds",
                    Some("/body/binding_code_hash".into()),
                );
                return Ok(refuse.refuse(problem, message_id, Some(&envelope)));
            }
            let withdrawn_before_granted = existing.is_none()
                && storage::consent_tombstoned(&state.db, &envelope.consent)
                    .await
                    .map_err(|e| Problem::unavailable(&e))?;
            let decision = policy::decide_grant(
                &Grant {
                    consent: &envelope.consent,
                    sender: &envelope.sender,
                    sender_kind,
                    recipient: &envelope.recipient,
                    recipient_kind,
                    purpose: &envelope.purpose,
                    purposes: &purposes,
                    valid_from,
                    valid_until,
                    retention_days: grant.retention_at_recipient_days,
                    withdrawn_before_granted,
                },
                catalogue,
                existing_facts.as_ref(),
                now,
            );
            let permit = match decision {
                Decision::Permit(permit) => permit,
                Decision::Deny(denial) => {
                    return Ok(refuse.refuse(denial_problem(&denial), message_id, Some(&envelope)));
                }
            };
            let terms = serde_json::to_string(grant).map_err(|e| Problem::internal(&e))?;
            let record = ConsentRecord {
                id: envelope.consent.clone(),
                subject: envelope.subject,
                recording_org: envelope.sender.clone(),
                counterpart: envelope.recipient.clone(),
                purposes,
                valid_from,
                valid_until,
                retention_at_recipient_days: grant.retention_at_recipient_days,
                events: vec![ConsentEvent::Given],
            };
            let change = StateChange::record_consent(
                &permit,
                NewConsent {
                    record,
                    terms,
                    local_subject_key: None,
                    binding_code_hash: grant.binding_code_hash.clone(),
                    created_at: now,
                    recorded_unit: None,
                },
            );
            Ok(admitted(
                state,
                &refuse,
                &envelope,
                permit,
                vec![change],
                None,
            ))
        }
        BodyV1::ConsentWithdrawn(withdrawn) => {
            let decision = policy::decide_withdrawal(
                &envelope.sender,
                &envelope.subject,
                existing_facts.as_ref(),
            );
            let permit = match decision {
                Decision::Permit(permit) => permit,
                Decision::Deny(denial) => {
                    return Ok(refuse.refuse(denial_problem(&denial), message_id, Some(&envelope)));
                }
            };
            let (changes, ack) = match &existing_facts {
                // Unknown here: answered cleanly, nothing to do.
                None => (
                    Vec::new(),
                    AckPlan {
                        actions: Vec::new(),
                    },
                ),
                Some(facts) => {
                    let mut changes = Vec::new();
                    if facts.status.permits_processing() {
                        changes.push(StateChange::consent_event(
                            &permit,
                            envelope.consent.clone(),
                            end_event(withdrawn.event),
                            now,
                            envelope.sender.clone(),
                        ));
                    }
                    let ack = withdrawal_consequences(
                        &permit,
                        state_kind(state),
                        &envelope.consent,
                        now,
                        &mut changes,
                    );
                    (changes, ack)
                }
            };
            Ok(admitted(
                state,
                &refuse,
                &envelope,
                permit,
                changes,
                Some(ack),
            ))
        }
        BodyV1::Ack(_) => {
            // In v1 an acknowledgement travels in the answer to a withdrawal, never on its own.
            let problem = Problem::refused(
                "type-not-allowed",
                "an ack is the answer to a withdrawal notice, not a message of its own",
                Some("/type".into()),
            );
            Ok(refuse.refuse(problem, message_id, Some(&envelope)))
        }
        BodyV1::ActivitySummary(_) | BodyV1::Referral(_) | BodyV1::ReferralResponse(_) => {
            let fields = envelope.body.data_field_names().unwrap_or_default();
            let decision = policy::decide(
                &Exchange {
                    message_type: envelope.message_type,
                    sender: &envelope.sender,
                    sender_kind,
                    recipient: &envelope.recipient,
                    recipient_kind,
                    purpose: &envelope.purpose,
                    consent: &envelope.consent,
                    subject: &envelope.subject,
                    body_fields: &fields,
                },
                catalogue,
                existing_facts.as_ref(),
                now,
            );
            let permit = match decision {
                Decision::Permit(permit) => permit,
                Decision::Deny(denial) => {
                    return Ok(refuse.refuse(denial_problem(&denial), message_id, Some(&envelope)));
                }
            };
            let change = StateChange::store_inbound(
                &permit,
                NewInboxMessage {
                    sender: envelope.sender.clone(),
                    message_id: envelope.message_id.clone(),
                    message_type: envelope.message_type,
                    purpose: envelope.purpose.clone(),
                    consent: envelope.consent.clone(),
                    subject: envelope.subject,
                    envelope: bytes.to_vec(),
                    received_at: now,
                    delete_after: existing.as_ref().map(|c| {
                        now + time::Duration::days(i64::from(c.record.retention_at_recipient_days))
                    }),
                },
            );
            Ok(admitted(
                state,
                &refuse,
                &envelope,
                permit,
                vec![change],
                None,
            ))
        }
    }
}

/// This node's own kind.
fn state_kind(state: &NodeState) -> OrgKind {
    kind_of(state, &state.identity.org).unwrap_or(OrgKind::Municipality)
}

/// The event a withdrawal notice records.
pub fn end_event(end: ConsentEndV1) -> ConsentEvent {
    match end {
        ConsentEndV1::WithdrawnBySubject => ConsentEvent::WithdrawnBySubject,
        ConsentEndV1::Revoked => ConsentEvent::Revoked,
        ConsentEndV1::Expired => ConsentEvent::Expired,
        ConsentEndV1::Invalidated => ConsentEvent::Invalidated,
    }
}

/// What this node does under a withdrawn consent (DESIGN §3): queued data messages are
/// cancelled; what it received is deleted by an NGO, and kept under its archival duty by a
/// public authority, which says so. Appends the changes (they commit with the withdrawal) and
/// returns the acknowledgement to fill in from their results.
pub fn withdrawal_consequences(
    permit: &Permit,
    own_kind: OrgKind,
    consent: &ConsentId,
    now: time::OffsetDateTime,
    changes: &mut Vec<StateChange>,
) -> AckPlan {
    let mut actions = vec![(AckActionKindV1::CancelledQueued, changes.len(), None)];
    changes.push(StateChange::cancel_queued(consent.clone(), now));
    match own_kind {
        OrgKind::Ngo => {
            actions.push((AckActionKindV1::DeletedReceived, changes.len(), None));
            changes.push(StateChange::delete_received(permit, consent.clone()));
        }
        OrgKind::Municipality | OrgKind::Region => {
            actions.push((
                AckActionKindV1::RetainedWithBasis,
                changes.len(),
                Some(RetentionBasisV1::Arkivloven),
            ));
            changes.push(StateChange::count_received(consent.clone()));
        }
    }
    AckPlan { actions }
}

/// An admitted envelope: its permit record, its changes, and the remembered answer.
fn admitted(
    state: &NodeState,
    refuse: &Refuse<'_>,
    envelope: &Envelope,
    _permit: Permit,
    mut changes: Vec<StateChange>,
    ack: Option<AckPlan>,
) -> Admission {
    let mut record = envelope_record(state, refuse.peer, refuse.envelope_sha256, Some(envelope));
    record.decision = Some(AuditDecision::Permit);
    // The receipt is built and remembered by the commit itself, so a replay gets exactly the
    // receipt that was answered, and no second write is needed.
    changes.push(StateChange::remember_receipt(
        refuse.peer.clone(),
        envelope.message_id.clone(),
        refuse.envelope_sha256.to_owned(),
        ack.clone()
            .map(|plan| (plan, crate::audited::audit_time(state.clock.now()))),
    ));
    Admission::Decided(Box::new(Decided {
        record,
        changes,
        outcome: Outcome::Admitted {
            message_id: envelope.message_id.clone(),
            ack,
        },
        in_flight: None,
    }))
}

// ----- Local submission (the same checks, outbound) -----

/// The fields a local system gives for one message (`POST /api/v1/messages`); the node adds
/// the sender, the child's pairwise reference (from the consent) and the time.
#[derive(utoipa::ToSchema, Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmissionV1 {
    /// The client may choose the id (a UUID), so that a retry is recognised.
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(rename = "type")]
    pub message_type: String,
    pub recipient: String,
    pub purpose: PurposeRefV1,
    pub consent_id: String,
    pub body: Value,
}

/// The fields of a submission but its body, for [`read_submission`]'s common case.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmissionHead {
    #[serde(default)]
    message_id: Option<String>,
    #[serde(rename = "type")]
    message_type: String,
    recipient: String,
    purpose: PurposeRefV1,
    consent_id: String,
}

/// Reads a submitted item. The common case moves the body out whole and reads the few other
/// fields: `serde_path_to_error`, which finds where a mistake is, would rebuild the body value
/// as it reads it. Any mistake is read again that way, so a refusal names the same pointer.
fn read_submission(
    mut item: Value,
) -> Result<SubmissionV1, serde_path_to_error::Error<serde_json::Error>> {
    use serde::Deserialize as _;
    if let Some(body) = item
        .as_object_mut()
        .and_then(|fields| fields.remove("body"))
    {
        match SubmissionHead::deserialize(&item) {
            Ok(head) => {
                return Ok(SubmissionV1 {
                    message_id: head.message_id,
                    message_type: head.message_type,
                    recipient: head.recipient,
                    purpose: head.purpose,
                    consent_id: head.consent_id,
                    body,
                });
            }
            Err(_) => {
                if let Some(fields) = item.as_object_mut() {
                    fields.insert("body".to_owned(), body);
                }
            }
        }
    }
    serde_path_to_error::deserialize(item)
}

/// The sending time as envelopes carry it: UTC, whole seconds.
pub fn sent_at(now: time::OffsetDateTime) -> String {
    crate::manifest::format_time(
        now.replace_nanosecond(0)
            .unwrap_or(now)
            .to_offset(time::UtcOffset::UTC),
    )
}

/// A new message id from this node's clock.
pub fn new_message_id(state: &NodeState) -> Result<MessageId, Problem> {
    let now = state.clock.now();
    let random = consent::random_bytes::<10>().map_err(|e| Problem::internal(&e))?;
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    Ok(MessageId::v7(millis, random))
}

/// The client's message id of a submitted item, if it gave a valid one.
fn client_message_id(item: &Value) -> Option<MessageId> {
    item.get("message_id")
        .and_then(Value::as_str)
        .and_then(|id| id.parse().ok())
}

/// Admits (or refuses) the messages a local system submits (one, or a batch), each with its
/// audit record (the actor filled in), with the checks a receiver runs (DESIGN §5, "the same
/// checks run outbound"), so a bad message is refused before it is queued. Each is decided on
/// its own terms, in order, with one read of the replay table for all of them. The client's
/// message ids must be distinct (a batch's second use of an id is refused before admission).
/// Another copy of one of these messages being decided at the same time waits for that
/// decision first.
pub async fn admit_outbound(
    state: &NodeState,
    items: Vec<(AuditRecord, Value)>,
) -> Vec<Result<Admission, Problem>> {
    let me = &state.identity.org;
    let ids: Vec<Option<MessageId>> = items
        .iter()
        .map(|(_, item)| client_message_id(item))
        .collect();
    let mut claimed = match Claimed::enter(state, me, &ids).await {
        Ok(claimed) => claimed,
        Err(problem) => return items.iter().map(|_| Err(problem.clone())).collect(),
    };
    let mut admissions = Vec::with_capacity(items.len());
    for ((record, item), id) in items.into_iter().zip(ids) {
        let first_answer = claimed.first_answer(id.as_ref());
        let admission =
            admit_outbound_unguarded(state, record, item, id.clone(), first_answer).await;
        admissions.push(claimed.attach(admission, id.as_ref()));
    }
    admissions
}

/// The receiver's checks for one submitted message whose client id (`client_id`, from
/// [`client_message_id`]) this caller holds, with the replay table's row for that id (`seen`),
/// read by the caller.
async fn admit_outbound_unguarded(
    state: &NodeState,
    mut record: AuditRecord,
    item: Value,
    client_id: Option<MessageId>,
    seen: Option<SeenMessage>,
) -> Result<Admission, Problem> {
    let me = state.identity.org.clone();
    let now = state.clock.now();
    // With an expired manifest nobody is a member: nothing is accepted for sending.
    if state.manifest.snapshot().is_expired(now) {
        return Err(Problem::manifest_expired());
    }
    let item_sha256 = sha256_hex(&json_bytes(&item)?);
    record.decision = Some(AuditDecision::Deny);
    let refuse = |mut record: AuditRecord, problem: Problem, remember: Option<&MessageId>| {
        record.reason = Some(problem.reason.to_owned());
        let mut changes = Vec::new();
        if let Some(id) = remember
            && let Ok(json) = serde_json::to_string(&problem)
        {
            changes.push(StateChange::remember_answer(
                me.clone(),
                id.clone(),
                item_sha256.clone(),
                problem.status,
                Some(json),
            ));
        }
        Admission::Decided(Box::new(Decided {
            record,
            changes,
            outcome: Outcome::Refused(problem),
            in_flight: None,
        }))
    };
    // A retry of a message with the client's id gets the first answer.
    if let Some(id) = &client_id {
        match seen {
            Some(seen) if seen.envelope_sha256 == item_sha256 => {
                return Ok(Admission::Replay(seen, id.clone()));
            }
            Some(_) => {
                let problem = Problem::refused(
                    "message-id-conflict",
                    "this message id was used before with a different message; a new message needs a new id",
                    Some("/message_id".into()),
                );
                return Ok(refuse(record, problem, None));
            }
            None => {}
        }
    }
    let submission: SubmissionV1 = match read_submission(item) {
        Ok(submission) => submission,
        Err(e) => {
            let pointer = format!("/{}", e.path().to_string().replace('.', "/"));
            let problem = Problem::refused(
                "schema-invalid",
                "the message does not have the fields of a submission (message_id, type, recipient, purpose, consent_id, body)",
                Some(pointer),
            );
            return Ok(refuse(record, problem, client_id.as_ref()));
        }
    };
    if submission.message_id.is_some() && client_id.is_none() {
        let problem = Problem::refused(
            "schema-invalid",
            "a message id is a UUID in lowercase canonical form",
            Some("/message_id".into()),
        );
        return Ok(refuse(record, problem, None));
    }
    let message_id = match client_id {
        Some(id) => id,
        None => new_message_id(state)?,
    };
    let remember = Some(&message_id);
    let recipient: OrgId = match submission.recipient.parse() {
        Ok(org) if org != me => org,
        _ => {
            let problem = Problem::refused(
                "recipient-mismatch",
                "the recipient must be another member of the federation",
                Some("/recipient".into()),
            );
            return Ok(refuse(record, problem, remember));
        }
    };
    record.peer = Some(recipient.to_string());
    let Some(recipient_kind) = kind_of(state, &recipient) else {
        let problem = Problem::refused(
            "recipient-mismatch",
            "the recipient is not a current member of the federation",
            Some("/recipient".into()),
        );
        return Ok(refuse(record, problem, remember));
    };
    let consent_id: Option<ConsentId> = submission.consent_id.parse().ok();
    let existing = match &consent_id {
        Some(id) => held_consent(state, id).await?,
        None => None,
    };
    // The envelope as a receiver will see it; the child's reference comes from the consent
    // (a message under an unknown consent is refused below, after the document checks).
    let subject = existing
        .as_ref()
        .map(|c| c.record.subject.to_string())
        .unwrap_or_else(|| SubjectRef::from_bytes([0; 16]).to_string());
    // The submission's values move into the envelope; nothing is copied.
    let purpose = serde_json::to_value(&submission.purpose).map_err(|e| Problem::internal(&e))?;
    let mut document = serde_json::Map::new();
    let mut put = |key: &str, value: Value| document.insert(key.to_owned(), value);
    put("v", Value::from(crate::wire::ENVELOPE_VERSION));
    put("message_id", Value::String(message_id.as_str().to_owned()));
    put("type", Value::String(submission.message_type));
    put("sender", Value::String(me.as_str().to_owned()));
    put("recipient", Value::String(recipient.as_str().to_owned()));
    put("purpose", purpose);
    put("consent_id", Value::String(submission.consent_id));
    put("subject_ref", Value::String(subject));
    put("sent_at", Value::String(sent_at(now)));
    put("body", submission.body);
    let document = Value::Object(document);
    let bytes = json_bytes(&document)?;
    let envelope = match boundary::check_serialized(document, bytes.len(), &state.schemas)
        .and_then(Envelope::from_wire)
    {
        Ok(envelope) => envelope,
        Err(refusal) => return Ok(refuse(record, refusal_problem(refusal), remember)),
    };
    record.envelope_sha256 = Some(sha256_hex(&bytes));
    record_envelope(state, &mut record, &envelope);
    if !envelope.message_type.carries_child_data() {
        let problem = Problem::refused(
            "type-not-allowed",
            "consent notices are sent through the consent API, acknowledgements by the node itself",
            Some("/type".into()),
        );
        return Ok(refuse(record, problem, remember));
    }
    let Some(own_kind) = kind_of(state, &me) else {
        return Err(Problem::internal(&"this node is not in its own manifest"));
    };
    let fields = envelope.body.data_field_names().unwrap_or_default();
    // Borrowed from this request's snapshot of the manifest, not copied.
    let manifest = state.manifest.snapshot();
    let catalogue = &manifest.catalogue;
    let existing_facts = existing.as_ref().and_then(|c| c.record.facts());
    let decision = policy::decide(
        &Exchange {
            message_type: envelope.message_type,
            sender: &me,
            sender_kind: own_kind,
            recipient: &recipient,
            recipient_kind,
            purpose: &envelope.purpose,
            consent: &envelope.consent,
            subject: &envelope.subject,
            body_fields: &fields,
        },
        catalogue,
        existing_facts.as_ref(),
        now,
    );
    let permit = match decision {
        Decision::Permit(permit) => permit,
        Decision::Deny(denial) => {
            return Ok(refuse(record, denial_problem(&denial), remember));
        }
    };
    record.decision = Some(AuditDecision::Permit);
    let changes = vec![
        StateChange::enqueue(
            &permit,
            storage::NewOutboxMessage {
                message_id: message_id.clone(),
                recipient,
                message_type: envelope.message_type,
                consent: envelope.consent.clone(),
                envelope: bytes,
                accepted_at: now,
            },
        ),
        StateChange::remember_answer(me, message_id.clone(), item_sha256, 202, None),
    ];
    Ok(Admission::Decided(Box::new(Decided {
        record,
        changes,
        outcome: Outcome::Admitted {
            message_id,
            ack: None,
        },
        in_flight: None,
    })))
}

// ----- One decision at a time per message -----

/// The message ids being decided right now, per sender: a second copy of a message that
/// arrives while the first is still being decided (say, a sender that restarted and sent again)
/// waits, and then gets the first answer from the replay table instead of a second decision.
/// Within one node; replicas on one PostgreSQL database can still decide a copy twice (the
/// effects stay single, the log then holds two entries).
#[derive(Debug, Default)]
pub struct InFlight {
    keys: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    released: tokio::sync::Notify,
}

/// Held while one message is decided and committed; releases the id when dropped.
pub struct InFlightGuard {
    owner: std::sync::Arc<InFlight>,
    key: (String, String),
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String)>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until no other copy of `message_id` from `sender` is being decided, then claims it.
    pub async fn enter(
        self: &std::sync::Arc<Self>,
        sender: &OrgId,
        message_id: &MessageId,
    ) -> InFlightGuard {
        let key = (sender.to_string(), message_id.to_string());
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.lock().insert(key.clone()) {
                return InFlightGuard {
                    owner: self.clone(),
                    key,
                };
            }
            released.await;
        }
    }
}

impl InFlight {
    /// Claims every one of `message_ids` from `sender`, waiting for each that another caller
    /// is deciding. Ids are claimed in one fixed order (sorted), so two batches that share ids
    /// never wait for each other in a circle; an id given twice is claimed once.
    pub async fn enter_all<'a>(
        self: &std::sync::Arc<Self>,
        sender: &OrgId,
        message_ids: impl IntoIterator<Item = &'a MessageId>,
    ) -> std::collections::HashMap<MessageId, InFlightGuard> {
        let sorted: BTreeSet<&MessageId> = message_ids.into_iter().collect();
        let mut guards = std::collections::HashMap::with_capacity(sorted.len());
        for id in sorted {
            guards.insert(id.clone(), self.enter(sender, id).await);
        }
        guards
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.key);
        self.owner.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::{SubmissionV1, read_submission};
    use serde_json::{Value, json};

    fn slow(item: &Value) -> Result<SubmissionV1, String> {
        serde_path_to_error::deserialize::<_, SubmissionV1>(item.clone())
            .map_err(|e| e.path().to_string())
    }

    /// The quick read gives what the careful read gives: the same submission, or a mistake at
    /// the same place.
    #[test]
    fn reading_a_submission_the_quick_way_changes_nothing() {
        let good = json!({
            "message_id": "0192f0a4-7b1c-7def-8a00-00000000a001",
            "type": "activity-summary",
            "recipient": "herning-kommune",
            "purpose": {"id": "smaaboernsklub-fremmoede", "version": 1},
            "consent_id": "0192f0a4-7b1c-7def-8a00-0000000c0001",
            "body": {"month": "2026-10", "nested": {"a": [1, 2]}}
        });
        let mut variants = vec![good.clone()];
        let mut without_id = good.clone();
        without_id.as_object_mut().unwrap().remove("message_id");
        variants.push(without_id);
        for (field, value) in [
            ("notes", json!("free text")),
            ("type", json!(7)),
            ("purpose", json!({"id": "x"})),
            ("body", json!(null)),
        ] {
            let mut changed = good.clone();
            changed.as_object_mut().unwrap().insert(field.into(), value);
            variants.push(changed);
        }
        for field in ["body", "recipient"] {
            let mut missing = good.clone();
            missing.as_object_mut().unwrap().remove(field);
            variants.push(missing);
        }
        variants.push(json!(["not", "an", "object"]));
        for item in variants {
            let quick = read_submission(item.clone()).map_err(|e| e.path().to_string());
            match (quick, slow(&item)) {
                (Ok(quick), Ok(slow)) => {
                    assert_eq!(
                        (
                            &quick.message_id,
                            &quick.message_type,
                            &quick.recipient,
                            &quick.consent_id,
                            &quick.body
                        ),
                        (
                            &slow.message_id,
                            &slow.message_type,
                            &slow.recipient,
                            &slow.consent_id,
                            &slow.body
                        ),
                        "{item}"
                    );
                    assert_eq!(quick.purpose.id, slow.purpose.id);
                }
                (Err(quick), Err(slow)) => assert_eq!(quick, slow, "{item}"),
                (quick, slow) => panic!(
                    "{item}: quick {:?}, careful {:?}",
                    quick.is_ok(),
                    slow.is_ok()
                ),
            }
        }
    }
}
