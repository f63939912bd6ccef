//! One error type for every service, rendered as RFC 9457 problem details
//! (`application/problem+json`).
//!
//! Each variant's doc states its status code. Internal and database errors become an
//! opaque 500 (or 503 when the database is unreachable) whose chain is logged, never
//! sent: the client sees a title and the request id, not our SQL.

use std::fmt;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use kai_shared::cache::{LoadError, NotFound};
use kai_shared::db::DbError;
use kai_shared::ratelimit::Limited;
use serde::Serialize;

/// One field-level validation message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The problem+json body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(thiserror::Error)]
pub enum ApiError {
    /// 400: malformed input or failed validation.
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// 401: missing, malformed, expired, tampered or revoked credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: unknown id, or an id that belongs to someone else.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request body did not arrive in time (`REQUEST_BODY_TIMEOUT_MS`).
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: a conflicting resource exists.
    #[error("{0}")]
    Conflict(String),
    /// 413: body over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: wrong content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 431: the request's header fields are larger than the server reads.
    #[error("{0}")]
    HeaderFieldsTooLarge(String),
    /// 429: rate limited; retry after the given time.
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: Duration,
    },
    /// 502: an upstream service failed.
    #[error("{0}")]
    BadGateway(String),
    /// 504: an upstream service timed out.
    #[error("{0}")]
    GatewayTimeout(String),
    /// 503: the database is unreachable or the pool is exhausted.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 503 with `Retry-After`: this replica cannot serve authenticated requests
    /// yet (it does not know every revocation); expected, so not logged.
    #[error("{0}")]
    NotReady(String),
    /// 500: anything else; the chain is logged, not sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        error_chain_fmt(self, f)
    }
}

/// Prints an error and every `source()` below it, so a log line explains a 500.
pub fn error_chain_fmt(e: &impl std::error::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{e}")?;
    let mut current = e.source();
    while let Some(cause) = current {
        writeln!(f, "caused by: {cause}")?;
        current = cause.source();
    }
    Ok(())
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// A 400 carrying field errors.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        Self::BadRequest {
            detail: "the request failed validation".into(),
            errors,
        }
    }

    pub fn not_found() -> Self {
        Self::NotFound("no such resource".into())
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    /// A copy for another waiter of the same single-flight load (the source chain
    /// of an internal error is flattened into its message).
    pub fn duplicate(&self) -> Self {
        match self {
            Self::BadRequest { detail, errors } => Self::BadRequest {
                detail: detail.clone(),
                errors: errors.clone(),
            },
            Self::Unauthorized(m) => Self::Unauthorized(m.clone()),
            Self::NotFound(m) => Self::NotFound(m.clone()),
            Self::MethodNotAllowed(m) => Self::MethodNotAllowed(m.clone()),
            Self::RequestTimeout(m) => Self::RequestTimeout(m.clone()),
            Self::Conflict(m) => Self::Conflict(m.clone()),
            Self::PayloadTooLarge(m) => Self::PayloadTooLarge(m.clone()),
            Self::UnsupportedMediaType(m) => Self::UnsupportedMediaType(m.clone()),
            Self::HeaderFieldsTooLarge(m) => Self::HeaderFieldsTooLarge(m.clone()),
            Self::TooManyRequests {
                detail,
                retry_after,
            } => Self::TooManyRequests {
                detail: detail.clone(),
                retry_after: *retry_after,
            },
            Self::BadGateway(m) => Self::BadGateway(m.clone()),
            Self::GatewayTimeout(m) => Self::GatewayTimeout(m.clone()),
            Self::Unavailable(e) => Self::Unavailable(anyhow::anyhow!("{e:#}")),
            Self::NotReady(m) => Self::NotReady(m.clone()),
            Self::Internal(e) => Self::Internal(anyhow::anyhow!("{e:#}")),
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "Bad Request",
            Self::Unauthorized(_) => "Unauthorized",
            Self::NotFound(_) => "Not Found",
            Self::MethodNotAllowed(_) => "Method Not Allowed",
            Self::RequestTimeout(_) => "Request Timeout",
            Self::Conflict(_) => "Conflict",
            Self::PayloadTooLarge(_) => "Payload Too Large",
            Self::UnsupportedMediaType(_) => "Unsupported Media Type",
            Self::HeaderFieldsTooLarge(_) => "Request Header Fields Too Large",
            Self::TooManyRequests { .. } => "Too Many Requests",
            Self::BadGateway(_) => "Bad Gateway",
            Self::GatewayTimeout(_) => "Gateway Timeout",
            Self::Unavailable(_) | Self::NotReady(_) => "Service Unavailable",
            Self::Internal(_) => "Internal Server Error",
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest { errors, .. } if !errors.is_empty() => "validation-error",
            Self::BadRequest { .. } => "bad-request",
            Self::Unauthorized(_) => "unauthorized",
            Self::NotFound(_) => "not-found",
            Self::MethodNotAllowed(_) => "method-not-allowed",
            Self::RequestTimeout(_) => "request-timeout",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload-too-large",
            Self::UnsupportedMediaType(_) => "unsupported-media-type",
            Self::HeaderFieldsTooLarge(_) => "header-fields-too-large",
            Self::TooManyRequests { .. } => "rate-limited",
            Self::BadGateway(_) => "upstream-error",
            Self::GatewayTimeout(_) => "upstream-timeout",
            Self::Unavailable(_) | Self::NotReady(_) => "service-unavailable",
            Self::Internal(_) => "internal-error",
        }
    }

    /// The problem body (public detail only).
    pub fn problem(&self) -> Problem {
        let status = self.status_code().as_u16();
        let detail = match self {
            Self::Unavailable(_) => "the database is unavailable; retry shortly".to_owned(),
            Self::Internal(_) => "an unexpected error occurred".to_owned(),
            other => other.to_string(),
        };
        let errors = match self {
            Self::BadRequest { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        Problem {
            kind: format!("https://kai.dev/problems/{}", self.slug()),
            title: self.title().into(),
            status,
            detail,
            errors,
        }
    }
}

// ---- the one place the lower layers' errors become answers ----

impl From<DbError> for ApiError {
    /// 503 when the database could not be reached (or the pool was exhausted),
    /// else an opaque 500; the chain is logged, never sent.
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e.into())
        } else {
            ApiError::Internal(e.into())
        }
    }
}

