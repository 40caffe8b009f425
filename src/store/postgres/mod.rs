//! The PostgreSQL backend: several stateless replicas share one database (DESIGN §8).
//!
//! - **Ingest** is one transaction: the claims (`INSERT ... ON CONFLICT` on the claim key is the
//!   idempotency table; an expired claim is taken over in the same statement), the receipt and
//!   its body, the envelopes and one task per (envelope, sink). The future resolves after
//!   `COMMIT` returns; the session runs with `synchronous_commit = on` (start-up refuses a
//!   database whose default turns it off), so a 2xx follows the WAL flush.
//! - **Delivery**: a worker of any replica takes due tasks with `FOR UPDATE SKIP LOCKED` and a
//!   lease (`leased_until`), so no two replicas attempt a task at once and a dead replica's
//!   tasks come due again when their lease ends. Only the oldest pending task of an ordering
//!   lane qualifies, which keeps per-object order across replicas. Commits and redeliveries
//!   wake this replica's workers at once and the others through `NOTIFY`, coalesced.
//! - **Upkeep** (claim expiry, retention) runs under a transaction-level advisory lock, so one
//!   replica at a time does it and the others skip the round.
//! - **Outages**: every call has the `storage.write_timeout_ms` deadline; a pool that cannot
//!   connect fails within `storage.connect_timeout_ms`. Both are [`StoreError`]s, answered 503.
//!   The pool reconnects by itself when the database is back.
//!
//! The schema is created and upgraded by the embedded, versioned migrations in
//! `migrations/`, applied at start under an advisory lock (safe when replicas start at once).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Executor as _, Row as _};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use ulid::Ulid;

use super::{
    AttemptRecord, Backlog, Commit, Committed, DedupKey, Due, DueTask, EventPage, EventQuery,
    EventStatus, EventSummary, NewReceipt, Pause, PauseTarget, Receipt, StoreError, StoreFuture,
    TaskRecord, TaskStatus,
};
use crate::clock::Clock;
use crate::config::StorageSettings;
use crate::envelope::Envelope;
use crate::store::contract::{Controls, EventBrowser, IngestStore, Maintenance, TaskQueue};

/// The versioned migrations, in order. A database records the versions it has in
/// `hookgate_schema`; start-up applies the missing ones.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "pauses", include_str!("migrations/0002_pauses.sql")),
];
/// The schema version this build runs on.
pub const SCHEMA_VERSION: i32 = 2;

/// Advisory lock keys (one namespace for hookgate: `0x686B6774` is "hkgt").
const LOCK_MIGRATE: i64 = 0x686B_6774_0000_0001;
const LOCK_EXPIRE: i64 = 0x686B_6774_0000_0002;
const LOCK_PURGE: i64 = 0x686B_6774_0000_0003;
/// The channel commits and redeliveries notify.
const CHANNEL: &str = "hookgate_tasks";
/// Notifications to other replicas are sent at most this often (the local workers are woken
/// at once, without the database).
const NOTIFY_COALESCE: Duration = Duration::from_millis(25);
/// Claims deleted per statement by the expiry sweep.
const EXPIRE_BATCH: i64 = 10_000;
/// Receipts the event browser reads per query, and at most per page.
const BROWSE_CHUNK: i64 = 200;
const BROWSE_SCAN_LIMIT: usize = 20_000;
/// Where `take_due` stops counting the queue (`pending_count` is exact).
const PENDING_COUNT_LIMIT: i64 = 10_000;

const STATUS_PENDING: i16 = 0;
const STATUS_DELIVERED: i16 = 1;
const STATUS_DEAD: i16 = 2;

const TASK_COLUMNS: &str = "envelope_id, sink, status, attempts, round_attempts, created_at_ms, \
                            round_started_ms, next_attempt_ms, last_error, lane";

/// Whether a database is reachable and on this build's schema (`hookgate check --storage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The highest migration the database has (0: none).
    pub version: i32,
    /// The server's version string.
    pub server: String,
    /// `user@host:port/database`, without the password.
    pub target: String,
}

/// The PostgreSQL store. Cheap to share; every replica opens its own.
pub struct PgStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    /// The one connection that `LISTEN`s.
    listen_pool: PgPool,
    clock: Arc<dyn Clock>,
    dedup_ttl_secs: u64,
    lease_ms: i64,
    deadline: Duration,
    closed: AtomicBool,
    wakeups: watch::Sender<u64>,
    /// Set after a local commit made tasks pending; the notifier tells the other replicas.
    notify_others: Notify,
    /// Stops the listener and the notifier.
    stop: watch::Sender<bool>,
    /// The lease token of every task this replica holds: its attempt is recorded only if the
    /// task still carries it (the lease did not run out and pass the task to another worker,
    /// and no redelivery came in between).
    leases: std::sync::Mutex<HashMap<(String, String), i64>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut => StoreError::Io(
            "PostgreSQL is unavailable: no connection within storage.connect_timeout_ms".into(),
        ),
        sqlx::Error::PoolClosed => StoreError::Closed,
        other => StoreError::Io(format!("PostgreSQL: {other}")),
    }
}

