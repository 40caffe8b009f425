//! Stages 10–12 for a planned, verified delivery: the duplicate check, the envelopes, the
//! durable commit, and (sync mode) delivery before the answer. The outcome is typed
//! ([`Ingested`]: accepted or duplicate, per event); turning it into HTTP is the route's job.

use std::sync::Arc;

use bytes::Bytes;
use tracing::debug;

use crate::config::DeliveryMode;
use crate::dispatch::{DeliveryError, Dispatcher, SinkReply};
use crate::envelope::{format_millis, IdGenerator};
use crate::pipeline::normalise::{self, EnvelopeInfo, NormaliseError};
use crate::pipeline::plan::Events;
use crate::pipeline::signature::Verified;
use crate::provider::registry::Instance;
use crate::store::{
    Commit, Committed, DedupKey, NewEnvelope, NewReceipt, Receipt, ReceiptStatus, Store, StoreError,
};

/// Replay-guard values are claimed under `<instance>#replay-guard`, apart from event IDs.
const REPLAY_GUARD_SUFFIX: &str = "#replay-guard";

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Stored now.
    Accepted,
    /// Stored before: not stored again.
    Duplicate,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Duplicate => "duplicate",
        }
    }
}

/// One event's outcome: its provider event ID and the gateway id it is stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    pub event_id: String,
    pub id: String,
    pub status: Status,
}

/// The outcome of a delivery: one entry per event, in body order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub events: Vec<EventOutcome>,
    /// The body was a batch (the answer then lists every event).
    pub is_batch: bool,
    /// Sync mode with `reply_from`: that sink's answer, to answer the provider with.
    pub reply: Option<SinkReply>,
}

impl Ingested {
    /// `accepted` when anything was stored now, else `duplicate`. An empty batch is accepted.
    pub fn status(&self) -> Status {
        if self.events.is_empty() || self.events.iter().any(|e| e.status == Status::Accepted) {
            Status::Accepted
        } else {
            Status::Duplicate
        }
    }
}

/// Why a verified delivery was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Stage 11 failed; the receipt is kept for inspection.
    #[error("{0}")]
    Unprocessable(NormaliseError),
    /// The kind's one-time value (Mailgun's token) was used by another delivery.
    #[error("this signature was already used by another delivery (replay)")]
    Replayed,
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// Sync mode: stored, but the sinks did not all take it.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// Carries out plans against the store and the dispatcher.
pub struct Ingestor {
    store: Arc<dyn Store>,
    dispatcher: Arc<Dispatcher>,
    ids: IdGenerator,
}

impl Ingestor {
    pub fn new(store: Arc<dyn Store>, dispatcher: Arc<Dispatcher>) -> Self {
        Self {
            store,
            dispatcher,
            ids: IdGenerator::default(),
        }
    }

    fn key(instance: &Instance, event_id: &str) -> DedupKey {
        DedupKey {
            provider: instance.name.clone(),
            event_id: event_id.to_owned(),
        }
    }

    /// The early check (the event ID came from a header, the body is not parsed yet): the
    /// answer when the event is a duplicate, `None` when it must go the whole way.
    pub async fn known(
        &self,
        instance: &Instance,
        event_id: String,
    ) -> Result<Option<Ingested>, IngestError> {
        let Some(id) = self
            .store
            .find_duplicate(Self::key(instance, &event_id))
            .await?
        else {
            return Ok(None);
        };
        let reply = self
            .deliver_if_sync(instance, std::slice::from_ref(&id))
            .await?;
        Ok(Some(Ingested {
            events: vec![EventOutcome {
                event_id,
                id,
                status: Status::Duplicate,
            }],
            is_batch: false,
            reply,
        }))
    }

