//! Regression tests for the adversarial pass (issue 13): poison-pill nesting, batch and
//! signature amplification, log injection, sink redirects and leaks, and the admin API's
//! order of checks. Every test drives the real server on port 0 over HTTP.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use common::*;
use hookgate::pipeline::signature::SignInput;
use hookgate::provider::kind::{load_file, Kind};
use hookgate::secret::Secret;
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "hardening-admin-token";

/// A provider kind as committed.
fn kind(name: &str) -> Kind {
    load_file(&providers_dir().join(format!("{name}.toml")), name).unwrap()
}

/// Signs `body` as the provider would: the headers to send (plus `extra`) and the body to send
/// (kinds that sign inside the body rewrite it).
fn sign(
    kind_name: &str,
    secret: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    ts: i64,
    url: Option<&str>,
) -> (Vec<(String, String)>, Vec<u8>) {
    let kind = kind(kind_name);
    let mut headers = HeaderMap::new();
    for (name, value) in extra {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let signed = kind
        .scheme
        .sign(
            &Secret::new(secret),
            &SignInput {
                body,
                headers: &headers,
                timestamp: chrono::DateTime::from_timestamp(ts, 0).unwrap(),
                url,
            },
        )
        .unwrap();
    let mut out: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    out.push(("Content-Type".into(), "application/json".into()));
    out.extend(
        signed
            .headers
            .into_iter()
            .map(|(name, value)| (name.to_string(), value)),
    );
    (out, signed.body.unwrap_or_else(|| body.to_vec()))
}

/// `[[[...]]]`, `depth` levels.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The deepest `{"<field>": [[..]]}` (with `rest`) that serde_json's default recursion limit
/// parses: what the old gateway accepted.
fn deepest_accepted(template: impl Fn(&str) -> String) -> String {
    let mut depth = 1;
    loop {
        let next = template(&nested(depth + 1));
        if serde_json::from_str::<Value>(&next).is_err() {
            return template(&nested(depth));
        }
        depth += 1;
    }
}

fn basic(user: &str, password: &str) -> (String, String) {
    (
        "Authorization".to_owned(),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        ),
    )
}

async fn admin_get_text(app: &TestApp, path: &str) -> (u16, String) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn wait_until_async<F, Fut>(mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if done().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Poison-pill nesting
// ---------------------------------------------------------------------------------------------

const DISCORD_PUBLIC: &str = "c8f8f83163eed9033f14993513a10261b4f37f83e5d9139405078fbe0fa16d31";
const DISCORD_PRIVATE: &str = "b52956e4e14e9b52975012205d4408bf0886921ce20d6c48cd20640d622b460c";
const TWILIO_URL: &str = "https://hooks.example.com/webhooks/twilio";

fn deep_config() -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[providers.crm]
kind = "pipedrive"
basic_auth = {{ username = "hooks", password = "crm-password" }}

[providers.github]
secrets = ["gh-secret"]

[providers.gitlab]
secrets = ["gl-token"]

[providers.linear]
secrets = ["lin-secret"]

[providers.discord]
secrets = ["{DISCORD_PUBLIC}"]

[providers.twilio]
secrets = ["tw-token"]
public_url = "{TWILIO_URL}"
"#
    )
}

