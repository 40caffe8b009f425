//! The gateway's one error type at the HTTP boundary: each variant has one status and one stable
//! snake_case code (DESIGN §1), written in one `match`. 4xx means "do not retry", 5xx "retry".
//! Messages say what was wrong with the request, never a secret, an expected signature or an
//! internal cause (those go to the log).

use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
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

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no provider is configured at /webhooks/{0}")]
    UnknownProvider(String),
    #[error("the route was not found")]
    NotFound,
    #[error("method {0} is not allowed here; use POST")]
    MethodNotAllowed(String),
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
    #[error("too many requests; retry after {} s", retry_after_secs(.0))]
    RateLimited(Duration),
    #[error("valid HTTP Basic Auth credentials are required")]
    Unauthorized,
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
    #[error("storage is temporarily unavailable; retry later")]
    StorageUnavailable(#[source] StoreError),
    #[error("the event is stored but was not delivered: {0}")]
    DeliveryFailed(String),
}

fn retry_after_secs(wait: &Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl GatewayError {
    /// The stable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::UnknownProvider(_) => "unknown_provider",
            GatewayError::NotFound => "not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::TooManyEvents { .. } => "too_many_events",
            GatewayError::HeadersTooLarge { .. } => "headers_too_large",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::IpNotAllowed => "ip_not_allowed",
            GatewayError::RateLimited(_) => "rate_limited",
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::Signature(e) => match e {
                SignatureError::Missing(_) => "missing_signature",
                SignatureError::Malformed(_) => "malformed_signature_header",
                SignatureError::NoMatch { .. } | SignatureError::Other(_) => "invalid_signature",
                SignatureError::OutOfTolerance { .. } => "timestamp_out_of_tolerance",
            },
            GatewayError::InvalidPayload { .. } | GatewayError::TooDeep { .. } => "invalid_payload",
            GatewayError::UnprocessableEvent(_) => "unprocessable_event",
            GatewayError::StorageUnavailable(_) => "storage_unavailable",
            GatewayError::DeliveryFailed(_) => "delivery_failed",
        }
    }
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        match self {
            GatewayError::UnknownProvider(_) | GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } | GatewayError::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::IpNotAllowed => StatusCode::FORBIDDEN,
            GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unauthorized | GatewayError::Signature(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InvalidPayload { .. } | GatewayError::TooDeep { .. } => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::UnprocessableEvent(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::StorageUnavailable(_) | GatewayError::DeliveryFailed(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            GatewayError::RateLimited(wait) => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs(wait).max(1)));
            }
            GatewayError::StorageUnavailable(_) | GatewayError::DeliveryFailed(_) => {
                response.insert_header((header::RETRY_AFTER, STORAGE_RETRY_AFTER_SECS));
            }
            GatewayError::Unauthorized => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(BASIC_CHALLENGE),
                ));
            }
            GatewayError::MethodNotAllowed(_) => {
                response.insert_header((header::ALLOW, "POST"));
            }
            _ => {}
        }
        response.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
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
                GatewayError::MethodNotAllowed("GET".into()),
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
                GatewayError::RateLimited(Duration::from_millis(1500)),
                429,
                "rate_limited",
            ),
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
        }
        assert_eq!(retry_after_secs(&Duration::from_millis(1500)), 2);
    }
}
