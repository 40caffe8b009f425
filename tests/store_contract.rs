//! The store contract suite: the guarantees written on the traits of `hookgate::store::contract`
//! (and the rules in `hookgate::store`), checked the same way for every backend.
//!
//! Each case is an `async fn(&mut Harness)` written against [`Store`] only. [`contract_suite!`]
//! turns the list of cases into one `#[tokio::test]` per case for a backend, given how to open
//! that backend on a directory with the suite's clock:
//!
//! ```ignore
//! contract_suite!(postgres, |dir, clock| PgStore::connect(&database_for(&dir), clock).await);
//! ```
//!
//! Opening twice on the same directory must reach the same data: the harness closes the store
//! and opens it again to check what survives. A backend that keeps its data elsewhere (a
//! database server) derives where from the directory, so each case gets its own, and reopening
//! reconnects to it. Every backend is opened with a claim TTL of [`DEDUP_TTL_SECS`] and a task
//! lease of [`LEASE_SECS`].
//!
//! Time: the clock is a [`ManualClock`] starting at [`T0`]; gateway ids are ULIDs stamped with
//! the clock's time, so receipts sort by "arrival" and their ids carry their receipt time.
//! Nothing sleeps on wall time; every store call fails the case if it does not answer within
//! [`DEADLINE`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hookgate::clock::{Clock, ManualClock};
use hookgate::config::{StorageBackend, StorageSettings};
use hookgate::envelope::{format_millis, Envelope};
use hookgate::metrics::Metrics;
use hookgate::secret::Secret;
use hookgate::store::log::LogStore;
use hookgate::store::postgres::PgStore;
use hookgate::store::{
    AttemptOutcome, AttemptRecord, Backlog, Commit, Committed, DedupKey, DueTask, EventPage,
    EventQuery, EventStatus, NewEnvelope, NewReceipt, Pause, PauseTarget, Receipt, ReceiptStatus,
    Store, StoreError, StoreFuture, TaskRecord, TaskStatus,
};
use tokio::sync::watch;
use ulid::Ulid;

#[path = "common/postgres.rs"]
mod pg;

/// One test per case for a backend: `contract_suite!(name, |dir, clock| <open expression>)`.
/// The expression may `.await` and yields `Result<impl Store, StoreError>`; `dir` is a
/// `PathBuf` (the same one when the case reopens the store), `clock` an `Arc<ManualClock>`.
macro_rules! contract_suite {
    ($backend:ident, |$dir:ident, $clock:ident| $open:expr) => {
        mod $backend {
            use super::*;

            fn factory() -> Factory {
                Arc::new(|$dir: PathBuf, $clock: Arc<ManualClock>| {
                    Box::pin(async move { erase($open) })
                })
            }

            contract_suite!(@cases
                a_new_event_is_accepted_and_a_second_copy_is_a_duplicate_of_the_first,
                a_batch_stores_only_its_new_events_and_its_receipt_lists_exactly_those,
                two_copies_committed_at_once_store_exactly_one,
                a_used_replay_guard_refuses_new_events_but_answers_copies_as_duplicates,
                everything_committed_survives_reopening_the_store,
                a_write_accepted_before_close_is_durable_after_reopening,
                claims_expire_after_their_ttl_and_the_sweep_spares_a_fresh_claim,
                the_queue_hands_out_due_tasks_oldest_first_and_records_their_attempts,
                envelopes_of_one_lane_reach_a_sink_in_commit_order,
                take_leases_named_tasks_whatever_their_due_time_but_not_leased_ones,
                a_lease_that_runs_out_hands_the_task_out_again,
                dead_letters_are_listed_oldest_first_up_to_the_limit,
                redelivery_makes_finished_tasks_pending_again_and_wakes_the_workers,
                an_unprocessable_receipt_is_kept_and_browsable_but_claims_nothing,
                the_event_browser_lists_newest_first_and_pages_without_repeats,
                the_event_browser_filters_combine,
                retention_purges_old_finished_receipts_only_and_respects_its_limit,
                a_closed_store_refuses_writes_promptly,
                the_pending_count_follows_commits_and_deliveries,
                unknown_ids_read_as_nothing,
                a_long_backlog_behind_one_failing_object_does_not_starve_other_objects,
                a_redelivered_older_event_waits_while_its_object_has_a_delivery_in_flight,
                an_envelope_as_deep_as_the_gateway_writes_reads_back_whole,
                pauses_are_kept_per_target_and_name_and_survive_reopening,
            );
        }
    };
    (@cases $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let mut h = Harness::open(factory()).await;
                super::$case(&mut h).await;
                h.finish().await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

// Small segments, so the cases also cross segment boundaries.
contract_suite!(commit_log, |dir, clock| {
    LogStore::open(
        &StorageSettings {
            path: dir.to_str().expect("UTF-8 temp dir").into(),
            dedup_ttl_secs: DEDUP_TTL_SECS,
            lease_secs: LEASE_SECS,
            cache_capacity_bytes: 16 * 1024 * 1024,
            segment_bytes: 8 * 1024,
            write_timeout_ms: WRITE_TIMEOUT_MS,
            ..StorageSettings::default()
        },
        clock,
        Arc::new(Metrics::new()),
    )
});

// One database per case on the test server (`scripts/with-postgres.sh`), named after the
// case's directory, so reopening reconnects to the same data.
contract_suite!(postgres, |dir, clock| {
    let url = pg::ensure_database(&pg::name_for(&dir)).await;
    PgStore::connect(
        &StorageSettings {
            backend: StorageBackend::Postgres,
            url: Some(Secret::new(url)),
            dedup_ttl_secs: DEDUP_TTL_SECS,
            lease_secs: LEASE_SECS,
            pool_size: 4,
            write_timeout_ms: WRITE_TIMEOUT_MS,
            ..StorageSettings::default()
        },
        clock,
    )
    .await
});

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The claim TTL every backend is opened with.
pub const DEDUP_TTL_SECS: u64 = 3_600;
/// How long a task handed out stays leased to its taker (measured against the `now_ms` the
/// queue is called with); every backend is opened with it.
pub const LEASE_SECS: u64 = 30;
/// Where the clock starts (Unix seconds).
pub const T0: i64 = 1_700_000_000;
/// How long any store call (and `close`) may take before the case fails as hung.
/// The backends' own deadline for a store call (`storage.write_timeout_ms`), below
/// [`DEADLINE`]; the cases that test the deadline itself live with each backend.
pub const WRITE_TIMEOUT_MS: u64 = 20_000;
// A hang guard, not a speed test: generous, because a loaded 2-core machine running a debug
// build commits the 10,050-event backlog case in seconds, not milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(30);
const SECOND: i64 = 1_000;

const ALPHA: &str = "alpha";
const BETA: &str = "beta";
const GAMMA: &str = "gamma";

pub type Opened = Result<Arc<dyn Store>, StoreError>;
/// Opens a backend on a directory with the shared clock; called again to reopen.
pub type Factory =
    Arc<dyn Fn(PathBuf, Arc<ManualClock>) -> BoxFuture<'static, Opened> + Send + Sync>;

pub fn erase<S: Store>(opened: Result<S, StoreError>) -> Opened {
    opened.map(|store| Arc::new(store) as Arc<dyn Store>)
}

/// One case's store, its directory and clock, and builders for what it commits. Derefs to the
/// open store, so a case calls `h.commit(..)`, `h.take_due(..)` directly.
pub struct Harness {
    dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    factory: Factory,
    store: Option<Arc<dyn Store>>,
    seq: AtomicU64,
}

impl std::ops::Deref for Harness {
    type Target = dyn Store;

    fn deref(&self) -> &dyn Store {
        self.store.as_deref().expect("the store is open")
    }
}

impl Harness {
    pub async fn open(factory: Factory) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::at_unix(T0));
        let mut harness = Self {
            dir,
            clock,
            factory,
            store: None,
            seq: AtomicU64::new(0),
        };
        harness.store = Some(harness.open_store().await);
        harness
    }

    async fn open_store(&self) -> Arc<dyn Store> {
        let opening = (self.factory)(self.dir.path().join("store"), self.clock.clone());
        match tokio::time::timeout(DEADLINE, opening).await {
            Ok(Ok(store)) => store,
            Ok(Err(e)) => panic!("cannot open the store: {e}"),
            Err(_) => panic!("opening the store did not finish within {DEADLINE:?}"),
        }
    }

    /// Closes the store and opens it again on the same data.
    pub async fn reopen(&mut self) {
        let store = self.store.take().expect("the store is open");
        close_and_drop(store).await;
        self.store = Some(self.open_store().await);
    }

    /// A second handle on the store, e.g. for spawned tasks. Drop it before [`Self::reopen`].
    pub fn handle(&self) -> Arc<dyn Store> {
        self.store.clone().expect("the store is open")
    }

    pub async fn finish(mut self) {
        if let Some(store) = self.store.take() {
            close_and_drop(store).await;
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    pub fn now_secs(&self) -> u64 {
        u64::try_from(self.clock.unix_secs()).expect("after 1970")
    }

    pub fn advance(&self, secs: i64) {
        self.clock.advance_secs(secs);
    }

    /// A fresh gateway id stamped with the clock's time; ids sort by creation.
    pub fn id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Ulid::from_parts(self.now_ms() as u64, u128::from(n)).to_string()
    }

    /// A new envelope (fresh id) for `provider`/`event_id`, to sink [`ALPHA`], no lane, due now.
    pub fn new_event(&self, provider: &str, event_id: &str, event_type: &str) -> NewEnvelope {
        let envelope = Envelope {
            id: self.id(),
            provider: provider.into(),
            kind: "generic".into(),
            event_id: event_id.into(),
            event_type: event_type.into(),
            action: event_type.rsplit('.').next().unwrap_or_default().into(),
            object: event_type.split('.').next().unwrap_or_default().into(),
            object_id: Some(format!("obj_{event_id}")),
            current: Some(serde_json::json!({ "event": event_id, "n": 1 })),
            previous: None,
            occurred_at: Some("2023-11-14T22:13:20Z".into()),
            received_at: format_millis(self.clock.now()),
            meta: serde_json::Map::new(),
        };
        NewEnvelope {
            dedup: key(provider, event_id),
            json: Bytes::from(serde_json::to_vec(&envelope).expect("envelope serialises")),
            envelope,
            sinks: vec![ALPHA.into()],
            lane: Vec::new(),
            not_before_ms: self.now_ms(),
        }
    }

    /// An accepted receipt (fresh id, received now) of these events, with a body of its own
    /// that is not valid UTF-8 (bodies are kept byte for byte).
    pub fn new_receipt(&self, events: Vec<NewEnvelope>) -> NewReceipt {
        let id = self.id();
        let provider = events
            .first()
            .map_or_else(|| "shop".to_owned(), |e| e.dedup.provider.clone());
        let mut body = format!("{{\"receipt\":\"{id}\",\"events\":{}}}", events.len()).into_bytes();
        body.extend_from_slice(&[b'\n', 0x00, 0xff, 0xfe]);
        NewReceipt {
            receipt: Receipt {
                id: id.clone(),
                provider,
                kind: "generic".into(),
                event_id: match events.as_slice() {
                    [one] => Some(one.dedup.event_id.clone()),
                    _ => None,
                },
                received_at: format_millis(self.clock.now()),
                client_ip: Some("203.0.113.7".into()),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-request-id".into(), id),
                ],
                status: ReceiptStatus::Accepted,
                error: None,
                envelope_ids: Vec::new(),
                types: Vec::new(),
                subjects: Vec::new(),
                event_ids: Vec::new(),
            },
            body: Bytes::from(body),
            events,
            replay_guard: None,
        }
    }

    /// A receipt that could not be normalised, received now.
    pub fn unprocessable(&self, provider: &str, event_id: &str) -> Receipt {
        Receipt {
            id: self.id(),
            provider: provider.into(),
            kind: "generic".into(),
            event_id: Some(event_id.into()),
            received_at: format_millis(self.clock.now()),
            client_ip: None,
            headers: vec![("content-type".into(), "application/json".into())],
            status: ReceiptStatus::Unprocessable,
            error: Some("missing field `type`".into()),
            envelope_ids: Vec::new(),
            types: Vec::new(),
            subjects: Vec::new(),
            event_ids: Vec::new(),
        }
    }

    /// Commits a one-event receipt and expects it accepted; returns the envelope id.
    pub async fn accept(&self, event: NewEnvelope) -> String {
        let id = event.envelope.id.clone();
        let outcome = self.commit(self.new_receipt(vec![event])).done().await;
        assert_eq!(outcome, stored(vec![Committed::Accepted]), "commit of {id}");
        id
    }

    /// Leases one envelope's task for `sink` with `take`, records one attempt with `outcome`
    /// at the clock's time, and returns what was recorded.
    pub async fn settle(
        &self,
        envelope_id: &str,
        sink: &str,
        outcome: AttemptOutcome,
        next_ms: Option<i64>,
    ) -> (TaskRecord, AttemptRecord) {
        let taken = self
            .take(sink.into(), vec![envelope_id.into()], self.now_ms())
            .done()
            .await;
        assert_eq!(
            taken.len(),
            1,
            "take({sink}, [{envelope_id}]) should lease its one pending task"
        );
        let done = attempted(&taken[0].task, outcome, self.now_ms(), next_ms);
        self.record_attempts(vec![done.clone()]).done().await;
        done
    }

    /// An envelope's tasks, sorted by sink.
    pub async fn tasks_of(&self, envelope_id: &str) -> Vec<TaskRecord> {
        let mut tasks = self.tasks(envelope_id.into()).done().await;
        tasks.sort_by(|a, b| a.sink.cmp(&b.sink));
        tasks
    }

    /// Receipt ids of one page, after checking each summary passes the query's own filter.
    pub async fn query(&self, query: EventQuery) -> Vec<String> {
        let page = self.events(query.clone()).done().await;
        check_page(&query, &page);
        receipt_ids(&page)
    }

    /// Every page of a query, following `next`; checks page sizes.
    pub async fn walk(&self, query: EventQuery) -> Vec<String> {
        let mut query = query;
        let mut seen = Vec::new();
        for _ in 0..50 {
            let page = self.events(query.clone()).done().await;
            check_page(&query, &page);
            seen.extend(receipt_ids(&page));
            match page.next {
                Some(next) => query.before = Some(next),
                None => return seen,
            }
        }
        panic!("pagination did not end after 50 pages: {seen:?}");
    }
}

