//! The embedded store: sled, written only by one group-committing writer thread.
//!
//! sled's `flush()` ends in `sync_file_range` on Linux, which neither flushes the disk cache nor
//! commits the file size (upstream issue 1452), and `flush_async()` deadlocks with many waiters
//! (upstream issue 1308). So nothing but the writer writes sled. Callers queue a [`Job`] on a
//! bounded channel (bounded in jobs and in bytes: `queue_capacity`, `queue_max_bytes`); the
//! writer drains up to `max_batch` jobs, applies them (commits in one multi-tree transaction:
//! crash-atomic, claim and event land together or not at all), calls `flush()`, `fdatasync`s
//! sled's log and any new blob files, and only then publishes one watermark: the sequence
//! number of the last job that is durable. Every caller waits for the watermark to pass its
//! own job, within `write_timeout_ms`; there is no reply channel per request.
//!
//! Claims are decided when a commit is queued, not in the writer: under one lock
//! ([`Intake`]) the caller looks in the in-flight claims (queued, not yet applied) and in sled,
//! takes a sequence number and queues. A key is in one of the two at every moment (the writer
//! drops in-flight claims only after applying them), so two copies of an event can never both
//! be accepted, and a duplicate is answered only after the claim it found is durable.
//!
//! Readers (the task queue, the event browser) run on the blocking pool and then wait for the
//! watermark to cover everything the writer had started applying when they read, so they never
//! hand out state a crash could still take back.
//!
//! If a flush or sync fails, what is in memory may never reach the disk, so the store refuses
//! every later write ([`StoreError::Failed`]) until restarted: the provider keeps retrying, and
//! after the restart sled recovers only what was durable.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::FutureExt;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use super::{
    AttemptRecord, Commit, Committed, DedupKey, Due, DueTask, EventBrowser, EventPage, EventQuery,
    EventSummary, IngestStore, Maintenance, NewReceipt, Receipt, StoreError, StoreFuture,
    TaskQueue, TaskRecord, TaskStatus,
};
use crate::clock::Clock;
use crate::config::StorageSettings;
use crate::envelope::Envelope;
use crate::metrics::Metrics;

const TREE_DELIVERIES: &str = "deliveries";
const TREE_BODIES: &str = "bodies";
const TREE_ENVELOPES: &str = "envelopes";
const TREE_DEDUP: &str = "dedup";
const TREE_DEDUP_EXPIRY: &str = "dedup_expiry";
const TREE_TASKS: &str = "tasks";
const TREE_PENDING: &str = "pending";
const TREE_ATTEMPTS: &str = "attempts";
const TREE_DEAD: &str = "dead";
const TREE_META: &str = "meta";
const META_PROBE: &[u8] = b"probe";
const SLED_LOG_FILE: &str = "db";
const SLED_CONF_FILE: &str = "conf";
const SLED_BLOBS_DIR: &str = "blobs";
/// Larger segments raise sled's blob threshold (a quarter segment) above any body we accept,
/// so almost every write lands in the one log file.
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;
/// Pending tasks looked at per `take_due` (the order rule needs the ones ahead).
const SCAN_LIMIT: usize = 10_000;
/// Receipts looked at per event-browser page when filters skip most of them.
const BROWSE_SCAN_LIMIT: usize = 20_000;
/// Receipts a purge may look at per receipt it may delete.
const PURGE_SCAN_FACTOR: usize = 4;
/// Durable claims kept in memory in front of sled's dedup table (about 3 MB).
const RECENT_CLAIMS: usize = 16_384;
/// Bytes a job is charged besides its payload.
const JOB_OVERHEAD_BYTES: usize = 256;

/// A key for a gateway id (ULID): its 16 big-endian bytes, so keys sort by time.
pub fn id_key(id: &str) -> Option<[u8; 16]> {
    ulid::Ulid::from_string(id)
        .ok()
        .map(|u| u128::from(u).to_be_bytes())
}

fn id_from_key(key: &[u8]) -> Option<String> {
    let bytes: [u8; 16] = key.try_into().ok()?;
    Some(ulid::Ulid::from(u128::from_be_bytes(bytes)).to_string())
}

/// The smallest id key of the given millisecond.
fn time_key(ms: i64) -> [u8; 16] {
    u128::from(ulid::Ulid::from_parts(u64::try_from(ms).unwrap_or(0), 0)).to_be_bytes()
}

fn key_of(id: &str) -> Result<[u8; 16], StoreError> {
    id_key(id).ok_or_else(|| StoreError::Io(format!("`{id}` is not a gateway id")))
}

/// A claim in the dedup table: when it expires and which envelope made it.
struct Claim {
    expires_at: u64,
    id: String,
}

impl Claim {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.expires_at.to_be_bytes().to_vec();
        v.extend_from_slice(self.id.as_bytes());
        v
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (expires, id) = bytes.split_at_checked(8)?;
        Some(Self {
            expires_at: u64::from_be_bytes(expires.try_into().ok()?),
            id: String::from_utf8(id.to_vec()).ok()?,
        })
    }
}

fn expiry_key(expires_at: u64, dedup_key: &[u8]) -> Vec<u8> {
    let mut k = expires_at.to_be_bytes().to_vec();
    k.extend_from_slice(dedup_key);
    k
}

/// `envelope id (16 bytes) ++ sink`: an envelope's tasks are one prefix scan.
fn task_key(id: &[u8; 16], sink: &str) -> Vec<u8> {
    let mut k = id.to_vec();
    k.extend_from_slice(sink.as_bytes());
    k
}

fn sink_prefix(sink: &str) -> Vec<u8> {
    let mut p = sink.as_bytes().to_vec();
    p.push(0);
    p
}

/// `sink \0 envelope id`: a sink's pending tasks in commit order.
fn sink_key(sink: &str, id: &[u8; 16]) -> Vec<u8> {
    let mut k = sink_prefix(sink);
    k.extend_from_slice(id);
    k
}

fn pending_value(next_attempt_ms: i64, lane: &[u8]) -> Vec<u8> {
    let mut v = next_attempt_ms.to_be_bytes().to_vec();
    v.extend_from_slice(lane);
    v
}

