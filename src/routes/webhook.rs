//! `/webhooks/{name}`: the HTTP side of one delivery. Stages 1–8 of DESIGN §1 in order, then
//! the plan ([`crate::pipeline::plan`]) and the ingest step ([`crate::ingest`]); their typed
//! outcome becomes the answer here. Acknowledged requests log nothing above DEBUG; rejections
//! log one INFO line with the client IP, within a budget.

use actix_web::http::header::{ContentType, HeaderValue, CONTENT_TYPE};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::json;
use tracing::{field, info, warn, Instrument};

use super::AppState;
use crate::envelope::format_millis;
use crate::error::{GatewayError, READ_METHODS, RECEIVER_METHODS};
use crate::ingest::{Ingested, Status};
use crate::metrics::OUTCOME_REJECTED;
use crate::observe::{Answered, Rejection};
use crate::pipeline::plan::{self, Plan};
use crate::pipeline::signature::{self, hmac};
use crate::pipeline::{access, body, parse, Received};
use crate::provider::definition::{HandshakeMethod, HmacAlgorithm};
use crate::provider::kind::{Handshake, Kind, Reply};
use crate::provider::registry::Instance;
use crate::provider::source::{text_of, Context};
use crate::secret::digest_eq;
use crate::store::PauseTarget;

/// Metric label for requests to names that are not configured (bounded label values).
pub const UNKNOWN_PROVIDER_LABEL: &str = "unknown";
const OUTCOME_HANDSHAKE: &str = "handshake";
const JSON_CONTENT_TYPE: &str = "application/json";
/// With a kind's `accepted_reply`: `accepted` or `duplicate`.
pub const STATUS_HEADER: &str = "x-hookgate-status";
/// With a kind's `accepted_reply`: the gateway id of the (first) event.
pub const ID_HEADER: &str = "x-hookgate-id";

/// Where the instance name starts.
pub const PATH_PREFIX: &str = "/webhooks/";
const HEALTH_SUFFIX: &str = "health";

/// Everything under `/webhooks/`: `{name}` (the receiver, any method) and `{name}/health`.
/// Split by hand rather than by the router's patterns: actix matches `{name}` patterns with a
/// regular expression per route, a tenth of a duplicate's CPU.
pub async fn route(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    super::check_header_size(req.headers(), state.max_header_bytes)?;
    let tail = req.path().strip_prefix(PATH_PREFIX).unwrap_or_default();
    match tail.split_once('/') {
        None if !tail.is_empty() => {
            let name = tail.to_owned();
            receive(req, payload, name, state).await
        }
        Some((name, HEALTH_SUFFIX)) if !name.is_empty() => {
            if req.method() == Method::GET || req.method() == Method::HEAD {
                super::health::provider_health(&req, name, &state).await
            } else {
                Err(GatewayError::MethodNotAllowed {
                    method: req.method().to_string(),
                    allow: READ_METHODS,
                })
            }
        }
        _ => Err(GatewayError::NotFound),
    }
}

/// Every method on `/webhooks/{name}`: unknown names are 404 before the method is looked at.
async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    name: String,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    // A name that is not configured is whatever the caller put in the path: never logged.
    let label = if state.registry.get(&name).is_some() {
        name.as_str()
    } else {
        UNKNOWN_PROVIDER_LABEL
    };
    let span = tracing::debug_span!(
        "webhook",
        provider = %label,
        event_id = field::Empty,
        event_type = field::Empty,
        outcome = field::Empty,
    );
    async move {
        let started = std::time::Instant::now();
        let peer = req
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        // Resolved once: stage 4 uses it, and every rejection line names it.
        let client = access::client_ip(
            peer,
            req.headers(),
            &state.trusted_proxies,
            state.forwarded_header,
        );
        let mut seen = Seen::default();
        let result = handle(&req, payload, &name, &state, client, &mut seen).await;
        let known = state.instance_metrics.get(&name);
        let metrics = known.unwrap_or(&state.unknown_metrics);
        let elapsed = started.elapsed();
        metrics.duration.observe(elapsed.as_secs_f64());
        let now_ms = state.clock.now().timestamp_millis();
        let answered = match &result {
            Ok(_) => {
                metrics.acknowledged.inc();
                seen.answered
            }
            Err(e) => {
                let label = if known.is_some() {
                    name.as_str()
                } else {
                    UNKNOWN_PROVIDER_LABEL
                };
                state
                    .metrics
                    .requests
                    .with_label_values(&[label, OUTCOME_REJECTED, e.code()])
                    .inc();
                tracing::Span::current().record("outcome", e.code());
                let client_ip = client.ok().flatten().or(req.peer_addr().map(|a| a.ip()));
                log_rejection(&req, &state, label, client_ip, e);
                let spec = e.spec();
                state.observer.rejected(Rejection {
                    at_ms: now_ms,
                    instance: label.to_owned(),
                    client_ip,
                    status: spec.status.as_u16(),
                    code: spec.code,
                    message: e.to_string(),
                });
                Answered::Rejected
            }
        };
        state
            .observer
            .answered(&name, answered, elapsed, seen.skew_secs, now_ms);
        result
    }
    .instrument(span)
    .await
}

