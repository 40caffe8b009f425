//! The gateway's one error type at the HTTP boundary: each variant has one status and one stable
//! snake_case code (DESIGN §1), written in one `match`. 4xx means "do not retry", 5xx "retry".
//! Messages say what was wrong with the request, never a secret, an expected signature or an
//! internal cause (those go to the log).

use std::time::Duration;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::ingest::IngestError;
use crate::pipeline::access::BASIC_CHALLENGE;
use crate::pipeline::body::BodyError;
use crate::pipeline::parse::ParseError;
use crate::pipeline::signature::SignatureError;
use crate::store::StoreError;

/// `Retry-After` for storage trouble.
const STORAGE_RETRY_AFTER_SECS: u64 = 5;
/// `Retry-After` of a paused instance: long enough not to hammer, short enough that a resume
/// is noticed soon.
pub const PAUSED_RETRY_AFTER_SECS: u64 = 60;

/// Methods of the receiver, `/webhooks/{name}`.
pub const RECEIVER_METHODS: &str = "POST";
/// Methods of the read-only routes: `/health`, `/ready`, `/metrics`, `/webhooks/{name}/health`.
pub const READ_METHODS: &str = "GET, HEAD";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no provider is configured at /webhooks/{0}")]
    UnknownProvider(String),
    #[error("the route was not found")]
    NotFound,
    #[error("method {method} is not allowed here; use {allow}")]
    MethodNotAllowed {
        method: String,
        /// The route's methods, as the `Allow` header lists them.
        allow: &'static str,
    },
    #[error("request body exceeds the {limit}-byte limit")]
    PayloadTooLarge { limit: usize },
    #[error("the delivery carries {count} events; at most {limit} are accepted in one request")]
    TooManyEvents { count: usize, limit: usize },
    #[error("request headers exceed the {limit}-byte limit")]
    HeadersTooLarge { limit: usize },
    #[error("the request body was not received in time")]
    RequestTimeout,
    #[error("client address is not in this provider's allowlist")]
    IpNotAllowed,
    #[error(
        "the X-Forwarded-For and Forwarded headers name different clients; a trusted proxy sets \
         only one (server.forwarded_header)"
    )]
    ForwardedConflict,
    #[error("too many requests; retry after {} s", retry_after_secs(.wait))]
    RateLimited {
        wait: Duration,
        /// `rate_limit.status`: 429 by default, 503 for senders that give up on any 4xx.
        status: StatusCode,
    },
    #[error("valid HTTP Basic Auth credentials are required")]
    Unauthorized,
    #[error("the verify token does not match this provider instance's verify_token")]
    InvalidVerifyToken,
    #[error("{0}")]
    Signature(SignatureError),
    #[error("the body is not valid {format}: {detail}")]
    InvalidPayload {
        format: &'static str,
        detail: String,
    },
    #[error("the body nests arrays and objects deeper than {limit} levels, the most accepted")]
    TooDeep { limit: usize },
    #[error("the event cannot be normalised: {0}")]
    UnprocessableEvent(String),
    #[error("this provider instance is paused; retry later")]
    Paused,
    #[error("storage is temporarily unavailable; retry later")]
    StorageUnavailable(#[source] StoreError),
    #[error("the event is stored but was not delivered: {0}")]
    DeliveryFailed(String),
}

