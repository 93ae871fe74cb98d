//! The auditor's view of this node's audit log (DESIGN §7), for the `auditor` role only: entries
//! filtered and searched by a known identifier, the latest signed checkpoint, and inclusion and
//! consistency proofs.
//!
//! A search by identifier never sends a key out: the node hashes the value it is given with its
//! own HMAC key (`HmacKey::pseudonymise`, with the identifier's kind) and matches the entries'
//! stored HMACs. Query strings are parsed here, once, into `log_reader::EntryFilter` and a
//! [`ProofRequest`]. Every query is itself an audit entry (`local.audit.query`, with the actor and
//! the HMACs searched for), appended before the answer; a refused query is audited as a denial.
//! The reading itself is `log_reader`'s; this module never speaks SQL.

use super::Actor;
use crate::audit::entry::{AuditRecord, Decision, DecodedEntry};
use crate::audit::merkle;
use crate::audited::{self, Audited};
use crate::domain::{ConsentId, MessageId, OrgId, SubjectRef};
use crate::jwt::Role;
use crate::log_reader::{self, EntryFilter};
use crate::node::NodeState;
use crate::problem::{Problem, ProblemDoc};
use crate::storage;
use crate::write_path::AuditReceipt;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The page size when `limit` is absent, and the largest allowed.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;

/// The audit action of every auditor query.
const QUERY_ACTION: &str = "local.audit.query";

/// `GET /api/v1/audit/entries` filters, search and paging.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditEntriesQuery {
    /// Only entries at or after this instant (RFC 3339), by the entry's `time`.
    pub from: Option<String>,
    /// Only entries before this instant (RFC 3339, exclusive).
    pub to: Option<String>,
    /// Only entries about this peer organisation (its org id).
    pub peer: Option<String>,
    /// Only entries of this action, e.g. `federation.envelope`.
    pub action: Option<String>,
    /// Only `permit` or only `deny` decisions.
    pub decision: Option<String>,
    /// Only entries about this consent (its id; matched by its HMAC).
    pub consent: Option<String>,
    /// Only entries about this pairwise subject reference (32 hex digits; matched by its HMAC).
    pub subject: Option<String>,
    /// Only entries about this local subject key (a timeline read; matched by its HMAC).
    pub local_subject: Option<String>,
    /// Only entries about this message (its id; matched by its HMAC).
    pub message: Option<String>,
    /// Only entries of this local actor (the token subject; matched by its HMAC).
    pub actor: Option<String>,
    /// Only entries after this leaf index (the `next` of the previous page).
    pub after: Option<u64>,
    /// The most entries on a page: 1 to 1,000, 100 when absent.
    pub limit: Option<u32>,
}

/// `GET /api/v1/audit/proof`: `index` (with `size`) for an inclusion proof, or `old` (with
/// `new`) for a consistency proof.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditProofQuery {
    /// The leaf index of the entry to prove.
    pub index: Option<u64>,
    /// The tree size to prove the entry in (default: the latest checkpoint's).
    pub size: Option<u64>,
    /// The smaller tree size of a consistency proof (at least 1).
    pub old: Option<u64>,
    /// The larger tree size of a consistency proof (default: the latest checkpoint's).
    pub new: Option<u64>,
}

/// The local actor of an entry.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditActorV1 {
    /// HMAC of the token subject, as stored.
    pub id_hmac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// One audit entry, decoded: its leaf index and every field it records. Identifiers are the
/// HMACs as stored.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntryV1 {
    pub index: u64,
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    pub action: String,
    /// `permit` or `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<AuditActorV1>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id_hmac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_hmac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_hmac: Option<String>,
    /// SHA-256 (hex) of the exact envelope bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The version of the HMAC key the identifiers were made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key: Option<u32>,
}

/// `GET /api/v1/audit/entries`: one page of matching entries, in index order.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntriesPageV1 {
    pub entries: Vec<AuditEntryV1>,
    /// Pass as `after` for the next page; absent when the scan reached the end of the log. A
    /// page scans at most 100,000 entries, so it may be shorter than `limit` and still have a
    /// `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// `GET /api/v1/audit/checkpoint`: the latest signed checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpointV1 {
    /// The C2SP `tlog-checkpoint`, signed as a C2SP signed note with the node's audit key.
    pub checkpoint: String,
    /// The log origin (the checkpoint's first line and key name).
    pub origin: String,
    pub size: u64,
    /// The root hash, lowercase hex.
    pub root: String,
}

