//! Durable storage: the idempotency table, raw deliveries, envelopes, and one delivery task per
//! (envelope, sink) with every attempt made. [`Store`] is the contract; [`sled::SledStore`] is the embedded implementation (a
//! clustered backend implements the same trait).
//!
//! The one rule every implementation keeps: a commit's future resolves `Ok` only after the event
//! is durable, and the duplicate claim is durable in the same atomic write as the event itself,
//! so a claimed ID always has its event and an unclaimed event is never acknowledged.

pub mod sled;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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

/// One event of a delivery: its idempotency key, its envelope, and the sinks it goes to.
#[derive(Debug, Clone)]
pub struct NewEnvelope {
    pub dedup: DedupKey,
    pub envelope: Envelope,
    /// Names of the sinks whose filters match; a delivery task is created for each.
    pub sinks: Vec<String>,
    /// Ordering lane: envelopes of one lane reach a sink in arrival order. Empty: no order.
    pub lane: Vec<u8>,
    /// The earliest time (Unix ms) the dispatcher may attempt the tasks (sync mode delivers
    /// first itself).
    pub not_before_ms: i64,
}

/// Where a delivery task stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Delivered,
    /// Gave up: a dead letter until redelivered.
    Dead,
}

/// One envelope's delivery to one sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskRecord {
    pub sink: String,
    pub envelope_id: String,
    pub status: TaskStatus,
    /// Attempts made in all.
    pub attempts: u32,
    /// Attempts since the task was created or last redelivered (the retry budget).
    pub round_attempts: u32,
    pub created_at_ms: i64,
    /// When the retry budget started (creation or redelivery).
    pub round_started_ms: i64,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Ordering lane (see [`NewEnvelope::lane`]).
    #[serde(default)]
    pub lane: Vec<u8>,
}

/// What one attempt did.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; will be retried.
    Retry,
    /// Failed for good (a 4xx, or the retry budget is spent): dead letter.
    Dead,
}

/// One attempt, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptRecord {
    pub number: u32,
    pub at: String,
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// A task waiting for its next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTask {
    pub envelope_id: String,
    pub next_attempt_ms: i64,
    pub lane: Vec<u8>,
}

/// A stored delivery as listed by the event browser.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub delivery: DeliveryRecord,
    pub tasks: Vec<TaskRecord>,
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

/// Durable event storage.
pub trait Store: Send + Sync + 'static {
    /// Fast path: the gateway id of an unexpired claim for `key`, without writing. Resolves
    /// only once that claim is durable.
    fn find_duplicate(
        &self,
        key: &DedupKey,
    ) -> BoxFuture<'static, Result<Option<String>, StoreError>>;

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

    /// Up to `limit` pending tasks of `sink`, in arrival order.
    fn pending_tasks(&self, sink: &str, limit: usize) -> Result<Vec<PendingTask>, StoreError>;

    /// How many tasks of `sink` are pending.
    fn pending_count(&self, sink: &str) -> Result<usize, StoreError>;

    /// Records attempts and their tasks' new states (pending with a next time, delivered,
    /// dead), all in one atomic write.
    fn record_attempts(&self, done: &[(TaskRecord, AttemptRecord)]) -> Result<(), StoreError>;

    /// The delivery tasks of an envelope, one per sink.
    fn tasks(&self, envelope_id: &str) -> Result<Vec<TaskRecord>, StoreError>;

    /// Every attempt made to deliver an envelope to a sink.
    fn attempts(&self, envelope_id: &str, sink: &str) -> Result<Vec<AttemptRecord>, StoreError>;

    /// Newest deliveries first, starting before `before` (a gateway id).
    fn recent_deliveries(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// Dead-lettered tasks, optionally of one sink.
    fn dead_letters(&self, sink: Option<&str>, limit: usize)
        -> Result<Vec<TaskRecord>, StoreError>;

    /// Makes an envelope's tasks (all sinks, or one) pending again at `now_ms` with a fresh
    /// retry budget. Returns how many tasks were rescheduled.
    fn redeliver(
        &self,
        envelope_id: &str,
        sink: Option<&str>,
        now_ms: i64,
    ) -> Result<usize, StoreError>;

    /// Forgets claims whose TTL has passed; returns how many.
    fn expire_claims(&self, now_secs: u64) -> Result<usize, StoreError>;

    /// Deletes up to `limit` deliveries received before `cutoff_ms` (with their bodies,
    /// envelopes, tasks and attempts) whose tasks are all finished. Returns how many.
    fn purge_before(&self, cutoff_ms: i64, limit: usize) -> Result<usize, StoreError>;

    /// Changes after every commit that created delivery tasks.
    fn commits(&self) -> watch::Receiver<u64>;

    /// The raw delivery record and body for a gateway id.
    fn delivery(&self, id: &str) -> Result<Option<(DeliveryRecord, Vec<u8>)>, StoreError>;

    /// A stored envelope by id.
    fn envelope(&self, id: &str) -> Result<Option<Envelope>, StoreError>;

    /// Stops accepting writes and waits for the writer to finish what it holds.
    fn close(&self);
}
