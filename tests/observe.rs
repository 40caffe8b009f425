//! The dashboard's counters over real HTTP: `/admin/stats` (per instance and sink, with the
//! backlog) and `/admin/rejected` (the ring of the last rejections).

mod common;

use common::*;
use serde_json::Value;

const SECRET: &str = "observe-secret";
const TOKEN: &str = "observe-token";

fn config() -> String {
    format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[providers.demo]\nkind = \"generic\"\nsecrets = [\"{SECRET}\"]\n\
         [providers.other]\nkind = \"generic\"\nsecrets = [\"{SECRET}\"]\n"
    )
}

async fn admin_get(app: &TestApp, path: &str) -> Value {
    let response = app.admin(reqwest::Method::GET, path, TOKEN).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

fn instance<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

#[tokio::test]
async fn answers_are_counted_per_instance_with_skew_and_rejections_kept_without_bodies() {
    let app = spawn(&config()).await;
    let now = app.clock_unix();
    let body = generic_body("evt_1", "customer.created", "cus_1");
    // Accepted, signed 7 s ago.
    let headers = generic_headers(SECRET, "evt_1", now - 7, body.as_bytes());
    assert_eq!(app.post("demo", &headers, body.clone()).await.status(), 200);
    // A duplicate, 2 s in the future.
    let headers = generic_headers(SECRET, "evt_1", now + 2, body.as_bytes());
    assert_eq!(app.post("demo", &headers, body.clone()).await.status(), 200);
    // Wrong secret: the body must not be kept anywhere.
    let secret_body = generic_body("evt_2", "customer.created", "cus_sensitive_4242");
    let headers = generic_headers("wrong", "evt_2", now, secret_body.as_bytes());
    assert_eq!(app.post("demo", &headers, secret_body).await.status(), 401);
    // Stale: its skew is what the counters show.
    let headers = generic_headers(SECRET, "evt_3", now - 1000, body.as_bytes());
    assert_eq!(app.post("demo", &headers, body.clone()).await.status(), 401);
    // A name that is not configured.
    assert_eq!(app.post("nosuch", &[], "{}").await.status(), 404);

    let rejected = admin_get(&app, "/admin/rejected").await;
    let list = rejected["rejections"].as_array().unwrap();
    let codes: Vec<&str> = list.iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "unknown_provider",
            "timestamp_out_of_tolerance",
            "invalid_signature"
        ],
        "{rejected}"
    );
    assert_eq!(list[0]["instance"], "unknown");
    assert_eq!(list[1]["instance"], "demo");
    assert_eq!(list[1]["status"], 401);
    assert_eq!(list[2]["client_ip"], "127.0.0.1");
    assert!(list[2]["at"].as_str().unwrap().ends_with('Z'));
    assert!(!rejected.to_string().contains("cus_sensitive_4242"));
    assert!(!rejected.to_string().contains(SECRET));

    // Filters and the limit.
    let only = admin_get(&app, "/admin/rejected?instance=demo&code=invalid_signature").await;
    assert_eq!(only["rejections"].as_array().unwrap().len(), 1);
    let one = admin_get(&app, "/admin/rejected?limit=1").await;
    assert_eq!(one["rejections"][0]["code"], "unknown_provider");
    let response = app
        .admin(reqwest::Method::GET, "/admin/rejected?limit=many", TOKEN)
        .await;
    assert_eq!(error_code(response).await, "bad_request");

    // The delivery to the file sink is counted too.
    assert_eq!(app.sink_envelopes(1).await.len(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let stats = loop {
        let stats = admin_get(&app, "/admin/stats").await;
        if stats["sinks"][0]["delivered"] == 1 || std::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let demo = instance(&stats, "demo");
    assert_eq!(demo["accepted"], 1, "{stats}");
    assert_eq!(demo["duplicates"], 1);
    assert_eq!(demo["rejected"], 2);
    assert_eq!(
        demo["rejected_by_code"],
        serde_json::json!([["invalid_signature", 1], ["timestamp_out_of_tolerance", 1]])
    );
    assert_eq!(demo["last_skew_secs"], 1000);
    assert_eq!(demo["max_abs_skew_secs"], 1000);
    assert!(demo["p99_ms"].as_f64().unwrap() > 0.0);
    let minutes = demo["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let last = &minutes[59];
    assert_eq!(
        (&last["accepted"], &last["duplicates"], &last["rejected"]),
        (&1.into(), &1.into(), &2.into())
    );
    // The other instance saw nothing; unknown names count nowhere.
    let other = instance(&stats, "other");
    assert_eq!(
        (&other["accepted"], &other["rejected"]),
        (&0.into(), &0.into())
    );
    assert_eq!(other["p99_ms"], Value::Null);
    assert_eq!(stats["instances"].as_array().unwrap().len(), 2);

    let sink = &stats["sinks"][0];
    assert_eq!(sink["name"], "audit");
    assert_eq!(sink["delivered"], 1, "{stats}");
    assert_eq!(sink["success_rate"], 1.0);
    assert_eq!(sink["backlog"]["pending"], 0);
    assert_eq!(sink["backlog"]["oldest_pending_ms"], Value::Null);

    // Both need the token.
    for path in ["/admin/stats", "/admin/rejected"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn a_paused_sink_shows_its_backlog_and_its_age() {
    let app = spawn(&config()).await;
    let response = app
        .admin(reqwest::Method::POST, "/admin/sinks/audit/pause", TOKEN)
        .await;
    assert_eq!(response.status(), 200);
    let committed_ms = app.clock_unix() * 1000;
    for id in ["evt_a", "evt_b"] {
        let body = generic_body(id, "customer.created", id);
        assert_eq!(
            app.post_generic("demo", SECRET, id, &body).await.status(),
            200
        );
    }
    app.clock.advance_secs(90);
    let stats = admin_get(&app, "/admin/stats").await;
    let backlog = &stats["sinks"][0]["backlog"];
    assert_eq!(backlog["pending"], 2, "{stats}");
    let oldest = backlog["oldest_pending_ms"].as_i64().unwrap();
    assert!(
        (committed_ms..committed_ms + 1000).contains(&oldest),
        "{oldest} vs {committed_ms}"
    );
    assert_eq!(backlog["oldest_pending_age_secs"], 90);
    // Nothing was attempted while paused.
    assert_eq!(stats["sinks"][0]["success_rate"], Value::Null);
}

#[tokio::test]
async fn guessing_the_admin_token_is_refused_past_ten_wrong_tries() {
    let app = spawn(&config()).await;
    for n in 0..10 {
        let response = app
            .admin(reqwest::Method::GET, "/admin/stats", "guess")
            .await;
        assert_eq!(response.status(), 401, "try {n}");
    }
    let response = app
        .admin(reqwest::Method::GET, "/admin/stats", "guess")
        .await;
    assert_eq!(
        response.status(),
        401,
        "the eleventh is counted, then the client waits"
    );
    // Refused before the token is looked at: the right one waits too.
    let response = app.admin(reqwest::Method::GET, "/admin/stats", TOKEN).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response).await, "too_many_attempts");
}