/// An inclusion proof (RFC 9162 §2.1.3) of one entry; hashes as lowercase hex.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditInclusionProofV1 {
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The entry's bytes exactly as stored and hashed (base64).
    pub entry: String,
    /// SHA-256(0x00 || entry).
    pub leaf_hash: String,
    /// The audit path, from the leaf up.
    pub proof: Vec<String>,
    /// The root of the tree of `size` entries.
    pub root: String,
    /// The signed checkpoint of that size, when the node kept one (always for the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// A consistency proof (RFC 9162 §2.1.4) between two tree sizes; hashes as lowercase hex.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConsistencyProofV1 {
    pub old_size: u64,
    pub new_size: u64,
    pub old_root: String,
    pub new_root: String,
    pub proof: Vec<String>,
    /// The signed checkpoint of `new_size`, when the node kept one (always for the latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// `GET /api/v1/audit/proof`: an inclusion or a consistency proof.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AuditProofV1 {
    Inclusion(AuditInclusionProofV1),
    Consistency(AuditConsistencyProofV1),
}

/// A proof request, parsed against the log's size before the query's own entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofRequest {
    /// Entry `index` in the tree of `size` entries (`None`: the latest checkpoint's).
    Inclusion { index: u64, size: Option<u64> },
    /// From the tree of `old` entries to the tree of `new` (`None`: the latest checkpoint's).
    Consistency { old: u64, new: Option<u64> },
}

impl ProofRequest {
    /// Parses a proof query for a log of `stored` entries; the error is a safe detail.
    pub fn parse(query: &AuditProofQuery, stored: u64) -> Result<Self, String> {
        match *query {
            AuditProofQuery {
                index: Some(index),
                size,
                old: None,
                new: None,
            } => {
                let bound = size.unwrap_or(stored);
                if index >= bound || bound > stored {
                    return Err(format!(
                        "no entry {index} in a tree of {bound} entries (the log holds {stored})"
                    ));
                }
                Ok(Self::Inclusion { index, size })
            }
            AuditProofQuery {
                index: None,
                size: None,
                old: Some(old),
                new,
            } => {
                let bound = new.unwrap_or(stored);
                if old == 0 || old > bound || bound > stored {
                    return Err(format!(
                        "no consistency proof from {old} to {bound} entries (sizes from 1 up to \
                         the log's {stored})"
                    ));
                }
                Ok(Self::Consistency { old, new })
            }
            _ => Err("ask for `index` (and `size`) or for `old` (and `new`)".into()),
        }
    }
}

fn parse_instant(value: &str, name: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("`{name}` is an RFC 3339 instant"))
}

fn parse_id<T: std::str::FromStr<Err = crate::domain::ParseError>>(
    value: Option<&str>,
) -> Result<Option<T>, String> {
    value
        .map(str::parse)
        .transpose()
        .map_err(|e: crate::domain::ParseError| e.to_string())
}

/// Parses the entries query into a filter; identifiers become HMACs under this node's key.
fn entry_filter(state: &NodeState, query: &AuditEntriesQuery) -> Result<EntryFilter, String> {
    let from = query
        .from
        .as_deref()
        .map(|v| parse_instant(v, "from"))
        .transpose()?;
    let to = query
        .to
        .as_deref()
        .map(|v| parse_instant(v, "to"))
        .transpose()?;
    let peer: Option<OrgId> = parse_id(query.peer.as_deref())?;
    let action = match query.action.as_deref() {
        Some(action)
            if action.is_empty()
                || action.len() > 64
                || !action.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                }) =>
        {
            return Err("`action` is an action name such as `federation.envelope`".into());
        }
        action => action.map(str::to_owned),
    };
    let decision = match query.decision.as_deref() {
        None => None,
        Some("permit") => Some(Decision::Permit),
        Some("deny") => Some(Decision::Deny),
        Some(_) => return Err("`decision` is `permit` or `deny`".into()),
    };
    let consent: Option<ConsentId> = parse_id(query.consent.as_deref())?;
    let subject: Option<SubjectRef> = parse_id(query.subject.as_deref())?;
    let message: Option<MessageId> = parse_id(query.message.as_deref())?;
    if subject.is_some() && query.local_subject.is_some() {
        return Err("search by `subject` or by `local_subject`, not both".into());
    }
    if query.actor.as_deref().is_some_and(str::is_empty)
        || query.local_subject.as_deref().is_some_and(str::is_empty)
    {
        return Err("an identifier to search for is not empty".into());
    }
    let hmac = &state.hmac;
    let subject_hmac = subject
        .map(|s| hmac.pseudonymise("subject", &s.to_string()))
        .or_else(|| {
            query
                .local_subject
                .as_deref()
                .map(|k| hmac.pseudonymise("local-subject", k))
        });
    Ok(EntryFilter {
        from,
        to,
        peer,
        action,
        decision,
        consent_hmac: consent.map(|c| hmac.pseudonymise("consent", c.as_str())),
        subject_hmac,
        message_hmac: message.map(|m| hmac.pseudonymise("message", m.as_str())),
        actor_hmac: query
            .actor
            .as_deref()
            .map(|a| hmac.pseudonymise("actor", a)),
    })
}

