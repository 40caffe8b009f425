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
//! ([`file`]), and in-process [`SyncHandler`]s for embedding.

pub mod command;
pub mod file;
pub mod http;
pub mod retry;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::config::{RetrySettings, SinkSettings};
use crate::envelope::Envelope;

/// `events = ["stripe:customer.*", "pipedrive"]`: globs over `provider:object.action`.
/// A bare provider name means all of its events; an empty list means everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter(Vec<glob::Pattern>);

impl EventFilter {
    pub fn parse_one(pattern: &str) -> Result<glob::Pattern, String> {
        let full = if pattern.contains(':') || pattern == "*" {
            pattern.to_owned()
        } else {
            format!("{pattern}:*")
        };
        glob::Pattern::new(&full).map_err(|e| format!("`{pattern}` is not a valid glob: {e}"))
    }

    pub fn parse(patterns: &[String]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| Self::parse_one(p))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn matches(&self, envelope: &Envelope) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let subject = format!(
            "{}:{}.{}",
            envelope.provider, envelope.object, envelope.action
        );
        self.0.iter().any(|p| p.matches(&subject))
    }
}

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

/// How one attempt went, as the sink saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        http_status: Option<u16>,
        exit_code: Option<i32>,
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
    Http(http::HttpSink),
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
pub struct Route {
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

/// How many envelopes the file sink writes per sync.
const FILE_BATCH: usize = 512;

/// Builds the configured sinks, plus any in-process handlers.
pub fn build_routes(
    settings: &[SinkSettings],
    handlers: Vec<HandlerRoute>,
) -> Result<Vec<Route>, String> {
    let mut routes = settings
        .iter()
        .map(|s| {
            let common = s.common();
            let name = common.name.clone();
            let sink = match s {
                SinkSettings::File { path, .. } => Sink::File(
                    file::FileSink::open(path.as_str())
                        .map_err(|e| format!("sink `{name}`: cannot open {path}: {e}"))?,
                ),
                SinkSettings::Http {
                    url,
                    secret,
                    timeout_ms,
                    headers,
                    ..
                } => Sink::Http(
                    http::HttpSink::new(
                        url.as_str(),
                        secret.clone(),
                        Duration::from_millis(*timeout_ms),
                        headers,
                    )
                    .map_err(|e| format!("sink `{name}`: {e}"))?,
                ),
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
            Ok(Route {
                filter: EventFilter::parse(&common.events)?,
                retry: common.retry,
                concurrency,
                name,
                sink,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    for handler in handlers {
        if routes.iter().any(|r| r.name == handler.name) {
            return Err(format!("sink name `{}` is used twice", handler.name));
        }
        routes.push(Route {
            filter: EventFilter::parse(&handler.events)?,
            retry: handler.retry,
            concurrency: 8,
            name: handler.name,
            sink: Sink::Handler(handler.handler),
        });
    }
    Ok(routes)
}

/// The names of the routes an envelope goes to.
pub fn matching_sinks(routes: &[Arc<Route>], envelope: &Envelope) -> Vec<String> {
    routes
        .iter()
        .filter(|r| r.filter.matches(envelope))
        .map(|r| r.name.clone())
        .collect()
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
    fn filters_match_provider_object_action_globs() {
        let f = EventFilter::parse(&["stripe:customer.*".into(), "pipedrive".into()]).unwrap();
        assert!(f.matches(&envelope("stripe", "customer.subscription", "updated")));
        assert!(f.matches(&envelope("stripe", "customer", "created")));
        assert!(!f.matches(&envelope("stripe", "invoice", "paid")));
        assert!(f.matches(&envelope("pipedrive", "deal", "updated")));
        assert!(EventFilter::default().matches(&envelope("a", "b", "c")));
        assert!(EventFilter::parse(&["[".into()]).is_err());
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