/// One affected kind's deepest accepted payload (before the fix), signed: (instance, path,
/// headers, body).
fn deep_delivery(instance: &str, ts: i64) -> (String, Vec<(String, String)>, Vec<u8>) {
    let path = format!("/webhooks/{instance}");
    match instance {
        "crm" => {
            let body = deepest_accepted(|deep| {
                format!(
                    r#"{{"event":"updated.deal","meta":{{"v":1,"object":"deal","action":"updated","id":7,"company_id":1,"timestamp":1705314600}},"current":{{"id":7}},"retry":{deep}}}"#
                )
            });
            (
                path,
                vec![basic("hooks", "crm-password")],
                body.into_bytes(),
            )
        }
        "github" => {
            let body = deepest_accepted(|deep| {
                format!(r#"{{"ref":{deep},"repository":{{"id":1,"full_name":"o/r"}}}}"#)
            });
            let (headers, body) = sign(
                "github",
                "gh-secret",
                body.as_bytes(),
                &[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-deep")],
                ts,
                None,
            );
            (path, headers, body)
        }
        "gitlab" => {
            let body = deepest_accepted(|deep| format!(r#"{{"object_kind":"push","ref":{deep}}}"#));
            let (headers, body) = sign(
                "gitlab",
                "gl-token",
                body.as_bytes(),
                &[
                    ("Idempotency-Key", "gl-deep"),
                    ("X-Gitlab-Event", "Push Hook"),
                ],
                ts,
                None,
            );
            (path, headers, body)
        }
        "linear" => {
            // Leaves one level for the timestamp the signer writes into the body.
            let body = deepest_accepted(|deep| {
                format!(
                    r#"{{"type":"Issue","action":"update","data":{{"id":"i1"}},"url":{deep},"webhookTimestamp":{}}}"#,
                    ts * 1000
                )
            });
            let (headers, body) = sign(
                "linear",
                "lin-secret",
                body.as_bytes(),
                &[("Linear-Delivery", "lin-deep")],
                ts,
                None,
            );
            (path, headers, body)
        }
        "discord" => {
            let body = deepest_accepted(|deep| {
                format!(r#"{{"id":"i-deep","type":2,"application_id":"a","data":{deep}}}"#)
            });
            let (headers, body) = sign("discord", DISCORD_PRIVATE, body.as_bytes(), &[], ts, None);
            (path, headers, body)
        }
        "twilio" => {
            let body = deepest_accepted(|deep| {
                format!(r#"{{"MessageSid":"SM1","MessageStatus":"sent","Extra":{deep}}}"#)
            });
            let query = hookgate::pipeline::signature::twilio::body_sha256_query(body.as_bytes());
            let url = format!("{TWILIO_URL}?{query}");
            let (headers, body) = sign("twilio", "tw-token", body.as_bytes(), &[], ts, Some(&url));
            (format!("{path}?{query}"), headers, body)
        }
        other => unreachable!("{other}"),
    }
}

#[tokio::test]
async fn payloads_nested_to_the_old_parser_limit_are_refused_per_kind_and_the_sink_keeps_flowing() {
    let app = spawn(&deep_config()).await;
    let ts = app.clock_unix();
    for instance in ["crm", "github", "gitlab", "linear", "discord", "twilio"] {
        let (path, headers, body) = deep_delivery(instance, ts);
        let mut request = app.client.post(app.url(&path));
        for (k, v) in &headers {
            request = request.header(k, v);
        }
        let response = request.body(body).send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{instance}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_payload", "{instance}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("64 levels"), "{instance}: {message}");
    }
    // Nothing was stored, and the next normal event reaches the sink.
    let normal = r#"{"event":"updated.deal","meta":{"v":1,"object":"deal","action":"updated","id":8,"company_id":1,"timestamp":1705314601},"current":{"id":8}}"#;
    let response = app
        .post("crm", &[basic("hooks", "crm-password")], normal)
        .await;
    assert_eq!(response.status(), 200);
    let envelopes = app.sink_envelopes(1).await;
    assert_eq!(envelopes.len(), 1, "{envelopes:?}");
    assert_eq!(envelopes[0]["object_id"], "8");
    let (_, listed) = admin_get_text(&app, "/admin/events").await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["events"].as_array().unwrap().len(), 1, "{listed}");
}

/// An envelope as an old gateway stored it for a 127-deep `retry`: 129 levels, deeper than
/// serde_json's default limit.
fn old_deep_envelope(id: &str) -> Vec<u8> {
    let mut retry = json!([]);
    for _ in 1..127 {
        retry = json!([retry]);
    }
    serde_json::to_vec(&json!({
        "id": id, "provider": "crm", "kind": "pipedrive", "event_id": "derived:old",
        "type": "updated.deal", "action": "updated", "object": "deal", "object_id": "7",
        "current": {"id": 7}, "previous": null, "occurred_at": null,
        "received_at": "2024-01-15T10:30:00.000Z", "meta": {"retry": retry}
    }))
    .unwrap()
}

/// Stores, the way an older gateway did, one receipt whose two envelopes are a 129-deep one and
/// one that cannot be decoded at all, each owed to the `audit` sink. Returns their ids.
async fn store_old_records(dir: &std::path::Path) -> (String, String) {
    use hookgate::envelope::Envelope;
    use hookgate::store::{
        DedupKey, IngestStore, Maintenance, NewEnvelope, NewReceipt, Receipt, ReceiptStatus,
    };
    let store = hookgate::store::log::LogStore::open(
        &hookgate::config::StorageSettings {
            path: dir.join("store").to_str().unwrap().into(),
            ..Default::default()
        },
        Arc::new(hookgate::clock::SystemClock),
        Arc::new(hookgate::metrics::Metrics::new()),
    )
    .unwrap();
    let now = chrono::Utc::now();
    let ids: Vec<String> = (0..3)
        .map(|n| ulid::Ulid::from_parts(now.timestamp_millis() as u64, n).to_string())
        .collect();
    let placeholder: Envelope = serde_json::from_value(json!({
        "id": "x", "provider": "crm", "kind": "pipedrive", "event_id": "e", "type": "t",
        "action": "a", "object": "o", "object_id": null, "current": null, "previous": null,
        "occurred_at": null, "received_at": "2024-01-15T10:30:00.000Z", "meta": {}
    }))
    .unwrap();
    let event = |id: &str, event_id: &str, json: Vec<u8>| NewEnvelope {
        dedup: DedupKey {
            provider: "crm".into(),
            event_id: event_id.into(),
        },
        envelope: Envelope {
            id: id.into(),
            event_id: event_id.into(),
            ..placeholder.clone()
        },
        json: json.into(),
        sinks: vec!["audit".into()],
        lane: Vec::new(),
        // Due before the app's clock (whole seconds) starts.
        not_before_ms: now.timestamp_millis() - 60_000,
    };
    let receipt = NewReceipt {
        receipt: Receipt {
            id: ids[0].clone(),
            provider: "crm".into(),
            kind: "pipedrive".into(),
            event_id: None,
            received_at: hookgate::envelope::format_millis(now),
            client_ip: None,
            headers: Vec::new(),
            status: ReceiptStatus::Accepted,
            error: None,
            envelope_ids: Vec::new(),
            types: Vec::new(),
            subjects: Vec::new(),
            event_ids: Vec::new(),
        },
        body: bytes::Bytes::from_static(b"{}"),
        events: vec![
            event(&ids[1], "old-deep", old_deep_envelope(&ids[1])),
            event(
                &ids[2],
                "old-garbage",
                b"{\"id\": \"not an envelope".to_vec(),
            ),
        ],
        replay_guard: None,
    };
    store.commit(receipt).await.unwrap();
    tokio::task::spawn_blocking(move || store.close())
        .await
        .unwrap();
    (ids[1].clone(), ids[2].clone())
}

#[tokio::test]
async fn an_envelope_stored_deeper_than_serde_json_reads_is_delivered_and_an_unreadable_one_is_a_dead_letter(
) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (deep, garbage) = store_old_records(dir.path()).await;
    let app = spawn_in(dir, &deep_config(), SpawnOptions::default()).await;
    let normal = r#"{"event":"updated.deal","meta":{"v":1,"object":"deal","action":"updated","id":8,"company_id":1,"timestamp":1705314601},"current":{"id":8}}"#;
    let response = app
        .post("crm", &[basic("hooks", "crm-password")], normal)
        .await;
    assert_eq!(response.status(), 200);
    // The old deep envelope is read back and delivered; so is the new event.
    let lines = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(app.sink_path()).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| hookgate::json::read(l.as_bytes()).unwrap())
                .collect();
            if lines.len() >= 2 || Instant::now() > deadline {
                break lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let delivered: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(delivered.contains(&deep.as_str()), "{delivered:?}");
    // The undecodable one is a dead letter that says why.
    let dead = wait_until_async(|| async {
        let (_, text) = admin_get_text(&app, "/admin/dead-letters").await;
        text.contains(&garbage) && text.contains("cannot be read")
    })
    .await;
    assert!(
        dead,
        "{:?}",
        admin_get_text(&app, "/admin/dead-letters").await
    );
    // Both can be looked at.
    let (status, shown) = admin_get_text(&app, &format!("/admin/events/{deep}")).await;
    assert_eq!(status, 200, "{shown}");
    let shown: Value = hookgate::json::read(shown.as_bytes()).unwrap();
    assert!(shown["envelopes"][0]["envelope"]["meta"]["retry"].is_array());
    let (status, shown) = admin_get_text(&app, &format!("/admin/events/{garbage}")).await;
    assert_eq!(status, 200, "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert!(
        shown["envelopes"][0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// Batches and signatures: what one request can cost
// ---------------------------------------------------------------------------------------------

fn pusher_batch(n: usize) -> String {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"name": "channel_occupied", "channel": format!("c-{i}")}))
        .collect();
    json!({"time_ms": 1_705_314_600_000_i64, "events": events}).to_string()
}

async fn post_pusher(app: &TestApp, instance: &str, body: &str) -> reqwest::Response {
    let headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("X-Pusher-Key".to_owned(), "key".to_owned()),
        (
            "X-Pusher-Signature".to_owned(),
            hmac_hex("pusher-secret", body.as_bytes()),
        ),
    ];
    app.post(instance, &headers, body.to_owned()).await
}

#[tokio::test]
async fn a_batch_larger_than_batch_max_events_is_refused_with_413_and_nothing_is_stored() {
    let app = spawn(
        r#"
[providers.pusher]
secrets = ["pusher-secret"]

[providers.small]
kind = "pusher"
secrets = ["pusher-secret"]
batch_max_events = 3
"#,
    )
    .await;
    // The default: 1000.
    let response = post_pusher(&app, "pusher", &pusher_batch(1001)).await;
    assert_eq!(response.status(), 413);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "too_many_events", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1001 events; at most 1000"),
        "{answer}"
    );
    let response = post_pusher(&app, "small", &pusher_batch(4)).await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "too_many_events");
    // At the limit it is accepted.
    let response = post_pusher(&app, "small", &pusher_batch(3)).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["events"].as_array().unwrap().len(), 3, "{answer}");
    assert_eq!(app.sink_envelopes(3).await.len(), 3);
}