/// A stored JSON record, read back within [`crate::json::MAX_READ_DEPTH`]; one that cannot be
/// decoded is [`StoreError::Unreadable`].
fn read_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    crate::json::read(bytes).map_err(|e| StoreError::Unreadable(format!("the stored {what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Io(format!("cannot encode a record: {e}")))
}

/// The lowest ULID of a millisecond: receipts received at or after `ms` sort at or after it.
fn time_bound(ms: i64) -> String {
    Ulid::from_parts(u64::try_from(ms.max(0)).unwrap_or(0), 0).to_string()
}

/// PostgreSQL text cannot hold NUL; an error message is the only free text stored as text.
fn text_safe(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

fn status_code(status: TaskStatus) -> i16 {
    match status {
        TaskStatus::Pending => STATUS_PENDING,
        TaskStatus::Delivered => STATUS_DELIVERED,
        TaskStatus::Dead => STATUS_DEAD,
    }
}

fn task_from(row: &PgRow) -> Result<TaskRecord, StoreError> {
    let status = match row.try_get::<i16, _>("status").map_err(db_err)? {
        STATUS_PENDING => TaskStatus::Pending,
        STATUS_DELIVERED => TaskStatus::Delivered,
        STATUS_DEAD => TaskStatus::Dead,
        other => return Err(StoreError::Io(format!("unknown task status {other}"))),
    };
    let count = |name: &str| -> Result<u32, StoreError> {
        let n: i32 = row.try_get(name).map_err(db_err)?;
        Ok(u32::try_from(n).unwrap_or(0))
    };
    Ok(TaskRecord {
        sink: row.try_get("sink").map_err(db_err)?,
        envelope_id: row.try_get("envelope_id").map_err(db_err)?,
        status,
        attempts: count("attempts")?,
        round_attempts: count("round_attempts")?,
        created_at_ms: row.try_get("created_at_ms").map_err(db_err)?,
        round_started_ms: row.try_get("round_started_ms").map_err(db_err)?,
        next_attempt_ms: row.try_get("next_attempt_ms").map_err(db_err)?,
        last_error: row.try_get("last_error").map_err(db_err)?,
        lane: row.try_get("lane").map_err(db_err)?,
    })
}

/// A leased task with its envelope (`envelope` column); an unreadable envelope is the task's
/// error, so it becomes a dead letter instead of stalling the queue.
fn due_from(row: &PgRow) -> Result<DueTask, StoreError> {
    let task = task_from(row)?;
    let json: Option<Vec<u8>> = row.try_get("envelope").map_err(db_err)?;
    let envelope = match json {
        Some(json) => read_json("envelope", &json).map_err(|e| e.to_string()),
        None => Err("the stored envelope is missing".to_owned()),
    };
    Ok(DueTask { task, envelope })
}

/// Connection options from `storage.url`, with what every session needs.
fn connect_options(settings: &StorageSettings) -> Result<PgConnectOptions, StoreError> {
    let url = settings
        .url
        .as_ref()
        .map(|u| u.expose_str())
        .unwrap_or_default();
    // The URL holds the password: the error names the key, never the value.
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        let reason = match e {
            sqlx::Error::Configuration(inner) => inner.to_string(),
            _ => "not a PostgreSQL connection URL".to_owned(),
        };
        StoreError::Failed(format!("storage.url is invalid: {reason}"))
    })?;
    Ok(options.application_name("hookgate").options([
        // Acknowledged means on disk: never trust a server default here.
        ("synchronous_commit", "on".to_owned()),
        // The queries' bytea literals ('\x') assume it.
        ("standard_conforming_strings", "on".to_owned()),
        // The server gives up on what the gateway has given up on.
        (
            "statement_timeout",
            format!("{}ms", settings.write_timeout_ms),
        ),
        (
            "idle_in_transaction_session_timeout",
            format!("{}ms", settings.write_timeout_ms.saturating_mul(4)),
        ),
    ]))
}

fn pool_options(settings: &StorageSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.pool_size)
        .min_connections(1.min(settings.pool_size))
        .acquire_timeout(Duration::from_millis(settings.connect_timeout_ms))
        // A connection that died with the server is found out before it is used.
        .test_before_acquire(true)
}

/// Connects once (no migrations): for `hookgate check --storage`.
pub async fn schema_status(settings: &StorageSettings) -> Result<SchemaStatus, StoreError> {
    let options = connect_options(settings)?;
    let target = format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    );
    let pool = pool_options(settings)
        .min_connections(0)
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| StoreError::Io(format!("cannot connect to {target}: {}", db_err(e))))?;
    let server: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .map_err(db_err)?;
    let version = schema_version(&pool).await?;
    pool.close().await;
    Ok(SchemaStatus {
        version,
        server,
        target,
    })
}

/// The highest migration applied (0: none, not even the version table).
async fn schema_version(pool: &PgPool) -> Result<i32, StoreError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('hookgate_schema') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    if !exists {
        return Ok(0);
    }
    Ok(
        sqlx::query_scalar::<_, Option<i32>>("SELECT max(version) FROM hookgate_schema")
            .fetch_one(pool)
            .await
            .map_err(db_err)?
            .unwrap_or(0),
    )
}

/// Applies the missing migrations, one transaction each, under an advisory lock so that
/// replicas starting together take turns. Refuses a database newer than this build.
async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(db_err)?;
    // Migrations may take longer than a request's deadline.
    conn.execute("SET statement_timeout = 0")
        .await
        .map_err(db_err)?;
    let result: Result<(), StoreError> = async {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK_MIGRATE)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hookgate_schema (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db_err)?;
        let have: i32 =
            sqlx::query_scalar::<_, Option<i32>>("SELECT max(version) FROM hookgate_schema")
                .fetch_one(&mut *conn)
                .await
                .map_err(db_err)?
                .unwrap_or(0);
        if have > SCHEMA_VERSION {
            return Err(StoreError::Failed(format!(
                "the database schema is at version {have}, newer than this hookgate \
                 ({SCHEMA_VERSION}); run a newer hookgate"
            )));
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > have) {
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(db_err)?;
            tx.execute(*sql).await.map_err(|e| {
                StoreError::Failed(format!("migration {version} ({name}) failed: {e}"))
            })?;
            sqlx::query("INSERT INTO hookgate_schema (version, name) VALUES ($1, $2)")
                .bind(version)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            info!(version, name, "Applied a database migration.");
        }
        Ok(())
    }
    .await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_MIGRATE)
        .execute(&mut *conn)
        .await;
    // A connection in an unknown state does not go back to the pool.
    if result.is_err() || unlocked.is_err() || conn.execute("RESET ALL").await.is_err() {
        conn.detach();
    }
    result
}

impl PgStore {
    /// Connects to `storage.url`, checks the server's durability settings, applies the
    /// migrations and starts listening for other replicas' commits.
    pub async fn connect(
        settings: &StorageSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        Self::open(settings, clock, true).await
    }

    /// Connects to a database `hookgate serve` has migrated, changing no schema (the CLI: a
    /// newer CLI must not migrate under older replicas, and may run as a role without DDL
    /// rights). Refuses a database on another schema version.
    pub async fn connect_migrated(
        settings: &StorageSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        Self::open(settings, clock, false).await
    }

