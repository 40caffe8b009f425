//! HTTP routes: the webhook receiver and the health endpoints, plus JSON answers for unknown
//! routes and methods.

pub mod admin;
pub mod health;
pub mod webhook;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::error::GatewayError;
use crate::startup::AppState;

/// Any route that does not exist.
pub async fn not_found() -> HttpResponse {
    GatewayError::NotFound.error_response()
}

/// A known route called with the wrong method.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    GatewayError::MethodNotAllowed(req.method().to_string()).error_response()
}

/// Refuses requests whose headers add up to more than `server.max_header_bytes` with a JSON 431,
/// before any route runs. (actix-http itself caps the head at 128 KiB and 96 headers.)
pub async fn limit_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map_or(usize::MAX, |state| state.max_header_bytes);
    let size: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        let response = GatewayError::HeadersTooLarge { limit }.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}
