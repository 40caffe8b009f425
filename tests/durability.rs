//! What survives: restarts (graceful and SIGKILL), claim expiry, and storage failure answered
//! with 503 so the provider retries.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::*;
use hookgate::config::StorageSettings;
use hookgate::envelope::Envelope;
use hookgate::store::log::LogStore;
use hookgate::store::{
    AttemptRecord, Commit, Controls, DedupKey, Due, DueTask, EventBrowser, EventPage, EventQuery,
    IngestStore, Maintenance, NewReceipt, Pause, PauseTarget, Receipt, StoreError, StoreFuture,
    TaskQueue, TaskRecord,
};
use serde_json::Value;

const DEMO: &str = r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
"#;

async fn post_event(app: &TestApp, id: &str) -> Value {
    let body = generic_body(id, "post.created", "p1");
    let response = app.post_generic("demo", GENERIC_SECRET, id, &body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn after_a_restart_duplicates_are_still_detected_and_envelopes_still_delivered() {
    let app = spawn(DEMO).await;
    let first = post_event(&app, "evt_before").await;
    assert_eq!(first["status"], "accepted");
    let dir = app.stop().await;

    let app = spawn_in(dir, DEMO, SpawnOptions::default()).await;
    let again = post_event(&app, "evt_before").await;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["id"], first["id"]);
    let fresh = post_event(&app, "evt_after").await;
    assert_eq!(fresh["status"], "accepted");
    let envelopes = app.sink_envelopes(2).await;
    let ids: Vec<&str> = envelopes
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["evt_before", "evt_after"]);
}

#[tokio::test]
async fn an_event_id_is_accepted_again_once_its_claim_has_expired() {
    let app = spawn(DEMO).await;
    // The default TTL is 7 days; move the clock past it.
    assert_eq!(post_event(&app, "evt_ttl").await["status"], "accepted");
    app.clock.advance_secs(3600);
    assert_eq!(post_event(&app, "evt_ttl").await["status"], "duplicate");
    app.clock.advance_secs(7 * 24 * 3600);
    assert_eq!(post_event(&app, "evt_ttl").await["status"], "accepted");
}

/// A store whose disk has gone: every write and read fails.
struct BrokenStore(tokio::sync::watch::Sender<u64>);

fn unplugged<T: Send + 'static>() -> StoreFuture<T> {
    Box::pin(async { Err(StoreError::Io("disk unplugged".into())) })
}

impl IngestStore for BrokenStore {
    fn find_duplicate(&self, _: DedupKey) -> StoreFuture<Option<String>> {
        Box::pin(async { Ok(None) })
    }
    fn commit(&self, _: NewReceipt) -> StoreFuture<Commit> {
        unplugged()
    }
    fn keep_unprocessable(&self, _: Receipt, _: bytes::Bytes) -> StoreFuture<()> {
        unplugged()
    }
    fn probe(&self) -> StoreFuture<()> {
        unplugged()
    }
}

