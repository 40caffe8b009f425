//! Hostile input: a table of malformed, oversized and tricky requests, each answered with its
//! 4xx (never a 5xx, never a crash), plus slow clients that must not starve normal ones.
//!
//! Requests go over raw TCP so that nothing normalises them on the way. Where hookgate itself
//! answers, the body has the JSON error shape; a few requests are refused by the HTTP layer
//! (actix-http) before hookgate sees them, with an empty body: those rows expect `None`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
body_limit_bytes = 262144

[providers.shop]
kind = "shopify"
secrets = ["shop-secret"]

[providers.crm]
kind = "pipedrive"
basic_auth = { username = "hooks", password = "crm-password" }

[providers.stripe]
secrets = ["whsec_test"]
"#;

/// Sends raw bytes; returns the status and the body (empty when the server sent none).
async fn raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A POST with a generic-kind signature over `body`.
fn signed(path: &str, body: &[u8], ts: i64, extra: &str) -> Vec<u8> {
    let sig = hmac_hex(GENERIC_SECRET, body);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         X-Webhook-ID: evt_hostile\r\nX-Webhook-Timestamp: {ts}\r\n\
         X-Webhook-Signature: sha256={sig}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn plain(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// The JSON error code, or `None` where the HTTP layer refuses with an empty body.
    code: Option<&'static str>,
}

fn case(name: &'static str, request: Vec<u8>, status: u16, code: Option<&'static str>) -> Case {
    Case {
        name,
        request,
        status,
        code,
    }
}

#[tokio::test]
async fn every_hostile_request_gets_its_4xx_and_the_server_stays_up() {
    let app = spawn_with(
        CONFIG,
        SpawnOptions {
            server_extra: "body_read_timeout_ms = 500".into(),
            ..Default::default()
        },
    )
    .await;
    let now = app.clock_unix();
    let deep = "[".repeat(100_000);
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_name = "a".repeat(8_000);
    let long_path = format!("/webhooks/{long_name}");
    let many_v1: String = (0..2_000).map(|_| ",v1=00").collect();
    let stripe_header = format!("Stripe-Signature: t={now}{many_v1}\r\n");
    let huge_auth = format!("Authorization: Basic {}\r\n", "QUFB".repeat(3_000));
    let mut chunked_over = b"POST /webhooks/demo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..300 {
        chunked_over.extend_from_slice(b"400\r\n");
        chunked_over.extend_from_slice(&[b'x'; 1024]);
        chunked_over.extend_from_slice(b"\r\n");
    }
    chunked_over.extend_from_slice(b"0\r\n\r\n");
    let cases = vec![
        case("malformed JSON", signed("/webhooks/demo", b"{\"id\":", now, ""), 400, Some("invalid_payload")),
        case("100000-deep nesting", signed("/webhooks/demo", deep.as_bytes(), now, ""), 400, Some("invalid_payload")),
        case("invalid UTF-8", signed("/webhooks/demo", b"{\"id\":\"\xff\xfe\"}", now, ""), 400, Some("invalid_payload")),
        case("NUL bytes", signed("/webhooks/demo", b"{\"id\":\0\0}", now, ""), 400, Some("invalid_payload")),
        case("number 1e400", signed("/webhooks/demo", b"{\"type\":\"a.b\",\"n\":1e400}", now, ""), 400, Some("invalid_payload")),
        case("empty body", signed("/webhooks/demo", b"", now, ""), 400, Some("invalid_payload")),
        case("top-level array", signed("/webhooks/demo", b"[1,2,3]", now, ""), 422, Some("unprocessable_event")),
        case("JSON null", signed("/webhooks/demo", b"null", now, ""), 422, Some("unprocessable_event")),
        case("JSON string", signed("/webhooks/demo", b"\"post.created\"", now, ""), 422, Some("unprocessable_event")),
        case("type is an object", signed("/webhooks/demo", b"{\"type\":{\"a\":1}}", now, ""), 422, Some("unprocessable_event")),
        case("huge header value", plain("POST", "/webhooks/demo", &format!("X-Pad: {}\r\n", "a".repeat(20_000)), b"{}"), 431, Some("headers_too_large")),
        case("hundreds of headers", plain("POST", "/webhooks/demo", &many_headers, b"{}"), 431, None),
        case("non-hex signature", plain("POST", "/webhooks/demo", "X-Webhook-Signature: sha256=zzzz\r\n", b"{}"), 401, Some("malformed_signature_header")),
        case("non-base64 signature", plain("POST", "/webhooks/shop", "X-Shopify-Hmac-Sha256: !!!not base64!!!\r\n", b"{}"), 401, Some("malformed_signature_header")),
        case("wrong signature prefix", plain("POST", "/webhooks/demo", "X-Webhook-Signature: md5=00\r\n", b"{}"), 401, Some("malformed_signature_header")),
        case("missing signature", plain("POST", "/webhooks/demo", "", b"{}"), 401, Some("missing_signature")),
        case("timestamp not a number", signed("/webhooks/demo", b"{}", now, "").replace_ts(now, "yesterday"), 401, Some("malformed_signature_header")),
        case("stale timestamp", signed("/webhooks/demo", b"{}", now - 3_600, ""), 401, Some("timestamp_out_of_tolerance")),
        case("future timestamp", signed("/webhooks/demo", b"{}", now + 3_600, ""), 401, Some("timestamp_out_of_tolerance")),
        case("2000 stripe v1 entries", plain("POST", "/webhooks/stripe", &stripe_header, b"{}"), 401, Some("malformed_signature_header")),
        case("garbage basic auth", plain("POST", "/webhooks/crm", "Authorization: Basic !!!\r\n", b"{}"), 401, Some("unauthorized")),
        case("huge basic auth", plain("POST", "/webhooks/crm", &huge_auth, b"{}"), 401, Some("unauthorized")),
        case("chunked body over the limit", chunked_over, 413, Some("payload_too_large")),
        case("Content-Length over the limit", plain("POST", "/webhooks/demo", "", &[b'x'; 300_000]), 413, Some("payload_too_large")),
        case("Content-Length that lies", b"POST /webhooks/demo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 500\r\n\r\n{}".to_vec(), 408, Some("request_timeout")),
        case("PATCH", plain("PATCH", "/webhooks/demo", "", b"{}"), 405, Some("method_not_allowed")),
        case("OPTIONS", plain("OPTIONS", "/webhooks/demo", "", b""), 405, Some("method_not_allowed")),
        case("GET with a body", plain("GET", "/webhooks/demo", "", b"{}"), 405, Some("method_not_allowed")),
        case("unknown provider, big body", plain("POST", "/webhooks/nope", "", &[b'x'; 60_000]), 404, Some("unknown_provider")),
        case("dot-dot path", plain("POST", "/webhooks/../../etc/passwd", "", b"{}"), 404, Some("not_found")),
        case("encoded slash", plain("POST", "/webhooks/demo%2f..%2fhealth", "", b"{}"), 404, Some("unknown_provider")),
        case("very long name", plain("POST", &long_path, "", b"{}"), 404, Some("unknown_provider")),
        case("unknown route", plain("GET", "/admin/../../secret", "", b""), 404, Some("not_found")),
        case("garbage request line", b"HELLO\r\n\r\n".to_vec(), 400, None),
        case("conflicting Content-Length", b"POST /webhooks/demo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}".to_vec(), 400, None),
        case("non-ASCII header name", b"POST /webhooks/demo HTTP/1.1\r\nHost: x\r\nX-\xc3\xa9: v\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 400, None),
    ];
    assert!(cases.len() >= 30);
    for case in &cases {
        let (status, body) = raw(app.port, &case.request).await;
        assert!(status < 500, "{}: got {status}", case.name);
        assert_eq!(status, case.status, "{}: {body}", case.name);
        if let Some(code) = case.code {
            let json: Value = serde_json::from_str(&body)
                .unwrap_or_else(|_| panic!("{}: not JSON: {body:?}", case.name));
            assert_eq!(json["error"]["code"], code, "{}", case.name);
            assert!(json["error"]["message"].is_string(), "{}", case.name);
            assert!(!body.contains(GENERIC_SECRET) && !body.contains("crm-password"));
        }
    }
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // And a normal event still goes through.
    let body = generic_body("evt_after_hostile", "post.created", "p1");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_after_hostile", &body)
        .await;
    assert_eq!(response.status(), 200);
}

trait ReplaceTs {
    fn replace_ts(self, ts: i64, with: &str) -> Vec<u8>;
}

impl ReplaceTs for Vec<u8> {
    fn replace_ts(self, ts: i64, with: &str) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replace(
                &format!("X-Webhook-Timestamp: {ts}"),
                &format!("X-Webhook-Timestamp: {with}"),
            )
            .into_bytes()
    }
}

