//! The embedded store: hookgate's own append-only commit log, with sled as the event-ID table
//! and the indexes.
//!
//! Layout under `storage.path`:
//! - `log/<n>.seg`: the commit point ([`segment`], [`record`]). One checksummed record per
//!   accepted delivery carries its claims, receipt, body, envelopes and delivery tasks, so claim
//!   and event are atomic by construction; attempts, redeliveries, claim expiry and retention
//!   are small records too.
//! - `index/`: a sled database holding the event-ID table and the indexes (receipts by time,
//!   tasks due per sink, dead letters, attempts), with the positions of bodies and envelopes in
//!   the log. It is applied from the log and never fsynced on the request path; everything in
//!   it can be rebuilt from the log (`hookgate storage rebuild-index`).
//!
//! Write path: callers encode their record and queue it under one lock ([`Intake`]) that hands
//! out the sequence number (the record's lsn) and decides claims against the in-flight claims
//! (queued or not yet applied) and sled. The writer thread frames a batch, appends it with one
//! write, `fdatasync`s once and publishes the `synced` watermark: commits and duplicates are
//! answered only once it covers them. The applier thread then applies the batch to sled (with
//! the applied lsn in the same atomic batch) and publishes `applied`; readers wait for
//! `applied` to reach what was synced when they asked, so they see every acknowledged write and
//! nothing unsynced. A claim leaves the in-flight map only once applied, so 20 concurrent copies
//! of an event still give exactly one `accepted`; the map is bounded by `queue_max_bytes`
//! (503 + `Retry-After` beyond it).
//!
//! Recovery (on open): every segment is read and every record's checksum verified; records
//! after sled's applied lsn are replayed. A torn last write is cut at the last whole record and
//! reported. Anything else — a damaged record with whole records of a later write after it, a
//! full segment without its seal, a missing segment, a log shorter than what the index had
//! applied — refuses to open, naming the file and offset, rather than serve a partial store.

pub mod record;
pub mod segment;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use self::record::{
    aligned, encode_frame, open_payload, seal_payload, CarryEntry, CommitEntry, Entry, EventEntry,
    FRAME_HEADER,
};
use super::{
    AttemptRecord, Backlog, Commit, Committed, Controls, DedupKey, Due, DueTask, EventBrowser,
    EventPage, EventQuery, EventSummary, IngestStore, Maintenance, NewReceipt, Pause, PauseTarget,
    Receipt, StoreError, StoreFuture, TaskQueue, TaskRecord, TaskStatus,
};
use crate::clock::Clock;
use crate::config::StorageSettings;
use crate::envelope::Envelope;
use crate::metrics::Metrics;

/// Index key prefixes (one sled tree, so every applied batch is atomic).
const P_RECEIPT: u8 = b'D';
const P_ENVELOPE: u8 = b'E';
const P_CLAIM: u8 = b'C';
const P_TASK: u8 = b'T';
const P_PENDING: u8 = b'P';
const P_DEAD: u8 = b'Z';
const P_ATTEMPT: u8 = b'A';
/// Live receipts per segment: `S ++ segment` → how many (u64).
const P_SEGMENT: u8 = b'S';
/// Latest claim expiry per segment: `K ++ segment` → Unix seconds.
const P_SEGMENT_CLAIMS: u8 = b'K';
const META_APPLIED: &[u8] = b"M/applied";
/// Where the claim sweep goes on reading the log: segment u64 ++ offset u64.
const META_SWEPT: &[u8] = b"M/swept";
/// Records the claim sweep reads per run at most (it goes on at the next run).
const SWEEP_LIMIT: usize = 200_000;
const INDEX_TREE: &str = "index";
const LOG_DIR: &str = "log";
const INDEX_DIR: &str = "index";
/// Lane heads (a lane's oldest pending task, or a task without a lane) looked at per
/// `take_due`; the tasks behind a head are skipped without counting, so one object with a long
/// backlog cannot starve the others.
const SCAN_LIMIT: usize = 10_000;
/// Pending tasks looked at per `take_due` or order check in all, heads and tasks behind them.
const PENDING_SCAN_LIMIT: usize = 1_000_000;
/// Receipts looked at per event-browser page when filters skip most of them.
const BROWSE_SCAN_LIMIT: usize = 20_000;
/// Receipts a purge may look at per receipt it may delete.
const PURGE_SCAN_FACTOR: usize = 4;
/// Durable claims kept in memory in front of sled's event-ID table (about 3 MB).
const RECENT_CLAIMS: usize = 16_384;
/// Bytes a job is charged besides its payload.
const JOB_OVERHEAD_BYTES: usize = 256;
/// Records applied per sled batch during recovery.
const REPLAY_BATCH: usize = 2_048;

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

fn prefixed(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn receipt_index(id: &[u8; 16]) -> Vec<u8> {
    prefixed(P_RECEIPT, &[id])
}

fn envelope_index(id: &[u8; 16]) -> Vec<u8> {
    prefixed(P_ENVELOPE, &[id])
}

fn claim_index(dedup_key: &[u8]) -> Vec<u8> {
    prefixed(P_CLAIM, &[dedup_key])
}

/// `T ++ envelope id ++ sink`: an envelope's tasks are one prefix scan.
fn task_index(id: &[u8; 16], sink: &str) -> Vec<u8> {
    prefixed(P_TASK, &[id, sink.as_bytes()])
}

/// `P ++ sink \0` or `Z ++ sink \0`: one sink's pending tasks or dead letters.
fn sink_prefix(prefix: u8, sink: &str) -> Vec<u8> {
    prefixed(prefix, &[sink.as_bytes(), &[0]])
}

/// `P ++ sink \0 ++ envelope id`: a sink's pending tasks in commit order.
fn sink_index(prefix: u8, sink: &str, id: &[u8; 16]) -> Vec<u8> {
    prefixed(prefix, &[sink.as_bytes(), &[0], id])
}

/// `A ++ envelope id ++ sink \0 ++ attempt number`.
fn attempt_index(id: &[u8; 16], sink: &str, number: u32) -> Vec<u8> {
    prefixed(
        P_ATTEMPT,
        &[id, sink.as_bytes(), &[0], &number.to_be_bytes()],
    )
}

fn segment_index(prefix: u8, segment: u64) -> Vec<u8> {
    prefixed(prefix, &[&segment.to_be_bytes()])
}

fn u64_value(value: Option<sled::IVec>) -> u64 {
    value
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

/// A task as the index keeps it (its envelope id and sink are in the key): status u8,
/// attempts u32, round attempts u32, created i64, round started i64, next attempt (u8 flag +
/// i64), last error (u32 length, `u32::MAX` for none, + bytes), then the lane.
fn encode_task(task: &TaskRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(48 + task.lane.len());
    v.push(match task.status {
        TaskStatus::Pending => 0,
        TaskStatus::Delivered => 1,
        TaskStatus::Dead => 2,
    });
    v.extend_from_slice(&task.attempts.to_be_bytes());
    v.extend_from_slice(&task.round_attempts.to_be_bytes());
    v.extend_from_slice(&task.created_at_ms.to_be_bytes());
    v.extend_from_slice(&task.round_started_ms.to_be_bytes());
    v.push(u8::from(task.next_attempt_ms.is_some()));
    v.extend_from_slice(&task.next_attempt_ms.unwrap_or(0).to_be_bytes());
    match &task.last_error {
        Some(e) => {
            let bytes = &e.as_bytes()[..e.len().min(u32::MAX as usize - 1)];
            v.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            v.extend_from_slice(bytes);
        }
        None => v.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
    v.extend_from_slice(&task.lane);
    v
}

/// Decodes [`encode_task`] given the key's envelope id and sink.
fn decode_task(id: &[u8; 16], sink: &str, v: &[u8]) -> Result<TaskRecord, StoreError> {
    let bad = || StoreError::Unreadable("a damaged task entry in the index".into());
    let mut at = 0usize;
    // `n == usize::MAX`: the rest.
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        let end = if n == usize::MAX { v.len() } else { at + n };
        let part = v.get(at..end).ok_or_else(bad)?;
        at = end;
        Ok(part)
    };
    let status = match take(1)?[0] {
        0 => TaskStatus::Pending,
        1 => TaskStatus::Delivered,
        2 => TaskStatus::Dead,
        _ => return Err(bad()),
    };
    let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or_default());
    let i64_of = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or_default());
    let attempts = u32_of(take(4)?);
    let round_attempts = u32_of(take(4)?);
    let created_at_ms = i64_of(take(8)?);
    let round_started_ms = i64_of(take(8)?);
    let has_next = take(1)?[0] == 1;
    let next = i64_of(take(8)?);
    let error_len = u32_of(take(4)?);
    let last_error = if error_len == u32::MAX {
        None
    } else {
        Some(String::from_utf8_lossy(take(error_len as usize)?).into_owned())
    };
    let lane = take(usize::MAX)?.to_vec();
    Ok(TaskRecord {
        sink: sink.to_owned(),
        envelope_id: id_from_key(id).ok_or_else(bad)?,
        status,
        attempts,
        round_attempts,
        created_at_ms,
        round_started_ms,
        next_attempt_ms: has_next.then_some(next),
        last_error,
        lane,
    })
}

fn pending_value(next_attempt_ms: i64, lane: &[u8]) -> Vec<u8> {
    let mut v = next_attempt_ms.to_be_bytes().to_vec();
    v.extend_from_slice(lane);
    v
}

fn io_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(io_err)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(io_err)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where bytes are in the log (28 bytes in the index): the stored payload of a record
/// (segment, offset, stored length) and the part within it once opened (decompressed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pointer {
    segment: u64,
    offset: u64,
    stored: u32,
    inner: u32,
    len: u32,
}

impl Pointer {
    const SIZE: usize = 28;