impl TaskQueue for BrokenStore {
    fn take_due(&self, _: String, _: i64, _: usize) -> StoreFuture<Due> {
        unplugged()
    }
    fn take(&self, _: String, _: Vec<String>, _: i64) -> StoreFuture<Vec<DueTask>> {
        unplugged()
    }
    fn record_attempts(&self, _: Vec<(TaskRecord, AttemptRecord)>) -> StoreFuture<()> {
        unplugged()
    }
    fn redeliver(&self, _: String, _: Option<String>, _: i64) -> StoreFuture<usize> {
        unplugged()
    }
    fn pending_count(&self, _: String) -> StoreFuture<usize> {
        unplugged()
    }
    fn backlog(&self, _: String) -> StoreFuture<hookgate::store::Backlog> {
        unplugged()
    }
    fn wakeups(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

impl EventBrowser for BrokenStore {
    fn events(&self, _: EventQuery) -> StoreFuture<EventPage> {
        unplugged()
    }
    fn receipt(&self, _: String) -> StoreFuture<Option<(Receipt, bytes::Bytes)>> {
        unplugged()
    }
    fn envelope(&self, _: String) -> StoreFuture<Option<Envelope>> {
        unplugged()
    }
    fn tasks(&self, _: String) -> StoreFuture<Vec<TaskRecord>> {
        unplugged()
    }
    fn attempts(&self, _: String, _: String) -> StoreFuture<Vec<AttemptRecord>> {
        unplugged()
    }
    fn dead_letters(&self, _: Option<String>, _: usize) -> StoreFuture<Vec<TaskRecord>> {
        unplugged()
    }
}

impl Controls for BrokenStore {
    fn set_paused(&self, _: PauseTarget, _: String, _: bool, _: i64) -> StoreFuture<bool> {
        unplugged()
    }
    fn paused(&self) -> StoreFuture<Vec<Pause>> {
        unplugged()
    }
}

impl Maintenance for BrokenStore {
    fn expire_claims(&self, _: u64) -> StoreFuture<usize> {
        unplugged()
    }
    fn purge_before(&self, _: i64, _: usize) -> StoreFuture<usize> {
        unplugged()
    }
    fn close(&self) {}
}

#[tokio::test]
async fn storage_failure_is_503_with_retry_after_and_not_ready() {
    let app = spawn_with(
        DEMO,
        SpawnOptions {
            store: Some(Arc::new(BrokenStore(tokio::sync::watch::Sender::new(0)))),
            ..Default::default()
        },
    )
    .await;
    let body = generic_body("evt_503", "post.created", "p1");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_503", &body)
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "storage_unavailable");
    assert!(!answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unplugged"));
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

/// The real binary, killed with SIGKILL in the middle of a load and started again.
struct Gateway {
    child: Child,
    port: u16,
    /// Every log line written after "Listening.".
    logs: Arc<std::sync::Mutex<Vec<String>>>,
}

fn start_binary(dir: &std::path::Path) -> Gateway {
    let config = config_text(dir, "", DEMO)
        .replace("level = \"warn\"", "level = \"info\"\nformat = \"json\"");
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("gateway exited before listening")
            .unwrap();
        let Ok(log) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if log["fields"]["message"] == "Listening." {
            break log["fields"]["port"].as_u64().unwrap() as u16;
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    Gateway { child, port, logs }
}

async fn send(client: &reqwest::Client, port: u16, id: &str) -> Option<String> {
    let body = generic_body(id, "post.created", "p1");
    let now = chrono::Utc::now().timestamp();
    let mut request = client.post(format!("http://127.0.0.1:{port}/webhooks/demo"));
    for (k, v) in generic_headers(GENERIC_SECRET, id, now, body.as_bytes()) {
        request = request.header(k, v);
    }
    let response = request.body(body).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let answer: Value = response.json().await.ok()?;
    answer["status"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn every_event_acknowledged_before_a_sigkill_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_binary(dir.path());
    let client = reqwest::Client::new();
    let port = gateway.port;
    let mut gateway = gateway;

    // 8 concurrent senders; the gateway is killed while they are mid-flight.
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for worker in 0..8 {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..400 {
                let id = format!("evt_kill_{worker}_{i}");
                match send(&client, port, &id).await {
                    Some(status) if status == "accepted" => acknowledged.lock().unwrap().push(id),
                    Some(_) => panic!("unexpected duplicate for {id}"),
                    None => break,
                }
            }
        }));
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if acknowledged.lock().unwrap().len() >= 200 {
            break;
        }
    }
    gateway.child.kill().unwrap(); // SIGKILL
    gateway.child.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged: Vec<String> = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 200);

    let mut gateway = start_binary(dir.path());
    // Everything acknowledged reaches the sink (the outbox resumes after restart)...
    let wanted: HashSet<&str> = acknowledged.iter().map(String::as_str).collect();
    let sink = dir.path().join("envelopes.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let missing = loop {
        let lines = wait_for_lines(&sink, acknowledged.len()).await;
        let seen: HashSet<String> = lines
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        let missing: Vec<&&str> = wanted.iter().filter(|id| !seen.contains(**id)).collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing.len();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(missing, 0, "acknowledged events missing from the sink");
    // ...and every one of them is remembered as a duplicate.
    for id in &acknowledged {
        assert_eq!(
            send(&client, gateway.port, id).await.as_deref(),
            Some("duplicate"),
            "{id}"
        );
    }
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_gateway_within_its_bound_keeping_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = start_binary(dir.path());
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let id = format!("evt_term_{i}");
        assert_eq!(
            send(&client, gateway.port, &id).await.as_deref(),
            Some("accepted")
        );
        acknowledged.push(id);
    }
    let pid = gateway.child.id().to_string();
    let started = std::time::Instant::now();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || gateway.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let mut gateway = start_binary(dir.path());
    for id in &acknowledged {
        assert_eq!(
            send(&client, gateway.port, id).await.as_deref(),
            Some("duplicate")
        );
    }
    let lines = wait_for_lines(&dir.path().join("envelopes.jsonl"), acknowledged.len()).await;
    assert_eq!(lines.len(), acknowledged.len());
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
}

/// A real commit-log store whose "disk" holds every sync until released: the gateway in front of it
/// must not acknowledge, hand out or hang while it is held.
struct HeldDisk {
    store: Arc<LogStore>,
    release: std::sync::mpsc::Sender<()>,
    _dir: tempfile::TempDir,
}

impl HeldDisk {
    fn new(write_timeout_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let settings = StorageSettings {
            path: dir.path().join("held").to_str().unwrap().into(),
            write_timeout_ms,
            ..StorageSettings::default()
        };
        let store = Arc::new(
            LogStore::open(
                &settings,
                Arc::new(hookgate::clock::SystemClock),
                Arc::new(hookgate::metrics::Metrics::new()),
            )
            .unwrap(),
        );
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        store.set_before_sync(Some(Arc::new(move || {
            let _ = held.lock().unwrap().recv();
        })));
        Self {
            store,
            release,
            _dir: dir,
        }
    }

