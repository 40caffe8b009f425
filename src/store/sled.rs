//! The embedded store: sled, written through one group-committing writer thread.
//!
//! sled's `flush()` ends in `sync_file_range` on Linux, which neither flushes the disk cache nor
//! commits the file size (upstream issue 1452), and `flush_async()` deadlocks with many waiters
//! (upstream issue 1308). So requests never write sled themselves: they queue a job on a bounded
//! channel and wait. The writer drains up to `max_batch` jobs, applies them in one multi-tree
//! transaction (crash-atomic: claim and event land together or not at all), calls `flush()`,
//! then `fdatasync`s sled's log file and any new blob files, and only then answers every waiting
//! request. A full queue answers `QueueFull` at once (503 with `Retry-After`).
//!
//! If a flush or sync fails, what is in memory may never reach the disk, so the store refuses
//! every later write ([`StoreError::Failed`]) until restarted: the provider keeps retrying, and
//! after the restart sled recovers only what was durable.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::{
    AttemptRecord, Commit, Committed, DedupKey, DeliveryRecord, NewEvent, PendingTask, Store,
    StoreError, TaskRecord, TaskStatus,
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

/// A claim in the dedup table: when it expires and which delivery made it.
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

enum Op {
    Commit(Box<Prepared>),
    Unprocessable {
        id: [u8; 16],
        delivery: Vec<u8>,
        body: bytes::Bytes,
    },
    Probe,
}

/// One event serialised before the transaction.
struct PreparedEvent {
    dedup_key: Vec<u8>,
    id: String,
    key: [u8; 16],
    envelope: Vec<u8>,
    /// (tasks key, pending key, task record) per sink.
    tasks: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// The pending index value: next attempt time and lane.
    pending_value: Vec<u8>,
}

/// `envelope id (16 bytes) ++ sink`: an envelope's tasks are one prefix scan.
fn task_key(id: &[u8; 16], sink: &str) -> Vec<u8> {
    let mut k = id.to_vec();
    k.extend_from_slice(sink.as_bytes());
    k
}

/// `sink \0 envelope id`: a sink's pending tasks in arrival order.
fn sink_key(sink: &str, id: &[u8; 16]) -> Vec<u8> {
    let mut k = sink.as_bytes().to_vec();
    k.push(0);
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

/// A delivery prepared before the transaction, so the transaction mostly moves bytes.
struct Prepared {
    delivery_key: [u8; 16],
    delivery: DeliveryRecord,
    body: bytes::Bytes,
    events: Vec<PreparedEvent>,
    guard: Option<Vec<u8>>,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Commit, StoreError>>,
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

struct Shared {
    db: sled::Db,
    trees: Trees,
    dir: PathBuf,
    log_file: File,
    failed: OnceLock<String>,
    committed: watch::Sender<u64>,
    /// The last batch applied to sled (visible to readers) and the last one made durable.
    applied: AtomicU64,
    synced: watch::Sender<u64>,
    /// Fault injection for tests: runs before each sync (a slow or stuck disk).
    before_sync: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    clock: Arc<dyn Clock>,
    dedup_ttl_secs: u64,
    metrics: Arc<Metrics>,
}

/// sled-backed [`Store`].
pub struct SledStore {
    shared: Arc<Shared>,
    sender: RwLock<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl SledStore {
    /// Fault injection for tests: `hook` runs on the writer thread before every sync, so a
    /// test can hold the "disk" and check that nothing is acknowledged meanwhile.
    pub fn set_before_sync(&self, hook: Option<Arc<dyn Fn() + Send + Sync>>) {
        *self
            .shared
            .before_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = hook;
    }
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

/// Decodes every JSON value of a sled scan.
fn decode_all<T: serde::de::DeserializeOwned>(
    items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<Vec<T>, StoreError> {
    items
        .map(|item| {
            let (_, value) = item.map_err(io_err)?;
            serde_json::from_slice(&value).map_err(io_err)
        })
        .collect()
}

fn io_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
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
        let shared = Arc::new(Shared {
            db,
            trees,
            dir,
            log_file,
            failed: OnceLock::new(),
            committed: watch::Sender::new(0),
            applied: AtomicU64::new(0),
            synced: watch::Sender::new(0),
            before_sync: Mutex::new(None),
            clock,
            dedup_ttl_secs: settings.dedup_ttl_secs,
            metrics,
        });
        let (sender, receiver) = mpsc::channel(settings.queue_capacity);
        let writer_shared = shared.clone();
        let max_batch = settings.max_batch;
        let writer = std::thread::Builder::new()
            .name("hookgate-store-writer".into())
            .spawn(move || run_writer(&writer_shared, receiver, max_batch))
            .map_err(io_err)?;
        let pending = shared.trees.pending.len();
        info!(path = %shared.dir.display(), pending, "Store opened.");
        Ok(Self {
            shared,
            sender: RwLock::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
        })
    }

    fn submit(&self, op: Op) -> BoxFuture<'static, Result<Commit, StoreError>> {
        if let Some(reason) = self.shared.failed.get() {
            return futures_util::future::ready(Err(StoreError::Failed(reason.clone()))).boxed();
        }
        let (reply, wait) = oneshot::channel();
        let sent = match &*self.sender.read().unwrap_or_else(|e| e.into_inner()) {
            Some(sender) => sender.try_send(Job { op, reply }).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            }),
            None => Err(StoreError::Closed),
        };
        async move {
            sent?;
            wait.await.unwrap_or(Err(StoreError::Closed))
        }
        .boxed()
    }
}

