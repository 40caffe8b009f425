//! Issue 14's kinds with scheme features of their own (HubSpot, Meta, Intercom, Vercel, WorkOS,
//! Telnyx, Azure Event Grid, Okta, WooCommerce, Notion) over real HTTP, from their fixtures:
//! a valid delivery is accepted once and then `duplicate`; a tampered body, a wrong token, a
//! stale and a future timestamp get their 401 codes; every handshake is answered as the
//! provider requires and stores nothing.

mod common;

use common::*;
use hookgate::fixture::{self, FixtureSet};
use serde_json::{json, Value};

/// Kinds whose token (not a MAC) authenticates: a tampered body still verifies.
const TOKEN_KINDS: [&str; 2] = ["azure-eventgrid", "okta"];
/// Kinds with a signed timestamp, and their default tolerance.
const TIMESTAMPED: [(&str, i64); 3] = [("hubspot", 300), ("workos", 180), ("telnyx", 300)];
/// The first case of each kind that is a business event (not a handshake).
const EVENT_CASES: [(&str, &str); 10] = [
    ("hubspot", "contact_property_change"),
    ("meta", "page_feed"),
    ("intercom", "conversation_user_created"),
    ("vercel", "deployment_created"),
    ("workos", "dsync_user_created"),
    ("telnyx", "call_initiated"),
    ("azure-eventgrid", "blob_created_batch"),
    ("okta", "user_lifecycle"),
    ("woocommerce", "order_created"),
    ("notion", "page_created"),
];

fn fixture_set(kind: &str) -> FixtureSet {
    fixture::discover(&[fixtures_dir().join(kind)])
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("fixtures for {kind}"))
}

async fn serve(set: &FixtureSet, clock: i64) -> TestApp {
    spawn_with(
        &fixture_instances(std::slice::from_ref(set)),
        SpawnOptions {
            clock_unix: Some(clock),
            ..Default::default()
        },
    )
    .await
}

fn case<'s>(set: &'s FixtureSet, name: &str) -> &'s hookgate::fixture::Case {
    set.cases.iter().find(|c| c.name == name).unwrap()
}

/// Posts a case and checks that its envelope is the only one in the sink (what came before it
/// was not stored).
async fn first_stored_is(app: &TestApp, set: &FixtureSet, name: &str, event_type: &str) {
    let c = case(set, name);
    let response = app.post(&set.kind, &c.headers, c.body.clone()).await;
    assert_eq!(response.status(), 200, "{}/{name}", set.kind);
    let envelopes = app.sink_envelopes(1).await;
    assert_eq!(envelopes.len(), 1, "{}: only the event is stored", set.kind);
    assert_eq!(envelopes[0]["type"], event_type);
}

#[tokio::test]
async fn each_kind_accepts_once_then_duplicate_and_refuses_tampering() {
    for (kind, name) in EVENT_CASES {
        let set = fixture_set(kind);
        let app = serve(&set, set.file.signed_at).await;
        let c = case(&set, name);
        let first = app.post(kind, &c.headers, c.body.clone()).await;
        assert_eq!(first.status(), 200, "{kind}");
        let first: Value = first.json().await.unwrap();
        assert_eq!(first["status"], "accepted", "{kind}: {first}");
        let again: Value = app
            .post(kind, &c.headers, c.body.clone())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["status"], "duplicate", "{kind}: {again}");
        assert_eq!(again["id"], first["id"], "{kind}");

        if TOKEN_KINDS.contains(&kind) {
            let wrong: Vec<(String, String)> = c
                .headers
                .iter()
                .map(|(k, v)| match k.eq_ignore_ascii_case("authorization") {
                    true => (k.clone(), format!("{v}x")),
                    false => (k.clone(), v.clone()),
                })
                .collect();
            let response = app.post(kind, &wrong, c.body.clone()).await;
            assert_eq!(response.status(), 401, "{kind}");
            assert_eq!(error_code(response).await, "invalid_signature", "{kind}");
        } else {
            // One byte more (JSON still valid): the MAC no longer matches.
            let mut tampered = c.body.clone();
            tampered.push(b' ');
            let response = app.post(kind, &c.headers, tampered).await;
            assert_eq!(response.status(), 401, "{kind}");
            assert_eq!(error_code(response).await, "invalid_signature", "{kind}");
        }
        let unsigned: Vec<(String, String)> = c
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .cloned()
            .collect();
        let response = app.post(kind, &unsigned, c.body.clone()).await;
        assert_eq!(error_code(response).await, "missing_signature", "{kind}");
        app.stop().await;
    }
}

