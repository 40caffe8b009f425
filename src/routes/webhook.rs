//! `/webhooks/{name}`: drives one delivery through the stages of DESIGN §1, in order, and
//! records the outcome on the request's span.

use actix_web::http::{header::ContentType, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use tracing::{field, info, warn, Instrument};

use crate::error::GatewayError;
use crate::pipeline::normalise::{self, EnvelopeInfo};
use crate::pipeline::signature::{self, Verified};
use crate::pipeline::{access, body, parse, Received};
use crate::provider::kind::{reply_value, Reply};
use crate::provider::source::{text_of, Context};
use crate::startup::AppState;
use crate::store::{Committed, DedupKey, DeliveryRecord, DeliveryStatus, NewEvent};

const STATUS_ACCEPTED: &str = "accepted";
const STATUS_DUPLICATE: &str = "duplicate";

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
        let result = handle(&req, payload, &name, &state).await;
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
        body,
        client_ip,
        received_at,
    };
    let verified = signature::verify(received, received_at.timestamp())?;
    // 8. parse
    let value = parse::parse(&verified)?;
    accept(&verified, &value, state).await
}

/// Stages 9–13 for a verified, parsed delivery.
async fn accept(
    delivery: &Verified,
    value: &serde_json::Value,
    state: &AppState,
) -> Result<HttpResponse, GatewayError> {
    let instance = &delivery.instance;
    let kind = &instance.kind;
    let ctx = Context {
        body: value,
        headers: &delivery.headers,
        current: None,
    };
    // 9. handshakes
    if let Some(handshake) = kind.handshake(&ctx) {
        tracing::Span::current().record("outcome", "handshake");
        info!(handshake = %handshake.name, "Handshake answered.");
        return Ok(
            match (&handshake.reply, reply_value(&handshake.reply, &ctx)) {
                (Reply::Echo { field: None, .. }, Some(v)) => HttpResponse::Ok()
                    .content_type(ContentType::plaintext())
                    .body(text_of(&v).unwrap_or_else(|| v.to_string())),
                (Reply::Echo { field: Some(f), .. }, Some(v)) => {
                    HttpResponse::Ok().json(json!({ f: v }))
                }
                _ => HttpResponse::Ok().json(json!({"status": "ok", "handshake": handshake.name})),
            },
        );
    }
    // 10. event ID and duplicate check (fast path; the commit claims atomically)
    let rule = kind.format(&ctx);
    let event_id = normalise::event_id(rule, &ctx, &delivery.body);
    tracing::Span::current().record("event_id", event_id.as_str());
    let dedup = DedupKey {
        provider: instance.name.clone(),
        event_id: event_id.clone(),
    };
    if let Some(id) = state.store.find_duplicate(&dedup)? {
        return Ok(answer(STATUS_DUPLICATE, &id, &event_id));
    }

    // 11. normalise
    let id = state.ids.next(delivery.received_at);
    let mut record = DeliveryRecord {
        id: id.clone(),
        provider: instance.name.clone(),
        kind: kind.name.clone(),
        event_id: Some(event_id.clone()),
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
    let envelope = rule
        .ok_or(normalise::NormaliseError::NoFormat)
        .and_then(|rule| {
            normalise::envelope(
                rule,
                value,
                &delivery.headers,
                EnvelopeInfo {
                    id: id.clone(),
                    provider: &instance.name,
                    kind: &kind.name,
                    event_id: event_id.clone(),
                    received_at: delivery.received_at,
                },
            )
        });
    let envelope = match envelope {
        Ok(envelope) => envelope,
        Err(e) => {
            record.status = DeliveryStatus::Unprocessable;
            record.error = Some(e.to_string());
            state
                .store
                .keep_unprocessable(record, delivery.body.clone())
                .await?;
            return Err(GatewayError::UnprocessableEvent(e.to_string()));
        }
    };
    record.envelope_ids.push(envelope.id.clone());
    // 12. persist (claim + event, durably)
    let committed = state
        .store
        .commit(NewEvent {
            dedup,
            delivery: record,
            body: delivery.body.clone(),
            envelopes: vec![envelope],
        })
        .await?;
    // 13. acknowledge
    Ok(match committed {
        Committed::Accepted => {
            info!(id = %id, "Accepted.");
            answer(STATUS_ACCEPTED, &id, &event_id)
        }
        Committed::Duplicate { id } => answer(STATUS_DUPLICATE, &id, &event_id),
    })
}

fn answer(status: &str, id: &str, event_id: &str) -> HttpResponse {
    tracing::Span::current().record("outcome", status);
    if status == STATUS_DUPLICATE {
        info!(id, "Duplicate acknowledged.");
    }
    HttpResponse::Ok().json(json!({"status": status, "id": id, "event_id": event_id}))
}