fn run_writer(shared: &Shared, mut receiver: mpsc::Receiver<Job>, max_batch: usize) {
    let mut synced_blobs = HashSet::new();
    while let Some(first) = receiver.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if let Some(reason) = shared.failed.get() {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Failed(reason.clone())));
            }
            continue;
        }
        let started = std::time::Instant::now();
        let batch = shared.applied.load(Ordering::SeqCst) + 1;
        let result = shared.apply(&jobs).and_then(|outcomes| {
            // From here readers can see this batch's claims; they wait for `synced`.
            shared.applied.store(batch, Ordering::SeqCst);
            let sync_started = std::time::Instant::now();
            if let Some(hook) = shared
                .before_sync
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                hook();
            }
            shared.sync(&mut synced_blobs)?;
            shared
                .metrics
                .fsync_seconds
                .observe(sync_started.elapsed().as_secs_f64());
            Ok(outcomes)
        });
        shared.metrics.commit_batch.observe(jobs.len() as f64);
        match result {
            Ok(outcomes) => {
                shared.synced.send_replace(batch);
                debug!(
                    batch = jobs.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "Committed batch."
                );
                let queued = outcomes.iter().any(|outcome| {
                    matches!(outcome, Commit::Stored(events) if events.contains(&Committed::Accepted))
                });
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
                if queued {
                    shared.committed.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => {
                error!(error = %e, "Storage write failed; refusing writes until restarted.");
                let reason = e.to_string();
                let _ = shared.failed.set(reason.clone());
                // Wake readers waiting for this batch: they now see the failure.
                shared.synced.send_modify(|_| {});
                for job in jobs {
                    let _ = job.reply.send(Err(StoreError::Failed(reason.clone())));
                }
            }
        }
    }
    debug!("Store writer stopped.");
}

impl Shared {
    fn now_secs(&self) -> u64 {
        u64::try_from(self.clock.unix_secs()).unwrap_or(0)
    }