#[tokio::test]
async fn stale_and_future_timestamps_are_refused() {
    for (kind, tolerance) in TIMESTAMPED {
        let set = fixture_set(kind);
        let name = EVENT_CASES.iter().find(|(k, _)| *k == kind).unwrap().1;
        let c = case(&set, name);
        for skew in [tolerance + 1, -tolerance - 1] {
            let app = serve(&set, set.file.signed_at + skew).await;
            let response = app.post(kind, &c.headers, c.body.clone()).await;
            assert_eq!(response.status(), 401, "{kind} {skew}");
            assert_eq!(
                error_code(response).await,
                "timestamp_out_of_tolerance",
                "{kind} {skew}"
            );
            app.stop().await;
        }
    }
}

#[tokio::test]
async fn hubspot_refuses_v1_and_v2_only_requests() {
    let set = fixture_set("hubspot");
    let app = serve(&set, set.file.signed_at).await;
    let c = case(&set, "contact_property_change");
    let headers: Vec<(String, String)> = c
        .headers
        .iter()
        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("x-hubspot"))
        .cloned()
        .chain([
            ("X-HubSpot-Signature".to_owned(), hmac_hex("x", &c.body)),
            ("X-HubSpot-Signature-Version".to_owned(), "v2".to_owned()),
        ])
        .collect();
    let response = app.post("hubspot", &headers, c.body.clone()).await;
    assert_eq!(error_code(response).await, "missing_signature");
    app.stop().await;
}

