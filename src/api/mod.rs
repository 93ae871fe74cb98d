//! The local HTTP API for the organisation's own systems, authenticated with JWT bearer tokens.
//!
//! Every route that touches data takes an [`Actor`], the verified token, and states the roles it
//! allows with [`Actor::require`]. Wire input is converted to domain types here, once. This
//! module never speaks SQL; it calls `storage` and `federation`.
//!
//! The handlers and their request and response types carry `utoipa` annotations, from which
//! [`ApiDoc`] builds the API's OpenAPI document: served at `GET /api/v1/openapi.json` and
//! committed as `docs/openapi.json` (a test keeps the file current).

pub mod audit;
pub mod consents;
pub mod messages;
pub mod scope;
pub mod transparency;

use crate::audit::entry::Decision;
use crate::audited;
use crate::domain::OrgId;
use crate::federation::{self, PeerError};
use crate::jwt::Role;
use crate::manifest::format_time;
use crate::node::NodeState;
use crate::problem::{Problem, ProblemDoc};
use actix_web::dev::Payload;
use actix_web::http::header::{self, ContentType};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use std::sync::LazyLock;
use std::time::Instant;
use utoipa::OpenApi as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// A local caller whose bearer token verified: pseudonymous subject, roles and unit.
#[derive(Debug, Clone)]
pub struct Actor {
    pub subject: String,
    pub roles: Vec<Role>,
    pub unit: Option<String>,
}

impl Actor {
    /// Succeeds if the token carries at least one of `allowed`; otherwise the refusal is
    /// audited and answered with 403.
    pub async fn require(
        &self,
        state: &NodeState,
        route: &str,
        allowed: &[Role],
    ) -> Result<&Self, Problem> {
        if self.roles.iter().any(|role| allowed.contains(role)) {
            return Ok(self);
        }
        let names: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        let problem = Problem::forbidden_role(format!(
            "this operation needs one of the roles: {}",
            names.join(", ")
        ));
        let mut record = audited::record(state, "local.authorization", Decision::Deny, None);
        record.route = Some(route.to_owned());
        record.actor = Some(self.audit_actor(state));
        Err(audited::deny(state, record, problem).await)
    }

    /// The actor as the audit log records it: an HMAC of the subject and the roles held.
    pub fn audit_actor(&self, state: &NodeState) -> crate::audit::entry::ActorRecord {
        let roles: Vec<String> = self.roles.iter().map(ToString::to_string).collect();
        crate::audit::entry::ActorRecord {
            id_hmac: state.hmac.pseudonymise("actor", &self.subject),
            role: (!roles.is_empty()).then(|| roles.join(",")),
        }
    }
}

impl FromRequest for Actor {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<NodeState>>().cloned();
        let outcome = state.as_ref().map(|state| authenticate(req, state));
        // The route pattern, never the raw path: a path may carry identifiers, and the log keeps
        // identifiers only as HMACs.
        let route = req.match_pattern();
        Box::pin(async move {
            let Some(state) = state else {
                return Err(Problem::internal(&"node state missing from the local app"));
            };
            match outcome {
                Some(Ok(actor)) => Ok(actor),
                Some(Err((problem, token_reason))) => {
                    // Every refused authentication is audited before the node answers.
                    let mut record =
                        audited::record(&state, "local.authentication", Decision::Deny, None);
                    record.route = route;
                    tracing::info!(reason = token_reason, "local API token refused");
                    Err(audited::deny(&state, record, problem).await)
                }
                None => Err(Problem::internal(&"unreachable: state checked above")),
            }
        })
    }
}

/// Verifies the bearer token; on failure, the problem and the token check that failed.
fn authenticate(req: &HttpRequest, state: &NodeState) -> Result<Actor, (Problem, &'static str)> {
    let header_value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        (
            Problem::unauthenticated("no Authorization header"),
            "no-token",
        )
    })?;
    let token = header_value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            (
                Problem::unauthenticated("the Authorization header is not `Bearer <token>`"),
                "malformed-header",
            )
        })?;
    let now = state.clock.now().unix_timestamp();
    let verified = state.tokens.verify(token, now).map_err(|e| {
        (
            Problem::unauthenticated(format!("token refused: {}", e.reason())),
            e.reason(),
        )
    })?;
    Ok(Actor {
        subject: verified.subject,
        roles: verified.roles,
        unit: verified.unit,
    })
}