fn entry_view(entry: DecodedEntry) -> AuditEntryV1 {
    let record = entry.record;
    AuditEntryV1 {
        index: entry.idx,
        time: record.time,
        action: record.action,
        decision: record.decision.map(|d| {
            match d {
                Decision::Permit => "permit",
                Decision::Deny => "deny",
            }
            .to_owned()
        }),
        reason: record.reason,
        peer: record.peer,
        actor: record.actor.map(|a| AuditActorV1 {
            id_hmac: a.id_hmac,
            role: a.role,
        }),
        message_id_hmac: record.message_id_hmac,
        message_type: record.message_type,
        purpose: record.purpose,
        consent_hmac: record.consent_hmac,
        subject_hmac: record.subject_hmac,
        envelope_sha256: record.envelope_sha256,
        route: record.route,
        hmac_key: entry.hmac_key,
    }
}

/// The audit record of an auditor's query on `route`.
fn query_record(state: &NodeState, actor: &Actor, route: &str) -> AuditRecord {
    let mut record = audited::record(state, QUERY_ACTION, Decision::Permit, None);
    record.actor = Some(actor.audit_actor(state));
    record.route = Some(route.to_owned());
    record
}

/// A failed read of the log: the database is unavailable, or the log is broken (logged).
/// The number of entries before this query's own.
async fn stored_size(state: &NodeState) -> Result<u64, Problem> {
    storage::audit_tree(&state.db)
        .await
        .map(|tree| tree.frontier.size())
        .map_err(|e| Problem::unavailable(&e))
}

