//! Issue 12, "what a team expects on day two": each defect the end-to-end audit found, and the
//! features it asked for, over real HTTP against the real server (or with the real binary).

mod common;

use common::*;
use serde_json::Value;

const DEMO: &str = r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
"#;

fn pusher_headers(body: &str) -> Vec<(String, String)> {
    vec![
        ("X-Pusher-Key".to_owned(), "app-key".to_owned()),
        (
            "X-Pusher-Signature".to_owned(),
            hmac_hex("pusher-secret", body.as_bytes()),
        ),
    ]
}

// 1. Pusher/Sockudo batches

#[tokio::test]
async fn a_pusher_batch_that_adds_removes_and_adds_one_member_keeps_all_three_events() {
    let app = spawn("[providers.pusher]\nsecrets = [\"pusher-secret\"]\n").await;
    // Sockudo: each element has its own time_ms.
    let sockudo = r#"{"time_ms":1705314600000,"events":[{"name":"member_added","channel":"presence-a","user_id":"u1","time_ms":1705314600001},{"name":"member_removed","channel":"presence-a","user_id":"u1","time_ms":1705314600002},{"name":"member_added","channel":"presence-a","user_id":"u1","time_ms":1705314600003}]}"#;
    // Pusher: the elements carry nothing that tells the two additions apart.
    let pusher = r#"{"time_ms":1705314700000,"events":[{"name":"member_added","channel":"presence-b","user_id":"u2"},{"name":"member_removed","channel":"presence-b","user_id":"u2"},{"name":"member_added","channel":"presence-b","user_id":"u2"}]}"#;
    let mut seen = 0;
    for body in [sockudo, pusher] {
        let answer: Value = app
            .post("pusher", &pusher_headers(body), body.to_owned())
            .await
            .json()
            .await
            .unwrap();
        let statuses: Vec<&str> = answer["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["accepted"; 3], "{answer}");
        seen += 3;
        let envelopes = app.sink_envelopes(seen).await;
        let last = &envelopes[seen - 1];
        assert_eq!(
            last["action"], "added",
            "the sink last sees the member added"
        );
        // The same batch again is three duplicates.
        let again: Value = app
            .post("pusher", &pusher_headers(body), body.to_owned())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["status"], "duplicate");
        assert_eq!(again["events"][2]["id"], answer["events"][2]["id"]);
    }
}

// 2. Forwarded headers behind a trusted proxy

const ALLOWLISTED: &str = r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
allow_ips = ["192.0.2.0/24"]
"#;

async fn post_forwarded(app: &TestApp, id: &str, forwarded: &[(&str, &str)]) -> reqwest::Response {
    let body = generic_body(id, "post.created", "p1");
    let mut headers = generic_headers(GENERIC_SECRET, id, app.clock_unix(), body.as_bytes());
    for (name, value) in forwarded {
        headers.push(((*name).to_owned(), (*value).to_owned()));
    }
    app.post("demo", &headers, body).await
}

#[tokio::test]
async fn a_client_cannot_pass_an_allowlist_with_its_own_x_forwarded_for_behind_a_forwarded_proxy() {
    let app = spawn_with(
        ALLOWLISTED,
        SpawnOptions {
            server_extra: "trusted_proxies = [\"127.0.0.0/8\"]\nforwarded_header = \"forwarded\""
                .into(),
            ..Default::default()
        },
    )
    .await;
    // The proxy says the client is 203.0.113.9; the client claims an allowed address.
    let forged = post_forwarded(
        &app,
        "evt_f1",
        &[
            ("Forwarded", "for=203.0.113.9"),
            ("X-Forwarded-For", "192.0.2.7"),
        ],
    )
    .await;
    assert_eq!(forged.status(), 403);
    assert_eq!(error_code(forged).await, "ip_not_allowed");
    // X-Forwarded-For alone is not believed: the client is the peer (127.0.0.1).
    let only_xff = post_forwarded(&app, "evt_f2", &[("X-Forwarded-For", "192.0.2.7")]).await;
    assert_eq!(only_xff.status(), 403);
    let allowed = post_forwarded(&app, "evt_f3", &[("Forwarded", "for=192.0.2.7")]).await;
    assert_eq!(allowed.status(), 200);
    // Both headers naming the same client are fine.
    let both = post_forwarded(
        &app,
        "evt_f4",
        &[
            ("Forwarded", "for=192.0.2.7"),
            ("X-Forwarded-For", "192.0.2.7"),
        ],
    )
    .await;
    assert_eq!(both.status(), 200);
}