const STANDARD_SECRET: &str = "whsec_b+QiJVs4HBGc3+5mM/08ng0iJUKAukZA5C5EuSNmvxY=";

/// `(header name, signed value)` for `body`, and what one extra signature entry looks like.
fn multi_signature_case(
    kind: &str,
    ts: i64,
    body: &[u8],
) -> (String, String, String, &'static str) {
    match kind {
        "standard-webhooks" | "gitlab" => {
            let id = format!("msg_{kind}");
            let (headers, _) = sign(
                kind,
                STANDARD_SECRET,
                body,
                &[("webhook-id", &id)],
                ts,
                None,
            );
            let value = headers
                .iter()
                .find(|(k, _)| k == "webhook-signature")
                .unwrap()
                .1
                .clone();
            let junk = format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode([7u8; 32])
            );
            ("webhook-signature".into(), value, junk, " ")
        }
        "stripe" => {
            let (headers, _) = sign(kind, "whsec_stripe", body, &[], ts, None);
            let value = headers
                .iter()
                .find(|(k, _)| k == "stripe-signature")
                .unwrap()
                .1
                .clone();
            (
                "stripe-signature".into(),
                value,
                format!("v1={}", "ab".repeat(32)),
                ",",
            )
        }
        "paddle" => {
            let (headers, _) = sign(kind, "pdl_secret", body, &[], ts, None);
            let value = headers
                .iter()
                .find(|(k, _)| k == "paddle-signature")
                .unwrap()
                .1
                .clone();
            (
                "paddle-signature".into(),
                value,
                format!("h1={}", "ab".repeat(32)),
                ";",
            )
        }
        other => unreachable!("{other}"),
    }
}

