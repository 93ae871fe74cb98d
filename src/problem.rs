//! RFC 9457 problem details: the one place where errors become HTTP responses.
//!
//! Every error that leaves the node is a `Problem` with a stable machine-readable `reason`.
//! Internal causes are logged here and never sent: a peer or a client sees the reason, a title
//! and a safe detail, nothing else.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem document as sent on the wire. Its `type` is `urn:brobygger:problem:` and the
/// reason, added when it is serialised.
#[derive(Debug, Clone)]
pub struct Problem {
    pub title: &'static str,
    pub status: u16,
    /// Stable reason code, e.g. `peer-not-member`. Clients branch on this, not on the title.
    pub reason: &'static str,
    pub detail: Option<String>,
    /// For a refusal about one value of a document: its JSON pointer (RFC 6901).
    pub pointer: Option<String>,
    www_authenticate: bool,
}

/// The serialised form of a [`Problem`]; its schema documents every error response of the
/// local API (`ProblemDocV1`, content type `application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(
    as = ProblemDocV1,
    description = "An RFC 9457 problem document. Clients branch on `reason`, a stable code; the title and detail are for people.",
    example = json!({
        "type": "urn:brobygger:problem:forbidden-role",
        "title": "The token's roles do not allow this operation",
        "status": 403,
        "reason": "forbidden-role",
        "detail": "this operation needs one of the roles: consent-admin"
    })
)]
pub(crate) struct ProblemDoc<'a> {
    /// `urn:brobygger:problem:` followed by the reason code.
    #[serde(rename = "type")]
    type_uri: String,
    /// A short human-readable summary of the reason.
    title: &'a str,
    /// The HTTP status code of the response.
    status: u16,
    /// The stable machine-readable reason code, e.g. `consent-not-active`.
    reason: &'a str,
    /// A safe explanation of this occurrence (never an internal error text).
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    /// For a refusal about one value of a document: its JSON pointer (RFC 6901).
    #[serde(skip_serializing_if = "Option::is_none")]
    pointer: Option<&'a str>,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ProblemDoc {
            type_uri: format!("urn:brobygger:problem:{}", self.reason),
            title: self.title,
            status: self.status,
            reason: self.reason,
            detail: self.detail.as_deref(),
            pointer: self.pointer.as_deref(),
        }
        .serialize(serializer)
    }
}

impl Problem {
    pub fn new(status: StatusCode, reason: &'static str, title: &'static str) -> Self {
        Self {
            title,
            status: status.as_u16(),
            reason,
            detail: None,
            pointer: None,
            www_authenticate: false,
        }
    }

    /// Adds a detail that is safe to show to the caller (never an internal error text).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds the JSON pointer of the offending value.
    pub fn with_pointer(mut self, pointer: Option<String>) -> Self {
        self.pointer = pointer;
        self
    }

    // ----- The catalogue of problems. Each constructor is one reason code. -----

    /// A refused envelope or consent (DESIGN §5): the reason code decides status and title.
    pub fn refused(
        reason: &'static str,
        detail: impl Into<String>,
        pointer: Option<String>,
    ) -> Self {
        let (status, title) = refusal_status_and_title(reason);
        Self::new(status, reason, title)
            .with_detail(detail)
            .with_pointer(pointer)
    }

    pub fn peer_not_member(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "peer-not-member",
            "The client certificate does not name a current member of this federation",
        )
        .with_detail(detail)
    }

    pub fn manifest_expired() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "manifest-expired",
            "This node's federation manifest has expired; it refuses all exchange until a new one is installed",
        )
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "A valid bearer token is required",
        )
        .with_detail(detail);
        p.www_authenticate = true;
        p
    }

    pub fn forbidden_role(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden-role",
            "The token's roles do not allow this operation",
        )
        .with_detail(detail)
    }

    /// A caseworker asked for a child outside their unit's consents.
    pub fn out_of_scope() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "out-of-scope",
            "This child's consents were not recorded or bound by your unit",
        )
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "No such resource")
    }

    pub fn malformed_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "The request is malformed",
        )
        .with_detail(detail)
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "The request body is larger than this node accepts",
        )
        .with_detail(format!("the limit is {limit} bytes"))
    }

    pub fn unknown_peer(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown-peer",
            "No current member of the federation has that id",
        )
        .with_detail(detail)
    }

    /// The peer could not be reached or did not prove its identity. `cause` is logged only.
    pub fn peer_unreachable(peer: &str, cause: &dyn fmt::Display) -> Self {
        tracing::warn!(%peer, %cause, "federation peer unreachable or not authenticated");
        Self::new(
            StatusCode::BAD_GATEWAY,
            "peer-unreachable",
            "The peer could not be reached, or it did not prove its identity",
        )
        .with_detail(format!("peer `{peer}`"))
    }

    /// Something failed inside the node. `cause` is logged only; the caller learns nothing of it.
    pub fn internal(cause: &dyn fmt::Display) -> Self {
        tracing::error!(%cause, "internal error while answering a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "The node could not complete the request",
        )
    }

    /// A dependency (the database) is unavailable. `cause` is logged only.
    pub fn unavailable(cause: &dyn fmt::Display) -> Self {
        tracing::error!(%cause, "dependency unavailable while answering a request");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The node cannot serve this request right now",
        )
    }
}

