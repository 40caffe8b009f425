//! Handing stored envelopes to the sinks, after the provider has been answered.
//!
//! The dispatcher reads the store's outbox oldest first, gives each envelope to every sink whose
//! [`EventFilter`] matches, makes the sinks' writes durable, and only then removes the envelopes
//! from the outbox. A crash in between means the envelope is handed over again after restart:
//! delivery is at-least-once, and receivers deduplicate by the envelope `id`.

pub mod file;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, warn};

use crate::config::SinkSettings;
use crate::envelope::Envelope;
use crate::store::Store;

/// Envelopes read from the outbox per round.
const BATCH: usize = 512;
/// How long to wait before retrying after a sink or store failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Wake-up interval even without commits (covers envelopes left by a previous run).
const IDLE_POLL: Duration = Duration::from_secs(5);

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

/// The closed set of sink kinds.
#[derive(Debug)]
pub enum Sink {
    File(file::FileSink),
}

impl Sink {
    fn name(&self) -> &str {
        match self {
            Sink::File(s) => s.name(),
        }
    }

    fn write(&self, envelopes: &[&Envelope]) -> std::io::Result<()> {
        match self {
            Sink::File(s) => s.append(envelopes),
        }
    }
}

/// A sink and what it wants.
#[derive(Debug)]
pub struct Route {
    pub filter: EventFilter,
    pub sink: Sink,
}

/// Builds the sinks from configuration.
pub fn build_routes(settings: &[SinkSettings]) -> Result<Vec<Route>, String> {
    settings
        .iter()
        .map(|s| {
            let filter = EventFilter::parse(s.events())?;
            let sink = match s {
                SinkSettings::File { name, path, .. } => Sink::File(
                    file::FileSink::open(name, path.as_str())
                        .map_err(|e| format!("sink `{name}`: cannot open {path}: {e}"))?,
                ),
            };
            Ok(Route { filter, sink })
        })
        .collect()
}

/// Moves envelopes from the store's outbox to the sinks until `stop` turns true.
pub async fn run(store: Arc<dyn Store>, routes: Arc<Vec<Route>>, mut stop: watch::Receiver<bool>) {
    let signal = store.committed_signal();
    loop {
        let store_for_round = store.clone();
        let routes_for_round = routes.clone();
        let round = tokio::task::spawn_blocking(move || {
            dispatch_round(&*store_for_round, &routes_for_round)
        })
        .await;
        let wait = match round {
            Ok(Ok(0)) => IDLE_POLL,
            Ok(Ok(n)) => {
                debug!(envelopes = n, "Dispatched.");
                Duration::ZERO
            }
            Ok(Err(e)) => {
                warn!(error = %e, "Dispatch round failed; will retry.");
                RETRY_DELAY
            }
            Err(e) => {
                error!(error = %e, "Dispatch round panicked; will retry.");
                RETRY_DELAY
            }
        };
        if *stop.borrow() {
            break;
        }
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = signal.notified(), if wait == IDLE_POLL => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    debug!("Dispatcher stopped.");
}

/// One round: a batch from the outbox through every sink. Returns how many were handed over.
pub fn dispatch_round(store: &dyn Store, routes: &[Route]) -> Result<usize, String> {
    let pending = store.pending(BATCH).map_err(|e| e.to_string())?;
    if pending.is_empty() {
        return Ok(0);
    }
    for route in routes {
        let selected: Vec<&Envelope> = pending
            .iter()
            .map(|p| &p.envelope)
            .filter(|e| route.filter.matches(e))
            .collect();
        if !selected.is_empty() {
            route
                .sink
                .write(&selected)
                .map_err(|e| format!("sink `{}`: {e}", route.sink.name()))?;
        }
    }
    let keys: Vec<Vec<u8>> = pending.iter().map(|p| p.key.clone()).collect();
    store.mark_dispatched(&keys).map_err(|e| e.to_string())?;
    Ok(pending.len())
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
}