#[tokio::test]
async fn with_the_default_x_forwarded_for_a_disagreeing_forwarded_header_is_refused() {
    let app = spawn_with(
        ALLOWLISTED,
        SpawnOptions {
            server_extra: "trusted_proxies = [\"127.0.0.0/8\"]".into(),
            ..Default::default()
        },
    )
    .await;
    let allowed = post_forwarded(&app, "evt_x1", &[("X-Forwarded-For", "192.0.2.7")]).await;
    assert_eq!(allowed.status(), 200);
    let conflict = post_forwarded(
        &app,
        "evt_x2",
        &[
            ("X-Forwarded-For", "192.0.2.7"),
            ("Forwarded", "for=203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(conflict.status(), 403);
    let body: Value = conflict.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Forwarded"),
        "{body}"
    );
}

// 3. generic: the signed body id is the event ID; tolerance needs a timestamp

#[tokio::test]
async fn a_captured_generic_body_resent_with_a_new_id_header_is_a_duplicate() {
    let app = spawn(DEMO).await;
    let body = generic_body("evt_signed", "post.created", "p1");
    let first: Value = app
        .post_generic("demo", GENERIC_SECRET, "evt_signed", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "accepted");
    let replayed = app
        .post_generic("demo", GENERIC_SECRET, "evt_other", &body)
        .await;
    assert_eq!(replayed.status(), 200);
    let replayed: Value = replayed.json().await.unwrap();
    assert_eq!(replayed["status"], "duplicate");
    assert_eq!(replayed["event_id"], "evt_signed");
    assert_eq!(replayed["id"], first["id"]);
    // A body without an id still takes the header's.
    let anonymous = r#"{"type":"post.created","data":{"object":{"id":"p2"}}}"#;
    let answer: Value = app
        .post_generic("demo", GENERIC_SECRET, "evt_from_header", anonymous)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["event_id"], "evt_from_header");
}

#[tokio::test]
async fn an_instance_with_its_own_tolerance_refuses_a_delivery_without_a_timestamp() {
    let app = spawn(&format!("{DEMO}tolerance_secs = 60\n")).await;
    let body = generic_body("evt_nots", "post.created", "p1");
    let headers: Vec<(String, String)> = generic_headers(
        GENERIC_SECRET,
        "evt_nots",
        app.clock_unix(),
        body.as_bytes(),
    )
    .into_iter()
    .filter(|(name, _)| name != "X-Webhook-Timestamp")
    .collect();
    let response = app.post("demo", &headers, body.clone()).await;
    assert_eq!(response.status(), 401);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "missing_signature");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("x-webhook-timestamp"));
    // Without its own tolerance the timestamp stays optional (the kind's default).
    let lenient = spawn(DEMO).await;
    let response = lenient.post("demo", &headers, body).await;
    assert_eq!(response.status(), 200);
}

// 4. filters without a colon

#[tokio::test]
async fn a_filter_without_a_colon_matches_object_action_of_every_instance() {
    let sink = |dir: &std::path::Path| {
        format!(
            "{DEMO}\n[[sinks]]\nname = \"posts\"\nkind = \"file\"\npath = \"{}\"\nevents = [\"post.*\"]\n",
            dir.join("posts.jsonl").display()
        )
    };
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_in(dir.clone(), &sink(dir.path()), SpawnOptions::default()).await;
    for (id, event_type) in [("evt_p1", "post.created"), ("evt_c1", "comment.created")] {
        let body = generic_body(id, event_type, "o1");
        assert_eq!(
            app.post_generic("demo", GENERIC_SECRET, id, &body)
                .await
                .status(),
            200
        );
    }
    // The audit sink sees both; the `post.*` sink only the post.
    assert_eq!(app.sink_envelopes(2).await.len(), 2);
    let posts = wait_for_lines(&dir.path().join("posts.jsonl"), 1).await;
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["type"], "post.created");
}

// 5. health routes and methods