    /// Lets the disk run freely from now on.
    fn release(&self) {
        self.store.set_before_sync(None);
        let _ = self.release.send(());
    }
}

async fn spawn_on(disk: &HeldDisk) -> TestApp {
    spawn_with(
        DEMO,
        SpawnOptions {
            store: Some(disk.store.clone()),
            moving_clock: true,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_is_not_acknowledged_while_the_first_copy_is_not_yet_durable() {
    let disk = HeldDisk::new(10_000);
    let app = Arc::new(spawn_on(&disk).await);
    let first = tokio::spawn({
        let app = app.clone();
        async move { post_event(&app, "evt_gap").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = tokio::spawn({
        let app = app.clone();
        async move { post_event(&app, "evt_gap").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!first.is_finished(), "acknowledged before its sync");
    assert!(
        !second.is_finished(),
        "duplicate acknowledged before the first copy's sync"
    );
    // Nor may the sink have seen it: workers read only what is durable.
    assert!(std::fs::read_to_string(app.sink_path())
        .unwrap_or_default()
        .is_empty());
    disk.release();
    let first = first.await.unwrap();
    let second = second.await.unwrap();
    assert_eq!(first["status"], "accepted");
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(app.sink_envelopes(1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_is_answered_503_within_the_storage_timeout_and_not_ready() {
    let disk = HeldDisk::new(1_000);
    let app = spawn_on(&disk).await;
    let body = generic_body("evt_stall", "post.created", "p1");
    let started = std::time::Instant::now();
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_stall", &body)
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "storage_unavailable");
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "answered within the deadline, not when the client gave up"
    );
    // When the disk moves again the provider's retry succeeds (the first copy was stored).
    disk.release();
    let retry = app
        .post_generic("demo", GENERIC_SECRET, "evt_stall", &body)
        .await;
    assert_eq!(retry.status(), 200);
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// INFO is quiet on the hot path: nothing per accepted or duplicate request; rejections are
/// logged with the client address, and a flood of them is cut to a budget that says how many
/// lines it left out.
#[tokio::test]
async fn info_logs_only_rejections_and_a_flood_of_them_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = start_binary(dir.path());
    let client = reqwest::Client::new();
    for i in 0..20 {
        let id = format!("evt_quiet_{i}");
        assert_eq!(
            send(&client, gateway.port, &id).await.as_deref(),
            Some("accepted")
        );
        assert_eq!(
            send(&client, gateway.port, &id).await.as_deref(),
            Some("duplicate")
        );
    }
    let forge = || async {
        let forged = generic_body("evt_forged", "post.created", "p1");
        let now = chrono::Utc::now().timestamp();
        let mut request = client.post(format!("http://127.0.0.1:{}/webhooks/demo", gateway.port));
        for (k, v) in generic_headers("not-the-secret", "evt_forged", now, forged.as_bytes()) {
            request = request.header(k, v);
        }
        assert_eq!(request.body(forged).send().await.unwrap().status(), 401);
    };
    for _ in 0..400 {
        forge().await;
    }
    // One more after the budget has refilled reports what was left out.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    forge().await;
    let _ = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status();
    let _ = gateway.child.wait();
    let logs = gateway.logs.lock().unwrap().clone();
    assert!(
        !logs.iter().any(|l| l.contains("evt_quiet_")),
        "an acknowledged request was logged at INFO"
    );
    let rejected: Vec<Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "Rejected.")
        .collect();
    assert!(!rejected.is_empty(), "rejections are logged");
    assert!(
        rejected.len() < 200,
        "{} rejection lines for 401 requests",
        rejected.len()
    );
    let first = &rejected[0]["fields"];
    assert_eq!(first["code"], "invalid_signature");
    assert!(first["peer"]
        .as_str()
        .unwrap_or_default()
        .contains("127.0.0.1"));
    assert!(
        rejected
            .iter()
            .any(|l| l["fields"]["suppressed"].as_u64() > Some(0)),
        "the line after the budget says how many were left out"
    );
}
