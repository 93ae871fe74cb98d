//! The local HTTP API for the organisation's own systems, authenticated with JWT bearer tokens.
//!
//! Every route that touches data takes an [`Actor`], the verified token, and states the roles it
//! allows with [`Actor::require`]. Wire input is converted to domain types here, once. This
//! module never speaks SQL; it calls `storage` and `federation`.

pub mod consents;
pub mod messages;

use crate::audit::entry::Decision;
use crate::audited;
use crate::domain::OrgId;
use crate::federation::{self, PeerError};
use crate::jwt::Role;
use crate::manifest::format_time;
use crate::node::NodeState;
use crate::problem::Problem;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use std::time::Instant;

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
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    org: String,
    database: DatabaseCheck,
    manifest: ManifestCheck,
    certificate: CertificateCheck,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct DatabaseCheck {
    engine: &'static str,
    ok: bool,
    /// SQLite's `PRAGMA synchronous` (2 = FULL: a commit is on disk before it is answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlite_synchronous: Option<i64>,
}

#[derive(Debug, Serialize)]
struct ManifestCheck {
    serial: u64,
    expires_at: String,
    expired: bool,
}

#[derive(Debug, Serialize)]
struct CertificateCheck {
    not_after: String,
    expired: bool,
}

/// `GET /readyz`: database reachable, manifest valid, certificate valid. 503 when not ready;
/// warnings (e.g. the manifest expires soon) do not make the node unready.
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
    let ready = database_ok && !manifest_expired && !cert_expired;
    let body = Readiness {
        status: if ready { "ready" } else { "not-ready" },
        org: state.identity.org.to_string(),
        database: DatabaseCheck {
            engine: state.db.engine(),
            ok: database_ok,
            sqlite_synchronous: state.db.sqlite_synchronous().await.ok().flatten(),
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

/// The local listener's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .service(
            web::scope("/api/v1")
                .route("/whoami", web::get().to(whoami))
                .route("/consents", web::post().to(consents::record))
                .route("/consents/{id}", web::get().to(consents::get))
                .route(
                    "/consents/{id}/withdraw",
                    web::post().to(consents::withdraw),
                )
                .route("/consents/{id}/bind", web::post().to(consents::bind))
                .route("/messages", web::post().to(messages::submit))
                .route("/messages/{id}", web::get().to(messages::status))
                .route("/inbox", web::get().to(messages::inbox))
                .route(
                    "/subjects/{key}/timeline",
                    web::get().to(messages::timeline),
                )
                .route("/peers/{org}/ping", web::post().to(ping_peer)),
        )
        .default_service(web::to(|| async { Problem::not_found().respond() }));
}