    /// `part` lies within `raw`, the opened payload of the record at `at`.
    fn within(at: Position, raw: &[u8], part: &[u8]) -> Self {
        let inner = part.as_ptr() as usize - raw.as_ptr() as usize;
        Self {
            segment: at.segment,
            offset: at.payload,
            stored: at.stored,
            inner: u32::try_from(inner).unwrap_or(u32::MAX),
            len: u32::try_from(part.len()).unwrap_or(u32::MAX),
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.stored.to_be_bytes());
        out.extend_from_slice(&self.inner.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    fn get(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..Self::SIZE)?;
        let u32_at = |at: usize| b[at..at + 4].try_into().ok().map(u32::from_be_bytes);
        Some(Self {
            segment: u64::from_be_bytes(b[..8].try_into().ok()?),
            offset: u64::from_be_bytes(b[8..16].try_into().ok()?),
            stored: u32_at(16)?,
            inner: u32_at(20)?,
            len: u32_at(24)?,
        })
    }
}

/// Where a record's stored payload is, and its length.
#[derive(Debug, Clone, Copy)]
struct Position {
    segment: u64,
    payload: u64,
    stored: u32,
}

/// A claim in the event-ID table: when it expires and which envelope made it.
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

/// One queued record.
struct Job {
    seq: u64,
    weight: usize,
    payload: Vec<u8>,
    /// Claims it makes: (dedup key, gateway id, expiry), dropped from the in-flight map and
    /// remembered as recent once applied.
    claims: Vec<(Vec<u8>, String, u64)>,
    /// For records that answer a count (redelivery, expiry, purge): sent once applied.
    reply: Option<oneshot::Sender<usize>>,
}

/// A synced batch on its way to the applier.
struct Synced {
    jobs: Vec<Job>,
    positions: Vec<Position>,
}

/// The queue's front door: sequence numbers, in-flight claims and the channel, under one lock
/// so that queue order is sequence order and a claim is always findable.
struct Intake {
    sender: Option<SyncSender<Job>>,
    /// The last sequence number handed out.
    seq: u64,
    /// Claims queued or synced but not yet applied: dedup key → (gateway id, lsn, expiry in
    /// Unix seconds).
    inflight: HashMap<Vec<u8>, (String, u64, u64)>,
    /// Claims applied lately, so a provider's prompt retry is answered without a sled read.
    recent: RecentClaims,
}

/// Durable claims most recently made, at most [`RECENT_CLAIMS`], oldest forgotten first.
#[derive(Default)]
struct RecentClaims {
    /// dedup key → (gateway id, expiry in Unix seconds, lsn)
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

    fn get(&self, key: &[u8], now: u64) -> Option<&str> {
        self.claims
            .get(key)
            .filter(|(_, expires_at, _)| *expires_at > now)
            .map(|(id, _, _)| id.as_str())
    }

    fn forget_expired(&mut self, now: u64) {
        self.claims
            .retain(|_, (_, expires_at, _)| *expires_at > now);
    }
}

/// Leased tasks by sink: envelope key → lease end (Unix ms) and the task's ordering lane.
#[derive(Default)]
struct Leases(HashMap<String, HashMap<[u8; 16], Lease>>);

struct Lease {
    until: i64,
    /// Empty: no order (or not read yet).
    lane: Vec<u8>,
}

impl Leases {
    fn of(&mut self, sink: &str, now_ms: i64) -> &mut HashMap<[u8; 16], Lease> {
        let leases = self.0.entry(sink.to_owned()).or_default();
        leases.retain(|_, lease| lease.until > now_ms);
        leases
    }

    /// The lease end of another task of `lane` leased at `sink`, if there is one: an object
    /// has one delivery in flight at a time.
    fn lane_busy(&self, sink: &str, lane: &[u8], except: &[u8; 16], now_ms: i64) -> Option<i64> {
        if lane.is_empty() {
            return None;
        }
        self.0.get(sink)?.iter().find_map(|(id, lease)| {
            (id != except && lease.until > now_ms && lease.lane == lane).then_some(lease.until)
        })
    }

    fn release(&mut self, sink: &str, id: &[u8; 16]) {
        if let Some(leases) = self.0.get_mut(sink) {
            leases.remove(id);
        }
    }
}

/// The segment being appended to.
struct Active {
    file: Arc<File>,
    number: u64,
    size: u64,
    /// Where the next frame goes.
    end: u64,
    /// The lsn of the last record in it (or before it).
    last_lsn: u64,
    /// The next segment, being prepared in the background once this one is half full.
    spare: Option<JoinHandle<std::io::Result<File>>>,
}

struct Shared {
    db: sled::Db,
    index: sled::Tree,
    root: PathBuf,
    /// Serialises rewrites of [`PAUSES_FILE`].
    pauses: Mutex<()>,
    log_dir: PathBuf,
    /// Open segments for reads by position.
    segments: RwLock<BTreeMap<u64, Arc<File>>>,
    /// The segment the writer appends to.
    active_segment: AtomicU64,
    intake: Mutex<Intake>,
    failed: OnceLock<String>,
    /// Bumped after every applied write that made tasks pending.
    wakeups: watch::Sender<u64>,
    /// The last lsn that is durable in the log.
    synced: watch::Sender<u64>,
    /// The last lsn applied to the index.
    applied: watch::Sender<u64>,
    /// Bytes held by queued and not yet applied records.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    write_timeout: Duration,
    lease_ms: i64,
    segment_bytes: u64,
    leases: Mutex<Leases>,
    /// Fault injection for tests: runs before each sync (a slow or stuck disk).
    before_sync: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Where the next retention purge looks first (empty: from the oldest receipt).
    purge_from: Mutex<Vec<u8>>,
    /// Records read back recently, opened (decompressed).
    opened: Mutex<OpenedPayloads>,
    /// Records read from the log files so far (cache misses of `opened`).
    payloads_read: AtomicU64,
    clock: Arc<dyn Clock>,
    dedup_ttl_secs: u64,
    metrics: Arc<Metrics>,
}

/// Records opened at most: the envelopes of one batch share their record, so reading them
/// costs one read and one decompression of it, not one per envelope.
const OPENED_ENTRIES: usize = 8;
/// Bytes the opened records may hold; a larger record is read but not kept.
const OPENED_BYTES: usize = 32 * 1024 * 1024;

/// Where a record's stored payload is: (segment, offset).
type PayloadAt = (u64, u64);

/// The last few records read back (their opened payloads), newest last. A record never
/// changes once it is in the index, so a cached copy is never stale.
#[derive(Default)]
struct OpenedPayloads {
    entries: std::collections::VecDeque<(PayloadAt, Arc<Vec<u8>>)>,
    bytes: usize,
}

impl OpenedPayloads {
    fn get(&mut self, key: PayloadAt) -> Option<Arc<Vec<u8>>> {
        let at = self.entries.iter().position(|(k, _)| *k == key)?;
        let entry = self.entries.remove(at)?;
        let raw = entry.1.clone();
        self.entries.push_back(entry);
        Some(raw)
    }

    fn insert(&mut self, key: PayloadAt, raw: Arc<Vec<u8>>) {
        if raw.len() > OPENED_BYTES || self.entries.iter().any(|(k, _)| *k == key) {
            return;
        }
        self.bytes += raw.len();
        self.entries.push_back((key, raw));
        while self.entries.len() > OPENED_ENTRIES || self.bytes > OPENED_BYTES {
            match self.entries.pop_front() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

/// The commit-log [`super::Store`].
pub struct LogStore {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.shared.root)
            .finish()
    }
}

/// What recovery found in the log.
struct Recovered {
    files: BTreeMap<u64, Arc<File>>,
    active: Option<Active>,
}

fn open_sled(config: &sled::Config, path: &Path) -> Result<sled::Db, StoreError> {
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
                    "cannot open the index at {}: {e} (rebuild it from the log with `hookgate storage rebuild-index`)",
                    path.display()
                )))
            }
        }
    }
}

/// Fsyncs every file of a directory tree and the directories themselves.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    segment::sync_dir(dir)
}

/// Reads the segments, verifies them and cuts a torn last write; refuses anything else.
fn recover(
    log_dir: &Path,
    applied: Option<u64>,
) -> Result<(Recovered, Vec<segment::Scan>), StoreError> {
    let refuse =
        |message: String| StoreError::Failed(format!("the store refuses to open: {message}"));
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(log_dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        if let Some(n) = segment::number_of(name) {
            numbers.push(n);
        } else if name.ends_with(".seg.new") {
            // A segment whose creation a crash interrupted: it never held a record.
            warn!(file = %entry.path().display(), "Removing an unfinished segment file.");
            std::fs::remove_file(entry.path()).map_err(io_err)?;
        }
    }
    numbers.sort_unstable();
    let mut recovered = Recovered {
        files: BTreeMap::new(),
        active: None,
    };
    let mut scans = Vec::new();
    if numbers.is_empty() {
        if let Some(applied) = applied.filter(|a| *a > 0) {
            return Err(refuse(format!(
                "{} holds no log segments, but the index had applied records up to {applied}: the log was deleted or moved",
                log_dir.display()
            )));
        }
        return Ok((recovered, scans));
    }
    for pair in numbers.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(refuse(format!(
                "segment {} is missing from {} (found {} and {})",
                segment::file_name(pair[0] + 1),
                log_dir.display(),
                segment::file_name(pair[0]),
                segment::file_name(pair[1])
            )));
        }
    }
    let mut last_lsn = None;
    let mut truncated_to = None;
    let count = numbers.len();
    for (i, number) in numbers.iter().copied().enumerate() {
        let path = segment::path(log_dir, number);
        let name = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| StoreError::Io(format!("{name}: {e}")))?;
        let scan = segment::scan(&bytes).map_err(|reason| refuse(format!("{name}: {reason}")))?;
        if scan.number != number {
            return Err(refuse(format!("{name} says it is segment {}", scan.number)));
        }
        if let Some(last) = last_lsn {
            if scan.after_lsn != last {
                return Err(refuse(format!(
                    "{name} follows record {}, but the segment before it ends at record {last}",
                    scan.after_lsn
                )));
            }
        }
        let is_last = i + 1 == count;
        match &scan.stop {
            segment::Stop::Sealed => {}
            segment::Stop::End if is_last => {}
            segment::Stop::End => {
                return Err(refuse(format!(
                    "{name} ends at offset {} without its seal, but later segments exist: records are missing",
                    scan.end
                )));
            }
            segment::Stop::Invalid {
                offset,
                reason,
                later_write_at,
            } => {
                if !is_last || later_write_at.is_some() {
                    let after = later_write_at
                        .map(|at| format!("; whole records follow at offset {at}"))
                        .unwrap_or_else(|| "; later segments follow".into());
                    return Err(refuse(format!(
                        "{name} is damaged at offset {offset} ({reason}){after}. Restore the data directory from a backup; starting anyway would drop acknowledged events"
                    )));
                }
                let nonzero_end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
                warn!(
                    segment = %name,
                    offset,
                    reason,
                    discarded_bytes = nonzero_end.saturating_sub(*offset),
                    "Cut a torn write at the end of the log (never acknowledged)."
                );
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err)?;
                use std::os::unix::fs::FileExt;
                let zeros = vec![0u8; nonzero_end.saturating_sub(*offset)];
                file.write_all_at(&zeros, *offset as u64).map_err(io_err)?;
                file.sync_data().map_err(io_err)?;
            }
        }
        if scan.truncated_to.is_some() {
            truncated_to = scan.truncated_to;
        }
        last_lsn = Some(scan.records.last().map_or(scan.after_lsn, |r| r.lsn));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        let file = Arc::new(file);
        recovered.files.insert(number, file.clone());
        if is_last && scan.stop != segment::Stop::Sealed {
            recovered.active = Some(Active {
                file,
                number,
                size: (bytes.len() as u64).max(scan.end as u64),
                end: scan.end as u64,
                last_lsn: last_lsn.unwrap_or(0),
                spare: None,
            });
        }
        scans.push(scan);
    }
    let first = numbers[0];
    if let Some(expected) = truncated_to {
        if first > expected {
            return Err(refuse(format!(
                "segment {} is missing from {}: the log should start there, but its first segment is {}",
                segment::file_name(expected),
                log_dir.display(),
                segment::file_name(first)
            )));
        }
    } else if first > 0 {
        return Err(refuse(format!(
            "segment {} is missing from {}: the log starts at {} and no record says earlier segments were retired",
            segment::file_name(0),
            log_dir.display(),
            segment::file_name(first)
        )));
    }
    let last = last_lsn.unwrap_or(0);
    if let Some(applied) = applied {
        if applied > last {
            return Err(refuse(format!(
                "the index had applied records up to {applied}, but the log in {} ends at record {last}: acknowledged records are missing from the log",
                log_dir.display()
            )));
        }
        let starts_after = scans[0].after_lsn;
        if applied < starts_after {
            return Err(refuse(format!(
                "the index has applied records up to {applied}, but the log starts after record {starts_after}; rebuild the index with `hookgate storage rebuild-index`"
            )));
        }
    }
    Ok((recovered, scans))
}