#[tokio::test]
async fn health_routes_answer_head_and_refuse_other_methods_with_405_and_allow() {
    let app = spawn(DEMO).await;
    for path in ["/health", "/ready", "/metrics", "/webhooks/demo/health"] {
        let head = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        for method in [
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method} {path}");
            assert_eq!(response.headers()["allow"], "GET, HEAD", "{method} {path}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "method_not_allowed");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("use GET, HEAD"), "{path}: {message}");
        }
    }
    let get = app
        .client
        .get(app.url("/webhooks/demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
}

// 6. settings that would be ignored

fn check_config(extra: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text(dir.path(), "", extra)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("HOOKGATE__SERVER__BIND")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn settings_a_kind_would_ignore_are_check_errors_naming_the_key() {
    let (ok, text) = check_config(
        "[providers.crm]\nkind = \"pipedrive\"\nsecrets = [\"x\"]\nbasic_auth = { username = \"u\", password = \"p\" }\n",
    );
    assert!(!ok, "{text}");
    assert!(text.contains("providers.crm.secrets"), "{text}");
    let (ok, text) = check_config(
        "[providers.crm]\nkind = \"pipedrive\"\ntolerance_secs = 60\nbasic_auth = { username = \"u\", password = \"p\" }\n",
    );
    assert!(!ok, "{text}");
    assert!(text.contains("providers.crm.tolerance_secs"), "{text}");
    let (ok, text) = check_config("[providers.gl]\nkind = \"gitlab\"\nsecrets = [\"t\"]\n");
    assert!(ok, "{text}");
}

#[test]
fn a_filter_naming_an_unknown_instance_is_a_check_error() {
    let (ok, text) = check_config(&format!(
        "{DEMO}\n[[sinks]]\nname = \"x\"\nkind = \"file\"\npath = \"/tmp/never\"\nevents = [\"post.*\", \"demoo:post.*\"]\n"
    ));
    assert!(!ok, "{text}");
    assert!(text.contains("sinks[0].events[1]"), "{text}");
    assert!(text.contains("`demoo`"), "{text}");
}

// 7. sign for Basic-Auth kinds

#[tokio::test]
async fn hookgate_sign_for_pipedrive_prints_a_request_the_gateway_accepts() {
    let app = spawn(
        "[providers.crm]\nkind = \"pipedrive\"\nbasic_auth = { username = \"hooks\", password = \"pw\" }\n",
    )
    .await;
    let body = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pipedrive")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.to_string_lossy().contains(".headers.")
                && !p.to_string_lossy().contains(".expected.")
        })
        .unwrap();
    let sign = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["sign", "--kind", "pipedrive", "--providers"])
            .arg(providers_dir())
            .args(extra)
            .arg(&body)
            .output()
            .unwrap()
    };
    let refused = sign(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--basic-auth"));
    let output = sign(&["--basic-auth", "hooks:pw"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}");
    let headers: Vec<(String, String)> = text
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert!(headers.iter().any(|(k, _)| k == "authorization"), "{text}");
    let response = app
        .post("crm", &headers, std::fs::read(&body).unwrap())
        .await;
    assert_eq!(response.status(), 200);
}

// 8. admin errors

const ADMIN: &str = "[admin]\ntoken = \"day-two-token\"\n";

#[tokio::test]
async fn the_admin_api_refuses_an_unknown_sink_the_same_way_on_every_route() {
    let app = spawn(&format!("{DEMO}{ADMIN}")).await;
    for (method, path) in [
        (reqwest::Method::GET, "/admin/dead-letters?sink=unknown"),
        (
            reqwest::Method::POST,
            "/admin/dead-letters/redeliver?sink=unknown",
        ),
        (
            reqwest::Method::POST,
            "/admin/events/01J/redeliver?sink=unknown",
        ),
    ] {
        let response = app
            .client
            .request(method, app.url(path))
            .bearer_auth("day-two-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(error_code(response).await, "unknown_sink", "{path}");
    }
    let bad = app
        .client
        .get(app.url("/admin/events?limit=lots"))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let wrong_method = app
        .client
        .delete(app.url("/admin/dead-letters"))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(error_code(wrong_method).await, "method_not_allowed");
}

// 13. batch edge cases

#[tokio::test]
async fn a_batch_with_one_bad_element_names_it_and_an_empty_batch_is_not_accepted() {
    let app = spawn("[providers.pusher]\nsecrets = [\"pusher-secret\"]\n").await;
    let bad = r#"{"time_ms":1705314600000,"events":[{"name":"member_added","channel":"c","user_id":"u1"},{"channel":"c"}]}"#;
    let response = app
        .post("pusher", &pusher_headers(bad), bad.to_owned())
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("event 1 of the batch (`/events/1`)"),
        "{message}"
    );
    let empty = r#"{"time_ms":1705314600000,"events":[]}"#;
    let response = app
        .post("pusher", &pusher_headers(empty), empty.to_owned())
        .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("holds no events"));
}

// 14. sink errors and skew wording

#[tokio::test]
async fn a_future_timestamp_is_reported_as_in_the_future() {
    let app = spawn(DEMO).await;
    let body = generic_body("evt_future", "post.created", "p1");
    let headers = generic_headers(
        GENERIC_SECRET,
        "evt_future",
        app.clock_unix() + 301,
        body.as_bytes(),
    );
    let response = app.post("demo", &headers, body).await;
    assert_eq!(response.status(), 401);
    let answer: Value = response.json().await.unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("301 s in the future"), "{message}");
    assert!(!message.contains('-'), "{message}");
}

#[tokio::test]
async fn a_refused_sink_connection_keeps_its_cause_in_the_attempt() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let app = spawn_with(
        &format!(
            "{DEMO}{ADMIN}\n[[sinks]]\nname = \"down\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/hooks\"\nretry = {{ max_attempts = 1, initial_backoff_ms = 10, max_backoff_ms = 10 }}\n"
        ),
        SpawnOptions {
            moving_clock: true,
            ..Default::default()
        },
    )
    .await;
    let id = &send_demo(&app, "evt_down").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let error = loop {
        let event: Value = app
            .client
            .get(app.url(&format!("/admin/events/{id}")))
            .bearer_auth("day-two-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = event.to_string();
        if found.contains("\"attempts_made\":[{") || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        error.to_lowercase().contains("connection refused"),
        "the cause is kept: {error}"
    );
}

// 10. rejection lines name the client; "Accepted." names the event type

