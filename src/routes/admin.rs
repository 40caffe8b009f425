//! `/admin`: the operator API, behind `Authorization: Bearer <admin.token>` (SHA-256 digests
//! compared in constant time, so neither the token nor its length leaks). Without a configured
//! token every `/admin` route answers 404. The token is checked before anything else of the
//! request is looked at; every refusal, a bad query string included, is a JSON error.
//!
//! | route | does |
//! |-------|------|
//! | `GET /admin/events?provider=&status=&event_id=&type=&since=&until=&limit=&before=` | stored events, newest first |
//! | `GET /admin/events/{id}` | one event: raw delivery, envelopes, tasks, attempts |
//! | `POST /admin/events/{id}/redeliver?sink=` | deliver again (all sinks, or one) |
//! | `POST /admin/events/{id}/reprocess` | normalise the stored delivery again, store what is new |
//! | `GET /admin/dead-letters?sink=&limit=` | dead letters |
//! | `POST /admin/dead-letters/redeliver?sink=` | redeliver every dead letter |
//! | `GET /admin/instances`, `GET /admin/sinks` | names with their pause state |
//! | `POST /admin/instances/{name}/pause` (`/resume`) | pause or resume an instance |
//! | `POST /admin/sinks/{name}/pause` (`/resume`) | pause or resume a sink |
//! | `POST /admin/sinks/{name}/test` | send one test envelope, answer the sink's result |
//! | `GET /admin/stats` | this replica's counters per instance and sink, and each sink's backlog |
//! | `GET /admin/rejected?instance=&code=&limit=` | the last rejections (a ring of 1000), newest first |

use actix_web::dev::HttpServiceFactory;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::admin::{self, ListQuery};
use crate::config::RateLimitSettings;
use crate::error::GatewayError;
use crate::pipeline::access::ClientLimiter;
use crate::store::PauseTarget;

const BEARER: &str = "Bearer ";
/// Clients with wrong-token state kept at most; past it, those no longer refused are forgotten.
const MAX_FAILING_CLIENTS: usize = 10_000;