impl LogStore {
    /// Opens (or creates) the store: recovers the log, brings the index up to date, and starts
    /// the writer and applier threads.
    pub fn open(
        settings: &StorageSettings,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let root = PathBuf::from(settings.path.as_str());
        std::fs::create_dir_all(&root).map_err(|e| {
            StoreError::Io(format!(
                "cannot create store directory {}: {e}",
                root.display()
            ))
        })?;
        let log_dir = root.join(LOG_DIR);
        if root.join("db").exists() && !log_dir.exists() {
            return Err(StoreError::Failed(format!(
                "{} holds a store in the old sled-only layout, which this version does not read. \
                 Point `storage.path` at a new directory (and keep the old one for reference), or \
                 drain it first with the previous version: it holds no pending deliveries once \
                 `hookgate events --status pending` is empty",
                root.display()
            )));
        }
        let index_dir = root.join(INDEX_DIR);
        for dir in [&log_dir, &index_dir] {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        segment::sync_dir(&root).map_err(io_err)?;
        let config = sled::Config::new()
            .path(&index_dir)
            .cache_capacity(settings.cache_capacity_bytes)
            .flush_every_ms(Some(1_000));
        let db = open_sled(&config, &index_dir)?;
        // sled writes its `conf` without syncing it; the index is rebuildable, but a lost conf
        // is a warning at every start after a power cut.
        sync_tree(&index_dir).map_err(io_err)?;
        let index = db.open_tree(INDEX_TREE).map_err(io_err)?;
        let applied = index
            .get(META_APPLIED)
            .map_err(io_err)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes));
        let (recovered, scans) = recover(&log_dir, applied)?;
        let (sender, receiver) = mpsc::sync_channel(settings.queue_capacity.max(1));
        let last_lsn = scans
            .last()
            .map_or(0, |s| s.records.last().map_or(s.after_lsn, |r| r.lsn));
        let shared = Arc::new(Shared {
            db,
            index,
            root: root.clone(),
            pauses: Mutex::new(()),
            log_dir: log_dir.clone(),
            segments: RwLock::new(recovered.files),
            active_segment: AtomicU64::new(scans.last().map_or(0, |s| s.number)),
            intake: Mutex::new(Intake {
                sender: Some(sender),
                seq: last_lsn,
                inflight: HashMap::new(),
                recent: RecentClaims::default(),
            }),
            failed: OnceLock::new(),
            wakeups: watch::Sender::new(0),
            synced: watch::Sender::new(last_lsn),
            applied: watch::Sender::new(last_lsn),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: usize::try_from(settings.queue_max_bytes).unwrap_or(usize::MAX),
            write_timeout: Duration::from_millis(settings.write_timeout_ms),
            lease_ms: i64::try_from(settings.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            segment_bytes: settings.segment_bytes.max(4096),
            leases: Mutex::new(Leases::default()),
            before_sync: Mutex::new(None),
            purge_from: Mutex::new(Vec::new()),
            opened: Mutex::new(OpenedPayloads::default()),
            payloads_read: AtomicU64::new(0),
            clock,
            dedup_ttl_secs: settings.dedup_ttl_secs,
            metrics,
        });
        let replayed = shared.replay(&scans, applied.unwrap_or(0))?;
        let active = match recovered.active {
            Some(active) => active,
            None => shared.create_segment(
                scans.last().map_or(0, |s| s.number + 1),
                last_lsn,
                0,
                None,
            )?,
        };
        // Synced batches wait for the applier here. What they hold stays in the write budget
        // (`queue_max_bytes`) until applied, which is what bounds the lag, so the writer never
        // waits for the applier before it is reached.
        let (to_applier, applier_rx) = mpsc::sync_channel(settings.queue_capacity.max(1));
        let writer_shared = shared.clone();
        let max_batch = settings.max_batch.max(1);
        let writer = std::thread::Builder::new()
            .name("hookgate-log-writer".into())
            .spawn(move || run_writer(&writer_shared, &receiver, &to_applier, active, max_batch))
            .map_err(io_err)?;
        let applier_shared = shared.clone();
        let applier = std::thread::Builder::new()
            .name("hookgate-log-applier".into())
            .spawn(move || run_applier(&applier_shared, &applier_rx))
            .map_err(io_err)?;
        let pending = shared.index.scan_prefix([P_PENDING]).count();
        info!(
            path = %root.display(),
            segments = scans.len().max(1),
            last_record = last_lsn,
            replayed,
            pending,
            "Store opened."
        );
        Ok(Self {
            shared,
            threads: Mutex::new(vec![writer, applier]),
        })
    }

    /// Deletes the index and rebuilds it from the log (`hookgate storage rebuild-index`).
    /// Returns the number of records replayed.
    pub fn rebuild_index(settings: &StorageSettings) -> Result<u64, StoreError> {
        let root = PathBuf::from(settings.path.as_str());
        let log_dir = root.join(LOG_DIR);
        if !log_dir.is_dir() {
            return Err(StoreError::Io(format!(
                "{} holds no log to rebuild from",
                log_dir.display()
            )));
        }
        let index_dir = root.join(INDEX_DIR);
        if index_dir.exists() {
            std::fs::remove_dir_all(&index_dir).map_err(io_err)?;
        }
        let store = Self::open(
            settings,
            Arc::new(crate::clock::SystemClock),
            Arc::new(Metrics::new()),
        )?;
        let last = *store.shared.applied.borrow();
        store.close();
        Ok(last)
    }

    /// Fault injection for tests: `hook` runs on the writer thread before every sync, so a
    /// test can hold the "disk" and check that nothing is acknowledged meanwhile.
    pub fn set_before_sync(&self, hook: Option<Arc<dyn Fn() + Send + Sync>>) {
        *lock(&self.shared.before_sync) = hook;
    }

    fn submit(&self, entry: &Entry<'_>) -> StoreFuture<()> {
        self.shared.submit(entry)
    }

    fn submit_counted(&self, entry: &Entry<'_>) -> StoreFuture<usize> {
        self.shared.submit_counted(entry)
    }

    /// Runs a read on the blocking pool once the index has applied everything that was durable
    /// when it was asked for.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let shared = self.shared.clone();
        async move {
            let target = *shared.synced.borrow();
            shared.clone().caught_up(target).await?;
            let reader = shared.clone();
            tokio::task::spawn_blocking(move || read(&reader))
                .await
                .map_err(io_err)?
        }
        .boxed()
    }
}

impl Shared {
    /// Queues a record under the intake lock; the future resolves once it is durable.
    fn submit(self: &Arc<Self>, entry: &Entry<'_>) -> StoreFuture<()> {
        let payload = seal_payload(entry.encode());
        let weight = payload.len() + JOB_OVERHEAD_BYTES;
        let queued = {
            let mut intake = lock(&self.intake);
            self.enqueue(&mut intake, payload, weight, Vec::new(), None)
        };
        match queued {
            Ok(seq) => self.clone().durable(seq).boxed(),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    /// Queues a record that answers a count once applied.
    fn submit_counted(self: &Arc<Self>, entry: &Entry<'_>) -> StoreFuture<usize> {
        let payload = seal_payload(entry.encode());
        let weight = payload.len() + JOB_OVERHEAD_BYTES;
        let (reply, answer) = oneshot::channel();
        let queued = {
            let mut intake = lock(&self.intake);
            self.enqueue(&mut intake, payload, weight, Vec::new(), Some(reply))
        };
        let shared = self.clone();
        async move {
            let seq = queued?;
            shared.clone().durable(seq).await?;
            let millis = u64::try_from(shared.write_timeout.as_millis()).unwrap_or(u64::MAX);
            match tokio::time::timeout(shared.write_timeout, answer).await {
                Ok(Ok(count)) => Ok(count),
                Ok(Err(_)) => Err(shared.check_failed().err().unwrap_or(StoreError::Closed)),
                Err(_) => Err(StoreError::Timeout(millis)),
            }
        }
        .boxed()
    }

    fn now_secs(&self) -> u64 {
        u64::try_from(self.clock.unix_secs()).unwrap_or(0)
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, e: &StoreError) {
        error!(error = %e, "Storage write failed; refusing writes until restarted.");
        let _ = self.failed.set(e.to_string());
        // Wake the waiters: they now see the failure.
        self.synced.send_modify(|_| {});
        self.applied.send_modify(|_| {});
    }

    /// Hands out the next lsn and queues the record; the caller holds the intake lock.
    fn enqueue(
        &self,
        intake: &mut Intake,
        payload: Vec<u8>,
        weight: usize,
        claims: Vec<(Vec<u8>, String, u64)>,
        reply: Option<oneshot::Sender<usize>>,
    ) -> Result<u64, StoreError> {
        self.check_failed()?;
        let sender = intake.sender.as_ref().ok_or(StoreError::Closed)?;
        let held = self.queued_bytes.load(Ordering::SeqCst);
        // One record larger than the whole budget still goes alone, or it could never be stored.
        if held > 0 && held.saturating_add(weight) > self.max_queued_bytes {
            return Err(StoreError::QueueFull);
        }
        let seq = intake.seq + 1;
        let job = Job {
            seq,
            weight,
            payload,
            claims,
            reply,
        };
        sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::QueueFull,
            TrySendError::Disconnected(_) => StoreError::Closed,
        })?;
        intake.seq = seq;
        self.queued_bytes.fetch_add(weight, Ordering::SeqCst);
        Ok(seq)
    }