/// What the dashboard's counters learn from one request besides its result.
#[derive(Debug, Default)]
struct Seen {
    /// Receive time minus the signed timestamp, when the scheme checked one.
    skew_secs: Option<i64>,
    /// How a 2xx answered: accepted, duplicate, or something else (a handshake).
    answered: Answered,
}

/// One INFO line per rejection (WARN for storage trouble), with the client's address (as
/// resolved through trusted proxies; the peer when it could not be), unless the budget is
/// spent; the next line says how many were left out.
fn log_rejection(
    req: &HttpRequest,
    state: &AppState,
    provider: &str,
    client: Option<std::net::IpAddr>,
    error: &GatewayError,
) {
    let Some(suppressed) = state.rejection_log.admit() else {
        return;
    };
    let peer = req.peer_addr().map(|a| a.ip());
    let client_ip = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let spec = error.spec();
    let (code, retryable) = (spec.code, spec.retryable);
    match error {
        GatewayError::StorageUnavailable(cause) => {
            warn!(%provider, %client_ip, ?peer, code, retryable, error = %cause, suppressed, "Rejected: storage unavailable.")
        }
        // Its message repeats the path the caller sent; the code says enough.
        GatewayError::UnknownProvider(_) => {
            info!(%provider, %client_ip, ?peer, code, retryable, suppressed, "Rejected.")
        }
        _ => {
            info!(%provider, %client_ip, ?peer, code, retryable, reason = %error, suppressed, "Rejected.")
        }
    }
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    name: &str,
    state: &AppState,
    client: Result<Option<std::net::IpAddr>, access::ForwardedConflict>,
    seen: &mut Seen,
) -> Result<HttpResponse, GatewayError> {
    // 1. route
    let instance = state
        .registry
        .get(name)
        .cloned()
        .ok_or_else(|| GatewayError::UnknownProvider(name.to_owned()))?;
    // 2. method (GET and OPTIONS only for kinds with such handshakes, answered after the
    // access checks)
    let bodiless = match *req.method() {
        Method::GET => Some(HandshakeMethod::Get),
        Method::OPTIONS => Some(HandshakeMethod::Options),
        _ => None,
    }
    .filter(|m| instance.kind.has_handshakes_for(*m));
    if req.method() != Method::POST && bodiless.is_none() {
        return Err(GatewayError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: allowed_methods(&instance.kind),
        });
    }
    // paused: the provider retries later; nothing is read or stored
    if state.pauses.is_paused(PauseTarget::Instance, name) {
        return Err(GatewayError::Paused);
    }
    let headers = req.headers();
    if let Some(method) = bodiless {
        let client_ip = check_access(&instance, headers, client)?;
        return answer_bodiless(req, method, instance, client_ip, state);
    }
    // 3. body
    let body = body::read_limited(
        payload,
        headers,
        instance.body_limit,
        state.body_read_timeout,
    )
    .await?;
    // 4–6
    let client_ip = check_access(&instance, headers, client)?;
    // 7. signature (unless the kind declares this delivery unsigned)
    let received_at = state.clock.now();
    let kind_arc = instance.kind.clone();
    let has_secrets = !instance.secrets.is_empty();
    let unsigned = unsigned_handshake(&kind_arc, has_secrets, headers, req.query_string(), &body);
    if let Some((handshake, value)) = &unsigned {
        if !matches!(handshake.reply, Reply::Store) {
            tracing::Span::current().record("outcome", OUTCOME_HANDSHAKE);
            tracing::debug!(handshake = %handshake.name, "Unsigned handshake answered.");
            let ctx = Context::whole(value, headers, req.query_string());
            return handshake_reply(handshake, &ctx, &instance);
        }
    }
    let unsigned = unsigned.map(|(handshake, _)| handshake);
    let received = Received {
        instance,
        headers,
        query: req.query_string(),
        body,
        client_ip,
        received_at,
    };
    let verified = match unsigned {
        Some(_) => signature::Verified::unsigned(received),
        None => {
            let verified = signature::verify(received, received_at.timestamp());
            seen.skew_secs = signature::observed_skew();
            verified?
        }
    };
    let kind = &verified.instance.kind;
    // 10 first, when the event ID is in a header or at the body's top level: a duplicate needs
    // no tree of its body.
    let mut checked = None;
    if let Some(event_id) =
        plan::early_event_id(kind, headers, &verified.body).filter(|_| unsigned.is_none())
    {
        if let Some(known) = state
            .ingestor
            .known(&verified.instance, event_id.clone())
            .await?
        {
            seen.answered = Answered::Duplicate;
            return Ok(acknowledge(state, name, kind, &known));
        }
        checked = Some(event_id);
    }
    // 8. parse
    let value = parse::parse(&verified)?;
    // 9–13
    let max_events = verified.instance.batch_max_events;
    let planned = plan::plan(kind, &value, headers, &verified.body, max_events);
    // An unsigned delivery is stored only by the format its handshake names; anything else
    // about it (another format, a body that cannot be normalised) is refused, never kept.
    if let Some(handshake) = unsigned {
        let named = |events: &plan::Events<'_>| {
            events.rule.name.as_deref() == Some(handshake.name.as_str())
        };
        if !matches!(&planned, Plan::Events(events) if named(events)) {
            return Err(GatewayError::Signature(signature::SignatureError::Missing(
                "signature".into(),
            )));
        }
    }
    match planned {
        Plan::TooManyEvents { count, limit } => Err(GatewayError::TooManyEvents { count, limit }),
        Plan::Handshake(handshake) => {
            tracing::Span::current().record("outcome", OUTCOME_HANDSHAKE);
            tracing::debug!(handshake = %handshake.name, "Handshake answered.");
            let ctx = Context::whole(&value, headers, "");
            handshake_reply(handshake, &ctx, &verified.instance)
        }
        Plan::Unprocessable(error) => Err(state
            .ingestor
            .unprocessable(&verified, None, error)
            .await
            .into()),
        Plan::Events(events) => {
            if let Some((_, first)) = events.events.first() {
                tracing::Span::current().record("event_id", first.as_str());
            }
            let ingested = state
                .ingestor
                .ingest(&verified, events, checked.as_deref())
                .await?;
            if ingested.status() == Status::Accepted {
                // The receipt's time, for the provider's health.
                state
                    .last_events
                    .put(name, Some(format_millis(verified.received_at)));
            }
            seen.answered = match ingested.status() {
                Status::Accepted => Answered::Accepted,
                Status::Duplicate => Answered::Duplicate,
            };
            Ok(acknowledge(state, name, kind, &ingested))
        }
    }
}