async fn close_and_drop(store: Arc<dyn Store>) {
    assert_eq!(
        Arc::strong_count(&store),
        1,
        "the case still holds a handle on the store it closes"
    );
    // `close` is synchronous and waits for the disk: off the runtime, under the deadline.
    let closing = tokio::task::spawn_blocking(move || {
        store.close();
        drop(store);
    });
    match tokio::time::timeout(DEADLINE, closing).await {
        Ok(joined) => joined.expect("close panicked"),
        Err(_) => panic!("close() did not return within {DEADLINE:?}"),
    }
}

fn check_page(query: &EventQuery, page: &EventPage) {
    assert!(
        page.events.len() <= query.limit,
        "a page of limit {} has {} events",
        query.limit,
        page.events.len()
    );
    for summary in &page.events {
        assert!(
            query.matches(summary),
            "receipt {} does not match {query:?}",
            summary.receipt.id
        );
    }
}

/// Awaits a store future under the deadline: `.done()` expects success, `.fails()` a
/// [`StoreError`]. Failures name the calling line.
trait Answer<T> {
    fn done(self) -> BoxFuture<'static, T>;
    fn fails(self) -> BoxFuture<'static, StoreError>;
}

impl<T: Send + 'static> Answer<T> for StoreFuture<T> {
    #[track_caller]
    fn done(self) -> BoxFuture<'static, T> {
        let at = std::panic::Location::caller();
        Box::pin(async move {
            match tokio::time::timeout(DEADLINE, self).await {
                Ok(Ok(value)) => value,
                Ok(Err(e)) => panic!("store call at {at} failed: {e} ({e:?})"),
                Err(_) => panic!("store call at {at} did not answer within {DEADLINE:?}"),
            }
        })
    }

    #[track_caller]
    fn fails(self) -> BoxFuture<'static, StoreError> {
        let at = std::panic::Location::caller();
        Box::pin(async move {
            match tokio::time::timeout(DEADLINE, self).await {
                Ok(Ok(_)) => panic!("store call at {at} succeeded; expected a StoreError"),
                Ok(Err(e)) => e,
                Err(_) => panic!(
                    "store call at {at} hung for {DEADLINE:?}; expected a StoreError promptly"
                ),
            }
        })
    }
}

/// Builder tweaks for a [`NewEnvelope`] (none changes the envelope, so `json` stays valid).
trait EventExt: Sized {
    fn to(self, sinks: &[&str]) -> Self;
    fn lane(self, lane: &str) -> Self;
    fn due_at(self, ms: i64) -> Self;
    fn eid(&self) -> String;
}

