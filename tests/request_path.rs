//! Every stage of DESIGN §1 over real HTTP: its status, its error code, its JSON body.

mod common;

use common::*;
use serde_json::Value;

const DEMO: &str = r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
"#;

#[tokio::test]
async fn a_signed_event_is_accepted_and_its_envelope_reaches_the_file_sink() {
    let app = spawn(DEMO).await;
    let body = generic_body("evt_1", "post.created", "p1");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_1", &body)
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    assert_eq!(answer["event_id"], "evt_1");
    let id = answer["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 26, "a ULID");

    let envelopes = app.sink_envelopes(1).await;
    assert_eq!(envelopes.len(), 1);
    let e = &envelopes[0];
    assert_eq!(e["id"], id);
    assert_eq!(e["provider"], "demo");
    assert_eq!(e["kind"], "generic");
    assert_eq!(e["type"], "post.created");
    assert_eq!(e["object"], "post");
    assert_eq!(e["action"], "created");
    assert_eq!(e["object_id"], "p1");
    assert_eq!(e["current"]["title"], "t");
    assert_eq!(e["previous"], Value::Null);
    assert_eq!(e["occurred_at"], "2024-01-15T10:30:00Z");
}

#[tokio::test]
async fn a_replayed_event_is_acknowledged_as_duplicate_and_stored_once() {
    let app = spawn(DEMO).await;
    let body = generic_body("evt_dup", "post.updated", "p1");
    let first: Value = app
        .post_generic("demo", GENERIC_SECRET, "evt_dup", &body)
        .await
        .json()
        .await
        .unwrap();
    let second = app
        .post_generic("demo", GENERIC_SECRET, "evt_dup", &body)
        .await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["status"], "duplicate");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["event_id"], "evt_dup");
    // A different event afterwards proves the sink has caught up; the duplicate is not in it.
    let other = generic_body("evt_other", "post.updated", "p2");
    app.post_generic("demo", GENERIC_SECRET, "evt_other", &other)
        .await;
    let envelopes = app.sink_envelopes(2).await;
    assert_eq!(envelopes.len(), 2);
    assert_eq!(
        envelopes
            .iter()
            .filter(|e| e["event_id"] == "evt_dup")
            .count(),
        1
    );
}