    /// Stages 10–12 (and sync delivery) for the events of one delivery. `checked`: an event
    /// ID [`Self::known`] just found unclaimed (not looked up again).
    pub async fn ingest(
        &self,
        delivery: &Verified<'_>,
        plan: Events<'_>,
        checked: Option<&str>,
    ) -> Result<Ingested, IngestError> {
        let instance = &delivery.instance;
        // 10. the duplicate check (the commit claims atomically; this only skips work)
        let mut known = Vec::with_capacity(plan.events.len());
        for (_, event_id) in &plan.events {
            known.push(if checked == Some(event_id.as_str()) {
                None
            } else {
                self.store
                    .find_duplicate(Self::key(instance, event_id))
                    .await?
            });
        }
        let first_event_id = plan.events.first().map(|(_, id)| id.clone());
        if !known.is_empty() && known.iter().all(Option::is_some) {
            let events: Vec<EventOutcome> = plan
                .events
                .iter()
                .zip(known)
                .map(|((_, event_id), id)| EventOutcome {
                    event_id: event_id.clone(),
                    id: id.unwrap_or_default(),
                    status: Status::Duplicate,
                })
                .collect();
            let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
            let reply = self.deliver_if_sync(instance, &ids).await?;
            return Ok(Ingested {
                events,
                is_batch: plan.is_batch,
                reply,
            });
        }
        // 11. normalise the new events
        let received_ms = delivery.received_at.timestamp_millis();
        let receipt_id = self.ids.next(delivery.received_at);
        let mut new_events = Vec::new();
        for (index, ((element, event_id), known)) in plan.events.iter().zip(&known).enumerate() {
            if known.is_some() {
                continue;
            }
            let info = EnvelopeInfo {
                id: if new_events.is_empty() {
                    receipt_id.clone()
                } else {
                    self.ids.next(delivery.received_at)
                },
                provider: &instance.name,
                kind: &instance.kind.name,
                event_id: event_id.clone(),
                received_at: delivery.received_at,
            };
            let envelope =
                match normalise::envelope(plan.rule, element, plan.root, plan.headers, info) {
                    Ok(envelope) => envelope,
                    Err(e) => {
                        let e = match &plan.rule.batch {
                            Some(batch) => NormaliseError::Element {
                                index,
                                batch: batch.clone(),
                                cause: Box::new(e),
                            },
                            None => e,
                        };
                        return Err(self.unprocessable(delivery, first_event_id, e).await);
                    }
                };
            let json = Bytes::from(
                serde_json::to_vec(&envelope)
                    .map_err(|e| StoreError::Io(format!("cannot serialise the envelope: {e}")))?,
            );
            if new_events.is_empty() {
                // The request span's `event_type`, for its log lines ("Accepted.").
                tracing::Span::current().record("event_type", envelope.event_type.as_str());
            }
            let tasks = self.dispatcher.plan(&envelope, instance.mode, received_ms);
            new_events.push(NewEnvelope {
                dedup: Self::key(instance, event_id),
                envelope,
                json,
                sinks: tasks.sinks,
                lane: tasks.lane,
                not_before_ms: tasks.not_before_ms,
            });
        }
        if new_events.is_empty() {
            // An empty batch: nothing to store, nothing to lose.
            return Ok(Ingested {
                events: Vec::new(),
                is_batch: plan.is_batch,
                reply: None,
            });
        }
        // 12. persist: claims, receipt, body, envelopes and tasks, durably and together
        let stored_ids: Vec<String> = new_events.iter().map(|e| e.envelope.id.clone()).collect();
        let mut receipt = receipt(delivery, receipt_id, ReceiptStatus::Accepted);
        receipt.event_id = first_event_id;
        let replay_guard = plan.replay_guard.map(|token| DedupKey {
            provider: format!("{}{REPLAY_GUARD_SUFFIX}", instance.name),
            event_id: token,
        });
        let committed = self
            .store
            .commit(NewReceipt {
                receipt,
                body: delivery.body.clone(),
                events: new_events,
                replay_guard,
            })
            .await?;
        let Commit::Stored(results) = committed else {
            return Err(IngestError::Replayed);
        };
        let mut results = results.into_iter().zip(stored_ids);
        let events: Vec<EventOutcome> = plan
            .events
            .iter()
            .zip(known)
            .map(|((_, event_id), known)| {
                let (id, status) = match known {
                    Some(id) => (id, Status::Duplicate),
                    None => match results.next() {
                        Some((Committed::Accepted, id)) => (id, Status::Accepted),
                        Some((Committed::Duplicate { id }, _)) => (id, Status::Duplicate),
                        None => (String::new(), Status::Duplicate),
                    },
                };
                EventOutcome {
                    event_id: event_id.clone(),
                    id,
                    status,
                }
            })
            .collect();
        debug!(id = %events[0].id, events = events.len(), "Stored.");
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let reply = self.deliver_if_sync(instance, &ids).await?;
        Ok(Ingested {
            events,
            is_batch: plan.is_batch,
            reply,
        })
    }

    /// Stage 11 failed: keep the receipt for inspection, claim nothing. Returns the error to
    /// answer with (storage trouble wins: the provider should retry).
    pub async fn unprocessable(
        &self,
        delivery: &Verified<'_>,
        event_id: Option<String>,
        error: NormaliseError,
    ) -> IngestError {
        let id = self.ids.next(delivery.received_at);
        let mut receipt = receipt(delivery, id, ReceiptStatus::Unprocessable);
        receipt.event_id = event_id;
        receipt.error = Some(error.to_string());
        match self
            .store
            .keep_unprocessable(receipt, delivery.body.clone())
            .await
        {
            Ok(()) => IngestError::Unprocessable(error),
            Err(e) => IngestError::Storage(e),
        }
    }

    /// Sync mode: delivers now; the `reply_from` sink's answer, if it gave one.
    async fn deliver_if_sync(
        &self,
        instance: &Instance,
        ids: &[String],
    ) -> Result<Option<SinkReply>, IngestError> {
        if instance.mode != DeliveryMode::Sync {
            return Ok(None);
        }
        Ok(self
            .dispatcher
            .deliver_now(ids, instance.reply_from.as_deref())
            .await?)
    }
}

/// The receipt of a verified delivery: headers as text (credential headers left out), taken
/// only now that the event is known to be new.
fn receipt(delivery: &Verified<'_>, id: String, status: ReceiptStatus) -> Receipt {
    let kind = &delivery.instance.kind;
    Receipt {
        id,
        provider: delivery.instance.name.clone(),
        kind: kind.name.clone(),
        event_id: None,
        received_at: format_millis(delivery.received_at),
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
        status,
        error: None,
        envelope_ids: Vec::new(),
        types: Vec::new(),
        subjects: Vec::new(),
        event_ids: Vec::new(),
    }
}