/// Stages 4–6: allowlist, rate limit, Basic Auth. Returns the client's address.
fn check_access(
    instance: &Instance,
    headers: &actix_web::http::header::HeaderMap,
    client: Result<Option<std::net::IpAddr>, access::ForwardedConflict>,
) -> Result<Option<std::net::IpAddr>, GatewayError> {
    // 4. allowlist
    let client_ip = client.map_err(|_| GatewayError::ForwardedConflict)?;
    if !access::is_allowed(client_ip, &instance.allow_ips) {
        return Err(GatewayError::IpNotAllowed);
    }
    // 5. rate limit
    if let Some(limiter) = &instance.limiter {
        limiter
            .check(client_ip)
            .map_err(|wait| GatewayError::RateLimited {
                wait,
                status: instance.rate_limit_status,
            })?;
    }
    // 6. Basic Auth
    if let Some(auth) = &instance.basic_auth {
        if !auth.check(headers) {
            return Err(GatewayError::Unauthorized);
        }
    }
    Ok(client_ip)
}

/// Largest body an unsigned `store` handshake (Notion's verification token) may have.
const UNSIGNED_STORE_MAX_BYTES: usize = 1024;

/// `Allow` of `/webhooks/{name}`: POST, and the methods of the kind's bodiless handshakes.
fn allowed_methods(kind: &Kind) -> &'static str {
    match (
        kind.has_handshakes_for(HandshakeMethod::Get),
        kind.has_handshakes_for(HandshakeMethod::Options),
    ) {
        (true, true) => "GET, OPTIONS, POST",
        (true, false) => "GET, POST",
        (false, true) => "OPTIONS, POST",
        (false, false) => RECEIVER_METHODS,
    }
}