    async fn open(
        settings: &StorageSettings,
        clock: Arc<dyn Clock>,
        migrating: bool,
    ) -> Result<Self, StoreError> {
        let options = connect_options(settings)?;
        // LISTEN holds its connection for good: its own, outside the request pool.
        let listen_pool = pool_options(settings)
            .min_connections(0)
            .max_connections(1)
            .connect_lazy_with(options.clone());
        let pool =
            pool_options(settings)
                .connect_with(options)
                .await
                .map_err(|e| match db_err(e) {
                    StoreError::Io(m) => StoreError::Failed(format!("cannot connect: {m}")),
                    other => other,
                })?;
        let synchronous: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .map_err(db_err)?;
        if synchronous == "off" {
            return Err(StoreError::Failed(
                "the database runs with synchronous_commit = off, so a commit could be lost \
                 after it was acknowledged; hookgate refuses to run on it"
                    .into(),
            ));
        }
        let encoding: String = sqlx::query_scalar("SHOW server_encoding")
            .fetch_one(&pool)
            .await
            .map_err(db_err)?;
        if encoding != "UTF8" {
            return Err(StoreError::Failed(format!(
                "the database's encoding is {encoding}; hookgate needs a UTF8 database \
                 (CREATE DATABASE ... ENCODING 'UTF8')"
            )));
        }
        let fsync: String = sqlx::query_scalar("SHOW fsync")
            .fetch_one(&pool)
            .await
            .map_err(db_err)?;
        if fsync == "off" {
            warn!(
                "THE DATABASE RUNS WITH fsync = off: a crash of its machine can lose events \
                 hookgate acknowledged. Turn fsync on for production."
            );
        }
        if migrating {
            migrate(&pool).await?;
        } else {
            let version = schema_version(&pool).await?;
            if version != SCHEMA_VERSION {
                return Err(StoreError::Failed(format!(
                    "the database is at schema version {version}, this hookgate works on \
                     {SCHEMA_VERSION}; `hookgate serve` of the same version migrates it"
                )));
            }
        }
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            pool,
            listen_pool,
            clock,
            dedup_ttl_secs: settings.dedup_ttl_secs,
            lease_ms: i64::try_from(settings.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            deadline: Duration::from_millis(settings.write_timeout_ms),
            closed: AtomicBool::new(false),
            wakeups: watch::channel(0).0,
            notify_others: Notify::new(),
            stop,
            leases: std::sync::Mutex::new(HashMap::new()),
        });
        tokio::spawn(listen(Arc::downgrade(&shared), shared.stop.subscribe()));
        tokio::spawn(notify(Arc::downgrade(&shared), shared.stop.subscribe()));
        Ok(Self { shared })
    }

    /// Runs `work` under the store's deadline, unless the store is closed.
    fn run<T, F>(&self, work: impl FnOnce(Arc<Shared>) -> F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return futures_util::future::ready(Err(StoreError::Closed)).boxed();
        }
        let deadline = shared.deadline;
        let work = work(shared.clone());
        async move {
            match tokio::time::timeout(deadline, work).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout(
                    u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                )),
            }
        }
        .boxed()
    }
}

impl Shared {
    fn now_secs(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// Remembers the lease tokens of tasks just taken.
    fn leased(&self, rows: &[PgRow]) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            let key = (
                row.try_get("envelope_id").map_err(db_err)?,
                row.try_get("sink").map_err(db_err)?,
            );
            leases.insert(key, row.try_get("lease_token").map_err(db_err)?);
        }
        Ok(())
    }

    /// Tasks became pending: wake the local workers now, the other replicas soon.
    fn woke(&self) {
        self.wakeups.send_modify(|n| *n = n.wrapping_add(1));
        self.notify_others.notify_one();
    }
}