#[tokio::test]
async fn more_than_sixteen_signatures_in_one_header_are_a_malformed_header_for_every_multi_signature_scheme(
) {
    let app = spawn(&format!(
        r#"
[providers.standard-webhooks]
secrets = ["{STANDARD_SECRET}"]

[providers.gitlab]
secrets = ["{STANDARD_SECRET}"]

[providers.stripe]
secrets = ["whsec_stripe"]

[providers.paddle]
secrets = ["pdl_secret"]
"#
    ))
    .await;
    let ts = app.clock_unix();
    for kind in ["standard-webhooks", "gitlab", "stripe", "paddle"] {
        let body = match kind {
            "gitlab" => {
                r#"{"object_kind":"issue","object_attributes":{"id":1,"action":"open"}}"#.to_owned()
            }
            "paddle" => {
                r#"{"event_id":"evt_p","event_type":"subscription.created","data":{"id":"sub_1"}}"#
                    .to_owned()
            }
            _ => format!(
                r#"{{"id":"evt_{kind}","type":"invoice.paid","data":{{"object":{{"id":"in_1"}},"id":"in_1"}}}}"#
            ),
        };
        let (name, valid, junk, separator) = multi_signature_case(kind, ts, body.as_bytes());
        let base = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("webhook-id".to_owned(), format!("msg_{kind}")),
            ("webhook-timestamp".to_owned(), ts.to_string()),
            ("Idempotency-Key".to_owned(), format!("msg_{kind}")),
        ];
        let with = |extra: usize| {
            let mut headers = base.clone();
            let mut value = vec![junk.clone(); extra];
            value.push(valid.clone());
            headers.push((name.clone(), value.join(separator)));
            headers
        };
        // Seventeen signatures (the valid one last): refused before any MAC is computed.
        let response = app.post(kind, &with(16), body.clone()).await;
        assert_eq!(response.status(), 401, "{kind}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["error"]["code"], "malformed_signature_header",
            "{kind}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than 16"),
            "{kind}: {answer}"
        );
        // Sixteen: the valid one is found wherever it is.
        let response = app.post(kind, &with(15), body.clone()).await;
        assert_eq!(
            response.status(),
            200,
            "{kind}: {:?}",
            response.text().await
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sinks: redirects, leaks, bounded reads, whole lines
// ---------------------------------------------------------------------------------------------

/// What a test receiver saw: (path and query, headers).
type Seen = Arc<std::sync::Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// A receiver on its own port; `answer` builds each response.
async fn receiver(
    answer: impl Fn(&actix_web::HttpRequest) -> actix_web::HttpResponse + Clone + Send + 'static,
) -> (String, Seen) {
    use actix_web::{web, App, HttpRequest, HttpServer};
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        let recorded = recorded.clone();
        let answer = answer.clone();
        App::new().default_service(web::to(move |req: HttpRequest, _body: web::Bytes| {
            let recorded = recorded.clone();
            let answer = answer.clone();
            async move {
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                let target = match req.query_string() {
                    "" => req.path().to_owned(),
                    q => format!("{}?{q}", req.path()),
                };
                recorded.lock().unwrap().push((target, headers));
                answer(&req)
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), seen)
}

fn http_sink(url: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[providers.demo]
kind = "generic"
secrets = ["{GENERIC_SECRET}"]

[[sinks]]
name = "app"
kind = "http"
url = "{url}"
headers = {{ "X-Api-Key" = "sink-credential" }}
events = ["demo"]
retry = {{ max_attempts = 1 }}
{extra}
"#
    )
}

async fn post_demo(app: &TestApp, event_id: &str, object_id: &str) -> String {
    let body = generic_body(event_id, "post.created", object_id);
    let response = app
        .post_generic("demo", GENERIC_SECRET, event_id, &body)
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer["id"].as_str().unwrap().to_owned()
}

/// The dead letters of sink `app`, once there are `n` of them (or whatever there is after the
/// deadline).
async fn dead_letters(app: &TestApp, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = admin_get_text(app, "/admin/dead-letters?sink=app").await;
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        let found = body["dead_letters"].as_array().cloned().unwrap_or_default();
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every attempt error recorded for a stored event.
async fn attempt_errors(app: &TestApp, id: &str) -> Vec<String> {
    let (_, text) = admin_get_text(app, &format!("/admin/events/{id}")).await;
    let shown: Value = serde_json::from_str(&text).unwrap();
    shown["envelopes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["deliveries"].as_array().unwrap().clone())
        .flat_map(|d| d["attempts_made"].as_array().unwrap().clone())
        .filter_map(|a| a["error"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_http_sink_does_not_follow_redirects_nor_send_its_headers_to_another_host() {
    let (elsewhere, elsewhere_seen) = receiver(|_| actix_web::HttpResponse::Ok().finish()).await;
    let target = elsewhere.clone();
    let (sink, sink_seen) = receiver(move |req| {
        let status = if req.headers().contains_key("x-redirect-307") {
            307
        } else {
            302
        };
        actix_web::HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .insert_header((
                "Location",
                format!("{target}/landing?token=location-secret"),
            ))
            .finish()
    })
    .await;
    let app = spawn(&http_sink(&format!("{sink}/hooks"), "")).await;
    let id = post_demo(&app, "evt_redirect", "p1").await;
    let dead = dead_letters(&app, 1).await;
    assert_eq!(
        dead.len(),
        1,
        "the redirect is a failed attempt, not a delivery: {dead:?}"
    );
    let errors = attempt_errors(&app, &id).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("HTTP 302: redirected to "),
        "{errors:?}"
    );
    assert!(
        errors[0].contains(&format!("{elsewhere}/landing")),
        "{errors:?}"
    );
    assert!(!errors[0].contains("location-secret"), "{errors:?}");
    // The sink saw the POST with its credential header; the other host saw nothing at all.
    let seen = sink_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0]
        .1
        .iter()
        .any(|(k, v)| k == "x-api-key" && v == "sink-credential"));
    assert!(
        elsewhere_seen.lock().unwrap().is_empty(),
        "followed a redirect"
    );
}

#[tokio::test]
async fn a_307_to_another_host_is_a_failed_attempt_and_the_credentials_stay_home() {
    let (elsewhere, elsewhere_seen) = receiver(|_| actix_web::HttpResponse::Ok().finish()).await;
    let target = elsewhere.clone();
    let (sink, _) = receiver(move |_| {
        actix_web::HttpResponse::TemporaryRedirect()
            .insert_header(("Location", format!("{target}/steal")))
            .finish()
    })
    .await;
    let app = spawn(&http_sink(&format!("{sink}/hooks"), "")).await;
    let id = post_demo(&app, "evt_307", "p1").await;
    assert_eq!(dead_letters(&app, 1).await.len(), 1);
    let errors = attempt_errors(&app, &id).await;
    assert!(
        errors[0].starts_with("HTTP 307: redirected to "),
        "{errors:?}"
    );
    assert!(
        elsewhere_seen.lock().unwrap().is_empty(),
        "the 307 was followed"
    );
}

#[tokio::test]
async fn a_token_in_the_sink_url_never_shows_in_attempt_errors_or_the_cli() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://hooks:userinfo-secret@127.0.0.1:{closed}/hooks?token=query-secret");
    let app = spawn(&http_sink(&url, "")).await;
    let id = post_demo(&app, "evt_leak", "p1").await;
    assert_eq!(dead_letters(&app, 1).await.len(), 1);
    let errors = attempt_errors(&app, &id).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&format!("http://127.0.0.1:{closed}/hooks")),
        "the error still says where: {errors:?}"
    );
    let (_, everything) = admin_get_text(&app, &format!("/admin/events/{id}")).await;
    let (_, dead) = admin_get_text(&app, "/admin/dead-letters").await;
    // The CLI, through the running gateway's API (the config's bind is port 0: point the CLI
    // at the real port).
    let online = app.dir.path().join("online.toml");
    std::fs::write(
        &online,
        std::fs::read_to_string(app.dir.path().join("config.toml"))
            .unwrap()
            .replace(
                "bind = \"127.0.0.1:0\"",
                &format!("bind = \"127.0.0.1:{}\"", app.port),
            ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["events", "show", &id, "--config"])
        .arg(&online)
        .env_remove("HOOKGATE_CONFIG")
        .output()
        .unwrap();
    let cli = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{cli}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(cli.contains("127.0.0.1"), "{cli}");
    for text in [&everything, &dead, &cli] {
        assert!(!text.contains("query-secret"), "{text}");
        assert!(!text.contains("userinfo-secret"), "{text}");
    }
}

#[tokio::test]
async fn only_the_snippet_of_a_sink_error_body_is_read() {
    // Sends the first 4 KiB of a 100 MB error body, then nothing more, ever.
    let (sink, _) = receiver(|_| {
        let first = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(actix_web::web::Bytes::from(vec![b'x'; 4096]))
        });
        actix_web::HttpResponse::InternalServerError()
            .no_chunking(100_000_000)
            .streaming(futures_util::StreamExt::chain(
                first,
                futures_util::stream::pending(),
            ))
    })
    .await;
    let app = spawn(&http_sink(&format!("{sink}/hooks"), "timeout_ms = 600000")).await;
    let id = post_demo(&app, "evt_snippet", "p1").await;
    assert_eq!(
        dead_letters(&app, 1).await.len(),
        1,
        "the attempt never ended"
    );
    let errors = attempt_errors(&app, &id).await;
    assert_eq!(errors, [format!("HTTP 500: {}", "x".repeat(512))]);
}

