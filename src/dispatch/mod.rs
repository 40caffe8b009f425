//! Delivery to the sync handlers ("sinks"), after the provider has been answered.
//!
//! Each stored envelope gets one delivery task per matching sink, written in the same atomic
//! commit as the event, so a task can never be lost between store and sink. One worker per sink
//! ([`worker`]) takes due tasks in arrival order, delivers them, and records every attempt;
//! failures are retried with exponential backoff and jitter ([`retry`]) until they succeed or
//! become dead letters. Envelopes about the same object (provider, object, object_id) reach a
//! sink in arrival order: a failing one holds back only its own object. Delivery is
//! at-least-once; receivers deduplicate by the envelope `id` (the `webhook-id` header).
//!
//! The sinks are a closed set ([`Sink`]): `http` ([`http`]), `command` ([`command`]), `file`
//! ([`file`]), and in-process [`SyncHandler`]s for embedding. A [`SinkRoute`] is a sink with its
//! filter and retry policy; the [`Dispatcher`] owns them all: it decides which sinks and which
//! ordering lane a new envelope gets, runs the background workers, and delivers sync-mode
//! events before their request is answered.

pub mod command;
pub mod file;
pub mod filter;
pub mod http;
pub mod retry;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use actix_web::http::header::{HeaderName, HeaderValue};

use crate::config::{ConfigError, DeliveryMode, LoadedSettings, RetrySettings, SinkSettings};
use crate::envelope::Envelope;
use crate::metrics::Metrics;
use crate::observe::Observer;
use crate::pause::Pauses;
use crate::pipeline::signature::standard::SigningKey;
use crate::store::{PauseTarget, Store, StoreError, TaskStatus};

pub use filter::EventFilter;

/// The ordering lane of an envelope: provider, object and object id. Envelopes without an
/// object id are not ordered against anything.
pub fn lane(envelope: &Envelope) -> Vec<u8> {
    match &envelope.object_id {
        Some(id) => format!("{}\0{}\0{}", envelope.provider, envelope.object, id).into_bytes(),
        None => Vec::new(),
    }
}

/// An in-process sync handler, for embedding hookgate as a library: return `Ok` once the
/// envelope is handled; an `Err` is retried like any failed delivery.
pub trait SyncHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), String>>;
}

/// A sink's answer: what an instance with `reply_from` answers the provider with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkReply {
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
}

/// How one attempt went, as the sink saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        http_status: Option<u16>,
        exit_code: Option<i32>,
        /// The start of the answer's body (HTTP sinks), bounded like error snippets.
        response: Option<String>,
        /// The answer itself (HTTP sinks, at most [`http::REPLY_LIMIT`] bytes), for an
        /// instance's `reply_from`; never stored.
        reply: Option<SinkReply>,
    },
    /// Worth retrying: 429, 5xx, a timeout, a connection error, a non-zero exit.
    Retry {
        error: String,
        http_status: Option<u16>,
        exit_code: Option<i32>,
        retry_after: Option<Duration>,
    },
    /// Retrying will not help (4xx other than 408/429): dead letter at once.
    Permanent {
        error: String,
        http_status: Option<u16>,
    },
}

/// The closed set of sink kinds.
pub enum Sink {
    Http(Box<http::HttpSink>),
    Command(command::CommandSink),
    File(file::FileSink),
    Handler(Arc<dyn SyncHandler>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Http(_) => "Sink::Http",
            Sink::Command(_) => "Sink::Command",
            Sink::File(_) => "Sink::File",
            Sink::Handler(_) => "Sink::Handler",
        })
    }
}

impl Sink {
    /// Delivers envelopes; one result per envelope, in order. The file sink writes them all
    /// with one sync; the others deliver each on its own, concurrently.
    pub async fn deliver(&self, envelopes: &[Envelope]) -> Vec<Attempt> {
        match self {
            Sink::File(sink) => {
                let result = sink.append(envelopes).await;
                vec![result; envelopes.len()]
            }
            Sink::Http(sink) => {
                futures_util::future::join_all(envelopes.iter().map(|e| sink.deliver(e))).await
            }
            Sink::Command(sink) => {
                futures_util::future::join_all(envelopes.iter().map(|e| sink.deliver(e))).await
            }
            Sink::Handler(handler) => {
                futures_util::future::join_all(envelopes.iter().map(|e| async {
                    match handler.handle(e).await {
                        Ok(()) => Attempt::Delivered {
                            http_status: None,
                            exit_code: None,
                            response: None,
                            reply: None,
                        },
                        Err(error) => Attempt::Retry {
                            error,
                            http_status: None,
                            exit_code: None,
                            retry_after: None,
                        },
                    }
                }))
                .await
            }
        }
    }
}

