//! No configured secret, password or token appears in any log line (at DEBUG) or response,
//! whatever the traffic.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;

const SECRETS: [&str; 5] = [
    "generic-super-secret-1",
    "crm-password-2",
    "admin-token-3",
    "whsec_c2luay1zZWNyZXQtNC1zaW5rLXNlY3JldA==",
    "stripe-secret-5",
];

#[tokio::test]
async fn no_secret_reaches_a_log_line_or_a_response_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = format!(
        r#"
providers_dir = "{providers}"
[server]
bind = "127.0.0.1:{port}"
[storage]
path = "{store}"
[log]
level = "debug"
format = "json"
[admin]
token = "{admin}"
[providers.demo]
kind = "generic"
secrets = ["{generic}"]
[providers.crm]
kind = "pipedrive"
basic_auth = {{ username = "hooks", password = "{crm}" }}
[providers.stripe]
secrets = ["{stripe}"]
[[sinks]]
name = "app"
kind = "http"
url = "http://127.0.0.1:9/unreachable"
secret = "{sink}"
retry = {{ max_attempts = 2, initial_backoff_ms = 10, max_backoff_ms = 10 }}
"#,
        providers = providers_dir().display(),
        store = dir.path().join("store").display(),
        admin = SECRETS[2],
        generic = SECRETS[0],
        crm = SECRETS[1],
        stripe = SECRETS[4],
        sink = SECRETS[3],
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..200 {
        if client.get(format!("{base}/health")).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "gateway did not start");

    let mut responses = String::new();
    let now = chrono::Utc::now().timestamp();
    let body = generic_body("evt_s1", "post.created", "p1");
    let forged = generic_body("evt_s2", "post.created", "p2");
    let crm_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("hooks:{}", SECRETS[1]))
    );
    let requests = vec![
        // valid, then a duplicate
        (
            format!("{base}/webhooks/demo"),
            generic_headers(SECRETS[0], "evt_s1", now, body.as_bytes()),
            body.clone(),
        ),
        (
            format!("{base}/webhooks/demo"),
            generic_headers(SECRETS[0], "evt_s1", now, body.as_bytes()),
            body.clone(),
        ),
        // wrong secret, stale, malformed
        (
            format!("{base}/webhooks/demo"),
            generic_headers("wrong", "evt_s2", now, forged.as_bytes()),
            forged.clone(),
        ),
        (
            format!("{base}/webhooks/demo"),
            generic_headers(SECRETS[0], "evt_s3", now - 9999, body.as_bytes()),
            body.clone(),
        ),
        (
            format!("{base}/webhooks/demo"),
            vec![("X-Webhook-Signature".into(), "sha256=nothex".into())],
            body.clone(),
        ),
        // Basic Auth right and wrong
        (
            format!("{base}/webhooks/crm"),
            vec![("Authorization".into(), crm_auth.clone())],
            std::fs::read_to_string(fixtures_dir().join("pipedrive/v2_deal_change.json")).unwrap(),
        ),
        (
            format!("{base}/webhooks/crm"),
            vec![("Authorization".into(), "Basic aG9va3M6d3Jvbmc=".into())],
            "{}".into(),
        ),
        // Stripe with a bad signature
        (
            format!("{base}/webhooks/stripe"),
            vec![("Stripe-Signature".into(), format!("t={now},v1=00"))],
            "{}".into(),
        ),
    ];
    for (url, headers, body) in requests {
        let mut request = client.post(url);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.body(body).send().await.unwrap();
        responses.push_str(&format!("{:?}", response.headers()));
        responses.push_str(&response.text().await.unwrap());
    }
    for path in [
        "/admin/events",
        "/admin/dead-letters",
        "/metrics",
        "/ready",
        "/webhooks/crm/health",
    ] {
        let response = client
            .get(format!("{base}{path}"))
            .bearer_auth(SECRETS[2])
            .header("Authorization-Extra", "x")
            .send()
            .await
            .unwrap();
        responses.push_str(&response.text().await.unwrap());
    }
    let listed: serde_json::Value = client
        .get(format!("{base}/admin/events"))
        .bearer_auth(SECRETS[2])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for event in listed["events"].as_array().unwrap() {
        let id = event["id"].as_str().unwrap();
        responses.push_str(
            &client
                .get(format!("{base}/admin/events/{id}"))
                .bearer_auth(SECRETS[2])
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    // Let the failing sink try (and dead-letter) so its attempts are logged too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(logs.lines().count() > 20, "debug logging was on:\n{logs}");
    assert!(logs.contains("evt_s1"), "request logs are there");
    let crm_b64 = crm_auth.trim_start_matches("Basic ").to_owned();
    for secret in SECRETS.iter().copied().chain([crm_b64.as_str()]) {
        assert!(!logs.contains(secret), "`{secret}` in the logs");
        assert!(!responses.contains(secret), "`{secret}` in a response");
    }
    // The signature the gateway expected for the forged body is never revealed.
    let expected = hmac_hex(SECRETS[0], forged.as_bytes());
    assert!(!logs.contains(&expected) && !responses.contains(&expected));
}