/// `envelope id ++ sink \0 ++ attempt number`.
fn attempt_key(id: &[u8; 16], sink: &str, number: u32) -> Vec<u8> {
    let mut k = task_key(id, sink);
    k.push(0);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

fn io_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn tx_err(e: TransactionError<()>) -> StoreError {
    StoreError::Io(format!("{e:?}"))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(io_err)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(io_err)
}

/// A task record with its index entries, ready to write.
struct TaskWrite {
    key: Vec<u8>,
    index: Vec<u8>,
    record: Vec<u8>,
    /// Where the index entry goes: pending (with its value), dead, or neither.
    state: IndexState,
}

enum IndexState {
    Pending(Vec<u8>),
    Dead,
    Done,
}

impl TaskWrite {
    fn new(id: &[u8; 16], task: &TaskRecord) -> Result<Self, StoreError> {
        let state = match (task.status, task.next_attempt_ms) {
            (TaskStatus::Pending, Some(next)) => {
                IndexState::Pending(pending_value(next, &task.lane))
            }
            (TaskStatus::Pending, None) => IndexState::Pending(pending_value(0, &task.lane)),
            (TaskStatus::Dead, _) => IndexState::Dead,
            (TaskStatus::Delivered, _) => IndexState::Done,
        };
        Ok(Self {
            key: task_key(id, &task.sink),
            index: sink_key(&task.sink, id),
            record: encode(task)?,
            state,
        })
    }
}

/// One envelope of a commit, serialised before it is queued.
struct EventWrite {
    key: [u8; 16],
    envelope: bytes::Bytes,
    tasks: Vec<TaskWrite>,
}

/// A commit whose claims were decided when it was queued.
struct CommitWrite {
    receipt_key: [u8; 16],
    receipt: Vec<u8>,
    body: bytes::Bytes,
    events: Vec<EventWrite>,
    /// (dedup key, envelope or receipt id) to claim.
    claims: Vec<(Vec<u8>, String)>,
    /// When the claims expire (Unix seconds).
    expires_at: u64,
}

/// What the writer does for one job.
enum Op {
    Commit(Box<CommitWrite>),
    Unprocessable {
        key: [u8; 16],
        receipt: Vec<u8>,
        body: bytes::Bytes,
    },
    Probe,
    /// Attempt records and the tasks' new states.
    Attempts(Vec<(TaskWrite, Vec<u8>, Vec<u8>)>),
    /// Read-modify-write ops: applied on their own, answering a count.
    Redeliver {
        envelope: [u8; 16],
        sink: Option<String>,
        now_ms: i64,
        reply: oneshot::Sender<usize>,
    },
    Expire {
        now_secs: u64,
        reply: oneshot::Sender<usize>,
    },
    Purge {
        cutoff_ms: i64,
        limit: usize,
        reply: oneshot::Sender<usize>,
    },
}

impl Op {
    /// Ops that read what earlier ops wrote, so they cannot share their transaction.
    fn reads_state(&self) -> bool {
        matches!(
            self,
            Op::Redeliver { .. } | Op::Expire { .. } | Op::Purge { .. }
        )
    }
}

struct Job {
    seq: u64,
    weight: usize,
    op: Op,
}

#[derive(Clone)]
struct Trees {
    deliveries: sled::Tree,
    bodies: sled::Tree,
    envelopes: sled::Tree,
    dedup: sled::Tree,
    expiry: sled::Tree,
    tasks: sled::Tree,
    pending: sled::Tree,
    attempts: sled::Tree,
    dead: sled::Tree,
    meta: sled::Tree,
}

/// The queue's front door: sequence numbers, in-flight claims and the channel, under one lock
/// so that queue order is sequence order and a claim is always findable.
struct Intake {
    sender: Option<SyncSender<Job>>,
    /// The last sequence number handed out.
    seq: u64,
    /// Claims queued but not yet applied: dedup key → (gateway id, job sequence number).
    inflight: HashMap<Vec<u8>, (String, u64)>,
    /// Claims made durable lately, so that a provider's prompt retry is answered without a
    /// sled read.
    recent: RecentClaims,
}

/// Durable claims most recently made, at most [`RECENT_CLAIMS`], oldest forgotten first.
#[derive(Default)]
struct RecentClaims {
    /// dedup key → (gateway id, expiry in Unix seconds, job sequence number)
    claims: HashMap<Vec<u8>, (String, u64, u64)>,
    order: std::collections::VecDeque<(Vec<u8>, u64)>,
}

impl RecentClaims {
    fn insert(&mut self, key: Vec<u8>, id: String, expires_at: u64, seq: u64) {
        while self.order.len() >= RECENT_CLAIMS {
            let Some((old, old_seq)) = self.order.pop_front() else {
                break;
            };
            if self.claims.get(&old).is_some_and(|(_, _, s)| *s == old_seq) {
                self.claims.remove(&old);
            }
        }
        self.order.push_back((key.clone(), seq));
        self.claims.insert(key, (id, expires_at, seq));
    }

    /// The id of a live claim, known durable.
    fn get(&self, key: &[u8], now: u64) -> Option<&str> {
        self.claims
            .get(key)
            .filter(|(_, expires_at, _)| *expires_at > now)
            .map(|(id, _, _)| id.as_str())
    }
}

struct Shared {
    db: sled::Db,
    trees: Trees,
    dir: PathBuf,
    log_file: File,
    intake: Mutex<Intake>,
    failed: OnceLock<String>,
    /// Bumped after every durable write that made tasks pending.
    wakeups: watch::Sender<u64>,
    /// The last job the writer has started applying (readers may see it from then on).
    applying: AtomicU64,
    /// The last job that is durable.
    synced: watch::Sender<u64>,
    /// Bytes held by queued jobs.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    write_timeout: Duration,
    lease_ms: i64,
    /// Tasks handed out and not yet recorded: (sink, envelope key) → lease end (Unix ms).
    leases: Mutex<Leases>,
    /// Fault injection for tests: runs before each sync (a slow or stuck disk).
    before_sync: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Where the next retention purge starts (empty: from the oldest receipt).
    purge_from: Mutex<Vec<u8>>,
    clock: Arc<dyn Clock>,
    dedup_ttl_secs: u64,
    metrics: Arc<Metrics>,
}

/// Leased tasks by sink: envelope key → lease end (Unix ms).
#[derive(Default)]
struct Leases(HashMap<String, HashMap<[u8; 16], i64>>);

impl Leases {
    /// The leases of one sink, with ended ones dropped.
    fn of(&mut self, sink: &str, now_ms: i64) -> &mut HashMap<[u8; 16], i64> {
        if !self.0.contains_key(sink) {
            self.0.insert(sink.to_owned(), HashMap::new());
        }
        let leases = self.0.get_mut(sink).expect("inserted above");
        leases.retain(|_, until| *until > now_ms);
        leases
    }

    fn release(&mut self, sink: &str, id: &[u8; 16]) {
        if let Some(leases) = self.0.get_mut(sink) {
            leases.remove(id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// sled-backed [`super::Store`].
pub struct SledStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

fn open_db(config: &sled::Config, path: &Path) -> Result<sled::Db, StoreError> {
    // A store closed a moment ago may still hold its file lock briefly (sled issues 1234, 1289).
    let mut attempt = 0;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if attempt < 40 && e.to_string().contains("could not acquire lock") => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(StoreError::Io(format!(
                    "cannot open store at {}: {e}",
                    path.display()
                )))
            }
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(
        settings: &StorageSettings,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let dir = PathBuf::from(settings.path.as_str());
        std::fs::create_dir_all(&dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot create store directory {}: {e}",
                dir.display()
            ))
        })?;
        let config = sled::Config::new()
            .path(&dir)
            .cache_capacity(settings.cache_capacity_bytes)
            .segment_size(SEGMENT_SIZE)
            .flush_every_ms(Some(500));
        let db = open_db(&config, &dir)?;
        let tree = |name: &str| db.open_tree(name).map_err(io_err);
        let trees = Trees {
            deliveries: tree(TREE_DELIVERIES)?,
            bodies: tree(TREE_BODIES)?,
            envelopes: tree(TREE_ENVELOPES)?,
            dedup: tree(TREE_DEDUP)?,
            expiry: tree(TREE_DEDUP_EXPIRY)?,
            tasks: tree(TREE_TASKS)?,
            pending: tree(TREE_PENDING)?,
            attempts: tree(TREE_ATTEMPTS)?,
            dead: tree(TREE_DEAD)?,
            meta: tree(TREE_META)?,
        };
        // sled writes `conf` once without syncing it, and never syncs its directory.
        for file in [
            dir.join(SLED_CONF_FILE),
            dir.clone(),
            dir.join(SLED_BLOBS_DIR),
        ] {
            if file.exists() {
                File::open(&file)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| StoreError::Io(format!("cannot sync {}: {e}", file.display())))?;
            }
        }
        let log_file = File::open(dir.join(SLED_LOG_FILE)).map_err(io_err)?;
        let (sender, receiver) = mpsc::sync_channel(settings.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            db,
            trees,
            dir,
            log_file,
            intake: Mutex::new(Intake {
                sender: Some(sender),
                seq: 0,
                inflight: HashMap::new(),
                recent: RecentClaims::default(),
            }),
            failed: OnceLock::new(),
            wakeups: watch::Sender::new(0),
            applying: AtomicU64::new(0),
            synced: watch::Sender::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: usize::try_from(settings.queue_max_bytes).unwrap_or(usize::MAX),
            write_timeout: Duration::from_millis(settings.write_timeout_ms),
            lease_ms: i64::try_from(settings.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            leases: Mutex::new(Leases::default()),
            before_sync: Mutex::new(None),
            purge_from: Mutex::new(Vec::new()),
            clock,
            dedup_ttl_secs: settings.dedup_ttl_secs,
            metrics,
        });
        let writer_shared = shared.clone();
        let max_batch = settings.max_batch.max(1);
        let writer = std::thread::Builder::new()
            .name("hookgate-store-writer".into())
            .spawn(move || run_writer(&writer_shared, &receiver, max_batch))
            .map_err(io_err)?;
        let pending = shared.trees.pending.len();
        info!(path = %shared.dir.display(), pending, "Store opened.");
        Ok(Self {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Fault injection for tests: `hook` runs on the writer thread before every sync, so a
    /// test can hold the "disk" and check that nothing is acknowledged meanwhile.
    pub fn set_before_sync(&self, hook: Option<Arc<dyn Fn() + Send + Sync>>) {
        *lock(&self.shared.before_sync) = hook;
    }

    /// Queues `op` under the intake lock; the future resolves once it is durable.
    fn submit(&self, op: Op, weight: usize) -> StoreFuture<()> {
        let queued = {
            let mut intake = lock(&self.shared.intake);
            self.shared.enqueue(&mut intake, op, weight)
        };
        match queued {
            Ok(seq) => self.shared.clone().durable(seq).boxed(),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    /// Queues a read-modify-write op answering a count.
    fn submit_counted(&self, op: impl FnOnce(oneshot::Sender<usize>) -> Op) -> StoreFuture<usize> {
        let (reply, answer) = oneshot::channel();
        let durable = self.submit(op(reply), JOB_OVERHEAD_BYTES);
        async move {
            durable.await?;
            answer.await.map_err(|_| StoreError::Closed)
        }
        .boxed()
    }

    /// Runs a read on the blocking pool, then waits until what it may have seen is durable.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let shared = self.shared.clone();
        async move {
            let reader = shared.clone();
            let (value, seen) = tokio::task::spawn_blocking(move || {
                let value = read(&reader)?;
                Ok::<_, StoreError>((value, reader.applying.load(Ordering::SeqCst)))
            })
            .await
            .map_err(io_err)??;
            shared.durable(seen).await?;
            Ok(value)
        }
        .boxed()
    }
}

impl Shared {
    fn now_secs(&self) -> u64 {
        u64::try_from(self.clock.unix_secs()).unwrap_or(0)
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Hands out the next sequence number and queues the job; the caller holds the intake lock.
    fn enqueue(&self, intake: &mut Intake, op: Op, weight: usize) -> Result<u64, StoreError> {
        self.check_failed()?;
        let sender = intake.sender.as_ref().ok_or(StoreError::Closed)?;
        let held = self.queued_bytes.load(Ordering::SeqCst);
        // One job larger than the whole budget still goes alone, or it could never be stored.
        if held > 0 && held.saturating_add(weight) > self.max_queued_bytes {
            return Err(StoreError::QueueFull);
        }
        let seq = intake.seq + 1;
        sender
            .try_send(Job { seq, weight, op })
            .map_err(|e| match e {
                TrySendError::Full(_) => StoreError::QueueFull,
                TrySendError::Disconnected(_) => StoreError::Closed,
            })?;
        intake.seq = seq;
        self.queued_bytes.fetch_add(weight, Ordering::SeqCst);
        Ok(seq)
    }

    /// Waits, within the write timeout, until job `seq` is durable.
    async fn durable(self: Arc<Self>, seq: u64) -> Result<(), StoreError> {
        if *self.synced.borrow() >= seq {
            return Ok(());
        }
        let mut synced = self.synced.subscribe();
        let wait = async {
            loop {
                if *synced.borrow_and_update() >= seq {
                    return Ok(());
                }
                self.check_failed()?;
                if synced.changed().await.is_err() {
                    return Err(StoreError::Closed);
                }
            }
        };
        let millis = u64::try_from(self.write_timeout.as_millis()).unwrap_or(u64::MAX);
        tokio::time::timeout(self.write_timeout, wait)
            .await
            .unwrap_or(Err(StoreError::Timeout(millis)))
    }

    /// A live claim for `key` in memory: in flight (with its job), or recently made durable
    /// (job 0: nothing to wait for).
    fn claim_in_memory(intake: &Intake, key: &[u8], now: u64) -> Option<(String, u64)> {
        if let Some(found) = intake.inflight.get(key) {
            return Some(found.clone());
        }
        intake.recent.get(key, now).map(|id| (id.to_owned(), 0))
    }

    /// A live claim for `key`: in memory, or applied to sled (with the job being applied when
    /// it was read). The caller holds the intake lock, or accepts a stale miss.
    fn find_claim(
        &self,
        intake: &Intake,
        key: &[u8],
        now: u64,
    ) -> Result<Option<(String, u64)>, StoreError> {
        if let Some(found) = Self::claim_in_memory(intake, key, now) {
            return Ok(Some(found));
        }
        self.find_applied_claim(key, now)
    }

    fn find_applied_claim(
        &self,
        key: &[u8],
        now: u64,
    ) -> Result<Option<(String, u64)>, StoreError> {
        let claim = self
            .trees
            .dedup
            .get(key)
            .map_err(io_err)?
            .and_then(|v| Claim::decode(&v))
            .filter(|c| c.expires_at > now);
        Ok(claim.map(|c| (c.id, self.applying.load(Ordering::SeqCst))))
    }

    fn task_record(&self, id: &[u8; 16], sink: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.trees
            .tasks
            .get(task_key(id, sink))
            .map_err(io_err)?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Whether an envelope older than `id` with the same (non-empty) lane is pending at `sink`.
    fn older_in_lane(&self, sink: &str, id: &[u8; 16], lane: &[u8]) -> Result<bool, StoreError> {
        if lane.is_empty() {
            return Ok(false);
        }
        for item in self
            .trees
            .pending
            .range(sink_prefix(sink)..sink_key(sink, id))
            .take(SCAN_LIMIT)
        {
            let (_, value) = item.map_err(io_err)?;
            if value.get(8..) == Some(lane) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn tasks_of(&self, id: &[u8; 16]) -> Result<Vec<TaskRecord>, StoreError> {
        self.trees
            .tasks
            .scan_prefix(id)
            .map(|item| decode(&item.map_err(io_err)?.1))
            .collect()
    }

    fn envelope_of(&self, id: &[u8; 16]) -> Result<Option<Envelope>, String> {
        match self.trees.envelopes.get(id) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("the stored envelope cannot be read: {e}")),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("storage error: {e}")),
        }
    }

    fn due_task(&self, id: &[u8; 16], task: TaskRecord) -> DueTask {
        let envelope = match self.envelope_of(id) {
            Ok(Some(envelope)) => Ok(envelope),
            Ok(None) => Err("the stored envelope is missing".to_owned()),
            Err(e) => Err(e),
        };
        DueTask { task, envelope }
    }

    fn summary(&self, receipt: Receipt) -> Result<EventSummary, StoreError> {
        let mut tasks = Vec::new();
        for id in receipt.envelope_ids.iter().filter_map(|id| id_key(id)) {
            tasks.extend(self.tasks_of(&id)?);
        }
        Ok(EventSummary { receipt, tasks })
    }

    /// Applies one batch: runs of plain writes share a transaction; read-modify-write ops run
    /// on their own, in queue order.
    fn apply(&self, jobs: &mut [Job]) -> Result<Vec<usize>, StoreError> {
        let mut counts = Vec::new();
        let mut start = 0;
        while start < jobs.len() {
            if jobs[start].op.reads_state() {
                counts.push(self.apply_counted(&mut jobs[start].op)?);
                start += 1;
                continue;
            }
            let end = jobs[start..]
                .iter()
                .position(|j| j.op.reads_state())
                .map_or(jobs.len(), |n| start + n);
            self.apply_writes(&jobs[start..end])?;
            start = end;
        }
        Ok(counts)
    }

    fn apply_writes(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let now = self.now_secs();
        let t = &self.trees;
        (
            &t.deliveries,
            &t.bodies,
            &t.envelopes,
            &t.dedup,
            &t.expiry,
            &t.tasks,
            &t.pending,
            &t.attempts,
            &t.dead,
            &t.meta,
        )
            .transaction(
                |(
                    deliveries,
                    bodies,
                    envelopes,
                    dedup,
                    expiry,
                    tasks,
                    pending,
                    attempts,
                    dead,
                    meta,
                )| {
                    let write_task = |task: &TaskWrite| {
                        tasks.insert(task.key.as_slice(), task.record.as_slice())?;
                        match &task.state {
                            IndexState::Pending(value) => {
                                pending.insert(task.index.as_slice(), value.as_slice())?;
                                dead.remove(task.index.as_slice())?;
                            }
                            IndexState::Dead => {
                                pending.remove(task.index.as_slice())?;
                                dead.insert(task.index.as_slice(), &[][..])?;
                            }
                            IndexState::Done => {
                                pending.remove(task.index.as_slice())?;
                                dead.remove(task.index.as_slice())?;
                            }
                        }
                        Ok::<_, ConflictableTransactionError<()>>(())
                    };
                    for job in jobs {
                        match &job.op {
                            Op::Commit(commit) => {
                                for (key, id) in &commit.claims {
                                    let claim = Claim {
                                        expires_at: commit.expires_at,
                                        id: id.clone(),
                                    };
                                    dedup.insert(key.as_slice(), claim.encode())?;
                                    expiry.insert(expiry_key(commit.expires_at, key), &[][..])?;
                                }
                                for event in &commit.events {
                                    envelopes.insert(&event.key[..], event.envelope.as_ref())?;
                                    for task in &event.tasks {
                                        write_task(task)?;
                                    }
                                }
                                deliveries
                                    .insert(&commit.receipt_key[..], commit.receipt.as_slice())?;
                                bodies.insert(&commit.receipt_key[..], commit.body.as_ref())?;
                            }
                            Op::Unprocessable { key, receipt, body } => {
                                deliveries.insert(&key[..], receipt.as_slice())?;
                                bodies.insert(&key[..], body.as_ref())?;
                            }
                            Op::Probe => {
                                meta.insert(META_PROBE, &now.to_be_bytes()[..])?;
                            }
                            Op::Attempts(done) => {
                                for (task, attempt_key, attempt) in done {
                                    write_task(task)?;
                                    attempts.insert(attempt_key.as_slice(), attempt.as_slice())?;
                                }
                            }
                            Op::Redeliver { .. } | Op::Expire { .. } | Op::Purge { .. } => {}
                        }
                    }
                    Ok::<_, ConflictableTransactionError<()>>(())
                },
            )
            .map_err(tx_err)
    }

    /// A read-modify-write op: reads current state (the writer is the only writer, so nothing
    /// changes under it), then writes in one transaction. Returns its count.
    fn apply_counted(&self, op: &mut Op) -> Result<usize, StoreError> {
        let t = &self.trees;
        match op {
            Op::Redeliver {
                envelope,
                sink,
                now_ms,
                ..
            } => {
                let mut writes = Vec::new();
                for mut task in self.tasks_of(envelope)? {
                    if sink.as_ref().is_some_and(|s| *s != task.sink) {
                        continue;
                    }
                    task.status = TaskStatus::Pending;
                    task.round_attempts = 0;
                    task.round_started_ms = *now_ms;
                    task.next_attempt_ms = Some(*now_ms);
                    writes.push(TaskWrite::new(envelope, &task)?);
                }
                (&t.tasks, &t.pending, &t.dead)
                    .transaction(|(tasks, pending, dead)| {
                        for task in &writes {
                            tasks.insert(task.key.as_slice(), task.record.as_slice())?;
                            if let IndexState::Pending(value) = &task.state {
                                pending.insert(task.index.as_slice(), value.as_slice())?;
                            }
                            dead.remove(task.index.as_slice())?;
                        }
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(tx_err)?;
                Ok(writes.len())
            }
            Op::Expire { now_secs, .. } => {
                let end = now_secs.saturating_add(1).to_be_bytes();
                let mut expired = Vec::new();
                let mut stale = Vec::new();
                for item in t.expiry.range(..&end[..]) {
                    let (key, _) = item.map_err(io_err)?;
                    let (expires, dedup_key) = key.split_at(8.min(key.len()));
                    let expires_at = u64::from_be_bytes(expires.try_into().unwrap_or_default());
                    let current = t.dedup.get(dedup_key).map_err(io_err)?;
                    // A newer claim for the same ID (re-claimed after expiry) stays.
                    if current
                        .and_then(|c| Claim::decode(&c))
                        .is_some_and(|c| c.expires_at == expires_at)
                    {
                        expired.push(dedup_key.to_vec());
                    }
                    stale.push(key.to_vec());
                }
                (&t.dedup, &t.expiry)
                    .transaction(|(dedup, expiry)| {
                        for key in &expired {
                            dedup.remove(key.as_slice())?;
                        }
                        for key in &stale {
                            expiry.remove(key.as_slice())?;
                        }
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(tx_err)?;
                Ok(expired.len())
            }
            Op::Purge {
                cutoff_ms, limit, ..
            } => {
                let end = time_key(*cutoff_ms).to_vec();
                let mut receipts = Vec::new();
                let mut removals: Vec<(&sled::Tree, Vec<u8>)> = Vec::new();
                // Resume where the last purge stopped, so receipts still pending at the front
                // are not re-read every time and one purge never holds the writer for long.
                let mut cursor = lock(&self.purge_from);
                if *cursor >= end {
                    cursor.clear();
                }
                let mut next_start = Vec::new();
                let budget = limit.saturating_mul(PURGE_SCAN_FACTOR).max(1);
                for (examined, item) in t.deliveries.range(cursor.clone()..end).enumerate() {
                    let (key, value) = item.map_err(io_err)?;
                    if receipts.len() >= *limit || examined >= budget {
                        next_start = key.to_vec();
                        break;
                    }
                    let Ok(receipt) = decode::<Receipt>(&value) else {
                        continue;
                    };
                    let summary = self.summary(receipt)?;
                    if summary
                        .tasks
                        .iter()
                        .any(|t| t.status == TaskStatus::Pending)
                    {
                        continue; // still being delivered: kept whatever its age
                    }
                    for id in summary
                        .receipt
                        .envelope_ids
                        .iter()
                        .filter_map(|id| id_key(id))
                    {
                        removals.push((&t.envelopes, id.to_vec()));
                        for tree in [&t.tasks, &t.attempts] {
                            for entry in tree.scan_prefix(id).keys() {
                                removals.push((tree, entry.map_err(io_err)?.to_vec()));
                            }
                        }
                    }
                    for task in &summary.tasks {
                        if let Some(id) = id_key(&task.envelope_id) {
                            removals.push((&t.dead, sink_key(&task.sink, &id)));
                        }
                    }
                    removals.push((&t.bodies, key.to_vec()));
                    receipts.push(key.to_vec());
                }
                *cursor = next_start;
                drop(cursor);
                (
                    &t.deliveries,
                    &t.bodies,
                    &t.envelopes,
                    &t.tasks,
                    &t.attempts,
                    &t.dead,
                )
                    .transaction(|(deliveries, bodies, envelopes, tasks, attempts, dead)| {
                        for key in &receipts {
                            deliveries.remove(key.as_slice())?;
                        }
                        for (tree, key) in &removals {
                            let target = if std::ptr::eq(*tree, &t.bodies) {
                                bodies
                            } else if std::ptr::eq(*tree, &t.envelopes) {
                                envelopes
                            } else if std::ptr::eq(*tree, &t.tasks) {
                                tasks
                            } else if std::ptr::eq(*tree, &t.attempts) {
                                attempts
                            } else {
                                dead
                            };
                            target.remove(key.as_slice())?;
                        }
                        Ok::<_, ConflictableTransactionError<()>>(())
                    })
                    .map_err(tx_err)?;
                Ok(receipts.len())
            }
            _ => Ok(0),
        }
    }

    /// Makes everything applied so far durable.
    fn sync(&self, synced_blobs: &mut HashSet<std::ffi::OsString>) -> Result<(), StoreError> {
        self.db.flush().map_err(io_err)?;
        let blobs = self.dir.join(SLED_BLOBS_DIR);
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let mut present = HashSet::new();
            let mut new_blob = false;
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !synced_blobs.contains(&name) {
                    // A blob removed by sled's GC in the meantime is no longer needed.
                    if let Ok(file) = File::open(entry.path()) {
                        file.sync_data().map_err(io_err)?;
                        new_blob = true;
                    }
                }
                present.insert(name);
            }
            if new_blob {
                File::open(&blobs)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err)?;
            }
            *synced_blobs = present;
        }
        self.log_file.sync_data().map_err(io_err)
    }

    /// After a batch is durable (or failed): its in-flight claims are now in sled and among
    /// the recent ones (or moot).
    fn settle(&self, jobs: &[Job], durable: bool) {
        let mut intake = lock(&self.intake);
        for job in jobs {
            if let Op::Commit(commit) = &job.op {
                for (key, id) in &commit.claims {
                    if intake
                        .inflight
                        .get(key)
                        .is_some_and(|(_, seq)| *seq == job.seq)
                    {
                        intake.inflight.remove(key);
                    }
                    if durable {
                        intake
                            .recent
                            .insert(key.clone(), id.clone(), commit.expires_at, job.seq);
                    }
                }
            }
        }
        drop(intake);
        let weight: usize = jobs.iter().map(|j| j.weight).sum();
        self.queued_bytes.fetch_sub(weight, Ordering::SeqCst);
    }
}

fn run_writer(shared: &Shared, receiver: &Receiver<Job>, max_batch: usize) {
    let mut synced_blobs = HashSet::new();
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let last = jobs.last().map_or(0, |j| j.seq);
        if shared.failed.get().is_some() {
            shared.settle(&jobs, false);
            shared.synced.send_modify(|_| {});
            continue;
        }
        let started = std::time::Instant::now();
        // From here readers may see this batch; they wait for `synced` to pass it.
        shared.applying.store(last, Ordering::SeqCst);
        let result = shared.apply(&mut jobs).and_then(|counts| {
            let sync_started = std::time::Instant::now();
            let hook = lock(&shared.before_sync).clone();
            if let Some(hook) = hook {
                hook();
            }
            shared.sync(&mut synced_blobs)?;
            shared
                .metrics
                .fsync_seconds
                .observe(sync_started.elapsed().as_secs_f64());
            Ok(counts)
        });
        shared.metrics.commit_batch.observe(jobs.len() as f64);
        match result {
            Ok(counts) => {
                shared.synced.send_replace(last);
                shared.settle(&jobs, true);
                debug!(
                    batch = jobs.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "Committed batch."
                );
                let mut woke = false;
                let mut counts = counts.into_iter();
                for job in jobs {
                    match job.op {
                        Op::Commit(commit) => {
                            woke |= commit.events.iter().any(|e| !e.tasks.is_empty());
                        }
                        Op::Redeliver { reply, .. } => {
                            let count = counts.next().unwrap_or(0);
                            woke |= count > 0;
                            let _ = reply.send(count);
                        }
                        Op::Expire { reply, .. } | Op::Purge { reply, .. } => {
                            let _ = reply.send(counts.next().unwrap_or(0));
                        }
                        _ => {}
                    }
                }
                if woke {
                    shared.wakeups.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => {
                error!(error = %e, "Storage write failed; refusing writes until restarted.");
                let _ = shared.failed.set(e.to_string());
                shared.settle(&jobs, false);
                // Wake the waiters: they now see the failure.
                shared.synced.send_modify(|_| {});
            }
        }
    }
    debug!("Store writer stopped.");
}

/// How one event of a commit was decided when it was queued.
enum Decision {
    New,
    Duplicate { id: String, seq: u64 },
}

impl IngestStore for SledStore {
    fn find_duplicate(&self, key: DedupKey) -> StoreFuture<Option<String>> {
        let shared = &self.shared;
        let key = key.to_bytes();
        let found = shared.check_failed().and_then(|()| {
            // Memory first, then sled: the writer drops a claim from the in-flight map only
            // after applying it, so checking in this order cannot miss one.
            let now = shared.now_secs();
            let in_memory = Shared::claim_in_memory(&lock(&shared.intake), &key, now);
            match in_memory {
                Some(found) => Ok(Some(found)),
                None => shared.find_applied_claim(&key, now),
            }
        });
        match found {
            Ok(None) => futures_util::future::ready(Ok(None)).boxed(),
            Ok(Some((id, seq))) => {
                let durable = shared.clone().durable(seq);
                async move {
                    durable.await?;
                    Ok(Some(id))
                }
                .boxed()
            }
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn commit(&self, new: NewReceipt) -> StoreFuture<Commit> {
        let shared = &self.shared;
        let weight = new.weight();
        let queued = (|| {
            let receipt_key = key_of(&new.receipt.id)?;
            let now_ms = shared.clock.now().timestamp_millis();
            let keys: Vec<Vec<u8>> = new.events.iter().map(|e| e.dedup.to_bytes()).collect();
            let guard = new.replay_guard.as_ref().map(DedupKey::to_bytes);
            let mut intake = lock(&shared.intake);
            let now = shared.now_secs();
            let mut decisions = Vec::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                // The same ID twice in one batch: the later one is a duplicate of the earlier.
                let earlier = keys[..i].iter().position(|k| k == key);
                let decision = match earlier {
                    Some(j) => match &decisions[j] {
                        Decision::Duplicate { id, seq } => Decision::Duplicate {
                            id: id.clone(),
                            seq: *seq,
                        },
                        Decision::New => Decision::Duplicate {
                            id: new.events[j].envelope.id.clone(),
                            seq: u64::MAX, // this commit's own: resolved below
                        },
                    },
                    None => match shared.find_claim(&intake, key, now)? {
                        Some((id, seq)) => Decision::Duplicate { id, seq },
                        None => Decision::New,
                    },
                };
                decisions.push(decision);
            }
            let any_new = decisions.iter().any(|d| matches!(d, Decision::New));
            // A used replay guard refuses the receipt unless every event in it is already
            // stored (then it is a plain duplicate).
            if let Some(guard) = &guard {
                if any_new && shared.find_claim(&intake, guard, now)?.is_some() {
                    return Ok((Commit::Replayed, 0));
                }
            }
            let mut wait_for = decisions
                .iter()
                .filter_map(|d| match d {
                    Decision::Duplicate { seq, .. } if *seq != u64::MAX => Some(*seq),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            if any_new {
                let mut receipt = new.receipt.clone();
                receipt.envelope_ids.clear();
                receipt.types.clear();
                receipt.event_ids.clear();
                let mut events = Vec::new();
                let mut claims = Vec::new();
                for ((event, key), decision) in new.events.iter().zip(&keys).zip(&decisions) {
                    if !matches!(decision, Decision::New) {
                        continue;
                    }
                    let id = key_of(&event.envelope.id)?;
                    let tasks = event
                        .sinks
                        .iter()
                        .map(|sink| {
                            let task = TaskRecord {
                                sink: sink.clone(),
                                envelope_id: event.envelope.id.clone(),
                                status: TaskStatus::Pending,
                                attempts: 0,
                                round_attempts: 0,
                                created_at_ms: now_ms,
                                round_started_ms: now_ms,
                                next_attempt_ms: Some(event.not_before_ms),
                                last_error: None,
                                lane: event.lane.clone(),
                            };
                            TaskWrite::new(&id, &task)
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    events.push(EventWrite {
                        key: id,
                        envelope: event.json.clone(),
                        tasks,
                    });
                    claims.push((key.clone(), event.envelope.id.clone()));
                    receipt.envelope_ids.push(event.envelope.id.clone());
                    receipt.types.push(event.envelope.event_type.clone());
                    receipt.event_ids.push(event.envelope.event_id.clone());
                }
                if let Some(guard) = &guard {
                    claims.push((guard.clone(), receipt.id.clone()));
                }
                let write = CommitWrite {
                    receipt_key,
                    receipt: encode(&receipt)?,
                    body: new.body.clone(),
                    events,
                    claims,
                    expires_at: now.saturating_add(shared.dedup_ttl_secs),
                };
                let claimed: Vec<(Vec<u8>, String)> = write.claims.clone();
                let seq = shared.enqueue(&mut intake, Op::Commit(Box::new(write)), weight)?;
                for (key, id) in claimed {
                    intake.inflight.insert(key, (id, seq));
                }
                wait_for = wait_for.max(seq);
            }
            let outcomes = decisions
                .into_iter()
                .map(|d| match d {
                    Decision::New => Committed::Accepted,
                    Decision::Duplicate { id, .. } => Committed::Duplicate { id },
                })
                .collect();
            Ok((Commit::Stored(outcomes), wait_for))
        })();
        match queued {
            Ok((commit, seq)) => {
                let durable = shared.clone().durable(seq);
                async move {
                    durable.await?;
                    Ok(commit)
                }
                .boxed()
            }
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn keep_unprocessable(&self, receipt: Receipt, body: bytes::Bytes) -> StoreFuture<()> {
        let op = key_of(&receipt.id).and_then(|key| {
            Ok(Op::Unprocessable {
                key,
                receipt: encode(&receipt)?,
                body: body.clone(),
            })
        });
        match op {
            Ok(op) => self.submit(op, body.len() + JOB_OVERHEAD_BYTES),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn probe(&self) -> StoreFuture<()> {
        self.submit(Op::Probe, JOB_OVERHEAD_BYTES)
    }
}

impl TaskQueue for SledStore {
    fn take_due(&self, sink: String, now_ms: i64, limit: usize) -> StoreFuture<Due> {
        self.read(move |shared| {
            let prefix = sink_prefix(&sink);
            let mut all_leases = lock(&shared.leases);
            let leases = all_leases.of(&sink, now_ms);
            let mut blocked: HashSet<Vec<u8>> = HashSet::new();
            let mut due = Due::default();
            let mut taken = Vec::new();
            for item in shared.trees.pending.scan_prefix(&prefix).take(SCAN_LIMIT) {
                let (key, value) = item.map_err(io_err)?;
                due.pending += 1;
                let Ok(id) = <[u8; 16]>::try_from(&key[prefix.len()..]) else {
                    continue;
                };
                let (when, lane) = value.split_at(8.min(value.len()));
                let next = i64::from_be_bytes(when.try_into().unwrap_or_default());
                if !lane.is_empty() && !blocked.insert(lane.to_vec()) {
                    continue; // an older envelope of this object is still pending
                }
                // When this task could be handed out: now, later, or when its lease ends.
                let free_at = match leases.get(&id) {
                    Some(until) => next.max(*until),
                    None => next,
                };
                if free_at <= now_ms && taken.len() < limit {
                    taken.push(id);
                } else {
                    let at = free_at.max(now_ms);
                    due.next_due_ms = Some(due.next_due_ms.map_or(at, |n: i64| n.min(at)));
                }
            }
            for id in &taken {
                leases.insert(*id, now_ms.saturating_add(shared.lease_ms));
            }
            drop(all_leases);
            for id in taken {
                match shared.task_record(&id, &sink)? {
                    Some(task) if task.status == TaskStatus::Pending => {
                        due.tasks.push(shared.due_task(&id, task));
                    }
                    _ => {
                        lock(&shared.leases).release(&sink, &id);
                    }
                }
            }
            Ok(due)
        })
    }

    fn take(
        &self,
        sink: String,
        envelope_ids: Vec<String>,
        now_ms: i64,
    ) -> StoreFuture<Vec<DueTask>> {
        self.read(move |shared| {
            let mut out = Vec::new();
            for id in envelope_ids.iter().filter_map(|id| id_key(id)) {
                // Lease first, then read: a taker records its attempt durably before its lease
                // ends, so what is read under our lease is current.
                {
                    let mut all_leases = lock(&shared.leases);
                    let leases = all_leases.of(&sink, now_ms);
                    if leases.contains_key(&id) {
                        continue;
                    }
                    leases.insert(id, now_ms.saturating_add(shared.lease_ms));
                }
                let task = shared.task_record(&id, &sink).and_then(|task| match task {
                    // Per-object order holds here too: not while an older envelope of the same
                    // object is still pending at this sink.
                    Some(task) if task.status == TaskStatus::Pending => {
                        let held_back = shared.older_in_lane(&sink, &id, &task.lane)?;
                        Ok((!held_back).then_some(task))
                    }
                    _ => Ok(None),
                });
                match task {
                    Ok(Some(task)) => {
                        out.push(shared.due_task(&id, task));
                    }
                    other => {
                        lock(&shared.leases).release(&sink, &id);
                        other?;
                    }
                }
            }
            Ok(out)
        })
    }

    fn record_attempts(&self, done: Vec<(TaskRecord, AttemptRecord)>) -> StoreFuture<()> {
        let prepared = done
            .iter()
            .map(|(task, attempt)| {
                let id = key_of(&task.envelope_id)?;
                Ok((
                    TaskWrite::new(&id, task)?,
                    attempt_key(&id, &task.sink, attempt.number),
                    encode(attempt)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>();
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        let weight = JOB_OVERHEAD_BYTES
            + prepared
                .iter()
                .map(|(t, _, a)| t.record.len() + a.len())
                .sum::<usize>();
        let durable = self.submit(Op::Attempts(prepared), weight);
        let shared = self.shared.clone();
        async move {
            let result = durable.await;
            // Only a durable record ends the lease: after a failure or a timeout the write may
            // still land, so the task stays leased until its lease runs out.
            if result.is_ok() {
                let mut leases = lock(&shared.leases);
                for (task, _) in &done {
                    if let Some(id) = id_key(&task.envelope_id) {
                        leases.release(&task.sink, &id);
                    }
                }
            }
            result
        }
        .boxed()
    }

    fn redeliver(
        &self,
        envelope_id: String,
        sink: Option<String>,
        now_ms: i64,
    ) -> StoreFuture<usize> {
        let Some(envelope) = id_key(&envelope_id) else {
            return futures_util::future::ready(Ok(0)).boxed();
        };
        self.submit_counted(|reply| Op::Redeliver {
            envelope,
            sink,
            now_ms,
            reply,
        })
    }

    fn pending_count(&self, sink: String) -> StoreFuture<usize> {
        self.read(move |shared| Ok(shared.trees.pending.scan_prefix(sink_prefix(&sink)).count()))
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.shared.wakeups.subscribe()
    }
}

impl EventBrowser for SledStore {
    fn events(&self, query: EventQuery) -> StoreFuture<EventPage> {
        self.read(move |shared| {
            let t = &shared.trees.deliveries;
            let mut upper = query.before.as_deref().and_then(id_key);
            if let Some(until) = query.until_ms {
                let until = time_key(until);
                upper = Some(upper.map_or(until, |u| u.min(until)));
            }
            let lower = query.since_ms.map(time_key);
            let iter = match (lower, upper) {
                (Some(lo), Some(hi)) if lo < hi => t.range(lo.to_vec()..hi.to_vec()),
                (Some(_), Some(_)) => return Ok(EventPage::default()),
                (Some(lo), None) => t.range(lo.to_vec()..),
                (None, Some(hi)) => t.range(..hi.to_vec()),
                (None, None) => t.range::<Vec<u8>, _>(..),
            };
            let limit = query.limit.max(1);
            let mut page = EventPage::default();
            let mut last = None;
            let mut exhausted = true;
            for (scanned, item) in iter.rev().enumerate() {
                if page.events.len() >= limit || scanned >= BROWSE_SCAN_LIMIT {
                    exhausted = false;
                    break;
                }
                let (key, value) = item.map_err(io_err)?;
                last = id_from_key(&key);
                let summary = shared.summary(decode(&value)?)?;
                if query.matches(&summary) {
                    page.events.push(summary);
                }
            }
            page.next = if exhausted { None } else { last };
            Ok(page)
        })
    }

    fn receipt(&self, id: String) -> StoreFuture<Option<(Receipt, bytes::Bytes)>> {
        self.read(move |shared| {
            let Some(key) = id_key(&id) else {
                return Ok(None);
            };
            let t = &shared.trees;
            let Some(record) = t.deliveries.get(key).map_err(io_err)? else {
                return Ok(None);
            };
            let body = t.bodies.get(key).map_err(io_err)?.unwrap_or_default();
            Ok(Some((decode(&record)?, bytes::Bytes::from(body.to_vec()))))
        })
    }

    fn envelope(&self, id: String) -> StoreFuture<Option<Envelope>> {
        self.read(move |shared| match id_key(&id) {
            Some(key) => shared.envelope_of(&key).map_err(StoreError::Io),
            None => Ok(None),
        })
    }

    fn tasks(&self, envelope_id: String) -> StoreFuture<Vec<TaskRecord>> {
        self.read(move |shared| match id_key(&envelope_id) {
            Some(key) => shared.tasks_of(&key),
            None => Ok(Vec::new()),
        })
    }

    fn attempts(&self, envelope_id: String, sink: String) -> StoreFuture<Vec<AttemptRecord>> {
        self.read(move |shared| {
            let Some(id) = id_key(&envelope_id) else {
                return Ok(Vec::new());
            };
            let mut prefix = task_key(&id, &sink);
            prefix.push(0);
            shared
                .trees
                .attempts
                .scan_prefix(prefix)
                .map(|item| decode(&item.map_err(io_err)?.1))
                .collect()
        })
    }

    fn dead_letters(&self, sink: Option<String>, limit: usize) -> StoreFuture<Vec<TaskRecord>> {
        self.read(move |shared| {
            let prefix = sink.as_deref().map(sink_prefix).unwrap_or_default();
            let mut out = Vec::new();
            for item in shared.trees.dead.scan_prefix(&prefix) {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = item.map_err(io_err)?;
                let Some(split) = key.iter().position(|b| *b == 0) else {
                    continue;
                };
                let Ok(id) = <[u8; 16]>::try_from(&key[split + 1..]) else {
                    continue;
                };
                let sink = String::from_utf8_lossy(&key[..split]);
                if let Some(task) = shared.task_record(&id, &sink)? {
                    out.push(task);
                }
            }
            Ok(out)
        })
    }
}

impl Maintenance for SledStore {
    fn expire_claims(&self, now_secs: u64) -> StoreFuture<usize> {
        self.submit_counted(|reply| Op::Expire { now_secs, reply })
    }

    fn purge_before(&self, cutoff_ms: i64, limit: usize) -> StoreFuture<usize> {
        self.submit_counted(|reply| Op::Purge {
            cutoff_ms,
            limit,
            reply,
        })
    }

    fn close(&self) {
        lock(&self.shared.intake).sender.take();
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
        if let Err(e) = self.shared.db.flush() {
            warn!(error = %e, "Final flush failed.");
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{NewEnvelope, ReceiptStatus};

    fn settings(dir: &Path) -> StorageSettings {
        StorageSettings {
            path: dir.join("store").to_str().unwrap().into(),
            dedup_ttl_secs: 100,
            write_timeout_ms: 2_000,
            ..StorageSettings::default()
        }
    }

    fn ulid(n: u128) -> String {
        ulid::Ulid::from(n).to_string()
    }

    fn event(id: &str, event_id: &str, body: &[u8]) -> NewReceipt {
        let envelope: Envelope = serde_json::from_value(serde_json::json!({
            "id": id, "provider": "p", "kind": "generic", "event_id": event_id,
            "type": "a.created", "action": "created", "object": "a", "object_id": null,
            "current": null, "previous": null, "occurred_at": null,
            "received_at": "2024-01-01T00:00:00.000Z", "meta": {}
        }))
        .unwrap();
        NewReceipt {
            receipt: Receipt {
                id: id.into(),
                provider: "p".into(),
                kind: "generic".into(),
                event_id: Some(event_id.into()),
                received_at: envelope.received_at.clone(),
                client_ip: None,
                headers: vec![],
                status: ReceiptStatus::Accepted,
                error: None,
                envelope_ids: vec![],
                types: vec![],
                event_ids: vec![],
            },
            body: bytes::Bytes::copy_from_slice(body),
            events: vec![NewEnvelope {
                dedup: DedupKey {
                    provider: "p".into(),
                    event_id: event_id.into(),
                },
                json: serde_json::to_vec(&envelope).unwrap().into(),
                envelope,
                sinks: vec!["sink-a".into()],
                lane: Vec::new(),
                not_before_ms: 0,
            }],
            replay_guard: None,
        }
    }

    fn open(dir: &Path, tweak: impl FnOnce(&mut StorageSettings)) -> SledStore {
        let mut s = settings(dir);
        tweak(&mut s);
        SledStore::open(
            &s,
            Arc::new(ManualClock::at_unix(1_000)),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    /// Holds every sync until the returned sender is dropped or sent to.
    fn hold_syncs(store: &SledStore) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        store.set_before_sync(Some(Arc::new(move || {
            let _ = lock(&held).recv();
        })));
        release
    }

    /// The task delivered by its first attempt, with that attempt's record.
    fn delivered(mut task: TaskRecord) -> (TaskRecord, crate::store::AttemptRecord) {
        task.status = TaskStatus::Delivered;
        task.next_attempt_ms = None;
        let attempt = crate::store::AttemptRecord {
            number: 1,
            at: "t".into(),
            outcome: crate::store::AttemptOutcome::Delivered,
            http_status: None,
            exit_code: None,
            error: None,
            duration_ms: 0,
        };
        (task, attempt)
    }

    fn key(event_id: &str) -> DedupKey {
        DedupKey {
            provider: "p".into(),
            event_id: event_id.into(),
        }
    }

    /// The fault-injecting "disk" holds every sync: neither the commit nor a duplicate check
    /// of the same event (in flight, or applied to sled and not yet synced) may answer, and a
    /// worker may not see its task, until the sync returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_acknowledged_or_handed_out_before_its_sync_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path(), |_| {}));
        let release = hold_syncs(&store);
        let commit = tokio::spawn(store.commit(event(&ulid(1), "e1", b"{}")));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!commit.is_finished(), "acknowledged before the sync");
        // The batch is applied in sled and the writer is inside its sync.
        assert!(store
            .shared
            .trees
            .dedup
            .get(key("e1").to_bytes())
            .unwrap()
            .is_some());
        let duplicate = tokio::spawn(store.find_duplicate(key("e1")));
        let again = tokio::spawn(store.commit(event(&ulid(2), "e1", b"{}")));
        let taken = tokio::spawn(store.take_due("sink-a".into(), 10, 10));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !duplicate.is_finished(),
            "duplicate answered before the sync"
        );
        assert!(
            !again.is_finished(),
            "duplicate commit answered before the sync"
        );
        assert!(!taken.is_finished(), "a worker saw an unsynced task");
        release.send(()).unwrap();
        assert_eq!(
            commit.await.unwrap().unwrap(),
            Commit::Stored(vec![Committed::Accepted])
        );
        assert_eq!(duplicate.await.unwrap().unwrap(), Some(ulid(1)));
        assert_eq!(
            again.await.unwrap().unwrap(),
            Commit::Stored(vec![Committed::Duplicate { id: ulid(1) }])
        );
        assert_eq!(taken.await.unwrap().unwrap().tasks.len(), 1);
        store.set_before_sync(None);
        drop(release);
    }

    #[test]
    fn recent_claims_are_bounded_oldest_first_and_expire() {
        let mut recent = RecentClaims::default();
        for n in 0..=RECENT_CLAIMS as u64 {
            recent.insert(n.to_be_bytes().to_vec(), format!("id{n}"), 100, n + 1);
        }
        assert_eq!(recent.claims.len(), RECENT_CLAIMS);
        assert_eq!(
            recent.get(&0u64.to_be_bytes(), 10),
            None,
            "the oldest went first"
        );
        assert_eq!(recent.get(&1u64.to_be_bytes(), 10), Some("id1"));
        assert_eq!(recent.get(&1u64.to_be_bytes(), 100), None, "expired");
        // A key claimed again keeps its newer claim when its old place is evicted.
        recent.insert(1u64.to_be_bytes().to_vec(), "again".into(), 200, 99_999);
        recent.insert(b"x".to_vec(), "x".into(), 200, 100_000);
        assert_eq!(recent.get(&1u64.to_be_bytes(), 150), Some("again"));
    }

    /// Receipts still pending at the front do not stop retention, and no purge reads more
    /// than a few receipts per one it may delete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_moves_past_pending_receipts_a_few_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), |_| {});
        for n in 1..=20u128 {
            store
                .commit(event(&ulid(n << 80), &format!("e{n}"), b"{}"))
                .await
                .unwrap();
        }
        // The newest ten are finished; the oldest ten are still pending.
        let mut done = Vec::new();
        for n in 11..=20u128 {
            let task = store.tasks(ulid(n << 80)).await.unwrap().remove(0);
            done.push(delivered(task));
        }
        store.record_attempts(done).await.unwrap();
        let first = store.purge_before(1_000, 1).await.unwrap();
        assert_eq!(
            first, 0,
            "the first purge looks at four pending receipts only"
        );
        let mut purged = first;
        for _ in 0..20 {
            purged += store.purge_before(1_000, 1).await.unwrap();
        }
        assert_eq!(purged, 10);
        for n in 1..=10u128 {
            assert!(
                store.receipt(ulid(n << 80)).await.unwrap().is_some(),
                "pending kept"
            );
        }
    }

    /// An attempt record that timed out may still land: its task stays leased, so no other
    /// taker attempts it again meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_record_that_timed_out_keeps_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        // The default test deadline (2 s): a slow CI disk must not time out the set-up commit.
        let store = open(dir.path(), |_| {});
        store.commit(event(&ulid(1), "e1", b"{}")).await.unwrap();
        let due = store.take_due("sink-a".into(), 10, 10).await.unwrap();
        let task = due.tasks[0].task.clone();
        let leased = |store: &SledStore| {
            lock(&store.shared.leases)
                .0
                .get("sink-a")
                .is_some_and(|l| l.contains_key(&id_key(&ulid(1)).unwrap()))
        };
        assert!(leased(&store));
        let release = hold_syncs(&store);
        let result = store.record_attempts(vec![delivered(task)]).await;
        assert!(
            matches!(result, Err(StoreError::Timeout(2_000))),
            "{result:?}"
        );
        assert!(
            leased(&store),
            "the lease ended with a write that may still land"
        );
        store.set_before_sync(None);
        drop(release);
    }

    /// A frozen disk: every write and `/ready`'s probe answers a timeout, not a hang.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_disk_answers_a_timeout_within_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), |s| s.write_timeout_ms = 800);
        let release = hold_syncs(&store);
        let started = std::time::Instant::now();
        let result = store.commit(event(&ulid(1), "e1", b"{}")).await;
        assert!(
            matches!(result, Err(StoreError::Timeout(800))),
            "{result:?}"
        );
        assert!(matches!(store.probe().await, Err(StoreError::Timeout(800))));
        assert!(started.elapsed() < Duration::from_secs(4));
        drop(release);
        store.set_before_sync(None);
        // Once the disk moves again the first copy is stored: a retry is a duplicate.
        assert_eq!(
            store.commit(event(&ulid(2), "e1", b"{}")).await.unwrap(),
            Commit::Stored(vec![Committed::Duplicate { id: ulid(1) }])
        );
    }

    /// The write queue is bounded in bytes, not only in count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_write_queue_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), |s| s.queue_max_bytes = 100_000);
        let release = hold_syncs(&store);
        let big = vec![b'x'; 60_000];
        let first = tokio::spawn(store.commit(event(&ulid(1), "e1", &big)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = store.commit(event(&ulid(2), "e2", &big)).await;
        assert!(matches!(second, Err(StoreError::QueueFull)), "{second:?}");
        let small = tokio::spawn(store.commit(event(&ulid(3), "e3", b"{}")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
        release.send(()).unwrap();
        store.set_before_sync(None);
        drop(release);
        assert!(first.await.unwrap().is_ok());
        assert!(small.await.unwrap().is_ok());
        assert!(store.commit(event(&ulid(2), "e2", &big)).await.is_ok());
    }
}