/// A sink with its name, filter and delivery policy.
#[derive(Debug)]
pub struct SinkRoute {
    pub name: String,
    pub filter: EventFilter,
    pub retry: RetrySettings,
    /// Envelopes attempted at once.
    pub concurrency: usize,
    pub sink: Sink,
}

/// An in-process handler registered by an embedding application.
pub struct HandlerRoute {
    pub name: String,
    pub events: Vec<String>,
    pub retry: RetrySettings,
    pub handler: Arc<dyn SyncHandler>,
}

/// The `provider` (and `kind`, `object`) of `hookgate sinks test` envelopes.
pub const TEST_PROVIDER: &str = "hookgate";

/// How many envelopes the file sink writes per sync.
const FILE_BATCH: usize = 512;

/// Compiles the configured sinks, plus any in-process handlers: filters parsed, signing keys
/// decoded, headers and clients built, once. Nothing is opened yet ([`SinkRoute::open`]), so
/// `hookgate check` runs this too. Errors name the file and the key.
pub fn build_routes(
    loaded: &LoadedSettings,
    handlers: Vec<HandlerRoute>,
) -> Result<Vec<SinkRoute>, ConfigError> {
    let file = loaded.file_name();
    let instances: Vec<&str> = loaded
        .settings
        .providers
        .keys()
        .map(String::as_str)
        .collect();
    let mut routes = loaded
        .settings
        .sinks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let err = |field: &str, message: String| {
                ConfigError::new(&file, Some(format!("sinks[{i}].{field}")), message)
            };
            let common = s.common();
            let sink = match s {
                SinkSettings::File { path, .. } => Sink::File(file::FileSink::new(path.as_str())),
                SinkSettings::Http {
                    url,
                    secret,
                    timeout_ms,
                    headers,
                    ..
                } => {
                    let key = secret
                        .as_ref()
                        .map(SigningKey::parse)
                        .transpose()
                        .map_err(|m| err("secret", m))?;
                    let headers = headers
                        .iter()
                        .map(|(name, value)| {
                            match (
                                HeaderName::from_bytes(name.as_bytes()),
                                HeaderValue::from_str(value.as_str()),
                            ) {
                                (Ok(name), Ok(value)) => Ok((name, value)),
                                _ => Err(err(
                                    &format!("headers.{name}"),
                                    "not a valid header".into(),
                                )),
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Sink::Http(Box::new(
                        http::HttpSink::new(
                            url.as_str(),
                            key,
                            Duration::from_millis(*timeout_ms),
                            headers,
                        )
                        .map_err(|m| err("url", m))?,
                    ))
                }
                SinkSettings::Command {
                    command,
                    timeout_ms,
                    ..
                } => Sink::Command(command::CommandSink::new(
                    command.iter().map(|a| a.as_str().to_owned()).collect(),
                    Duration::from_millis(*timeout_ms),
                )),
            };
            let concurrency = if matches!(sink, Sink::File(_)) {
                FILE_BATCH
            } else {
                common.concurrency
            };
            let filter = EventFilter::compile(&common.events, &common.conditions, &instances)
                .map_err(|(field, m)| err(&field, m))?;
            Ok(SinkRoute {
                filter,
                retry: common.retry.clone(),
                concurrency,
                name: common.name.clone(),
                sink,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    for handler in handlers {
        let err = |message: String| {
            ConfigError::new(&file, Some(format!("handler `{}`", handler.name)), message)
        };
        if routes.iter().any(|r| r.name == handler.name) {
            return Err(err("this sink name is used twice".into()));
        }
        for delay in &handler.retry.schedule {
            delay
                .parse::<crate::config::Delay>()
                .map_err(|m| err(format!("retry.schedule: {m}")))?;
        }
        routes.push(SinkRoute {
            filter: EventFilter::compile(&handler.events, &Default::default(), &instances)
                .map_err(|(field, m)| err(format!("{field}: {m}")))?,
            retry: handler.retry,
            concurrency: 8,
            name: handler.name,
            sink: Sink::Handler(handler.handler),
        });
    }
    Ok(routes)
}

impl SinkRoute {
    /// Acquires what the sink needs before serving (the file sink opens its file), so a sink
    /// that cannot work stops startup instead of failing every delivery.
    pub fn open(&self) -> Result<(), String> {
        match &self.sink {
            Sink::File(sink) => sink.open().map_err(|e| {
                format!(
                    "sink `{}`: cannot open {}: {e}",
                    self.name,
                    sink.path().display()
                )
            }),
            _ => Ok(()),
        }
    }
}

/// Where a new envelope goes: its tasks' sinks, lane and earliest background attempt.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    pub sinks: Vec<String>,
    pub lane: Vec<u8>,
    pub not_before_ms: i64,
}

/// Why a sync-mode delivery did not complete (the provider is answered 503 and retries).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("sink `{0}` did not accept the event; it will be retried")]
    NotDelivered(String),
    #[error(
        "sink `{0}` is still delivering the event, or an earlier one about the same object; retry later"
    )]
    InFlight(String),
    #[error("sink `{0}` is paused; the event is kept for it")]
    Paused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The sinks, their workers, and sync-mode delivery.
pub struct Dispatcher {
    routes: Vec<Arc<SinkRoute>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// How long a sync-mode request has its new tasks to itself (the store's lease).
    sync_lease_ms: i64,
    /// Paused sinks are skipped (their tasks stay pending).
    pauses: Arc<Pauses>,
    /// Counts attempts per sink for the dashboard.
    observer: Arc<Observer>,
}

impl Dispatcher {
    pub fn new(
        routes: Vec<SinkRoute>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        sync_lease: Duration,
        pauses: Arc<Pauses>,
        observer: Arc<Observer>,
    ) -> Self {
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
            store,
            clock,
            metrics,
            sync_lease_ms: i64::try_from(sync_lease.as_millis()).unwrap_or(i64::MAX),
            pauses,
            observer,
        }
    }

    /// The sinks, in configuration order.
    pub fn routes(&self) -> &[Arc<SinkRoute>] {
        &self.routes
    }

    pub fn route(&self, name: &str) -> Option<&Arc<SinkRoute>> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// The sinks whose filters match, the ordering lane, and when background workers may start.
    pub fn plan(&self, envelope: &Envelope, mode: DeliveryMode, received_ms: i64) -> TaskPlan {
        TaskPlan {
            sinks: self
                .routes
                .iter()
                .filter(|r| r.filter.matches(envelope))
                .map(|r| r.name.clone())
                .collect(),
            lane: lane(envelope),
            // In sync mode the request delivers first; the workers take over after that.
            not_before_ms: match mode {
                DeliveryMode::Async => received_ms,
                DeliveryMode::Sync => received_ms.saturating_add(self.sync_lease_ms),
            },
        }
    }

    fn worker(&self, route: &Arc<SinkRoute>) -> worker::Worker {
        worker::Worker {
            store: self.store.clone(),
            route: route.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            pauses: self.pauses.clone(),
            observer: self.observer.clone(),
        }
    }

    /// Starts one background worker per sink; they stop when `stop` turns true.
    pub fn spawn_workers(&self, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        self.routes
            .iter()
            .map(|route| tokio::spawn(self.worker(route).run(stop.clone())))
            .collect()
    }

    /// `hookgate sinks test`: sends one clearly marked test envelope (provider `hookgate`,
    /// type `hookgate.test`, `meta.test = true`) to the sink, outside its queue and filter;
    /// nothing is stored. `None` when no such sink exists.
    pub async fn test_sink(&self, name: &str) -> Option<serde_json::Value> {
        let route = self.route(name)?;
        let now = self.clock.now();
        let id = ulid::Ulid::from_datetime(std::time::SystemTime::from(now)).to_string();
        let mut meta = serde_json::Map::new();
        meta.insert("test".into(), serde_json::Value::Bool(true));
        let envelope = Envelope {
            id: id.clone(),
            provider: TEST_PROVIDER.into(),
            kind: TEST_PROVIDER.into(),
            event_id: format!("test:{id}"),
            event_type: format!("{TEST_PROVIDER}.test"),
            action: "test".into(),
            object: TEST_PROVIDER.into(),
            object_id: None,
            current: Some(serde_json::json!({
                "message": "A test envelope from `hookgate sinks test`; it is not a real event."
            })),
            previous: None,
            occurred_at: None,
            received_at: crate::envelope::format_millis(now),
            meta,
        };
        let started = std::time::Instant::now();
        let attempt = route.sink.deliver(std::slice::from_ref(&envelope)).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (outcome, http_status, exit_code, error, response) = match attempt.into_iter().next() {
            Some(Attempt::Delivered {
                http_status,
                exit_code,
                response,
                ..
            }) => ("delivered", http_status, exit_code, None, response),
            Some(Attempt::Retry {
                error,
                http_status,
                exit_code,
                ..
            }) => ("failed", http_status, exit_code, Some(error), None),
            Some(Attempt::Permanent { error, http_status }) => {
                ("rejected", http_status, None, Some(error), None)
            }
            None => ("failed", None, None, Some("no answer".to_owned()), None),
        };
        Some(serde_json::json!({
            "sink": route.name,
            "envelope_id": id,
            "outcome": outcome,
            "http_status": http_status,
            "exit_code": exit_code,
            "error": error,
            "response": response,
            "duration_ms": elapsed_ms,
        }))
    }

    /// Sync mode: delivers these envelopes' pending tasks now, sink by sink. `Ok` only when no
    /// task of theirs is left pending; with the answer of sink `reply_from` to the first
    /// envelope, when that sink delivered it now and answered with a body.
    pub async fn deliver_now(
        &self,
        envelope_ids: &[String],
        reply_from: Option<&str>,
    ) -> Result<Option<SinkReply>, DeliveryError> {
        let mut reply = None;
        for route in &self.routes {
            if self.pauses.is_paused(PauseTarget::Sink, &route.name) {
                continue;
            }
            let now = self.clock.now().timestamp_millis();
            let due = self
                .store
                .take(route.name.clone(), envelope_ids.to_vec(), now)
                .await?;
            if due.is_empty() {
                continue;
            }
            let (delivered, replies) = self.worker(route).attempt_with_replies(due).await?;
            if !delivered {
                return Err(DeliveryError::NotDelivered(route.name.clone()));
            }
            if reply_from == Some(route.name.as_str()) {
                reply = replies
                    .into_iter()
                    .find(|(id, _)| envelope_ids.first() == Some(id))
                    .and_then(|(_, reply)| reply);
            }
        }
        // A task still pending here is leased by a background worker right now.
        for id in envelope_ids {
            let tasks = self.store.tasks(id.clone()).await?;
            if let Some(task) = tasks.iter().find(|t| t.status == TaskStatus::Pending) {
                if self.pauses.is_paused(PauseTarget::Sink, &task.sink) {
                    return Err(DeliveryError::Paused(task.sink.clone()));
                }
                return Err(DeliveryError::InFlight(task.sink.clone()));
            }
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(provider: &str, object: &str, action: &str) -> Envelope {
        serde_json::from_value(serde_json::json!({
            "id": "x", "provider": provider, "kind": provider, "event_id": "e",
            "type": "t", "action": action, "object": object, "object_id": null,
            "current": null, "previous": null, "occurred_at": null,
            "received_at": "2024-01-01T00:00:00.000Z", "meta": {}
        }))
        .unwrap()
    }

    #[test]
    fn lanes_group_by_object_and_skip_envelopes_without_an_id() {
        let mut a = envelope("crm", "deal", "updated");
        assert!(lane(&a).is_empty());
        a.object_id = Some("7".into());
        let mut b = a.clone();
        b.action = "deleted".into();
        assert_eq!(lane(&a), lane(&b));
        b.object_id = Some("8".into());
        assert_ne!(lane(&a), lane(&b));
    }
}