impl EventExt for NewEnvelope {
    fn to(mut self, sinks: &[&str]) -> Self {
        self.sinks = sinks.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    fn lane(mut self, lane: &str) -> Self {
        self.lane = lane.as_bytes().to_vec();
        self
    }

    fn due_at(mut self, ms: i64) -> Self {
        self.not_before_ms = ms;
        self
    }

    fn eid(&self) -> String {
        self.envelope.id.clone()
    }
}

fn key(provider: &str, event_id: &str) -> DedupKey {
    DedupKey {
        provider: provider.into(),
        event_id: event_id.into(),
    }
}

fn stored(outcomes: Vec<Committed>) -> Commit {
    Commit::Stored(outcomes)
}

fn duplicate_of(id: &str) -> Committed {
    Committed::Duplicate { id: id.into() }
}

/// The receipt as the store should keep it when the events at `stored` were stored.
fn expected_receipt(new: &NewReceipt, stored: &[usize]) -> Receipt {
    let mut receipt = new.receipt.clone();
    let events = stored.iter().map(|i| &new.events[*i]);
    receipt.envelope_ids = events.clone().map(|e| e.envelope.id.clone()).collect();
    receipt.types = events
        .clone()
        .map(|e| e.envelope.event_type.clone())
        .collect();
    receipt.event_ids = events
        .clone()
        .map(|e| e.envelope.event_id.clone())
        .collect();
    receipt.subjects = events
        .map(|e| hookgate::store::subject(&e.envelope))
        .collect();
    receipt
}

/// The task state and attempt a worker records after one attempt at `now_ms`.
fn attempted(
    task: &TaskRecord,
    outcome: AttemptOutcome,
    now_ms: i64,
    next_ms: Option<i64>,
) -> (TaskRecord, AttemptRecord) {
    let mut task = task.clone();
    task.attempts += 1;
    task.round_attempts += 1;
    let (status, error, http) = match outcome {
        AttemptOutcome::Delivered => (TaskStatus::Delivered, None, 200),
        AttemptOutcome::Retry => (TaskStatus::Pending, Some("sink answered 503"), 503),
        AttemptOutcome::Dead => (TaskStatus::Dead, Some("sink answered 410"), 410),
    };
    task.status = status;
    task.next_attempt_ms = match outcome {
        AttemptOutcome::Retry => Some(next_ms.expect("a retry needs its next time")),
        _ => None,
    };
    task.last_error = error.map(str::to_owned);
    let attempt = AttemptRecord {
        number: task.attempts,
        at: format_millis(chrono::DateTime::from_timestamp_millis(now_ms).expect("valid time")),
        outcome,
        http_status: Some(http),
        exit_code: None,
        error: error.map(str::to_owned),
        duration_ms: 7,
        // What a sink answered a delivery with is kept, and read back whole.
        response: (outcome == AttemptOutcome::Delivered).then(|| "{\"ok\":true}".to_owned()),
    };
    (task, attempt)
}

fn ids(tasks: &[DueTask]) -> Vec<String> {
    tasks.iter().map(|t| t.task.envelope_id.clone()).collect()
}

fn receipt_ids(page: &EventPage) -> Vec<String> {
    page.events.iter().map(|s| s.receipt.id.clone()).collect()
}

fn query() -> EventQuery {
    EventQuery {
        limit: 100,
        ..EventQuery::default()
    }
}

fn type_glob(pattern: &str) -> Option<glob::Pattern> {
    Some(glob::Pattern::new(pattern).expect("valid glob"))
}

/// A task as created by a commit and not yet attempted.
fn assert_fresh(task: &TaskRecord, event: &NewEnvelope, sink: &str) {
    let what = format!("new task of {} for {sink}", event.envelope.id);
    assert_eq!(task.sink, sink, "{what}");
    assert_eq!(task.envelope_id, event.envelope.id, "{what}");
    assert_eq!(task.status, TaskStatus::Pending, "{what}");
    assert_eq!((task.attempts, task.round_attempts), (0, 0), "{what}");
    assert_eq!(task.next_attempt_ms, Some(event.not_before_ms), "{what}");
    assert_eq!(task.lane, event.lane, "{what}");
    assert_eq!(task.last_error, None, "{what}");
}

/// Waits for the wakeup channel to change.
async fn woke(wake: &mut watch::Receiver<u64>, after: &str) {
    match tokio::time::timeout(DEADLINE, wake.changed()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("wakeups sender dropped before {after} was signalled"),
        Err(_) => panic!("no wakeup within {DEADLINE:?} after {after}"),
    }
}

fn sorted(ids: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    ids.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Cases: the request path
// ---------------------------------------------------------------------------------------------

async fn a_new_event_is_accepted_and_a_second_copy_is_a_duplicate_of_the_first(h: &mut Harness) {
    assert_eq!(h.find_duplicate(key("shop", "evt_1")).done().await, None);
    let first = h
        .accept(h.new_event("shop", "evt_1", "customer.created"))
        .await;

    // Another delivery of the same event: new receipt and envelope ids, same key.
    let copy = h.new_event("shop", "evt_1", "customer.created");
    let copy_id = copy.eid();
    assert_eq!(
        h.commit(h.new_receipt(vec![copy])).done().await,
        stored(vec![duplicate_of(&first)])
    );
    assert_eq!(
        h.find_duplicate(key("shop", "evt_1")).done().await,
        Some(first.clone())
    );
    assert_eq!(h.find_duplicate(key("shop", "evt_2")).done().await, None);
    // The copy was not stored again.
    assert_eq!(h.envelope(copy_id.clone()).done().await, None);
    assert!(h.tasks(copy_id).done().await.is_empty());
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 1);

    // The key is one event id per provider instance.
    assert_eq!(h.find_duplicate(key("crm", "evt_1")).done().await, None);
    let other = h
        .accept(h.new_event("crm", "evt_1", "customer.created"))
        .await;
    assert_ne!(other, first);
    assert_eq!(
        h.find_duplicate(key("shop", "evt_1")).done().await,
        Some(first)
    );
}

async fn a_batch_stores_only_its_new_events_and_its_receipt_lists_exactly_those(h: &mut Harness) {
    let claimed = h.accept(h.new_event("shop", "evt_b", "invoice.paid")).await;

    let a = h
        .new_event("shop", "evt_a", "customer.created")
        .to(&[ALPHA, BETA]);
    let b = h.new_event("shop", "evt_b", "invoice.paid");
    let c = h.new_event("shop", "evt_c", "order.shipped");
    let batch = h.new_receipt(vec![a.clone(), b.clone(), c.clone()]);
    let expected = expected_receipt(&batch, &[0, 2]);
    let body = batch.body.clone();
    assert_eq!(
        h.commit(batch).done().await,
        stored(vec![
            Committed::Accepted,
            duplicate_of(&claimed),
            Committed::Accepted
        ]),
        "one outcome per event, in order"
    );

    let (receipt, kept_body) = h
        .receipt(expected.id.clone())
        .done()
        .await
        .expect("the batch's receipt is stored");
    assert_eq!(receipt.envelope_ids, [a.eid(), c.eid()]);
    assert_eq!(receipt.types, ["customer.created", "order.shipped"]);
    assert_eq!(receipt.event_ids, ["evt_a", "evt_c"]);
    assert_eq!(
        receipt, expected,
        "the rest of the receipt is kept as given"
    );
    assert_eq!(kept_body, body, "the exact body bytes");

    assert_eq!(h.envelope(a.eid()).done().await, Some(a.envelope.clone()));
    assert_eq!(h.envelope(c.eid()).done().await, Some(c.envelope.clone()));
    assert_eq!(h.envelope(b.eid()).done().await, None);
    assert!(h.tasks(b.eid()).done().await.is_empty());
    let a_tasks = h.tasks_of(&a.eid()).await;
    assert_eq!(a_tasks.len(), 2, "one task per sink: {a_tasks:?}");
    assert_fresh(&a_tasks[0], &a, ALPHA);
    assert_fresh(&a_tasks[1], &a, BETA);
    let c_tasks = h.tasks_of(&c.eid()).await;
    assert_eq!(c_tasks.len(), 1, "{c_tasks:?}");
    assert_fresh(&c_tasks[0], &c, ALPHA);
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 3);
    assert_eq!(h.pending_count(BETA.into()).done().await, 1);
    assert_eq!(
        h.find_duplicate(key("shop", "evt_c")).done().await,
        Some(c.eid())
    );
}

async fn two_copies_committed_at_once_store_exactly_one(h: &mut Harness) {
    const ROUNDS: usize = 16;
    let store = h.handle();
    for round in 0..ROUNDS {
        let event_id = format!("evt_race_{round}");
        let copies = [
            h.new_receipt(vec![h.new_event("shop", &event_id, "customer.created")]),
            h.new_receipt(vec![h.new_event("shop", &event_id, "customer.created")]),
        ];
        let ids = [copies[0].events[0].eid(), copies[1].events[0].eid()];
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let [one, two] = copies.map(|receipt| {
            let store = store.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                store.commit(receipt).done().await
            })
        });
        let (one, two) = tokio::join!(one, two);
        let outcomes = [one.expect("commit task"), two.expect("commit task")];
        let accepted: Vec<usize> = (0..2)
            .filter(|i| outcomes[*i] == stored(vec![Committed::Accepted]))
            .collect();
        assert_eq!(
            accepted.len(),
            1,
            "round {round}: exactly one copy is accepted: {outcomes:?}"
        );
        let (winner, loser) = (accepted[0], 1 - accepted[0]);
        assert_eq!(
            outcomes[loser],
            stored(vec![duplicate_of(&ids[winner])]),
            "round {round}: the other is a duplicate of the accepted one"
        );
        assert_eq!(
            h.find_duplicate(key("shop", &event_id)).done().await,
            Some(ids[winner].clone())
        );
        assert_eq!(h.envelope(ids[loser].clone()).done().await, None);
    }
    drop(store);
    assert_eq!(h.pending_count(ALPHA.into()).done().await, ROUNDS);
}

async fn a_used_replay_guard_refuses_new_events_but_answers_copies_as_duplicates(h: &mut Harness) {
    let guard = key("mail", "token:7f3a");
    let mut first = h.new_receipt(vec![h.new_event("mail", "evt_m1", "message.delivered")]);
    first.replay_guard = Some(guard.clone());
    let m1 = first.events[0].eid();
    assert_eq!(
        h.commit(first).done().await,
        stored(vec![Committed::Accepted])
    );

    // Another receipt (new events) reusing the guard: refused, nothing stored.
    let fresh = h.new_event("mail", "evt_m2", "message.opened");
    let fresh_id = fresh.eid();
    let mut replay = h.new_receipt(vec![fresh]);
    replay.replay_guard = Some(guard.clone());
    let replay_id = replay.receipt.id.clone();
    assert_eq!(h.commit(replay).done().await, Commit::Replayed);
    assert!(h.receipt(replay_id).done().await.is_none());
    assert_eq!(h.envelope(fresh_id.clone()).done().await, None);
    assert!(h.tasks(fresh_id).done().await.is_empty());
    assert_eq!(h.find_duplicate(key("mail", "evt_m2")).done().await, None);
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 1);

    // The same events again with the same guard: the provider retried, a plain duplicate.
    let mut again = h.new_receipt(vec![h.new_event("mail", "evt_m1", "message.delivered")]);
    again.replay_guard = Some(guard.clone());
    assert_eq!(
        h.commit(again).done().await,
        stored(vec![duplicate_of(&m1)])
    );

    // The refused event was not claimed: with a guard of its own it is accepted.
    let mut later = h.new_receipt(vec![h.new_event("mail", "evt_m2", "message.opened")]);
    later.replay_guard = Some(key("mail", "token:9c1d"));
    assert_eq!(
        h.commit(later).done().await,
        stored(vec![Committed::Accepted])
    );
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 2);
}

