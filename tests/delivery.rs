//! Delivery to sync handlers over real HTTP: a local receiver that verifies every delivery's
//! Standard Webhooks signature, retries, dead letters and redelivery, filters, the command sink,
//! sync mode, ordering per object, restarts, the admin API, metrics and in-process handlers.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use common::*;
use serde_json::Value;

const SINK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN_TOKEN: &str = "test-admin-token";

/// What the receiver answers next: a queue of statuses, then `otherwise`.
#[derive(Default)]
struct Script {
    queue: VecDeque<u16>,
    otherwise: u16,
    /// Answer 500 for envelopes whose object_id is listed, once each.
    fail_once: Vec<String>,
    /// Answer 500 for object `.0` until an envelope of object `.1` has been delivered.
    fail_until: Option<(String, String)>,
}

#[derive(Default)]
struct ReceiverState {
    script: Mutex<Script>,
    /// Every request: (envelope, status answered).
    seen: Mutex<Vec<(Value, u16)>>,
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    handle: actix_web::dev::ServerHandle,
}

/// Verifies the Standard Webhooks signature with an independent HMAC computation.
fn signature_is_valid(req: &HttpRequest, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(SINK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    sig.split(' ').any(|s| s == expected)
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ReceiverState>,
) -> HttpResponse {
    let envelope: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = if !signature_is_valid(&req, &body)
        || req
            .headers()
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            != envelope["id"].as_str()
    {
        401
    } else {
        let mut script = state.script.lock().unwrap();
        let object_id = envelope["object_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let held = script.fail_until.as_ref().is_some_and(|(failing, first)| {
            *failing == object_id
                && !state
                    .seen
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(e, s)| e["object_id"] == first.as_str() && *s == 200)
        });
        if held {
            500
        } else if let Some(pos) = script.fail_once.iter().position(|o| *o == object_id) {
            script.fail_once.remove(pos);
            500
        } else {
            script.queue.pop_front().unwrap_or(script.otherwise)
        }
    };
    state.seen.lock().unwrap().push((envelope, status));
    let mut response = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    if status == 429 {
        response.insert_header(("Retry-After", "0"));
    }
    response.body("{}")
}

async fn receiver(otherwise: u16) -> Receiver {
    let state = Arc::new(ReceiverState::default());
    state.script.lock().unwrap().otherwise = otherwise;
    let data = web::Data::from(state.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(receive))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Receiver {
        url: format!("http://127.0.0.1:{port}/hooks"),
        state,
        handle,
    }
}

impl Receiver {
    fn seen(&self) -> Vec<(Value, u16)> {
        self.state.seen.lock().unwrap().clone()
    }

    fn delivered(&self) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|(_, s)| *s / 100 == 2)
            .map(|(e, _)| e)
            .collect()
    }

    async fn wait_delivered(&self, n: usize) -> Vec<Value> {
        wait_until(|| self.delivered().len() >= n).await;
        self.delivered()
    }

    fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.state.script.lock().unwrap());
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(receiver: &Receiver, extra_sink: &str, instance_extra: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
{instance_extra}

[[sinks]]
name = "app"
kind = "http"
url = "{url}"
secret = "{SINK_SECRET}"
retry = {{ max_attempts = 4, initial_backoff_ms = 20, max_backoff_ms = 100 }}
{extra_sink}
"#,
        url = receiver.url
    )
}

async fn moving(extra: &str) -> TestApp {
    spawn_with(
        extra,
        SpawnOptions {
            moving_clock: true,
            ..Default::default()
        },
    )
    .await
}