    async fn wait_for(
        self: Arc<Self>,
        watermark: &watch::Sender<u64>,
        seq: u64,
    ) -> Result<(), StoreError> {
        if *watermark.borrow() >= seq {
            return Ok(());
        }
        let mut mark = watermark.subscribe();
        let wait = async {
            loop {
                if *mark.borrow_and_update() >= seq {
                    return Ok(());
                }
                self.check_failed()?;
                if mark.changed().await.is_err() {
                    return Err(StoreError::Closed);
                }
            }
        };
        let millis = u64::try_from(self.write_timeout.as_millis()).unwrap_or(u64::MAX);
        tokio::time::timeout(self.write_timeout, wait)
            .await
            .unwrap_or(Err(StoreError::Timeout(millis)))
    }

    /// Waits, within the write timeout, until record `seq` is durable in the log.
    async fn durable(self: Arc<Self>, seq: u64) -> Result<(), StoreError> {
        let this = self.clone();
        this.wait_for(&self.synced, seq).await
    }

    /// Waits, within the write timeout, until record `seq` is applied to the index.
    async fn caught_up(self: Arc<Self>, seq: u64) -> Result<(), StoreError> {
        let this = self.clone();
        this.wait_for(&self.applied, seq).await
    }

    /// A live claim for `key` in memory: in flight (with its lsn), or recently applied (lsn 0:
    /// nothing to wait for).
    fn claim_in_memory(intake: &Intake, key: &[u8], now: u64) -> Option<(String, u64)> {
        // An expired claim is no claim, even while it waits for the index.
        if let Some((id, seq, _)) = intake
            .inflight
            .get(key)
            .filter(|(_, _, expires_at)| *expires_at > now)
        {
            return Some((id.clone(), *seq));
        }
        intake.recent.get(key, now).map(|id| (id.to_owned(), 0))
    }

    /// A live claim for `key`: in memory, or in the index (applied, so durable).
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
            .index
            .get(claim_index(key))
            .map_err(io_err)?
            .and_then(|v| Claim::decode(&v))
            .filter(|c| c.expires_at > now);
        Ok(claim.map(|c| (c.id, 0)))
    }

    /// Reads bytes of the log by position.
    fn read_log(&self, at: Pointer) -> Result<Vec<u8>, String> {
        let raw = self.opened_payload(at)?;
        let (start, end) = (at.inner as usize, at.inner as usize + at.len as usize);
        raw.get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("a log position past its record in segment {}", at.segment))
    }

    /// The opened payload of the record `at` points into: from the cache of recently read
    /// records, or read (and decompressed) now.
    fn opened_payload(&self, at: Pointer) -> Result<Arc<Vec<u8>>, String> {
        let key = (at.segment, at.offset);
        if let Some(raw) = lock(&self.opened).get(key) {
            return Ok(raw);
        }
        let file = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&at.segment)
            .cloned()
            .ok_or_else(|| format!("log segment {} is missing", at.segment))?;
        let stored = segment::read_at(&file, at.offset, at.stored as usize)
            .map_err(|e| format!("cannot read log segment {}: {e}", at.segment))?;
        let decompressed = match open_payload(&stored).map_err(|e| e.to_string())? {
            std::borrow::Cow::Owned(raw) => Some(raw),
            std::borrow::Cow::Borrowed(_) => None,
        };
        let raw = Arc::new(decompressed.unwrap_or(stored));
        self.payloads_read.fetch_add(1, Ordering::Relaxed);
        lock(&self.opened).insert(key, raw.clone());
        Ok(raw)
    }

    fn task_record(&self, id: &[u8; 16], sink: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.index
            .get(task_index(id, sink))
            .map_err(io_err)?
            .map(|v| decode_task(id, sink, &v))
            .transpose()
    }

    /// Records the lane of a task leased by `take`; `false` (and the lane is not recorded) when
    /// another task of the lane is leased.
    fn lease_lane(&self, sink: &str, id: &[u8; 16], lane: &[u8], now_ms: i64) -> bool {
        let mut leases = lock(&self.leases);
        if leases.lane_busy(sink, lane, id, now_ms).is_some() {
            return false;
        }
        if let Some(lease) = leases.of(sink, now_ms).get_mut(id) {
            lease.lane = lane.to_vec();
        }
        true
    }

    /// Whether an envelope older than `id` with the same (non-empty) lane is pending at `sink`.
    /// Past [`PENDING_SCAN_LIMIT`] older tasks it answers yes: holding a task back a little
    /// longer is safe, delivering it out of order is not.
    fn older_in_lane(&self, sink: &str, id: &[u8; 16], lane: &[u8]) -> Result<bool, StoreError> {
        if lane.is_empty() {
            return Ok(false);
        }
        let older = sink_prefix(P_PENDING, sink)..sink_index(P_PENDING, sink, id);
        for (n, item) in self.index.range(older).enumerate() {
            if n >= PENDING_SCAN_LIMIT {
                return Ok(true);
            }
            let (_, value) = item.map_err(io_err)?;
            if value.get(8..) == Some(lane) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn tasks_of(&self, id: &[u8; 16]) -> Result<Vec<TaskRecord>, StoreError> {
        let prefix = prefixed(P_TASK, &[id]);
        self.index
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, value) = item.map_err(io_err)?;
                let sink = std::str::from_utf8(&key[prefix.len()..]).map_err(io_err)?;
                decode_task(id, sink, &value)
            })
            .collect()
    }

    /// A stored envelope, read back within [`crate::json::MAX_READ_DEPTH`]; one that cannot be
    /// decoded is [`StoreError::Unreadable`].
    fn envelope_of(&self, id: &[u8; 16]) -> Result<Option<Envelope>, StoreError> {
        let Some(v) = self.index.get(envelope_index(id)).map_err(io_err)? else {
            return Ok(None);
        };
        let pointer = Pointer::get(&v).ok_or_else(|| io_err("a damaged index entry"))?;
        let bytes = self.read_log(pointer).map_err(StoreError::Io)?;
        crate::json::read(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Unreadable(format!("the stored envelope: {e}")))
    }

    fn due_task(&self, id: &[u8; 16], task: TaskRecord) -> DueTask {
        let envelope = match self.envelope_of(id) {
            Ok(Some(envelope)) => Ok(envelope),
            Ok(None) => Err("the stored envelope is missing".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        DueTask { task, envelope }
    }

    /// A receipt's pointers: (receipt JSON, body).
    fn receipt_pointers(&self, id: &[u8; 16]) -> Result<Option<(Pointer, Pointer)>, StoreError> {
        let Some(v) = self.index.get(receipt_index(id)).map_err(io_err)? else {
            return Ok(None);
        };
        let receipt = Pointer::get(&v).ok_or_else(|| io_err("a damaged index entry"))?;
        let body =
            Pointer::get(&v[Pointer::SIZE..]).ok_or_else(|| io_err("a damaged index entry"))?;
        Ok(Some((receipt, body)))
    }

    fn receipt_at(&self, at: Pointer) -> Result<Receipt, StoreError> {
        decode(&self.read_log(at).map_err(StoreError::Io)?)
    }

    fn summary(&self, receipt: Receipt) -> Result<EventSummary, StoreError> {
        let mut tasks = Vec::new();
        for id in receipt.envelope_ids.iter().filter_map(|id| id_key(id)) {
            tasks.extend(self.tasks_of(&id)?);
        }
        Ok(EventSummary { receipt, tasks })
    }

    fn create_segment(
        &self,
        number: u64,
        after_lsn: u64,
        least: u64,
        spare: Option<JoinHandle<std::io::Result<File>>>,
    ) -> Result<Active, StoreError> {
        let needed = least + segment::HEADER as u64 + 64;
        let size = self.segment_bytes.max(needed);
        let prepared = match spare.map(JoinHandle::join) {
            Some(Ok(Ok(file))) if self.segment_bytes >= needed => Some(file),
            Some(Ok(Err(e))) => {
                warn!(error = %e, "Could not prepare the next log segment; creating it now.");
                None
            }
            _ => None,
        };
        let file = match prepared {
            Some(file) => segment::install(&self.log_dir, file, number, after_lsn),
            None => segment::create(&self.log_dir, number, after_lsn, size),
        }
        .map_err(|e| StoreError::Io(format!("cannot create log segment {number}: {e}")))?;
        let file = Arc::new(file);
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(number, file.clone());
        self.active_segment.store(number, Ordering::SeqCst);
        Ok(Active {
            file,
            number,
            size,
            end: segment::HEADER as u64,
            last_lsn: after_lsn,
            spare: None,
        })
    }

    /// Starts preparing the segment after the active one once it is half full.
    fn prepare_spare(&self, active: &mut Active) {
        if active.spare.is_some() || active.end < active.size / 2 {
            return;
        }
        let dir = self.log_dir.clone();
        let (number, size) = (active.number + 1, self.segment_bytes);
        active.spare = std::thread::Builder::new()
            .name("hookgate-log-spare".into())
            .spawn(move || segment::prepare(&dir, number, size))
            .ok();
    }

    /// Replays the records after `applied` into the index (recovery). Returns how many.
    fn replay(&self, scans: &[segment::Scan], applied: u64) -> Result<u64, StoreError> {
        let mut replayed = 0;
        for scan in scans {
            if scan.records.last().is_none_or(|r| r.lsn <= applied) {
                continue;
            }
            let path = segment::path(&self.log_dir, scan.number);
            let bytes = std::fs::read(&path).map_err(io_err)?;
            let records: Vec<_> = scan.records.iter().filter(|r| r.lsn > applied).collect();
            for chunk in records.chunks(REPLAY_BATCH) {
                let items: Vec<Applying<'_>> = chunk
                    .iter()
                    .map(|r| Applying {
                        lsn: r.lsn,
                        at: Position {
                            segment: scan.number,
                            payload: r.payload as u64,
                            stored: r.len as u32,
                        },
                        payload: &bytes[r.payload..r.payload + r.len],
                    })
                    .collect();
                self.apply(&items)?;
                replayed += items.len() as u64;
            }
        }
        if replayed > 0 {
            self.db.flush().map_err(io_err)?;
        }
        Ok(replayed)
    }
}

/// A record being applied to the index.
struct Applying<'a> {
    lsn: u64,
    at: Position,
    payload: &'a [u8],
}