#[tokio::test]
async fn slow_clients_do_not_starve_normal_ones_and_are_cut_off() {
    let app = spawn_with(
        CONFIG,
        SpawnOptions {
            server_extra: "header_read_timeout_ms = 1000\nbody_read_timeout_ms = 1000".into(),
            ..Default::default()
        },
    )
    .await;
    // 50 slowloris connections: a request head trickled one header at a time, never finished.
    let mut slow = Vec::new();
    for i in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .unwrap();
        stream
            .write_all(
                format!("POST /webhooks/demo HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: a").as_bytes(),
            )
            .await
            .unwrap();
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for stream in slow.iter_mut() {
                let _ = stream.write_all(b"b").await;
            }
        }
        // Past the header read timeout the server has answered (408) and closed each one.
        let mut closed = 0;
        let mut buf = [0u8; 256];
        for stream in slow.iter_mut() {
            loop {
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        closed += 1;
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Err(_) => break,
                }
            }
        }
        closed
    });
    // Meanwhile normal requests are served promptly.
    for i in 0..10 {
        let started = Instant::now();
        let id = format!("evt_normal_{i}");
        let body = generic_body(&id, "post.created", "p1");
        let response = app.post_generic("demo", GENERIC_SECRET, &id, &body).await;
        assert_eq!(response.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a normal request took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = trickle.await.unwrap();
    assert_eq!(closed, 50, "every slow connection was closed by the server");
}