#[tokio::test]
async fn rejection_lines_carry_the_client_ip_and_accepted_lines_the_event_type() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let text = config_text(
        dir.path(),
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &format!("{DEMO}allow_ips = [\"192.0.2.0/24\"]\n"),
    )
    .replace(
        "level = \"warn\"",
        "level = \"hookgate=debug,info\"\nformat = \"json\"",
    );
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(value) = serde_json::from_str(&line) {
                if tx.send(value).is_err() {
                    break;
                }
            }
        }
    });
    let next = |want: &dyn Fn(&Value) -> bool| loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the expected log line");
        if want(&line) {
            return line;
        }
    };
    let listening = next(&|l| l["fields"]["message"] == "Listening.");
    let port = listening["fields"]["port"].as_u64().unwrap();
    let client = reqwest::Client::new();
    let send = |id: &'static str, forwarded: &'static str| {
        let client = client.clone();
        async move {
            let body = generic_body(id, "post.created", "p1");
            let mut request = client
                .post(format!("http://127.0.0.1:{port}/webhooks/demo"))
                .header("X-Forwarded-For", forwarded);
            for (k, v) in generic_headers(
                GENERIC_SECRET,
                id,
                chrono::Utc::now().timestamp(),
                body.as_bytes(),
            ) {
                request = request.header(k, v);
            }
            request.body(body).send().await.unwrap().status()
        }
    };
    assert_eq!(send("evt_l1", "203.0.113.9").await, 403);
    let rejected = next(&|l| l["fields"]["message"] == "Rejected.");
    assert_eq!(rejected["fields"]["client_ip"], "203.0.113.9", "{rejected}");
    assert_eq!(rejected["fields"]["code"], "ip_not_allowed");
    assert_eq!(send("evt_l2", "192.0.2.7").await, 200);
    let accepted = next(&|l| l["fields"]["message"] == "Accepted.");
    let span = accepted["span"].to_string();
    assert!(span.contains("post.created"), "{accepted}");
    let _ = child.kill();
    let _ = child.wait();
}

// 11. a closed pipe

#[tokio::test]
async fn the_events_command_ends_quietly_when_its_reader_goes_away() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_in(dir.clone(), DEMO, SpawnOptions::default()).await;
    for i in 0..3 {
        let id = format!("evt_pipe_{i}");
        let body = generic_body(&id, "post.created", "p1");
        app.post_generic("demo", GENERIC_SECRET, &id, &body).await;
    }
    let dir = app.stop().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["events", "list", "--config"])
        .arg(dir.path().join("config.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Hang up before it writes, as `| head -0` does: its first line meets a closed pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{stderr}");
}

// 12. configuration errors

fn check_with(extra: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text(dir.path(), "", extra)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn config_errors_name_the_variable_the_line_the_choices_and_the_nested_key() {
    let text = check_with(DEMO, &[("HOOKGATE__SERVER__BIND", "not-an-address")]);
    assert!(
        text.contains("environment variable HOOKGATE__SERVER__BIND"),
        "{text}"
    );
    let text = check_with("[providers.demo\nkind = \"generic\"\n", &[]);
    assert!(text.contains("line "), "{text}");
    assert!(text.contains("column "), "{text}");
    let text = check_with(&format!("{DEMO}mode = \"fast\"\n"), &[]);
    assert!(text.contains("async") && text.contains("sync"), "{text}");
    let text = check_with(
        &format!("{DEMO}rate_limit = {{ per_second = 1, burst = 1, brust = 2 }}\n"),
        &[],
    );
    assert!(text.contains("providers.demo.rate_limit.brust"), "{text}");
}

// Filters: `where` conditions

#[tokio::test]
async fn where_conditions_pick_envelopes_by_their_fields_with_case_kept() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let extra = format!(
        "{DEMO}\n[[sinks]]\nname = \"published\"\nkind = \"file\"\npath = \"{}\"\nevents = [\"post.*\"]\nwhere = {{ \"current.status\" = \"published\", \"current.channelName\" = \"presence-*\" }}\n",
        dir.path().join("published.jsonl").display()
    );
    let app = spawn_in(dir.clone(), &extra, SpawnOptions::default()).await;
    let post = |id: &'static str, status: &'static str, channel: &'static str| {
        let app = &app;
        async move {
            let body = format!(
                r#"{{"id":"{id}","type":"post.updated","data":{{"object":{{"id":"p1","status":"{status}","channelName":"{channel}"}}}}}}"#
            );
            app.post_generic("demo", GENERIC_SECRET, id, &body)
                .await
                .status()
        }
    };
    assert_eq!(post("evt_w1", "draft", "presence-1").await, 200);
    assert_eq!(post("evt_w2", "published", "private-1").await, 200);
    assert_eq!(post("evt_w3", "published", "presence-9").await, 200);
    // The audit sink has all three, in order; the filtered sink only the third.
    assert_eq!(app.sink_envelopes(3).await.len(), 3);
    let published = wait_for_lines(&dir.path().join("published.jsonl"), 1).await;
    let ids: Vec<&str> = published
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["evt_w3"]);
}

#[test]
fn check_refuses_a_where_condition_on_no_envelope_field() {
    let (ok, text) = check_config(&format!(
        "{DEMO}\n[[sinks]]\nname = \"x\"\nkind = \"file\"\npath = \"/tmp/never\"\nwhere = {{ \"status\" = \"published\" }}\n"
    ));
    assert!(!ok, "{text}");
    assert!(text.contains("sinks[0].where.\"status\""), "{text}");
    assert!(text.contains("not an envelope field"), "{text}");
}

// rate_limit.status = 503

#[tokio::test]
async fn a_rate_limit_can_answer_503_for_senders_that_drop_on_4xx() {
    let app = spawn(&format!(
        "{DEMO}rate_limit = {{ per_second = 0.001, burst = 1, status = 503 }}\n"
    ))
    .await;
    let body = generic_body("evt_r1", "post.created", "p1");
    assert_eq!(
        app.post_generic("demo", GENERIC_SECRET, "evt_r1", &body)
            .await
            .status(),
        200
    );
    let body = generic_body("evt_r2", "post.created", "p1");
    let limited = app
        .post_generic("demo", GENERIC_SECRET, "evt_r2", &body)
        .await;
    assert_eq!(limited.status(), 503);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(error_code(limited).await, "rate_limited");
    let (ok, text) = check_config(&format!(
        "{DEMO}rate_limit = {{ per_second = 1, burst = 1, status = 418 }}\n"
    ));
    assert!(!ok && text.contains("rate_limit.status"), "{text}");
}

