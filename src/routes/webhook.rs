//! `/webhooks/{name}`: drives one delivery through the stages of DESIGN §1, in order, and
//! records the outcome on the request's span.

use actix_web::http::{header::ContentType, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use tracing::{field, info, warn, Instrument};

use crate::config::DeliveryMode;
use crate::dispatch::{self, worker::Worker};
use crate::error::GatewayError;
use crate::pipeline::normalise::{self, EnvelopeInfo, NormaliseError};
use crate::pipeline::signature::{self, hmac, SignatureError, Verified};
use crate::pipeline::{access, body, parse, Received};
use crate::provider::definition::HmacAlgorithm;
use crate::provider::kind::{Handshake, Reply};
use crate::provider::registry::Instance;
use crate::provider::source::{text_of, Context};
use crate::startup::AppState;
use crate::store::{
    Commit, Committed, DedupKey, DeliveryRecord, DeliveryStatus, NewEnvelope, NewEvent, TaskStatus,
};

const STATUS_ACCEPTED: &str = "accepted";
const STATUS_DUPLICATE: &str = "duplicate";
/// How long sync-mode tasks are left to the request that created them before the background
/// workers may attempt them.
const SYNC_GRACE_MS: i64 = 60_000;
/// Metric label for requests to names that are not configured (bounded label values).
const UNKNOWN_PROVIDER_LABEL: &str = "unknown";
/// Replay-guard values are claimed under `<instance>#replay-guard`, apart from event IDs.
const REPLAY_GUARD_SUFFIX: &str = "#replay-guard";

/// Every method on `/webhooks/{name}`: unknown names are 404 before the method is looked at.
pub async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let name = name.into_inner();
    let span = tracing::info_span!(
        "webhook",
        provider = %name,
        event_id = field::Empty,
        outcome = field::Empty,
    );
    async move {
        let started = std::time::Instant::now();
        let result = handle(&req, payload, &name, &state).await;
        let label = if state.registry.get(&name).is_some() {
            name.as_str()
        } else {
            UNKNOWN_PROVIDER_LABEL
        };
        let (outcome, code) = match &result {
            Ok(_) => ("ok", ""),
            Err(e) => ("rejected", e.code()),
        };
        state
            .metrics
            .requests
            .with_label_values(&[label, outcome, code])
            .inc();
        state
            .metrics
            .request_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        let span = tracing::Span::current();
        match &result {
            Ok(_) => {}
            Err(e) => {
                span.record("outcome", e.code());
                match e {
                    GatewayError::StorageUnavailable(cause) => {
                        warn!(error = %cause, "Rejected: storage unavailable.")
                    }
                    _ => info!(code = e.code(), reason = %e, "Rejected."),
                }
            }
        }
        result
    }
    .instrument(span)
    .await
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    name: &str,
    state: &AppState,
) -> Result<HttpResponse, GatewayError> {
    // 1. route
    let instance = state
        .registry
        .get(name)
        .cloned()
        .ok_or_else(|| GatewayError::UnknownProvider(name.to_owned()))?;
    // 2. method
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed(req.method().to_string()));
    }
    // 3. body
    let headers = req.headers();
    let body = body::read_limited(
        payload,
        headers,
        instance.body_limit,
        state.body_read_timeout,
    )
    .await?;
    // 4. allowlist
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let client_ip = access::client_ip(peer, headers, &state.trusted_proxies);
    if !access::is_allowed(client_ip, &instance.allow_ips) {
        return Err(GatewayError::IpNotAllowed);
    }
    // 5. rate limit
    if let Some(limiter) = &instance.limiter {
        limiter
            .check(client_ip)
            .map_err(GatewayError::RateLimited)?;
    }
    // 6. Basic Auth
    if let Some(auth) = &instance.basic_auth {
        if !auth.check(headers) {
            return Err(GatewayError::Unauthorized);
        }
    }
    // 7. signature
    let received_at = state.clock.now();
    let received = Received {
        instance,
        headers: headers.clone(),
        query: req.query_string().to_owned(),
        body,
        client_ip,
        received_at,
    };
    let verified = signature::verify(received, received_at.timestamp())?;
    // 8. parse
    let value = parse::parse(&verified)?;
    accept(&verified, &value, state).await
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
        Reply::Ack => HttpResponse::Ok().json(json!({"status": "ok", "handshake": handshake.name})),
        Reply::Json(body) => HttpResponse::Ok().json(body),
        Reply::Echo { source, field } => {
            let value = source.resolve(ctx).ok_or_else(missing)?.into_owned();
            match field {
                Some(field) => HttpResponse::Ok().json(json!({ field: value })),
                None => HttpResponse::Ok()
                    .content_type(ContentType::plaintext())
                    .body(text_of(&value).unwrap_or_else(|| value.to_string())),
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

/// Stages 9–13 for a verified, parsed delivery.
async fn accept(
    delivery: &Verified,
    value: &serde_json::Value,
    state: &AppState,
) -> Result<HttpResponse, GatewayError> {
    let instance = &delivery.instance;
    let kind = &instance.kind;
    let root = Context {
        body: value,
        root: value,
        headers: &delivery.headers,
        current: None,
    };
    // 9. handshakes
    if let Some(handshake) = kind.handshake(&root) {
        tracing::Span::current().record("outcome", "handshake");
        info!(handshake = %handshake.name, "Handshake answered.");
        return handshake_reply(handshake, &root, instance);
    }
    let mut record = DeliveryRecord {
        id: state.ids.next(delivery.received_at),
        provider: instance.name.clone(),
        kind: kind.name.clone(),
        event_id: None,
        received_at: crate::envelope::format_millis(delivery.received_at),
        client_ip: delivery.client_ip.map(|ip| ip.to_string()),
        headers: delivery
            .headers
            .iter()
            .filter(|(name, _)| !kind.secret_headers.contains(name))
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        status: DeliveryStatus::Accepted,
        error: None,
        envelope_ids: Vec::new(),
    };
    // 10. event IDs and the duplicate check (fast path; the commit claims atomically)
    let rule = kind.format(&root);
    let elements = match rule.map(|r| normalise::elements(r, value)) {
        Some(Ok(elements)) => elements,
        Some(Err(e)) => return unprocessable(record, delivery, e, state).await,
        None => vec![value],
    };
    let is_batch = rule.is_some_and(|r| r.batch.is_some());
    let mut events = Vec::with_capacity(elements.len());
    for element in &elements {
        let ctx = Context {
            body: element,
            ..root
        };
        let event_id = normalise::event_id(rule, &ctx, &delivery.body);
        let known = state
            .store
            .find_duplicate(&DedupKey {
                provider: instance.name.clone(),
                event_id: event_id.clone(),
            })
            .await?;
        events.push((*element, event_id, known));
    }
    if let Some((_, first_id, _)) = events.first() {
        tracing::Span::current().record("event_id", first_id.as_str());
        record.event_id = Some(first_id.clone());
    }
    if !events.is_empty() && events.iter().all(|(_, _, known)| known.is_some()) {
        let outcomes: Vec<_> = events
            .iter()
            .map(|(_, event_id, known)| {
                (
                    event_id.as_str(),
                    known.as_deref().unwrap_or_default(),
                    STATUS_DUPLICATE,
                )
            })
            .collect();
        if instance.mode == DeliveryMode::Sync {
            let ids: Vec<String> = outcomes.iter().map(|(_, id, _)| id.to_string()).collect();
            deliver_now(state, &ids).await?;
        }
        state
            .metrics
            .duplicates
            .with_label_values(&[&instance.name])
            .inc();
        return Ok(answer(STATUS_DUPLICATE, &outcomes, is_batch));
    }
    // 11. normalise
    let Some(rule) = rule else {
        return unprocessable(record, delivery, NormaliseError::NoFormat, state).await;
    };
    let mut new_events = Vec::with_capacity(events.len());
    for (element, event_id, known) in &events {
        if known.is_some() {
            continue;
        }
        let info = EnvelopeInfo {
            id: if new_events.is_empty() {
                record.id.clone()
            } else {
                state.ids.next(delivery.received_at)
            },
            provider: &instance.name,
            kind: &kind.name,
            event_id: event_id.clone(),
            received_at: delivery.received_at,
        };
        match normalise::envelope(rule, element, value, &delivery.headers, info) {
            Ok(envelope) => new_events.push(NewEnvelope {
                dedup: DedupKey {
                    provider: instance.name.clone(),
                    event_id: event_id.clone(),
                },
                sinks: dispatch::matching_sinks(&state.routes, &envelope),
                lane: dispatch::lane(&envelope),
                // In sync mode the request delivers first; the workers take over after that.
                not_before_ms: delivery.received_at.timestamp_millis()
                    + if instance.mode == DeliveryMode::Sync {
                        SYNC_GRACE_MS
                    } else {
                        0
                    },
                envelope,
            }),
            Err(e) => return unprocessable(record, delivery, e, state).await,
        }
    }
    if new_events.is_empty() {
        // An empty batch: nothing to store, nothing to lose.
        return Ok(answer(STATUS_ACCEPTED, &[], is_batch));
    }
    let replay_guard = kind.scheme.replay_guard().and_then(|source| {
        source
            .resolve(&root)
            .and_then(|v| text_of(&v))
            .map(|token| DedupKey {
                provider: format!("{}{REPLAY_GUARD_SUFFIX}", instance.name),
                event_id: token,
            })
    });
    // 12. persist (claims + events, durably)
    let stored_ids: Vec<String> = new_events.iter().map(|e| e.envelope.id.clone()).collect();
    let committed = state
        .store
        .commit(NewEvent {
            delivery: record,
            body: delivery.body.clone(),
            events: new_events,
            replay_guard,
        })
        .await?;
    let results = match committed {
        Commit::Stored(results) => results,
        Commit::Replayed => {
            return Err(GatewayError::Signature(SignatureError::Other(
                "this signature was already used by another delivery (replay)".into(),
            )))
        }
    };
    // 13. acknowledge
    let mut results = results.into_iter().zip(stored_ids);
    let outcomes: Vec<(&str, String, &str)> = events
        .iter()
        .map(|(_, event_id, known)| match known {
            Some(id) => (event_id.as_str(), id.clone(), STATUS_DUPLICATE),
            None => match results.next() {
                Some((Committed::Accepted, id)) => (event_id.as_str(), id, STATUS_ACCEPTED),
                Some((Committed::Duplicate { id }, _)) => (event_id.as_str(), id, STATUS_DUPLICATE),
                None => (event_id.as_str(), String::new(), STATUS_DUPLICATE),
            },
        })
        .collect();
    let outcomes: Vec<(&str, &str, &str)> = outcomes
        .iter()
        .map(|(event_id, id, status)| (*event_id, id.as_str(), *status))
        .collect();
    let any_accepted = outcomes.iter().any(|(_, _, s)| *s == STATUS_ACCEPTED);
    if instance.mode == DeliveryMode::Sync {
        let ids: Vec<String> = outcomes.iter().map(|(_, id, _)| id.to_string()).collect();
        deliver_now(state, &ids).await?;
    }
    if !any_accepted {
        state
            .metrics
            .duplicates
            .with_label_values(&[&instance.name])
            .inc();
    }
    if any_accepted {
        info!(id = outcomes[0].1, events = outcomes.len(), "Accepted.");
    }
    let status = if any_accepted {
        STATUS_ACCEPTED
    } else {
        STATUS_DUPLICATE
    };
    Ok(answer(status, &outcomes, is_batch))
}

/// Sync mode: delivers the envelopes' pending tasks now, sink by sink; any failure is a 503 so
/// the provider retries (the duplicate check then leads straight back here).
async fn deliver_now(state: &AppState, envelope_ids: &[String]) -> Result<(), GatewayError> {
    for route in &state.routes {
        let mut due = Vec::new();
        for id in envelope_ids {
            let pending = state
                .store
                .tasks(id)?
                .iter()
                .any(|t| t.sink == route.name && t.status == TaskStatus::Pending);
            if pending {
                due.push(id.clone());
            }
        }
        if due.is_empty() {
            continue;
        }
        let worker = Worker {
            store: state.store.clone(),
            route: route.clone(),
            clock: state.clock.clone(),
            metrics: state.metrics.clone(),
        };
        let delivered = worker
            .deliver(&due)
            .await
            .map_err(|e| GatewayError::DeliveryFailed(format!("sink `{}`: {e}", route.name)))?;
        if !delivered {
            return Err(GatewayError::DeliveryFailed(format!(
                "sink `{}` did not accept the event; it will be retried",
                route.name
            )));
        }
    }
    Ok(())
}

/// Stage 11 failed: keep the raw delivery for inspection, answer 422, claim nothing.
async fn unprocessable(
    mut record: DeliveryRecord,
    delivery: &Verified,
    error: NormaliseError,
    state: &AppState,
) -> Result<HttpResponse, GatewayError> {
    record.status = DeliveryStatus::Unprocessable;
    record.error = Some(error.to_string());
    state
        .store
        .keep_unprocessable(record, delivery.body.clone())
        .await?;
    Err(GatewayError::UnprocessableEvent(error.to_string()))
}

/// The answer: `{"status", "id", "event_id"}` of the first event, and for batches every event.
fn answer(status: &str, events: &[(&str, &str, &str)], is_batch: bool) -> HttpResponse {
    tracing::Span::current().record("outcome", status);
    if status == STATUS_DUPLICATE {
        info!("Duplicate acknowledged.");
    }
    let (event_id, id) = events
        .first()
        .map(|(event_id, id, _)| (json!(event_id), json!(id)))
        .unwrap_or((serde_json::Value::Null, serde_json::Value::Null));
    let mut body = json!({"status": status, "id": id, "event_id": event_id});
    if is_batch {
        body["events"] = events
            .iter()
            .map(|(event_id, id, status)| json!({"event_id": event_id, "id": id, "status": status}))
            .collect();
    }
    HttpResponse::Ok().json(body)
}
