//! Spawns the real gateway on port 0 with a temporary store, and signs requests for it.
#![allow(dead_code)]

pub mod binary;
pub mod browser;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use hookgate::clock::ManualClock;
use hookgate::startup::{Application, Dependencies};
use hookgate::store::Store;
use serde_json::Value;
use tempfile::TempDir;

pub const GENERIC_SECRET: &str = "test-generic-secret";

/// Where the committed provider definitions are.
pub fn providers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("providers")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub dir: Arc<TempDir>,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    handle: ServerHandle,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A config file: `[server]`/`[storage]` pointing at the temp dir, a file sink, plus `extra`.
pub fn config_text(dir: &Path, server_extra: &str, extra: &str) -> String {
    format!(
        r#"
providers_dir = "{providers}"
[server]
bind = "127.0.0.1:0"
workers = 2
{server_extra}
[storage]
path = "{store}"
[log]
level = "warn"

{extra}

[[sinks]]
name = "audit"
kind = "file"
path = "{sink}"
"#,
        providers = providers_dir().display(),
        store = dir.join("store").display(),
        sink = dir.join("envelopes.jsonl").display(),
    )
}

#[derive(Default)]
pub struct SpawnOptions {
    /// Start the clock here instead of at the real time.
    pub clock_unix: Option<i64>,
    /// Replace the embedded store.
    pub store: Option<Arc<dyn Store>>,
    /// Extra lines for `[server]`.
    pub server_extra: String,
    /// In-process sync handlers.
    pub handlers: Vec<hookgate::dispatch::HandlerRoute>,
    /// Let time pass (retries are due at real times); otherwise the clock stands still.
    pub moving_clock: bool,
    /// Listen here instead of `127.0.0.1:0` (the port must stay 0).
    pub bind: Option<String>,
}

pub async fn spawn(extra: &str) -> TestApp {
    spawn_with(extra, SpawnOptions::default()).await
}

pub async fn spawn_with(extra: &str, options: SpawnOptions) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    spawn_in(dir, extra, options).await
}

/// Starts a gateway whose store and sink live in `dir` (reuse `dir` to restart).
pub async fn spawn_in(dir: Arc<TempDir>, extra: &str, options: SpawnOptions) -> TestApp {
    let mut text = config_text(dir.path(), &options.server_extra, extra);
    if let Some(bind) = &options.bind {
        text = text.replace("bind = \"127.0.0.1:0\"", &format!("bind = \"{bind}\""));
    }
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = hookgate::config::load(&path).expect("test config is valid");
    let clock = Arc::new(ManualClock::at_unix(
        options
            .clock_unix
            .unwrap_or_else(|| chrono::Utc::now().timestamp()),
    ));
    let app_clock: Arc<dyn hookgate::clock::Clock> = if options.moving_clock {
        Arc::new(hookgate::clock::SystemClock)
    } else {
        clock.clone()
    };
    let app = Application::build_with(
        loaded,
        Dependencies {
            clock: Some(app_clock),
            store: options.store,
            handlers: options.handlers,
        },
    )
    .await
    .expect("app builds");
    let port = app.port();
    let handle = app.handle();
    let join = tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        dir,
        clock,
        client: reqwest::Client::new(),
        handle,
        join,
    }
}

impl TestApp {
    /// Graceful stop; returns the temp dir so the same store can be opened again.
    pub async fn stop(self) -> Arc<TempDir> {
        self.handle.stop(true).await;
        self.join.await.unwrap().unwrap();
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post(
        &self,
        provider: &str,
        headers: &[(String, String)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(&format!("/webhooks/{provider}")));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.body(body).send().await.unwrap()
    }

    /// Posts a generic event signed with `secret` at the app's clock time.
    pub async fn post_generic(
        &self,
        provider: &str,
        secret: &str,
        event_id: &str,
        body: &str,
    ) -> reqwest::Response {
        let ts = self.clock_unix();
        let headers = generic_headers(secret, event_id, ts, body.as_bytes());
        self.post(provider, &headers, body.to_owned()).await
    }

    /// An admin API request with the bearer `token`.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub fn clock_unix(&self) -> i64 {
        use hookgate::clock::Clock;
        self.clock.unix_secs()
    }

    pub fn sink_path(&self) -> PathBuf {
        self.dir.path().join("envelopes.jsonl")
    }

    /// Waits until the file sink holds at least `n` envelopes, then returns them all.
    pub async fn sink_envelopes(&self, n: usize) -> Vec<Value> {
        wait_for_lines(&self.sink_path(), n).await
    }
}

pub async fn wait_for_lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // The sink may be writing right now: only whole lines count.
        let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
        let lines: Vec<Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn hmac_hex(secret: &str, message: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

pub fn generic_headers(
    secret: &str,
    event_id: &str,
    ts: i64,
    body: &[u8],
) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Webhook-ID".into(), event_id.into()),
        ("X-Webhook-Timestamp".into(), ts.to_string()),
        (
            "X-Webhook-Signature".into(),
            format!("sha256={}", hmac_hex(secret, body)),
        ),
    ]
}

/// `request` with the generic kind's signature headers over `body` (and the body).
pub fn signed_generic(
    request: reqwest::RequestBuilder,
    secret: &str,
    event_id: &str,
    ts: i64,
    body: String,
) -> reqwest::RequestBuilder {
    generic_headers(secret, event_id, ts, body.as_bytes())
        .into_iter()
        .fold(request, |request, (k, v)| request.header(k, v))
        .body(body)
}

pub fn generic_body(event_id: &str, event_type: &str, object_id: &str) -> String {
    format!(
        r#"{{"id":"{event_id}","type":"{event_type}","created_at":"2024-01-15T10:30:00Z","data":{{"object":{{"id":"{object_id}","title":"t"}}}}}}"#
    )
}

/// `[providers.<kind>]` tables for fixture sets, each with its fixture instance's settings.
pub fn fixture_instances(sets: &[hookgate::fixture::FixtureSet]) -> String {
    let mut providers = toml::Table::new();
    for set in sets {
        providers.insert(
            set.kind.clone(),
            toml::Value::Table(set.file.instance.clone()),
        );
    }
    let mut root = toml::Table::new();
    root.insert("providers".into(), toml::Value::Table(providers));
    toml::to_string(&root).unwrap()
}

/// The JSON error code of a response.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