// Pause and resume

async fn admin_post(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap()
}

async fn admin_get(app: &TestApp, path: &str) -> Value {
    app.client
        .get(app.url(path))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_paused_instance_answers_503_paused_with_retry_after_even_after_a_restart() {
    let extra = format!("{DEMO}{ADMIN}");
    let app = spawn(&extra).await;
    let paused: Value = admin_post(&app, "/admin/instances/demo/pause")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["changed"], true);
    let body = generic_body("evt_pause", "post.created", "p1");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_pause", &body)
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "paused");
    let listed = admin_get(&app, "/admin/instances").await;
    assert_eq!(listed["instances"][0]["name"], "demo");
    assert_eq!(listed["instances"][0]["paused"], true);
    // Unknown names are refused like the other admin routes.
    let unknown = admin_post(&app, "/admin/instances/nope/pause").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(error_code(unknown).await, "unknown_provider");

    let dir = app.stop().await;
    let app = spawn_in(dir, &extra, SpawnOptions::default()).await;
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_pause", &body)
        .await;
    assert_eq!(response.status(), 503, "the pause survives a restart");
    let resumed = admin_post(&app, "/admin/instances/demo/resume").await;
    assert_eq!(resumed.status(), 200);
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_pause", &body)
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_paused_sink_keeps_its_tasks_pending_until_it_is_resumed() {
    let app = spawn(&format!("{DEMO}{ADMIN}")).await;
    assert_eq!(
        admin_post(&app, "/admin/sinks/audit/pause").await.status(),
        200
    );
    let body = generic_body("evt_held", "post.created", "p1");
    let answer: Value = app
        .post_generic("demo", GENERIC_SECRET, "evt_held", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "accepted");
    let id = answer["id"].as_str().unwrap();
    let event = admin_get(&app, &format!("/admin/events/{id}")).await;
    let text = event.to_string();
    assert!(text.contains("\"status\":\"pending\""), "{text}");
    assert!(std::fs::read_to_string(app.sink_path())
        .unwrap_or_default()
        .is_empty());
    assert_eq!(
        admin_post(&app, "/admin/sinks/audit/resume").await.status(),
        200
    );
    let delivered = app.sink_envelopes(1).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["event_id"], "evt_held");
}

fn hookgate(args: &[&str], config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_cli_pauses_and_resumes_instances_and_sinks_on_a_stopped_gateway() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_in(dir.clone(), DEMO, SpawnOptions::default()).await;
    let dir = app.stop().await;
    let config = dir.path().join("config.toml");
    let out = hookgate(&["instances", "pause", "demo"], &config);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("instance demo paused"));
    let again = hookgate(&["instances", "pause", "demo"], &config);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already"));
    let unknown = hookgate(&["sinks", "pause", "nope"], &config);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no sink named `nope`"));
    let listed = hookgate(&["instances", "list"], &config);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("paused since"));

    let app = spawn_in(dir, DEMO, SpawnOptions::default()).await;
    let body = generic_body("evt_cli", "post.created", "p1");
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_cli", &body)
        .await;
    assert_eq!(response.status(), 503);
    let dir = app.stop().await;
    let out = hookgate(&["instances", "resume", "demo"], &config);
    assert!(out.status.success(), "{out:?}");
    let app = spawn_in(dir, DEMO, SpawnOptions::default()).await;
    let response = app
        .post_generic("demo", GENERIC_SECRET, "evt_cli", &body)
        .await;
    assert_eq!(response.status(), 200);
}

// hookgate sinks test

#[tokio::test]
async fn sinks_test_sends_a_marked_test_envelope_and_prints_the_answer() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_in(
        dir.clone(),
        &format!("{DEMO}{ADMIN}"),
        SpawnOptions::default(),
    )
    .await;
    // Through the running gateway's API.
    let config = dir.path().join("config.toml");
    let config_text = std::fs::read_to_string(&config).unwrap().replace(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"127.0.0.1:{}\"", app.port),
    );
    let online = dir.path().join("online.toml");
    std::fs::write(&online, config_text).unwrap();
    // The gateway runs on this test's runtime: wait for the command off it.
    let out = tokio::task::spawn_blocking(move || hookgate(&["sinks", "test", "audit"], &online))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["outcome"], "delivered");
    let envelopes = app.sink_envelopes(1).await;
    assert_eq!(envelopes[0]["type"], "hookgate.test");
    assert_eq!(envelopes[0]["meta"]["test"], true);
    // Nothing was stored: the event browser is empty.
    let listed = admin_get(&app, "/admin/events").await;
    assert_eq!(listed["events"].as_array().unwrap().len(), 0, "{listed}");
    app.stop().await;

    // A sink that refuses: the command says so and fails.
    let down = dir.path().join("down.toml");
    std::fs::write(&down, config_text_for_down_sink(dir.path())).unwrap();
    let out = hookgate(&["sinks", "test", "down"], &down);
    assert!(!out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["outcome"], "failed");
    assert!(
        answer["error"].as_str().unwrap().contains("request to"),
        "{answer}"
    );
}