/// Wakes the local workers when another replica notifies. After a lost connection it wakes
/// them too (a notification may have been missed) and reconnects, backing off.
async fn listen(shared: std::sync::Weak<Shared>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(pool) = shared.upgrade().map(|s| s.listen_pool.clone()) else {
            return;
        };
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            r = connected => match r {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "Cannot listen for other replicas' commits yet.");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        backoff = Duration::from_millis(100);
        drop(pool);
        loop {
            tokio::select! {
                message = listener.try_recv() => {
                    let Some(shared) = shared.upgrade() else { return };
                    // A notification, or a lost connection (a wakeup may have been missed).
                    shared.wakeups.send_modify(|n| *n = n.wrapping_add(1));
                    match message {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// Tells the other replicas that tasks became pending, at most once per [`NOTIFY_COALESCE`].
async fn notify(shared: std::sync::Weak<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let pool = s.pool.clone();
        tokio::select! {
            _ = s.notify_others.notified() => {}
            _ = stop.changed() => return,
        }
        drop(s);
        // Best effort: workers also poll, so a lost notification only delays a delivery.
        let sent = sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "Could not notify the other replicas.");
        }
        tokio::select! {
            _ = tokio::time::sleep(NOTIFY_COALESCE) => {}
            _ = stop.changed() => return,
        }
    }
}

impl IngestStore for PgStore {
    fn find_duplicate(&self, key: DedupKey) -> StoreFuture<Option<String>> {
        self.run(move |shared| async move {
            sqlx::query_scalar(
                "SELECT gateway_id FROM hookgate_claims WHERE key = $1 AND expires_at > $2",
            )
            .bind(key.to_bytes())
            .bind(shared.now_secs())
            .fetch_optional(&shared.pool)
            .await
            .map_err(db_err)
        })
    }

    fn commit(&self, new: NewReceipt) -> StoreFuture<Commit> {
        self.run(move |shared| async move {
            let outcome = commit(&shared, new).await?;
            if outcome.1 {
                shared.woke();
            }
            Ok(outcome.0)
        })
    }

    fn keep_unprocessable(&self, receipt: Receipt, body: bytes::Bytes) -> StoreFuture<()> {
        self.run(move |shared| async move {
            let json = encode(&receipt)?;
            let search: Vec<Vec<u8>> = receipt
                .event_id
                .iter()
                .map(|e| e.as_bytes().to_vec())
                .collect();
            sqlx::query(
                "INSERT INTO hookgate_receipts (id, provider, status, search_ids, receipt, body)
                 VALUES ($1, $2, 'unprocessable', $3, $4, $5)",
            )
            .bind(&receipt.id)
            .bind(&receipt.provider)
            .bind(search)
            .bind(json)
            .bind(body.to_vec())
            .execute(&shared.pool)
            .await
            .map_err(db_err)?;
            Ok(())
        })
    }

    fn probe(&self) -> StoreFuture<()> {
        self.run(move |shared| async move {
            // A durable no-op write: a transaction id is assigned and its commit flushed to
            // the WAL (a standby or a read-only session fails here).
            sqlx::query("SELECT pg_current_xact_id()")
                .execute(&shared.pool)
                .await
                .map_err(db_err)?;
            Ok(())
        })
    }
}

/// What one event of a commit turned out to be.
enum Decision {
    New,
    Duplicate(String),
}

/// The search ids of a receipt: its own event id and its events'.
fn search_ids(receipt: &Receipt) -> Vec<Vec<u8>> {
    let mut search: Vec<Vec<u8>> = receipt
        .event_id
        .iter()
        .chain(&receipt.event_ids)
        .map(|e| e.as_bytes().to_vec())
        .collect();
    search.sort();
    search.dedup();
    search
}

/// The ingest commit. Returns the outcome and whether tasks became pending.
async fn commit(shared: &Shared, new: NewReceipt) -> Result<(Commit, bool), StoreError> {
    if new.events.len() == 1 && new.replay_guard.is_none() {
        commit_one(shared, new).await
    } else {
        commit_many(shared, new).await
    }
}

/// One event, no replay guard (most deliveries): one statement, so one round trip and the
/// implicit transaction of that statement. The claim decides whether the rest is inserted.
async fn commit_one(shared: &Shared, new: NewReceipt) -> Result<(Commit, bool), StoreError> {
    let now = shared.now_secs();
    let now_ms = shared.clock.now().timestamp_millis();
    let expires_at = now.saturating_add(i64::try_from(shared.dedup_ttl_secs).unwrap_or(i64::MAX));
    let event = &new.events[0];
    let key = event.dedup.to_bytes();
    let mut receipt = new.receipt.clone();
    receipt.envelope_ids = vec![event.envelope.id.clone()];
    receipt.types = vec![event.envelope.event_type.clone()];
    receipt.event_ids = vec![event.envelope.event_id.clone()];
    receipt.subjects = vec![super::subject(&event.envelope)];
    let row = sqlx::query(
        "WITH c AS (
             INSERT INTO hookgate_claims (key, gateway_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE
                 SET gateway_id = EXCLUDED.gateway_id, expires_at = EXCLUDED.expires_at
                 WHERE hookgate_claims.expires_at <= $4
             RETURNING key
         ), r AS (
             INSERT INTO hookgate_receipts (id, provider, status, search_ids, receipt, body)
             SELECT $5, $6, 'accepted', $7, $8, $9 WHERE EXISTS (SELECT 1 FROM c)
         ), e AS (
             INSERT INTO hookgate_envelopes (id, receipt_id, envelope)
             SELECT $2, $5, $10 WHERE EXISTS (SELECT 1 FROM c)
         ), t AS (
             INSERT INTO hookgate_tasks (envelope_id, sink, receipt_id, status, attempts,
                 round_attempts, created_at_ms, round_started_ms, next_attempt_ms, last_error,
                 lane, lane_key)
             SELECT $2, s, $5, 0, 0, 0, $11, $11, $12, NULL, $13,
                 CASE WHEN $13 = '\\x'::bytea THEN NULL
                      ELSE convert_to(s, 'UTF8') || '\\x00'::bytea || $13 END
             FROM UNNEST($14::text[]) AS x(s) WHERE EXISTS (SELECT 1 FROM c)
         )
         SELECT EXISTS (SELECT 1 FROM c) AS fresh,
                (SELECT gateway_id FROM hookgate_claims WHERE key = $1 AND expires_at > $4)
                    AS holder",
    )
    .bind(&key)
    .bind(&event.envelope.id)
    .bind(expires_at)
    .bind(now)
    .bind(&receipt.id)
    .bind(&receipt.provider)
    .bind(search_ids(&receipt))
    .bind(encode(&receipt)?)
    .bind(new.body.to_vec())
    .bind(event.json.to_vec())
    .bind(now_ms)
    .bind(event.not_before_ms)
    .bind(&event.lane)
    .bind(&event.sinks)
    .fetch_one(&shared.pool)
    .await
    .map_err(db_err)?;
    if row.try_get::<bool, _>("fresh").map_err(db_err)? {
        return Ok((
            Commit::Stored(vec![Committed::Accepted]),
            !event.sinks.is_empty(),
        ));
    }
    // The statement's snapshot predates a claim committed while it waited on that key: read
    // the holder again.
    let holder = match row.try_get::<Option<String>, _>("holder").map_err(db_err)? {
        Some(id) => Some(id),
        None => sqlx::query_scalar("SELECT gateway_id FROM hookgate_claims WHERE key = $1")
            .bind(&key)
            .fetch_optional(&shared.pool)
            .await
            .map_err(db_err)?,
    };
    match holder {
        Some(id) => Ok((Commit::Stored(vec![Committed::Duplicate { id }]), false)),
        None => Err(StoreError::Io(
            "a claim changed during the commit; try again".into(),
        )),
    }
}

/// Several events (a batch) or a replay guard: one transaction of a few statements.
async fn commit_many(shared: &Shared, new: NewReceipt) -> Result<(Commit, bool), StoreError> {
    let now = shared.now_secs();
    let now_ms = shared.clock.now().timestamp_millis();
    let expires_at = now.saturating_add(i64::try_from(shared.dedup_ttl_secs).unwrap_or(i64::MAX));
    let keys: Vec<Vec<u8>> = new.events.iter().map(|e| e.dedup.to_bytes()).collect();
    // The same ID twice in one batch: the later copy is a duplicate of the earlier.
    let earlier: Vec<Option<usize>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| keys[..i].iter().position(|e| e == k))
        .collect();
    let mut firsts: Vec<usize> = (0..keys.len()).filter(|i| earlier[*i].is_none()).collect();
    // One lock order for every transaction: two receipts sharing IDs cannot deadlock.
    firsts.sort_by(|a, b| keys[*a].cmp(&keys[*b]));

    let mut tx = shared.pool.begin().await.map_err(db_err)?;
    let claimed: Vec<Vec<u8>> = sqlx::query_scalar(
        "INSERT INTO hookgate_claims (key, gateway_id, expires_at)
         SELECT k, g, $3 FROM UNNEST($1::bytea[], $2::text[]) AS c(k, g)
         ON CONFLICT (key) DO UPDATE
             SET gateway_id = EXCLUDED.gateway_id, expires_at = EXCLUDED.expires_at
             WHERE hookgate_claims.expires_at <= $4
         RETURNING key",
    )
    .bind(firsts.iter().map(|i| keys[*i].clone()).collect::<Vec<_>>())
    .bind(
        firsts
            .iter()
            .map(|i| new.events[*i].envelope.id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(expires_at)
    .bind(now)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let claimed: HashSet<Vec<u8>> = claimed.into_iter().collect();
    let taken: Vec<Vec<u8>> = firsts
        .iter()
        .map(|i| &keys[*i])
        .filter(|k| !claimed.contains(*k))
        .cloned()
        .collect();
    let holders: HashMap<Vec<u8>, String> = if taken.is_empty() {
        HashMap::new()
    } else {
        sqlx::query("SELECT key, gateway_id FROM hookgate_claims WHERE key = ANY($1)")
            .bind(&taken)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?
            .iter()
            .map(|row| Ok((row.try_get("key")?, row.try_get("gateway_id")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_err)?
    };
    let mut decisions: Vec<Decision> = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let decision = match earlier[i] {
            Some(j) => match &decisions[j] {
                Decision::New => Decision::Duplicate(new.events[j].envelope.id.clone()),
                Decision::Duplicate(id) => Decision::Duplicate(id.clone()),
            },
            None if claimed.contains(key) => Decision::New,
            None => match holders.get(key) {
                Some(id) => Decision::Duplicate(id.clone()),
                None => {
                    return Err(StoreError::Io(
                        "a claim changed during the commit; try again".into(),
                    ))
                }
            },
        };
        decisions.push(decision);
    }
    let outcomes: Vec<Committed> = decisions
        .iter()
        .map(|d| match d {
            Decision::New => Committed::Accepted,
            Decision::Duplicate(id) => Committed::Duplicate { id: id.clone() },
        })
        .collect();
    let fresh: Vec<usize> = (0..keys.len())
        .filter(|i| matches!(decisions[*i], Decision::New))
        .collect();
    if fresh.is_empty() {
        // Nothing to store; the claims found are committed, hence durable.
        tx.rollback().await.map_err(db_err)?;
        return Ok((Commit::Stored(outcomes), false));
    }
    if let Some(guard) = &new.replay_guard {
        let used = sqlx::query_scalar::<_, Vec<u8>>(
            "INSERT INTO hookgate_claims (key, gateway_id, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE
                 SET gateway_id = EXCLUDED.gateway_id, expires_at = EXCLUDED.expires_at
                 WHERE hookgate_claims.expires_at <= $4
             RETURNING key",
        )
        .bind(guard.to_bytes())
        .bind(&new.receipt.id)
        .bind(expires_at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?
        .is_none();
        if used {
            tx.rollback().await.map_err(db_err)?;
            return Ok((Commit::Replayed, false));
        }
    }
    let mut receipt = new.receipt;
    receipt.envelope_ids = fresh
        .iter()
        .map(|i| new.events[*i].envelope.id.clone())
        .collect();
    receipt.types = fresh
        .iter()
        .map(|i| new.events[*i].envelope.event_type.clone())
        .collect();
    receipt.event_ids = fresh
        .iter()
        .map(|i| new.events[*i].envelope.event_id.clone())
        .collect();
    receipt.subjects = fresh
        .iter()
        .map(|i| super::subject(&new.events[*i].envelope))
        .collect();
    let search = search_ids(&receipt);
    let (mut task_ids, mut task_sinks, mut task_due, mut task_lanes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in &fresh {
        let event = &new.events[*i];
        for sink in &event.sinks {
            task_ids.push(event.envelope.id.clone());
            task_sinks.push(sink.clone());
            task_due.push(event.not_before_ms);
            task_lanes.push(event.lane.clone());
        }
    }
    let any_tasks = !task_ids.is_empty();
    sqlx::query(
        "WITH r AS (
             INSERT INTO hookgate_receipts (id, provider, status, search_ids, receipt, body)
             VALUES ($1, $2, 'accepted', $3, $4, $5)
         ), e AS (
             INSERT INTO hookgate_envelopes (id, receipt_id, envelope)
             SELECT i, $1, j FROM UNNEST($6::text[], $7::bytea[]) AS x(i, j)
         )
         INSERT INTO hookgate_tasks (envelope_id, sink, receipt_id, status, attempts,
             round_attempts, created_at_ms, round_started_ms, next_attempt_ms, last_error, lane,
             lane_key)
         SELECT i, s, $1, 0, 0, 0, $8, $8, n, NULL, l,
             CASE WHEN l = '\\x'::bytea THEN NULL
                  ELSE convert_to(s, 'UTF8') || '\\x00'::bytea || l END
         FROM UNNEST($9::text[], $10::text[], $11::bigint[], $12::bytea[]) AS t(i, s, n, l)",
    )
    .bind(&receipt.id)
    .bind(&receipt.provider)
    .bind(search)
    .bind(encode(&receipt)?)
    .bind(new.body.to_vec())
    .bind(&receipt.envelope_ids)
    .bind(
        fresh
            .iter()
            .map(|i| new.events[*i].json.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(now_ms)
    .bind(task_ids)
    .bind(task_sinks)
    .bind(task_due)
    .bind(task_lanes)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok((Commit::Stored(outcomes), any_tasks))
}

/// Per-object order: a task of a lane may be handed out only when no older task of its lane is
/// pending and no other task of its lane is leased (one delivery in flight per object, even
/// when a redelivery made an older task pending again). `now` is the placeholder of the time.
fn lane_head(now: &str) -> String {
    format!(
        "(c.lane_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM hookgate_tasks o
            WHERE o.lane_key = c.lane_key AND o.status = 0
              AND (o.seq < c.seq OR (o.seq <> c.seq AND o.leased_until > {now}))))"
    )
}

/// The end of a take: lease the `picked` tasks (of sink `$1`) until `until` with a new token,
/// and return them with their envelopes, oldest first.
fn lease_picked(until: &str) -> String {
    format!(
        ", leased AS (
             UPDATE hookgate_tasks t
             SET leased_until = {until}, lease_token = t.lease_token + 1
             FROM picked WHERE t.sink = $1 AND t.envelope_id = picked.envelope_id
             RETURNING t.*
         )
         SELECT leased.*, e.envelope FROM leased
         LEFT JOIN hookgate_envelopes e ON e.id = leased.envelope_id
         ORDER BY leased.seq"
    )
}

impl TaskQueue for PgStore {
    fn take_due(&self, sink: String, now_ms: i64, limit: usize) -> StoreFuture<Due> {
        self.run(move |shared| async move {
            let until = now_ms.saturating_add(shared.lease_ms);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let taken = sqlx::query(AssertSqlSafe(format!(
                "WITH picked AS (
                     SELECT c.envelope_id FROM hookgate_tasks c
                     WHERE c.sink = $1 AND c.status = 0
                       AND c.next_attempt_ms <= $2
                       AND coalesce(c.leased_until, 0) <= $2
                       AND {head}
                     ORDER BY c.seq
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED
                 ) {lease}",
                head = lane_head("$2"),
                lease = lease_picked("$3")
            )))
            .bind(&sink)
            .bind(now_ms)
            .bind(until)
            .bind(limit)
            .fetch_all(&shared.pool)
            .await
            .map_err(db_err)?;
            let tasks = taken.iter().map(due_from).collect::<Result<Vec<_>, _>>()?;
            shared.leased(&taken)?;
            let taken_ids: Vec<String> = tasks.iter().map(|t| t.task.envelope_id.clone()).collect();
            // The queue depth, and when the next lane head not taken now can be taken: its
            // due time or the end of its lease, whichever is later. When the limit was
            // reached, "now" (the limit may have left due tasks behind).
            let full = i64::try_from(tasks.len()).unwrap_or(i64::MAX) >= limit;
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT
                   (SELECT count(*) FROM (SELECT 1 FROM hookgate_tasks
                      WHERE sink = $1 AND status = 0 LIMIT {PENDING_COUNT_LIMIT}) p) AS pending,
                   CASE WHEN $4 THEN $2 ELSE least(
                     (SELECT c.next_attempt_ms FROM hookgate_tasks c
                      WHERE c.sink = $1 AND c.status = 0 AND c.next_attempt_ms > $2
                        AND coalesce(c.leased_until, 0) <= c.next_attempt_ms
                        AND c.envelope_id <> ALL($3) AND {head}
                      ORDER BY c.next_attempt_ms LIMIT 1),
                     (SELECT min(c.leased_until) FROM hookgate_tasks c
                      WHERE c.sink = $1 AND c.status = 0 AND c.leased_until > $2
                        AND c.leased_until > coalesce(c.next_attempt_ms, 0)
                        AND c.envelope_id <> ALL($3) AND {head})
                   ) END AS next_due",
                head = lane_head("$2")
            )))
            .bind(&sink)
            .bind(now_ms)
            .bind(&taken_ids)
            .bind(full)
            .fetch_one(&shared.pool)
            .await
            .map_err(db_err)?;
            let pending: i64 = row.try_get("pending").map_err(db_err)?;
            let next_due_ms: Option<i64> = row.try_get("next_due").map_err(db_err)?;
            Ok(Due {
                tasks,
                next_due_ms,
                pending: usize::try_from(pending).unwrap_or(0),
            })
        })
    }

    fn take(
        &self,
        sink: String,
        envelope_ids: Vec<String>,
        now_ms: i64,
    ) -> StoreFuture<Vec<DueTask>> {
        self.run(move |shared| async move {
            let until = now_ms.saturating_add(shared.lease_ms);
            let rows = sqlx::query(AssertSqlSafe(format!(
                "WITH picked AS (
                     SELECT c.envelope_id FROM hookgate_tasks c
                     WHERE c.sink = $1 AND c.envelope_id = ANY($2) AND c.status = 0
                       AND coalesce(c.leased_until, 0) <= $3
                       AND {head}
                     FOR UPDATE SKIP LOCKED
                 ) {lease}",
                head = lane_head("$3"),
                lease = lease_picked("$4")
            )))
            .bind(&sink)
            .bind(&envelope_ids)
            .bind(now_ms)
            .bind(until)
            .fetch_all(&shared.pool)
            .await
            .map_err(db_err)?;
            let mut out = rows.iter().map(due_from).collect::<Result<Vec<_>, _>>()?;
            shared.leased(&rows)?;
            // In the order asked for.
            out.sort_by_key(|t| envelope_ids.iter().position(|id| *id == t.task.envelope_id));
            Ok(out)
        })
    }

    fn record_attempts(&self, done: Vec<(TaskRecord, AttemptRecord)>) -> StoreFuture<()> {
        self.run(move |shared| async move {
            if done.is_empty() {
                return Ok(());
            }
            let tokens: Vec<Option<i64>> = {
                let leases = shared.leases.lock().unwrap_or_else(|e| e.into_inner());
                done.iter()
                    .map(|(t, _)| {
                        leases
                            .get(&(t.envelope_id.clone(), t.sink.clone()))
                            .copied()
                    })
                    .collect()
            };
            let mut ids = Vec::with_capacity(done.len());
            let mut sinks = Vec::with_capacity(done.len());
            let mut statuses = Vec::with_capacity(done.len());
            let mut attempts = Vec::with_capacity(done.len());
            let mut rounds = Vec::with_capacity(done.len());
            let mut started = Vec::with_capacity(done.len());
            let mut next = Vec::with_capacity(done.len());
            let mut has_next = Vec::with_capacity(done.len());
            let mut errors = Vec::with_capacity(done.len());
            let mut has_error = Vec::with_capacity(done.len());
            let mut numbers = Vec::with_capacity(done.len());
            let mut records = Vec::with_capacity(done.len());
            for (task, attempt) in &done {
                ids.push(task.envelope_id.clone());
                sinks.push(task.sink.clone());
                statuses.push(status_code(task.status));
                attempts.push(i32::try_from(task.attempts).unwrap_or(i32::MAX));
                rounds.push(i32::try_from(task.round_attempts).unwrap_or(i32::MAX));
                started.push(task.round_started_ms);
                // A pending task always has a due time (the queue's index needs one).
                next.push(task.next_attempt_ms.unwrap_or(0));
                has_next.push(task.next_attempt_ms.is_some() || task.status == TaskStatus::Pending);
                errors.push(
                    task.last_error
                        .as_deref()
                        .map(text_safe)
                        .unwrap_or_default(),
                );
                has_error.push(task.last_error.is_some());
                numbers.push(i32::try_from(attempt.number).unwrap_or(i32::MAX));
                records.push(encode(attempt)?);
            }
            let has_token: Vec<bool> = tokens.iter().map(Option::is_some).collect();
            let tokens: Vec<i64> = tokens.iter().map(|t| t.unwrap_or(0)).collect();
            // One statement, so one transaction: the tasks' new states and their attempts,
            // for the tasks that still carry this worker's lease.
            let updated: i64 = sqlx::query_scalar(
                "WITH input AS (
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::smallint[], $4::int[],
                         $5::int[], $6::bigint[], $7::bigint[], $8::bool[], $9::text[],
                         $10::bool[], $11::int[], $12::bytea[], $13::bigint[], $14::bool[])
                     AS x(id, sink, status, attempts, rounds, started, next, has_next,
                          error, has_error, number, record, token, has_token)
                 ), updated AS (
                     UPDATE hookgate_tasks t SET
                         status = input.status, attempts = input.attempts,
                         round_attempts = input.rounds, round_started_ms = input.started,
                         next_attempt_ms = CASE WHEN input.has_next THEN input.next END,
                         last_error = CASE WHEN input.has_error THEN input.error END,
                         leased_until = NULL
                     FROM input WHERE t.envelope_id = input.id AND t.sink = input.sink
                         AND (NOT input.has_token OR t.lease_token = input.token)
                     RETURNING t.envelope_id, t.sink
                 ), attempts AS (
                     INSERT INTO hookgate_attempts (envelope_id, sink, number, attempt)
                     SELECT input.id, input.sink, input.number, input.record
                     FROM input JOIN updated ON updated.envelope_id = input.id
                         AND updated.sink = input.sink
                     ON CONFLICT (envelope_id, sink, number) DO UPDATE
                         SET attempt = EXCLUDED.attempt
                 )
                 SELECT count(*) FROM updated",
            )
            .bind(ids)
            .bind(sinks)
            .bind(statuses)
            .bind(attempts)
            .bind(rounds)
            .bind(started)
            .bind(next)
            .bind(has_next)
            .bind(errors)
            .bind(has_error)
            .bind(numbers)
            .bind(records)
            .bind(tokens)
            .bind(has_token)
            .fetch_one(&shared.pool)
            .await
            .map_err(db_err)?;
            {
                let mut leases = shared.leases.lock().unwrap_or_else(|e| e.into_inner());
                for (task, _) in &done {
                    leases.remove(&(task.envelope_id.clone(), task.sink.clone()));
                }
            }
            let stale = done
                .len()
                .saturating_sub(usize::try_from(updated).unwrap_or(0));
            if stale > 0 {
                warn!(
                    stale,
                    "Delivery results came back after their lease had passed the task on (or a \
                     redelivery reset it); they were not recorded. Raise storage.lease_secs \
                     above the sinks' timeouts if this repeats."
                );
            }
            Ok(())
        })
    }

    fn redeliver(
        &self,
        envelope_id: String,
        sink: Option<String>,
        now_ms: i64,
    ) -> StoreFuture<usize> {
        self.run(move |shared| async move {
            let done = sqlx::query(
                // A new lease token: an attempt in flight now does not undo the redelivery.
                "UPDATE hookgate_tasks SET status = 0, round_attempts = 0,
                     round_started_ms = $3, next_attempt_ms = $3, lease_token = lease_token + 1
                 WHERE envelope_id = $1 AND ($2::text IS NULL OR sink = $2)",
            )
            .bind(&envelope_id)
            .bind(&sink)
            .bind(now_ms)
            .execute(&shared.pool)
            .await
            .map_err(db_err)?;
            let count = usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
            if count > 0 {
                shared.woke();
            }
            Ok(count)
        })
    }

    fn pending_count(&self, sink: String) -> StoreFuture<usize> {
        self.run(move |shared| async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM hookgate_tasks WHERE sink = $1 AND status = 0",
            )
            .bind(&sink)
            .fetch_one(&shared.pool)
            .await
            .map_err(db_err)?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn backlog(&self, sink: String) -> StoreFuture<Backlog> {
        self.run(move |shared| async move {
            // Both read the partial `hookgate_tasks_pending` index (sink, seq).
            let (n, oldest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT count(*), (SELECT created_at_ms FROM hookgate_tasks \
                   WHERE sink = $1 AND status = 0 ORDER BY seq LIMIT 1) \
                 FROM hookgate_tasks WHERE sink = $1 AND status = 0",
            )
            .bind(&sink)
            .fetch_one(&shared.pool)
            .await
            .map_err(db_err)?;
            Ok(Backlog {
                pending: usize::try_from(n).unwrap_or(0),
                oldest_pending_ms: oldest,
            })
        })
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.shared.wakeups.subscribe()
    }
}