/// A delivery the kind declares unsigned (WooCommerce's ping, Notion's verification token),
/// recognised on the raw body read as JSON, else as a form; with the body as read. Only a
/// delivery without the kind's signature takes this path (a signed one is verified and
/// stored as usual), and one that would be stored only while the instance has no secret yet
/// and only when small: the provider sends its secret this way once, so once a secret is
/// configured nothing unsigned is ever stored.
fn unsigned_handshake<'k>(
    kind: &'k Kind,
    has_secrets: bool,
    headers: &actix_web::http::header::HeaderMap,
    query: &str,
    body: &[u8],
) -> Option<(&'k Handshake, serde_json::Value)> {
    if !kind.has_unsigned_handshakes() || kind.scheme.is_signed(headers, body, query) {
        return None;
    }
    let (handshake, value) = plan::unsigned_match(kind, headers, body)?;
    if matches!(handshake.reply, Reply::Store)
        && (has_secrets || body.len() > UNSIGNED_STORE_MAX_BYTES)
    {
        return None;
    }
    Some((handshake, value))
}

/// `GET` or `OPTIONS /webhooks/{name}` for kinds with such handshakes (Meta's `hub.challenge`,
/// Okta's verification, CloudEvents' validation): the handshake is authenticated by the
/// instance's `verify_token`, or by the kind's signature scheme over an empty body unless it is
/// `unsigned`, then answered; nothing is stored.
fn answer_bodiless(
    req: &HttpRequest,
    method: HandshakeMethod,
    instance: std::sync::Arc<Instance>,
    client_ip: Option<std::net::IpAddr>,
    state: &AppState,
) -> Result<HttpResponse, GatewayError> {
    let headers = req.headers();
    let null = serde_json::Value::Null;
    let ctx = Context::whole(&null, headers, req.query_string());
    let Some(handshake) = instance.kind.bodiless_handshake(method, &ctx) else {
        return Err(GatewayError::MethodNotAllowed {
            method: req.method().to_string(),
            allow: allowed_methods(&instance.kind),
        });
    };
    match &handshake.verify_token {
        Some(source) => {
            let sent = source.resolve(&ctx).and_then(|v| text_of(&v));
            let matched = matches!(
                (&sent, &instance.verify_token),
                (Some(sent), Some(token)) if digest_eq(token.expose(), sent.as_bytes())
            );
            if !matched {
                return Err(GatewayError::InvalidVerifyToken);
            }
        }
        None if handshake.unsigned => {}
        None => {
            let received_at = state.clock.now();
            let received = Received {
                instance: instance.clone(),
                headers,
                query: req.query_string(),
                body: web::Bytes::new(),
                client_ip,
                received_at,
            };
            signature::verify(received, received_at.timestamp())?;
        }
    }
    tracing::Span::current().record("outcome", OUTCOME_HANDSHAKE);
    tracing::debug!(handshake = %handshake.name, "Bodiless handshake answered.");
    handshake_reply(handshake, &ctx, &instance)
}