async fn everything_committed_survives_reopening_the_store(h: &mut Harness) {
    let now = h.now_ms();
    let e1 = h
        .new_event("shop", "evt_p1", "customer.created")
        .to(&[ALPHA, BETA])
        .lane("customer-1");
    let e2 = h
        .new_event("shop", "evt_p2", "customer.updated")
        .lane("customer-2");
    let batch = h.new_receipt(vec![e1.clone(), e2.clone()]);
    let expected = expected_receipt(&batch, &[0, 1]);
    let body = batch.body.clone();
    assert_eq!(
        h.commit(batch).done().await,
        stored(vec![Committed::Accepted, Committed::Accepted])
    );
    let (e1_alpha, delivered) = h
        .settle(&e1.eid(), ALPHA, AttemptOutcome::Delivered, None)
        .await;
    let (e1_beta, dead) = h.settle(&e1.eid(), BETA, AttemptOutcome::Dead, None).await;
    let (e2_alpha, retry) = h
        .settle(
            &e2.eid(),
            ALPHA,
            AttemptOutcome::Retry,
            Some(now + 30 * SECOND),
        )
        .await;
    let bad = h.unprocessable("shop", "evt_bad");
    let bad_body = Bytes::from_static(b"{not json \xff");
    h.keep_unprocessable(bad.clone(), bad_body.clone())
        .done()
        .await;
    let g1 = h.new_event("mail", "evt_g1", "message.delivered");
    let mut guarded = h.new_receipt(vec![g1.clone()]);
    guarded.replay_guard = Some(key("mail", "token:once"));
    h.commit(guarded).done().await;

    h.reopen().await;

    // Claims.
    for (event_id, id) in [("evt_p1", e1.eid()), ("evt_p2", e2.eid())] {
        assert_eq!(
            h.find_duplicate(key("shop", event_id)).done().await,
            Some(id)
        );
    }
    assert_eq!(
        h.find_duplicate(key("mail", "evt_g1")).done().await,
        Some(g1.eid())
    );
    assert_eq!(
        h.commit(h.new_receipt(vec![h.new_event("shop", "evt_p1", "customer.created")]))
            .done()
            .await,
        stored(vec![duplicate_of(&e1.eid())])
    );
    // The replay guard.
    let mut replay = h.new_receipt(vec![h.new_event("mail", "evt_g2", "message.opened")]);
    replay.replay_guard = Some(key("mail", "token:once"));
    assert_eq!(h.commit(replay).done().await, Commit::Replayed);
    // Receipts and bodies.
    assert_eq!(
        h.receipt(expected.id.clone()).done().await,
        Some((expected, body))
    );
    assert_eq!(
        h.receipt(bad.id.clone()).done().await,
        Some((bad, bad_body))
    );
    // Envelopes.
    assert_eq!(h.envelope(e1.eid()).done().await, Some(e1.envelope.clone()));
    assert_eq!(h.envelope(e2.eid()).done().await, Some(e2.envelope.clone()));
    // Tasks and attempts.
    assert_eq!(h.tasks_of(&e1.eid()).await, [e1_alpha, e1_beta.clone()]);
    assert_eq!(h.tasks_of(&e2.eid()).await, [e2_alpha]);
    assert_eq!(h.attempts(e1.eid(), ALPHA.into()).done().await, [delivered]);
    assert_eq!(h.attempts(e1.eid(), BETA.into()).done().await, [dead]);
    assert_eq!(h.attempts(e2.eid(), ALPHA.into()).done().await, [retry]);
    assert_eq!(h.dead_letters(None, 10).done().await, [e1_beta]);
    // The queue.
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 2);
    assert_eq!(h.pending_count(BETA.into()).done().await, 0);
    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert_eq!(ids(&due.tasks), [g1.eid()], "e2 waits for its retry");
    assert_eq!(due.tasks[0].envelope, Ok(g1.envelope.clone()));
    // Recorded before the clock passed to the queue moves on (a lease runs out).
    h.record_attempts(vec![attempted(
        &due.tasks[0].task,
        AttemptOutcome::Delivered,
        now,
        None,
    )])
    .done()
    .await;
    let due = h.take_due(ALPHA.into(), now + 30 * SECOND, 10).done().await;
    assert_eq!(ids(&due.tasks), [e2.eid()]);
    assert_eq!(due.tasks[0].envelope, Ok(e2.envelope.clone()));
}

