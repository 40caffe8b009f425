//! HTTP routes: the webhook receiver and the health endpoints, plus JSON answers for unknown
//! routes and methods.

pub mod admin;
pub mod health;
pub mod webhook;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::clock::Clock;
use crate::dispatch::Dispatcher;
use crate::error::GatewayError;
use crate::ingest::Ingestor;
use crate::metrics::{InstanceMetrics, Metrics};
use crate::provider::registry::Registry;
use crate::secret::Secret;
use crate::store::Store;
use crate::telemetry::LogBudget;

/// What every request handler shares.
pub struct AppState {
    pub registry: Registry,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// Stages 10–12: duplicate check, envelopes, commit.
    pub ingestor: Ingestor,
    /// The sinks and their workers.
    pub dispatcher: Arc<Dispatcher>,
    pub trusted_proxies: Vec<IpNet>,
    /// `server.forwarded_header`: the one header trusted proxies are believed in.
    pub forwarded_header: crate::config::ForwardedHeader,
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// Per-instance metric handles, by instance name.
    pub instance_metrics: HashMap<String, InstanceMetrics>,
    /// Handles of requests to names that are not configured.
    pub unknown_metrics: InstanceMetrics,
    /// Bounds the rejection lines in the log.
    pub rejection_log: LogBudget,
    /// Bearer token of `/admin`; `None` disables it.
    pub admin_token: Option<Secret>,
    /// `admin.protect_metrics`: `/metrics` needs the admin token too.
    pub protect_metrics: bool,
    /// `storage.retention_secs`; 0 keeps deliveries forever.
    pub retention_secs: u64,
    /// Paused instances and sinks, as last read from the store.
    pub pauses: Arc<crate::pause::Pauses>,
    /// Per instance, the last event time `/webhooks/{name}/health` reports.
    pub last_events: health::LastEvents,
    /// Counters and the rejection ring of the dashboard (`/ui/instances`, `/ui/rejected`).
    pub observer: Arc<crate::observe::Observer>,
    /// Wrong admin tokens per client (`/admin` refuses guessing past a budget).
    pub admin_failures: admin::TokenFailures,
}

/// The client's address: the peer, or what a trusted proxy says in `server.forwarded_header`;
/// `None` when the peer is unknown or the proxies' headers conflict.
pub fn request_client_ip(
    req: &actix_web::HttpRequest,
    state: &AppState,
) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    crate::pipeline::access::client_ip(
        peer,
        req.headers(),
        &state.trusted_proxies,
        state.forwarded_header,
    )
    .ok()
    .flatten()
}

/// Any route that does not exist.
pub async fn not_found() -> HttpResponse {
    GatewayError::NotFound.error_response()
}

/// `Err` when the request's headers add up to more than `limit` bytes (431).
pub fn check_header_size(headers: &HeaderMap, limit: usize) -> Result<(), GatewayError> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return Err(GatewayError::HeadersTooLarge { limit });
    }
    Ok(())
}

/// Refuses requests whose headers add up to more than `server.max_header_bytes` with a JSON 431,
/// before any route runs. (actix-http itself caps the head at 128 KiB and 96 headers.) The
/// webhook receiver calls [`check_header_size`] itself instead.
pub async fn limit_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map_or(usize::MAX, |state| state.max_header_bytes);
    if let Err(e) = check_header_size(req.headers(), limit) {
        let response = e.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}