impl From<Limited> for ApiError {
    /// 429 with `Retry-After`.
    fn from(e: Limited) -> Self {
        ApiError::TooManyRequests {
            detail: e.to_string(),
            retry_after: e.retry_after,
        }
    }
}

impl From<NotFound> for ApiError {
    /// 404.
    fn from(_: NotFound) -> Self {
        ApiError::not_found()
    }
}

/// An error that can be answered from a shared reference: the cache hands
/// every request that waited for one load the same error ([`LoadError::Failed`]).
pub trait Answer {
    fn answer(&self) -> ApiError;
}

impl Answer for ApiError {
    fn answer(&self) -> ApiError {
        self.duplicate()
    }
}

impl Answer for DbError {
    fn answer(&self) -> ApiError {
        let chain = anyhow::anyhow!("{}", ErrorChain(self));
        if self.is_unavailable() {
            ApiError::Unavailable(chain)
        } else {
            ApiError::Internal(chain)
        }
    }
}

/// A cached read's failure: 404 for nothing found, the loader's own answer for
/// its error (the error itself when this request ran the load), 500 otherwise.
impl<E: Answer + Into<ApiError>> From<LoadError<E>> for ApiError {
    fn from(e: LoadError<E>) -> Self {
        match e {
            LoadError::NotFound => ApiError::not_found(),
            LoadError::Failed(e) => match std::sync::Arc::try_unwrap(e) {
                Ok(e) => e.into(),
                Err(shared) => shared.answer(),
            },
            LoadError::Encode(e) => ApiError::Internal(anyhow::anyhow!("encoding an answer: {e}")),
            LoadError::Other => {
                ApiError::Internal(anyhow::anyhow!("a concurrent load of the same key failed"))
            }
        }
    }
}

/// An error and its sources on one line (`a: b: c`).
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut current = self.0.source();
        while let Some(cause) = current {
            write!(f, ": {cause}")?;
            current = cause.source();
        }
        Ok(())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::HeaderFieldsTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) | Self::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(_) => tracing::error!(error = ?self, "request failed"),
            Self::Unavailable(_) => tracing::warn!(error = ?self, "dependency unavailable"),
            _ => {}
        }
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        match self {
            Self::TooManyRequests { retry_after, .. } => {
                res.insert_header((
                    header::RETRY_AFTER,
                    retry_after.as_secs().max(1).to_string(),
                ));
            }
            Self::Unavailable(_) | Self::NotReady(_) => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            Self::Unauthorized(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        res.body(serde_json::to_vec(&self.problem()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(e: &ApiError) -> serde_json::Value {
        let res = e.error_response();
        assert_eq!(
            res.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json"
        );
        let bytes = res.into_body().try_into_bytes().unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn validation_errors_carry_fields() {
        let e = ApiError::validation(vec![FieldError::new("mood", "must be between 1 and 10")]);
        let v = body_of(&e);
        assert_eq!(v["status"], 400);
        assert_eq!(v["errors"][0]["field"], "mood");
        assert_eq!(v["type"], "https://kai.dev/problems/validation-error");
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let e = ApiError::internal(anyhow::anyhow!(
            "relation journal.secret_table does not exist"
        ));
        let v = body_of(&e);
        assert_eq!(v["status"], 500);
        assert!(!v.to_string().contains("secret_table"));
        assert!(
            format!("{e:?}").contains("secret_table"),
            "Debug keeps the chain for logs"
        );
    }

    #[test]
    fn unavailable_and_rate_limited_say_when_to_retry() {
        let res = ApiError::Unavailable(anyhow::anyhow!("pool timeout")).error_response();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let res = ApiError::TooManyRequests {
            detail: "slow down".into(),
            retry_after: Duration::from_secs(7),
        }
        .error_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "7");
    }
}