/// The tasks of these receipts' envelopes, grouped by receipt, each in envelope then sink order.
async fn tasks_of_receipts(
    shared: &Shared,
    receipts: &[Receipt],
) -> Result<HashMap<String, Vec<TaskRecord>>, StoreError> {
    let ids: Vec<String> = receipts
        .iter()
        .filter(|r| !r.envelope_ids.is_empty())
        .map(|r| r.id.clone())
        .collect();
    let mut out: HashMap<String, Vec<TaskRecord>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT receipt_id, {TASK_COLUMNS} FROM hookgate_tasks WHERE receipt_id = ANY($1)
         ORDER BY receipt_id, envelope_id, sink"
    )))
    .bind(&ids)
    .fetch_all(&shared.pool)
    .await
    .map_err(db_err)?;
    for row in &rows {
        let receipt: String = row.try_get("receipt_id").map_err(db_err)?;
        out.entry(receipt).or_default().push(task_from(row)?);
    }
    for receipt in receipts {
        if let Some(tasks) = out.get_mut(&receipt.id) {
            tasks.sort_by_key(|t| {
                (
                    receipt
                        .envelope_ids
                        .iter()
                        .position(|id| *id == t.envelope_id),
                    t.sink.clone(),
                )
            });
        }
    }
    Ok(out)
}

