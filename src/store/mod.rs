//! Durable storage: the idempotency table, receipts (the inbound requests as kept), envelopes,
//! and one delivery task per (envelope, sink) with every attempt made.
//!
//! [`contract`] is what a backend must do, split by its consumers: [`IngestStore`] (the request
//! path), [`TaskQueue`] (the delivery workers), [`EventBrowser`] (admin API, CLI, dashboard) and
//! [`Maintenance`] (claim expiry, retention) and [`Controls`] (pauses). [`Store`] is all five. [`log::LogStore`] is the
//! embedded backend (a commit log, with sled as the event-ID table and index);
//! [`postgres::PgStore`] the shared one for several replicas. Every backend passes the one
//! contract suite in `tests/store_contract.rs`.
//!
//! The rules every backend keeps:
//! - a commit resolves `Ok` only once the receipt, its claims, envelopes and tasks are durable,
//!   together (a claimed ID always has its event; an unclaimed event is never acknowledged);
//! - a duplicate is answered only once the claim it found is durable;
//! - the task queue hands out only durable tasks;
//! - every write (attempts, redelivery, expiry, purge) goes through the same durable path;
//! - a store that cannot make progress answers [`StoreError`] within its deadline, never hangs.

pub mod contract;
pub mod log;
pub mod postgres;

use serde::{Deserialize, Serialize};

pub use self::contract::{
    Controls, EventBrowser, IngestStore, Maintenance, Store, StoreFuture, TaskQueue,
};
use crate::envelope::Envelope;

/// What can be paused at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseTarget {
    /// A provider instance: its deliveries are answered 503 `paused`.
    Instance,
    /// A sink: its tasks stay pending.
    Sink,
}

impl PauseTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseTarget::Instance => "instance",
            PauseTarget::Sink => "sink",
        }
    }
}

/// One paused instance or sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub target: PauseTarget,
    pub name: String,
    /// When it was paused (Unix milliseconds).
    pub paused_at_ms: i64,
}

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

/// What became of a receipt.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Verified, normalised and stored; its envelopes are queued for the sinks.
    Accepted,
    /// Verified but could not be normalised (422); kept for inspection.
    Unprocessable,
}

/// A verified inbound request as kept, minus credential headers. The body is stored beside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Receipt {
    /// Gateway id (a ULID, so receipts sort by arrival).
    pub id: String,
    /// The instance name from the URL.
    pub provider: String,
    pub kind: String,
    pub event_id: Option<String>,
    pub received_at: String,
    pub client_ip: Option<String>,
    pub headers: Vec<(String, String)>,
    pub status: ReceiptStatus,
    pub error: Option<String>,
    /// The envelopes actually stored from it (a batch has several).
    pub envelope_ids: Vec<String>,
    /// Their provider event types and event ids, for the event browser's filters.
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub event_ids: Vec<String>,
    /// Their `object.action`, for the object and action filters (absent in receipts stored
    /// before these filters existed: such receipts match no object or action filter).
    #[serde(default)]
    pub subjects: Vec<String>,
}

/// `object.action` of an envelope, as receipts list them.
pub fn subject(envelope: &Envelope) -> String {
    format!("{}.{}", envelope.object, envelope.action)
}

/// One event of a receipt: its idempotency key, its envelope, and the sinks it goes to.
#[derive(Debug, Clone)]
pub struct NewEnvelope {
    pub dedup: DedupKey,
    pub envelope: Envelope,
    /// The envelope serialised once, as stored and as delivered.
    pub json: bytes::Bytes,
    /// Names of the sinks whose filters match; a delivery task is created for each.
    pub sinks: Vec<String>,
    /// Ordering lane: envelopes of one lane reach a sink in commit order. Empty: no order.
    pub lane: Vec<u8>,
    /// The earliest time (Unix ms) a background worker may attempt the tasks (a sync-mode
    /// request delivers them itself first).
    pub not_before_ms: i64,
}

/// A verified receipt to store: one event, or several from a batch.
#[derive(Debug, Clone)]
pub struct NewReceipt {
    /// Its `envelope_ids`, `types` and `event_ids` are filled with the events actually stored.
    pub receipt: Receipt,
    pub body: bytes::Bytes,
    pub events: Vec<NewEnvelope>,
    /// A value that may be used once only (Mailgun's token), claimed with the events.
    pub replay_guard: Option<DedupKey>,
}

impl NewReceipt {
    /// Bytes this write holds in memory until it is durable (bounds the write queue).
    pub fn weight(&self) -> usize {
        self.body.len() + self.events.iter().map(|e| e.json.len()).sum::<usize>() + 512
    }
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
    /// The replay guard was already used by another receipt: nothing was stored.
    Replayed,
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
    /// The start of a successful answer's body (at most 512 bytes; errors keep theirs in
    /// `error`). Absent in records made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// A task handed to a worker: the task and its envelope, leased to the caller until its
/// attempt is recorded (or the lease runs out).
#[derive(Debug, Clone)]
pub struct DueTask {
    pub task: TaskRecord,
    /// The stored envelope, or why it cannot be read (the task then becomes a dead letter).
    pub envelope: Result<Envelope, String>,
}

/// What [`TaskQueue::backlog`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub pending: usize,
    /// When the pending task committed first was created (Unix ms); a redelivered task counts
    /// from its creation, not its redelivery.
    pub oldest_pending_ms: Option<i64>,
}