#[tokio::test]
async fn twenty_identical_requests_at_once_give_exactly_one_accepted() {
    let app = spawn(DEMO).await;
    let body = generic_body("evt_race", "post.created", "p1");
    let headers = generic_headers(
        GENERIC_SECRET,
        "evt_race",
        app.clock_unix(),
        body.as_bytes(),
    );
    let requests = (0..20).map(|_| app.post("demo", &headers, body.clone()));
    let responses = futures_util::future::join_all(requests).await;
    let mut statuses = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        statuses.push(answer["status"].as_str().unwrap().to_owned());
        ids.insert(answer["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses.iter().filter(|s| *s == "accepted").count(), 1);
    assert_eq!(statuses.iter().filter(|s| *s == "duplicate").count(), 19);
    assert_eq!(ids.len(), 1, "every duplicate names the stored event");
}

#[tokio::test]
async fn an_unknown_provider_is_404_even_for_other_methods() {
    let app = spawn(DEMO).await;
    let response = app.post("nope", &[], "{}").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "unknown_provider");
    let response = app
        .client
        .get(app.url("/webhooks/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "unknown_provider");
    let response = app.client.get(app.url("/elsewhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
}

#[tokio::test]
async fn a_known_provider_answers_other_methods_with_405() {
    let app = spawn(DEMO).await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = app
            .client
            .request(method, app.url("/webhooks/demo"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], "POST");
        assert_eq!(error_code(response).await, "method_not_allowed");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_declared_or_streamed() {
    let app = spawn(
        r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
body_limit_bytes = 1024
"#,
    )
    .await;
    let big = "x".repeat(2048);
    let response = app.post("demo", &[], big.clone()).await;
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "payload_too_large");
    // Chunked, with no Content-Length: refused while reading.
    let chunks =
        futures_util::stream::iter((0..64).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 100])));
    let response = app
        .client
        .post(app.url("/webhooks/demo"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "payload_too_large");
    // Exactly at the limit passes this stage (and then fails the signature).
    let response = app.post("demo", &[], "y".repeat(1024)).await;
    assert_eq!(error_code(response).await, "missing_signature");
}

#[tokio::test]
async fn a_client_outside_the_allowlist_is_403() {
    let app = spawn(
        r#"
[providers.locked]
kind = "generic"
secrets = ["test-generic-secret"]
allow_ips = ["192.0.2.0/24"]

[providers.open]
kind = "generic"
secrets = ["test-generic-secret"]
allow_ips = ["127.0.0.0/8"]
"#,
    )
    .await;
    let body = generic_body("evt_ip", "post.created", "p1");
    let response = app
        .post_generic("locked", GENERIC_SECRET, "evt_ip", &body)
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(error_code(response).await, "ip_not_allowed");
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let mut headers = generic_headers(GENERIC_SECRET, "evt_ip", app.clock_unix(), body.as_bytes());
    headers.push(("X-Forwarded-For".into(), "192.0.2.10".into()));
    let response = app.post("locked", &headers, body.clone()).await;
    assert_eq!(response.status(), 403);
    let response = app
        .post_generic("open", GENERIC_SECRET, "evt_ip", &body)
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let app = spawn_with(
        r#"
[providers.locked]
kind = "generic"
secrets = ["test-generic-secret"]
allow_ips = ["192.0.2.0/24"]
"#,
        SpawnOptions {
            server_extra: r#"trusted_proxies = ["127.0.0.1/32"]"#.into(),
            ..Default::default()
        },
    )
    .await;
    let body = generic_body("evt_xff", "post.created", "p1");
    let signed = generic_headers(GENERIC_SECRET, "evt_xff", app.clock_unix(), body.as_bytes());
    // The loopback peer is a trusted proxy: the right-most untrusted hop is the client.
    let mut headers = signed.clone();
    headers.push(("X-Forwarded-For".into(), "203.0.113.5, 192.0.2.10".into()));
    let response = app.post("locked", &headers, body.clone()).await;
    assert_eq!(response.status(), 200);
    // An attacker can prepend anything; the proxy-appended hop decides.
    let mut headers = signed.clone();
    headers.push(("X-Forwarded-For".into(), "192.0.2.10, 203.0.113.5".into()));
    let response = app.post("locked", &headers, body.clone()).await;
    assert_eq!(response.status(), 403);
    // Only `server.forwarded_header` (default X-Forwarded-For) is believed: `Forwarded` alone
    // leaves the peer as the client (tests/day_two.rs covers `forwarded_header = "forwarded"`).
    let mut headers = signed;
    headers.push(("Forwarded".into(), "for=192.0.2.77;proto=https".into()));
    let response = app.post("locked", &headers, body).await;
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn requests_past_the_burst_are_429_with_retry_after() {
    let app = spawn(
        r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
rate_limit = { per_second = 0.01, burst = 3 }
"#,
    )
    .await;
    for i in 0..3 {
        let body = generic_body(&format!("evt_rl_{i}"), "post.created", "p1");
        let response = app
            .post_generic("demo", GENERIC_SECRET, &format!("evt_rl_{i}"), &body)
            .await;
        assert_eq!(response.status(), 200);
    }
    let body = generic_body("evt_rl_x", "post.created", "p1");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_rl_x", &body)
        .await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(response).await, "rate_limited");
}

const PIPEDRIVE: &str = r#"
[providers.crm]
kind = "pipedrive"
basic_auth = { username = "hooks", password = "s3cret-pw" }
"#;

fn basic(user: &str, pass: &str) -> (String, String) {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    ("Authorization".into(), format!("Basic {token}"))
}

#[tokio::test]
async fn basic_auth_is_required_and_checked() {
    let app = spawn(PIPEDRIVE).await;
    let body = std::fs::read(fixtures_dir().join("pipedrive/v2_deal_change.json")).unwrap();
    let response = app.post("crm", &[], body.clone()).await;
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic realm="));
    assert_eq!(error_code(response).await, "unauthorized");
    let response = app
        .post("crm", &[basic("hooks", "wrong")], body.clone())
        .await;
    assert_eq!(response.status(), 401);
    let response = app.post("crm", &[basic("hooks", "s3cret-pw")], body).await;
    assert_eq!(response.status(), 200);
    // The provider health check sits behind the same credentials.
    let url = app.url("/webhooks/crm/health");
    let response = app.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let (k, v) = basic("hooks", "s3cret-pw");
    let response = app.client.get(&url).header(k, v).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["kind"], "pipedrive");
}

#[tokio::test]
async fn signature_failures_have_distinct_codes() {
    let app = spawn(DEMO).await;
    let body = generic_body("evt_sig", "post.created", "p1");
    let ts = app.clock_unix();
    let signed = generic_headers(GENERIC_SECRET, "evt_sig", ts, body.as_bytes());
    let without = |name: &str| -> Vec<(String, String)> {
        signed.iter().filter(|(k, _)| k != name).cloned().collect()
    };
    let with = |name: &str, value: &str| -> Vec<(String, String)> {
        let mut h = without(name);
        h.push((name.into(), value.into()));
        h
    };
    let cases = [
        (without("X-Webhook-Signature"), "missing_signature"),
        (
            with("X-Webhook-Signature", "sha256=nothex"),
            "malformed_signature_header",
        ),
        (
            with("X-Webhook-Signature", "md5=abcd"),
            "malformed_signature_header",
        ),
        (
            with(
                "X-Webhook-Signature",
                &format!("sha256={}", hmac_hex("other", body.as_bytes())),
            ),
            "invalid_signature",
        ),
        (
            with("X-Webhook-Timestamp", "yesterday"),
            "malformed_signature_header",
        ),
    ];
    for (headers, code) in cases {
        let response = app.post("demo", &headers, body.clone()).await;
        assert_eq!(response.status(), 401, "{code}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(!message.contains(GENERIC_SECRET));
        assert!(!message.contains(&hmac_hex(GENERIC_SECRET, body.as_bytes())));
    }
    // The body is what is signed: one changed byte fails.
    let tampered = body.replace("p1", "p2");
    let response = app.post("demo", &signed, tampered).await;
    assert_eq!(error_code(response).await, "invalid_signature");
}

#[tokio::test]
async fn stale_and_future_timestamps_are_refused_outside_the_tolerance() {
    let app = spawn(
        r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
tolerance_secs = 60
"#,
    )
    .await;
    let now = app.clock_unix();
    for (offset, expected) in [(-61, 401), (61, 401), (-59, 200), (59, 200)] {
        let id = format!("evt_ts_{offset}");
        let body = generic_body(&id, "post.created", "p1");
        let headers = generic_headers(GENERIC_SECRET, &id, now + offset, body.as_bytes());
        let response = app.post("demo", &headers, body).await;
        assert_eq!(response.status(), expected, "offset {offset}");
        if expected == 401 {
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer["error"]["code"], "timestamp_out_of_tolerance");
            assert!(answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("61 s"));
        }
    }
}

#[tokio::test]
async fn any_of_several_secrets_verifies_during_rotation() {
    let app = spawn(
        r#"
[providers.demo]
kind = "generic"
secrets = ["new-secret", "old-secret", ""]
"#,
    )
    .await;
    for (secret, id) in [("old-secret", "evt_old"), ("new-secret", "evt_new")] {
        let body = generic_body(id, "post.created", "p1");
        let response = app.post_generic("demo", secret, id, &body).await;
        assert_eq!(response.status(), 200, "{secret}");
    }
    let body = generic_body("evt_retired", "post.created", "p1");
    let response = app
        .post_generic("demo", "retired-secret", "evt_retired", &body)
        .await;
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "invalid_signature");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 configured"));
}

#[tokio::test]
async fn a_verified_body_that_is_not_json_is_400() {
    let app = spawn(DEMO).await;
    for body in ["{not json", "", "[1e400]"] {
        let response = app
            .post_generic("demo", GENERIC_SECRET, "evt_bad", body)
            .await;
        assert_eq!(response.status(), 400, "{body:?}");
        assert_eq!(error_code(response).await, "invalid_payload");
    }
}

#[tokio::test]
async fn an_event_that_cannot_be_normalised_is_422_and_not_claimed() {
    let app = spawn(DEMO).await;
    let body = r#"{"id":"evt_untyped","data":{}}"#;
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_untyped", body)
        .await;
    assert_eq!(response.status(), 422);
    assert_eq!(error_code(response).await, "unprocessable_event");
    // Not claimed as a duplicate: the same ID with a usable body is accepted later.
    let fixed = generic_body("evt_untyped", "post.created", "p1");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_untyped", &fixed)
        .await;
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_array", "[1,2]")
        .await;
    assert_eq!(response.status(), 422);
}

#[tokio::test]
async fn health_and_readiness_answer_json() {
    let app = spawn(DEMO).await;
    let health: Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["service"], "hookgate");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["timestamp"].is_string());
    let ready = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let provider = app
        .client
        .get(app.url("/webhooks/demo/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(provider.status(), 200);
    let missing = app
        .client
        .get(app.url("/webhooks/nope/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn oversized_headers_are_431_with_a_json_error() {
    let app = spawn(DEMO).await;
    let response = app
        .client
        .post(app.url("/webhooks/demo"))
        .header("X-Padding", "a".repeat(20 * 1024))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(error_code(response).await, "headers_too_large");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_cut_off_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_with(
        DEMO,
        SpawnOptions {
            server_extra: "body_read_timeout_ms = 300".into(),
            ..Default::default()
        },
    )
    .await;
    // Content-Length promises 100 bytes; only 2 arrive.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    stream
        .write_all(b"POST /webhooks/demo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // The server is still fine.
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