    fn apply(&self, jobs: &[Job]) -> Result<Vec<Commit>, StoreError> {
        let now = self.now_secs();
        let expires_at = now.saturating_add(self.dedup_ttl_secs);
        let t = &self.trees;
        let result = (
            &t.deliveries,
            &t.bodies,
            &t.envelopes,
            &t.dedup,
            &t.expiry,
            &t.tasks,
            &t.pending,
            &t.meta,
        )
            .transaction(
                |(deliveries, bodies, envelopes, dedup, expiry, tasks, pending, meta)| {
                    let live_claim = |key: &[u8]| -> Result<Option<Claim>, _> {
                        Ok::<_, ConflictableTransactionError<()>>(
                            dedup
                                .get(key)?
                                .and_then(|v| Claim::decode(&v))
                                .filter(|c| c.expires_at > now),
                        )
                    };
                    let claim = |key: &[u8], id: &str| {
                        let claim = Claim {
                            expires_at,
                            id: id.to_owned(),
                        };
                        dedup.insert(key, claim.encode())?;
                        expiry.insert(expiry_key(expires_at, key), &[][..])?;
                        Ok::<_, ConflictableTransactionError<()>>(())
                    };
                    let mut outcomes = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        match &job.op {
                            Op::Commit(prepared) => {
                                // A used replay guard refuses the delivery unless every event in it
                                // is already stored (then it is a plain duplicate).
                                if let Some(guard) = &prepared.guard {
                                    let mut any_new = false;
                                    for event in &prepared.events {
                                        any_new |= live_claim(&event.dedup_key)?.is_none();
                                    }
                                    if any_new && live_claim(guard)?.is_some() {
                                        outcomes.push(Commit::Replayed);
                                        continue;
                                    }
                                }
                                let mut results = Vec::with_capacity(prepared.events.len());
                                let mut stored = Vec::new();
                                for event in &prepared.events {
                                    if let Some(existing) = live_claim(&event.dedup_key)? {
                                        results.push(Committed::Duplicate { id: existing.id });
                                        continue;
                                    }
                                    claim(&event.dedup_key, &event.id)?;
                                    envelopes.insert(&event.key[..], event.envelope.as_slice())?;
                                    for (task_key, pending_key, record) in &event.tasks {
                                        tasks.insert(task_key.as_slice(), record.as_slice())?;
                                        pending.insert(
                                            pending_key.as_slice(),
                                            event.pending_value.as_slice(),
                                        )?;
                                    }
                                    stored.push(event.id.clone());
                                    results.push(Committed::Accepted);
                                }
                                if !stored.is_empty() {
                                    if let Some(guard) = &prepared.guard {
                                        claim(guard, &prepared.delivery.id)?;
                                    }
                                    let mut record = prepared.delivery.clone();
                                    record.envelope_ids = stored;
                                    let record = serde_json::to_vec(&record).unwrap_or_default();
                                    deliveries.insert(&prepared.delivery_key[..], record)?;
                                    bodies.insert(
                                        &prepared.delivery_key[..],
                                        prepared.body.as_ref(),
                                    )?;
                                }
                                outcomes.push(Commit::Stored(results));
                            }
                            Op::Unprocessable { id, delivery, body } => {
                                deliveries.insert(&id[..], delivery.as_slice())?;
                                bodies.insert(&id[..], body.as_ref())?;
                                outcomes.push(Commit::Stored(Vec::new()));
                            }
                            Op::Probe => {
                                meta.insert(META_PROBE, &now.to_be_bytes()[..])?;
                                outcomes.push(Commit::Stored(Vec::new()));
                            }
                        }
                    }
                    Ok::<_, ConflictableTransactionError<()>>(outcomes)
                },
            );
        result.map_err(|e: TransactionError<()>| StoreError::Io(format!("{e:?}")))
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
}

