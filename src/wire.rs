//! The v1 wire protocol between nodes: serde types that match `schemas/v1/` exactly.
//!
//! Wire types are separate from domain types: the boundary parses a document strictly
//! (`strict_json`), checks it against its schema (`schema`), and only then converts it into
//! these types and from them into domain values, once. Every type is closed
//! (`deny_unknown_fields`) and uses enumerations where the schema does; there is no free text.
//! Knows nothing of storage.

use serde::{Deserialize, Serialize};

/// The current envelope schema version.
pub const ENVELOPE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurposeRefV1 {
    pub id: String,
    pub version: u32,
}

/// The envelope every message travels in. It is read with [`EnvelopeV1::from_value`], which
/// picks the body's type from the envelope's `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvelopeV1 {
    pub v: u8,
    pub message_id: String,
    #[serde(rename = "type")]
    pub message_type: String,
    pub sender: String,
    pub recipient: String,
    pub purpose: PurposeRefV1,
    pub consent_id: String,
    pub subject_ref: String,
    pub sent_at: String,
    pub body: BodyV1,
}

/// The envelope as read, before its body is typed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelopeV1 {
    v: u8,
    message_id: String,
    #[serde(rename = "type")]
    message_type: String,
    sender: String,
    recipient: String,
    purpose: PurposeRefV1,
    consent_id: String,
    subject_ref: String,
    sent_at: String,
    body: serde_json::Value,
}

impl EnvelopeV1 {
    /// Reads an envelope, typing its body by the envelope's `type`.
    pub fn from_value(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        let raw: RawEnvelopeV1 = serde_json::from_value(value)?;
        let body = BodyV1::parse(&raw.message_type, raw.body)?;
        Ok(Self {
            v: raw.v,
            message_id: raw.message_id,
            message_type: raw.message_type,
            sender: raw.sender,
            recipient: raw.recipient,
            purpose: raw.purpose,
            consent_id: raw.consent_id,
            subject_ref: raw.subject_ref,
            sent_at: raw.sent_at,
            body,
        })
    }
}

/// The body, by message type. Which variant is chosen is decided by the envelope's `type`, not
/// by trying each in turn, so [`BodyV1::parse`] is the way in (there is no `Deserialize`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BodyV1 {
    ActivitySummary(ActivitySummaryV1),
    Referral(ReferralV1),
    ReferralResponse(ReferralResponseV1),
    ConsentGranted(ConsentGrantedV1),
    ConsentWithdrawn(ConsentWithdrawnV1),
    Ack(AckV1),
}

