//! The dashboard at `/ui`: sessions, CSRF and headers over plain HTTP against the in-process
//! server, and the pages in a real headless Chromium (WebDriver) against the real binary.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them);
//! without them it fails, unless `HOOKGATE_SKIP_BROWSER=1` is set explicitly.
//!
//! `HOOKGATE_SCREENSHOTS=<dir>` makes the `screenshots` test (ignored by default; run by
//! `scripts/screenshot.sh`) save a PNG of every page there.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::binary::Gateway;
use common::browser::{self, Browser, WAIT};
use common::*;
use fantoccini::Locator;
use serde_json::Value;

const ADMIN_TOKEN: &str = "dashboard-admin-token-3f9a";
const LEAKED_CREDENTIAL: &str = "Bearer never-render-me-7c1d";

const INSTANCE: &str = r#"
[providers.demo]
kind = "generic"
secrets = ["test-generic-secret"]
"#;

fn with_token() -> String {
    format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n{INSTANCE}")
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Plain HTTP to the dashboard, redirects not followed, with a session cookie when given.
struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(base: &str) -> Self {
        Self {
            client: no_redirects(),
            base: base.to_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    /// A form post; `extra` headers (`Origin`, `X-Forwarded-Proto`) are added as given.
    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// Signs in; returns the cookie's `name=value`.
    async fn sign_in(&self) -> String {
        let response = self
            .post("/ui/login", None, &[("token", ADMIN_TOKEN)], &[])
            .await;
        assert_eq!(response.status(), 303);
        cookie_of(&response)
    }
}

/// The `name=value` of a response's `Set-Cookie`.
fn cookie_of(response: &reqwest::Response) -> String {
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("the page has a form with a CSRF field")
        + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

fn assert_security_headers(response: &reqwest::Response) {
    let h = response.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "same-origin");
}

#[tokio::test]
async fn without_an_admin_token_the_dashboard_is_not_there() {
    let app = spawn(INSTANCE).await;
    let http = Http::new(&app.address);
    for path in [
        "/ui",
        "/ui/",
        "/ui/login",
        "/ui/events",
        "/ui/assets/ui.css",
    ] {
        assert_eq!(http.get(path, None).await.status(), 404, "{path}");
    }
    let response = http.post("/ui/login", None, &[("token", "")], &[]).await;
    assert_eq!(response.status(), 404);
    assert!(response.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn sign_in_sessions_csrf_and_headers_over_http() {
    let app = spawn(&with_token()).await;
    let http = Http::new(&app.address);
    // Signed out: pages send to the sign-in page (and back), with the headers.
    let response = http.get("/ui/events?status=dead", None).await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()["location"],
        "/ui/login?next=%2Fui%2Fevents%3Fstatus%3Ddead"
    );
    assert_security_headers(&response);
    let login = http.get("/ui/login", None).await;
    assert_eq!(login.status(), 200);
    assert_security_headers(&login);
    assert!(!login.text().await.unwrap().contains("<script>"));

    // A wrong token: refused, no cookie.
    let wrong = http
        .post("/ui/login", None, &[("token", "not-the-token")], &[])
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let text = wrong.text().await.unwrap();
    assert!(text.contains("That is not the admin token."));

    // The right one: a session cookie with the attributes; `next` stays on the dashboard.
    let form = [("token", ADMIN_TOKEN), ("next", "https://evil.example/")];
    let response = http.post("/ui/login", None, &form, &[]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/ui/events");
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    assert!(!set_cookie.contains(ADMIN_TOKEN));
    let cookie = cookie_of(&response);
    let session = Some(cookie.as_str());

    let page = http.get("/ui/events", session).await;
    assert_eq!(page.status(), 200);
    assert_security_headers(&page);
    let html = page.text().await.unwrap();
    assert!(!html.contains(ADMIN_TOKEN) && !html.contains(GENERIC_SECRET));
    let csrf = csrf_of(&html);
    let with_csrf = [("csrf", csrf.as_str())];

    // A POST needs the session's CSRF token, and the same origin.
    let resume = "/ui/instances/demo/resume";
    for form in [&[][..], &[("csrf", "forged")][..]] {
        let response = http.post(resume, session, form, &[]).await;
        assert_eq!(response.status(), 403, "{form:?}");
        assert_security_headers(&response);
    }
    let cross = [("origin", "https://evil.example")];
    let response = http.post(resume, session, &with_csrf, &cross).await;
    assert_eq!(response.status(), 403);
    let response = http.post(resume, session, &with_csrf, &[]).await;
    assert_eq!(response.status(), 303);
    // Without a session, a POST is refused too.
    let response = http.post(resume, None, &with_csrf, &[]).await;
    assert_eq!(response.status(), 403);

    // Sign-out ends the session here.
    let out = http.post("/ui/logout", session, &with_csrf, &[]).await;
    assert_eq!(out.status(), 303);
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let after = http.get("/ui/events", session).await;
    assert_eq!(after.status(), 303, "a signed-out cookie is refused");

    // Sessions expire.
    let cookie = http.sign_in().await;
    app.clock.advance_secs(12 * 3600 + 1);
    let expired = http.get("/ui/events", Some(&cookie)).await;
    assert_eq!(expired.status(), 303, "an expired session is refused");
}

#[tokio::test]
async fn the_session_cookie_is_secure_behind_a_trusted_https_proxy() {
    let app = spawn_with(
        &with_token(),
        SpawnOptions {
            server_extra: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
            ..SpawnOptions::default()
        },
    )
    .await;
    let https = [("x-forwarded-proto", "https")];
    let response = Http::new(&app.address)
        .post("/ui/login", None, &[("token", ADMIN_TOKEN)], &https)
        .await;
    assert_eq!(response.status(), 303);
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited() {
    let app = spawn(&with_token()).await;
    let http = Http::new(&app.address);
    // Ten at once (the burst), then one every 6 s of real time: within 40 attempts one is
    // refused unless the machine stalls for minutes; the refusal carries Retry-After and sets
    // no cookie.
    let mut statuses = Vec::new();
    let refused = loop {
        let response = http
            .post("/ui/login", None, &[("token", "guess")], &[])
            .await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 || statuses.len() == 40 {
            break response;
        }
    };
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(refused.status(), 429, "{statuses:?}");
    assert!(refused.headers().contains_key("retry-after"));
    assert!(refused.headers().get("set-cookie").is_none());
}

/// Every page over HTTP on a store: rendered, escaped, searchable, and the live tail's stream.
async fn pages_render_and_escape(app: &TestApp) {
    let http = Http::new(&app.address);
    let cookie = http.sign_in().await;
    let session = Some(cookie.as_str());
    // Opened before the event exists: the stream must push it.
    let mut tail = http
        .get(
            &format!("/ui/events/stream?after={}", ulid::Ulid::nil()),
            session,
        )
        .await;
    assert_eq!(tail.status(), 200);
    assert_eq!(tail.headers()["content-type"], "text/event-stream");

    let body = r#"{"id":"evt_html","type":"post.<b>bold</b>","data":{"object":{"id":"p1","title":"<script>alert(1)</script>"}}}"#;
    let answer = app
        .post_generic("demo", GENERIC_SECRET, "evt_html", body)
        .await;
    assert_eq!(answer.status(), 200);
    let id = answer.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let deadline = Instant::now() + WAIT;
    let mut pushed = String::new();
    while !pushed.contains(&format!("data-id=\"{id}\"")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, tail.chunk()).await;
        let Ok(Ok(Some(chunk))) = chunk else {
            panic!("the live tail did not push {id} within {WAIT:?}: {pushed}");
        };
        pushed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(pushed.contains("event: row\nid: "), "{pushed}");
    assert!(
        !pushed.contains("<b>bold"),
        "unescaped in the tail: {pushed}"
    );
    drop(tail);

    let list = http.get("/ui/events", session).await;
    assert_eq!(list.status(), 200);
    let html = list.text().await.unwrap();
    assert!(html.contains(&id) && html.contains("post.&lt;b&gt;bold&lt;/b&gt;"));
    assert!(!html.contains("<b>bold"));
    let page = http.get(&format!("/ui/events/{id}"), session).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        !html.contains("<script>alert"),
        "a stored body is rendered as markup"
    );
    // Search: a gateway id goes to its page, a provider event id filters the list.
    let found = http.get(&format!("/ui/events?q={id}"), session).await;
    assert_eq!(found.status(), 303);
    assert_eq!(
        found.headers()["location"],
        format!("/ui/events/{id}").as_str()
    );
    // A provider event id is looked up in the idempotency table: straight to its event too.
    let by_event_id = http.get("/ui/events?q=evt_html", session).await;
    assert_eq!(by_event_id.status(), 303);
    let location = by_event_id.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let page = http.get(&location, session).await.text().await.unwrap();
    assert!(page.contains("evt_html"), "{location}");
    // With another instance chosen, it is not found there.
    let elsewhere = http
        .get("/ui/events?q=evt_html&instance=other", session)
        .await;
    assert_eq!(elsewhere.status(), 200);
    // Duplicate hits: counted per event by this replica, shown in the list, on the event page,
    // and as their own status choice.
    let listed = http
        .get("/ui/events?status=duplicate", session)
        .await
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&format!("data-id=\"{id}\"")), "no hit yet");
    for _ in 0..2 {
        let again = app
            .post_generic("demo", GENERIC_SECRET, "evt_html", body)
            .await;
        assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    }
    let listed = http
        .get("/ui/events?status=duplicate", session)
        .await
        .text()
        .await
        .unwrap();
    assert!(listed.contains(&format!("data-id=\"{id}\"")), "{listed}");
    assert!(listed.contains("duplicates ×2"), "{listed}");
    let page = http.get(&format!("/ui/events/{id}"), session).await;
    assert!(page.text().await.unwrap().contains("duplicates ×2"));
    let elsewhere = http
        .get("/ui/events?status=duplicate&instance=other", session)
        .await
        .text()
        .await
        .unwrap();
    assert!(!elsewhere.contains(&format!("data-id=\"{id}\"")));
    let none = http.get("/ui/events?q=evt_absent", session).await;
    assert!(none.text().await.unwrap().contains("No events match."));
    let bad = http.get("/ui/events?since=yesterday", session).await;
    assert_eq!(bad.status(), 400);
    let missing = http
        .get("/ui/events/01ARZ3NDEKTSV4RRFFQ69G5FAV", session)
        .await;
    assert_eq!(missing.status(), 404);
    for path in [
        "/ui/dead-letters",
        "/ui/instances",
        "/ui/rejected",
        "/ui/dead-letters/redeliver",
    ] {
        let response = http.get(path, session).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_security_headers(&response);
    }
}

#[tokio::test]
async fn pages_render_and_escape_on_the_embedded_store() {
    let app = spawn_with(
        &with_token(),
        SpawnOptions {
            moving_clock: true,
            ..SpawnOptions::default()
        },
    )
    .await;
    pages_render_and_escape(&app).await;
}

#[tokio::test]
async fn pages_render_and_escape_on_postgres() {
    let url = postgres::fresh_database("hg_dashboard").await;
    let store = hookgate::store::postgres::PgStore::connect(
        &hookgate::config::StorageSettings {
            backend: hookgate::config::StorageBackend::Postgres,
            url: Some(hookgate::secret::Secret::new(url)),
            pool_size: 4,
            ..hookgate::config::StorageSettings::default()
        },
        std::sync::Arc::new(hookgate::clock::SystemClock),
    )
    .await
    .expect("the test PostgreSQL server answers");
    let app = spawn_with(
        &with_token(),
        SpawnOptions {
            moving_clock: true,
            store: Some(std::sync::Arc::new(store)),
            ..SpawnOptions::default()
        },
    )
    .await;
    pages_render_and_escape(&app).await;
}

/// The real binary with a file sink `audit` and an HTTP sink `app` whose address refuses
/// connections (one attempt, then a dead letter).
fn start_gateway(dir: &Path) -> Gateway {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/hooks", closed.local_addr().unwrap());
    drop(closed);
    let config = format!(
        r#"
providers_dir = "{providers}"
[server]
bind = "127.0.0.1:0"
workers = 2
[storage]
path = "{store}"
[log]
level = "info"
format = "json"
[admin]
token = "{ADMIN_TOKEN}"
{INSTANCE}
[providers.billing]
kind = "stripe"
secrets = ["whsec_dashboard_demo"]

[[sinks]]
name = "audit"
kind = "file"
path = "{sink}"

[[sinks]]
name = "app"
kind = "http"
url = "{dead_url}"
retry = {{ max_attempts = 1, initial_backoff_ms = 10, max_backoff_ms = 10 }}
"#,
        providers = providers_dir().display(),
        store = dir.join("store").display(),
        sink = dir.join("envelopes.jsonl").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    Gateway::start(&path)
}

/// Posts a signed generic event (with a credential header that must never be stored or
/// shown); returns the status and the JSON answer.
async fn send_event(port: u16, id: &str, object_id: &str) -> (u16, Value) {
    let body = generic_body(id, "post.updated", object_id).replace(
        r#""data":{"object":"#,
        r#""data":{"previous_attributes":{"title":"old"},"object":"#,
    );
    let request = no_redirects()
        .post(format!("http://127.0.0.1:{port}/webhooks/demo"))
        .header("authorization", LEAKED_CREDENTIAL);
    let now = chrono::Utc::now().timestamp();
    let response = signed_generic(request, GENERIC_SECRET, id, now, body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn browser_sign_in(b: &Browser, base: &str, token: &str) {
    let field = b.wait_for("#token", "the sign-in form").await;
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    b.client
        .find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let _ = base;
}

async fn click(b: &Browser, css: &str, what: &str) {
    b.wait_for(css, what).await.click().await.unwrap();
}

/// Accepts the confirm dialog a `data-confirm` button opens.
async fn accept_confirm(b: &Browser) {
    let deadline = Instant::now() + WAIT;
    while b.client.accept_alert().await.is_err() {
        assert!(Instant::now() < deadline, "no confirm dialog appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let Some(driver) = browser::chromedriver() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(dir.path());
    let base = format!("http://127.0.0.1:{}", gateway.port);
    let b = Browser::start(&driver, 1400, 1000).await;

    // Sign in: a wrong token is refused and sets no cookie.
    b.client.goto(&format!("{base}/ui/events")).await.unwrap();
    browser_sign_in(&b, &base, "wrong-token").await;
    let error = b.wait_for(".notice.error", "the refusal").await;
    assert_eq!(error.text().await.unwrap(), "That is not the admin token.");
    let cookies = b.client.get_all_cookies().await.unwrap();
    assert!(cookies.is_empty(), "a refused sign-in set {cookies:?}");
    browser_sign_in(&b, &base, ADMIN_TOKEN).await;
    b.wait_for("#events", "the events list after sign-in").await;
    let session = b.client.get_named_cookie("hookgate_session").await.unwrap();
    assert_eq!(session.http_only(), Some(true));

    // The live tail: the page is open first, then the event is sent, then its row shows up.
    b.wait_for("#tail-status.on", "the live tail connecting")
        .await;
    let (status, answer) = send_event(gateway.port, "evt_dash_1", "post_1").await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let row = b
        .wait_for(
            &format!("#events-body tr.new[data-id='{id}']"),
            "the new event in the live tail",
        )
        .await;
    assert!(row.text().await.unwrap().contains("evt_dash_1"));
    // And in the list itself.
    b.client.goto(&format!("{base}/ui/events")).await.unwrap();
    b.wait_for(
        &format!("#events-body tr[data-id='{id}']"),
        "the event in the list",
    )
    .await;
    // The search box takes a gateway id straight to the event's page.
    let search = b.wait_for("input[name=q]", "the search box").await;
    search.send_keys(&id).await.unwrap();
    search.send_keys("\u{E007}").await.unwrap(); // Enter

    // Its page: raw body, envelope with the diff, attempts of both sinks.
    b.wait_for("#body-raw", "the raw body").await;
    assert!(b
        .content("#body-raw")
        .await
        .contains(r#""id":"evt_dash_1""#));
    assert!(b
        .content("#body-pretty")
        .await
        .contains("\"id\": \"evt_dash_1\""));
    assert!(b.text("#verdict").await.contains("generic"));
    let envelope = b.wait_for("section.envelope", "the envelope").await;
    let envelope_id = envelope.attr("data-envelope").await.unwrap().unwrap();
    let changed = b.text("section.envelope table.diff tr.changed").await;
    assert!(
        changed.contains("/title") && changed.contains("old"),
        "{changed}"
    );
    let event_url = format!("{base}/ui/events/{id}");
    b.reload_until(
        &event_url,
        ".delivery[data-sink='audit'] .badge.delivered",
        "the audit sink's delivery",
    )
    .await;
    b.reload_until(
        &event_url,
        ".delivery[data-sink='app'] .badge.dead",
        "the app sink's dead letter",
    )
    .await;
    let source = b.client.source().await.unwrap();
    for secret in [
        ADMIN_TOKEN,
        GENERIC_SECRET,
        "never-render-me",
        "whsec_dashboard_demo",
    ] {
        assert!(
            !source.contains(secret),
            "the page shows a secret: {secret}"
        );
    }

    // Redeliver to one sink: a new attempt.
    click(
        &b,
        ".delivery[data-sink='audit'] button",
        "the audit redeliver button",
    )
    .await;
    b.wait_for(".notice", "the redelivery notice").await;
    b.reload_until(
        &event_url,
        ".delivery[data-sink='audit'] table.attempts tbody tr:nth-child(2)",
        "a second attempt to audit after redelivery",
    )
    .await;

    // A POST without the CSRF token, with the browser's session: 403.
    let cookie = format!("hookgate_session={}", session.value());
    let refused = Http::new(&base)
        .post(
            &format!("/ui/events/{id}/redeliver"),
            Some(&cookie),
            &[("sink", "audit")],
            &[],
        )
        .await;
    assert_eq!(refused.status(), 403);

    // The dead letter is requeued from its page (and attempted again).
    b.client
        .goto(&format!("{base}/ui/dead-letters"))
        .await
        .unwrap();
    click(
        &b,
        &format!("tr[data-envelope='{envelope_id}'][data-sink='app'] button"),
        "the dead letter's redeliver button",
    )
    .await;
    let notice = b.wait_for(".notice", "the requeue notice").await;
    assert_eq!(
        notice.text().await.unwrap(),
        "1 dead letter(s) are pending again."
    );
    b.reload_until(
        &event_url,
        ".delivery[data-sink='app'] table.attempts tbody tr:nth-child(2)",
        "a second attempt of the requeued dead letter",
    )
    .await;
    // Bulk: the dry run counts before anything is sent.
    b.client
        .goto(&format!("{base}/ui/dead-letters/redeliver?sink=app"))
        .await
        .unwrap();
    b.reload_until(
        &format!("{base}/ui/dead-letters/redeliver?sink=app"),
        "#confirm",
        "the dead letter dead again, to count",
    )
    .await;
    assert!(b
        .text("#dry-run")
        .await
        .starts_with("1 dead letter(s) of sink app match"));
    click(&b, "#confirm", "the bulk redeliver button").await;
    let notice = b.wait_for(".notice", "the bulk redelivery notice").await;
    assert_eq!(
        notice.text().await.unwrap(),
        "1 dead letter(s) are pending again."
    );
    b.reload_until(
        &event_url,
        ".delivery[data-sink='app'] table.attempts tbody tr:nth-child(3)",
        "a third attempt after the bulk redelivery",
    )
    .await;

    // Pausing the instance from /ui/instances: the next delivery is 503 `paused`.
    b.client
        .goto(&format!("{base}/ui/instances"))
        .await
        .unwrap();
    click(&b, "#pause-instance-demo", "the pause button").await;
    accept_confirm(&b).await;
    b.wait_for(
        "tr[data-instance='demo'] .badge.paused",
        "the instance shown paused",
    )
    .await;
    let (status, answer) = send_event(gateway.port, "evt_dash_paused", "post_2").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "paused");
    click(&b, "#resume-instance-demo", "the resume button").await;
    b.wait_for(
        "tr[data-instance='demo'] .badge.running",
        "the instance shown running",
    )
    .await;
    let (status, _) = send_event(gateway.port, "evt_dash_paused", "post_2").await;
    assert_eq!(status, 200);
    // The counters: two accepted (the paused one was refused), and a chart of the hour.
    b.client
        .goto(&format!("{base}/ui/instances"))
        .await
        .unwrap();
    let accepted = b
        .text("tr[data-instance='demo'] td.num:nth-of-type(3)")
        .await;
    assert_eq!(accepted, "2");
    b.wait_for(
        "tr[data-instance='demo'] svg.chart rect",
        "the instance's chart",
    )
    .await;
    b.wait_for("tr[data-sink='app'] svg.chart rect", "the sink's chart")
        .await;

    // The refusal while paused is on /ui/rejected, filtered by its code.
    b.client
        .goto(&format!("{base}/ui/rejected?code=paused"))
        .await
        .unwrap();
    let rejected = b.text("#rejected tbody tr[data-code='paused']").await;
    assert!(
        rejected.contains("demo") && rejected.contains("503"),
        "{rejected}"
    );
    assert!(b
        .client
        .find(Locator::Css("#rejected tbody tr:not([data-code='paused'])"))
        .await
        .is_err());

    // Sign out: the cookie is gone and pages ask to sign in again.
    click(&b, "header.top form button", "the sign-out button").await;
    b.wait_for("#token", "the sign-in page after sign-out")
        .await;
    assert!(b.client.get_named_cookie("hookgate_session").await.is_err());
    b.close().await;
}

/// `scripts/screenshot.sh`: a gateway with demo traffic (accepted events, dead letters,
/// rejections), and a PNG of every page in `$HOOKGATE_SCREENSHOTS`.
#[tokio::test]
#[ignore = "run by scripts/screenshot.sh"]
async fn screenshots() {
    let out = PathBuf::from(
        std::env::var("HOOKGATE_SCREENSHOTS").expect("HOOKGATE_SCREENSHOTS=<output dir>"),
    );
    std::fs::create_dir_all(&out).unwrap();
    let driver = browser::chromedriver().expect("a browser to take screenshots with");
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(dir.path());
    let base = format!("http://127.0.0.1:{}", gateway.port);
    let mut first = String::new();
    for (i, object) in ["post_1", "post_2", "post_3", "post_4", "post_5"]
        .iter()
        .enumerate()
    {
        let (status, answer) = send_event(gateway.port, &format!("evt_demo_{i}"), object).await;
        assert_eq!(status, 200, "{answer}");
        if first.is_empty() {
            first = answer["id"].as_str().unwrap().to_owned();
        }
    }
    // A duplicate and a few rejections (bad signature, unknown instance, stale timestamp).
    send_event(gateway.port, "evt_demo_0", "post_1").await;
    let client = no_redirects();
    let body = generic_body("evt_forged", "post.created", "p9");
    let now = chrono::Utc::now().timestamp();
    let url = format!("{base}/webhooks/demo");
    for (secret, id, ts) in [
        ("wrong-secret", "evt_forged", now),
        (GENERIC_SECRET, "evt_stale", now - 900),
    ] {
        let request = signed_generic(client.post(&url), secret, id, ts, body.clone());
        let _ = request.send().await.unwrap();
    }
    let _ = client
        .post(format!("{base}/webhooks/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();

    let b = Browser::start(&driver, 1360, 900).await;
    b.client.goto(&format!("{base}/ui/login")).await.unwrap();
    b.screenshot(&out.join("dashboard-login.png")).await;
    browser_sign_in(&b, &base, ADMIN_TOKEN).await;
    b.wait_for("#events", "the events list").await;
    // Wait until every delivery has been attempted (five dead letters).
    b.reload_until(
        &format!("{base}/ui/dead-letters"),
        "#dead-letters tbody tr:nth-child(5)",
        "the demo dead letters",
    )
    .await;
    let pages = [
        ("events", format!("{base}/ui/events")),
        ("event", format!("{base}/ui/events/{first}")),
        ("dead-letters", format!("{base}/ui/dead-letters")),
        ("instances", format!("{base}/ui/instances")),
        ("rejected", format!("{base}/ui/rejected")),
    ];
    for (name, url) in pages {
        b.client.goto(&url).await.unwrap();
        b.wait_for("main h1", name).await;
        // The whole page, not only the first screen.
        let height = b
            .client
            .execute("return document.documentElement.scrollHeight;", vec![])
            .await
            .unwrap()
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 2400) as u32;
        b.client.set_window_size(1360, height + 90).await.unwrap();
        b.screenshot(&out.join(format!("dashboard-{name}.png")))
            .await;
        b.client.set_window_size(1360, 900).await.unwrap();
    }
    b.close().await;
}