/// What applying a batch did.
#[derive(Default)]
struct Applied {
    /// Counts answered by counting records, in order.
    counts: Vec<usize>,
    /// Whether tasks became pending.
    woke: bool,
}

/// The index writes of a batch: one sled batch, applied atomically with the applied lsn.
#[derive(Default)]
struct IndexBatch {
    batch: sled::Batch,
    /// Latest claim expiry per segment in this batch.
    segment_claims: HashMap<u64, u64>,
    /// Change in live receipts per segment in this batch.
    live: HashMap<u64, i64>,
}

impl IndexBatch {
    fn put(&mut self, key: Vec<u8>, value: impl Into<sled::IVec>) {
        self.batch.insert(key, value);
    }

    fn del(&mut self, key: Vec<u8>) {
        self.batch.remove(key);
    }

    fn task(&mut self, id: &[u8; 16], task: &TaskRecord) -> Result<(), StoreError> {
        self.put(task_index(id, &task.sink), encode_task(task));
        let pending = sink_index(P_PENDING, &task.sink, id);
        let dead = sink_index(P_DEAD, &task.sink, id);
        match task.status {
            TaskStatus::Pending => {
                self.put(
                    pending,
                    pending_value(task.next_attempt_ms.unwrap_or(0), &task.lane),
                );
                self.del(dead);
            }
            TaskStatus::Dead => {
                self.del(pending);
                self.put(dead, Vec::new());
            }
            TaskStatus::Delivered => {
                self.del(pending);
                self.del(dead);
            }
        }
        Ok(())
    }
}