async fn post(app: &TestApp, id: &str, event_type: &str, object_id: &str) -> Value {
    let body = generic_body(id, event_type, object_id);
    let response = app.post_generic("demo", GENERIC_SECRET, id, &body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn admin_get(app: &TestApp, path: &str) -> Value {
    app.client
        .get(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn admin_post(app: &TestApp, path: &str) -> Value {
    app.client
        .post(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The attempts recorded for the first envelope of a stored event, for one sink.
async fn attempts(app: &TestApp, id: &str, sink: &str) -> Vec<Value> {
    let event = admin_get(app, &format!("/admin/events/{id}")).await;
    event["envelopes"][0]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["sink"] == sink)
        .map(|d| d["attempts_made"].as_array().unwrap().clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_event_once_after_three_recorded_attempts() {
    let receiver = receiver(200).await;
    receiver.script(|s| s.queue.extend([500, 503]));
    let app = moving(&config(&receiver, "", "")).await;
    let answer = post(&app, "evt_retry", "post.created", "p1").await;
    let id = answer["id"].as_str().unwrap();
    let delivered = receiver.wait_delivered(1).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["id"], id);
    assert_eq!(delivered[0]["event_id"], "evt_retry");
    let attempts = {
        let mut found = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while found.len() < 3 && Instant::now() < deadline {
            found = attempts(&app, id, "app").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        found
    };
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"]);
    let statuses: Vec<u64> = attempts
        .iter()
        .map(|a| a["http_status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 503, 200]);
    assert!(attempts[0]["error"].as_str().unwrap().contains("HTTP 500"));
    assert!(attempts
        .iter()
        .all(|a| a["at"].is_string() && a["duration_ms"].is_u64()));
    // Every request carried the same webhook-id and a valid signature.
    assert!(receiver
        .seen()
        .iter()
        .all(|(e, s)| e["id"] == id && *s != 401));
}

#[tokio::test]
async fn a_4xx_dead_letters_at_once_and_redelivery_delivers_it() {
    let receiver = receiver(400).await;
    let app = moving(&config(&receiver, "", "")).await;
    let answer = post(&app, "evt_dead", "post.created", "p1").await;
    let id = answer["id"].as_str().unwrap().to_owned();
    let mut dead = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        dead = admin_get(&app, "/admin/dead-letters").await;
        if dead["dead_letters"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let letters = dead["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["envelope_id"], id.as_str());
    assert_eq!(letters[0]["sink"], "app");
    assert!(letters[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("HTTP 400"));
    assert_eq!(
        receiver.seen().len(),
        1,
        "a permanent failure is not retried"
    );
    let listed = admin_get(&app, "/admin/events?status=dead").await;
    assert_eq!(listed["events"][0]["id"], id.as_str());

    // The receiver is fixed; the operator redelivers the dead letters.
    receiver.script(|s| s.otherwise = 200);
    let redelivered = admin_post(&app, "/admin/dead-letters/redeliver?sink=app").await;
    assert_eq!(redelivered["redelivered"], 1);
    let delivered = receiver.wait_delivered(1).await;
    assert_eq!(delivered[0]["id"], id.as_str());
    let dead = admin_get(&app, "/admin/dead-letters").await;
    assert!(dead["dead_letters"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_one_event_can_be_redelivered() {
    let receiver = receiver(503).await;
    let app = moving(&config(&receiver, "", "")).await;
    let answer = post(&app, "evt_budget", "post.created", "p1").await;
    let id = answer["id"].as_str().unwrap().to_owned();
    wait_until(|| receiver.seen().len() >= 4).await;
    let mut recorded = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorded
        .last()
        .map(|a: &Value| a["outcome"] != "dead")
        .unwrap_or(true)
        && Instant::now() < deadline
    {
        recorded = attempts(&app, &id, "app").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcomes: Vec<&str> = recorded
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "dead"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.seen().len(), 4, "no attempt after the budget");

    receiver.script(|s| s.otherwise = 200);
    let redelivered = admin_post(&app, &format!("/admin/events/{id}/redeliver?sink=app")).await;
    assert_eq!(redelivered["redelivered"], 1);
    let unknown = app
        .client
        .post(app.url(&format!("/admin/events/{id}/redeliver?sink=nope")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(receiver.wait_delivered(1).await[0]["id"], id.as_str());
}

#[tokio::test]
async fn each_sink_gets_only_the_events_its_filter_matches() {
    let receiver = receiver(200).await;
    let dir_sink = tempfile::tempdir().unwrap();
    let posts = dir_sink.path().join("posts.jsonl");
    let extra = format!(
        "events = [\"demo:comment.*\"]\n\n[[sinks]]\nname = \"posts\"\nkind = \"file\"\npath = \"{}\"\nevents = [\"demo:post.created\"]\n",
        posts.display()
    );
    let app = moving(&config(&receiver, &extra, "")).await;
    post(&app, "evt_f1", "post.created", "p1").await;
    post(&app, "evt_f2", "comment.created", "c1").await;
    post(&app, "evt_f3", "post.deleted", "p1").await;
    let http = receiver.wait_delivered(1).await;
    let file = wait_for_lines(&posts, 1).await;
    // The audit file sink of the test harness takes everything.
    let audit = app.sink_envelopes(3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        http.iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["evt_f2"]
    );
    assert_eq!(
        file.iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["evt_f1"]
    );
    assert_eq!(audit.len(), 3);
}

#[tokio::test]
async fn the_command_sink_gets_the_envelope_on_stdin_and_failures_keep_stderr() {
    let receiver = receiver(200).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("got.jsonl");
    let extra = format!(
        r#"events = ["*:nothing.*"]

[[sinks]]
name = "script"
kind = "command"
command = ["sh", "-c", "cat >> '{target}'; echo >> '{target}'"]

[[sinks]]
name = "broken"
kind = "command"
command = ["sh", "-c", "cat > /dev/null; echo 'database is down' >&2; exit 3"]
retry = {{ max_attempts = 2, initial_backoff_ms = 10, max_backoff_ms = 10 }}
"#,
        target = target.display()
    );
    let app = moving(&config(&receiver, &extra, "")).await;
    let answer = post(&app, "evt_cmd", "post.created", "p1").await;
    let id = answer["id"].as_str().unwrap().to_owned();
    let got = wait_for_lines(&target, 1).await;
    assert_eq!(got[0]["id"], id.as_str());
    let mut recorded = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorded.len() < 2 && Instant::now() < deadline {
        recorded = attempts(&app, &id, "broken").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0]["exit_code"], 3);
    assert!(recorded[0]["error"]
        .as_str()
        .unwrap()
        .contains("database is down"));
    assert_eq!(recorded[1]["outcome"], "dead");
    let script = attempts(&app, &id, "script").await;
    assert_eq!(script[0]["exit_code"], 0);
    assert_eq!(script[0]["outcome"], "delivered");
}

#[tokio::test]
async fn sync_mode_answers_503_until_the_sink_accepts() {
    let receiver = receiver(500).await;
    let app = moving(&config(&receiver, "", "mode = \"sync\"")).await;
    let body = generic_body("evt_sync", "post.created", "p1");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_sync", &body)
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "delivery_failed");
    // The provider retries; the sink works now; the duplicate check leads to delivery.
    receiver.script(|s| s.otherwise = 200);
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_sync", &body)
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate");
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 1, "delivered before the 200");
    // A further retry does not deliver again.
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_sync", &body)
        .await;
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.delivered().len(), 1);
}

#[tokio::test]
async fn a_failing_event_holds_back_only_its_own_object() {
    let receiver = receiver(200).await;
    // x fails until y has been delivered: y must not wait for x.
    receiver.script(|s| s.fail_until = Some(("x".into(), "y".into())));
    let extra = "concurrency = 1\nretry = { max_attempts = 1000, initial_backoff_ms = 10, max_backoff_ms = 20 }";
    let cfg = config(&receiver, "", "").replace(
        "retry = { max_attempts = 4, initial_backoff_ms = 20, max_backoff_ms = 100 }",
        extra,
    );
    let app = moving(&cfg).await;
    post(&app, "evt_x1", "post.created", "x").await;
    post(&app, "evt_x2", "post.updated", "x").await;
    post(&app, "evt_y1", "post.created", "y").await;
    let delivered = receiver.wait_delivered(3).await;
    let order: Vec<&str> = delivered
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    // y is not held back by x's failure; x's events arrive in their order.
    assert_eq!(order, ["evt_y1", "evt_x1", "evt_x2"]);
    let seen: Vec<(String, u16)> = receiver
        .seen()
        .iter()
        .map(|(e, s)| (e["event_id"].as_str().unwrap().to_owned(), *s))
        .collect();
    assert_eq!(seen[0], ("evt_x1".to_owned(), 500));
}

#[tokio::test]
async fn deliveries_pending_at_shutdown_are_made_after_restart() {
    let receiver = receiver(503).await;
    let cfg = config(&receiver, "", "");
    let app = moving(&cfg).await;
    let answer = post(&app, "evt_restart", "post.created", "p1").await;
    wait_until(|| !receiver.seen().is_empty()).await;
    let dir = app.stop().await;
    receiver.script(|s| s.otherwise = 200);
    let app = spawn_in(
        dir,
        &cfg,
        SpawnOptions {
            moving_clock: true,
            ..Default::default()
        },
    )
    .await;
    let delivered = receiver.wait_delivered(1).await;
    assert_eq!(delivered[0]["id"], answer["id"]);
    drop(app);
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_never_shows_secrets() {
    let receiver = receiver(200).await;
    let app = moving(&config(&receiver, "", "")).await;
    let answer = post(&app, "evt_admin", "post.created", "p1").await;
    let id = answer["id"].as_str().unwrap();
    let response = app
        .client
        .get(app.url("/admin/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = app
        .client
        .get(app.url("/admin/events"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let listed = admin_get(&app, "/admin/events?provider=demo").await;
    assert_eq!(listed["events"][0]["id"], id);
    receiver.wait_delivered(1).await;
    let shown = admin_get(&app, &format!("/admin/events/{id}")).await;
    let text = shown.to_string();
    assert!(text.contains("evt_admin"));
    for secret in [GENERIC_SECRET, SINK_SECRET, ADMIN_TOKEN] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
    assert_eq!(shown["delivery"]["record"]["provider"], "demo");
    let bad = app
        .client
        .get(app.url("/admin/events?status=bogus"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let missing = app
        .client
        .get(app.url("/admin/events/01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn without_a_token_the_admin_api_does_not_exist() {
    let app =
        spawn("[providers.demo]\nkind = \"generic\"\nsecrets = [\"test-generic-secret\"]\n").await;
    let response = app
        .client
        .get(app.url("/admin/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn metrics_count_requests_deliveries_and_commits() {
    let receiver = receiver(200).await;
    let app = moving(&config(&receiver, "", "")).await;
    post(&app, "evt_m1", "post.created", "p1").await;
    post(&app, "evt_m1", "post.created", "p1").await;
    let bad = app.post("demo", &[], "{}").await;
    assert_eq!(bad.status(), 401);
    app.post("no-such-provider", &[], "{}").await;
    receiver.wait_delivered(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"hookgate_requests_total{code="",outcome="ok",provider="demo"} 2"#,
        r#"hookgate_requests_total{code="missing_signature",outcome="rejected",provider="demo"} 1"#,
        r#"hookgate_requests_total{code="unknown_provider",outcome="rejected",provider="unknown"} 1"#,
        r#"hookgate_duplicates_total{provider="demo"} 1"#,
        r#"hookgate_deliveries_total{outcome="delivered",sink="app"} 1"#,
        "hookgate_request_duration_seconds_bucket",
        "hookgate_storage_commit_batch_size_count",
        "hookgate_storage_fsync_seconds_count",
        "hookgate_delivery_queue_depth",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

struct Recorder(Mutex<Vec<String>>, Mutex<u32>);

impl hookgate::dispatch::SyncHandler for Recorder {
    fn handle<'a>(
        &'a self,
        envelope: &'a hookgate::envelope::Envelope,
    ) -> futures_util::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut failures = self.1.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err("not yet".into());
            }
            self.0.lock().unwrap().push(envelope.event_id.clone());
            Ok(())
        })
    }
}

#[tokio::test]
async fn an_in_process_handler_is_delivered_to_and_retried_like_a_sink() {
    let recorder = Arc::new(Recorder(Mutex::new(Vec::new()), Mutex::new(1)));
    let app = spawn_with(
        "[providers.demo]\nkind = \"generic\"\nsecrets = [\"test-generic-secret\"]\n",
        SpawnOptions {
            moving_clock: true,
            handlers: vec![hookgate::dispatch::HandlerRoute {
                name: "in-process".into(),
                events: vec!["demo:post.*".into()],
                retry: hookgate::config::RetrySettings {
                    initial_backoff_ms: 10,
                    max_backoff_ms: 10,
                    ..Default::default()
                },
                handler: recorder.clone(),
            }],
            ..Default::default()
        },
    )
    .await;
    post(&app, "evt_h1", "post.created", "p1").await;
    wait_until(|| !recorder.0.lock().unwrap().is_empty()).await;
    assert_eq!(*recorder.0.lock().unwrap(), ["evt_h1"]);
}

#[tokio::test]
async fn the_events_command_lists_shows_and_redelivers_offline_and_online() {
    let receiver = receiver(400).await;
    let cfg = config(&receiver, "", "");
    let app = moving(&cfg).await;
    let answer = post(&app, "evt_cli", "post.created", "p1").await;
    let id = answer["id"].as_str().unwrap().to_owned();
    wait_until(|| !receiver.seen().is_empty()).await;
    let config_path = app.dir.path().join("config.toml");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .arg("events")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    // Online: the config's bind is port 0, so point the CLI at the real port.
    let online = app.dir.path().join("online.toml");
    std::fs::write(
        &online,
        std::fs::read_to_string(&config_path).unwrap().replace(
            "bind = \"127.0.0.1:0\"",
            &format!("bind = \"127.0.0.1:{}\"", app.port),
        ),
    )
    .unwrap();
    // The 400 makes the task a dead letter once its attempt is recorded: wait for that, not
    // for a fixed time.
    let list_dead = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["events", "--config"])
            .arg(&online)
            .args(["list", "--status", "dead"])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (ok, text) = loop {
        let (ok, text) = list_dead();
        if (ok && text.contains("app:dead(1)")) || Instant::now() > deadline {
            break (ok, text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(ok, "{text}");
    assert!(text.contains(&id) && text.contains("app:dead(1)"), "{text}");

    // Offline: the gateway is stopped and the command opens the store itself.
    let dir = app.stop().await;
    let (ok, text) = run(&["list"]);
    assert!(ok, "{text}");
    assert!(text.contains(&id) && text.contains("evt_cli"), "{text}");
    let (ok, text) = run(&["show", &id]);
    assert!(ok, "{text}");
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["envelopes"][0]["deliveries"][0]["status"], "dead");
    let (ok, text) = run(&["redeliver", "--dead-letters"]);
    assert!(ok && text.contains("1 delivery task(s)"), "{text}");

    // After restart with a working receiver, the redelivered event goes out.
    receiver.script(|s| s.otherwise = 200);
    let _app = spawn_in(
        dir,
        &cfg,
        SpawnOptions {
            moving_clock: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(receiver.wait_delivered(1).await[0]["id"], id.as_str());
    drop(receiver.handle);
}