impl BodyV1 {
    /// The names of the fields a body about a child has (an absent optional field left out),
    /// in name order: what the purpose's field rule checks. Written out rather than found by
    /// serialising the body, which every such message would pay for; a test holds the two to
    /// each other. `None` for consent notices and acknowledgements, which carry no child data.
    pub fn data_field_names(&self) -> Option<Vec<&'static str>> {
        let mut names = Vec::with_capacity(6);
        match self {
            BodyV1::ActivitySummary(_) => names.extend([
                "enrolment_status",
                "month",
                "next_step",
                "programme",
                "sessions_attended",
                "sessions_offered",
            ]),
            BodyV1::Referral(referral) => {
                names.push("child_age_band");
                if referral.contact_channel.is_some() {
                    names.push("contact_channel");
                }
                names.extend(["programme", "referrer_role", "requested_start_month"]);
            }
            BodyV1::ReferralResponse(response) => {
                names.extend(["in_reply_to", "response"]);
                if response.start_month.is_some() {
                    names.push("start_month");
                }
            }
            BodyV1::ConsentGranted(_) | BodyV1::ConsentWithdrawn(_) | BodyV1::Ack(_) => {
                return None;
            }
        }
        Some(names)
    }

    /// Parses a body as the given message type.
    pub fn parse(message_type: &str, body: serde_json::Value) -> Result<Self, serde_json::Error> {
        use serde::de::Error as _;
        Ok(match message_type {
            "activity-summary" => BodyV1::ActivitySummary(serde_json::from_value(body)?),
            "referral" => BodyV1::Referral(serde_json::from_value(body)?),
            "referral-response" => BodyV1::ReferralResponse(serde_json::from_value(body)?),
            "consent.granted" => BodyV1::ConsentGranted(serde_json::from_value(body)?),
            "consent.withdrawn" => BodyV1::ConsentWithdrawn(serde_json::from_value(body)?),
            "ack" => BodyV1::Ack(serde_json::from_value(body)?),
            other => {
                return Err(serde_json::Error::custom(format!(
                    "`{other}` is not a v1 message type"
                )));
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProgrammeV1 {
    Smaaboernsklub,
    Familieklub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnrolmentStatusV1 {
    Enrolled,
    OnWaitingList,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NextStepV1 {
    Continue,
    Completed,
    FamilyAsksForContact,
    EndedByFamily,
    MovedAway,
}

/// `activity-summary`: one month of attendance, as counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivitySummaryV1 {
    pub month: String,
    pub programme: ProgrammeV1,
    pub enrolment_status: EnrolmentStatusV1,
    pub sessions_offered: u8,
    pub sessions_attended: u8,
    pub next_step: NextStepV1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildAgeBandV1 {
    #[serde(rename = "0-1")]
    ZeroToOne,
    #[serde(rename = "1-2")]
    OneToTwo,
    #[serde(rename = "2-3")]
    TwoToThree,
    #[serde(rename = "3-6")]
    ThreeToSix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferrerRoleV1 {
    HealthVisitor,
    Caseworker,
    DayCare,
    FamilyCounsellor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContactChannelV1 {
    ClubContactsFamily,
    FamilyContactsClub,
}

/// `referral`: the municipality refers a family to a club.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralV1 {
    pub programme: ProgrammeV1,
    pub requested_start_month: String,
    pub child_age_band: ChildAgeBandV1,
    pub referrer_role: ReferrerRoleV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_channel: Option<ContactChannelV1>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferralAnswerV1 {
    Accepted,
    Declined,
    NoCapacity,
    Started,
}

/// `referral-response`: the club answers a referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralResponseV1 {
    pub in_reply_to: String,
    pub response: ReferralAnswerV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_month: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentingRoleV1 {
    #[serde(rename = "custody-holder-1")]
    CustodyHolder1,
    #[serde(rename = "custody-holder-2")]
    CustodyHolder2,
    YoungPerson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentPolicyV1 {
    AllCustodyHolders,
    AnyCustodyHolder,
    YoungPersonAndCustodyHolders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EvidenceV1 {
    PaperWitnessed,
    MitidSignature,
    RecordedInPerson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WithdrawalV1 {
    ContactRecordingOrg,
    ContactEitherParty,
}

/// `consent.granted`: a consent recorded at the sender, for the recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentGrantedV1 {
    pub purposes: Vec<PurposeRefV1>,
    pub consented_by: Vec<ConsentingRoleV1>,
    pub policy: ConsentPolicyV1,
    pub evidence: EvidenceV1,
    pub valid_from: String,
    pub valid_until: String,
    pub retention_at_recipient_days: u32,
    pub withdrawal: WithdrawalV1,
    /// The slow salted hash of the family's one-time binding code (never the code itself).
    pub binding_code_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentEndV1 {
    WithdrawnBySubject,
    Revoked,
    Expired,
    Invalidated,
}

/// `consent.withdrawn`: a consent ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentWithdrawnV1 {
    pub event: ConsentEndV1,
    pub effective_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AckActionKindV1 {
    CancelledQueued,
    DeletedReceived,
    RetainedWithBasis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetentionBasisV1 {
    Arkivloven,
    ServicelovenJournalpligt,
    ForvaltningslovenNotatpligt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckActionV1 {
    pub action: AckActionKindV1,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<RetentionBasisV1>,
}

/// `ack`: what the receiver of a withdrawal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckV1 {
    pub in_reply_to: String,
    pub actions: Vec<AckActionV1>,
    pub at: String,
}

/// The answer to an admitted envelope: the receiver's own audit log speaking (DESIGN §6). The
/// entry that admitted the message, its leaf index, its inclusion proof, and a checkpoint signed
/// by the receiver whose tree contains it. The sender checks it with the receiver's verifier key
/// from the manifest (`receipt::verify`). A replay of the same bytes gets the same receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptV1 {
    pub message_id: String,
    pub leaf_index: u64,
    /// The audit entry's bytes, base64 (standard alphabet, padded).
    pub entry: String,
    /// The inclusion proof, deepest sibling first, each hash as lowercase hex.
    pub inclusion_proof: Vec<String>,
    /// A C2SP signed checkpoint (signed note) of the receiver's log covering the entry.
    pub checkpoint: String,
    /// For a withdrawal notice: what the receiver did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckV1>,
}

#[cfg(test)]
mod tests {
    use super::{BodyV1, EnvelopeV1};

    fn serialised_names(body: &BodyV1) -> Vec<String> {
        match serde_json::to_value(body) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            other => panic!("a body serialises to an object, not {other:?}"),
        }
    }

    /// The written-out field names are exactly the serialised body's keys, for every example
    /// message about a child, with and without its optional fields.
    #[test]
    fn data_field_names_are_the_serialised_fields() {
        let examples = [
            include_str!("../schemas/v1/examples/activity-summary.json"),
            include_str!("../schemas/v1/examples/referral.json"),
            include_str!("../schemas/v1/examples/referral-response.json"),
        ];
        for example in examples {
            let envelope = EnvelopeV1::from_value(serde_json::from_str(example).unwrap()).unwrap();
            let mut bodies = vec![envelope.body.clone()];
            match envelope.body {
                BodyV1::Referral(mut referral) => {
                    referral.contact_channel = None;
                    bodies.push(BodyV1::Referral(referral));
                }
                BodyV1::ReferralResponse(mut response) => {
                    response.start_month = response
                        .start_month
                        .map_or_else(|| Some("2026-12".into()), |_| None);
                    bodies.push(BodyV1::ReferralResponse(response));
                }
                _ => {}
            }
            for body in bodies {
                assert_eq!(
                    body.data_field_names().unwrap(),
                    serialised_names(&body),
                    "{body:?}"
                );
            }
        }
    }
}
