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
