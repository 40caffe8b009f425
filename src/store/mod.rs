//! Durable storage: the idempotency table, raw deliveries, envelopes and the outbox that feeds
//! the sinks. [`Store`] is the contract; [`sled::SledStore`] is the embedded implementation (a
//! clustered backend implements the same trait).
//!
//! The one rule every implementation keeps: a commit's future resolves `Ok` only after the event
//! is durable, and the duplicate claim is durable in the same atomic write as the event itself,
//! so a claimed ID always has its event and an unclaimed event is never acknowledged.

pub mod sled;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::envelope::Envelope;

/// The idempotency key: one event ID per provider instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub provider: String,
    pub event_id: String,
}

impl DedupKey {
    /// `provider \0 event_id`: the separator cannot occur in an instance name.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.provider.len() + 1 + self.event_id.len());
        key.extend_from_slice(self.provider.as_bytes());
        key.push(0);
        key.extend_from_slice(self.event_id.as_bytes());
        key
    }
}

/// What happened to a delivery.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Verified, normalised and stored; its envelopes are queued for the sinks.
    Accepted,
    /// Verified but could not be normalised (422); kept for inspection and redelivery.
    Unprocessable,
}

/// The raw delivery as received, minus credential headers. The body is stored beside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliveryRecord {
    pub id: String,
    pub provider: String,
    pub kind: String,
    pub event_id: Option<String>,
    pub received_at: String,
    pub client_ip: Option<String>,
    pub headers: Vec<(String, String)>,
    pub status: DeliveryStatus,
    pub error: Option<String>,
    pub envelope_ids: Vec<String>,
}

/// One event of a delivery: its idempotency key and its envelope.
#[derive(Debug, Clone)]
pub struct NewEnvelope {
    pub dedup: DedupKey,
    pub envelope: Envelope,
}

/// A verified delivery to store: one event, or several from a batch.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The raw delivery; its `envelope_ids` are filled with the events actually stored.
    pub delivery: DeliveryRecord,
    pub body: bytes::Bytes,
    pub events: Vec<NewEnvelope>,
    /// A value that may be used once only (Mailgun's token), claimed with the events.
    pub replay_guard: Option<DedupKey>,
}

/// The outcome of one event in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Stored now.
    Accepted,
    /// The event ID was already claimed; `id` is the stored envelope's gateway id.
    Duplicate { id: String },
}

/// The outcome of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// One outcome per event, in order.
    Stored(Vec<Committed>),
    /// The replay guard was already used by another delivery: nothing was stored.
    Replayed,
}

/// Storage trouble. Every variant maps to 503 so the provider retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("write queue is full")]
    QueueFull,
    #[error("store is shutting down")]
    Closed,
    #[error("storage failed earlier and needs a restart: {0}")]
    Failed(String),
    #[error("storage error: {0}")]
    Io(String),
}

/// A stored envelope waiting for the sinks.
#[derive(Debug, Clone)]
pub struct Pending {
    pub key: Vec<u8>,
    pub envelope: Envelope,
}

/// Durable event storage.
pub trait Store: Send + Sync + 'static {
    /// Fast path: the gateway id of an unexpired claim for `key`, without writing.
    fn find_duplicate(&self, key: &DedupKey) -> Result<Option<String>, StoreError>;

    /// Atomically claims the event IDs and stores the new events; resolves once durable.
    fn commit(&self, event: NewEvent) -> BoxFuture<'static, Result<Commit, StoreError>>;

    /// Durably keeps a delivery that could not be normalised; claims nothing.
    fn keep_unprocessable(
        &self,
        delivery: DeliveryRecord,
        body: bytes::Bytes,
    ) -> BoxFuture<'static, Result<(), StoreError>>;

    /// A durable no-op write: proves the store is writable (`/ready`).
    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>>;

    /// Up to `limit` envelopes not yet handed to the sinks, oldest first.
    fn pending(&self, limit: usize) -> Result<Vec<Pending>, StoreError>;

    /// Marks envelopes as handed to every sink.
    fn mark_dispatched(&self, keys: &[Vec<u8>]) -> Result<(), StoreError>;

    /// Forgets claims whose TTL has passed; returns how many.
    fn expire_claims(&self, now_secs: u64) -> Result<usize, StoreError>;

    /// Notified after every commit that queued envelopes.
    fn committed_signal(&self) -> Arc<Notify>;

    /// The raw delivery record and body for a gateway id.
    fn delivery(&self, id: &str) -> Result<Option<(DeliveryRecord, Vec<u8>)>, StoreError>;

    /// A stored envelope by id.
    fn envelope(&self, id: &str) -> Result<Option<Envelope>, StoreError>;

    /// Stops accepting writes and waits for the writer to finish what it holds.
    fn close(&self);
}