/// Wrong admin tokens per client: 10, then one every 6 s (as the dashboard's sign-in allows).
/// A client past its budget is refused with 429 before its token is looked at, so guessing the
/// token is as slow here as at `/ui/login`.
#[derive(Debug)]
pub struct TokenFailures {
    limiter: ClientLimiter,
    refused_until: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for TokenFailures {
    fn default() -> Self {
        Self {
            limiter: ClientLimiter::new(RateLimitSettings {
                per_second: 1.0 / 6.0,
                burst: 10,
                status: 429,
            }),
            refused_until: Mutex::new(HashMap::new()),
        }
    }
}

impl TokenFailures {
    /// How long `ip` is still refused.
    fn refused(&self, ip: IpAddr) -> Option<Duration> {
        let until = *self
            .refused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a wrong token from `ip`; past the budget, refuses it for the wait.
    fn failed(&self, ip: IpAddr) {
        if self.limiter.tracked_clients() > MAX_FAILING_CLIENTS {
            self.limiter.prune();
        }
        if let Err(wait) = self.limiter.check(Some(ip)) {
            let now = Instant::now();
            let mut refused = self.refused_until.lock().unwrap_or_else(|e| e.into_inner());
            if refused.len() >= MAX_FAILING_CLIENTS {
                refused.retain(|_, until| *until > now);
            }
            refused.insert(ip, now + wait);
        }
    }
}

pub fn scope() -> impl HttpServiceFactory {
    web::scope("/admin")
        .service(one_method("/events", Method::GET, list))
        .service(one_method("/events/{id}", Method::GET, show))
        .service(one_method(
            "/events/{id}/redeliver",
            Method::POST,
            redeliver,
        ))
        .service(one_method(
            "/events/{id}/reprocess",
            Method::POST,
            reprocess,
        ))
        .service(one_method("/dead-letters", Method::GET, dead_letters))
        .service(one_method(
            "/dead-letters/redeliver",
            Method::POST,
            redeliver_dead,
        ))
        .service(one_method("/instances", Method::GET, instances))
        .service(one_method("/stats", Method::GET, stats))
        .service(one_method("/rejected", Method::GET, rejected))
        .service(one_method("/sinks", Method::GET, sinks))
        .service(one_method(
            "/instances/{name}/{action}",
            Method::POST,
            instance_action,
        ))
        .service(one_method(
            "/sinks/{name}/{action}",
            Method::POST,
            sink_action,
        ))
}

pub(crate) fn instance_names(state: &AppState) -> Vec<String> {
    let mut names: Vec<String> = state.registry.iter().map(|i| i.name.clone()).collect();
    names.sort();
    names
}

pub(crate) fn sink_names(state: &AppState) -> Vec<String> {
    state
        .dispatcher
        .routes()
        .iter()
        .map(|r| r.name.clone())
        .collect()
}

async fn instances(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    pause_list(&req, &state, PauseTarget::Instance).await
}

async fn sinks(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    pause_list(&req, &state, PauseTarget::Sink).await
}

/// `GET /admin/instances` or `/admin/sinks`: every name of the target with its pause state.
async fn pause_list(req: &HttpRequest, state: &AppState, target: PauseTarget) -> HttpResponse {
    if let Some(refusal) = refuse(req, state) {
        return refusal;
    }
    let names = match target {
        PauseTarget::Instance => instance_names(state),
        PauseTarget::Sink => sink_names(state),
    };
    json_answer(admin::pause_states(&*state.store, target, &names)).await
}

async fn stats(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let now = state.clock.now().timestamp_millis();
    json_answer(admin::stats(&*state.store, &state.observer, now)).await
}

async fn rejected(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    match query::<admin::RejectedQuery>(&req) {
        Ok(query) => HttpResponse::Ok().json(admin::rejected(&state.observer, query)),
        Err(reason) => bad_query(&reason),
    }
}

/// `pause` / `resume`: `Some(true)` / `Some(false)`.
fn pause_action(action: &str) -> Option<bool> {
    match action {
        "pause" => Some(true),
        "resume" => Some(false),
        _ => None,
    }
}

async fn instance_action(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let name = req.match_info().get("name").unwrap_or_default().to_owned();
    let Some(paused) = pause_action(req.match_info().get("action").unwrap_or_default()) else {
        return GatewayError::NotFound.error_response();
    };
    if state.registry.get(&name).is_none() {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            "unknown_provider",
            "no provider instance with this name is configured",
        );
    }
    set_pause(&state, PauseTarget::Instance, &name, paused).await
}

async fn sink_action(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let name = req.match_info().get("name").unwrap_or_default().to_owned();
    let action = req
        .match_info()
        .get("action")
        .unwrap_or_default()
        .to_owned();
    if let Some(refusal) = check_sink(&state, Some(&name)) {
        return refusal;
    }
    if action == "test" {
        return test_sink(&state, &name).await;
    }
    let Some(paused) = pause_action(&action) else {
        return GatewayError::NotFound.error_response();
    };
    set_pause(&state, PauseTarget::Sink, &name, paused).await
}

/// `POST /admin/sinks/{name}/test`: one test envelope, the sink's answer.
async fn test_sink(state: &AppState, name: &str) -> HttpResponse {
    match state.dispatcher.test_sink(name).await {
        Some(body) => HttpResponse::Ok().json(body),
        None => GatewayError::NotFound.error_response(),
    }
}

/// Stores the change, then applies it here at once (other replicas within their refresh).
/// The dashboard's pause buttons use it too.
pub(crate) async fn apply_pause(
    state: &AppState,
    target: PauseTarget,
    name: &str,
    paused: bool,
) -> Result<serde_json::Value, admin::AdminError> {
    let now = state.clock.now().timestamp_millis();
    let body = admin::set_paused(&*state.store, target, name, paused, now).await?;
    match state.store.paused().await {
        Ok(list) => {
            state.pauses.replace(&list);
        }
        Err(e) => tracing::warn!(error = %e, "Cannot re-read the pauses; the refresh will."),
    }
    tracing::info!(
        target = target.as_str(),
        %name,
        paused,
        "{}.",
        if paused { "Paused" } else { "Resumed" }
    );
    Ok(body)
}

async fn set_pause(
    state: &AppState,
    target: PauseTarget,
    name: &str,
    paused: bool,
) -> HttpResponse {
    json_answer(apply_pause(state, target, name, paused)).await
}

/// A route with one method; the others are 405 with `Allow` (after the token check, so
/// nothing about the API shows without it).
fn one_method<F>(path: &str, method: Method, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<(HttpRequest, web::Data<AppState>)>,
    F::Output: actix_web::Responder + 'static,
{
    let allow = if method == Method::POST {
        "POST"
    } else {
        "GET"
    };
    web::resource(path)
        .route(web::method(method).to(handler))
        .default_service(web::to(
            move |req: HttpRequest, state: web::Data<AppState>| async move {
                if let Some(refusal) = refuse(&req, &state) {
                    return refusal;
                }
                GatewayError::MethodNotAllowed {
                    method: req.method().to_string(),
                    allow,
                }
                .error_response()
            },
        ))
}

fn error(status: actix_web::http::StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message}}))
}

/// `None` when the caller may proceed; otherwise the refusal.
fn refuse(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let Some(token) = &state.admin_token else {
        return Some(error(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            "the route was not found",
        ));
    };
    let client = super::request_client_ip(req, state)
        .or(req.peer_addr().map(|a| a.ip()))
        .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    if let Some(wait) = state.admin_failures.refused(client) {
        let mut response = error(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many wrong admin tokens from this client; retry later",
        );
        if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        return Some(response);
    }
    let sent = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(BEARER))
        .unwrap_or_default();
    if token.matches(sent.as_bytes()) {
        None
    } else {
        state.admin_failures.failed(client);
        let mut response = error(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        );
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Bearer"),
        );
        Some(response)
    }
}

