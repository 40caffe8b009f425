//! `GET /health` (the process answers), `GET /ready` (storage takes a durable write),
//! `GET /webhooks/{name}/health` (the instance exists, paused or not, its last delivery; behind
//! its Basic Auth when it has one) and `GET /metrics`.

use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;

use super::AppState;
use crate::envelope::format_millis;
use crate::error::{GatewayError, READ_METHODS};
use crate::store::{EventQuery, PauseTarget};

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

/// `GET /webhooks/{name}/health`: the instance exists (behind its Basic Auth when it has
/// one), whether it is paused, and when its last delivery was received (`null` when none).
pub async fn provider_health(
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
    let last = last_event(state, &instance.name).await?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "provider": instance.name,
        "kind": instance.kind.name,
        "paused": state.pauses.is_paused(PauseTarget::Instance, &instance.name),
        "last_event_at": last,
    })))
}

/// When the instance's last delivery was received (`None` when none is stored): from this
/// replica's cache, else asked of the store at most once per [`LAST_EVENT_TTL`] per instance
/// (the health route may be open to anyone, and the search may look at many receipts).
pub async fn last_event(
    state: &AppState,
    instance: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    if let Some(known) = state.last_events.get(instance) {
        return Ok(known);
    }
    let page = state
        .store
        .events(EventQuery {
            provider: Some(instance.to_owned()),
            limit: 1,
            ..EventQuery::default()
        })
        .await?;
    let last = page.events.first().map(|e| e.receipt.received_at.clone());
    state.last_events.put(instance, last.clone());
    Ok(last)
}

/// `GET /metrics`: Prometheus text format; with `[admin] protect_metrics = true` only for the
/// admin bearer token.
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if state.protect_metrics {
        let sent = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let allowed = state
            .admin_token
            .as_ref()
            .is_some_and(|token| token.matches(sent.as_bytes()));
        if !allowed {
            let mut response = HttpResponse::Unauthorized().json(json!({"error": {
                "code": "unauthorized",
                "message": "/metrics needs the admin bearer token (admin.protect_metrics)",
            }}));
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// How long a provider's last event time read from the store is reused (events accepted here
/// update it at once; other replicas' within this).
pub const LAST_EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Per instance: the last event time and when it was read.
#[derive(Debug, Default)]
pub struct LastEvents(
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Option<String>)>>,
);

impl LastEvents {
    /// `Some(last)` while fresh.
    pub fn get(&self, instance: &str) -> Option<Option<String>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(instance)
            .filter(|(at, _)| at.elapsed() < LAST_EVENT_TTL)
            .map(|(_, last)| last.clone())
    }

    pub fn put(&self, instance: &str, last: Option<String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(instance.to_owned(), (std::time::Instant::now(), last));
    }
}
