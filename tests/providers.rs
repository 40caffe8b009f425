//! Provider behaviour over real HTTP: handshakes answered as each provider requires (and not
//! stored), batches, the Mailgun replay guard, URL-signing schemes, and the `sign` and `replay`
//! commands against a running gateway.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn hmac_hex_of(secret: &str, parts: &[&[u8]]) -> String {
    hmac_hex(secret, &parts.concat())
}

#[tokio::test]
async fn slack_url_verification_is_answered_with_the_challenge_and_not_stored() {
    let app = spawn("[providers.slack]\nsecrets = [\"slack-secret\"]\n").await;
    let body = r#"{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let ts = app.clock_unix().to_string();
    let sig = format!(
        "v0={}",
        hmac_hex_of(
            "slack-secret",
            &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]
        )
    );
    let headers = vec![
        ("X-Slack-Request-Timestamp".to_owned(), ts),
        ("X-Slack-Signature".to_owned(), sig),
    ];
    let response = app.post("slack", &headers, body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );
    // An unsigned verification is refused like any other request.
    let response = app.post("slack", &[], body).await;
    assert_eq!(error_code(response).await, "missing_signature");
    // The handshake was not stored: the first envelope in the sink is the next real event.
    let event = r#"{"type":"event_callback","event_id":"Ev1","event_time":1705314600,"event":{"type":"reaction_added","user":"U1","reaction":"thumbsup","item":{"type":"message","channel":"C1","ts":"1705314599.000100"},"event_ts":"1705314600.000200"}}"#;
    let ts = app.clock_unix().to_string();
    let sig = format!(
        "v0={}",
        hmac_hex_of(
            "slack-secret",
            &[b"v0:", ts.as_bytes(), b":", event.as_bytes()]
        )
    );
    let headers = vec![
        ("X-Slack-Request-Timestamp".to_owned(), ts),
        ("X-Slack-Signature".to_owned(), sig),
    ];
    assert_eq!(app.post("slack", &headers, event).await.status(), 200);
    let envelopes = app.sink_envelopes(1).await;
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0]["event_id"], "Ev1");
    assert_eq!(envelopes[0]["object"], "reaction");
    assert_eq!(envelopes[0]["action"], "created");
}

#[tokio::test]
async fn zoom_url_validation_returns_the_encrypted_token() {
    let app = spawn("[providers.zoom]\nsecrets = [\"secretValueTest\"]\n").await;
    let body = r#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let ts = app.clock_unix().to_string();
    let sig = format!(
        "v0={}",
        hmac_hex_of(
            "secretValueTest",
            &[b"v0:", ts.as_bytes(), b":", body.as_bytes()]
        )
    );
    let headers = vec![
        ("x-zm-request-timestamp".to_owned(), ts),
        ("x-zm-signature".to_owned(), sig),
    ];
    let answer: Value = app.post("zoom", &headers, body).await.json().await.unwrap();
    // Expected value from elastic/beats' Zoom handler test.
    assert_eq!(
        answer,
        json!({
            "plainToken": "qgg8vlvZRS6UYooatFL8Aw",
            "encryptedToken": "70c1f2e2e6ca2d39297490d1f9142c7d701415ea8e6151f6562a08fa657a40ff"
        })
    );
}