fn config_text_for_down_sink(dir: &std::path::Path) -> String {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let store = tempfile::tempdir().unwrap().keep();
    config_text(
        &store,
        "",
        &format!(
            "{DEMO}\n[[sinks]]\nname = \"down\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/x\"\n"
        ),
    )
    .replace(
        &format!("{}", store.join("envelopes.jsonl").display()),
        &format!("{}", dir.join("down-audit.jsonl").display()),
    )
}

// Retry schedules and the answer of a successful attempt

/// A receiver answering the statuses in `script` in turn (then 200), each with a short body.
async fn scripted_receiver(script: Vec<u16>) -> (String, actix_web::dev::ServerHandle) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        script,
    )));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        let script = script.clone();
        App::new().default_service(web::to(move || {
            let status = script.lock().unwrap().pop_front().unwrap_or(200);
            async move {
                HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                    .body(format!("answer {status}"))
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}/hooks"), handle)
}

async fn attempts_of(
    app: &TestApp,
    id: &str,
    sink: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let event = admin_get(app, &format!("/admin/events/{id}")).await;
        let attempts: Vec<Value> = event["envelopes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["deliveries"].as_array().cloned().unwrap_or_default())
            .filter(|d| d["sink"] == sink)
            .flat_map(|d| d["attempts_made"].as_array().cloned().unwrap_or_default())
            .collect();
        if done(&attempts) || std::time::Instant::now() > deadline {
            return attempts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_retry_schedule_sets_the_delays_and_the_number_of_retries() {
    let (url, _receiver) = scripted_receiver(vec![500; 10]).await;
    let app = spawn_with(
        &format!(
            "{DEMO}{ADMIN}\n[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"{url}\"\nretry = {{ schedule = [\"100ms\", \"300ms\"] }}\n"
        ),
        SpawnOptions {
            moving_clock: true,
            ..Default::default()
        },
    )
    .await;
    let id = &send_demo(&app, "evt_sched").await;
    let attempts = attempts_of(&app, id, "app", |a| {
        a.last().is_some_and(|l| l["outcome"] == "dead")
    })
    .await;
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    // The first try and one retry per entry of the schedule, then a dead letter.
    assert_eq!(outcomes, ["retry", "retry", "dead"], "{attempts:?}");
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(attempts[i]["at"].as_str().unwrap()).unwrap()
    };
    assert!((at(1) - at(0)).num_milliseconds() >= 100, "{attempts:?}");
    assert!((at(2) - at(1)).num_milliseconds() >= 300, "{attempts:?}");
    let (ok, text) = check_config(&format!(
        "{DEMO}\n[[sinks]]\nname = \"x\"\nkind = \"file\"\npath = \"/tmp/never\"\nretry = {{ schedule = [\"1m\", \"5x\"] }}\n"
    ));
    assert!(!ok, "{text}");
    assert!(
        text.contains("retry.schedule[1]") && text.contains("`5x`"),
        "{text}"
    );
}

#[tokio::test]
async fn a_successful_attempt_keeps_the_start_of_the_answer() {
    let (url, _receiver) = scripted_receiver(vec![]).await;
    let app = spawn_with(
        &format!("{DEMO}{ADMIN}\n[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"{url}\"\n"),
        SpawnOptions {
            moving_clock: true,
            ..Default::default()
        },
    )
    .await;
    let body = generic_body("evt_snip", "post.created", "p1");
    let answer: Value = app
        .post_generic("demo", GENERIC_SECRET, "evt_snip", &body)
        .await
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_str().unwrap();
    let attempts = attempts_of(&app, id, "app", |a| !a.is_empty()).await;
    assert_eq!(attempts[0]["outcome"], "delivered");
    assert_eq!(attempts[0]["response"], "answer 200");
}

// Basic Auth with several credentials

#[tokio::test]
async fn basic_auth_accepts_any_of_several_credentials_during_a_rotation() {
    let app = spawn(
        "[providers.crm]\nkind = \"pipedrive\"\nbasic_auth = [{ username = \"hooks\", password = \"old-pw\" }, { username = \"hooks2\", password = \"new-pw\" }]\n",
    )
    .await;
    let body = r#"{"meta":{"action":"updated","object":"deal","id":7,"timestamp":1705314600,"v":1},"current":{"id":7},"previous":{"id":7},"event":"updated.deal"}"#;
    let post = |user: &'static str, pass: &'static str| {
        let app = &app;
        async move {
            use base64::Engine as _;
            let auth = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            let headers = vec![
                ("Content-Type".to_owned(), "application/json".to_owned()),
                ("Authorization".to_owned(), auth),
            ];
            app.post("crm", &headers, body.to_owned()).await.status()
        }
    };
    assert_eq!(post("hooks", "old-pw").await, 200);
    assert_eq!(post("hooks2", "new-pw").await, 200);
    assert_eq!(post("hooks", "new-pw").await, 401);
    assert_eq!(post("hooks2", "old-pw").await, 401);
    let (ok, text) = check_config(
        "[providers.crm]\nkind = \"pipedrive\"\nbasic_auth = [{ username = \"a\", password = \"x\" }, { username = \"b\", password = \"\" }]\n",
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("providers.crm.basic_auth[1].password"),
        "{text}"
    );
}

// Per-provider health; /metrics behind the admin token

#[tokio::test]
async fn provider_health_tells_the_last_event_time_and_whether_it_is_paused() {
    let app = spawn(&format!("{DEMO}{ADMIN}")).await;
    let health = |app: &TestApp| {
        let url = app.url("/webhooks/demo/health");
        let client = app.client.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let before = health(&app).await;
    assert_eq!(before["last_event_at"], Value::Null, "{before}");
    assert_eq!(before["paused"], false);
    let body = generic_body("evt_h1", "post.created", "p1");
    app.post_generic("demo", GENERIC_SECRET, "evt_h1", &body)
        .await;
    let after = health(&app).await;
    let at = after["last_event_at"].as_str().expect("a time");
    let stored = admin_get(&app, "/admin/events").await;
    assert_eq!(stored["events"][0]["received_at"], at, "{stored}");
    admin_post(&app, "/admin/instances/demo/pause").await;
    assert_eq!(health(&app).await["paused"], true);
}

#[tokio::test]
async fn metrics_can_require_the_admin_token() {
    let app = spawn(&format!("{DEMO}{ADMIN}protect_metrics = true\n")).await;
    let anonymous = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(error_code(anonymous).await, "unauthorized");
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let allowed = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(allowed
        .text()
        .await
        .unwrap()
        .contains("hookgate_requests_total"));
    // Without the option /metrics stays open.
    let open = spawn(DEMO).await;
    assert_eq!(
        open.client
            .get(open.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (ok, text) = check_config(&format!("{DEMO}[admin]\nprotect_metrics = true\n"));
    assert!(!ok && text.contains("admin.protect_metrics"), "{text}");
}

// Pipedrive meta across v1 and v2

#[tokio::test]
async fn pipedrive_meta_has_the_same_fields_and_types_in_v1_and_v2() {
    let app = spawn(
        "[providers.crm]\nkind = \"pipedrive\"\nbasic_auth = { username = \"hooks\", password = \"pw\" }\n",
    )
    .await;
    let fixtures = fixtures_dir().join("pipedrive");
    for case in ["v1_deal_updated", "v2_deal_change"] {
        use base64::Engine as _;
        let body = std::fs::read(fixtures.join(format!("{case}.json"))).unwrap();
        let headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            (
                "Authorization".to_owned(),
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("hooks:pw")
                ),
            ),
        ];
        assert_eq!(
            app.post("crm", &headers, body).await.status(),
            200,
            "{case}"
        );
    }
    let envelopes = app.sink_envelopes(2).await;
    let kind_of = |v: &Value| match v {
        Value::Number(n) if n.is_i64() => "integer",
        Value::Bool(_) => "boolean",
        Value::String(_) => "string",
        _ => "other",
    };
    for (field, expected) in [
        ("retry", "integer"),
        ("is_retry", "boolean"),
        ("change_source", "string"),
        ("is_bulk_update", "boolean"),
        ("user_id", "integer"),
        ("company_id", "integer"),
    ] {
        for envelope in &envelopes {
            assert_eq!(
                kind_of(&envelope["meta"][field]),
                expected,
                "meta.{field} of {}",
                envelope["meta"]["version"]
            );
        }
    }
    // A first delivery in both: v1 `retry` 0, v2 `attempt` 1.
    assert!(envelopes
        .iter()
        .all(|e| e["meta"]["retry"] == 0 && e["meta"]["is_retry"] == false));
}

// Search by object and action

#[tokio::test]
async fn events_can_be_searched_by_object_and_action_over_the_api_and_the_cli() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_in(
        dir.clone(),
        &format!("{DEMO}{ADMIN}"),
        SpawnOptions::default(),
    )
    .await;
    for (id, event_type) in [
        ("evt_s1", "post.created"),
        ("evt_s2", "post.deleted"),
        ("evt_s3", "comment.created"),
    ] {
        let body = generic_body(id, event_type, "o1");
        app.post_generic("demo", GENERIC_SECRET, id, &body).await;
    }
    let ids = |body: Value| -> Vec<String> {
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(admin_get(&app, "/admin/events?object=post").await),
        ["evt_s2", "evt_s1"]
    );
    assert_eq!(
        ids(admin_get(&app, "/admin/events?action=created").await),
        ["evt_s3", "evt_s1"]
    );
    assert_eq!(
        ids(admin_get(&app, "/admin/events?object=post&action=created").await),
        ["evt_s1"]
    );
    let bad = app
        .client
        .get(app.url("/admin/events?object=%5B"))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let dir = app.stop().await;
    let out = hookgate(
        &[
            "events", "list", "--object", "comment", "--action", "created",
        ],
        &dir.path().join("config.toml"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("evt_s3") && !stdout.contains("evt_s1"),
        "{stdout}"
    );
}

// Reprocess

#[tokio::test]
async fn an_unprocessable_event_is_reprocessed_after_a_definition_fix() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let providers = dir.path().join("providers");
    std::fs::create_dir_all(&providers).unwrap();
    let generic = std::fs::read_to_string(providers_dir().join("generic.toml")).unwrap();
    std::fs::write(providers.join("acme.toml"), &generic).unwrap();
    let extra = format!("{ADMIN}[providers.acme]\nsecrets = [\"test-generic-secret\"]\n");
    // The committed config shape, but with our providers directory.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), "", &extra).replace(
            &providers_dir().display().to_string(),
            &providers.display().to_string(),
        ),
    )
    .unwrap();
    let start = || async {
        let loaded = hookgate::config::load(&config).unwrap();
        let app = hookgate::startup::Application::build(loaded).await.unwrap();
        let port = app.port();
        let handle = app.handle();
        let join = tokio::spawn(app.run_until_stopped());
        (port, handle, join)
    };
    let (port, handle, join) = start().await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    // The sender writes its type under `kind`; the definition reads `/type` only.
    let body = r#"{"id":"evt_rp","kind":"post.created","data":{"object":{"id":"p1"}}}"#;
    let mut request = client.post(url("/webhooks/acme"));
    for (k, v) in generic_headers(
        GENERIC_SECRET,
        "evt_rp",
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    ) {
        request = request.header(k, v);
    }
    assert_eq!(request.body(body).send().await.unwrap().status(), 422);
    let listed: Value = client
        .get(url("/admin/events?status=unprocessable"))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = listed["events"][0]["id"].as_str().unwrap().to_owned();
    // Still broken: reprocessing says so and stores nothing.
    let still = client
        .post(url(&format!("/admin/events/{id}/reprocess")))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 400);
    assert!(still
        .text()
        .await
        .unwrap()
        .contains("still cannot be normalised"));
    let listed: Value = client
        .get(url("/admin/events"))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["events"].as_array().unwrap().len(),
        1,
        "nothing new stored"
    );
    handle.stop(true).await;
    join.await.unwrap().unwrap();

    // The fix: take the type from `/kind` too. Reprocess with the gateway stopped (the CLI
    // opens the store), then once more through the API of the restarted gateway.
    std::fs::write(
        providers.join("acme.toml"),
        generic.replace("type = [\"/type\"]", "type = [\"/type | /kind\"]"),
    )
    .unwrap();
    let out = hookgate(&["events", "reprocess", &id], &config);
    assert!(out.status.success(), "{out:?}");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert_eq!(answer["events"][0]["event_id"], "evt_rp");
    let (port, _handle, _join) = start().await;
    let again: Value = client
        .post(format!(
            "http://127.0.0.1:{port}/admin/events/{id}/reprocess"
        ))
        .bearer_auth("day-two-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "duplicate", "{again}");
    // The reprocessed envelope reaches the sink once.
    let envelopes = wait_for_lines(&dir.path().join("envelopes.jsonl"), 1).await;
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0]["type"], "post.created");
    assert_eq!(envelopes[0]["event_id"], "evt_rp");
}

