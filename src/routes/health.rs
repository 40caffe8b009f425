//! `GET /health` (the process answers), `GET /ready` (storage takes a durable write) and
//! `GET /webhooks/{name}/health` (the instance exists; behind its Basic Auth when it has one).

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use super::AppState;
use crate::envelope::format_millis;
use crate::error::{GatewayError, READ_METHODS};

/// A read-only route: GET and HEAD (uptime monitors use HEAD) run `handler`; any other method
/// is 405 with `Allow: GET, HEAD`.
pub fn read_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|req: HttpRequest| async move {
            GatewayError::MethodNotAllowed {
                method: req.method().to_string(),
                allow: READ_METHODS,
            }
            .error_response()
        }))
}

pub const SERVICE_NAME: &str = "hookgate";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "service": SERVICE_NAME,
        "version": VERSION,
        "timestamp": format_millis(state.clock.now()),
    }))
}

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match state.store.probe().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Err(e) => {
            tracing::warn!(error = %e, "Not ready: storage probe failed.");
            HttpResponse::ServiceUnavailable().json(json!({
                "status": "unavailable",
                "error": {"code": "storage_unavailable", "message": "storage is not writable"},
            }))
        }
    }
}

pub fn provider_health(
    req: &HttpRequest,
    name: &str,
    state: &AppState,
) -> Result<HttpResponse, GatewayError> {
    let instance = state
        .registry
        .get(name)
        .ok_or_else(|| GatewayError::UnknownProvider(name.to_owned()))?;
    if let Some(auth) = &instance.basic_auth {
        if !auth.check(req.headers()) {
            return Err(GatewayError::Unauthorized);
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "provider": instance.name,
        "kind": instance.kind.name,
    })))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
