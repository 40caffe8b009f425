//! What survives: restarts (graceful and SIGKILL), claim expiry, and storage failure answered
//! with 503 so the provider retries.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::*;
use futures_util::future::BoxFuture;
use hookgate::envelope::Envelope;
use hookgate::store::{
    AttemptRecord, Commit, DedupKey, DeliveryRecord, NewEvent, PendingTask, Store, StoreError,
    TaskRecord,
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

/// A store whose disk has gone: every write fails.
struct BrokenStore(tokio::sync::watch::Sender<u64>);

impl Store for BrokenStore {
    fn find_duplicate(
        &self,
        _: &DedupKey,
    ) -> BoxFuture<'static, Result<Option<String>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn commit(&self, _: NewEvent) -> BoxFuture<'static, Result<Commit, StoreError>> {
        Box::pin(async { Err(StoreError::Io("disk unplugged".into())) })
    }
    fn keep_unprocessable(
        &self,
        _: DeliveryRecord,
        _: bytes::Bytes,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::Io("disk unplugged".into())) })
    }
    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::Io("disk unplugged".into())) })
    }
    fn pending_tasks(&self, _: &str, _: usize) -> Result<Vec<PendingTask>, StoreError> {
        Err(StoreError::Io("disk unplugged".into()))
    }
    fn pending_count(&self, _: &str) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn record_attempts(&self, _: &[(TaskRecord, AttemptRecord)]) -> Result<(), StoreError> {
        Err(StoreError::Io("disk unplugged".into()))
    }
    fn tasks(&self, _: &str) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn attempts(&self, _: &str, _: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn recent_deliveries(
        &self,
        _: Option<&str>,
        _: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn dead_letters(&self, _: Option<&str>, _: usize) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn redeliver(&self, _: &str, _: Option<&str>, _: i64) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn expire_claims(&self, _: u64) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn purge_before(&self, _: i64, _: usize) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
    fn delivery(&self, _: &str) -> Result<Option<(DeliveryRecord, Vec<u8>)>, StoreError> {
        Ok(None)
    }
    fn envelope(&self, _: &str) -> Result<Option<Envelope>, StoreError> {
        Ok(None)
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
    std::thread::spawn(move || for _ in lines {});
    Gateway { child, port }
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