/// Every reason code [`Problem::refused`] knows, for the documentation test.
pub const REFUSAL_CODES: &[&str] = &[
    "sender-mismatch",
    "recipient-mismatch",
    "message-id-conflict",
    "body-too-large",
    "malformed-json",
    "cpr-detected",
    "schema-invalid",
    "field-not-allowed",
    "purpose-unknown",
    "purpose-inactive",
    "type-not-allowed",
    "direction-not-allowed",
    "consent-unknown",
    "subject-not-in-consent",
    "consent-not-active",
    "consent-expired",
    "party-not-in-consent",
    "purpose-not-in-consent",
    "consent-exists",
    "consent-validity-invalid",
    "retention-too-long",
    "binding-code-wrong",
    "binding-locked",
    "already-bound",
];

/// The status and title of each admission refusal. Unknown codes are a programming error and
/// read as a plain 403.
fn refusal_status_and_title(reason: &str) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match reason {
        "sender-mismatch" => (
            S::FORBIDDEN,
            "The envelope's sender is not the organisation that authenticated",
        ),
        "recipient-mismatch" => (
            S::MISDIRECTED_REQUEST,
            "The envelope is addressed to another node",
        ),
        "message-id-conflict" => (
            S::CONFLICT,
            "This message id was used before with a different body",
        ),
        "body-too-large" => (
            S::PAYLOAD_TOO_LARGE,
            "The envelope is larger than a node accepts",
        ),
        "malformed-json" => (
            S::BAD_REQUEST,
            "The envelope is not one strict JSON document",
        ),
        "cpr-detected" => (
            S::UNPROCESSABLE_ENTITY,
            "A value looks like a CPR number; CPR numbers never cross the boundary",
        ),
        "schema-invalid" => (
            S::UNPROCESSABLE_ENTITY,
            "The envelope does not match its v1 schema",
        ),
        "field-not-allowed" => (
            S::UNPROCESSABLE_ENTITY,
            "The purpose does not allow a field of this body",
        ),
        "purpose-unknown" => (S::FORBIDDEN, "No purpose with this id and version"),
        "purpose-inactive" => (S::FORBIDDEN, "The purpose is not active"),
        "type-not-allowed" => (S::FORBIDDEN, "The purpose does not allow this message type"),
        "direction-not-allowed" => (
            S::FORBIDDEN,
            "The purpose does not allow data to flow this way",
        ),
        "consent-unknown" => (S::FORBIDDEN, "No consent with this id"),
        "subject-not-in-consent" => (S::FORBIDDEN, "The consent is not about this child"),
        "consent-not-active" => (S::FORBIDDEN, "The consent is not active"),
        "consent-expired" => (S::FORBIDDEN, "The consent has expired"),
        "party-not-in-consent" => (
            S::FORBIDDEN,
            "The consent does not name both the sender and the recipient",
        ),
        "purpose-not-in-consent" => (S::FORBIDDEN, "The consent does not name this purpose"),
        "consent-exists" => (S::CONFLICT, "A consent with this id exists already"),
        "consent-validity-invalid" => (
            S::UNPROCESSABLE_ENTITY,
            "The consent's validity is empty or longer than its purposes allow",
        ),
        "retention-too-long" => (
            S::UNPROCESSABLE_ENTITY,
            "The consent lets the recipient keep data longer than its purposes allow",
        ),
        "binding-code-wrong" => (S::FORBIDDEN, "The binding code is not right"),
        "binding-locked" => (
            S::TOO_MANY_REQUESTS,
            "Too many wrong binding codes; binding is locked for a while",
        ),
        "already-bound" => (
            S::CONFLICT,
            "The consent is bound already; a binding code works once",
        ),
        _ => (S::FORBIDDEN, "The request was refused"),
    }
}

impl Problem {
    /// The HTTP response for this problem, for handlers that answer with it directly.
    pub fn respond(&self) -> HttpResponse {
        self.error_response()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.title, self.reason)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)));
        if self.www_authenticate {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            ));
        }
        response.json(self)
    }
}

/// Turns actix-web's JSON extractor failures into problems (size and syntax).
pub fn json_error_handler(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let problem = match &err {
        E::OverflowKnownLength { limit, .. } | E::Overflow { limit } => {
            Problem::body_too_large(*limit)
        }
        E::ContentType => Problem::malformed_request("the body must be application/json"),
        E::Deserialize(e) => Problem::malformed_request(format!("invalid JSON: {e}")),
        _ => Problem::malformed_request("the body could not be read"),
    };
    problem.into()
}

/// Turns path and query extractor failures into problems.
pub fn path_error_handler(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    Problem::malformed_request(format!("invalid path: {err}")).into()
}

/// Turns query-string extractor failures into problems.
pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    Problem::malformed_request(format!("invalid query: {err}")).into()
}

impl From<&crate::log_reader::ReadError> for Problem {
    /// A read of the audit log that failed: the store being down is passing (503), anything
    /// else is this node's fault (500, logged, never sent).
    fn from(error: &crate::log_reader::ReadError) -> Self {
        match error {
            crate::log_reader::ReadError::Storage(e) => Problem::unavailable(e),
            other => Problem::internal(other),
        }
    }
}