async fn a_write_accepted_before_close_is_durable_after_reopening(h: &mut Harness) {
    let event = h.new_event("shop", "evt_close", "customer.created");
    let id = event.eid();
    // The commit is in flight (not awaited) when the store is closed.
    let in_flight = tokio::spawn(h.commit(h.new_receipt(vec![event])));
    let store = h.store.take().expect("open");
    close_and_drop(store).await;
    let outcome = tokio::time::timeout(DEADLINE, in_flight)
        .await
        .expect("a commit in flight at close answers")
        .expect("commit task");
    h.store = Some(h.open_store().await);
    match outcome {
        Ok(accepted) => {
            assert_eq!(accepted, stored(vec![Committed::Accepted]));
            assert_eq!(
                h.find_duplicate(key("shop", "evt_close")).done().await,
                Some(id.clone()),
                "acknowledged before close, so durable"
            );
            assert!(h.envelope(id).done().await.is_some());
            assert_eq!(h.pending_count(ALPHA.into()).done().await, 1);
        }
        Err(_refused) => {
            // Refused: then it must not have been half-stored either way; a retry decides.
            let again =
                h.commit(h.new_receipt(vec![h.new_event("shop", "evt_close", "customer.created")]));
            match again.done().await {
                Commit::Stored(outcomes) if outcomes.len() == 1 => {
                    if let Committed::Duplicate { id: found } = &outcomes[0] {
                        assert_eq!(found, &id, "a claim always has its event");
                        assert!(h.envelope(id).done().await.is_some());
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

async fn claims_expire_after_their_ttl_and_the_sweep_spares_a_fresh_claim(h: &mut Harness) {
    let ttl = i64::try_from(DEDUP_TTL_SECS).expect("small");
    let t1 = h
        .accept(h.new_event("shop", "evt_t1", "customer.created"))
        .await;
    let _t2 = h
        .accept(h.new_event("shop", "evt_t2", "customer.created"))
        .await;
    assert_eq!(h.expire_claims(h.now_secs()).done().await, 0);

    h.advance(ttl - 1);
    assert_eq!(
        h.find_duplicate(key("shop", "evt_t1")).done().await,
        Some(t1.clone()),
        "still claimed just before the TTL"
    );
    assert_eq!(h.expire_claims(h.now_secs()).done().await, 0);

    h.advance(2);
    assert_eq!(
        h.find_duplicate(key("shop", "evt_t1")).done().await,
        None,
        "expired, even before the sweep"
    );
    assert_eq!(h.find_duplicate(key("shop", "evt_t2")).done().await, None);
    // Claimed again before the sweep runs.
    let t1_again = h
        .accept(h.new_event("shop", "evt_t1", "customer.created"))
        .await;
    assert_eq!(
        h.find_duplicate(key("shop", "evt_t1")).done().await,
        Some(t1_again.clone())
    );
    assert_eq!(
        h.expire_claims(h.now_secs()).done().await,
        1,
        "only evt_t2's old claim is swept"
    );
    assert_eq!(
        h.find_duplicate(key("shop", "evt_t1")).done().await,
        Some(t1_again),
        "the fresh claim survives the sweep"
    );
    assert_eq!(h.find_duplicate(key("shop", "evt_t2")).done().await, None);
    assert_eq!(h.expire_claims(h.now_secs()).done().await, 0);
    h.accept(h.new_event("shop", "evt_t2", "customer.created"))
        .await;
    // The expired event's first envelope is still there (claims and envelopes are separate).
    assert!(h.envelope(t1).done().await.is_some());
}

// ---------------------------------------------------------------------------------------------
// Cases: the task queue
// ---------------------------------------------------------------------------------------------

async fn the_queue_hands_out_due_tasks_oldest_first_and_records_their_attempts(h: &mut Harness) {
    let now = h.now_ms();
    let a = h.new_event("shop", "evt_q1", "customer.created");
    let b = h.new_event("shop", "evt_q2", "customer.updated");
    let c = h
        .new_event("shop", "evt_q3", "customer.deleted")
        .due_at(now + 60 * SECOND);
    for event in [&a, &b, &c] {
        h.accept(event.clone()).await;
    }

    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert_eq!(
        ids(&due.tasks),
        [a.eid(), b.eid()],
        "due ones, oldest first"
    );
    for (task, event) in due.tasks.iter().zip([&a, &b]) {
        assert_eq!(task.envelope, Ok(event.envelope.clone()));
        assert_fresh(&task.task, event, ALPHA);
    }
    assert_eq!(due.next_due_ms, Some(now + 60 * SECOND), "c's time");
    assert_eq!(due.pending, 3, "queue depth counts every pending task");

    // Leased: not handed out again until recorded.
    let again = h.take_due(ALPHA.into(), now, 10).done().await;
    assert!(ids(&again.tasks).is_empty(), "{:?}", ids(&again.tasks));
    assert_eq!(
        h.pending_count(ALPHA.into()).done().await,
        3,
        "leased tasks are still pending"
    );

    // Two attempts in one write: a delivered, b to retry in 30 s.
    let (a_done, a_attempt) = attempted(&due.tasks[0].task, AttemptOutcome::Delivered, now, None);
    let (b_retry, b_attempt1) = attempted(
        &due.tasks[1].task,
        AttemptOutcome::Retry,
        now,
        Some(now + 30 * SECOND),
    );
    h.record_attempts(vec![
        (a_done.clone(), a_attempt.clone()),
        (b_retry.clone(), b_attempt1.clone()),
    ])
    .done()
    .await;
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 2);
    assert_eq!(h.tasks_of(&a.eid()).await, [a_done]);
    assert_eq!(h.tasks_of(&b.eid()).await, vec![b_retry.clone()]);
    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert!(ids(&due.tasks).is_empty(), "{:?}", ids(&due.tasks));
    assert_eq!(due.next_due_ms, Some(now + 30 * SECOND), "b's retry");
    assert_eq!(due.pending, 2);

    // b comes back when its retry is due; it dies.
    let due = h.take_due(ALPHA.into(), now + 30 * SECOND, 10).done().await;
    assert_eq!(ids(&due.tasks), [b.eid()]);
    assert_eq!(due.tasks[0].task, b_retry);
    assert_eq!(due.tasks[0].envelope, Ok(b.envelope.clone()));
    assert_eq!(due.next_due_ms, Some(now + 60 * SECOND));
    let (b_dead, b_attempt2) = attempted(
        &due.tasks[0].task,
        AttemptOutcome::Dead,
        now + 30 * SECOND,
        None,
    );
    h.record_attempts(vec![(b_dead.clone(), b_attempt2.clone())])
        .done()
        .await;
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 1);
    assert_eq!(
        h.dead_letters(Some(ALPHA.into()), 10).done().await,
        vec![b_dead.clone()]
    );
    assert_eq!(h.dead_letters(None, 10).done().await, vec![b_dead.clone()]);
    assert!(h
        .dead_letters(Some(BETA.into()), 10)
        .done()
        .await
        .is_empty());
    assert_eq!(
        h.attempts(b.eid(), ALPHA.into()).done().await,
        [b_attempt1, b_attempt2],
        "attempts in order"
    );
    assert_eq!(h.attempts(a.eid(), ALPHA.into()).done().await, [a_attempt]);
    assert!(h.attempts(a.eid(), BETA.into()).done().await.is_empty());
    assert_eq!(h.tasks_of(&b.eid()).await, [b_dead]);
    let due = h.take_due(ALPHA.into(), now + 30 * SECOND, 10).done().await;
    assert!(
        ids(&due.tasks).is_empty(),
        "a dead letter is not handed out"
    );

    // c when due.
    let due = h.take_due(ALPHA.into(), now + 60 * SECOND, 10).done().await;
    assert_eq!(ids(&due.tasks), [c.eid()]);
    assert_eq!(due.next_due_ms, None, "nothing else is waiting");

    // One task per sink; each sink's task moves on its own.
    let d = h
        .new_event("shop", "evt_q4", "customer.created")
        .to(&[ALPHA, BETA]);
    h.accept(d.clone()).await;
    let d_tasks = h.tasks_of(&d.eid()).await;
    assert_eq!(d_tasks.len(), 2, "{d_tasks:?}");
    assert_fresh(&d_tasks[0], &d, ALPHA);
    assert_fresh(&d_tasks[1], &d, BETA);
    let (d_beta, _) = h
        .settle(&d.eid(), BETA, AttemptOutcome::Delivered, None)
        .await;
    let d_tasks = h.tasks_of(&d.eid()).await;
    assert_fresh(&d_tasks[0], &d, ALPHA);
    assert_eq!(d_tasks[1], d_beta);
    assert!(ids(&h
        .take_due(BETA.into(), now + 60 * SECOND, 10)
        .done()
        .await
        .tasks)
    .is_empty());
    let due = h.take_due(ALPHA.into(), now + 60 * SECOND, 10).done().await;
    assert_eq!(ids(&due.tasks), [d.eid()], "c is still leased");
}

async fn envelopes_of_one_lane_reach_a_sink_in_commit_order(h: &mut Harness) {
    let now = h.now_ms();
    let later = now + 60 * SECOND;
    let e1 = h
        .new_event("shop", "evt_l1", "customer.created")
        .lane("customer-1");
    let e2 = h
        .new_event("shop", "evt_l2", "customer.updated")
        .lane("customer-1");
    let e3 = h.new_event("shop", "evt_l3", "ping");
    let e4 = h.new_event("shop", "evt_l4", "ping");
    let e5 = h
        .new_event("shop", "evt_l5", "customer.created")
        .lane("customer-2");
    for event in [&e1, &e2, &e3, &e4, &e5] {
        h.accept(event.clone()).await;
    }

    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert_eq!(
        ids(&due.tasks),
        [e1.eid(), e3.eid(), e4.eid(), e5.eid()],
        "e2 waits for e1; envelopes without a lane do not wait for each other"
    );
    assert!(
        ids(&h.take_due(ALPHA.into(), now, 10).done().await.tasks).is_empty(),
        "e2 still waits while e1 is leased"
    );

    // Lanes order one sink: the same lane on another sink does not wait for alpha.
    let e6 = h
        .new_event("shop", "evt_l6", "customer.updated")
        .lane("customer-1")
        .to(&[GAMMA]);
    h.accept(e6.clone()).await;
    assert_eq!(
        ids(&h.take_due(GAMMA.into(), now, 10).done().await.tasks),
        [e6.eid()]
    );

    // e1 fails and waits for its retry: it still holds its lane.
    let mut done = vec![attempted(
        &due.tasks[0].task,
        AttemptOutcome::Retry,
        now,
        Some(later),
    )];
    for task in &due.tasks[1..] {
        done.push(attempted(&task.task, AttemptOutcome::Delivered, now, None));
    }
    h.record_attempts(done).done().await;
    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert!(
        ids(&due.tasks).is_empty(),
        "e2 waits while e1 waits for its retry: {:?}",
        ids(&due.tasks)
    );
    let due = h.take_due(ALPHA.into(), later, 10).done().await;
    assert_eq!(ids(&due.tasks), [e1.eid()], "the older one first");
    h.record_attempts(vec![attempted(
        &due.tasks[0].task,
        AttemptOutcome::Delivered,
        later,
        None,
    )])
    .done()
    .await;
    let due = h.take_due(ALPHA.into(), later, 10).done().await;
    assert_eq!(ids(&due.tasks), [e2.eid()], "e1 delivered: e2's turn");

    // A dead letter no longer holds its lane.
    h.record_attempts(vec![attempted(
        &due.tasks[0].task,
        AttemptOutcome::Dead,
        later,
        None,
    )])
    .done()
    .await;
    let e7 = h
        .new_event("shop", "evt_l7", "customer.deleted")
        .lane("customer-1");
    h.accept(e7.clone()).await;
    assert_eq!(
        ids(&h.take_due(ALPHA.into(), later, 10).done().await.tasks),
        [e7.eid()]
    );

    // An older task that is not due yet blocks a newer one that is.
    let e8 = h
        .new_event("shop", "evt_l8", "customer.created")
        .lane("customer-3")
        .to(&[BETA])
        .due_at(now + 120 * SECOND);
    let e9 = h
        .new_event("shop", "evt_l9", "customer.updated")
        .lane("customer-3")
        .to(&[BETA]);
    h.accept(e8.clone()).await;
    h.accept(e9.clone()).await;
    let due = h.take_due(BETA.into(), now, 10).done().await;
    assert!(
        ids(&due.tasks).is_empty(),
        "e9 waits for e8 although e8 is not due: {:?}",
        ids(&due.tasks)
    );
    let due = h.take_due(BETA.into(), now + 120 * SECOND, 10).done().await;
    assert_eq!(ids(&due.tasks), [e8.eid()]);
}

async fn take_leases_named_tasks_whatever_their_due_time_but_not_leased_ones(h: &mut Harness) {
    let now = h.now_ms();
    let e1 = h
        .new_event("shop", "evt_s1", "customer.created")
        .due_at(now + 60 * SECOND);
    let e2 = h.new_event("shop", "evt_s2", "customer.created");
    let e3 = h.new_event("shop", "evt_s3", "customer.created");
    for event in [&e1, &e2, &e3] {
        h.accept(event.clone()).await;
    }

    let due = h.take_due(ALPHA.into(), now, 1).done().await;
    assert_eq!(ids(&due.tasks), [e2.eid()], "limit 1: the oldest due task");
    assert_eq!(due.pending, 3);

    let all = vec![e1.eid(), e2.eid(), e3.eid()];
    let taken = h.take(ALPHA.into(), all.clone(), now).done().await;
    assert_eq!(
        sorted(ids(&taken)),
        sorted([e1.eid(), e3.eid()]),
        "e1 although not due; not e2, leased by take_due"
    );
    for task in &taken {
        let event = if task.task.envelope_id == e1.eid() {
            &e1
        } else {
            &e3
        };
        assert_eq!(task.envelope, Ok(event.envelope.clone()));
        assert_fresh(&task.task, event, ALPHA);
    }
    assert!(h
        .take(ALPHA.into(), all.clone(), now)
        .done()
        .await
        .is_empty());
    assert!(ids(&h.take_due(ALPHA.into(), now, 10).done().await.tasks).is_empty());
    // No task of that envelope for that sink; an unknown envelope.
    assert!(h
        .take(BETA.into(), all.clone(), now)
        .done()
        .await
        .is_empty());
    assert!(h
        .take(ALPHA.into(), vec![h.id()], now)
        .done()
        .await
        .is_empty());

    // Recorded: finished tasks are not pending, so there is nothing to take.
    let done: Vec<_> = taken
        .iter()
        .chain(&due.tasks)
        .map(|t| attempted(&t.task, AttemptOutcome::Delivered, now, None))
        .collect();
    h.record_attempts(done).done().await;
    assert!(h.take(ALPHA.into(), all, now).done().await.is_empty());
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 0);

    // Per-object order: not while an older envelope of the same object is pending.
    let older = h
        .new_event("shop", "evt_s4", "customer.updated")
        .lane("customer-4")
        .due_at(now + 60 * SECOND);
    let newer = h
        .new_event("shop", "evt_s5", "customer.updated")
        .lane("customer-4");
    h.accept(older.clone()).await;
    h.accept(newer.clone()).await;
    assert!(
        h.take(ALPHA.into(), vec![newer.eid()], now)
            .done()
            .await
            .is_empty(),
        "an older envelope of the object is pending"
    );
    let first = h.take(ALPHA.into(), vec![older.eid()], now).done().await;
    assert_eq!(ids(&first), [older.eid()]);
    h.record_attempts(vec![attempted(
        &first[0].task,
        AttemptOutcome::Delivered,
        now,
        None,
    )])
    .done()
    .await;
    assert_eq!(
        ids(&h.take(ALPHA.into(), vec![newer.eid()], now).done().await),
        [newer.eid()]
    );
}

async fn a_lease_that_runs_out_hands_the_task_out_again(h: &mut Harness) {
    let now = h.now_ms();
    let lease = i64::try_from(LEASE_SECS).expect("small") * SECOND;
    let a = h
        .accept(h.new_event("shop", "evt_lease1", "customer.created"))
        .await;
    let b = h
        .accept(h.new_event("shop", "evt_lease2", "customer.created"))
        .await;
    let lane = h
        .accept(
            h.new_event("shop", "evt_lease3", "customer.created")
                .lane("customer-9"),
        )
        .await;
    let lane_next = h
        .accept(
            h.new_event("shop", "evt_lease4", "customer.created")
                .lane("customer-9"),
        )
        .await;
    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert_eq!(ids(&due.tasks), [a.clone(), b.clone(), lane.clone()]);
    let taken = h.take(ALPHA.into(), vec![b.clone()], now).done().await;
    assert!(ids(&taken).is_empty(), "b is leased by take_due");

    // Just before the lease ends nothing is handed out again, neither by take_due nor take,
    // and the queue says when the leased tasks can be taken.
    let almost = now + lease - SECOND;
    let waiting = h.take_due(ALPHA.into(), almost, 10).done().await;
    assert!(ids(&waiting.tasks).is_empty());
    let next = waiting
        .next_due_ms
        .expect("leased tasks come due when their lease ends");
    assert!(
        next > almost && next <= now + lease,
        "next due {next}, lease ends {}",
        now + lease
    );
    assert!(h
        .take(ALPHA.into(), vec![a.clone()], almost)
        .done()
        .await
        .is_empty());

    // a's attempt is recorded in time; the others' taker went away.
    h.record_attempts(vec![attempted(
        &due.tasks[0].task,
        AttemptOutcome::Delivered,
        almost,
        None,
    )])
    .done()
    .await;
    let after = now + lease + SECOND;
    let again = h.take_due(ALPHA.into(), after, 10).done().await;
    assert_eq!(
        ids(&again.tasks),
        [b.clone(), lane.clone()],
        "leases ended: handed out again, and the lane still waits for its older task"
    );
    assert_eq!(again.tasks[0].task.attempts, 0);
    // Now leased to the new taker.
    assert!(h
        .take(ALPHA.into(), vec![b.clone()], after)
        .done()
        .await
        .is_empty());
    h.record_attempts(
        again
            .tasks
            .iter()
            .map(|t| attempted(&t.task, AttemptOutcome::Delivered, after, None))
            .collect(),
    )
    .done()
    .await;
    assert_eq!(
        ids(&h.take_due(ALPHA.into(), after, 10).done().await.tasks),
        [lane_next]
    );
    assert_eq!(h.attempts(b, ALPHA.into()).done().await.len(), 1);
}

async fn dead_letters_are_listed_oldest_first_up_to_the_limit(h: &mut Harness) {
    let mut events = Vec::new();
    for n in 1..=3 {
        let sinks: &[&str] = if n == 2 { &[ALPHA, BETA] } else { &[ALPHA] };
        let event = h
            .new_event("shop", &format!("evt_d{n}"), "customer.created")
            .to(sinks);
        events.push(h.accept(event).await);
    }
    let mut dead = Vec::new();
    for id in &events {
        h.advance(1);
        dead.push(h.settle(id, ALPHA, AttemptOutcome::Dead, None).await.0);
    }
    h.advance(1);
    let (beta_dead, _) = h.settle(&events[1], BETA, AttemptOutcome::Dead, None).await;

    assert_eq!(h.dead_letters(Some(ALPHA.into()), 10).done().await, dead);
    assert_eq!(
        h.dead_letters(Some(ALPHA.into()), 2).done().await,
        dead[..2],
        "the limit keeps the oldest"
    );
    assert_eq!(
        h.dead_letters(Some(BETA.into()), 10).done().await,
        vec![beta_dead.clone()]
    );
    let all = h.dead_letters(None, 10).done().await;
    assert_eq!(all.len(), 4, "{all:?}");
    for task in dead.iter().chain([&beta_dead]) {
        assert!(all.contains(task), "{task:?} in {all:?}");
    }
    assert_eq!(h.dead_letters(None, 1).done().await.len(), 1);
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 0);
    assert!(
        h.take(ALPHA.into(), events.clone(), h.now_ms())
            .done()
            .await
            .is_empty(),
        "dead letters are not pending"
    );
}

async fn redelivery_makes_finished_tasks_pending_again_and_wakes_the_workers(h: &mut Harness) {
    let mut wake = h.wakeups();
    wake.borrow_and_update();
    let e = h
        .new_event("shop", "evt_r1", "customer.created")
        .to(&[ALPHA, BETA]);
    let id = h.accept(e.clone()).await;
    woke(&mut wake, "a commit").await;

    let (alpha_dead, alpha_attempt) = h.settle(&id, ALPHA, AttemptOutcome::Dead, None).await;
    let (beta_done, _) = h.settle(&id, BETA, AttemptOutcome::Delivered, None).await;
    assert_eq!(
        h.dead_letters(Some(ALPHA.into()), 10).done().await,
        [alpha_dead]
    );

    h.advance(10);
    let later = h.now_ms();
    wake.borrow_and_update();
    assert_eq!(
        h.redeliver(id.clone(), Some(ALPHA.into()), later)
            .done()
            .await,
        1
    );
    woke(&mut wake, "a redelivery").await;
    let tasks = h.tasks_of(&id).await;
    assert_eq!(tasks[0].status, TaskStatus::Pending);
    assert_eq!(tasks[0].round_attempts, 0, "a fresh retry budget");
    assert_eq!(tasks[0].attempts, 1, "attempts in all are kept");
    assert_eq!(tasks[0].round_started_ms, later);
    assert_eq!(tasks[0].next_attempt_ms, Some(later));
    assert_eq!(tasks[1], beta_done, "only the named sink");
    assert!(h
        .dead_letters(Some(ALPHA.into()), 10)
        .done()
        .await
        .is_empty());
    assert!(h.dead_letters(None, 10).done().await.is_empty());
    assert_eq!(
        h.attempts(id.clone(), ALPHA.into()).done().await,
        [alpha_attempt],
        "the history is kept"
    );
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 1);
    let due = h.take_due(ALPHA.into(), later, 10).done().await;
    assert_eq!(ids(&due.tasks), vec![id.clone()]);
    h.record_attempts(vec![attempted(
        &due.tasks[0].task,
        AttemptOutcome::Delivered,
        later,
        None,
    )])
    .done()
    .await;

    // Every sink: both delivered tasks.
    h.advance(10);
    let last = h.now_ms();
    wake.borrow_and_update();
    assert_eq!(h.redeliver(id.clone(), None, last).done().await, 2);
    woke(&mut wake, "a redelivery to every sink").await;
    for task in h.tasks_of(&id).await {
        assert_eq!(task.status, TaskStatus::Pending, "{task:?}");
        assert_eq!(task.round_attempts, 0, "{task:?}");
        assert_eq!(task.next_attempt_ms, Some(last), "{task:?}");
    }
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 1);
    assert_eq!(h.pending_count(BETA.into()).done().await, 1);
    assert_eq!(
        ids(&h.take_due(BETA.into(), last, 10).done().await.tasks),
        vec![id.clone()]
    );

    // Nothing to redeliver.
    assert_eq!(h.redeliver(h.id(), None, last).done().await, 0);
    assert_eq!(
        h.redeliver(id, Some(GAMMA.into()), last).done().await,
        0,
        "no task for that sink"
    );
}