impl EventBrowser for PgStore {
    fn events(&self, query: EventQuery) -> StoreFuture<EventPage> {
        self.run(move |shared| async move {
            let limit = query.limit.max(1);
            let mut upper = query.before.clone();
            if let Some(until) = query.until_ms {
                let bound = time_bound(until);
                upper = Some(match upper {
                    Some(u) if u < bound => u,
                    _ => bound,
                });
            }
            let lower = query.since_ms.map(time_bound);
            // The filters the indexes answer go to the database; the rest (type glob, task
            // status) are checked here, over at most BROWSE_SCAN_LIMIT receipts per page.
            let mut sql = String::from("SELECT receipt FROM hookgate_receipts WHERE true");
            let mut arg = 0;
            let mut next_arg = || {
                arg += 1;
                arg
            };
            if query.provider.is_some() {
                sql.push_str(&format!(" AND provider = ${}", next_arg()));
            }
            if query.event_id.is_some() {
                sql.push_str(&format!(" AND search_ids @> ARRAY[${}::bytea]", next_arg()));
            }
            match query.status {
                Some(EventStatus::Accepted) => sql.push_str(" AND status = 'accepted'"),
                Some(EventStatus::Unprocessable) => sql.push_str(" AND status = 'unprocessable'"),
                _ => {}
            }
            if lower.is_some() {
                sql.push_str(&format!(" AND id >= ${}", next_arg()));
            }
            let upper_arg = next_arg();
            sql.push_str(&format!(
                " AND (${upper_arg}::text IS NULL OR id < ${upper_arg}) ORDER BY id DESC LIMIT ${}",
                next_arg()
            ));
            let mut page = EventPage::default();
            let mut cursor = upper;
            let mut scanned = 0;
            loop {
                let chunk =
                    BROWSE_CHUNK.min(i64::try_from(BROWSE_SCAN_LIMIT - scanned).unwrap_or(0));
                let mut q = sqlx::query_scalar::<_, Vec<u8>>(AssertSqlSafe(sql.clone()));
                if let Some(p) = &query.provider {
                    q = q.bind(p.clone());
                }
                if let Some(e) = &query.event_id {
                    q = q.bind(e.as_bytes().to_vec());
                }
                if let Some(l) = &lower {
                    q = q.bind(l.clone());
                }
                let rows = q
                    .bind(cursor.clone())
                    .bind(chunk)
                    .fetch_all(&shared.pool)
                    .await
                    .map_err(db_err)?;
                let receipts = rows
                    .iter()
                    .map(|json| read_json::<Receipt>("receipt", json))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut tasks = tasks_of_receipts(&shared, &receipts).await?;
                let exhausted = i64::try_from(receipts.len()).unwrap_or(0) < chunk;
                for receipt in receipts {
                    scanned += 1;
                    cursor = Some(receipt.id.clone());
                    let summary = EventSummary {
                        tasks: tasks.remove(&receipt.id).unwrap_or_default(),
                        receipt,
                    };
                    if query.matches(&summary) {
                        page.events.push(summary);
                        if page.events.len() >= limit {
                            break;
                        }
                    }
                }
                if page.events.len() >= limit || scanned >= BROWSE_SCAN_LIMIT {
                    page.next = cursor;
                    break;
                }
                if exhausted {
                    break;
                }
            }
            Ok(page)
        })
    }

