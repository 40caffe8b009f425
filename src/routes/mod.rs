//! HTTP routes: the webhook receiver and the health endpoints, plus JSON answers for unknown
//! routes and methods.

pub mod health;
pub mod webhook;

use actix_web::{HttpRequest, HttpResponse, ResponseError};

use crate::error::GatewayError;

/// Any route that does not exist.
pub async fn not_found() -> HttpResponse {
    GatewayError::NotFound.error_response()
}

/// A known route called with the wrong method.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    GatewayError::MethodNotAllowed(req.method().to_string()).error_response()
}