// ---------------------------------------------------------------------------------------------
// Cases: the event browser
// ---------------------------------------------------------------------------------------------

async fn an_unprocessable_receipt_is_kept_and_browsable_but_claims_nothing(h: &mut Harness) {
    let bad = h.unprocessable("shop", "evt_u");
    let body = Bytes::from_static(b"{\"type\": \x00\xff");
    h.keep_unprocessable(bad.clone(), body.clone()).done().await;
    assert_eq!(
        h.receipt(bad.id.clone()).done().await,
        Some((bad.clone(), body))
    );
    let page = h
        .events(EventQuery {
            status: Some(EventStatus::Unprocessable),
            ..query()
        })
        .done()
        .await;
    assert_eq!(receipt_ids(&page), vec![bad.id.clone()]);
    assert_eq!(page.events[0].receipt, bad);
    assert!(page.events[0].tasks.is_empty());
    assert!(h
        .query(EventQuery {
            status: Some(EventStatus::Accepted),
            ..query()
        })
        .await
        .is_empty());
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 0);

    // Claims nothing: the same event, once it can be normalised, is accepted.
    assert_eq!(h.find_duplicate(key("shop", "evt_u")).done().await, None);
    h.accept(h.new_event("shop", "evt_u", "customer.created"))
        .await;
    assert_eq!(
        h.receipt(bad.id.clone()).done().await.map(|(r, _)| r),
        Some(bad)
    );
}

/// Five receipts, one second apart, newest last:
/// 1. shop customer.created, delivered; 2. shop invoice.paid, dead;
/// 3. crm customer.updated, pending; 4. shop batch of order.created (delivered) and
///    customer.deleted (pending); 5. crm unprocessable.
struct Browsed {
    ids: [String; 5],
    times: [i64; 5],
}

async fn browse_fixture(h: &Harness) -> Browsed {
    let mut ids: [String; 5] = Default::default();
    let mut times = [0; 5];
    let commit = move |event: NewEnvelope| async move {
        let receipt = h.new_receipt(vec![event]);
        let id = receipt.receipt.id.clone();
        h.commit(receipt).done().await;
        id
    };

    times[0] = h.now_ms();
    let e1 = h.new_event("shop", "evt_c1", "customer.created");
    ids[0] = commit(e1.clone()).await;
    h.settle(&e1.eid(), ALPHA, AttemptOutcome::Delivered, None)
        .await;

    h.advance(1);
    times[1] = h.now_ms();
    let e2 = h.new_event("shop", "evt_i1", "invoice.paid");
    ids[1] = commit(e2.clone()).await;
    h.settle(&e2.eid(), ALPHA, AttemptOutcome::Dead, None).await;

    h.advance(1);
    times[2] = h.now_ms();
    ids[2] = commit(h.new_event("crm", "evt_c2", "customer.updated")).await;

    h.advance(1);
    times[3] = h.now_ms();
    let o1 = h.new_event("shop", "evt_o1", "order.created");
    let c3 = h.new_event("shop", "evt_c3", "customer.deleted");
    let batch = h.new_receipt(vec![o1.clone(), c3]);
    ids[3] = batch.receipt.id.clone();
    assert_eq!(
        h.commit(batch).done().await,
        stored(vec![Committed::Accepted, Committed::Accepted])
    );
    h.settle(&o1.eid(), ALPHA, AttemptOutcome::Delivered, None)
        .await;

    h.advance(1);
    times[4] = h.now_ms();
    let bad = h.unprocessable("crm", "evt_bad");
    ids[4] = bad.id.clone();
    h.keep_unprocessable(bad, Bytes::from_static(b"?"))
        .done()
        .await;
    Browsed { ids, times }
}

impl Browsed {
    /// Receipt ids by fixture number (1-based), in the order given.
    fn pick(&self, numbers: &[usize]) -> Vec<String> {
        numbers.iter().map(|n| self.ids[n - 1].clone()).collect()
    }
}

async fn the_event_browser_lists_newest_first_and_pages_without_repeats(h: &mut Harness) {
    let b = browse_fixture(h).await;
    let newest_first = b.pick(&[5, 4, 3, 2, 1]);
    let page = h.events(query()).done().await;
    assert_eq!(receipt_ids(&page), newest_first);
    assert_eq!(page.next, None, "everything fits: no next page");

    // Each summary carries its receipt as stored and the tasks of its envelopes.
    for summary in &page.events {
        let (receipt, _) = h
            .receipt(summary.receipt.id.clone())
            .done()
            .await
            .expect("listed receipts exist");
        assert_eq!(summary.receipt, receipt);
        let mut expected = Vec::new();
        for id in &receipt.envelope_ids {
            expected.extend(h.tasks(id.clone()).done().await);
        }
        let mut tasks = summary.tasks.clone();
        let order = |t: &TaskRecord| (t.envelope_id.clone(), t.sink.clone());
        tasks.sort_by_key(order);
        expected.sort_by_key(order);
        assert_eq!(tasks, expected, "tasks of {}", receipt.id);
    }
    let count = |i: usize| page.events[i].tasks.len();
    assert_eq!((count(0), count(1), count(4)), (0, 2, 1));

    for limit in 1..=6 {
        assert_eq!(
            h.walk(EventQuery { limit, ..query() }).await,
            newest_first,
            "pages of {limit}"
        );
    }
    assert_eq!(
        h.walk(EventQuery {
            provider: Some("shop".into()),
            limit: 1,
            ..query()
        })
        .await,
        b.pick(&[4, 2, 1]),
        "filtered pages"
    );
    assert_eq!(
        h.query(EventQuery {
            before: Some(b.ids[2].clone()),
            ..query()
        })
        .await,
        b.pick(&[2, 1]),
        "`before` is exclusive"
    );
    let first = h
        .events(EventQuery {
            limit: 2,
            ..query()
        })
        .done()
        .await;
    assert_eq!(receipt_ids(&first), b.pick(&[5, 4]));
    assert!(first.next.is_some(), "more to come");
}