    fn receipt(&self, id: String) -> StoreFuture<Option<(Receipt, bytes::Bytes)>> {
        self.run(move |shared| async move {
            let row = sqlx::query("SELECT receipt, body FROM hookgate_receipts WHERE id = $1")
                .bind(&id)
                .fetch_optional(&shared.pool)
                .await
                .map_err(db_err)?;
            let Some(row) = row else {
                return Ok(None);
            };
            let json: Vec<u8> = row.try_get("receipt").map_err(db_err)?;
            let body: Vec<u8> = row.try_get("body").map_err(db_err)?;
            Ok(Some((
                read_json("receipt", &json)?,
                bytes::Bytes::from(body),
            )))
        })
    }

    fn envelope(&self, id: String) -> StoreFuture<Option<Envelope>> {
        self.run(move |shared| async move {
            let json: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT envelope FROM hookgate_envelopes WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&shared.pool)
                    .await
                    .map_err(db_err)?;
            json.map(|j| read_json("envelope", &j)).transpose()
        })
    }

    fn tasks(&self, envelope_id: String) -> StoreFuture<Vec<TaskRecord>> {
        self.run(move |shared| async move {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM hookgate_tasks WHERE envelope_id = $1 ORDER BY sink"
            )))
            .bind(&envelope_id)
            .fetch_all(&shared.pool)
            .await
            .map_err(db_err)?
            .iter()
            .map(task_from)
            .collect()
        })
    }

    fn attempts(&self, envelope_id: String, sink: String) -> StoreFuture<Vec<AttemptRecord>> {
        self.run(move |shared| async move {
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT attempt FROM hookgate_attempts WHERE envelope_id = $1 AND sink = $2
                 ORDER BY number",
            )
            .bind(&envelope_id)
            .bind(&sink)
            .fetch_all(&shared.pool)
            .await
            .map_err(db_err)?;
            rows.iter().map(|json| read_json("attempt", json)).collect()
        })
    }

    fn dead_letters(&self, sink: Option<String>, limit: usize) -> StoreFuture<Vec<TaskRecord>> {
        self.run(move |shared| async move {
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM hookgate_tasks
                 WHERE status = 2 AND ($1::text IS NULL OR sink = $1)
                 ORDER BY envelope_id, sink LIMIT $2"
            )))
            .bind(&sink)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&shared.pool)
            .await
            .map_err(db_err)?
            .iter()
            .map(task_from)
            .collect()
        })
    }
}

