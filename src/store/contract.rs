//! The store contract, split by consumer. Every method is async and returns a
//! [`StoreFuture`], so a backend may do its I/O however it likes (a writer thread for the
//! embedded store, a connection pool for PostgreSQL) and callers never block a worker thread.
//! Methods take owned arguments so the futures are `'static` and can be spawned or raced
//! against a deadline.
//!
//! The guarantees are written on each method; `tests/store_contract.rs` checks them for every
//! backend.

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::{
    AttemptRecord, Backlog, Commit, DedupKey, Due, DueTask, EventPage, EventQuery, NewReceipt,
    Pause, PauseTarget, Receipt, StoreError, TaskRecord,
};
use crate::envelope::Envelope;

/// What every store method returns.
pub type StoreFuture<T> = BoxFuture<'static, Result<T, StoreError>>;

/// The request path: duplicate lookups and the atomic, durable commit.
pub trait IngestStore: Send + Sync {
    /// Fast path before an event is normalised: the gateway id of an unexpired claim for
    /// `key`, without writing. Resolves only once that claim is durable.
    fn find_duplicate(&self, key: DedupKey) -> StoreFuture<Option<String>>;

    /// Atomically claims the event IDs (and the replay guard) and stores the receipt, its body,
    /// the new envelopes and one task per (envelope, sink). Resolves once all of it is durable.
    /// Events already claimed are [`super::Committed::Duplicate`] and are not stored again.
    fn commit(&self, receipt: NewReceipt) -> StoreFuture<Commit>;

    /// Durably keeps a receipt that could not be normalised; claims nothing.
    fn keep_unprocessable(&self, receipt: Receipt, body: bytes::Bytes) -> StoreFuture<()>;

    /// A durable no-op write: proves the store is writable (`/ready`).
    fn probe(&self) -> StoreFuture<()>;
}

/// The delivery workers' queue. Only durable tasks are handed out; a task handed out is leased
/// to its taker until its attempt is recorded or the lease ends, so no two takers attempt it
/// at once.
pub trait TaskQueue: Send + Sync {
    /// Leases up to `limit` due pending tasks of `sink` (next attempt at or before `now_ms`),
    /// oldest first, at most one per ordering lane, and none whose lane has an older task still
    /// pending or leased: per-object order. However many tasks wait behind a lane's oldest
    /// one, they do not keep due tasks of other lanes from being taken.
    fn take_due(&self, sink: String, now_ms: i64, limit: usize) -> StoreFuture<Due>;

    /// Leases the pending tasks of these envelopes for `sink` whatever their due time, skipping
    /// tasks leased by someone else and tasks whose lane has an older task still pending (sync
    /// mode delivers its own events this way, in per-object order).
    fn take(
        &self,
        sink: String,
        envelope_ids: Vec<String>,
        now_ms: i64,
    ) -> StoreFuture<Vec<DueTask>>;

    /// Records attempts and their tasks' new states (pending with a next time, delivered,
    /// dead) in one durable write, and ends their leases.
    fn record_attempts(&self, done: Vec<(TaskRecord, AttemptRecord)>) -> StoreFuture<()>;

    /// Makes an envelope's tasks (all sinks, or one) pending again at `now_ms` with a fresh
    /// retry budget, durably. Returns how many tasks were rescheduled.
    fn redeliver(
        &self,
        envelope_id: String,
        sink: Option<String>,
        now_ms: i64,
    ) -> StoreFuture<usize>;

    /// How many tasks of `sink` are pending.
    fn pending_count(&self, sink: String) -> StoreFuture<usize>;

    /// A sink's pending tasks: how many, and when the one committed first was created (the
    /// dashboard's queue depth and oldest pending age).
    fn backlog(&self, sink: String) -> StoreFuture<Backlog>;

    /// Changes after every durable write that made tasks pending (commit, redelivery).
    fn wakeups(&self) -> watch::Receiver<u64>;
}

/// What operators read: the admin API, `hookgate events` and the dashboard.
pub trait EventBrowser: Send + Sync {
    /// Receipts newest first, filtered, with the tasks of their envelopes.
    fn events(&self, query: EventQuery) -> StoreFuture<EventPage>;

    /// A receipt and its exact body, by gateway id.
    fn receipt(&self, id: String) -> StoreFuture<Option<(Receipt, bytes::Bytes)>>;

    /// A stored envelope by id.
    fn envelope(&self, id: String) -> StoreFuture<Option<Envelope>>;

    /// The delivery tasks of an envelope, one per sink.
    fn tasks(&self, envelope_id: String) -> StoreFuture<Vec<TaskRecord>>;

    /// Every attempt made to deliver an envelope to a sink, in order.
    fn attempts(&self, envelope_id: String, sink: String) -> StoreFuture<Vec<AttemptRecord>>;

    /// Dead-lettered tasks (optionally of one sink), oldest first.
    fn dead_letters(&self, sink: Option<String>, limit: usize) -> StoreFuture<Vec<TaskRecord>>;
}

/// Upkeep, run periodically (on one node at a time when several share a store).
pub trait Maintenance: Send + Sync {
    /// Forgets claims whose TTL has passed, durably; returns how many.
    fn expire_claims(&self, now_secs: u64) -> StoreFuture<usize>;

    /// Deletes up to `limit` receipts received before `cutoff_ms` (with their bodies,
    /// envelopes, tasks and attempts) whose tasks are all finished, durably. Returns how many.
    fn purge_before(&self, cutoff_ms: i64, limit: usize) -> StoreFuture<usize>;

    /// Stops accepting writes and waits for what was accepted to become durable.
    fn close(&self);
}

/// Run-time switches that outlive restarts and are shared by every replica of one store.
pub trait Controls: Send + Sync {
    /// Pauses (`paused`) or resumes `name`, durably: it resolves `Ok` once a restart (or
    /// another replica's next [`Controls::paused`]) sees the change. Pausing what is paused
    /// keeps its first time. Returns whether anything changed.
    fn set_paused(
        &self,
        target: PauseTarget,
        name: String,
        paused: bool,
        now_ms: i64,
    ) -> StoreFuture<bool>;

    /// Everything paused, by target then name.
    fn paused(&self) -> StoreFuture<Vec<Pause>>;
}

/// A whole store: what the gateway runs on.
pub trait Store: IngestStore + TaskQueue + EventBrowser + Maintenance + Controls + 'static {}

impl<T: IngestStore + TaskQueue + EventBrowser + Maintenance + Controls + 'static> Store for T {}