/// What [`TaskQueue::take_due`] found.
#[derive(Debug, Clone, Default)]
pub struct Due {
    /// Leased tasks, at most one per ordering lane, oldest first.
    pub tasks: Vec<DueTask>,
    /// The earliest time (Unix ms) a task not taken now can be taken: its due time, or when
    /// its lease ends; `now` when the limit left due tasks behind.
    pub next_due_ms: Option<i64>,
    /// Pending tasks of the sink the scan looked at. A backend may stop counting at its scan
    /// limit; [`TaskQueue::pending_count`] is exact (the queue-depth metric uses it).
    ///
    /// [`TaskQueue::pending_count`]: super::TaskQueue::pending_count
    pub pending: usize,
}

/// A stored receipt with the delivery tasks of its envelopes.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub receipt: Receipt,
    pub tasks: Vec<TaskRecord>,
}

/// The event browser's filters (all optional; they combine with AND).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Instance name.
    pub provider: Option<String>,
    pub status: Option<EventStatus>,
    /// The provider's event id, exactly.
    pub event_id: Option<String>,
    /// A glob over the provider event type (`customer.*`).
    pub event_type: Option<glob::Pattern>,
    /// A glob over the envelope `object` (`customer*`); with `action`, of the same envelope.
    pub object: Option<glob::Pattern>,
    /// The canonical `action`, exactly (`updated`).
    pub action: Option<String>,
    /// Received at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Received before (Unix ms).
    pub until_ms: Option<i64>,
    /// Page cursor: receipts older than this gateway id.
    pub before: Option<String>,
    pub limit: usize,
}

/// The status filter of the event browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Accepted,
    Unprocessable,
    /// Some task is still pending.
    Pending,
    /// Every task was delivered.
    Delivered,
    /// Some task is a dead letter.
    Dead,
}

impl EventStatus {
    pub const ALL: [(&'static str, EventStatus); 5] = [
        ("accepted", EventStatus::Accepted),
        ("unprocessable", EventStatus::Unprocessable),
        ("pending", EventStatus::Pending),
        ("delivered", EventStatus::Delivered),
        ("dead", EventStatus::Dead),
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, s)| *s)
    }

    /// Whether a receipt with these tasks has this status.
    pub fn holds(self, receipt: &Receipt, tasks: &[TaskRecord]) -> bool {
        match self {
            EventStatus::Accepted => receipt.status == ReceiptStatus::Accepted,
            EventStatus::Unprocessable => receipt.status == ReceiptStatus::Unprocessable,
            EventStatus::Pending => tasks.iter().any(|t| t.status == TaskStatus::Pending),
            EventStatus::Dead => tasks.iter().any(|t| t.status == TaskStatus::Dead),
            EventStatus::Delivered => {
                !tasks.is_empty() && tasks.iter().all(|t| t.status == TaskStatus::Delivered)
            }
        }
    }
}

impl EventQuery {
    /// Whether a receipt (with its tasks) passes every filter but the cursor.
    pub fn matches(&self, summary: &EventSummary) -> bool {
        let receipt = &summary.receipt;
        if self
            .provider
            .as_ref()
            .is_some_and(|p| *p != receipt.provider)
        {
            return false;
        }
        if self
            .event_id
            .as_ref()
            .is_some_and(|e| receipt.event_id.as_ref() != Some(e) && !receipt.event_ids.contains(e))
        {
            return false;
        }
        if let Some(pattern) = &self.event_type {
            if !receipt.types.iter().any(|t| pattern.matches(t)) {
                return false;
            }
        }
        if self.object.is_some() || self.action.is_some() {
            // Object and action of one envelope (the action follows the last dot).
            let any = receipt.subjects.iter().any(|subject| {
                let (object, action) = subject.rsplit_once('.').unwrap_or((subject, ""));
                self.object.as_ref().is_none_or(|p| p.matches(object))
                    && self.action.as_ref().is_none_or(|a| a == action)
            });
            if !any {
                return false;
            }
        }
        self.status
            .is_none_or(|status| status.holds(receipt, &summary.tasks))
    }
}

/// A page of the event browser, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    pub events: Vec<EventSummary>,
    /// The `before` of the next page; `None` at the end.
    pub next: Option<String>,
}

/// Storage trouble. Every variant maps to 503 so the provider retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stored record is there but cannot be decoded (a delivery task whose envelope this is
    /// becomes a dead letter; the event browser shows the reason).
    #[error("a stored record cannot be read: {0}")]
    Unreadable(String),
    #[error("write queue is full")]
    QueueFull,
    #[error("store is shutting down")]
    Closed,
    #[error("storage did not answer within {0} ms")]
    Timeout(u64),
    #[error("storage failed earlier and needs a restart: {0}")]
    Failed(String),
    #[error("storage error: {0}")]
    Io(String),
}