#[tokio::test]
async fn meta_get_handshake_echoes_the_challenge_only_with_the_verify_token() {
    let set = fixture_set("meta");
    let app = serve(&set, set.file.signed_at).await;
    let url = |token: &str| {
        app.url(&format!(
            "/webhooks/meta?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
        ))
    };
    let response = app
        .client
        .get(url("meta-fixture-verify-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(response.text().await.unwrap(), "1158201444");
    for wrong in ["nope", ""] {
        let response = app.client.get(url(wrong)).send().await.unwrap();
        assert_eq!(response.status(), 403);
        let text = response.text().await.unwrap();
        assert!(!text.contains("meta-fixture-verify-token"), "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "invalid_verify_token");
    }
    // A GET that is no handshake is still not allowed; `Allow` names GET beside POST.
    let response = app
        .client
        .get(app.url("/webhooks/meta"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    let response = app
        .client
        .put(app.url("/webhooks/meta"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    // Nothing was stored: the first envelope is the next real event.
    first_stored_is(&app, &set, "page_feed", "page.feed").await;
    app.stop().await;
}

#[tokio::test]
async fn okta_get_verification_needs_the_authorization_header() {
    let set = fixture_set("okta");
    let app = serve(&set, set.file.signed_at).await;
    let request = || {
        app.client
            .get(app.url("/webhooks/okta"))
            .header("X-Okta-Verification-Challenge", "rQpOa2Tl4IbCKrXl4Ig-uP")
    };
    let response = request()
        .header("Authorization", "okta-fixture-shared-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"verification": "rQpOa2Tl4IbCKrXl4Ig-uP"}));
    let response = request().send().await.unwrap();
    assert_eq!(error_code(response).await, "missing_signature");
    let response = request()
        .header("Authorization", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, "invalid_signature");
    app.stop().await;
}

#[tokio::test]
async fn unsigned_handshakes_are_answered_and_not_stored() {
    // Azure Event Grid's subscription validation.
    let set = fixture_set("azure-eventgrid");
    let app = serve(&set, set.file.signed_at).await;
    let c = case(&set, "subscription_validation");
    let response = app
        .post("azure-eventgrid", &c.headers, c.body.clone())
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    );
    // CloudEvents' OPTIONS validation echoes the origin.
    let response = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url("/webhooks/azure-eventgrid"),
        )
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["webhook-allowed-origin"],
        "eventgrid.azure.net"
    );
    // An OPTIONS that is no handshake, and a GET, are not allowed.
    let response = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url("/webhooks/azure-eventgrid"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let response = app
        .client
        .get(app.url("/webhooks/azure-eventgrid"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "OPTIONS, POST");
    // Batches authenticate by ?code= as well as by the header.
    let batch = case(&set, "blob_created_batch");
    let headers: Vec<(String, String)> = batch
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("authorization"))
        .cloned()
        .collect();
    let response = app
        .client
        .post(app.url("/webhooks/azure-eventgrid?code=Bearer%20eventgrid-fixture-token"))
        .headers(
            headers
                .iter()
                .map(|(k, v)| {
                    (
                        reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    )
                })
                .collect(),
        )
        .body(batch.body.clone())
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    assert_eq!(answer["events"].as_array().unwrap().len(), 2);
    let envelopes = app.sink_envelopes(2).await;
    assert_eq!(envelopes.len(), 2, "the validation was not stored");
    app.stop().await;

    // WooCommerce's ping.
    let set = fixture_set("woocommerce");
    let app = serve(&set, set.file.signed_at).await;
    let c = case(&set, "ping");
    let response = app.post("woocommerce", &c.headers, c.body.clone()).await;
    assert_eq!(response.status(), 200);
    first_stored_is(&app, &set, "order_created", "order.created").await;
    app.stop().await;
}

/// A gateway with the notion fixtures' clock and this config.
async fn notion_app(config: &str) -> (FixtureSet, TestApp) {
    let set = fixture_set("notion");
    let options = SpawnOptions {
        clock_unix: Some(set.file.signed_at),
        ..Default::default()
    };
    let app = spawn_with(config, options).await;
    (set, app)
}

#[tokio::test]
async fn notion_verification_token_is_stored_for_the_operator_even_without_a_secret() {
    // The instance starts without a secret: the token arrives in the first delivery.
    let (set, app) = notion_app(
        "[admin]\ntoken = \"admin-token-for-tests-0000000000\"\n[providers.notion]\nkind = \"notion\"\nsecrets = []\n",
    )
    .await;
    let c = case(&set, "verification");
    let response = app.post("notion", &c.headers, c.body.clone()).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    let envelopes = app.sink_envelopes(1).await;
    assert_eq!(envelopes[0]["type"], "verification");
    assert_eq!(envelopes[0]["object"], "subscription");
    assert_eq!(
        envelopes[0]["current"],
        Value::Null,
        "the token is not sent to sinks"
    );
    // The operator reads it from the stored raw body.
    let id = answer["id"].as_str().unwrap();
    let shown = app
        .client
        .get(app.url(&format!("/admin/events/{id}")))
        .bearer_auth("admin-token-for-tests-0000000000")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        shown.contains("secret_notionFixtureVerificationToken"),
        "{shown}"
    );
    // Any other unsigned body is refused, even one that also carries the field's name.
    let forged = br#"{"id":"x","type":"page.deleted","entity":{"id":"p","type":"page"}}"#;
    let response = app.post("notion", &c.headers, forged.to_vec()).await;
    assert_eq!(error_code(response).await, "missing_signature");
    // A large body is not stored unsigned, even with the field.
    let padded = format!(
        r#"{{"verification_token":"secret_x","pad":"{}"}}"#,
        "a".repeat(2000)
    );
    let response = app.post("notion", &c.headers, padded).await;
    assert_eq!(error_code(response).await, "missing_signature");
    // Signed events fail until the token is configured.
    let event = case(&set, "page_created");
    let response = app.post("notion", &event.headers, event.body.clone()).await;
    assert_eq!(error_code(response).await, "invalid_signature");
    app.stop().await;
}

#[tokio::test]
async fn once_notion_has_its_secret_nothing_unsigned_is_stored() {
    let (set, app) = notion_app(
        "[providers.notion]\nkind = \"notion\"\nsecrets = [\"an-already-configured-token\"]\n",
    )
    .await;
    let c = case(&set, "verification");
    let unsigned: Vec<(String, String)> = c
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("x-notion-signature"))
        .cloned()
        .collect();
    let response = app.post("notion", &unsigned, c.body.clone()).await;
    assert_eq!(error_code(response).await, "missing_signature");
    app.stop().await;
}

#[tokio::test]
async fn a_signed_woocommerce_delivery_shaped_like_its_ping_is_verified_not_acknowledged() {
    let set = fixture_set("woocommerce");
    let app = serve(&set, set.file.signed_at).await;
    // A body with the ping's field, carrying a (wrong) signature: the signature decides.
    let headers = vec![
        (
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("X-WC-Webhook-Signature".to_owned(), "AAAA".to_owned()),
    ];
    let response = app.post("woocommerce", &headers, "webhook_id=12").await;
    assert_eq!(error_code(response).await, "invalid_signature");
    app.stop().await;
}

#[tokio::test]
async fn a_get_handshake_kind_requires_its_verify_token() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "", "[providers.meta]\nsecrets = [\"s\"]\n");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let error = hookgate::config::load(&path)
        .and_then(|loaded| hookgate::provider::registry::Registry::build(&loaded).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("verify_token"), "{error}");
}

#[tokio::test]
async fn discord_interactions_get_a_deferred_response_never_hookgates_json() {
    let set = fixture_set("discord");
    let app = serve(&set, set.file.signed_at).await;
    let c = case(&set, "application_command");
    for expected in ["accepted", "duplicate"] {
        let response = app.post("discord", &c.headers, c.body.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-hookgate-status"], expected);
        assert!(response.headers().contains_key("x-hookgate-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"type": 5}), "{expected}");
    }
    // PING is still answered with PONG, and not stored.
    let ping = case(&set, "ping");
    let body: Value = app
        .post("discord", &ping.headers, ping.body.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"type": 1}));
    assert_eq!(app.sink_envelopes(1).await.len(), 1);
    app.stop().await;
}

/// A sink that answers every envelope with `answer` (a Discord interaction response).
async fn replying_sink(answer: String) -> (String, actix_web::dev::ServerHandle) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        let answer = answer.clone();
        App::new().default_service(web::to(move || {
            let answer = answer.clone();
            async move {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(answer)
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}/interactions"), handle)
}

/// A Discord gateway in sync mode whose `reply_from` sink answers `answer`.
async fn discord_replying(answer: String) -> (FixtureSet, TestApp, actix_web::dev::ServerHandle) {
    let set = fixture_set("discord");
    let (url, sink) = replying_sink(answer).await;
    let secret = set.secrets()[0].clone();
    let app = spawn_with(
        &format!(
            "[providers.discord]\nsecrets = [\"{secret}\"]\nmode = \"sync\"\nreply_from = \"bot\"\n\n[[sinks]]\nname = \"bot\"\nkind = \"http\"\nurl = \"{url}\"\n"
        ),
        SpawnOptions {
            clock_unix: Some(set.file.signed_at),
            ..Default::default()
        },
    )
    .await;
    (set, app, sink)
}

#[tokio::test]
async fn a_sink_answer_too_large_to_relay_gives_the_deferred_answer() {
    let big = format!(
        r#"{{"type":4,"data":{{"content":"{}"}}}}"#,
        "x".repeat(70 * 1024)
    );
    let (set, app, sink) = discord_replying(big).await;
    let c = case(&set, "application_command");
    let response = app.post("discord", &c.headers, c.body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-hookgate-status"], "accepted");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"type": 5}), "never a cut answer");
    app.stop().await;
    sink.stop(true).await;
}

#[tokio::test]
async fn discord_in_sync_mode_answers_with_the_reply_from_sinks_body() {
    let (set, app, sink) =
        discord_replying(r#"{"type":4,"data":{"content":"pong"}}"#.to_owned()).await;
    let c = case(&set, "application_command");
    let response = app.post("discord", &c.headers, c.body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-hookgate-status"], "accepted");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"type": 4, "data": {"content": "pong"}}));
    // Already delivered: a repeat gets the deferred answer, not a second sink call.
    let body: Value = app
        .post("discord", &c.headers, c.body.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"type": 5}));
    app.stop().await;
    sink.stop(true).await;
}

#[tokio::test]
async fn reply_from_needs_sync_mode_and_an_http_sink() {
    for (instance, expected) in [
        ("reply_from = \"audit\"\n", "sync"),
        (
            "mode = \"sync\"\nreply_from = \"audit\"\n",
            "no `http` sink",
        ),
        ("mode = \"sync\"\nreply_from = \"nope\"\n", "no `http` sink"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(
            dir.path(),
            "",
            &format!("[providers.discord]\nsecrets = [\"c8f8f83163eed9033f14993513a10261b4f37f83e5d9139405078fbe0fa16d31\"]\n{instance}"),
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let error = hookgate::config::load(&path).unwrap_err().to_string();
        assert!(
            error.contains("reply_from") && error.contains(expected),
            "{error}"
        );
    }
}