#[tokio::test]
async fn a_command_sink_keeps_only_the_last_512_bytes_of_stderr() {
    let app = spawn(&format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[providers.demo]
kind = "generic"
secrets = ["{GENERIC_SECRET}"]

[[sinks]]
name = "app"
kind = "command"
command = ["sh", "-c", "cat > /dev/null; head -c 200000 /dev/zero | tr '\\000' x >&2; printf END >&2; exit 3"]
events = ["demo"]
retry = {{ max_attempts = 1 }}
"#
    ))
    .await;
    let id = post_demo(&app, "evt_stderr", "p1").await;
    assert_eq!(dead_letters(&app, 1).await.len(), 1);
    let errors = attempt_errors(&app, &id).await;
    assert_eq!(errors, [format!("exit 3: {}END", "x".repeat(509))]);
}

#[tokio::test]
async fn a_partial_line_left_in_the_sink_file_is_cut_before_the_next_line() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    // What a write cut short by a full disk (or a crash) leaves behind.
    std::fs::write(
        dir.path().join("envelopes.jsonl"),
        b"{\"id\":\"old\"}\n{\"id\":\"torn",
    )
    .unwrap();
    let app = spawn_in(
        dir,
        "[providers.demo]\nkind = \"generic\"\nsecrets = [\"test-generic-secret\"]\n",
        SpawnOptions::default(),
    )
    .await;
    let id = post_demo(&app, "evt_whole", "p1").await;
    let lines = app.sink_envelopes(2).await;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "old");
    assert_eq!(lines[1]["id"], id.as_str());
    let text = std::fs::read_to_string(app.sink_path()).unwrap();
    assert!(text.ends_with('\n') && !text.contains("torn"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The queue-depth metric, the admin API, client addresses
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_queue_depth_metric_reports_the_true_depth_past_the_scan_window() {
    use hookgate::store::{IngestStore, Maintenance};
    const PENDING: usize = 10_050;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    {
        let store = hookgate::store::log::LogStore::open(
            &hookgate::config::StorageSettings {
                path: dir.path().join("store").to_str().unwrap().into(),
                ..Default::default()
            },
            Arc::new(hookgate::clock::SystemClock),
            Arc::new(hookgate::metrics::Metrics::new()),
        )
        .unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let tomorrow = now + 86_400_000;
        let template: hookgate::envelope::Envelope = serde_json::from_value(json!({
            "id": "x", "provider": "demo", "kind": "generic", "event_id": "e", "type": "t.c",
            "action": "c", "object": "t", "object_id": null, "current": null, "previous": null,
            "occurred_at": null, "received_at": "2024-01-15T10:30:00.000Z", "meta": {}
        }))
        .unwrap();
        let events = (0..PENDING as u128)
            .map(|n| {
                let id = ulid::Ulid::from_parts(now as u64, n + 1).to_string();
                let envelope = hookgate::envelope::Envelope {
                    id: id.clone(),
                    event_id: format!("e{n}"),
                    ..template.clone()
                };
                hookgate::store::NewEnvelope {
                    dedup: hookgate::store::DedupKey {
                        provider: "demo".into(),
                        event_id: format!("e{n}"),
                    },
                    json: serde_json::to_vec(&envelope).unwrap().into(),
                    envelope,
                    sinks: vec!["audit".into()],
                    lane: Vec::new(),
                    // Not due for a day: they stay pending while the metric is read.
                    not_before_ms: tomorrow,
                }
            })
            .collect();
        let receipt = hookgate::store::NewReceipt {
            receipt: hookgate::store::Receipt {
                id: ulid::Ulid::from_parts(now as u64, 0).to_string(),
                provider: "demo".into(),
                kind: "generic".into(),
                event_id: None,
                received_at: hookgate::envelope::format_millis(chrono::Utc::now()),
                client_ip: None,
                headers: Vec::new(),
                status: hookgate::store::ReceiptStatus::Accepted,
                error: None,
                envelope_ids: Vec::new(),
                types: Vec::new(),
                subjects: Vec::new(),
                event_ids: Vec::new(),
            },
            body: bytes::Bytes::from_static(b"{}"),
            events,
            replay_guard: None,
        };
        store.commit(receipt).await.unwrap();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .unwrap();
    }
    let app = spawn_in(
        dir,
        "[providers.demo]\nkind = \"generic\"\nsecrets = [\"test-generic-secret\"]\n",
        SpawnOptions::default(),
    )
    .await;
    let wanted = format!("hookgate_delivery_queue_depth{{sink=\"audit\"}} {PENDING}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (found, metrics) = loop {
        let metrics = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(&wanted) || Instant::now() > deadline {
            break (metrics.contains(&wanted), metrics);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let depth: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("hookgate_delivery_queue_depth"))
        .collect();
    assert!(found, "{depth:?}");
}

#[tokio::test]
async fn the_admin_api_checks_the_token_before_the_query_and_always_answers_json() {
    // Disabled: 404 whatever the query says.
    let app = spawn("").await;
    let response = app
        .client
        .get(app.url("/admin/events?no_such_parameter=1&limit=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
    // Enabled: no token (or a near miss) is 401 before the query is looked at.
    let app = spawn(&format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")).await;
    for token in [
        None,
        Some(&ADMIN_TOKEN[..5]),
        Some("hardening-admin-token-2"),
    ] {
        let mut request = app
            .client
            .get(app.url("/admin/dead-letters?no_such_parameter=1"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(error_code(response).await, "unauthorized");
    }
    // With the token, a bad query is a JSON 400 naming what is wrong.
    for path in [
        "/admin/events?no_such_parameter=1",
        "/admin/events?limit=many",
        "/admin/dead-letters?limit=-1",
    ] {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "bad_request", "{path}: {answer}");
    }
    let response = app
        .client
        .post(app.url("/admin/dead-letters/redeliver?sink=x&bogus=1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(error_code(response).await, "bad_request");
}

#[tokio::test]
async fn ipv4_mapped_peers_match_ipv4_trusted_proxies_and_allowlists() {
    let app = spawn_with(
        r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
allow_ips = ["203.0.113.0/24"]
"#,
        SpawnOptions {
            // A dual-stack listener: IPv4 peers arrive as ::ffff:127.0.0.1.
            bind: Some("[::]:0".into()),
            server_extra: "trusted_proxies = [\"127.0.0.0/8\"]".into(),
            ..Default::default()
        },
    )
    .await;
    let body = generic_body("evt_mapped", "post.created", "p1");
    let mut headers = generic_headers(
        GENERIC_SECRET,
        "evt_mapped",
        app.clock_unix(),
        body.as_bytes(),
    );
    headers.push(("X-Forwarded-For".into(), "203.0.113.9".into()));
    let response = app.post("demo", &headers, body.clone()).await;
    let status = response.status();
    assert_eq!(status, 200, "{:?}", response.text().await);
    // Not from the allowed network, not through the proxy: refused as before.
    headers.pop();
    headers.push(("X-Forwarded-For".into(), "198.51.100.1".into()));
    let response = app.post("demo", &headers, body).await;
    assert_eq!(response.status(), 403);
}

// ---------------------------------------------------------------------------------------------
// Logs and the terminal: the real binary
// ---------------------------------------------------------------------------------------------

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn without_colours(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `hookgate serve` with the pretty log format; its stderr is collected line by line, as bytes.
struct LoggingGateway {
    child: std::process::Child,
    port: u16,
    log: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl LoggingGateway {
    fn start(dir: &std::path::Path, extra: &str) -> Self {
        use std::io::BufRead;
        let config = config_text(dir, "", extra)
            .replace("level = \"warn\"", "level = \"info\"\nformat = \"pretty\"");
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let log: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let port = loop {
            let mut line = Vec::new();
            if stderr.read_until(b'\n', &mut line).unwrap() == 0 {
                panic!("the gateway exited before listening");
            }
            let text = without_colours(&String::from_utf8_lossy(&line));
            log.lock().unwrap().push(line);
            if let Some(port) = text
                .contains("Listening.")
                .then(|| text.split("port=").nth(1))
                .flatten()
            {
                break port.trim().parse::<u16>().unwrap();
            }
        };
        let kept = log.clone();
        std::thread::spawn(move || loop {
            let mut line = Vec::new();
            match stderr.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => kept.lock().unwrap().push(line),
            }
        });
        Self { child, port, log }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap().concat()).into_owned()
    }

    /// Waits until the log holds `n` lines containing `needle`.
    fn wait_for(&self, needle: &str, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.text().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for LoggingGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes and returns the status code.
async fn raw_status(port: u16, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const FORGED: &str = "2026-12-01T00:00:00Z  INFO hookgate::startup: FORGED";

#[tokio::test]
async fn no_field_of_any_log_line_can_forge_a_line_or_reach_the_terminal() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let gateway = LoggingGateway::start(
        dir.path(),
        &format!(
            r#"
[providers.demo]
kind = "generic"
secrets = ["{GENERIC_SECRET}"]

[[sinks]]
name = "app"
kind = "http"
url = "http://hooks:userinfo-secret@127.0.0.1:{closed}/hooks?token=query-secret"
events = ["demo"]
retry = {{ max_attempts = 2, initial_backoff_ms = 10, max_backoff_ms = 10 }}
"#
        ),
    );
    let port = gateway.port;
    // 1. An unknown instance whose name forges a line (percent-encoded, as a client sends it).
    let status = raw_status(
        port,
        b"POST /webhooks/x%0a2026-12-01T00:00:00.000000Z%20%20INFO%20hookgate:%20Accepted.%1b[31m HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    // 2. A signed event whose type carries a newline and an escape sequence (422, logged).
    let client = reqwest::Client::new();
    let ts = chrono::Utc::now().timestamp();
    let body =
        json!({"id": "evt_log", "type": format!("bad\n{FORGED}\u{1b}[31m\u{9b}")}).to_string();
    let mut request = client.post(format!("http://127.0.0.1:{port}/webhooks/demo"));
    for (k, v) in generic_headers(GENERIC_SECRET, "evt_log", ts, body.as_bytes()) {
        request = request.header(k, v);
    }
    assert_eq!(request.body(body).send().await.unwrap().status(), 422);
    // 3. A stored event whose delivery fails against a sink URL holding credentials.
    let body = generic_body("evt_sink", "post.created", "p1");
    let mut request = client.post(format!("http://127.0.0.1:{port}/webhooks/demo"));
    for (k, v) in generic_headers(GENERIC_SECRET, "evt_sink", ts, body.as_bytes()) {
        request = request.header(k, v);
    }
    assert_eq!(request.body(body).send().await.unwrap().status(), 200);

    assert!(gateway.wait_for("Rejected.", 2), "{}", gateway.text());
    assert!(gateway.wait_for("dead-lettered", 1), "{}", gateway.text());
    let lines = gateway.log.lock().unwrap().clone();
    let text = gateway.text();
    for line in &lines {
        assert!(
            !line.contains(&0x1b),
            "an escape character reached the log: {}",
            String::from_utf8_lossy(line)
        );
        let line = String::from_utf8_lossy(line);
        assert!(
            !line.starts_with("2026-12-01T00:00:00"),
            "a forged line: {line}"
        );
        assert!(
            !line.contains('\u{9b}'),
            "a C1 control reached the log: {line}"
        );
    }
    // The forged type is there, escaped, inside its own line.
    let rejected = text
        .lines()
        .find(|l| l.contains("FORGED"))
        .expect("the 422 is logged");
    assert!(
        rejected.contains("Rejected.") && rejected.contains("\\x0a2026-12-01"),
        "{rejected}"
    );
    assert!(rejected.contains("\\x1b[31m"), "{rejected}");
    // The unknown name is not logged at all, and no sink credential is.
    assert!(!text.contains("Accepted."), "{text}");
    assert!(text.contains("code=\"unknown_provider\""), "{text}");
    assert!(
        !text.contains("query-secret") && !text.contains("userinfo-secret"),
        "{text}"
    );
}

#[tokio::test]
async fn the_events_command_escapes_stored_ids_before_printing_them() {
    let app =
        spawn("[providers.demo]\nkind = \"generic\"\nsecrets = [\"test-generic-secret\"]\n").await;
    // The event ID comes from the body (no X-Webhook-ID header): a sender chose it.
    let event_id = format!("evt\u{1b}]0;owned\u{7}\n{FORGED}");
    let body = json!({
        "id": event_id,
        "type": "post.created",
        "data": {"object": {"id": "p1"}}
    })
    .to_string();
    let headers: Vec<(String, String)> =
        generic_headers(GENERIC_SECRET, "unused", app.clock_unix(), body.as_bytes())
            .into_iter()
            .filter(|(k, _)| k != "X-Webhook-ID")
            .collect();
    let response = app.post("demo", &headers, body).await;
    assert_eq!(response.status(), 200);
    let config = app.dir.path().join("config.toml");
    let dir = app.stop().await;
    for args in [&["list"][..], &["dead-letters"][..]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .arg("events")
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("HOOKGATE_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.stdout.iter().any(|b| *b == 0x1b || *b == 0x07),
            "a control character reached the terminal: {stdout:?}"
        );
        assert!(
            !stdout.lines().any(|l| l.starts_with("2026-12-01")),
            "a forged line: {stdout}"
        );
        if args == ["list"] {
            assert!(
                stdout.contains("evt\\x1b]0;owned\\x07\\x0a2026-12-01"),
                "{stdout}"
            );
        }
    }
    drop(dir);
}

#[test]
fn hookgate_check_does_not_print_a_token_from_a_sink_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "providers_dir = \"{}\"\n[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"ftp://user:pw-secret@hooks.example/in?token=cfg-secret\"\n",
            providers_dir().display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(text.contains("ftp://hooks.example/in"), "{text}");
    assert!(
        !text.contains("cfg-secret") && !text.contains("pw-secret"),
        "{text}"
    );
}