impl Shared {
    /// Applies records to the index in order: runs of plain records share one atomic sled
    /// batch; records that read the index (redelivery, expiry, purge) get their own.
    fn apply(&self, items: &[Applying<'_>]) -> Result<Applied, StoreError> {
        let mut applied = Applied::default();
        let mut batch = IndexBatch::default();
        let mut last = None;
        for item in items {
            let raw = open_payload(item.payload).map_err(io_err)?;
            let entry = Entry::decode(&raw).map_err(io_err)?;
            match entry {
                Entry::Commit(commit) => {
                    applied.woke |= commit.events.iter().any(|e| !e.sinks.is_empty());
                    Self::apply_commit(&mut batch, item.at, &raw, &commit)?;
                }
                Entry::Unprocessable { key, receipt, body } => {
                    let mut value = Vec::with_capacity(2 * Pointer::SIZE);
                    Pointer::within(item.at, &raw, receipt).put(&mut value);
                    Pointer::within(item.at, &raw, body).put(&mut value);
                    batch.put(receipt_index(&key), value);
                    *batch.live.entry(item.at.segment).or_insert(0) += 1;
                }
                Entry::Attempts(done) => {
                    for (task, attempt) in done {
                        let task: TaskRecord = decode(task)?;
                        let number = decode::<AttemptRecord>(attempt)?.number;
                        let id = key_of(&task.envelope_id)?;
                        batch.put(attempt_index(&id, &task.sink, number), attempt.to_vec());
                        batch.task(&id, &task)?;
                    }
                }
                Entry::Probe | Entry::Seal => {}
                Entry::Carry(carry) => self.apply_carry(&mut batch, item.at, &raw, &carry)?,
                Entry::Truncated { first_segment } => {
                    for prefix in [P_SEGMENT_CLAIMS, P_SEGMENT] {
                        let retired = vec![prefix]..segment_index(prefix, first_segment);
                        for item in self.index.range(retired) {
                            batch.del(item.map_err(io_err)?.0.to_vec());
                        }
                    }
                }
                counted @ (Entry::Redeliver { .. } | Entry::Expire { .. } | Entry::Purge(_)) => {
                    // Earlier records first: this one reads what they wrote.
                    if let Some(lsn) = last.take() {
                        self.commit_batch(std::mem::take(&mut batch), lsn)?;
                    }
                    let mut own = IndexBatch::default();
                    let count = self.apply_counted(&mut own, &counted, item.lsn)?;
                    applied.woke |= matches!(counted, Entry::Redeliver { .. }) && count > 0;
                    self.commit_batch(own, item.lsn)?;
                    applied.counts.push(count);
                    continue;
                }
            }
            last = Some(item.lsn);
        }
        if let Some(lsn) = last {
            self.commit_batch(batch, lsn)?;
        }
        Ok(applied)
    }

    fn apply_commit(
        batch: &mut IndexBatch,
        at: Position,
        payload: &[u8],
        commit: &CommitEntry<'_>,
    ) -> Result<(), StoreError> {
        for (key, id) in &commit.claims {
            let claim = Claim {
                expires_at: commit.expires_at,
                id: (*id).to_owned(),
            };
            batch.put(claim_index(key), claim.encode());
        }
        if !commit.claims.is_empty() {
            let latest = batch.segment_claims.entry(at.segment).or_insert(0);
            *latest = (*latest).max(commit.expires_at);
        }
        for event in &commit.events {
            let mut pointer = Vec::with_capacity(Pointer::SIZE);
            Pointer::within(at, payload, event.envelope).put(&mut pointer);
            batch.put(envelope_index(&event.key), pointer);
            let envelope_id = id_from_key(&event.key).unwrap_or_default();
            for sink in &event.sinks {
                let task = TaskRecord {
                    sink: (*sink).to_owned(),
                    envelope_id: envelope_id.clone(),
                    status: TaskStatus::Pending,
                    attempts: 0,
                    round_attempts: 0,
                    created_at_ms: commit.created_at_ms,
                    round_started_ms: commit.created_at_ms,
                    next_attempt_ms: Some(event.not_before_ms),
                    last_error: None,
                    lane: event.lane.to_vec(),
                };
                batch.task(&event.key, &task)?;
            }
        }
        let mut value = Vec::with_capacity(2 * Pointer::SIZE);
        Pointer::within(at, payload, commit.receipt).put(&mut value);
        Pointer::within(at, payload, commit.body).put(&mut value);
        batch.put(receipt_index(&commit.receipt_key), value);
        *batch.live.entry(at.segment).or_insert(0) += 1;
        Ok(())
    }

    /// A receipt copied forward: its positions move to the new record. When the index does not
    /// have it (a rebuild from a log whose original record was retired), it is recreated with
    /// the carried task states.
    fn apply_carry(
        &self,
        batch: &mut IndexBatch,
        at: Position,
        raw: &[u8],
        carry: &CarryEntry<'_>,
    ) -> Result<(), StoreError> {
        let known = self.receipt_pointers(&carry.receipt_key)?;
        if let Some((old, _)) = known {
            *batch.live.entry(old.segment).or_insert(0) -= 1;
        }
        let mut value = Vec::with_capacity(2 * Pointer::SIZE);
        Pointer::within(at, raw, carry.receipt).put(&mut value);
        Pointer::within(at, raw, carry.body).put(&mut value);
        batch.put(receipt_index(&carry.receipt_key), value);
        *batch.live.entry(at.segment).or_insert(0) += 1;
        for (key, envelope, tasks) in &carry.envelopes {
            let mut pointer = Vec::with_capacity(Pointer::SIZE);
            Pointer::within(at, raw, envelope).put(&mut pointer);
            batch.put(envelope_index(key), pointer);
            if known.is_none() {
                for (sink, state) in tasks {
                    batch.task(key, &decode_task(key, sink, state)?)?;
                }
            }
        }
        Ok(())
    }

    /// Copies forward the receipts still live in segment `number` (at most `limit`), if all of
    /// them were received before `cutoff_ms`: what keeps an old segment alive is then only
    /// deliveries still pending. Returns the carry records to write (none: not yet).
    fn carry_out(
        &self,
        number: u64,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut records = Vec::new();
        for item in self
            .index
            .scan_prefix([P_RECEIPT])
            .take(limit.saturating_mul(PURGE_SCAN_FACTOR))
        {
            let (key, value) = item.map_err(io_err)?;
            let (Ok(id), Some(receipt_at), Some(body_at)) = (
                <[u8; 16]>::try_from(&key[1..]),
                Pointer::get(&value),
                value.get(Pointer::SIZE..).and_then(Pointer::get),
            ) else {
                continue;
            };
            if receipt_at.segment != number {
                continue;
            }
            if time_key(cutoff_ms) <= id {
                return Ok(Vec::new()); // a receipt of it is still within retention
            }
            let receipt_json = self.read_log(receipt_at).map_err(StoreError::Io)?;
            let body = self.read_log(body_at).map_err(StoreError::Io)?;
            let receipt: Receipt = decode(&receipt_json)?;
            let mut envelopes = Vec::new();
            for envelope_id in receipt.envelope_ids.iter().filter_map(|e| id_key(e)) {
                let Some(v) = self
                    .index
                    .get(envelope_index(&envelope_id))
                    .map_err(io_err)?
                else {
                    continue;
                };
                let at = Pointer::get(&v).ok_or_else(|| io_err("a damaged index entry"))?;
                let json = self.read_log(at).map_err(StoreError::Io)?;
                let tasks: Vec<(String, Vec<u8>)> = self
                    .tasks_of(&envelope_id)?
                    .iter()
                    .map(|t| (t.sink.clone(), encode_task(t)))
                    .collect();
                envelopes.push((envelope_id, json, tasks));
            }
            let entry = Entry::Carry(CarryEntry {
                receipt_key: id,
                receipt: &receipt_json,
                body: &body,
                envelopes: envelopes
                    .iter()
                    .map(|(k, json, tasks)| {
                        let tasks = tasks
                            .iter()
                            .map(|(sink, state)| (sink.as_str(), state.as_slice()))
                            .collect();
                        (*k, json.as_slice(), tasks)
                    })
                    .collect(),
            });
            records.push(entry.encode());
            if records.len() >= limit {
                break;
            }
        }
        Ok(records)
    }

    /// Writes a batch with the applied lsn, atomically.
    fn commit_batch(&self, mut batch: IndexBatch, lsn: u64) -> Result<(), StoreError> {
        for (segment, latest) in std::mem::take(&mut batch.segment_claims) {
            let key = segment_index(P_SEGMENT_CLAIMS, segment);
            let known = u64_value(self.index.get(&key).map_err(io_err)?);
            batch.put(key, latest.max(known).to_be_bytes().to_vec());
        }
        for (segment, delta) in std::mem::take(&mut batch.live) {
            let key = segment_index(P_SEGMENT, segment);
            let known = u64_value(self.index.get(&key).map_err(io_err)?);
            let live = known.saturating_add_signed(delta);
            batch.put(key, live.to_be_bytes().to_vec());
        }
        batch.put(META_APPLIED.to_vec(), lsn.to_be_bytes().to_vec());
        self.index.apply_batch(batch.batch).map_err(io_err)
    }

    fn apply_counted(
        &self,
        batch: &mut IndexBatch,
        entry: &Entry<'_>,
        lsn: u64,
    ) -> Result<usize, StoreError> {
        match entry {
            Entry::Redeliver {
                envelope,
                sink,
                now_ms,
            } => {
                let mut count = 0;
                for mut task in self.tasks_of(envelope)? {
                    if sink.is_some_and(|s| s != task.sink) {
                        continue;
                    }
                    task.status = TaskStatus::Pending;
                    task.round_attempts = 0;
                    task.round_started_ms = *now_ms;
                    task.next_attempt_ms = Some(*now_ms);
                    batch.task(envelope, &task)?;
                    count += 1;
                }
                Ok(count)
            }
            Entry::Expire { now_secs } => self.sweep_claims(batch, *now_secs, lsn),
            Entry::Purge(keys) => {
                let mut purged = 0;
                for key in keys {
                    if self.purge_receipt(batch, key)? {
                        purged += 1;
                    }
                }
                Ok(purged)
            }
            _ => Ok(0),
        }
    }

    /// Forgets expired claims by reading the log's commit records in order from where the last
    /// sweep stopped (claims expire in commit order, so the event-ID table needs no expiry
    /// index): each claim whose table entry still has that record's expiry is deleted. Stops
    /// at the first record whose claims are live, at `before` (the sweep's own record), or
    /// after [`SWEEP_LIMIT`] records. Deterministic, so replay repeats it exactly.
    fn sweep_claims(
        &self,
        batch: &mut IndexBatch,
        now_secs: u64,
        before: u64,
    ) -> Result<usize, StoreError> {
        let first = {
            let files = self.segments.read().unwrap_or_else(|e| e.into_inner());
            files.keys().next().copied().unwrap_or(0)
        };
        let (mut number, mut offset) = match self.index.get(META_SWEPT).map_err(io_err)? {
            Some(v) if v.len() == 16 => (
                u64::from_be_bytes(v[..8].try_into().expect("8")),
                u64::from_be_bytes(v[8..].try_into().expect("8")),
            ),
            _ => (first, segment::HEADER as u64),
        };
        if number < first {
            (number, offset) = (first, segment::HEADER as u64);
        }
        let mut expired = 0;
        let mut reader = segment::Reader::default();
        for _ in 0..SWEEP_LIMIT {
            let Some(file) = self.segment_file(number) else {
                break;
            };
            let Some((lsn, payload, next)) = reader.frame(&file, number, offset).map_err(io_err)?
            else {
                break; // the end of what is written
            };
            if lsn >= before {
                break;
            }
            let raw = open_payload(&payload).map_err(io_err)?;
            match Entry::decode(&raw).map_err(io_err)? {
                Entry::Seal => {
                    (number, offset) = (number + 1, segment::HEADER as u64);
                    continue;
                }
                Entry::Commit(commit) if !commit.claims.is_empty() => {
                    if commit.expires_at > now_secs {
                        break;
                    }
                    for (key, _) in &commit.claims {
                        let current = self.index.get(claim_index(key)).map_err(io_err)?;
                        // A newer claim for the same ID (claimed again after expiry) stays.
                        if current
                            .and_then(|c| Claim::decode(&c))
                            .is_some_and(|c| c.expires_at == commit.expires_at)
                        {
                            batch.del(claim_index(key));
                            expired += 1;
                        }
                    }
                }
                _ => {}
            }
            offset = next;
        }
        let mut cursor = number.to_be_bytes().to_vec();
        cursor.extend_from_slice(&offset.to_be_bytes());
        batch.put(META_SWEPT.to_vec(), cursor);
        Ok(expired)
    }

    fn segment_file(&self, number: u64) -> Option<Arc<File>> {
        let files = self.segments.read().unwrap_or_else(|e| e.into_inner());
        files.get(&number).cloned()
    }

    /// The segment the claim sweep has reached: segments before it hold no live claim.
    fn swept_segment(&self) -> Result<u64, StoreError> {
        Ok(match self.index.get(META_SWEPT).map_err(io_err)? {
            Some(v) if v.len() == 16 => u64::from_be_bytes(v[..8].try_into().expect("8")),
            _ => 0,
        })
    }

    /// Deletes a receipt from the index if every task of it is finished.
    fn purge_receipt(&self, batch: &mut IndexBatch, key: &[u8; 16]) -> Result<bool, StoreError> {
        let Some((at, _)) = self.receipt_pointers(key)? else {
            return Ok(false);
        };
        let receipt = match self.receipt_at(at) {
            Ok(receipt) => receipt,
            Err(e) => {
                warn!(error = %e, "A receipt to purge cannot be read; deleting its index entry.");
                batch.del(receipt_index(key));
                *batch.live.entry(at.segment).or_insert(0) -= 1;
                return Ok(true);
            }
        };
        let summary = self.summary(receipt)?;
        if summary
            .tasks
            .iter()
            .any(|t| t.status == TaskStatus::Pending)
        {
            return Ok(false);
        }
        for id in summary
            .receipt
            .envelope_ids
            .iter()
            .filter_map(|id| id_key(id))
        {
            batch.del(envelope_index(&id));
            for prefix in [P_TASK, P_ATTEMPT] {
                for entry in self.index.scan_prefix(prefixed(prefix, &[&id])).keys() {
                    batch.del(entry.map_err(io_err)?.to_vec());
                }
            }
        }
        for task in &summary.tasks {
            if let Some(id) = id_key(&task.envelope_id) {
                batch.del(sink_index(P_DEAD, &task.sink, &id));
            }
        }
        batch.del(receipt_index(key));
        *batch.live.entry(at.segment).or_insert(0) -= 1;
        Ok(true)
    }

    /// After a batch is applied (or failed): its claims leave the in-flight map and join the
    /// recent ones (or are moot), and its bytes leave the budget.
    fn settle(&self, jobs: &mut [Job], applied: bool) {
        let mut intake = lock(&self.intake);
        for job in jobs.iter_mut() {
            for (key, id, expires_at) in job.claims.drain(..) {
                if intake
                    .inflight
                    .get(&key)
                    .is_some_and(|(_, seq, _)| *seq == job.seq)
                {
                    intake.inflight.remove(&key);
                }
                if applied {
                    intake.recent.insert(key, id, expires_at, job.seq);
                }
            }
        }
        drop(intake);
        let weight: usize = jobs.iter().map(|j| j.weight).sum();
        self.queued_bytes.fetch_sub(weight, Ordering::SeqCst);
    }

    /// Appends a batch to the log and syncs it; returns where each record's payload is.
    fn append(&self, active: &mut Active, jobs: &[Job]) -> Result<Vec<Position>, StoreError> {
        use std::os::unix::fs::FileExt;
        let first = jobs.first().map_or(0, |j| j.seq);
        let mut buf = Vec::with_capacity(
            jobs.iter()
                .map(|j| aligned(FRAME_HEADER + j.payload.len()))
                .sum(),
        );
        let seal = Entry::Seal.encode();
        let seal_len = aligned(FRAME_HEADER + seal.len()) as u64;
        let mut positions = Vec::with_capacity(jobs.len());
        for job in jobs {
            let len = aligned(FRAME_HEADER + job.payload.len()) as u64;
            if active.end + buf.len() as u64 + len + seal_len > active.size {
                // Full: write what fits, seal the segment, sync it, and go on in a new one.
                encode_frame(&mut buf, active.last_lsn, first, &seal);
                active.file.write_all_at(&buf, active.end).map_err(io_err)?;
                active.file.sync_data().map_err(io_err)?;
                buf.clear();
                *active = self.create_segment(
                    active.number + 1,
                    active.last_lsn,
                    len + seal_len,
                    active.spare.take(),
                )?;
            }
            positions.push(Position {
                segment: active.number,
                payload: active.end + buf.len() as u64 + FRAME_HEADER as u64,
                stored: u32::try_from(job.payload.len()).unwrap_or(u32::MAX),
            });
            encode_frame(&mut buf, job.seq, first, &job.payload);
            active.last_lsn = job.seq;
        }
        active.file.write_all_at(&buf, active.end).map_err(io_err)?;
        let hook = lock(&self.before_sync).clone();
        if let Some(hook) = hook {
            hook();
        }
        let started = std::time::Instant::now();
        active.file.sync_data().map_err(io_err)?;
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        active.end += buf.len() as u64;
        self.prepare_spare(active);
        Ok(positions)
    }

    /// Retires the oldest segments that hold nothing needed any more: every receipt in them
    /// purged and every claim they made expired. Returns how many files were deleted.
    fn retire_segments(&self) -> Result<(Vec<u64>, Option<u64>), StoreError> {
        let now = self.now_secs();
        let active = self.active_segment.load(Ordering::SeqCst);
        let numbers: Vec<u64> = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .filter(|n| *n < active)
            .collect();
        let swept = self.swept_segment()?;
        let mut retire = Vec::new();
        let mut held_by_receipts = None;
        for number in numbers.into_iter().filter(|n| *n < swept) {
            let get = |prefix| {
                let value = self.index.get(segment_index(prefix, number));
                value.map(u64_value).map_err(io_err)
            };
            let live = get(P_SEGMENT)?;
            let claims_until = get(P_SEGMENT_CLAIMS)?;
            if claims_until > now {
                break;
            }
            if live > 0 {
                held_by_receipts = Some(number);
                break;
            }
            retire.push(number);
        }
        Ok((retire, held_by_receipts))
    }
}

fn run_writer(
    shared: &Shared,
    receiver: &Receiver<Job>,
    to_applier: &SyncSender<Synced>,
    mut active: Active,
    max_batch: usize,
) {
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if shared.failed.get().is_some() {
            shared.settle(&mut jobs, false);
            shared.synced.send_modify(|_| {});
            continue;
        }
        let last = jobs.last().map_or(0, |j| j.seq);
        match shared.append(&mut active, &jobs) {
            Ok(positions) => {
                shared.metrics.commit_batch.observe(jobs.len() as f64);
                shared.synced.send_replace(last);
                if to_applier.send(Synced { jobs, positions }).is_err() {
                    break;
                }
            }
            Err(e) => {
                shared.fail(&e);
                shared.settle(&mut jobs, false);
            }
        }
    }
    // A segment still being prepared is finished first, so no stray write outlives the store.
    if let Some(spare) = active.spare.take() {
        let _ = spare.join();
    }
    debug!("Log writer stopped.");
}

