//! The operator's view of the store: list and show stored events with their deliveries and
//! attempts, redeliver events or dead letters, and pause or resume instances and sinks. Served under `/admin` ([`crate::routes::admin`])
//! and by `hookgate events`, which calls these functions on the running gateway's API or, when
//! no gateway holds the store, on the store directly. Output never contains a secret:
//! credential headers are not stored in the first place.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::envelope::Envelope;
use crate::ingest::{IngestError, Ingestor};
use crate::observe::{Observer, RejectionQuery, REJECTION_RING};
use crate::pipeline::normalise::{self, EnvelopeInfo};
use crate::pipeline::plan::{self, Plan};
use crate::pipeline::signature::Verified;
use crate::pipeline::{parse, Received};
use crate::provider::registry::Registry;
use crate::store::{
    AttemptRecord, EventQuery, EventStatus, EventSummary, PauseTarget, Receipt, Store, StoreError,
    TaskRecord,
};

/// Default and largest page size of `list`.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// `?provider=&status=&event_id=&type=&object=&action=&since=&until=&limit=&before=`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub provider: Option<String>,
    /// `accepted`, `unprocessable`, `pending`, `delivered` or `dead`.
    pub status: Option<String>,
    /// The provider's event id (any event of a batch).
    pub event_id: Option<String>,
    /// A glob over the provider's event type, e.g. `customer.*`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// A glob over the envelope `object`, e.g. `deal` or `customer*`.
    pub object: Option<String>,
    /// The canonical `action`, e.g. `updated` (with `object`: of the same envelope).
    pub action: Option<String>,
    /// Received at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Received before this time (RFC 3339).
    pub until: Option<String>,
    pub limit: Option<usize>,
    /// Page: receipts older than this gateway id.
    pub before: Option<String>,
}

/// Why an admin operation failed: the caller's mistake (400) or storage trouble (503).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("storage error: {0}")]
    Storage(#[from] StoreError),
}

fn task_json(task: &TaskRecord) -> Value {
    json!({
        "sink": task.sink,
        "status": task.status,
        "attempts": task.attempts,
        "next_attempt_at": task.next_attempt_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(crate::envelope::format_millis),
        "last_error": task.last_error,
    })
}

fn time_ms(name: &str, text: &Option<String>) -> Result<Option<i64>, AdminError> {
    text.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.timestamp_millis())
                .map_err(|e| AdminError::Invalid(format!("`{name}` is not an RFC 3339 time: {e}")))
        })
        .transpose()
}

impl ListQuery {
    /// The store query these parameters ask for.
    pub fn to_query(&self) -> Result<EventQuery, AdminError> {
        let status = self
            .status
            .as_deref()
            .map(|s| {
                EventStatus::parse(s).ok_or_else(|| {
                    let names: Vec<&str> = EventStatus::ALL.iter().map(|(n, _)| *n).collect();
                    AdminError::Invalid(format!(
                        "status must be one of {}, not `{s}`",
                        names.join(", ")
                    ))
                })
            })
            .transpose()?;
        let event_type = self
            .event_type
            .as_deref()
            .map(|t| {
                glob::Pattern::new(t)
                    .map_err(|e| AdminError::Invalid(format!("`type` is not a valid glob: {e}")))
            })
            .transpose()?;
        let object = self
            .object
            .as_deref()
            .map(|t| {
                glob::Pattern::new(t)
                    .map_err(|e| AdminError::Invalid(format!("`object` is not a valid glob: {e}")))
            })
            .transpose()?;
        Ok(EventQuery {
            provider: self.provider.clone(),
            status,
            event_id: self.event_id.clone(),
            event_type,
            object,
            action: self.action.clone(),
            since_ms: time_ms("since", &self.since)?,
            until_ms: time_ms("until", &self.until)?,
            before: self.before.clone(),
            limit: self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        })
    }
}

/// Newest first; `next` is the `before` of the following page.
pub async fn list(store: &dyn Store, query: &ListQuery) -> Result<Value, AdminError> {
    let page = store.events(query.to_query()?).await?;
    let events: Vec<Value> = page.events.iter().map(summary).collect();
    Ok(json!({"events": events, "next": page.next}))
}