// Export

#[tokio::test]
async fn a_stored_event_exports_as_a_fixture_that_replays_and_expects_its_envelope() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_in(dir.clone(), DEMO, SpawnOptions::default()).await;
    let body = generic_body("evt_export", "post.updated", "p9");
    let answer: Value = app
        .post_generic("demo", GENERIC_SECRET, "evt_export", &body)
        .await
        .json()
        .await
        .unwrap();
    let id = answer["id"].as_str().unwrap().to_owned();
    let stored = app.sink_envelopes(1).await.remove(0);
    let dir = app.stop().await;
    let fixture = dir.path().join("exported");
    let out = hookgate(
        &[
            "events",
            "export",
            &id,
            "--fixture",
            fixture.to_str().unwrap(),
        ],
        &dir.path().join("config.toml"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(fixture.join("evt_export.json")).unwrap(),
        body.as_bytes(),
        "the body byte-exact"
    );
    let headers: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("evt_export.headers.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(headers["x-webhook-id"], "evt_export");
    let instance = std::fs::read_to_string(fixture.join("instance.toml")).unwrap();
    assert!(!instance.contains(GENERIC_SECRET), "no secret is exported");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("evt_export.expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(expected["status"], 200);
    assert_eq!(expected["response"]["event_id"], "evt_export");
    let mut envelope = stored.clone();
    envelope.as_object_mut().unwrap().remove("id");
    envelope["received_at"] = expected["envelopes"][0]["received_at"].clone();
    assert_eq!(expected["envelopes"][0], envelope);

    // `hookgate replay` sends it, freshly signed, to a gateway that accepts it.
    let other = spawn(DEMO).await;
    let config = dir.path().join("config.toml");
    let to = other.address.clone();
    let fixture_arg = fixture.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args([
                "replay",
                "--provider",
                "demo",
                "--secret",
                GENERIC_SECRET,
                "--to",
                &to,
            ])
            .arg("--config")
            .arg(&config)
            .arg(&fixture_arg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
    assert_eq!(other.sink_envelopes(1).await[0]["event_id"], "evt_export");
}

/// Sends the generic event `event_id` (a `post.created` of `p1`) to `demo`; its gateway id.
async fn send_demo(app: &TestApp, event_id: &str) -> String {
    let body = generic_body(event_id, "post.created", "p1");
    let answer: Value = app
        .post_generic("demo", GENERIC_SECRET, event_id, &body)
        .await
        .json()
        .await
        .unwrap();
    answer["id"].as_str().unwrap().to_owned()
}