impl Controls for PgStore {
    fn set_paused(
        &self,
        target: PauseTarget,
        name: String,
        paused: bool,
        now_ms: i64,
    ) -> StoreFuture<bool> {
        self.run(move |shared| async move {
            let query = if paused {
                sqlx::query(
                    "INSERT INTO hookgate_pauses (target, name, paused_at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (target, name) DO NOTHING",
                )
                .bind(target.as_str())
                .bind(&name)
                .bind(now_ms)
            } else {
                sqlx::query("DELETE FROM hookgate_pauses WHERE target = $1 AND name = $2")
                    .bind(target.as_str())
                    .bind(&name)
            };
            let changed = query
                .execute(&shared.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
            Ok(changed > 0)
        })
    }

    fn paused(&self) -> StoreFuture<Vec<Pause>> {
        self.run(move |shared| async move {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT target, name, paused_at_ms FROM hookgate_pauses ORDER BY target, name",
            )
            .fetch_all(&shared.pool)
            .await
            .map_err(db_err)?;
            Ok(rows
                .into_iter()
                .filter_map(|(target, name, paused_at_ms)| {
                    let target = match target.as_str() {
                        "instance" => PauseTarget::Instance,
                        "sink" => PauseTarget::Sink,
                        // Written by a newer hookgate: not ours to interpret.
                        _ => return None,
                    };
                    Some(Pause {
                        target,
                        name,
                        paused_at_ms,
                    })
                })
                .collect())
        })
    }
}

impl Maintenance for PgStore {
    fn expire_claims(&self, now_secs: u64) -> StoreFuture<usize> {
        self.run(move |shared| async move {
            let now = i64::try_from(now_secs).unwrap_or(i64::MAX);
            let mut expired = 0;
            loop {
                let mut tx = shared.pool.begin().await.map_err(db_err)?;
                // One replica at a time; the others skip this round.
                let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(LOCK_EXPIRE)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db_err)?;
                if !mine {
                    return Ok(expired);
                }
                let deleted = sqlx::query(
                    // The outer condition again: a claim taken over meanwhile is re-checked.
                    "DELETE FROM hookgate_claims WHERE expires_at <= $1 AND key IN (
                         SELECT key FROM hookgate_claims WHERE expires_at <= $1 LIMIT $2)",
                )
                .bind(now)
                .bind(EXPIRE_BATCH)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?
                .rows_affected();
                tx.commit().await.map_err(db_err)?;
                expired += usize::try_from(deleted).unwrap_or(0);
                if i64::try_from(deleted).unwrap_or(0) < EXPIRE_BATCH {
                    return Ok(expired);
                }
            }
        })
    }

    fn purge_before(&self, cutoff_ms: i64, limit: usize) -> StoreFuture<usize> {
        self.run(move |shared| async move {
            let mut tx = shared.pool.begin().await.map_err(db_err)?;
            // A task redelivered while this runs makes the round fail (and retry next time)
            // instead of being deleted under the redelivery.
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .await
                .map_err(db_err)?;
            let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(LOCK_PURGE)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
            if !mine {
                return Ok(0);
            }
            let purged = sqlx::query(
                "WITH victims AS (
                     SELECT r.id FROM hookgate_receipts r
                     WHERE r.id < $1 AND NOT EXISTS (
                         SELECT 1 FROM hookgate_tasks t WHERE t.receipt_id = r.id AND t.status = 0)
                     ORDER BY r.id LIMIT $2
                     FOR UPDATE SKIP LOCKED
                 ), attempts AS (
                     DELETE FROM hookgate_attempts a USING hookgate_envelopes e, victims v
                     WHERE e.receipt_id = v.id AND a.envelope_id = e.id
                 ), tasks AS (
                     DELETE FROM hookgate_tasks WHERE receipt_id IN (SELECT id FROM victims)
                 ), envelopes AS (
                     DELETE FROM hookgate_envelopes WHERE receipt_id IN (SELECT id FROM victims)
                 )
                 DELETE FROM hookgate_receipts WHERE id IN (SELECT id FROM victims)",
            )
            .bind(time_bound(cutoff_ms))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            tx.commit().await.map_err(db_err)?;
            Ok(usize::try_from(purged).unwrap_or(0))
        })
    }

    fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.shared.stop.send(true);
        // Every write resolved only after its COMMIT: nothing is left to flush. Close the
        // connections when a runtime is there to do it (dropping the pool also closes them).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.shared.pool.clone();
            let listen_pool = self.shared.listen_pool.clone();
            runtime.spawn(async move { tokio::join!(pool.close(), listen_pool.close()) });
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let _ = self.shared.stop.send(true);
    }
}