fn summary(event: &EventSummary) -> Value {
    let record = &event.receipt;
    json!({
        "id": record.id,
        "provider": record.provider,
        "kind": record.kind,
        "event_id": record.event_id,
        "received_at": record.received_at,
        "status": record.status,
        "error": record.error,
        "envelope_ids": record.envelope_ids,
        "deliveries": event.tasks.iter().map(|t| json!({"envelope_id": t.envelope_id, "sink": t.sink, "status": t.status, "attempts": t.attempts})).collect::<Vec<_>>(),
    })
}

/// The envelopes a gateway id names: a receipt's, or the one envelope with that id.
async fn envelope_ids(store: &dyn Store, id: &str) -> Result<Option<Vec<String>>, StoreError> {
    if let Some((receipt, _)) = store.receipt(id.to_owned()).await? {
        return Ok(Some(receipt.envelope_ids));
    }
    match store.envelope(id.to_owned()).await {
        Ok(Some(_)) | Err(StoreError::Unreadable(_)) => Ok(Some(vec![id.to_owned()])),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One stored event as the operator sees it: the receipt with its exact body (absent when
/// `id` named an envelope), and each envelope with its deliveries.
#[derive(Debug)]
pub struct EventDetail {
    pub receipt: Option<(Receipt, bytes::Bytes)>,
    pub envelopes: Vec<EnvelopeDetail>,
}

/// One envelope of an event with, per sink, the task and every attempt.
#[derive(Debug)]
pub struct EnvelopeDetail {
    pub id: String,
    /// `Err`: why the stored envelope cannot be read (its tasks are dead letters with it).
    pub envelope: Result<Envelope, String>,
    pub deliveries: Vec<(TaskRecord, Vec<AttemptRecord>)>,
}

/// Everything about one stored event; `id` is a receipt id or an envelope id.
pub async fn detail(store: &dyn Store, id: &str) -> Result<Option<EventDetail>, AdminError> {
    let receipt = store.receipt(id.to_owned()).await?;
    let envelope_ids = match &receipt {
        Some((record, _)) => record.envelope_ids.clone(),
        None => match store.envelope(id.to_owned()).await {
            Ok(Some(_)) | Err(StoreError::Unreadable(_)) => vec![id.to_owned()],
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    let mut envelopes = Vec::new();
    for envelope_id in envelope_ids {
        // An envelope that cannot be read is shown with the reason, not turned into a failed
        // answer.
        let envelope = match store.envelope(envelope_id.clone()).await {
            Ok(Some(envelope)) => Ok(envelope),
            Ok(None) => continue,
            Err(e @ StoreError::Unreadable(_)) => Err(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        let mut deliveries = Vec::new();
        for task in store.tasks(envelope_id.clone()).await? {
            let attempts = store
                .attempts(envelope_id.clone(), task.sink.clone())
                .await?;
            deliveries.push((task, attempts));
        }
        envelopes.push(EnvelopeDetail {
            id: envelope_id,
            envelope,
            deliveries,
        });
    }
    Ok(Some(EventDetail { receipt, envelopes }))
}

/// [`detail`] as JSON: the receipt, its envelopes, and per sink the task and every attempt.
pub async fn show(store: &dyn Store, id: &str) -> Result<Option<Value>, AdminError> {
    let Some(detail) = detail(store, id).await? else {
        return Ok(None);
    };
    let envelopes: Vec<Value> = detail
        .envelopes
        .iter()
        .map(|item| {
            let deliveries: Vec<Value> = item
                .deliveries
                .iter()
                .map(|(task, attempts)| {
                    let mut entry = task_json(task);
                    entry["attempts_made"] = json!(attempts);
                    entry
                })
                .collect();
            match &item.envelope {
                Ok(envelope) => json!({"envelope": envelope, "deliveries": deliveries}),
                Err(error) => json!({
                    "envelope": {"id": item.id},
                    "deliveries": deliveries,
                    "error": error,
                }),
            }
        })
        .collect();
    let raw = detail.receipt.map(|(record, body)| {
        let (body, encoding) = match std::str::from_utf8(&body) {
            Ok(text) => (Value::String(text.to_owned()), "utf-8"),
            Err(_) => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(&body)),
                "base64",
            ),
        };
        json!({"record": record, "body": body, "body_encoding": encoding})
    });
    Ok(Some(
        json!({"id": id, "delivery": raw, "envelopes": envelopes}),
    ))
}

/// Redelivers every envelope of a stored event (all sinks, or one).
pub async fn redeliver(
    store: &dyn Store,
    id: &str,
    sink: Option<&str>,
    now_ms: i64,
) -> Result<Option<usize>, AdminError> {
    let Some(ids) = envelope_ids(store, id).await? else {
        return Ok(None);
    };
    let mut count = 0;
    for envelope_id in ids {
        count += store
            .redeliver(envelope_id, sink.map(str::to_owned), now_ms)
            .await?;
    }
    Ok(Some(count))
}

/// Lists dead letters (optionally of one sink).
pub async fn dead_letters(
    store: &dyn Store,
    sink: Option<&str>,
    limit: usize,
) -> Result<Value, AdminError> {
    let tasks = store
        .dead_letters(sink.map(str::to_owned), limit.clamp(1, MAX_LIMIT))
        .await?;
    let items: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let mut v = task_json(t);
            v["envelope_id"] = json!(t.envelope_id);
            v
        })
        .collect();
    Ok(json!({"dead_letters": items}))
}

/// Redelivers every dead letter (optionally of one sink).
pub async fn redeliver_dead_letters(
    store: &dyn Store,
    sink: Option<&str>,
    now_ms: i64,
) -> Result<usize, AdminError> {
    let mut count = 0;
    loop {
        let batch = store
            .dead_letters(sink.map(str::to_owned), MAX_LIMIT)
            .await?;
        if batch.is_empty() {
            return Ok(count);
        }
        let before = count;
        for task in batch {
            count += store
                .redeliver(task.envelope_id, Some(task.sink), now_ms)
                .await?;
        }
        if count == before {
            return Ok(count); // nothing left that can be rescheduled
        }
    }
}

/// Names of one target (instances or sinks) with their pause state:
/// `{"<target>s": [{"name", "paused", "paused_at"}]}`.
pub async fn pause_states(
    store: &dyn Store,
    target: PauseTarget,
    names: &[String],
) -> Result<Value, AdminError> {
    let paused = store.paused().await?;
    let list: Vec<Value> = names
        .iter()
        .map(|name| {
            let pause = paused
                .iter()
                .find(|p| p.target == target && &p.name == name);
            json!({
                "name": name,
                "paused": pause.is_some(),
                "paused_at": pause
                    .and_then(|p| chrono::DateTime::from_timestamp_millis(p.paused_at_ms))
                    .map(crate::envelope::format_millis),
            })
        })
        .collect();
    Ok(json!({ format!("{}s", target.as_str()): list }))
}

/// Pauses or resumes one configured instance or sink, durably:
/// `{"<target>": name, "paused": bool, "changed": bool}`.
pub async fn set_paused(
    store: &dyn Store,
    target: PauseTarget,
    name: &str,
    paused: bool,
    now_ms: i64,
) -> Result<Value, AdminError> {
    let changed = store
        .set_paused(target, name.to_owned(), paused, now_ms)
        .await?;
    Ok(json!({ target.as_str(): name, "paused": paused, "changed": changed }))
}

/// `hookgate events reprocess ID`: the stored raw delivery `id` (typically `unprocessable`,
/// after a definition fix) through parsing and normalisation with the current definitions,
/// without verification (it was verified when it arrived). New envelopes are stored and
/// delivered like any event, as a new receipt; events already stored are `duplicate`.
/// `Ok(None)` when no receipt has this id.
pub async fn reprocess(
    store: &dyn Store,
    registry: &Registry,
    ingestor: &Ingestor,
    id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Value>, AdminError> {
    let Some((receipt, body)) = store.receipt(id.to_owned()).await? else {
        return Ok(None);
    };
    let instance = registry.get(&receipt.provider).cloned().ok_or_else(|| {
        AdminError::Invalid(format!(
            "instance `{}` is no longer configured",
            receipt.provider
        ))
    })?;
    let mut headers = HeaderMap::new();
    for (name, value) in &receipt.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let verified = Verified::stored(Received {
        instance,
        headers: &headers,
        query: "",
        body,
        client_ip: receipt.client_ip.as_deref().and_then(|ip| ip.parse().ok()),
        received_at: now,
    });
    let value = parse::parse(&verified)
        .map_err(|e| AdminError::Invalid(format!("the stored body does not parse: {e}")))?;
    let kind = &verified.instance.kind;
    let max_events = verified.instance.batch_max_events;
    let events = match plan::plan(kind, &value, &headers, &verified.body, max_events) {
        Plan::Events(events) => events,
        Plan::Unprocessable(e) => {
            return Err(AdminError::Invalid(format!(
                "still cannot be normalised with the current definition of `{}`: {e}",
                kind.name
            )))
        }
        Plan::Handshake(h) => {
            return Err(AdminError::Invalid(format!(
                "the stored delivery is a `{}` handshake",
                h.name
            )))
        }
        Plan::TooManyEvents { count, limit } => {
            return Err(AdminError::Invalid(format!(
                "the stored delivery carries {count} events, more than batch_max_events ({limit})"
            )))
        }
    };
    // Normalise once without storing, so a delivery that still fails leaves no new receipt.
    for (index, (element, event_id)) in events.events.iter().enumerate() {
        let info = EnvelopeInfo {
            id: String::new(),
            provider: &verified.instance.name,
            kind: &kind.name,
            event_id: event_id.clone(),
            received_at: now,
        };
        if let Err(e) = normalise::envelope(events.rule, element, events.root, &headers, info) {
            let at = if events.is_batch {
                format!(" (event {index} of the batch)")
            } else {
                String::new()
            };
            return Err(AdminError::Invalid(format!(
                "still cannot be normalised with the current definition of `{}`{at}: {e}",
                kind.name
            )));
        }
    }
    match ingestor.ingest(&verified, events, None).await {
        Ok(ingested) => Ok(Some(json!({
            "reprocessed": id,
            "status": ingested.status().as_str(),
            "events": ingested.events.iter().map(|e| json!({
                "event_id": e.event_id,
                "id": e.id,
                "status": e.status.as_str(),
            })).collect::<Vec<_>>(),
        }))),
        Err(IngestError::Storage(e)) => Err(AdminError::Storage(e)),
        // Stored; a sync-mode sink did not take it yet (the workers retry it).
        Err(IngestError::Delivery(e)) => Ok(Some(json!({
            "reprocessed": id,
            "status": "accepted",
            "delivery": e.to_string(),
        }))),
        Err(e) => Err(AdminError::Invalid(format!("still cannot be stored: {e}"))),
    }
}

/// `{"since", "instances": [...], "sinks": [... with "backlog"]}`: this replica's counters since
/// it started (see [`crate::observe`]) and, from the store, each sink's backlog.
pub async fn stats(
    store: &dyn Store,
    observer: &Observer,
    now_ms: i64,
) -> Result<Value, AdminError> {
    let mut sinks = Vec::new();
    for sink in observer.sinks(now_ms) {
        let backlog = store.backlog(sink.name.clone()).await?;
        let mut value = serde_json::to_value(&sink).unwrap_or_default();
        value["backlog"] = json!({
            "pending": backlog.pending,
            "oldest_pending_ms": backlog.oldest_pending_ms,
            "oldest_pending_age_secs": backlog.oldest_pending_ms.map(|ms| (now_ms - ms).max(0) / 1000),
        });
        sinks.push(value);
    }
    Ok(json!({
        "since": chrono::DateTime::from_timestamp_millis(observer.started_ms())
            .map(crate::envelope::format_millis),
        "instances": observer.instances(now_ms),
        "sinks": sinks,
    }))
}

/// `?instance=&code=&limit=` of [`rejected`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectedQuery {
    pub instance: Option<String>,
    pub code: Option<String>,
    pub limit: Option<usize>,
}

/// `{"rejections": [...]}`: the kept rejections that match, newest first.
pub fn rejected(observer: &Observer, query: RejectedQuery) -> Value {
    let rejections = observer.rejections(&RejectionQuery {
        instance: query.instance,
        code: query.code,
        limit: query.limit.unwrap_or(DEFAULT_LIMIT).min(REJECTION_RING),
    });
    let rejections: Vec<Value> = rejections
        .iter()
        .map(|r| {
            let mut value = serde_json::to_value(r).unwrap_or_default();
            value["at"] = json!(chrono::DateTime::from_timestamp_millis(r.at_ms)
                .map(crate::envelope::format_millis));
            value
        })
        .collect();
    json!({ "rejections": rejections })
}