/// `GET /api/v1/audit/entries` (auditor): entries filtered by time, peer, action and decision,
/// or searched by a known identifier, in index order. The query is audited.
#[utoipa::path(
    get,
    path = "/api/v1/audit/entries",
    tag = "audit",
    operation_id = "readAuditEntries",
    summary = "Read and search the audit log",
    description = "Needs the auditor role. Entries in index order, decoded, with their identifiers as the HMACs stored. Filters combine: a time range (`from` inclusive, `to` exclusive), a peer, an action, a decision, and a search by a known identifier (consent id, subject reference, local subject key, message id, or actor), which the node hashes with its own HMAC key and matches against the stored HMACs; the key never leaves the node. Paged with `after` and `limit`. The query is itself audited (`local.audit.query`, with the HMACs searched for) before the answer; the page holds only entries from before it.",
    params(AuditEntriesQuery),
    responses(
        (status = 200, description = "One page of matching entries, and where the next starts.", body = AuditEntriesPageV1),
        (status = 400, description = "A filter or the paging is malformed (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the auditor role (`forbidden-role`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 500, description = "A stored entry does not decode: run `audit verify` (`internal`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot read or audit right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn entries(
    actor: Actor,
    state: web::Data<NodeState>,
    req: HttpRequest,
) -> Result<Audited<HttpResponse>, Problem> {
    let route = "/api/v1/audit/entries";
    actor.require(&state, route, &[Role::Auditor]).await?;
    let mut record = query_record(&state, &actor, route);
    let parsed = web::Query::<AuditEntriesQuery>::from_query(req.query_string())
        .map_err(|e| format!("invalid query: {e}"))
        .and_then(|query| {
            let query = query.into_inner();
            entry_filter(&state, &query).map(|filter| (filter, query))
        });
    let (filter, query) = match parsed {
        Ok(parsed) => parsed,
        Err(detail) => {
            return Err(audited::deny(&state, record, Problem::malformed_request(detail)).await);
        }
    };
    record.consent_hmac.clone_from(&filter.consent_hmac);
    record.subject_hmac.clone_from(&filter.subject_hmac);
    record.message_id_hmac.clone_from(&filter.message_hmac);
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let end = stored_size(&state).await?;
    let page = match log_reader::filtered_entries(
        &state.db,
        &filter,
        query.after,
        end,
        usize::try_from(limit).unwrap_or(usize::MAX),
    )
    .await
    {
        Ok(page) => page,
        Err(e) => return Err(audited::deny(&state, record, Problem::from(&e)).await),
    };
    let receipt = audited::permit(&state, record).await?;
    let answer = AuditEntriesPageV1 {
        entries: page.entries.into_iter().map(entry_view).collect(),
        next: page.next,
    };
    Ok(Audited::new(receipt, HttpResponse::Ok().json(answer)))
}

/// `GET /api/v1/audit/checkpoint` (auditor): the latest signed checkpoint. The query is audited,
/// and the checkpoint answered is the one that covers its entry.
#[utoipa::path(
    get,
    path = "/api/v1/audit/checkpoint",
    tag = "audit",
    operation_id = "readAuditCheckpoint",
    summary = "The latest signed checkpoint",
    description = "Needs the auditor role. The latest checkpoint (C2SP `tlog-checkpoint`, signed as a C2SP signed note with the node's audit key, whose verifier key the manifest publishes), with its size and root. The query is audited first, so the checkpoint covers the query's own entry. Keep it: a later consistency proof shows whether the log still extends it.",
    responses(
        (status = 200, description = "The latest signed checkpoint.", body = AuditCheckpointV1),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the auditor role (`forbidden-role`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot audit right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn checkpoint(
    actor: Actor,
    state: web::Data<NodeState>,
) -> Result<Audited<HttpResponse>, Problem> {
    let route = "/api/v1/audit/checkpoint";
    actor.require(&state, route, &[Role::Auditor]).await?;
    let record = query_record(&state, &actor, route);
    let receipt = audited::permit(&state, record).await?;
    let latest = &receipt.checkpoint;
    let answer = AuditCheckpointV1 {
        checkpoint: latest.note.clone(),
        origin: crate::node::audit_origin(&state.config),
        size: latest.head.size,
        root: hex::encode(latest.head.root),
    };
    Ok(Audited::new(receipt, HttpResponse::Ok().json(answer)))
}

/// The root of the tree of `size` entries: the latest checkpoint's, or computed from the
/// stored leaf hashes.
async fn root_of(state: &NodeState, size: u64, receipt: &AuditReceipt) -> Result<String, Problem> {
    let latest = receipt.checkpoint.head;
    if size == latest.size {
        return Ok(hex::encode(latest.root));
    }
    log_reader::range_root(&state.db, 0..size)
        .await
        .map(hex::encode)
        .map_err(|e| Problem::from(&e))
}

/// The signed checkpoint of `size` entries, if the node kept one.
async fn checkpoint_of(
    state: &NodeState,
    size: u64,
    receipt: &AuditReceipt,
) -> Result<Option<String>, Problem> {
    if size == receipt.checkpoint.head.size {
        return Ok(Some(receipt.checkpoint.note.clone()));
    }
    storage::audit_checkpoint_of_size(&state.db, size)
        .await
        .map_err(|e| Problem::unavailable(&e))
}

fn hex_all(hashes: &[merkle::Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// `GET /api/v1/audit/proof` (auditor): an inclusion proof of one entry, or a consistency proof
/// between two tree sizes. The query is audited first; "latest" is the checkpoint that covers
/// its entry.
#[utoipa::path(
    get,
    path = "/api/v1/audit/proof",
    tag = "audit",
    operation_id = "readAuditProof",
    summary = "Inclusion and consistency proofs",
    description = "Needs the auditor role. With `index` (and optionally `size`): the inclusion proof of that entry in the tree of `size` entries (default: the latest checkpoint's), with the entry's bytes, its leaf hash, the root, and the signed checkpoint when the node kept one of that size (always for the latest). With `old` (and optionally `new`): the consistency proof from the tree of `old` entries to the tree of `new` (default: the latest). Hashes are lowercase hex; proofs verify as RFC 9162 §2.1.3.2 and §2.1.4.2 describe. The query is audited first, so the latest checkpoint covers its own entry.",
    params(AuditProofQuery),
    responses(
        (status = 200, description = "The inclusion or consistency proof asked for.", body = AuditProofV1),
        (status = 400, description = "Neither or both kinds of proof asked for, or a size or index outside the log (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the auditor role (`forbidden-role`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The node cannot read or audit right now (`unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn proof(
    actor: Actor,
    state: web::Data<NodeState>,
    req: HttpRequest,
) -> Result<Audited<HttpResponse>, Problem> {
    let route = "/api/v1/audit/proof";
    actor.require(&state, route, &[Role::Auditor]).await?;
    let record = query_record(&state, &actor, route);
    let stored = stored_size(&state).await?;
    let request = web::Query::<AuditProofQuery>::from_query(req.query_string())
        .map_err(|e| format!("invalid query: {e}"))
        .and_then(|query| ProofRequest::parse(&query, stored));
    let request = match request {
        Ok(request) => request,
        Err(detail) => {
            return Err(audited::deny(&state, record, Problem::malformed_request(detail)).await);
        }
    };
    let receipt = audited::permit(&state, record).await?;
    let latest = receipt.checkpoint.head.size;
    let answer = match request {
        ProofRequest::Inclusion { index, size } => {
            let size = size.unwrap_or(latest);
            let entry = storage::audit_entry(&state.db, index)
                .await
                .map_err(|e| Problem::unavailable(&e))?
                .ok_or_else(|| Problem::internal(&format!("audit entry {index} is missing")))?;
            let proof = log_reader::inclusion_proof(&state.db, index, size)
                .await
                .map_err(|e| Problem::from(&e))?;
            AuditProofV1::Inclusion(AuditInclusionProofV1 {
                index,
                size,
                leaf_hash: hex::encode(merkle::leaf_hash(&entry)),
                entry: base64::engine::general_purpose::STANDARD.encode(&entry),
                proof: hex_all(&proof),
                root: root_of(&state, size, &receipt).await?,
                checkpoint: checkpoint_of(&state, size, &receipt).await?,
            })
        }
        ProofRequest::Consistency { old, new } => {
            let new = new.unwrap_or(latest);
            let proof = log_reader::consistency_proof(&state.db, old, new)
                .await
                .map_err(|e| Problem::from(&e))?;
            AuditProofV1::Consistency(AuditConsistencyProofV1 {
                old_size: old,
                new_size: new,
                old_root: root_of(&state, old, &receipt).await?,
                new_root: root_of(&state, new, &receipt).await?,
                proof: hex_all(&proof),
                checkpoint: checkpoint_of(&state, new, &receipt).await?,
            })
        }
    };
    Ok(Audited::new(receipt, HttpResponse::Ok().json(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(
        index: Option<u64>,
        size: Option<u64>,
        old: Option<u64>,
        new: Option<u64>,
    ) -> AuditProofQuery {
        AuditProofQuery {
            index,
            size,
            old,
            new,
        }
    }

    #[test]
    fn proof_requests_are_one_kind_and_inside_the_log() {
        let parse = |q| ProofRequest::parse(&q, 10);
        assert_eq!(
            parse(query(Some(9), None, None, None)),
            Ok(ProofRequest::Inclusion {
                index: 9,
                size: None
            })
        );
        assert_eq!(
            parse(query(Some(3), Some(4), None, None)),
            Ok(ProofRequest::Inclusion {
                index: 3,
                size: Some(4)
            })
        );
        assert!(parse(query(Some(10), None, None, None)).is_err());
        assert!(parse(query(Some(4), Some(4), None, None)).is_err());
        assert!(parse(query(Some(1), Some(11), None, None)).is_err());
        assert_eq!(
            parse(query(None, None, Some(1), Some(10))),
            Ok(ProofRequest::Consistency {
                old: 1,
                new: Some(10)
            })
        );
        assert_eq!(
            parse(query(None, None, Some(10), None)),
            Ok(ProofRequest::Consistency { old: 10, new: None })
        );
        assert!(parse(query(None, None, Some(0), None)).is_err());
        assert!(parse(query(None, None, Some(5), Some(4))).is_err());
        assert!(parse(query(None, None, Some(5), Some(11))).is_err());
        assert!(parse(query(None, None, None, None)).is_err());
        assert!(parse(query(Some(1), None, Some(1), None)).is_err());
        assert!(parse(query(None, Some(3), Some(1), None)).is_err());
    }
}