fn retry_after_secs(wait: &Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// One row of the error table: what an error is on the wire.
pub struct ErrorSpec {
    /// The stable code in the JSON body.
    pub code: &'static str,
    pub status: StatusCode,
    /// Headers sent with it (`Retry-After`, `WWW-Authenticate`, `Allow`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Whether a sender should try again: every 5xx, and 429.
    pub retryable: bool,
}

impl GatewayError {
    /// The error table: code, status, headers and whether to retry, for every error, in one
    /// `match`.
    pub fn spec(&self) -> ErrorSpec {
        let retry_after = |secs: u64| vec![(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))];
        let (code, status, headers) = match self {
            GatewayError::UnknownProvider(_) => ("unknown_provider", StatusCode::NOT_FOUND, vec![]),
            GatewayError::NotFound => ("not_found", StatusCode::NOT_FOUND, vec![]),
            GatewayError::MethodNotAllowed { allow, .. } => (
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                vec![(header::ALLOW, HeaderValue::from_static(allow))],
            ),
            GatewayError::PayloadTooLarge { .. } => {
                ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE, vec![])
            }
            GatewayError::TooManyEvents { .. } => {
                ("too_many_events", StatusCode::PAYLOAD_TOO_LARGE, vec![])
            }
            GatewayError::HeadersTooLarge { .. } => (
                "headers_too_large",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                vec![],
            ),
            GatewayError::RequestTimeout => {
                ("request_timeout", StatusCode::REQUEST_TIMEOUT, vec![])
            }
            GatewayError::IpNotAllowed | GatewayError::ForwardedConflict => {
                ("ip_not_allowed", StatusCode::FORBIDDEN, vec![])
            }
            GatewayError::InvalidVerifyToken => {
                ("invalid_verify_token", StatusCode::FORBIDDEN, vec![])
            }
            GatewayError::RateLimited { wait, status } => {
                ("rate_limited", *status, retry_after(retry_after_secs(wait)))
            }
            GatewayError::Unauthorized => (
                "unauthorized",
                StatusCode::UNAUTHORIZED,
                vec![(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(BASIC_CHALLENGE),
                )],
            ),
            GatewayError::Signature(e) => (
                match e {
                    SignatureError::Missing(_) => "missing_signature",
                    SignatureError::Malformed(_) => "malformed_signature_header",
                    SignatureError::NoMatch { .. } | SignatureError::Other(_) => {
                        "invalid_signature"
                    }
                    SignatureError::OutOfTolerance { .. } => "timestamp_out_of_tolerance",
                },
                StatusCode::UNAUTHORIZED,
                vec![],
            ),
            GatewayError::InvalidPayload { .. } | GatewayError::TooDeep { .. } => {
                ("invalid_payload", StatusCode::BAD_REQUEST, vec![])
            }
            GatewayError::UnprocessableEvent(_) => (
                "unprocessable_event",
                StatusCode::UNPROCESSABLE_ENTITY,
                vec![],
            ),
            GatewayError::Paused => (
                "paused",
                StatusCode::SERVICE_UNAVAILABLE,
                retry_after(PAUSED_RETRY_AFTER_SECS),
            ),
            GatewayError::StorageUnavailable(_) => (
                "storage_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                retry_after(STORAGE_RETRY_AFTER_SECS),
            ),
            GatewayError::DeliveryFailed(_) => (
                "delivery_failed",
                StatusCode::SERVICE_UNAVAILABLE,
                retry_after(STORAGE_RETRY_AFTER_SECS),
            ),
        };
        ErrorSpec {
            code,
            status,
            retryable: status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
            headers,
        }
    }

    /// The stable code in the JSON body.
    pub fn code(&self) -> &'static str {
        self.spec().code
    }
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        self.spec().status
    }

    fn error_response(&self) -> HttpResponse {
        let spec = self.spec();
        let mut response = HttpResponse::build(spec.status);
        for header in spec.headers {
            response.insert_header(header);
        }
        response.json(json!({"error": {"code": spec.code, "message": self.to_string()}}))
    }
}

impl From<SignatureError> for GatewayError {
    fn from(e: SignatureError) -> Self {
        GatewayError::Signature(e)
    }
}

impl From<BodyError> for GatewayError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit } => GatewayError::PayloadTooLarge { limit },
            BodyError::Timeout => GatewayError::RequestTimeout,
            BodyError::Broken(detail) => GatewayError::InvalidPayload {
                format: "HTTP body",
                detail,
            },
        }
    }
}

impl From<ParseError> for GatewayError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Invalid { format, detail } => {
                GatewayError::InvalidPayload { format, detail }
            }
            ParseError::TooDeep { limit } => GatewayError::TooDeep { limit },
        }
    }
}

impl From<IngestError> for GatewayError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Unprocessable(e) => GatewayError::UnprocessableEvent(e.to_string()),
            IngestError::Replayed => {
                GatewayError::Signature(SignatureError::Other(IngestError::Replayed.to_string()))
            }
            IngestError::Storage(e) => GatewayError::StorageUnavailable(e),
            IngestError::Delivery(e) => GatewayError::DeliveryFailed(e.to_string()),
        }
    }
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        GatewayError::StorageUnavailable(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_stable_code_and_status() {
        let cases = [
            (
                GatewayError::UnknownProvider("x".into()),
                404,
                "unknown_provider",
            ),
            (
                GatewayError::MethodNotAllowed {
                    method: "GET".into(),
                    allow: RECEIVER_METHODS,
                },
                405,
                "method_not_allowed",
            ),
            (
                GatewayError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                GatewayError::TooManyEvents {
                    count: 1001,
                    limit: 1000,
                },
                413,
                "too_many_events",
            ),
            (GatewayError::IpNotAllowed, 403, "ip_not_allowed"),
            (
                GatewayError::InvalidVerifyToken,
                403,
                "invalid_verify_token",
            ),
            (
                GatewayError::RateLimited {
                    wait: Duration::from_millis(1500),
                    status: StatusCode::TOO_MANY_REQUESTS,
                },
                429,
                "rate_limited",
            ),
            (GatewayError::Paused, 503, "paused"),
            (GatewayError::Unauthorized, 401, "unauthorized"),
            (
                SignatureError::NoMatch { keys: 2 }.into(),
                401,
                "invalid_signature",
            ),
            (
                GatewayError::UnprocessableEvent("x".into()),
                422,
                "unprocessable_event",
            ),
            (StoreError::QueueFull.into(), 503, "storage_unavailable"),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{code}");
            assert_eq!(error.code(), code);
            assert_eq!(error.spec().retryable, status >= 500 || status == 429);
        }
        assert_eq!(retry_after_secs(&Duration::from_millis(1500)), 2);
    }
}