#[tokio::test]
async fn twitch_verification_echoes_the_challenge_as_plain_text() {
    let app = spawn("[providers.twitch]\nsecrets = [\"twitch-secret\"]\n").await;
    let body = r#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","type":"channel.follow","version":"1","status":"webhook_callback_verification_pending"}}"#;
    let ts = chrono::DateTime::from_timestamp(app.clock_unix(), 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let id = "e76c6bd4-55c9-4987-8304-da1588d8988b";
    let sig = format!(
        "sha256={}",
        hmac_hex_of(
            "twitch-secret",
            &[id.as_bytes(), ts.as_bytes(), body.as_bytes()]
        )
    );
    let headers = vec![
        ("Twitch-Eventsub-Message-Id".to_owned(), id.to_owned()),
        ("Twitch-Eventsub-Message-Timestamp".to_owned(), ts),
        ("Twitch-Eventsub-Message-Signature".to_owned(), sig),
        (
            "Twitch-Eventsub-Message-Type".to_owned(),
            "webhook_callback_verification".to_owned(),
        ),
    ];
    let response = app.post("twitch", &headers, body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(
        response.text().await.unwrap(),
        "pogchamp-kappa-360noscope-vohiyo"
    );
}

#[tokio::test]
async fn a_pusher_batch_becomes_one_envelope_per_event_each_deduplicated() {
    let app = spawn("[providers.pusher]\nsecrets = [\"pusher-secret\"]\n").await;
    let post = |body: String| {
        let sig = hmac_hex("pusher-secret", body.as_bytes());
        let headers = vec![
            ("X-Pusher-Key".to_owned(), "app-key".to_owned()),
            ("X-Pusher-Signature".to_owned(), sig),
        ];
        let app = &app;
        async move { app.post("pusher", &headers, body).await }
    };
    let batch = r#"{"time_ms":1705314600000,"events":[{"name":"channel_occupied","channel":"presence-room"},{"name":"member_added","channel":"presence-room","user_id":"u1"},{"name":"member_removed","channel":"presence-room","user_id":"u2"}]}"#;
    let answer: Value = post(batch.to_owned()).await.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["status"] == "accepted"));
    let envelopes = app.sink_envelopes(3).await;
    let pairs: Vec<(&str, &str)> = envelopes
        .iter()
        .map(|e| (e["object"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("channel", "occupied"),
            ("member", "added"),
            ("member", "removed")
        ]
    );
    assert_eq!(envelopes[1]["object_id"], "u1");
    assert_eq!(envelopes[1]["occurred_at"], "2024-01-15T10:30:00Z");

    // The same batch again: every event is a duplicate.
    let again: Value = post(batch.to_owned()).await.json().await.unwrap();
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["events"][0]["id"], events[0]["id"]);
    // A batch mixing a known and a new event stores only the new one.
    let mixed = r#"{"time_ms":1705314600000,"events":[{"name":"channel_occupied","channel":"presence-room"},{"name":"channel_vacated","channel":"presence-room"}]}"#;
    let mixed: Value = post(mixed.to_owned()).await.json().await.unwrap();
    assert_eq!(mixed["status"], "accepted");
    assert_eq!(mixed["events"][0]["status"], "duplicate");
    assert_eq!(mixed["events"][1]["status"], "accepted");
    assert_eq!(app.sink_envelopes(4).await.len(), 4);
}

fn mailgun_body(token: &str, event_id: &str, ts: i64) -> String {
    let signature = hmac_hex_of(
        "mailgun-key",
        &[ts.to_string().as_bytes(), token.as_bytes()],
    );
    format!(
        r#"{{"signature":{{"timestamp":"{ts}","token":"{token}","signature":"{signature}"}},"event-data":{{"id":"{event_id}","event":"delivered","timestamp":{ts}.5,"recipient":"a@example.com","message":{{"headers":{{"message-id":"m1@example.com"}}}}}}}}"#
    )
}

#[tokio::test]
async fn a_mailgun_token_cannot_be_reused_for_another_event() {
    let app = spawn("[providers.mailgun]\nsecrets = [\"mailgun-key\"]\n").await;
    let ts = app.clock_unix();
    let token = "5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6";
    let first = mailgun_body(token, "ev-1", ts);
    let answer: Value = app
        .post("mailgun", &[], first.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "accepted");
    // A retry of the same delivery is a duplicate, not a replay.
    let answer: Value = app.post("mailgun", &[], first).await.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate");
    // The captured signature and token with forged event data: refused.
    let forged = mailgun_body(token, "ev-forged", ts);
    let response = app.post("mailgun", &[], forged).await;
    assert_eq!(response.status(), 401);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "invalid_signature");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("replay"));
    // A fresh token is fine.
    let other = mailgun_body(
        "another-token-0000000000000000000000000000000000",
        "ev-2",
        ts,
    );
    let answer: Value = app.post("mailgun", &[], other).await.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
}