/// `GET /healthz`: the process is up. No authentication, no dependencies.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    summary = "Liveness",
    description = "The process is up. No authentication and no dependencies are checked.",
    responses(
        (status = 200, description = "The process is up.", body = Object, example = json!({ "status": "ok" })),
    )
)]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the node's readiness and the checks behind it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ReadinessV1)]
struct Readiness {
    /// `ready` or `not-ready`.
    status: &'static str,
    /// This node's organisation id.
    org: String,
    database: DatabaseCheck,
    manifest: ManifestCheck,
    certificate: CertificateCheck,
    /// What needs attention soon; warnings do not make the node unready.
    warnings: Vec<String>,
}

/// The database check of [`Readiness`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DatabaseCheckV1)]
struct DatabaseCheck {
    /// `sqlite` or `postgres`.
    engine: &'static str,
    ok: bool,
    /// SQLite's `PRAGMA synchronous` (2 = FULL: a commit is on disk before it is answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlite_synchronous: Option<i64>,
}

/// The federation manifest check of [`Readiness`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ManifestCheckV1)]
struct ManifestCheck {
    serial: u64,
    expires_at: String,
    expired: bool,
}

/// The node certificate check of [`Readiness`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CertificateCheckV1)]
struct CertificateCheck {
    not_after: String,
    expired: bool,
}