async fn the_event_browser_filters_combine(h: &mut Harness) {
    let b = browse_fixture(h).await;
    let cases: Vec<(&str, EventQuery, Vec<usize>)> = vec![
        (
            "provider shop",
            EventQuery {
                provider: Some("shop".into()),
                ..query()
            },
            vec![4, 2, 1],
        ),
        (
            "provider crm",
            EventQuery {
                provider: Some("crm".into()),
                ..query()
            },
            vec![5, 3],
        ),
        (
            "provider none",
            EventQuery {
                provider: Some("nobody".into()),
                ..query()
            },
            vec![],
        ),
        (
            "accepted",
            EventQuery {
                status: Some(EventStatus::Accepted),
                ..query()
            },
            vec![4, 3, 2, 1],
        ),
        (
            "unprocessable",
            EventQuery {
                status: Some(EventStatus::Unprocessable),
                ..query()
            },
            vec![5],
        ),
        (
            "pending",
            EventQuery {
                status: Some(EventStatus::Pending),
                ..query()
            },
            vec![4, 3],
        ),
        (
            "delivered",
            EventQuery {
                status: Some(EventStatus::Delivered),
                ..query()
            },
            vec![1],
        ),
        (
            "dead",
            EventQuery {
                status: Some(EventStatus::Dead),
                ..query()
            },
            vec![2],
        ),
        (
            "event id",
            EventQuery {
                event_id: Some("evt_c2".into()),
                ..query()
            },
            vec![3],
        ),
        (
            "a batch element's event id",
            EventQuery {
                event_id: Some("evt_c3".into()),
                ..query()
            },
            vec![4],
        ),
        (
            "an unprocessable receipt's event id",
            EventQuery {
                event_id: Some("evt_bad".into()),
                ..query()
            },
            vec![5],
        ),
        (
            "unknown event id",
            EventQuery {
                event_id: Some("evt_zz".into()),
                ..query()
            },
            vec![],
        ),
        (
            "type customer.*",
            EventQuery {
                event_type: type_glob("customer.*"),
                ..query()
            },
            vec![4, 3, 1],
        ),
        (
            "object customer, action deleted",
            EventQuery {
                object: type_glob("customer"),
                action: Some("deleted".into()),
                ..query()
            },
            vec![4],
        ),
        (
            // Object and action of one envelope, not of any two in the batch.
            "object order, action deleted",
            EventQuery {
                object: type_glob("order"),
                action: Some("deleted".into()),
                ..query()
            },
            vec![],
        ),
        (
            "action created",
            EventQuery {
                action: Some("created".into()),
                ..query()
            },
            vec![4, 1],
        ),
        (
            "object glob inv*",
            EventQuery {
                object: type_glob("inv*"),
                ..query()
            },
            vec![2],
        ),
        (
            "type *.created",
            EventQuery {
                event_type: type_glob("*.created"),
                ..query()
            },
            vec![4, 1],
        ),
        (
            "type invoice.paid",
            EventQuery {
                event_type: type_glob("invoice.paid"),
                ..query()
            },
            vec![2],
        ),
        (
            "since 2",
            EventQuery {
                since_ms: Some(b.times[1]),
                ..query()
            },
            vec![5, 4, 3, 2],
        ),
        (
            "until 4",
            EventQuery {
                until_ms: Some(b.times[3]),
                ..query()
            },
            vec![3, 2, 1],
        ),
        (
            "since 2 until 4",
            EventQuery {
                since_ms: Some(b.times[1]),
                until_ms: Some(b.times[3]),
                ..query()
            },
            vec![3, 2],
        ),
        (
            "since after all",
            EventQuery {
                since_ms: Some(b.times[4] + 1),
                ..query()
            },
            vec![],
        ),
        (
            "shop customer.*",
            EventQuery {
                provider: Some("shop".into()),
                event_type: type_glob("customer.*"),
                ..query()
            },
            vec![4, 1],
        ),
        (
            "crm pending",
            EventQuery {
                provider: Some("crm".into()),
                status: Some(EventStatus::Pending),
                ..query()
            },
            vec![3],
        ),
        (
            "pending customer.* since 3",
            EventQuery {
                status: Some(EventStatus::Pending),
                event_type: type_glob("customer.*"),
                since_ms: Some(b.times[2]),
                ..query()
            },
            vec![4, 3],
        ),
        (
            "shop dead before 2",
            EventQuery {
                provider: Some("shop".into()),
                status: Some(EventStatus::Dead),
                before: Some(b.ids[1].clone()),
                ..query()
            },
            vec![],
        ),
    ];
    for (name, q, expected) in cases {
        assert_eq!(
            h.query(q.clone()).await,
            b.pick(&expected),
            "filter: {name}"
        );
        assert_eq!(
            h.walk(EventQuery { limit: 1, ..q }).await,
            b.pick(&expected),
            "filter {name}, one per page"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Cases: maintenance and lifecycle
// ---------------------------------------------------------------------------------------------

async fn retention_purges_old_finished_receipts_only_and_respects_its_limit(h: &mut Harness) {
    let h: &Harness = h;
    let commit = move |events: Vec<NewEnvelope>| async move {
        let receipt = h.new_receipt(events);
        let id = receipt.receipt.id.clone();
        h.commit(receipt).done().await;
        id
    };
    // Old: delivered; a batch with one dead letter and one delivered; pending; one sink
    // delivered and another pending; unprocessable.
    let o1 = h.new_event("shop", "evt_o1", "customer.created");
    let old_delivered = commit(vec![o1.clone()]).await;
    h.settle(&o1.eid(), ALPHA, AttemptOutcome::Delivered, None)
        .await;
    h.advance(1);
    let o2 = h.new_event("shop", "evt_o2", "customer.created");
    let o3 = h.new_event("shop", "evt_o3", "customer.created");
    let old_dead = commit(vec![o2.clone(), o3.clone()]).await;
    h.settle(&o2.eid(), ALPHA, AttemptOutcome::Dead, None).await;
    h.settle(&o3.eid(), ALPHA, AttemptOutcome::Delivered, None)
        .await;
    h.advance(1);
    let o4 = h.new_event("shop", "evt_o4", "customer.created");
    let old_pending = commit(vec![o4.clone()]).await;
    h.advance(1);
    let o5 = h
        .new_event("shop", "evt_o5", "customer.created")
        .to(&[ALPHA, BETA]);
    let old_partial = commit(vec![o5.clone()]).await;
    h.settle(&o5.eid(), ALPHA, AttemptOutcome::Delivered, None)
        .await;
    h.advance(1);
    let old_bad = h.unprocessable("shop", "evt_bad");
    h.keep_unprocessable(old_bad.clone(), Bytes::from_static(b"?"))
        .done()
        .await;

    h.advance(100);
    let cutoff = h.now_ms();
    h.advance(1);
    let n1 = h.new_event("shop", "evt_n1", "customer.created");
    let new_delivered = commit(vec![n1.clone()]).await;
    let (n1_task, n1_attempt) = h
        .settle(&n1.eid(), ALPHA, AttemptOutcome::Delivered, None)
        .await;

    assert_eq!(h.purge_before(cutoff, 1).done().await, 1, "the limit");
    assert_eq!(
        h.purge_before(cutoff, 100).done().await,
        2,
        "the other old finished receipts"
    );
    assert_eq!(h.purge_before(cutoff, 100).done().await, 0);

    // Gone, with everything of theirs.
    for id in [&old_delivered, &old_dead, &old_bad.id] {
        assert!(h.receipt(id.clone()).done().await.is_none(), "receipt {id}");
    }
    for event in [&o1, &o2, &o3] {
        let id = event.eid();
        assert_eq!(h.envelope(id.clone()).done().await, None, "envelope {id}");
        assert!(h.tasks(id.clone()).done().await.is_empty(), "tasks of {id}");
        assert!(
            h.attempts(id.clone(), ALPHA.into()).done().await.is_empty(),
            "attempts of {id}"
        );
    }
    assert!(h.dead_letters(None, 10).done().await.is_empty());

    // Kept: pending (whatever their age) and new.
    assert_eq!(
        h.query(query()).await,
        [
            new_delivered.clone(),
            old_partial.clone(),
            old_pending.clone()
        ]
    );
    for event in [&o4, &o5] {
        assert!(h.envelope(event.eid()).done().await.is_some());
    }
    assert_eq!(h.tasks_of(&o5.eid()).await.len(), 2);
    assert_eq!(h.tasks_of(&n1.eid()).await, [n1_task]);
    assert_eq!(
        h.attempts(n1.eid(), ALPHA.into()).done().await,
        [n1_attempt]
    );
    assert_eq!(h.pending_count(ALPHA.into()).done().await, 1);
    assert_eq!(h.pending_count(BETA.into()).done().await, 1);

    // Once the old pending ones finish, they go too.
    h.settle(&o4.eid(), ALPHA, AttemptOutcome::Delivered, None)
        .await;
    h.settle(&o5.eid(), BETA, AttemptOutcome::Dead, None).await;
    assert_eq!(h.purge_before(cutoff, 100).done().await, 2);
    assert_eq!(h.query(query()).await, vec![new_delivered.clone()]);
    assert!(h.receipt(old_pending).done().await.is_none());
    assert!(h.receipt(new_delivered).done().await.is_some());
}

async fn a_closed_store_refuses_writes_promptly(h: &mut Harness) {
    h.probe().done().await;
    let before = h
        .accept(h.new_event("shop", "evt_k1", "customer.created"))
        .await;
    tokio::task::block_in_place(|| h.close());
    let _: StoreError = h.probe().fails().await;
    let _: StoreError = h
        .commit(h.new_receipt(vec![h.new_event("shop", "evt_k2", "customer.created")]))
        .fails()
        .await;

    // Reopened, it works again, with what was committed before the close.
    h.reopen().await;
    h.probe().done().await;
    assert_eq!(
        h.find_duplicate(key("shop", "evt_k1")).done().await,
        Some(before)
    );
    assert_eq!(h.find_duplicate(key("shop", "evt_k2")).done().await, None);
    h.accept(h.new_event("shop", "evt_k2", "customer.created"))
        .await;
}

async fn the_pending_count_follows_commits_and_deliveries(h: &mut Harness) {
    let h: &Harness = h;
    let pending = |sink: &str| h.pending_count(sink.into()).done();
    let backlog = |sink: &str| h.backlog(sink.into()).done();
    assert_eq!((pending(ALPHA).await, pending(BETA).await), (0, 0));
    assert_eq!(backlog(ALPHA).await, Backlog::default());
    let first_ms = h.now_ms();
    let p1 = h
        .accept(h.new_event("shop", "evt_c1", "customer.created"))
        .await;
    h.advance(10);
    let later_ms = h.now_ms();
    let p2 = h
        .accept(
            h.new_event("shop", "evt_c2", "customer.created")
                .due_at(h.now_ms() + 60 * SECOND),
        )
        .await;
    let p3 = h
        .accept(
            h.new_event("shop", "evt_c3", "customer.created")
                .to(&[ALPHA, BETA]),
        )
        .await;
    assert_eq!((pending(ALPHA).await, pending(BETA).await), (3, 1));
    let oldest = |pending, ms| Backlog {
        pending,
        oldest_pending_ms: Some(ms),
    };
    assert_eq!(backlog(ALPHA).await, oldest(3, first_ms));
    assert_eq!(backlog(BETA).await, oldest(1, later_ms));
    h.commit(h.new_receipt(vec![h.new_event("shop", "evt_c1", "customer.created")]))
        .done()
        .await;
    assert_eq!(pending(ALPHA).await, 3, "a duplicate adds nothing");

    h.settle(&p1, ALPHA, AttemptOutcome::Delivered, None).await;
    assert_eq!(pending(ALPHA).await, 2);
    assert_eq!(backlog(ALPHA).await, oldest(2, later_ms));
    h.settle(&p2, ALPHA, AttemptOutcome::Retry, Some(h.now_ms() + SECOND))
        .await;
    assert_eq!(pending(ALPHA).await, 2, "a retry is still pending");
    h.settle(&p3, BETA, AttemptOutcome::Dead, None).await;
    assert_eq!((pending(ALPHA).await, pending(BETA).await), (2, 0));
    assert_eq!(backlog(BETA).await, Backlog::default());
    h.advance(10);
    h.redeliver(p3, Some(BETA.into()), h.now_ms()).done().await;
    assert_eq!(pending(BETA).await, 1);
    assert_eq!(
        backlog(BETA).await,
        oldest(1, later_ms),
        "a redelivered task counts from its creation"
    );
    assert_eq!(pending(GAMMA).await, 0);
    assert_eq!(
        h.take_due(ALPHA.into(), h.now_ms(), 10)
            .done()
            .await
            .pending,
        2
    );
}

async fn unknown_ids_read_as_nothing(h: &mut Harness) {
    h.accept(h.new_event("shop", "evt_x", "customer.created"))
        .await;
    let unknown = h.id();
    assert!(h.receipt(unknown.clone()).done().await.is_none());
    assert_eq!(h.envelope(unknown.clone()).done().await, None);
    assert!(h.tasks(unknown.clone()).done().await.is_empty());
    assert!(h
        .attempts(unknown.clone(), ALPHA.into())
        .done()
        .await
        .is_empty());
    assert!(h.dead_letters(None, 10).done().await.is_empty());
    let due = h.take_due(GAMMA.into(), h.now_ms(), 10).done().await;
    assert!(due.tasks.is_empty());
    assert_eq!((due.pending, due.next_due_ms), (0, None));
    let page = h
        .events(EventQuery {
            before: Some(Ulid::from_parts(1, 0).to_string()),
            ..query()
        })
        .done()
        .await;
    assert!(page.events.is_empty());
    assert_eq!(page.next, None);
}

// ---------------------------------------------------------------------------------------------
// Cases: hardening (issue 13)
// ---------------------------------------------------------------------------------------------

/// More tasks than the embedded store's old scan window (10,000) wait behind one failing
/// object; a due task of another object committed after all of them is still handed out, and
/// the pending count is exact.
async fn a_long_backlog_behind_one_failing_object_does_not_starve_other_objects(h: &mut Harness) {
    const BACKLOG: usize = 10_050;
    let now = h.now_ms();
    let later = now + 3_600 * SECOND;
    let backlog: Vec<NewEnvelope> = (0..BACKLOG)
        .map(|n| {
            h.new_event("shop", &format!("evt_stuck_{n}"), "order.updated")
                .lane("order-stuck")
        })
        .collect();
    let head = backlog[0].eid();
    let receipt = h.new_receipt(backlog);
    let outcome = h.commit(receipt).done().await;
    assert!(
        matches!(&outcome, Commit::Stored(all) if all.len() == BACKLOG
            && all.iter().all(|c| *c == Committed::Accepted)),
        "the backlog is stored"
    );
    // The object's oldest task fails and waits an hour for its retry.
    h.settle(&head, ALPHA, AttemptOutcome::Retry, Some(later))
        .await;
    let other = h
        .new_event("shop", "evt_free", "order.updated")
        .lane("order-free");
    h.accept(other.clone()).await;

    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert_eq!(
        ids(&due.tasks),
        [other.eid()],
        "the other object's task is handed out past the blocked backlog"
    );
    assert_eq!(
        h.pending_count(ALPHA.into()).done().await,
        BACKLOG + 1,
        "every pending task is counted"
    );
}

/// One delivery per object is in flight at a time, also when a redelivery makes an event
/// older than the one in flight pending again.
async fn a_redelivered_older_event_waits_while_its_object_has_a_delivery_in_flight(
    h: &mut Harness,
) {
    let first = h
        .new_event("shop", "evt_l1", "order.updated")
        .lane("order-1");
    let second = h
        .new_event("shop", "evt_l2", "order.updated")
        .lane("order-1");
    let (first, second) = (h.accept(first).await, h.accept(second).await);
    let now = h.now_ms();
    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert_eq!(ids(&due.tasks), std::slice::from_ref(&first));
    let done = attempted(&due.tasks[0].task, AttemptOutcome::Delivered, now, None);
    h.record_attempts(vec![done]).done().await;
    let in_flight = h.take_due(ALPHA.into(), now, 10).done().await;
    assert_eq!(ids(&in_flight.tasks), std::slice::from_ref(&second));

    assert_eq!(h.redeliver(first.clone(), None, now).done().await, 1);
    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert!(
        due.tasks.is_empty(),
        "the object has a delivery in flight: {:?}",
        ids(&due.tasks)
    );
    assert!(
        h.take(ALPHA.into(), vec![first.clone()], now)
            .done()
            .await
            .is_empty(),
        "not by id either"
    );
    let done = attempted(
        &in_flight.tasks[0].task,
        AttemptOutcome::Delivered,
        now,
        None,
    );
    h.record_attempts(vec![done]).done().await;
    let due = h.take_due(ALPHA.into(), now, 10).done().await;
    assert_eq!(ids(&due.tasks), [first]);
}

/// The deepest envelope the gateway stores (a body at the parser's nesting limit, copied into
/// `meta`) is handed out and read back unchanged.
async fn an_envelope_as_deep_as_the_gateway_writes_reads_back_whole(h: &mut Harness) {
    let mut deep = serde_json::json!([]);
    for _ in 1..hookgate::json::MAX_BODY_DEPTH {
        deep = serde_json::json!([deep]);
    }
    let mut event = h.new_event("shop", "evt_deep", "order.updated");
    event.envelope.meta.insert("retry".into(), deep);
    event.json = Bytes::from(serde_json::to_vec(&event.envelope).expect("serialises"));
    assert!(hookgate::json::within_depth(
        &event.json,
        hookgate::json::MAX_ENVELOPE_DEPTH
    ));
    assert!(!hookgate::json::within_depth(
        &event.json,
        hookgate::json::MAX_ENVELOPE_DEPTH - 1
    ));
    let id = h.accept(event.clone()).await;
    let due = h.take_due(ALPHA.into(), h.now_ms(), 10).done().await;
    assert_eq!(ids(&due.tasks), std::slice::from_ref(&id));
    assert_eq!(due.tasks[0].envelope.as_ref().ok(), Some(&event.envelope));
    assert_eq!(h.envelope(id).done().await, Some(event.envelope));
}

/// `Controls`: a pause is one per (target, name), keeps its first time, survives reopening, and
/// resuming removes it; an instance and a sink of the same name are separate.
async fn pauses_are_kept_per_target_and_name_and_survive_reopening(h: &mut Harness) {
    let now = h.now_ms();
    assert_eq!(h.paused().done().await, Vec::new());
    let pause = |target, name: &str, paused| h.set_paused(target, name.to_owned(), paused, now);
    assert!(pause(PauseTarget::Instance, "shop", true).done().await);
    assert!(pause(PauseTarget::Sink, "shop", true).done().await);
    assert!(pause(PauseTarget::Sink, "audit", true).done().await);
    // Pausing again changes nothing, not even the time.
    assert!(
        !h.set_paused(PauseTarget::Sink, "audit".into(), true, now + SECOND)
            .done()
            .await
    );
    let expected = |target, name: &str| Pause {
        target,
        name: name.to_owned(),
        paused_at_ms: now,
    };
    let all = vec![
        expected(PauseTarget::Instance, "shop"),
        expected(PauseTarget::Sink, "audit"),
        expected(PauseTarget::Sink, "shop"),
    ];
    assert_eq!(h.paused().done().await, all);
    h.reopen().await;
    assert_eq!(h.paused().done().await, all);
    assert!(
        h.set_paused(PauseTarget::Sink, "shop".into(), false, now)
            .done()
            .await
    );
    assert!(
        !h.set_paused(PauseTarget::Sink, "never".into(), false, now)
            .done()
            .await
    );
    h.reopen().await;
    assert_eq!(
        h.paused().done().await,
        vec![
            expected(PauseTarget::Instance, "shop"),
            expected(PauseTarget::Sink, "audit"),
        ]
    );
}