impl Store for SledStore {
    fn find_duplicate(
        &self,
        key: &DedupKey,
    ) -> BoxFuture<'static, Result<Option<String>, StoreError>> {
        let shared = self.shared.clone();
        let lookup = (|| {
            if let Some(reason) = shared.failed.get() {
                return Err(StoreError::Failed(reason.clone()));
            }
            let now = shared.now_secs();
            let claim = shared
                .trees
                .dedup
                .get(key.to_bytes())
                .map_err(io_err)?
                .and_then(|v| Claim::decode(&v))
                .filter(|c| c.expires_at > now)
                .map(|c| c.id);
            // A claim may belong to a batch that is applied but not yet synced: answering
            // "duplicate" now would acknowledge an event that a crash could still lose.
            Ok(claim.map(|id| (id, shared.applied.load(Ordering::SeqCst))))
        })();
        async move {
            let Some((id, batch)) = lookup? else {
                return Ok(None);
            };
            let mut synced = shared.synced.subscribe();
            loop {
                if let Some(reason) = shared.failed.get() {
                    return Err(StoreError::Failed(reason.clone()));
                }
                if *synced.borrow_and_update() >= batch {
                    return Ok(Some(id));
                }
                if synced.changed().await.is_err() {
                    return Err(StoreError::Closed);
                }
            }
        }
        .boxed()
    }

    fn commit(&self, event: NewEvent) -> BoxFuture<'static, Result<Commit, StoreError>> {
        let prepared = (|| {
            let delivery_key = id_key(&event.delivery.id)
                .ok_or_else(|| StoreError::Io("delivery id is not a ULID".into()))?;
            let events = event
                .events
                .iter()
                .map(|e| {
                    let key = id_key(&e.envelope.id)
                        .ok_or_else(|| StoreError::Io("envelope id is not a ULID".into()))?;
                    let tasks = e
                        .sinks
                        .iter()
                        .map(|sink| {
                            let record = TaskRecord {
                                sink: sink.clone(),
                                envelope_id: e.envelope.id.clone(),
                                status: TaskStatus::Pending,
                                attempts: 0,
                                round_attempts: 0,
                                created_at_ms: self.shared.clock.now().timestamp_millis(),
                                round_started_ms: self.shared.clock.now().timestamp_millis(),
                                next_attempt_ms: Some(e.not_before_ms),
                                last_error: None,
                                lane: e.lane.clone(),
                            };
                            Ok((
                                task_key(&key, sink),
                                sink_key(sink, &key),
                                serde_json::to_vec(&record).map_err(io_err)?,
                            ))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    Ok(PreparedEvent {
                        dedup_key: e.dedup.to_bytes(),
                        id: e.envelope.id.clone(),
                        key,
                        envelope: serde_json::to_vec(&e.envelope).map_err(io_err)?,
                        tasks,
                        pending_value: pending_value(e.not_before_ms, &e.lane),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(Prepared {
                delivery_key,
                delivery: event.delivery,
                body: event.body,
                events,
                guard: event.replay_guard.map(|g| g.to_bytes()),
            })
        })();
        match prepared {
            Ok(prepared) => self.submit(Op::Commit(Box::new(prepared))),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn keep_unprocessable(
        &self,
        delivery: DeliveryRecord,
        body: bytes::Bytes,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let op = id_key(&delivery.id)
            .ok_or_else(|| StoreError::Io("delivery id is not a ULID".into()))
            .and_then(|id| {
                Ok(Op::Unprocessable {
                    id,
                    delivery: serde_json::to_vec(&delivery).map_err(io_err)?,
                    body,
                })
            });
        match op {
            Ok(op) => self.submit(op).map(|r| r.map(|_| ())).boxed(),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        self.submit(Op::Probe).map(|r| r.map(|_| ())).boxed()
    }

    fn pending_tasks(&self, sink: &str, limit: usize) -> Result<Vec<PendingTask>, StoreError> {
        let mut prefix = sink.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.shared.trees.pending.scan_prefix(&prefix).take(limit) {
            let (key, value) = item.map_err(io_err)?;
            let Some(id) = id_from_key(&key[prefix.len()..]) else {
                continue;
            };
            let (when, lane) = value.split_at(8.min(value.len()));
            out.push(PendingTask {
                envelope_id: id,
                next_attempt_ms: i64::from_be_bytes(when.try_into().unwrap_or_default()),
                lane: lane.to_vec(),
            });
        }
        Ok(out)
    }

    fn pending_count(&self, sink: &str) -> Result<usize, StoreError> {
        let mut prefix = sink.as_bytes().to_vec();
        prefix.push(0);
        Ok(self.shared.trees.pending.scan_prefix(&prefix).count())
    }

    fn record_attempts(&self, done: &[(TaskRecord, AttemptRecord)]) -> Result<(), StoreError> {
        let prepared = done
            .iter()
            .map(|(task, attempt)| {
                let id = id_key(&task.envelope_id)
                    .ok_or_else(|| StoreError::Io("envelope id is not a ULID".into()))?;
                Ok((
                    id,
                    task,
                    serde_json::to_vec(task).map_err(io_err)?,
                    attempt.number,
                    serde_json::to_vec(attempt).map_err(io_err)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let t = &self.shared.trees;
        (&t.tasks, &t.pending, &t.attempts, &t.dead)
            .transaction(|(tasks, pending, attempts, dead)| {
                for (id, task, record, number, attempt) in &prepared {
                    tasks.insert(task_key(id, &task.sink), record.as_slice())?;
                    attempts.insert(attempt_key(id, &task.sink, *number), attempt.as_slice())?;
                    let index = sink_key(&task.sink, id);
                    match (task.status, task.next_attempt_ms) {
                        (TaskStatus::Pending, Some(next)) => {
                            pending.insert(index.as_slice(), pending_value(next, &task.lane))?;
                            dead.remove(index.as_slice())?;
                        }
                        (TaskStatus::Dead, _) => {
                            pending.remove(index.as_slice())?;
                            dead.insert(index.as_slice(), &[][..])?;
                        }
                        _ => {
                            pending.remove(index.as_slice())?;
                            dead.remove(index.as_slice())?;
                        }
                    }
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| StoreError::Io(format!("{e:?}")))
    }

    fn tasks(&self, envelope_id: &str) -> Result<Vec<TaskRecord>, StoreError> {
        let Some(id) = id_key(envelope_id) else {
            return Ok(Vec::new());
        };
        decode_all(self.shared.trees.tasks.scan_prefix(id))
    }

    fn attempts(&self, envelope_id: &str, sink: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let Some(id) = id_key(envelope_id) else {
            return Ok(Vec::new());
        };
        let mut prefix = task_key(&id, sink);
        prefix.push(0);
        decode_all(self.shared.trees.attempts.scan_prefix(prefix))
    }

    fn recent_deliveries(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let t = &self.shared.trees.deliveries;
        let iter = match before.and_then(id_key) {
            Some(key) => t.range(..key.to_vec()),
            None => t.range::<Vec<u8>, _>(..),
        };
        decode_all(iter.rev().take(limit))
    }

    fn dead_letters(
        &self,
        sink: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let t = &self.shared.trees;
        let prefix = sink
            .map(|s| {
                let mut p = s.as_bytes().to_vec();
                p.push(0);
                p
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for item in t.dead.scan_prefix(&prefix).take(limit) {
            let (key, _) = item.map_err(io_err)?;
            let Some(split) = key.iter().position(|b| *b == 0) else {
                continue;
            };
            let (sink, id) = (&key[..split], &key[split + 1..]);
            let Ok(id) = <[u8; 16]>::try_from(id) else {
                continue;
            };
            let sink = String::from_utf8_lossy(sink);
            if let Some(record) = t.tasks.get(task_key(&id, &sink)).map_err(io_err)? {
                out.push(serde_json::from_slice(&record).map_err(io_err)?);
            }
        }
        Ok(out)
    }

    fn redeliver(
        &self,
        envelope_id: &str,
        sink: Option<&str>,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let Some(id) = id_key(envelope_id) else {
            return Ok(0);
        };
        let t = &self.shared.trees;
        let mut count = 0;
        for mut task in self.tasks(envelope_id)? {
            if sink.is_some_and(|s| s != task.sink) {
                continue;
            }
            task.status = TaskStatus::Pending;
            task.round_attempts = 0;
            task.round_started_ms = now_ms;
            task.next_attempt_ms = Some(now_ms);
            let record = serde_json::to_vec(&task).map_err(io_err)?;
            let index = sink_key(&task.sink, &id);
            (&t.tasks, &t.pending, &t.dead)
                .transaction(|(tasks, pending, dead)| {
                    tasks.insert(task_key(&id, &task.sink), record.as_slice())?;
                    pending.insert(index.as_slice(), pending_value(now_ms, &task.lane))?;
                    dead.remove(index.as_slice())?;
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .map_err(|e: TransactionError<()>| StoreError::Io(format!("{e:?}")))?;
            count += 1;
        }
        if count > 0 {
            self.shared
                .committed
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(count)
    }

    fn expire_claims(&self, now_secs: u64) -> Result<usize, StoreError> {
        let t = &self.shared.trees;
        let end = (now_secs.saturating_add(1)).to_be_bytes();
        let mut removed = 0;
        for item in t.expiry.range(..&end[..]) {
            let (key, _) = item.map_err(io_err)?;
            let (expires, dedup_key) = key.split_at(8);
            let expires_at = u64::from_be_bytes(expires.try_into().unwrap_or_default());
            if let Some(current) = t.dedup.get(dedup_key).map_err(io_err)? {
                // A newer claim for the same ID (re-claimed after expiry) stays.
                if Claim::decode(&current).is_some_and(|c| c.expires_at == expires_at) {
                    let _ = t
                        .dedup
                        .compare_and_swap(dedup_key, Some(current), None::<&[u8]>)
                        .map_err(io_err)?;
                    removed += 1;
                }
            }
            t.expiry.remove(&key).map_err(io_err)?;
        }
        Ok(removed)
    }

    fn purge_before(&self, cutoff_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let t = &self.shared.trees;
        let cutoff = ulid::Ulid::from_parts(u64::try_from(cutoff_ms).unwrap_or(0), 0);
        let end = u128::from(cutoff).to_be_bytes();
        let mut purged = 0;
        for item in t.deliveries.range(..end.to_vec()) {
            if purged >= limit {
                break;
            }
            let (key, value) = item.map_err(io_err)?;
            let record: DeliveryRecord = match serde_json::from_slice(&value) {
                Ok(record) => record,
                Err(_) => continue,
            };
            let mut tasks = Vec::new();
            for envelope_id in &record.envelope_ids {
                tasks.extend(self.tasks(envelope_id)?);
            }
            if tasks.iter().any(|task| task.status == TaskStatus::Pending) {
                continue; // still being delivered: kept whatever its age
            }
            let mut batch_deliveries = sled::Batch::default();
            batch_deliveries.remove(&*key);
            let mut batch_bodies = sled::Batch::default();
            batch_bodies.remove(&*key);
            for envelope_id in &record.envelope_ids {
                let Some(id) = id_key(envelope_id) else {
                    continue;
                };
                t.envelopes.remove(id).map_err(io_err)?;
                for prefixed in [&t.tasks, &t.attempts] {
                    let mut batch = sled::Batch::default();
                    for entry in prefixed.scan_prefix(id).keys() {
                        batch.remove(entry.map_err(io_err)?);
                    }
                    prefixed.apply_batch(batch).map_err(io_err)?;
                }
                for task in tasks.iter().filter(|task| task.envelope_id == *envelope_id) {
                    t.dead.remove(sink_key(&task.sink, &id)).map_err(io_err)?;
                }
            }
            t.bodies.apply_batch(batch_bodies).map_err(io_err)?;
            t.deliveries.apply_batch(batch_deliveries).map_err(io_err)?;
            purged += 1;
        }
        Ok(purged)
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    fn delivery(&self, id: &str) -> Result<Option<(DeliveryRecord, Vec<u8>)>, StoreError> {
        let Some(key) = id_key(id) else {
            return Ok(None);
        };
        let t = &self.shared.trees;
        let Some(record) = t.deliveries.get(key).map_err(io_err)? else {
            return Ok(None);
        };
        let record: DeliveryRecord = serde_json::from_slice(&record).map_err(io_err)?;
        let body = t.bodies.get(key).map_err(io_err)?.unwrap_or_default();
        Ok(Some((record, body.to_vec())))
    }

    fn envelope(&self, id: &str) -> Result<Option<Envelope>, StoreError> {
        let Some(key) = id_key(id) else {
            return Ok(None);
        };
        self.shared
            .trees
            .envelopes
            .get(key)
            .map_err(io_err)?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(io_err))
            .transpose()
    }

    fn close(&self) {
        self.sender
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
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
    use crate::store::{DeliveryStatus, NewEnvelope};

    fn stored(outcome: Committed) -> Commit {
        Commit::Stored(vec![outcome])
    }

    fn settings(dir: &Path) -> StorageSettings {
        StorageSettings {
            path: dir.join("store").to_str().unwrap().into(),
            dedup_ttl_secs: 100,
            ..StorageSettings::default()
        }
    }

    fn event(id: &str, event_id: &str) -> NewEvent {
        let envelope: Envelope = serde_json::from_value(serde_json::json!({
            "id": id, "provider": "p", "kind": "generic", "event_id": event_id,
            "type": "a.created", "action": "created", "object": "a", "object_id": null,
            "current": null, "previous": null, "occurred_at": null,
            "received_at": "2024-01-01T00:00:00.000Z", "meta": {}
        }))
        .unwrap();
        NewEvent {
            delivery: DeliveryRecord {
                id: id.into(),
                provider: "p".into(),
                kind: "generic".into(),
                event_id: Some(event_id.into()),
                received_at: envelope.received_at.clone(),
                client_ip: None,
                headers: vec![],
                status: DeliveryStatus::Accepted,
                error: None,
                envelope_ids: vec![id.into()],
            },
            body: bytes::Bytes::from_static(b"{\"raw\":true}"),
            events: vec![NewEnvelope {
                dedup: DedupKey {
                    provider: "p".into(),
                    event_id: event_id.into(),
                },
                envelope,
                sinks: vec!["sink-a".into()],
                lane: b"lane-1".to_vec(),
                not_before_ms: 0,
            }],
            replay_guard: None,
        }
    }

    fn ulid(n: u128) -> String {
        ulid::Ulid::from(n).to_string()
    }

    #[tokio::test]
    async fn committed_events_their_claims_and_their_tasks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let store = SledStore::open(
            &settings(dir.path()),
            clock.clone(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        assert_eq!(
            store.commit(event(&ulid(1), "e1")).await.unwrap(),
            stored(Committed::Accepted)
        );
        assert_eq!(
            store.commit(event(&ulid(2), "e1")).await.unwrap(),
            stored(Committed::Duplicate { id: ulid(1) })
        );
        store.close();
        drop(store);

        let store = SledStore::open(
            &settings(dir.path()),
            clock.clone(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let key = DedupKey {
            provider: "p".into(),
            event_id: "e1".into(),
        };
        assert_eq!(store.find_duplicate(&key).await.unwrap(), Some(ulid(1)));
        let pending = store.pending_tasks("sink-a", 10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].envelope_id, ulid(1));
        assert_eq!(pending[0].lane, b"lane-1");
        let (record, body) = store.delivery(&ulid(1)).unwrap().unwrap();
        assert_eq!(record.event_id.as_deref(), Some("e1"));
        assert_eq!(body, b"{\"raw\":true}");
        // An attempt that delivers removes the task from the pending index, durably recorded.
        let mut task = store.tasks(&ulid(1)).unwrap().remove(0);
        task.status = TaskStatus::Delivered;
        task.attempts = 1;
        task.next_attempt_ms = None;
        let attempt = crate::store::AttemptRecord {
            number: 1,
            at: "2024-01-01T00:00:00.000Z".into(),
            outcome: crate::store::AttemptOutcome::Delivered,
            http_status: Some(200),
            exit_code: None,
            error: None,
            duration_ms: 3,
        };
        store.record_attempts(&[(task, attempt.clone())]).unwrap();
        assert!(store.pending_tasks("sink-a", 10).unwrap().is_empty());
        assert_eq!(store.attempts(&ulid(1), "sink-a").unwrap(), vec![attempt]);
        // Redelivery makes it pending again with a fresh budget.
        assert_eq!(store.redeliver(&ulid(1), None, 99).unwrap(), 1);
        let again = store.pending_tasks("sink-a", 10).unwrap();
        assert_eq!(again[0].next_attempt_ms, 99);
        assert!(
            store.envelope(&ulid(1)).unwrap().is_some(),
            "envelopes are kept"
        );
    }

    #[tokio::test]
    async fn expired_claims_are_swept_and_can_be_claimed_again() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let store = SledStore::open(
            &settings(dir.path()),
            clock.clone(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        store.commit(event(&ulid(1), "e1")).await.unwrap();
        store.commit(event(&ulid(2), "e2")).await.unwrap();
        assert_eq!(store.expire_claims(1_050).unwrap(), 0);
        clock.set_unix(1_101);
        let key = DedupKey {
            provider: "p".into(),
            event_id: "e1".into(),
        };
        assert_eq!(store.find_duplicate(&key).await.unwrap(), None, "expired");
        // Re-claimed before the sweep: the sweep must not remove the new claim.
        assert_eq!(
            store.commit(event(&ulid(3), "e1")).await.unwrap(),
            stored(Committed::Accepted)
        );
        assert_eq!(
            store.expire_claims(1_101).unwrap(),
            1,
            "only e2's old claim"
        );
        assert_eq!(store.find_duplicate(&key).await.unwrap(), Some(ulid(3)));
    }

    #[tokio::test]
    async fn probes_write_durably_and_a_closed_store_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(
            &settings(dir.path()),
            Arc::new(ManualClock::at_unix(5)),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        store.probe().await.unwrap();
        store.close();
        assert!(matches!(store.probe().await, Err(StoreError::Closed)));
    }

    #[tokio::test]
    async fn retention_purges_finished_deliveries_and_keeps_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let store =
            SledStore::open(&settings(dir.path()), clock, Arc::new(Metrics::new())).unwrap();
        // Two old deliveries (ULID time 1 ms and 2 ms), one still pending.
        store
            .commit(event(&ulid(1u128 << 80), "old-done"))
            .await
            .unwrap();
        store
            .commit(event(&ulid(2u128 << 80), "old-pending"))
            .await
            .unwrap();
        let mut task = store.tasks(&ulid(1u128 << 80)).unwrap().remove(0);
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
        store.record_attempts(&[(task, attempt)]).unwrap();
        assert_eq!(store.purge_before(10, 100).unwrap(), 1);
        assert!(store.delivery(&ulid(1u128 << 80)).unwrap().is_none());
        assert!(store.envelope(&ulid(1u128 << 80)).unwrap().is_none());
        assert!(store.tasks(&ulid(1u128 << 80)).unwrap().is_empty());
        assert!(store
            .attempts(&ulid(1u128 << 80), "sink-a")
            .unwrap()
            .is_empty());
        assert!(
            store.delivery(&ulid(2u128 << 80)).unwrap().is_some(),
            "pending: kept"
        );
        // A cutoff before everything purges nothing.
        assert_eq!(store.purge_before(1, 100).unwrap(), 0);
    }

    /// The fault-injecting "disk" holds every sync: neither the commit nor a duplicate check
    /// of the same event may answer until the sync returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_acknowledged_before_its_sync_returns() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let store =
            SledStore::open(&settings(dir.path()), clock, Arc::new(Metrics::new())).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        store.set_before_sync(Some(Arc::new(move || {
            let _ = held.lock().unwrap().recv();
        })));
        let commit = tokio::spawn(store.commit(event(&ulid(1), "e1")));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!commit.is_finished(), "acknowledged before the sync");
        let key = DedupKey {
            provider: "p".into(),
            event_id: "e1".into(),
        };
        // The claim is already applied in sled, but not durable: the fast path must wait.
        let duplicate = tokio::spawn(store.find_duplicate(&key));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !duplicate.is_finished(),
            "duplicate answered before the sync"
        );
        release.send(()).unwrap();
        assert_eq!(commit.await.unwrap().unwrap(), stored(Committed::Accepted));
        assert_eq!(duplicate.await.unwrap().unwrap(), Some(ulid(1)));
        store.set_before_sync(None);
        drop(release);
    }
}