/// Stage 9: the reply a handshake asks for.
fn handshake_reply(
    handshake: &Handshake,
    ctx: &Context<'_>,
    instance: &Instance,
) -> Result<HttpResponse, GatewayError> {
    let missing = || GatewayError::InvalidPayload {
        format: "handshake",
        detail: format!("`{}` carries no value to answer with", handshake.name),
    };
    Ok(match &handshake.reply {
        Reply::Ack | Reply::Store => {
            HttpResponse::Ok().json(json!({"status": "ok", "handshake": handshake.name}))
        }
        Reply::Json(body) => HttpResponse::Ok().json(body),
        Reply::Header { source, header } => {
            let value = source
                .resolve(ctx)
                .and_then(|v| text_of(&v))
                .and_then(|v| HeaderValue::from_str(&v).ok())
                .ok_or_else(missing)?;
            HttpResponse::Ok()
                .insert_header((header.clone(), value))
                .finish()
        }
        Reply::Echo {
            source,
            field,
            content_type,
        } => {
            let value = source.resolve(ctx).ok_or_else(missing)?.into_owned();
            let mut answer = HttpResponse::Ok();
            let answer = match content_type {
                Some(content_type) => answer.content_type(content_type.as_str()),
                None if field.is_some() => answer.content_type(ContentType::json()),
                None => answer.content_type(ContentType::plaintext()),
            };
            match field {
                Some(field) => answer.body(json!({ field: value }).to_string()),
                None => answer.body(text_of(&value).unwrap_or_else(|| value.to_string())),
            }
        }
        Reply::HmacEcho {
            source,
            plain_field,
            mac_field,
        } => {
            let plain = source
                .resolve(ctx)
                .and_then(|v| text_of(&v))
                .ok_or_else(missing)?;
            // The signature stage has just verified this delivery with one of these secrets;
            // answer with the first, as the provider expects the current one.
            let secret = instance.secrets.first().ok_or_else(missing)?;
            let mac = hmac::mac(HmacAlgorithm::Sha256, secret.expose(), plain.as_bytes());
            HttpResponse::Ok().json(json!({ plain_field: plain, mac_field: hex::encode(mac) }))
        }
    })
}

/// `{"status", "id", "event_id"}` of the first event, and for batches `events`: every event.
#[derive(Serialize)]
struct Answer<'a> {
    status: &'static str,
    id: Option<&'a str>,
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventAnswer<'a>>>,
}

#[derive(Serialize)]
struct EventAnswer<'a> {
    event_id: &'a str,
    id: &'a str,
    status: &'static str,
}

/// Stage 13: the acknowledgement, serialised straight from the outcome.
fn acknowledge(state: &AppState, instance: &str, kind: &Kind, ingested: &Ingested) -> HttpResponse {
    let status = ingested.status().as_str();
    tracing::Span::current().record("outcome", status);
    if ingested.status() == Status::Duplicate {
        if let Some(metrics) = state.instance_metrics.get(instance) {
            metrics.duplicates.inc();
        }
    }
    // Every event of the delivery that was stored before (batches too), for the dashboard.
    let mut duplicates = ingested
        .events
        .iter()
        .filter(|e| e.status == Status::Duplicate)
        .peekable();
    if duplicates.peek().is_some() {
        let now_ms = state.clock.now().timestamp_millis();
        for event in duplicates {
            state.observer.duplicate_hit(&event.id, now_ms);
        }
    }
    // The `reply_from` sink's answer (sync mode), else the provider's own answer (Discord's
    // deferred response), stored or duplicate alike; the outcome and the gateway id go in
    // headers instead.
    let own = match (&ingested.reply, &kind.accepted_reply) {
        (Some(reply), _) => Some((
            reply.content_type.as_deref().unwrap_or(JSON_CONTENT_TYPE),
            reply.body.clone(),
        )),
        (None, Some(reply)) => Some((
            reply.content_type.as_str(),
            web::Bytes::from(reply.body.to_string()),
        )),
        (None, None) => None,
    };
    if let Some((content_type, body)) = own {
        let mut answer = HttpResponse::Ok();
        answer
            .content_type(content_type)
            .insert_header((STATUS_HEADER, status));
        if let Some(first) = ingested.events.first() {
            answer.insert_header((ID_HEADER, first.id.as_str()));
        }
        return answer.body(body);
    }
    let first = ingested.events.first();
    let answer = Answer {
        status,
        id: first.map(|e| e.id.as_str()),
        event_id: first.map(|e| e.event_id.as_str()),
        events: ingested.is_batch.then(|| {
            ingested
                .events
                .iter()
                .map(|e| EventAnswer {
                    event_id: &e.event_id,
                    id: &e.id,
                    status: e.status.as_str(),
                })
                .collect()
        }),
    };
    if ingested.status() == Status::Accepted {
        tracing::debug!("Accepted.");
    }
    if ingested.status() == Status::Duplicate {
        tracing::debug!("Duplicate acknowledged.");
    }
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE)))
        .body(serde_json::to_vec(&answer).unwrap_or_default())
}