/// An admin operation's error as an answer: 400 for the caller's mistakes, 503 for storage.
async fn answered<T>(
    work: impl std::future::Future<Output = Result<T, admin::AdminError>>,
) -> Result<T, HttpResponse> {
    match work.await {
        Ok(value) => Ok(value),
        Err(admin::AdminError::Invalid(message)) => Err(error(
            actix_web::http::StatusCode::BAD_REQUEST,
            "bad_request",
            &message,
        )),
        Err(admin::AdminError::Storage(cause)) => {
            tracing::warn!(error = %cause, "Admin request failed: storage error.");
            Err(error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "storage is temporarily unavailable",
            ))
        }
    }
}

/// An admin operation's value as a 200 JSON answer, or its error as [`answered`] gives it.
async fn json_answer<T: serde::Serialize>(
    work: impl std::future::Future<Output = Result<T, admin::AdminError>>,
) -> HttpResponse {
    match answered(work).await {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(response) => response,
    }
}

/// The query string, parsed only once the caller is known to be the operator; `Err` is the
/// reason, for [`bad_query`].
fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, String> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| format!("invalid query string: {e}"))
}

fn bad_query(reason: &str) -> HttpResponse {
    error(
        actix_web::http::StatusCode::BAD_REQUEST,
        "bad_request",
        reason,
    )
}

/// The `{id}` path segment as sent.
fn path_id(req: &HttpRequest) -> String {
    req.match_info().get("id").unwrap_or_default().to_owned()
}

async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let query: ListQuery = match query(&req) {
        Ok(query) => query,
        Err(reason) => return bad_query(&reason),
    };
    json_answer(admin::list(&*state.store, &query)).await
}

async fn show(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let id = path_id(&req);
    match answered(admin::show(&*state.store, &id)).await {
        Ok(Some(body)) => HttpResponse::Ok().json(body),
        Ok(None) => error(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            "no stored event has this id",
        ),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkQuery {
    sink: Option<String>,
    limit: Option<usize>,
}

fn check_sink(state: &AppState, sink: Option<&str>) -> Option<HttpResponse> {
    match sink {
        Some(name) if state.dispatcher.route(name).is_none() => Some(error(
            actix_web::http::StatusCode::NOT_FOUND,
            "unknown_sink",
            "no sink with this name is configured",
        )),
        _ => None,
    }
}

async fn redeliver(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let id = path_id(&req);
    let sink = match query::<SinkQuery>(&req) {
        Ok(query) => query.sink,
        Err(reason) => return bad_query(&reason),
    };
    if let Some(refusal) = check_sink(&state, sink.as_deref()) {
        return refusal;
    }
    let now = state.clock.now().timestamp_millis();
    match answered(admin::redeliver(&*state.store, &id, sink.as_deref(), now)).await {
        Ok(Some(count)) => HttpResponse::Ok().json(json!({"redelivered": count})),
        Ok(None) => error(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            "no stored event has this id",
        ),
        Err(response) => response,
    }
}

async fn reprocess(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let id = path_id(&req);
    let now = state.clock.now();
    match answered(admin::reprocess(
        &*state.store,
        &state.registry,
        &state.ingestor,
        &id,
        now,
    ))
    .await
    {
        Ok(Some(body)) => HttpResponse::Ok().json(body),
        Ok(None) => error(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            "no stored event has this id",
        ),
        Err(response) => response,
    }
}

async fn dead_letters(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let query: SinkQuery = match query(&req) {
        Ok(query) => query,
        Err(reason) => return bad_query(&reason),
    };
    if let Some(refusal) = check_sink(&state, query.sink.as_deref()) {
        return refusal;
    }
    let limit = query.limit.unwrap_or(admin::DEFAULT_LIMIT);
    json_answer(admin::dead_letters(
        &*state.store,
        query.sink.as_deref(),
        limit,
    ))
    .await
}

async fn redeliver_dead(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refusal) = refuse(&req, &state) {
        return refusal;
    }
    let sink = match query::<SinkQuery>(&req) {
        Ok(query) => query.sink,
        Err(reason) => return bad_query(&reason),
    };
    if let Some(refusal) = check_sink(&state, sink.as_deref()) {
        return refusal;
    }
    let now = state.clock.now().timestamp_millis();
    match answered(admin::redeliver_dead_letters(
        &*state.store,
        sink.as_deref(),
        now,
    ))
    .await
    {
        Ok(count) => HttpResponse::Ok().json(json!({"redelivered": count})),
        Err(response) => response,
    }
}