fn run_applier(shared: &Shared, receiver: &Receiver<Synced>) {
    while let Ok(first) = receiver.recv() {
        let mut batches = vec![first];
        while let Ok(more) = receiver.try_recv() {
            batches.push(more);
        }
        let mut jobs: Vec<Job> = Vec::new();
        let mut positions = Vec::new();
        for b in batches {
            jobs.extend(b.jobs);
            positions.extend(b.positions);
        }
        if shared.failed.get().is_some() {
            shared.settle(&mut jobs, false);
            continue;
        }
        let items: Vec<Applying<'_>> = jobs
            .iter()
            .zip(&positions)
            .map(|(job, at)| Applying {
                lsn: job.seq,
                at: *at,
                payload: &job.payload,
            })
            .collect();
        let last = items.last().map_or(0, |i| i.lsn);
        match shared.apply(&items) {
            Ok(applied) => {
                drop(items);
                // Claims move to the recent cache (they are in sled now), then readers may go.
                shared.settle(&mut jobs, true);
                shared.applied.send_replace(last);
                let mut counts = applied.counts.into_iter();
                for job in &mut jobs {
                    if let Some(reply) = job.reply.take() {
                        let _ = reply.send(counts.next().unwrap_or(0));
                    }
                }
                if applied.woke {
                    shared.wakeups.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => {
                drop(items);
                shared.fail(&StoreError::Io(format!(
                    "the index could not apply the log: {e}"
                )));
                shared.settle(&mut jobs, false);
            }
        }
    }
    debug!("Log applier stopped.");
}

/// How one event of a commit was decided when it was queued.
enum Decision {
    New,
    Duplicate { id: String, seq: u64 },
}

impl IngestStore for LogStore {
    fn find_duplicate(&self, key: DedupKey) -> StoreFuture<Option<String>> {
        let shared = &self.shared;
        let key = key.to_bytes();
        let found = shared.check_failed().and_then(|()| {
            // Memory first, then the index: a claim leaves the in-flight map only once it is
            // applied, so checking in this order cannot miss one.
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
        let queued = (|| {
            let receipt_key = key_of(&new.receipt.id)?;
            let now_ms = shared.clock.now().timestamp_millis();
            let keys: Vec<Vec<u8>> = new.events.iter().map(|e| e.dedup.to_bytes()).collect();
            let event_keys = new
                .events
                .iter()
                .map(|e| key_of(&e.envelope.id))
                .collect::<Result<Vec<_>, _>>()?;
            let guard = new.replay_guard.as_ref().map(DedupKey::to_bytes);
            let mut intake = lock(&shared.intake);
            let now = shared.now_secs();
            let mut decisions = Vec::with_capacity(keys.len());
            // Where each ID first occurs in this batch (a scan of the keys before each one
            // would make a large batch quadratic, under the intake lock).
            let mut first_at: HashMap<&[u8], usize> = HashMap::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                // The same ID twice in one batch: the later one is a duplicate of the earlier.
                let earlier = match first_at.entry(key.as_slice()) {
                    std::collections::hash_map::Entry::Occupied(first) => Some(*first.get()),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(i);
                        None
                    }
                };
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
                let expires_at = now.saturating_add(shared.dedup_ttl_secs);
                let mut receipt = new.receipt.clone();
                receipt.envelope_ids.clear();
                receipt.types.clear();
                receipt.event_ids.clear();
                let mut events = Vec::new();
                let mut claims: Vec<(Vec<u8>, String, u64)> = Vec::new();
                for (i, decision) in decisions.iter().enumerate() {
                    if !matches!(decision, Decision::New) {
                        continue;
                    }
                    let event = &new.events[i];
                    events.push(EventEntry {
                        key: event_keys[i],
                        lane: &event.lane,
                        not_before_ms: event.not_before_ms,
                        sinks: event.sinks.iter().map(String::as_str).collect(),
                        envelope: &event.json,
                    });
                    claims.push((keys[i].clone(), event.envelope.id.clone(), expires_at));
                    receipt.envelope_ids.push(event.envelope.id.clone());
                    receipt.types.push(event.envelope.event_type.clone());
                    receipt.event_ids.push(event.envelope.event_id.clone());
                    receipt.subjects.push(super::subject(&event.envelope));
                }
                if let Some(guard) = &guard {
                    claims.push((guard.clone(), receipt.id.clone(), expires_at));
                }
                let receipt_json = encode(&receipt)?;
                let entry = Entry::Commit(CommitEntry {
                    receipt_key,
                    receipt: &receipt_json,
                    body: &new.body,
                    created_at_ms: now_ms,
                    expires_at,
                    claims: claims
                        .iter()
                        .map(|(k, id, _)| (k.as_slice(), id.as_str()))
                        .collect(),
                    events,
                });
                let payload = seal_payload(entry.encode());
                let weight = payload.len() + JOB_OVERHEAD_BYTES;
                let claimed = claims.clone();
                let seq = shared.enqueue(&mut intake, payload, weight, claims, None)?;
                for (key, id, expires_at) in claimed {
                    intake.inflight.insert(key, (id, seq, expires_at));
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
        let entry = key_of(&receipt.id).and_then(|key| Ok((key, encode(&receipt)?)));
        match entry {
            Ok((key, json)) => self.submit(&Entry::Unprocessable {
                key,
                receipt: &json,
                body: &body,
            }),
            Err(e) => futures_util::future::ready(Err(e)).boxed(),
        }
    }

    fn probe(&self) -> StoreFuture<()> {
        self.submit(&Entry::Probe)
    }
}

impl TaskQueue for LogStore {
    fn take_due(&self, sink: String, now_ms: i64, limit: usize) -> StoreFuture<Due> {
        self.read(move |shared| {
            let prefix = sink_prefix(P_PENDING, &sink);
            let mut all_leases = lock(&shared.leases);
            let leases = all_leases.of(&sink, now_ms);
            // Lanes with a delivery in flight, and until when at most. A redelivery can make
            // an envelope older than the one in flight pending again; it waits too.
            let mut busy: HashMap<Vec<u8>, ([u8; 16], i64)> = HashMap::new();
            for (id, lease) in leases.iter().filter(|(_, l)| !l.lane.is_empty()) {
                busy.insert(lease.lane.clone(), (*id, lease.until));
            }
            let mut blocked: HashSet<Vec<u8>> = HashSet::new();
            let mut due = Due::default();
            let mut taken = Vec::new();
            let mut heads = 0usize;
            for item in shared.index.scan_prefix(&prefix).take(PENDING_SCAN_LIMIT) {
                if heads >= SCAN_LIMIT {
                    break;
                }
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
                heads += 1;
                // When this task could be handed out: now, later, or when its lease (or the
                // lease of another task of its object) ends.
                let free_at = match (leases.get(&id), busy.get(lane)) {
                    (Some(lease), _) => next.max(lease.until),
                    (None, Some((_, until))) => next.max(*until),
                    (None, None) => next,
                };
                if free_at <= now_ms && taken.len() < limit {
                    taken.push((id, next, lane.to_vec()));
                } else {
                    let at = free_at.max(now_ms);
                    due.next_due_ms = Some(due.next_due_ms.map_or(at, |n: i64| n.min(at)));
                }
            }
            for (id, _, lane) in &taken {
                let lease = Lease {
                    until: now_ms.saturating_add(shared.lease_ms),
                    lane: lane.clone(),
                };
                leases.insert(*id, lease);
            }
            drop(all_leases);
            for (id, next, lane) in taken {
                match shared.task_record(&id, &sink) {
                    Ok(Some(task)) if task.status == TaskStatus::Pending => {
                        due.tasks.push(shared.due_task(&id, task));
                    }
                    // A task entry that cannot be decoded would stop every later round: it is
                    // handed out as what the queue knows of it, with the reason, and the
                    // worker makes it a dead letter (which rewrites the entry whole).
                    Err(e @ StoreError::Unreadable(_)) => due.tasks.push(DueTask {
                        task: TaskRecord {
                            sink: sink.clone(),
                            envelope_id: id_from_key(&id).unwrap_or_default(),
                            status: TaskStatus::Pending,
                            attempts: 0,
                            round_attempts: 0,
                            created_at_ms: now_ms,
                            round_started_ms: now_ms,
                            next_attempt_ms: Some(next),
                            last_error: None,
                            lane,
                        },
                        envelope: Err(e.to_string()),
                    }),
                    Err(e) => {
                        lock(&shared.leases).release(&sink, &id);
                        return Err(e);
                    }
                    Ok(_) => {
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
                    let lease = Lease {
                        until: now_ms.saturating_add(shared.lease_ms),
                        lane: Vec::new(),
                    };
                    leases.insert(id, lease);
                }
                let task = shared.task_record(&id, &sink).and_then(|task| match task {
                    // Per-object order holds here too: not while an older envelope of the same
                    // object is still pending at this sink, nor while another one is in flight.
                    Some(task) if task.status == TaskStatus::Pending => {
                        let held_back = shared.older_in_lane(&sink, &id, &task.lane)?
                            || !shared.lease_lane(&sink, &id, &task.lane, now_ms);
                        Ok((!held_back).then_some(task))
                    }
                    _ => Ok(None),
                });
                match task {
                    Ok(Some(task)) => out.push(shared.due_task(&id, task)),
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
        let encoded = done
            .iter()
            .map(|(task, attempt)| Ok((encode(task)?, encode(attempt)?)))
            .collect::<Result<Vec<_>, StoreError>>();
        let encoded = match encoded {
            Ok(e) => e,
            Err(e) => return futures_util::future::ready(Err(e)).boxed(),
        };
        let entry = Entry::Attempts(
            encoded
                .iter()
                .map(|(t, a)| (t.as_slice(), a.as_slice()))
                .collect(),
        );
        // A later take reads the index once it has applied what is durable, so it sees this.
        let durable = self.submit(&entry);
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
        self.submit_counted(&Entry::Redeliver {
            envelope,
            sink: sink.as_deref(),
            now_ms,
        })
    }

    fn pending_count(&self, sink: String) -> StoreFuture<usize> {
        self.read(move |shared| {
            Ok(shared
                .index
                .scan_prefix(sink_prefix(P_PENDING, &sink))
                .count())
        })
    }

    fn backlog(&self, sink: String) -> StoreFuture<Backlog> {
        self.read(move |shared| {
            let prefix = sink_prefix(P_PENDING, &sink);
            let mut pending = shared.index.scan_prefix(&prefix);
            // Keys sort by envelope id, a ULID: the first is the oldest, and its id says when
            // it was created.
            let Some(first) = pending.next() else {
                return Ok(Backlog::default());
            };
            let (key, _) = first.map_err(io_err)?;
            let oldest = <[u8; 16]>::try_from(&key[prefix.len()..])
                .ok()
                .map(|id| ulid::Ulid::from(u128::from_be_bytes(id)).timestamp_ms() as i64);
            Ok(Backlog {
                pending: 1 + pending.count(),
                oldest_pending_ms: oldest,
            })
        })
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.shared.wakeups.subscribe()
    }
}

impl EventBrowser for LogStore {
    fn events(&self, query: EventQuery) -> StoreFuture<EventPage> {
        self.read(move |shared| {
            let mut upper = query.before.as_deref().and_then(id_key);
            if let Some(until) = query.until_ms {
                let until = time_key(until);
                upper = Some(upper.map_or(until, |u| u.min(until)));
            }
            let lower = query.since_ms.map(time_key);
            let lo = lower.map_or_else(|| vec![P_RECEIPT], |l| receipt_index(&l));
            let hi = upper.map_or_else(|| vec![P_RECEIPT + 1], |u| receipt_index(&u));
            if lo >= hi {
                return Ok(EventPage::default());
            }
            let limit = query.limit.max(1);
            let mut page = EventPage::default();
            let mut last = None;
            let mut exhausted = true;
            for (scanned, item) in shared.index.range(lo..hi).rev().enumerate() {
                if page.events.len() >= limit || scanned >= BROWSE_SCAN_LIMIT {
                    exhausted = false;
                    break;
                }
                let (key, value) = item.map_err(io_err)?;
                last = id_from_key(&key[1..]);
                let at = Pointer::get(&value).ok_or_else(|| io_err("a damaged index entry"))?;
                let summary = shared.summary(shared.receipt_at(at)?)?;
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
            let Some((receipt, body)) = shared.receipt_pointers(&key)? else {
                return Ok(None);
            };
            let body = shared.read_log(body).map_err(StoreError::Io)?;
            Ok(Some((
                shared.receipt_at(receipt)?,
                bytes::Bytes::from(body),
            )))
        })
    }

    fn envelope(&self, id: String) -> StoreFuture<Option<Envelope>> {
        self.read(move |shared| match id_key(&id) {
            Some(key) => shared.envelope_of(&key),
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
            shared
                .index
                .scan_prefix(prefixed(P_ATTEMPT, &[&id, sink.as_bytes(), &[0]]))
                .map(|item| decode(&item.map_err(io_err)?.1))
                .collect()
        })
    }

    fn dead_letters(&self, sink: Option<String>, limit: usize) -> StoreFuture<Vec<TaskRecord>> {
        self.read(move |shared| {
            let prefix = sink
                .as_deref()
                .map_or_else(|| vec![P_DEAD], |s| sink_prefix(P_DEAD, s));
            let mut out = Vec::new();
            for item in shared.index.scan_prefix(&prefix) {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = item.map_err(io_err)?;
                let key = &key[1..];
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

/// The paused instances and sinks, beside `log/` and `index/`: a small file replaced
/// atomically (written, fsynced, renamed, directory fsynced). Not a log record: retention
/// deletes old segments and `rebuild-index` rebuilds from the log, and a pause must survive both.
const PAUSES_FILE: &str = "pauses.json";

fn read_pauses(root: &Path) -> Result<Vec<Pause>, StoreError> {
    match std::fs::read(root.join(PAUSES_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Failed(format!(
                "{} is damaged ({e}); delete it to resume everything",
                root.join(PAUSES_FILE).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(e)),
    }
}

fn write_pauses(root: &Path, pauses: &[Pause]) -> Result<(), StoreError> {
    use std::io::Write as _;
    let tmp = root.join(format!("{PAUSES_FILE}.new"));
    let bytes = serde_json::to_vec_pretty(pauses).map_err(io_err)?;
    let mut file = File::create(&tmp).map_err(io_err)?;
    file.write_all(&bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, root.join(PAUSES_FILE)).map_err(io_err)?;
    segment::sync_dir(root).map_err(io_err)
}

impl Controls for LogStore {
    fn set_paused(
        &self,
        target: PauseTarget,
        name: String,
        paused: bool,
        now_ms: i64,
    ) -> StoreFuture<bool> {
        let shared = self.shared.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let _one_writer = lock(&shared.pauses);
                let mut pauses = read_pauses(&shared.root)?;
                let at = pauses
                    .iter()
                    .position(|p| p.target == target && p.name == name);
                match (at, paused) {
                    (Some(_), true) | (None, false) => return Ok(false),
                    (Some(i), false) => {
                        pauses.remove(i);
                    }
                    (None, true) => {
                        pauses.push(Pause {
                            target,
                            name,
                            paused_at_ms: now_ms,
                        });
                        pauses.sort_by(|a, b| (a.target, &a.name).cmp(&(b.target, &b.name)));
                    }
                }
                write_pauses(&shared.root, &pauses)?;
                Ok(true)
            })
            .await
            .map_err(io_err)?
        }
        .boxed()
    }

    fn paused(&self) -> StoreFuture<Vec<Pause>> {
        let shared = self.shared.clone();
        async move {
            tokio::task::spawn_blocking(move || read_pauses(&shared.root))
                .await
                .map_err(io_err)?
        }
        .boxed()
    }
}

impl Maintenance for LogStore {
    fn expire_claims(&self, now_secs: u64) -> StoreFuture<usize> {
        lock(&self.shared.intake).recent.forget_expired(now_secs);
        self.submit_counted(&Entry::Expire { now_secs })
    }

    fn purge_before(&self, cutoff_ms: i64, limit: usize) -> StoreFuture<usize> {
        // Choose candidates from the index (resuming where the last purge stopped, so receipts
        // still pending at the front are not re-read every time); the purge record re-checks
        // each when applied.
        let candidates = self.read(move |shared| {
            let end = receipt_index(&time_key(cutoff_ms));
            let mut cursor = lock(&shared.purge_from);
            if cursor.is_empty() || *cursor >= end {
                *cursor = vec![P_RECEIPT];
            }
            let budget = limit.saturating_mul(PURGE_SCAN_FACTOR).max(1);
            let mut keys = Vec::new();
            let mut next_start = Vec::new();
            for (examined, item) in shared.index.range(cursor.clone()..end).enumerate() {
                let (key, value) = item.map_err(io_err)?;
                if keys.len() >= limit || examined >= budget {
                    next_start = key.to_vec();
                    break;
                }
                let Ok(id) = <[u8; 16]>::try_from(&key[1..]) else {
                    continue;
                };
                let Some(at) = Pointer::get(&value) else {
                    continue;
                };
                let finished = match shared.receipt_at(at) {
                    Ok(receipt) => !shared
                        .summary(receipt)?
                        .tasks
                        .iter()
                        .any(|t| t.status == TaskStatus::Pending),
                    Err(_) => true,
                };
                if finished {
                    keys.push(id);
                }
            }
            *cursor = next_start;
            Ok(keys)
        });
        let shared = self.shared.clone();
        async move {
            let keys = candidates.await?;
            let purged = if keys.is_empty() {
                0
            } else {
                shared.submit_counted(&Entry::Purge(keys)).await?
            };
            shared.retire(cutoff_ms, limit).await?;
            Ok(purged)
        }
        .boxed()
    }

    fn close(&self) {
        lock(&self.shared.intake).sender.take();
        for handle in lock(&self.threads).drain(..) {
            let _ = handle.join();
        }
        if let Err(e) = self.shared.db.flush() {
            warn!(error = %e, "Final index flush failed.");
        }
    }
}

impl Shared {
    /// Deletes the segments [`Shared::retire_segments`] finds, after a durable truncation
    /// record and a durable index (so recovery never needs what is deleted).
    async fn retire(self: Arc<Self>, cutoff_ms: i64, limit: usize) -> Result<(), StoreError> {
        let shared = self.clone();
        let (retire, held) = tokio::task::spawn_blocking(move || shared.retire_segments())
            .await
            .map_err(io_err)??;
        let Some(last) = retire.last().copied() else {
            // The oldest segment is kept only by old deliveries still pending: copy them
            // forward, so a later run can delete it.
            if let Some(number) = held {
                let shared = self.clone();
                let records = tokio::task::spawn_blocking(move || {
                    shared.carry_out(number, cutoff_ms, limit.max(1))
                })
                .await
                .map_err(io_err)??;
                let carried = records.len();
                for payload in records {
                    let payload = seal_payload(payload);
                    let weight = payload.len() + JOB_OVERHEAD_BYTES;
                    let seq = {
                        let mut intake = lock(&self.intake);
                        self.enqueue(&mut intake, payload, weight, Vec::new(), None)?
                    };
                    self.clone().durable(seq).await?;
                }
                if carried > 0 {
                    info!(
                        segment = number,
                        carried, "Copied pending deliveries forward."
                    );
                }
            }
            return Ok(());
        };
        self.submit(&Entry::Truncated {
            first_segment: last + 1,
        })
        .await?;
        let target = lock(&self.intake).seq;
        self.clone().caught_up(target).await?;
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            shared.db.flush().map_err(io_err)?;
            sync_tree(&shared.root.join(INDEX_DIR)).map_err(io_err)?;
            for number in &retire {
                shared
                    .segments
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(number);
                std::fs::remove_file(segment::path(&shared.log_dir, *number)).map_err(io_err)?;
            }
            segment::sync_dir(&shared.log_dir).map_err(io_err)?;
            info!(segments = retire.len(), "Retired log segments.");
            Ok(())
        })
        .await
        .map_err(io_err)?
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
