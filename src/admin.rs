//! The operator's view of the store: list and show stored events with their deliveries and
//! attempts, and redeliver events or dead letters. Served under `/admin` ([`crate::routes::admin`])
//! and by `hookgate events`, which calls these functions on the running gateway's API or, when
//! no gateway holds the store, on the store directly. Output never contains a secret:
//! credential headers are not stored in the first place.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::store::{DeliveryRecord, DeliveryStatus, Store, StoreError, TaskRecord, TaskStatus};

/// Default and largest page size of `list`.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;
/// Deliveries inspected per page when a filter is set (bounds the work of one request).
const SCAN_LIMIT: usize = 20_000;

/// `?provider=&status=&limit=&before=`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub provider: Option<String>,
    /// `accepted`, `unprocessable`, `pending`, `delivered` or `dead`.
    pub status: Option<String>,
    pub limit: Option<usize>,
    /// Page: deliveries older than this gateway id.
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

/// The statuses `list` filters on.
pub const STATUSES: [&str; 5] = ["accepted", "unprocessable", "pending", "delivered", "dead"];

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

fn matches(record: &DeliveryRecord, tasks: &[TaskRecord], query: &ListQuery) -> bool {
    if query
        .provider
        .as_ref()
        .is_some_and(|p| *p != record.provider)
    {
        return false;
    }
    match query.status.as_deref() {
        None => true,
        Some("accepted") => record.status == DeliveryStatus::Accepted,
        Some("unprocessable") => record.status == DeliveryStatus::Unprocessable,
        Some("pending") => tasks.iter().any(|t| t.status == TaskStatus::Pending),
        Some("dead") => tasks.iter().any(|t| t.status == TaskStatus::Dead),
        Some("delivered") => {
            !tasks.is_empty() && tasks.iter().all(|t| t.status == TaskStatus::Delivered)
        }
        Some(_) => false,
    }
}

/// Newest first; `next` is the `before` of the following page.
pub fn list(store: &dyn Store, query: &ListQuery) -> Result<Value, AdminError> {
    if let Some(status) = &query.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(AdminError::Invalid(format!(
                "status must be one of {}, not `{status}`",
                STATUSES.join(", ")
            )));
        }
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut before = query.before.clone();
    let mut events = Vec::new();
    let mut scanned = 0;
    let mut exhausted = false;
    while events.len() < limit && scanned < SCAN_LIMIT {
        let page = store.recent_deliveries(before.as_deref(), limit)?;
        if page.is_empty() {
            exhausted = true;
            break;
        }
        for record in page {
            scanned += 1;
            before = Some(record.id.clone());
            let tasks = tasks_of(store, &record)?;
            if matches(&record, &tasks, query) {
                events.push(summary(&record, &tasks));
                if events.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(json!({"events": events, "next": if exhausted { None } else { before }}))
}

fn tasks_of(store: &dyn Store, record: &DeliveryRecord) -> Result<Vec<TaskRecord>, StoreError> {
    let mut tasks = Vec::new();
    for id in &record.envelope_ids {
        tasks.extend(store.tasks(id)?);
    }
    Ok(tasks)
}

fn summary(record: &DeliveryRecord, tasks: &[TaskRecord]) -> Value {
    json!({
        "id": record.id,
        "provider": record.provider,
        "kind": record.kind,
        "event_id": record.event_id,
        "received_at": record.received_at,
        "status": record.status,
        "error": record.error,
        "envelope_ids": record.envelope_ids,
        "deliveries": tasks.iter().map(|t| json!({"envelope_id": t.envelope_id, "sink": t.sink, "status": t.status, "attempts": t.attempts})).collect::<Vec<_>>(),
    })
}

/// Everything about one stored event: the raw delivery, its envelopes, and per sink the task
/// and every attempt. `id` is a delivery id or an envelope id.
pub fn show(store: &dyn Store, id: &str) -> Result<Option<Value>, AdminError> {
    let (record, body) = match store.delivery(id)? {
        Some((record, body)) => (Some(record), Some(body)),
        None => (None, None),
    };
    let envelope_ids = match &record {
        Some(record) => record.envelope_ids.clone(),
        None if store.envelope(id)?.is_some() => vec![id.to_owned()],
        None => return Ok(None),
    };
    let mut envelopes = Vec::new();
    for envelope_id in &envelope_ids {
        let Some(envelope) = store.envelope(envelope_id)? else {
            continue;
        };
        let mut deliveries = Vec::new();
        for task in store.tasks(envelope_id)? {
            let attempts = store.attempts(envelope_id, &task.sink)?;
            let mut entry = task_json(&task);
            entry["attempts_made"] = json!(attempts);
            deliveries.push(entry);
        }
        envelopes.push(json!({"envelope": envelope, "deliveries": deliveries}));
    }
    let raw = record.map(|record| {
        let body = body.unwrap_or_default();
        let (body, encoding) = match String::from_utf8(body) {
            Ok(text) => (Value::String(text), "utf-8"),
            Err(e) => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
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
pub fn redeliver(
    store: &dyn Store,
    id: &str,
    sink: Option<&str>,
    now_ms: i64,
) -> Result<Option<usize>, AdminError> {
    let envelope_ids = match store.delivery(id)? {
        Some((record, _)) => record.envelope_ids,
        None if store.envelope(id)?.is_some() => vec![id.to_owned()],
        None => return Ok(None),
    };
    let mut count = 0;
    for envelope_id in envelope_ids {
        count += store.redeliver(&envelope_id, sink, now_ms)?;
    }
    Ok(Some(count))
}

/// Lists dead letters (optionally of one sink).
pub fn dead_letters(
    store: &dyn Store,
    sink: Option<&str>,
    limit: usize,
) -> Result<Value, AdminError> {
    let tasks = store.dead_letters(sink, limit.clamp(1, MAX_LIMIT))?;
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
pub fn redeliver_dead_letters(
    store: &dyn Store,
    sink: Option<&str>,
    now_ms: i64,
) -> Result<usize, AdminError> {
    let mut count = 0;
    loop {
        let batch = store.dead_letters(sink, MAX_LIMIT)?;
        if batch.is_empty() {
            return Ok(count);
        }
        for task in batch {
            count += store.redeliver(&task.envelope_id, Some(&task.sink), now_ms)?;
        }
    }
}