#[tokio::test]
async fn twilio_signatures_cover_the_public_url_and_its_query() {
    let app = spawn(
        r#"
[providers.twilio]
secrets = ["twilio-token"]
public_url = "https://hooks.example.com/webhooks/twilio"
"#,
    )
    .await;
    let body = "AccountSid=AC1&Body=Hello&From=%2B15550001111&MessageSid=SM1&SmsStatus=received&To=%2B15550002222";
    let signed = "https://hooks.example.com/webhooks/twilio?tenant=a\
                  AccountSidAC1BodyHelloFrom+15550001111MessageSidSM1SmsStatusreceivedTo+15550002222";
    let signature = {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"twilio-token").unwrap();
        mac.update(signed.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    let response = app
        .client
        .post(app.url("/webhooks/twilio?tenant=a"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", &signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let envelope = &app.sink_envelopes(1).await[0];
    assert_eq!(
        (envelope["object"].as_str(), envelope["action"].as_str()),
        (Some("message"), Some("received"))
    );
    assert_eq!(envelope["current"]["Body"], "Hello");
    // Without the query the URL differs: refused.
    let response = app
        .client
        .post(app.url("/webhooks/twilio"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", &signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, "invalid_signature");
}

#[test]
fn sign_prints_the_providers_headers_and_a_curl_command() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "Hello, World!").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args([
            "sign",
            "--kind",
            "github",
            "--secret",
            "It's a Secret to Everybody",
        ])
        .arg("--providers")
        .arg(providers_dir())
        .args(["--header", "X-GitHub-Event=issues"])
        .arg(&body)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    // GitHub's documented vector.
    assert!(text.contains(
        "x-hub-signature-256: sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    ), "{text}");
    assert!(text.contains("x-github-event: issues"), "{text}");
    assert!(
        text.contains("curl -sS -X POST 'http://127.0.0.1:8080/webhooks/github'"),
        "{text}"
    );
    assert!(text.contains("--data-binary @"), "{text}");
}

/// Every fixture set, and the `[providers.<kind>]` of each with its fixture instance settings.
fn every_fixture_kind() -> (Vec<hookgate::fixture::FixtureSet>, String) {
    let sets = hookgate::fixture::discover(&[fixtures_dir()]).unwrap();
    let mut providers = toml::Table::new();
    for set in &sets {
        providers.insert(
            set.kind.clone(),
            toml::Value::Table(set.file.instance.clone()),
        );
    }
    let mut root = toml::Table::new();
    root.insert("providers".into(), toml::Value::Table(providers));
    (sets, toml::to_string(&root).unwrap())
}

#[tokio::test]
async fn replay_sends_every_fixture_freshly_signed_and_all_are_acknowledged() {
    // One gateway serving every fixture kind with the fixture instance settings.
    let (sets, instances) = every_fixture_kind();
    let app = spawn(&instances).await;

    // Replay reads the gateway's address and secrets from a config like the operator's.
    let config = config_text(app.dir.path(), "", &instances).replace(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"127.0.0.1:{}\"", app.port),
    );
    let config_path = app.dir.path().join("replay.toml");
    std::fs::write(&config_path, config).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["replay", "--config"])
        .arg(&config_path)
        .arg(fixtures_dir())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let cases: usize = sets.iter().map(|s| s.cases.len()).sum();
    assert!(
        stdout.contains(&format!("{cases} passed, 0 failed")),
        "{stdout}"
    );

    // With a wrong secret every signed kind fails, and the exit status says so.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["replay", "--secret", "wrong", "--config"])
        .arg(&config_path)
        .arg(fixtures_dir().join("github"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("invalid_signature"));
}

/// Issue 14's kinds on existing schemes.
const SECOND_WAVE: &[&str] = &[
    "openai",
    "resend",
    "clerk",
    "jira",
    "bitbucket",
    "zendesk",
    "typeform",
    "calendly",
    "pagerduty",
    "sentry",
    "customerio",
    "razorpay",
    "lemonsqueezy",
    "telegram",
];

/// A secret of the right shape for `kind` that is not the fixture's.
fn wrong_secret(kind: &str) -> &'static str {
    match kind {
        "openai" | "resend" | "clerk" => "whsec_d3JvbmctLXNlY3JldC0tMDEyMzQ1Njc4OWFi",
        _ => "not-the-configured-secret",
    }
}

/// Every fixture instance under its own name, plus `<kind>-wrong` with another secret;
/// `instance_extra` is added to every instance.
fn second_wave_config(sets: &[hookgate::fixture::FixtureSet], instance_extra: &str) -> String {
    let mut providers = toml::Table::new();
    for set in sets {
        let mut instance = set.file.instance.clone();
        for (key, value) in instance_extra.parse::<toml::Table>().unwrap() {
            instance.insert(key, value);
        }
        providers.insert(set.kind.clone(), toml::Value::Table(instance.clone()));
        instance.insert(
            "secrets".into(),
            toml::Value::from(vec![wrong_secret(&set.kind)]),
        );
        providers.insert(format!("{}-wrong", set.kind), toml::Value::Table(instance));
    }
    let mut root = toml::Table::new();
    root.insert("providers".into(), toml::Value::Table(providers));
    toml::to_string(&root).unwrap()
}

fn second_wave_sets() -> Vec<hookgate::fixture::FixtureSet> {
    let dirs: Vec<_> = SECOND_WAVE.iter().map(|k| fixtures_dir().join(k)).collect();
    let sets = hookgate::fixture::discover(&dirs).unwrap();
    assert_eq!(sets.len(), SECOND_WAVE.len());
    assert!(sets
        .iter()
        .all(|s| s.file.signed_at == sets[0].file.signed_at));
    sets
}

async fn answer_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

async fn assert_refused(response: reqwest::Response, code: &str, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    assert_eq!(error_code(response).await, code, "{what}");
}

fn is_handshake(kind: &str, case: &str) -> bool {
    matches!(
        (kind, case),
        ("bitbucket", "diagnostics_ping") | ("pagerduty", "pagey_ping")
    )
}

#[tokio::test]
async fn second_wave_kinds_refuse_forgeries_answer_handshakes_and_deduplicate() {
    let sets = second_wave_sets();
    let signed_at = sets[0].file.signed_at;
    let app = spawn_with(
        &second_wave_config(&sets, ""),
        SpawnOptions {
            clock_unix: Some(signed_at),
            ..Default::default()
        },
    )
    .await;
    let mut stored = 0;
    for set in &sets {
        let kind = set.kind.as_str();
        for case in &set.cases {
            let what = format!("{kind}/{}", case.name);
            let answer = answer_of(app.post(kind, &case.headers, case.body.clone()).await).await;
            if is_handshake(kind, &case.name) {
                // Answered, not stored: asking again is answered the same way.
                assert_eq!(answer["status"], "ok", "{what}");
                assert!(answer["handshake"].is_string(), "{what}");
                let again = answer_of(app.post(kind, &case.headers, case.body.clone()).await).await;
                assert_eq!(again, answer, "{what}");
                continue;
            }
            assert_eq!(answer["status"], "accepted", "{what}: {answer}");
            stored += 1;
            let again = answer_of(app.post(kind, &case.headers, case.body.clone()).await).await;
            assert_eq!(again["status"], "duplicate", "{what}");
            assert_eq!(again["id"], answer["id"], "{what}");

            let wrong = app
                .post(&format!("{kind}-wrong"), &case.headers, case.body.clone())
                .await;
            assert_refused(wrong, "invalid_signature", &what).await;

            let unsigned: Vec<(String, String)> = case
                .headers
                .iter()
                .filter(|(name, _)| {
                    let name = name.to_ascii_lowercase();
                    !(name.contains("signature") || name.contains("secret-token"))
                })
                .cloned()
                .collect();
            let missing = app.post(kind, &unsigned, case.body.clone()).await;
            assert_refused(missing, "missing_signature", &what).await;

            // Telegram's token does not cover the body: nothing to tamper with.
            if kind != "telegram" {
                let mut tampered = case.body.clone();
                let at = tampered.len() / 2;
                tampered[at] ^= 0x01;
                let response = app.post(kind, &case.headers, tampered).await;
                assert_refused(response, "invalid_signature", &what).await;
            }
        }
    }
    // Only the business events reached the sink, once each.
    let envelopes = app.sink_envelopes(stored).await;
    assert_eq!(envelopes.len(), stored);
    assert!(envelopes
        .iter()
        .all(|e| !["pagey.ping", "diagnostics:ping"].contains(&e["type"].as_str().unwrap())));
    app.stop().await;

    // The kinds with a signed timestamp refuse it stale and in the future.
    let timed = [
        "openai",
        "resend",
        "clerk",
        "zendesk",
        "calendly",
        "customerio",
    ];
    let timed_sets: Vec<_> = sets
        .into_iter()
        .filter(|s| timed.contains(&s.kind.as_str()))
        .collect();
    assert_eq!(timed_sets.len(), timed.len());
    for skew in [301, -301] {
        let app = spawn_with(
            &second_wave_config(&timed_sets, "tolerance_secs = 300"),
            SpawnOptions {
                clock_unix: Some(signed_at + skew),
                ..Default::default()
            },
        )
        .await;
        for set in &timed_sets {
            let case = &set.cases[0];
            let response = app.post(&set.kind, &case.headers, case.body.clone()).await;
            let what = format!("{} at {skew}", set.kind);
            assert_refused(response, "timestamp_out_of_tolerance", &what).await;
        }
        app.stop().await;
    }
}

/// `hookgate sign` prints headers the gateway accepts, for every second-wave kind.
#[tokio::test]
async fn sign_output_is_accepted_for_every_second_wave_kind() {
    let sets = second_wave_sets();
    let app = spawn(&second_wave_config(&sets, "")).await;
    for set in &sets {
        let case = set
            .cases
            .iter()
            .find(|c| !is_handshake(&set.kind, &c.name))
            .unwrap();
        let secret = set.secrets()[0].clone();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
        command
            .args(["sign", "--kind", &set.kind, "--secret", &secret])
            .arg("--timestamp")
            .arg(app.clock_unix().to_string())
            .arg("--providers")
            .arg(providers_dir());
        // The provider's other headers (ids, event names) go in; its old signature does not.
        for (name, value) in &case.headers {
            command.arg("--header").arg(format!("{name}={value}"));
        }
        let output = command.arg(&case.body_path).output().await.unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}: {text}", set.kind);
        let headers: Vec<(String, String)> = text
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let answer = answer_of(app.post(&set.kind, &headers, case.body.clone()).await).await;
        assert_eq!(answer["status"], "accepted", "{}: {answer}", set.kind);
        // The same headers do not pass for another secret.
        let response = app
            .post(&format!("{}-wrong", set.kind), &headers, case.body.clone())
            .await;
        assert_eq!(
            error_code(response).await,
            "invalid_signature",
            "{}",
            set.kind
        );
    }
}

/// `hookgate sign` prints what the gateway accepts, for every kind with fixtures: one stored
/// case of each (its golden answer is `accepted`), signed by the real binary with the
/// instance's secret (the fixture's private key for public-key kinds), its Basic Auth and
/// `public_url`, and posted with the printed headers (and the query the printed curl carries).
#[tokio::test]
async fn sign_output_is_accepted_for_every_kind() {
    let (sets, instances) = every_fixture_kind();
    let app = spawn(&instances).await;
    let scratch = tempfile::tempdir().unwrap();
    let mut signed_kinds = Vec::new();
    for set in &sets {
        let stored = set.cases.iter().find(|c| {
            let expected: Value =
                serde_json::from_str(&std::fs::read_to_string(&c.expected_path).unwrap()).unwrap();
            expected["status"] == 200 && expected["response"]["status"] == "accepted"
        });
        let Some(case) = stored else {
            continue;
        };
        let what = format!("{}/{}", set.kind, case.name);
        let body_path = scratch.path().join(format!("{}.body", set.kind));
        std::fs::write(&body_path, &case.body).unwrap();
        let instance = &set.file.instance;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
        command
            .args(["sign", "--kind", &set.kind])
            .arg("--timestamp")
            .arg(app.clock_unix().to_string())
            .arg("--providers")
            .arg(providers_dir());
        if let Some(secret) = set
            .file
            .signing_key
            .clone()
            .or(set.secrets().first().cloned())
        {
            command.args(["--secret", &secret]);
        }
        if let Some(auth) = instance.get("basic_auth").and_then(|v| v.as_table()) {
            let user = auth["username"].as_str().unwrap();
            let password = auth["password"].as_str().unwrap();
            command.args(["--basic-auth", &format!("{user}:{password}")]);
        }
        if let Some(url) = instance.get("public_url").and_then(|v| v.as_str()) {
            command.args(["--url", url]);
        }
        // The provider's other headers (ids, event names) go in; its old signature does not.
        for (name, value) in &case.headers {
            command.arg("--header").arg(format!("{name}={value}"));
        }
        let output = command.arg(&body_path).output().await.unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{what}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut lines = text.lines();
        let headers: Vec<(String, String)> = lines
            .by_ref()
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let (name, value) = l.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        // `curl -sS -X POST '<url>'`: a query the scheme added (Twilio, Azure's `?code=`).
        let curl = lines.next().unwrap_or_default();
        let url = curl.split('\'').nth(1).unwrap_or_default();
        let query = url.split_once('?').map(|(_, q)| q.to_owned());
        // Schemes that sign inside the body (Mailgun) write the signed body beside it.
        let signed_body = std::fs::read(body_path.with_extension("body.signed"))
            .unwrap_or_else(|_| case.body.clone());
        let mut target = app.url(&format!("/webhooks/{}", set.kind));
        if let Some(query) = query {
            target = format!("{target}?{query}");
        }
        let mut request = app.client.post(&target).body(signed_body);
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let answer = response.text().await.unwrap();
        assert_eq!(status, 200, "{what}: {answer}");
        // Some kinds answer in the provider's own format (Discord); the header says how.
        assert!(
            answer.contains("\"accepted\"") || answer.contains("\"type\""),
            "{what}: {answer}"
        );
        signed_kinds.push(set.kind.clone());
    }
    eprintln!("signed and accepted: {} kinds", signed_kinds.len());
    assert_eq!(signed_kinds.len(), sets.len(), "{signed_kinds:?}");
}