/// `GET /readyz`: database reachable, manifest valid, certificate valid. 503 when not ready;
/// warnings (e.g. the manifest expires soon) do not make the node unready.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    summary = "Readiness",
    description = "Whether the database is reachable and the federation manifest and the node certificate are valid. Warnings (e.g. the manifest expires soon) do not make the node unready. No authentication.",
    responses(
        (status = 200, description = "The node is ready.", body = Readiness),
        (status = 503, description = "The node is not ready: the database is unreachable, or the manifest or the certificate has expired.", body = Readiness),
    )
)]
async fn readyz(state: web::Data<NodeState>) -> HttpResponse {
    let now = state.clock.now();
    let database_ok = match state.db.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database check failed");
            false
        }
    };
    let manifest = state.manifest.snapshot();
    let manifest_expired = manifest.is_expired(now);
    let cert_not_after = state.tls.node_cert_not_after;
    let cert_expired = now >= cert_not_after;
    let warning_window = state.config.federation.manifest_expiry_warning;
    let mut warnings = Vec::new();
    if !manifest_expired && manifest.expires_at - now < warning_window {
        warnings.push(format!(
            "the federation manifest expires at {}: ask the operator for a new one",
            format_time(manifest.expires_at)
        ));
    }
    if !cert_expired && cert_not_after - now < warning_window {
        warnings.push(format!(
            "the node certificate expires at {}: renew it",
            format_time(cert_not_after)
        ));
    }
    if manifest_expired {
        warnings.push("the federation manifest has expired: all exchange is refused".into());
    }
    // A peer whose audit log failed to extend what it showed before: a warning, not unready.
    warnings.extend(crate::peer_logs::readiness_warnings(&state).await);
    let ready = database_ok && !manifest_expired && !cert_expired;
    // The lower of the pool's connections and the writer's own, which makes the decisions
    // durable: either below FULL shows.
    let sqlite_synchronous = state
        .db
        .sqlite_synchronous()
        .await
        .ok()
        .flatten()
        .map(|pool| match state.audit.stats().sqlite_synchronous() {
            Some(writer) => pool.min(writer),
            None => pool,
        });
    let body = Readiness {
        status: if ready { "ready" } else { "not-ready" },
        org: state.identity.org.to_string(),
        database: DatabaseCheck {
            engine: state.db.engine(),
            ok: database_ok,
            sqlite_synchronous,
        },
        manifest: ManifestCheck {
            serial: manifest.serial,
            expires_at: format_time(manifest.expires_at),
            expired: manifest_expired,
        },
        certificate: CertificateCheck {
            not_after: format_time(cert_not_after),
            expired: cert_expired,
        },
        warnings,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /api/v1/whoami`: what the node made of the caller's token (any role).
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "node",
    operation_id = "whoami",
    summary = "What the node made of the caller's token",
    description = "Any role. Shows the verified token's subject, roles and unit.",
    responses(
        (status = 200, description = "The node, and the subject, roles and unit of the verified token.", body = Object,
            example = json!({ "node": "red-barnet", "subject": "caseworker-17", "roles": ["caseworker"], "unit": null })),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn whoami(actor: Actor, state: web::Data<NodeState>) -> HttpResponse {
    let roles: Vec<String> = actor.roles.iter().map(ToString::to_string).collect();
    HttpResponse::Ok().json(serde_json::json!({
        "node": state.identity.org.to_string(),
        "subject": actor.subject,
        "roles": roles,
        "unit": actor.unit,
    }))
}

/// `POST /api/v1/peers/{org}/ping` (admin): ping a member over mTLS and report what it saw.
#[utoipa::path(
    post,
    path = "/api/v1/peers/{org}/ping",
    tag = "node",
    operation_id = "pingPeer",
    summary = "Ping a federation member",
    description = "Needs the admin role. Pings the member over mutual TLS and reports what it saw of this node.",
    params(("org" = String, Path, description = "The member's organisation id.")),
    responses(
        (status = 200, description = "The peer answered over mutual TLS.", body = Object,
            example = json!({ "peer": "koebenhavn", "peer_answered_as": "koebenhavn", "peer_saw_us_as": "red-barnet", "round_trip_ms": 4.2 })),
        (status = 400, description = "The organisation id is malformed (`malformed-request`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token (`unauthenticated`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin role (`forbidden-role`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No current member of the federation has that id (`unknown-peer`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "The peer could not be reached or did not prove its identity (`peer-unreachable`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "This node's federation manifest has expired (`manifest-expired`).", body = ProblemDoc, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
async fn ping_peer(
    actor: Actor,
    state: web::Data<NodeState>,
    path: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    actor
        .require(&state, "/api/v1/peers/{org}/ping", &[Role::Admin])
        .await?;
    let org: OrgId = path
        .into_inner()
        .parse()
        .map_err(|e: crate::domain::ParseError| Problem::malformed_request(e.to_string()))?;
    let started = Instant::now();
    match federation::ping_peer(&state, &org).await {
        Ok(answer) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "peer": org.to_string(),
            "peer_answered_as": answer.node,
            "peer_saw_us_as": answer.caller,
            "round_trip_ms": started.elapsed().as_secs_f64() * 1000.0,
        }))),
        Err(PeerError::UnknownPeer(org)) => Err(Problem::unknown_peer(org.to_string())),
        Err(PeerError::ManifestExpired) => Err(Problem::manifest_expired()),
        Err(e) => Err(Problem::peer_unreachable(org.as_str(), &e)),
    }
}

/// `GET /api/v1/openapi.json`: this API's OpenAPI document. No authentication: it describes the
/// interface and holds no data.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "node",
    operation_id = "getOpenApiDocument",
    summary = "This OpenAPI document",
    description = "No authentication: it describes the interface and holds no data.",
    responses(
        (status = 200, description = "The OpenAPI document of this API (the same as `docs/openapi.json`).", body = Object),
    )
)]
async fn openapi_document() -> HttpResponse {
    static DOCUMENT: LazyLock<String> = LazyLock::new(openapi_json);
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(DOCUMENT.as_str())
}

/// The OpenAPI document of the local API, generated from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Brobygger local API",
        version = "v1",
        description = "The local HTTP API of a Brobygger node, for the organisation's own systems: record and withdraw consents, submit messages to federation members and follow their delivery, and read the inbox and a child's timeline. Every route under `/api/v1` except this document needs a bearer token (a JWT from the organisation's issuer), and every error is an RFC 9457 problem document with a stable `reason` code."
    ),
    paths(
        healthz,
        readyz,
        whoami,
        ping_peer,
        openapi_document,
        consents::record,
        consents::get,
        consents::withdraw,
        consents::bind,
        transparency::transparency,
        messages::submit,
        messages::status,
        messages::inbox,
        messages::timeline,
        audit::entries,
        audit::checkpoint,
        audit::proof,
    ),
    components(schemas(
        ProblemDoc,
        Readiness,
        DatabaseCheck,
        ManifestCheck,
        CertificateCheck,
        consents::RecordConsentRequestV1,
        consents::ConsentRecordedV1,
        consents::ConsentEventViewV1,
        consents::ConsentViewV1,
        consents::NoticeViewV1,
        consents::WithdrawRequestV1,
        consents::WithdrawnV1,
        consents::BindRequestV1,
        consents::BoundV1,
        transparency::TransparencyReportV1,
        transparency::ReportLineV1,
        transparency::PurposeTextV1,
        crate::admission::SubmissionV1,
        messages::SubmissionBody,
        messages::SubmittedV1,
        messages::BatchSubmittedV1,
        messages::MessageStatusV1,
        messages::InboxItemV1,
        messages::InboxPageV1,
        messages::TimelineEventV1,
        messages::TimelineV1,
        audit::AuditActorV1,
        audit::AuditEntryV1,
        audit::AuditEntriesPageV1,
        audit::AuditCheckpointV1,
        audit::AuditInclusionProofV1,
        audit::AuditConsistencyProofV1,
        audit::AuditProofV1,
        crate::wire::PurposeRefV1,
        crate::wire::ConsentingRoleV1,
        crate::wire::ConsentPolicyV1,
        crate::wire::EvidenceV1,
        crate::wire::WithdrawalV1,
        crate::wire::ConsentEndV1,
        crate::wire::AckV1,
        crate::wire::AckActionV1,
        crate::wire::AckActionKindV1,
        crate::wire::RetentionBasisV1,
        crate::wire::ReceiptV1,
    )),
    modifiers(&BearerScheme),
    tags(
        (name = "health", description = "Liveness and readiness, without authentication."),
        (name = "node", description = "The caller's token, federation peers, and this document."),
        (name = "consents", description = "Record, read, withdraw and bind pairwise consents."),
        (name = "messages", description = "Submit messages, follow their delivery, read the inbox and a child's timeline."),
        (name = "audit", description = "Read and search the audit log, its signed checkpoint, and inclusion and consistency proofs (auditor role)."),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme the local API's operations name.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT from the organisation's token issuer, with the caller's roles.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the local API as pretty-printed JSON (what `docs/openapi.json` holds,
/// without its trailing newline).
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document could not be serialised");
        String::from("{}")
    })
}

/// The local listener's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .service(
            web::scope("/api/v1")
                .route("/openapi.json", web::get().to(openapi_document))
                .route("/whoami", web::get().to(whoami))
                .route("/consents", web::post().to(consents::record))
                .route("/consents/{id}", web::get().to(consents::get))
                .route(
                    "/consents/{id}/withdraw",
                    web::post().to(consents::withdraw),
                )
                .route("/consents/{id}/bind", web::post().to(consents::bind))
                .route(
                    "/consents/{id}/transparency",
                    web::get().to(transparency::transparency),
                )
                .route("/messages", web::post().to(messages::submit))
                .route("/messages/{id}", web::get().to(messages::status))
                .route("/inbox", web::get().to(messages::inbox))
                .route(
                    "/subjects/{key}/timeline",
                    web::get().to(messages::timeline),
                )
                .route("/peers/{org}/ping", web::post().to(ping_peer))
                .route("/audit/entries", web::get().to(audit::entries))
                .route("/audit/checkpoint", web::get().to(audit::checkpoint))
                .route("/audit/proof", web::get().to(audit::proof)),
        )
        .default_service(web::to(|| async { Problem::not_found().respond() }));
}
