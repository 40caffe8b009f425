//! Several replicas of the real binary on one PostgreSQL database (DESIGN §8): one config file
//! for all of them (they bind port 0, so even `bind` is the same), an HTTP sink served by the
//! test, signed generic events over HTTP.
//!
//! - 20 identical requests at once, spread over three replicas: one `accepted`, 19
//!   `duplicate` naming the same gateway id, one envelope at the sink.
//! - `kill -9` one of three replicas in the middle of a load of unique events: every event
//!   acknowledged reaches the sink, in per-object order; the dead replica's leased tasks are
//!   delivered by the others once their lease ends.
//! - PostgreSQL stopped (immediately, as in a crash) for a few seconds under load: 503 `storage_unavailable` with
//!   `Retry-After` meanwhile, `/ready` 503, the replicas keep running and accept again once it
//!   is back; nothing acknowledged is lost.
//!
//! Sink deliveries beyond one per event are counted and printed (at least once is the contract).
//! The cases stop and start the database, so they run one at a time.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use common::binary::{client, send, Answer, Gateway};
use common::{generic_body, generic_headers, providers_dir, GENERIC_SECRET};
use serde_json::Value;

/// The tests share one database server and one of them stops it: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ADMIN_TOKEN: &str = "replicas-admin-token";
/// `storage.lease_secs`: how long a dead replica's tasks wait before another takes them.
const LEASE_SECS: u64 = 2;
/// How long every acknowledged event may take to reach the sink after the load.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(40);

/// The sink: records every envelope delivered to it, in arrival order.
struct Sink {
    url: String,
    seen: Arc<Mutex<Vec<Value>>>,
    refuse: Arc<std::sync::atomic::AtomicUsize>,
    handle: actix_web::dev::ServerHandle,
}

struct SinkState {
    seen: Arc<Mutex<Vec<Value>>>,
    /// Deliveries still to refuse with 400 (a dead letter at once).
    refuse: Arc<std::sync::atomic::AtomicUsize>,
    /// How long the sink takes to answer (keeps deliveries in flight when a replica dies).
    delay: Duration,
}

async fn receive(state: web::Data<SinkState>, body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<Value>(&body) {
        Ok(envelope) => {
            state.seen.lock().unwrap().push(envelope);
            tokio::time::sleep(state.delay).await;
            let refuse = state
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refuse {
                HttpResponse::BadRequest().body("{}")
            } else {
                HttpResponse::Ok().body("{}")
            }
        }
        Err(_) => HttpResponse::BadRequest().finish(),
    }
}

async fn sink(delay: Duration) -> Sink {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let refuse = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let data = web::Data::new(SinkState {
        seen: seen.clone(),
        refuse: refuse.clone(),
        delay,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(receive))
    })
    .workers(2)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Sink {
        url: format!("http://127.0.0.1:{port}/hooks"),
        seen,
        refuse,
        handle,
    }
}

impl Sink {
    fn envelopes(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// How many times each event ID was delivered.
    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for envelope in self.envelopes() {
            let id = envelope["event_id"].as_str().unwrap_or_default().to_owned();
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    /// Waits until every one of `ids` was delivered; returns the ones still missing.
    async fn wait_for(&self, ids: &HashSet<String>, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let counts = self.counts();
            let missing: Vec<String> = ids
                .iter()
                .filter(|id| !counts.contains_key(*id))
                .cloned()
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One config for every replica.
fn write_config(dir: &Path, database: &str, sink: &Sink) -> std::path::PathBuf {
    let config = format!(
        r#"
providers_dir = "{providers}"
[server]
bind = "127.0.0.1:0"
workers = 1
[storage]
backend = "postgres"
url = "{database}"
lease_secs = {LEASE_SECS}
pool_size = 8
connect_timeout_ms = 1000
write_timeout_ms = 2000
[log]
level = "info"
format = "json"
[admin]
token = "{ADMIN_TOKEN}"

[providers.demo]
kind = "generic"
secrets = ["{GENERIC_SECRET}"]

[[sinks]]
name = "app"
kind = "http"
url = "{url}"
retry = {{ max_attempts = 20, initial_backoff_ms = 50, max_backoff_ms = 500 }}
"#,
        providers = providers_dir().display(),
        url = sink.url,
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn start(config: &Path, n: usize) -> Vec<Gateway> {
    let mut replicas = Vec::new();
    for _ in 0..n {
        let config = config.to_owned();
        replicas.push(
            tokio::task::spawn_blocking(move || Gateway::start(&config))
                .await
                .unwrap(),
        );
    }
    replicas
}

/// The answer to one signed event, with its body.
async fn post(client: &reqwest::Client, port: u16, id: &str) -> (u16, Value) {
    let body = generic_body(id, "post.created", "p1");
    let mut request = client.post(format!("http://127.0.0.1:{port}/webhooks/demo"));
    for (k, v) in generic_headers(
        GENERIC_SECRET,
        id,
        chrono::Utc::now().timestamp(),
        body.as_bytes(),
    ) {
        request = request.header(k, v);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_identical_requests_over_three_replicas_are_accepted_once() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::postgres::fresh_database("replicas_dup").await;
    let sink = sink(Duration::ZERO).await;
    let replicas = start(&write_config(dir.path(), &database, &sink), 3).await;
    let client = client();

    let mut requests = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let port = replicas[i % 3].port;
        requests.push(tokio::spawn(async move {
            post(&client, port, "evt_same_everywhere").await
        }));
    }
    let mut statuses = HashMap::<String, usize>::new();
    let mut ids = HashSet::new();
    for request in requests {
        let (http, answer) = request.await.unwrap();
        assert_eq!(http, 200, "{answer}");
        *statuses
            .entry(answer["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        ids.insert(answer["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        statuses,
        HashMap::from([("accepted".into(), 1), ("duplicate".into(), 19)])
    );
    assert_eq!(ids.len(), 1, "every answer names the stored event: {ids:?}");

    let once = HashSet::from(["evt_same_everywhere".to_owned()]);
    assert!(sink.wait_for(&once, DELIVERY_TIMEOUT).await.is_empty());
    // Every replica's worker had its chance (and a lease would have run out) by now.
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 1)).await;
    assert_eq!(
        sink.counts()["evt_same_everywhere"],
        1,
        "one envelope at the sink"
    );
    drop(replicas);
    sink.handle.stop(false).await;
}

/// Unique events from `senders` concurrent senders, each on its own object, spread over the
/// replicas' ports (a sender moves on to the next replica when one does not answer), until
/// `stop` is set. Returns the acknowledged events per object, in acknowledgement order, and
/// every answer that was neither 2xx nor a refused connection.
async fn load(
    ports: Vec<u16>,
    senders: usize,
    run_for: Duration,
    prefix: &str,
) -> (
    HashMap<String, Vec<String>>,
    Vec<(u16, String, Option<String>)>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let until = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for worker in 0..senders {
        let client = client.clone();
        let ports = ports.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let object = format!("obj{worker}");
            let mut acked = Vec::new();
            let mut refused = Vec::new();
            let mut replica = worker % ports.len();
            let mut i = 0;
            // Whether the current event was sent before without an acknowledgement (it may have
            // been stored all the same: then its resend is a `duplicate`, and that counts).
            let mut resent = false;
            while Instant::now() < until {
                let id = format!("{prefix}_w{worker}_{i}");
                let body = generic_body(&id, "post.created", &object);
                let mut request =
                    client.post(format!("http://127.0.0.1:{}/webhooks/demo", ports[replica]));
                let now = chrono::Utc::now().timestamp();
                for (k, v) in generic_headers(GENERIC_SECRET, &id, now, body.as_bytes()) {
                    request = request.header(k, v);
                }
                match request.body(body).send().await {
                    Ok(response) if response.status().is_success() => {
                        let answer: Value = response.json().await.unwrap_or(Value::Null);
                        let fresh = answer["status"] == "accepted";
                        assert!(
                            fresh || (resent && answer["status"] == "duplicate"),
                            "{id}: {answer}"
                        );
                        acked.push(id);
                        i += 1;
                        resent = false;
                    }
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let retry_after = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let answer: Value = response.json().await.unwrap_or(Value::Null);
                        let code = answer["error"]["code"].as_str().unwrap_or("").to_owned();
                        refused.push((status, code, retry_after));
                        resent = true;
                        // Not acknowledged: a provider retries this event later. So does this
                        // sender, after a pause, so that per-object order stays the send order.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => {
                        // A replica that does not answer (killed): the load balancer's job, done
                        // here by moving on. A timeout would be a hang: fail loudly.
                        assert!(!e.is_timeout(), "{id}: no answer within 8 s: {e}");
                        replica = (replica + 1) % ports.len();
                        resent = true;
                    }
                }
            }
            (object, acked, refused)
        }));
    }
    let mut acked = HashMap::new();
    let mut refused = Vec::new();
    for task in tasks {
        let (object, events, no) = task.await.unwrap();
        acked.insert(object, events);
        refused.extend(no);
    }
    (acked, refused)
}

/// Checks every acknowledged event reached the sink and each object's first deliveries came in
/// acknowledgement order; returns (acknowledged, extra deliveries).
async fn check_delivered(sink: &Sink, acked: &HashMap<String, Vec<String>>) -> (usize, usize) {
    let all: HashSet<String> = acked.values().flatten().cloned().collect();
    let missing = sink.wait_for(&all, DELIVERY_TIMEOUT).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never reached the sink, e.g. {:?}",
        missing.len(),
        all.len(),
        &missing[..missing.len().min(5)]
    );
    let mut first_seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen = HashSet::new();
    for envelope in sink.envelopes() {
        let id = envelope["event_id"].as_str().unwrap().to_owned();
        if seen.insert(id.clone()) {
            let object = envelope["object_id"].as_str().unwrap().to_owned();
            first_seen.entry(object).or_default().push(id);
        }
    }
    for (object, events) in acked {
        let delivered: Vec<&String> = first_seen
            .get(object)
            .map(|d| d.iter().filter(|id| all.contains(*id)).collect())
            .unwrap_or_default();
        let expected: Vec<&String> = events.iter().collect();
        assert_eq!(delivered, expected, "per-object order of {object}");
    }
    let deliveries: usize = sink.counts().values().sum();
    (all.len(), deliveries - seen.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_acknowledged_event() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::postgres::fresh_database("replicas_kill").await;
    // A slow sink: every replica has deliveries in flight when one is killed.
    let sink = sink(Duration::from_millis(100)).await;
    let mut replicas = start(&write_config(dir.path(), &database, &sink), 3).await;
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();

    let loading = tokio::spawn(load(ports, 6, Duration::from_millis(2500), "evt_kill"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let victim = replicas.remove(0);
    tokio::task::spawn_blocking(move || victim.sigkill())
        .await
        .unwrap();
    let (acked, refused) = loading.await.unwrap();
    // A loaded machine may answer a request 503 (the provider retries it; so did the sender).
    for (status, code, _) in &refused {
        assert_eq!(
            (*status, code.as_str()),
            (503, "storage_unavailable"),
            "{refused:?}"
        );
    }
    let (total, extra) = check_delivered(&sink, &acked).await;
    println!(
        "kill -9 of one of three replicas: {total} events acknowledged, all delivered in \
         per-object order; {extra} extra deliveries (tasks the dead replica had in flight, \
         delivered again by another after their lease)"
    );
    assert!(total > 0);
    drop(replicas);
    sink.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_is_answered_503_and_the_replicas_recover_by_themselves() {
    let _serial = SERIAL.lock().await;
    let ctl = std::env::var("HOOKGATE_TEST_PG_CTL")
        .expect("HOOKGATE_TEST_PG_CTL: run the suite with scripts/with-postgres.sh");
    let dir = tempfile::tempdir().unwrap();
    let database = common::postgres::fresh_database("replicas_outage").await;
    let sink = sink(Duration::ZERO).await;
    let mut replicas = start(&write_config(dir.path(), &database, &sink), 2).await;
    let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();

    let loading = tokio::spawn(load(
        ports.clone(),
        4,
        Duration::from_millis(6000),
        "evt_outage",
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pg = |action: &'static str| {
        let ctl = ctl.clone();
        tokio::task::spawn_blocking(move || {
            let status = std::process::Command::new(&ctl)
                .arg(action)
                .status()
                .unwrap();
            assert!(status.success(), "{ctl} {action}");
        })
    };
    // An immediate stop: no checkpoint, so what was acknowledged survives only through the WAL.
    pg("crash").await.unwrap();
    let stopped = Instant::now();
    // While it is down: /ready says so, and events are refused with 503 (the senders see it).
    let client = client();
    let mut ready_during = Vec::new();
    while stopped.elapsed() < Duration::from_secs(3) {
        let ready = client
            .get(format!("http://127.0.0.1:{}/ready", ports[0]))
            .send()
            .await
            .unwrap();
        ready_during.push(ready.status().as_u16());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    pg("start").await.unwrap();
    let (acked, refused) = loading.await.unwrap();

    assert!(
        ready_during.contains(&503),
        "/ready during the outage: {ready_during:?}"
    );
    assert!(
        !refused.is_empty(),
        "nothing was refused while the database was down"
    );
    for (status, code, retry_after) in &refused {
        assert_eq!(
            (*status, code.as_str()),
            (503, "storage_unavailable"),
            "refused with {refused:?}"
        );
        assert!(retry_after.is_some(), "503 without Retry-After");
    }
    for replica in &mut replicas {
        assert!(replica.is_running(), "a replica exited during the outage");
    }
    // Back to normal: ready, and new events accepted.
    let ready = client
        .get(format!("http://127.0.0.1:{}/ready", ports[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        matches!(send(&client, ports[1], "evt_after_outage", "obj_after").await, Answer::Status(s) if s == "accepted")
    );
    let (total, extra) = check_delivered(&sink, &acked).await;
    println!(
        "PostgreSQL stopped for 3 s under load: {} answers 503 storage_unavailable, {total} \
         events acknowledged, all delivered in per-object order; {extra} extra deliveries",
        refused.len()
    );
    drop(replicas);
    sink.handle.stop(false).await;
}

fn pg_settings(url: &str) -> hookgate::config::StorageSettings {
    hookgate::config::StorageSettings {
        backend: hookgate::config::StorageBackend::Postgres,
        url: Some(hookgate::secret::Secret::new(url)),
        pool_size: 2,
        ..Default::default()
    }
}

async fn pg_connect(
    url: &str,
) -> Result<hookgate::store::postgres::PgStore, hookgate::store::StoreError> {
    hookgate::store::postgres::PgStore::connect(
        &pg_settings(url),
        Arc::new(hookgate::clock::SystemClock),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_at_once_migrate_the_database_once() {
    let _serial = SERIAL.lock().await;
    let url = common::postgres::fresh_database("replicas_migrate").await;
    let starts = (0..6).map(|_| pg_connect(&url));
    for started in futures_util::future::join_all(starts).await {
        hookgate::store::Maintenance::close(&started.expect("every replica starts"));
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM hookgate_schema ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let every: Vec<i32> = (1..=hookgate::store::postgres::SCHEMA_VERSION).collect();
    assert_eq!(versions, every);

    // A database migrated by a newer hookgate is refused, not downgraded.
    sqlx::query("INSERT INTO hookgate_schema (version, name) VALUES (99, 'future')")
        .execute(&mut conn)
        .await
        .unwrap();
    let refused = pg_connect(&url)
        .await
        .expect_err("a newer schema is refused");
    assert!(refused.to_string().contains("version 99"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_and_redelivery_work_across_replicas() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::postgres::fresh_database("replicas_dead").await;
    let sink = sink(Duration::ZERO).await;
    sink.refuse.store(1, Ordering::SeqCst);
    let config = write_config(dir.path(), &database, &sink);
    let replicas = start(&config, 3).await;
    let client = client();
    let admin = |replica: usize, path: &str| {
        format!("http://127.0.0.1:{}/admin{path}", replicas[replica].port)
    };

    let (status, answer) = post(&client, replicas[0].port, "evt_dead_letter").await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("accepted")));
    let id = answer["id"].as_str().unwrap().to_owned();

    // Dead at the first 400; another replica lists it.
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let dead = loop {
        let dead: Value = client
            .get(admin(2, "/dead-letters?sink=app"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if dead["dead_letters"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
            || Instant::now() > deadline
        {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        dead["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{dead}"
    );
    assert_eq!(
        dead["dead_letters"][0]["envelope_id"],
        id.as_str(),
        "{dead}"
    );

    // The CLI reads the same database (no gateway at the config's port 0: it connects itself).
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["events", "--config"])
        .arg(&config)
        .args(["list", "--status", "dead"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(text.contains(&id) && text.contains("app:dead(1)"), "{text}");

    // Redelivered through a third replica: some replica's worker delivers it.
    let redelivered = client
        .post(admin(1, &format!("/events/{id}/redeliver")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        redelivered.status().is_success(),
        "{}",
        redelivered.status()
    );
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while sink.counts().get("evt_dead_letter").copied().unwrap_or(0) < 2
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sink.counts()["evt_dead_letter"],
        2,
        "refused once, delivered once"
    );
    // The sink has answered; the attempt is recorded right after: wait for it.
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let event = loop {
        let event: Value = client
            .get(admin(0, &format!("/events/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = event["envelopes"][0]["deliveries"][0]["status"].clone();
        if status == "delivered" || Instant::now() > deadline {
            break event;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        event["envelopes"][0]["deliveries"][0]["status"], "delivered",
        "{event}"
    );
    drop(replicas);
    sink.handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_does_not_answer_is_a_503_within_the_deadline_not_a_hang() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::postgres::fresh_database("replicas_slow").await;
    let sink = sink(Duration::ZERO).await;
    let replicas = start(&write_config(dir.path(), &database, &sink), 1).await;
    let client = client();
    // Another session holds the idempotency table: every commit waits for it.
    let mut blocker = <sqlx::PgConnection as sqlx::Connection>::connect(&database)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE hookgate_claims IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    // `client` gives up after 5 s; the gateway's deadline (write_timeout_ms) is 2 s.
    let (status, answer) = post(&client, replicas[0].port, "evt_slow").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "storage_unavailable", "{answer}");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    // The provider's retry goes through.
    let (status, answer) = post(&client, replicas[0].port, "evt_slow").await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    drop(replicas);
    sink.handle.stop(false).await;
}

/// A commit on one replica wakes the workers of another (through `NOTIFY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_on_one_replica_wakes_the_workers_of_another() {
    use hookgate::store::IngestStore;
    let _serial = SERIAL.lock().await;
    let url = common::postgres::fresh_database("replicas_notify").await;
    let (a, b) = (
        pg_connect(&url).await.unwrap(),
        pg_connect(&url).await.unwrap(),
    );
    let mut woken = hookgate::store::TaskQueue::wakeups(&b);
    woken.borrow_and_update();
    // Nothing in B changes its wakeups but a notification (or a lost listener connection). B's
    // listener may not be listening yet when the first commit notifies (on a loaded machine),
    // so A commits again every second until B wakes, for up to 30 s.
    let mut woke = false;
    for n in 0..30 {
        let receipt = new_receipt(
            &format!("evt_notify_{n}"),
            &ulid::Ulid::new().to_string(),
            b"",
        );
        a.commit(receipt).await.unwrap();
        if tokio::time::timeout(Duration::from_secs(1), woken.changed())
            .await
            .is_ok()
        {
            woke = true;
            break;
        }
    }
    assert!(woke, "the other replica was woken");
    hookgate::store::Maintenance::close(&a);
    hookgate::store::Maintenance::close(&b);
}

/// A receipt of one generic event for sink `app`, due now, in `lane` (empty: none).
fn new_receipt(event_id: &str, envelope_id: &str, lane: &[u8]) -> hookgate::store::NewReceipt {
    use hookgate::store::{DedupKey, NewEnvelope, NewReceipt, Receipt, ReceiptStatus};
    let now = chrono::Utc::now();
    let envelope = hookgate::envelope::Envelope {
        id: envelope_id.into(),
        provider: "demo".into(),
        kind: "generic".into(),
        event_id: event_id.into(),
        event_type: "post.created".into(),
        action: "created".into(),
        object: "post".into(),
        object_id: Some("p1".into()),
        current: None,
        previous: None,
        occurred_at: None,
        received_at: hookgate::envelope::format_millis(now),
        meta: serde_json::Map::new(),
    };
    NewReceipt {
        receipt: Receipt {
            id: ulid::Ulid::new().to_string(),
            provider: "demo".into(),
            kind: "generic".into(),
            event_id: Some(event_id.into()),
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
        body: "{}".into(),
        events: vec![NewEnvelope {
            dedup: DedupKey {
                provider: "demo".into(),
                event_id: event_id.into(),
            },
            json: serde_json::to_vec(&envelope).unwrap().into(),
            envelope,
            sinks: vec!["app".into()],
            lane: lane.to_vec(),
            not_before_ms: now.timestamp_millis(),
        }],
        replay_guard: None,
    }
}

/// The attempt a worker records: `outcome`, at `at_ms`.
fn attempted(
    task: &hookgate::store::TaskRecord,
    outcome: hookgate::store::AttemptOutcome,
    at_ms: i64,
) -> (hookgate::store::TaskRecord, hookgate::store::AttemptRecord) {
    use hookgate::store::{AttemptOutcome, AttemptRecord, TaskStatus};
    let mut next = task.clone();
    next.attempts += 1;
    next.round_attempts += 1;
    next.status = match outcome {
        AttemptOutcome::Delivered => TaskStatus::Delivered,
        AttemptOutcome::Retry => TaskStatus::Pending,
        AttemptOutcome::Dead => TaskStatus::Dead,
    };
    next.next_attempt_ms = (outcome == AttemptOutcome::Retry).then_some(at_ms + 1_000);
    let attempt = AttemptRecord {
        number: next.attempts,
        at: hookgate::envelope::format_millis(chrono::Utc::now()),
        outcome,
        http_status: Some(200),
        exit_code: None,
        error: None,
        duration_ms: 1,
        response: None,
    };
    (next, attempt)
}

/// Across replicas, a worker whose lease ran out (the task was taken by another) or whose task
/// was redelivered meanwhile cannot record over the newer state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_that_outlived_its_lease_or_a_redelivery_is_not_recorded() {
    use hookgate::store::{AttemptOutcome, EventBrowser, IngestStore, TaskQueue, TaskStatus};
    let _serial = SERIAL.lock().await;
    let url = common::postgres::fresh_database("replicas_lease").await;
    let (a, b) = (
        pg_connect(&url).await.unwrap(),
        pg_connect(&url).await.unwrap(),
    );
    let lease_ms = 30_000; // StorageSettings' default lease_secs
    let envelope = ulid::Ulid::new().to_string();
    a.commit(new_receipt("evt_lease", &envelope, b""))
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();

    // A takes it; its lease runs out; B takes it.
    let taken_a = a.take_due("app".into(), now, 10).await.unwrap().tasks;
    assert_eq!(taken_a.len(), 1);
    let later = now + lease_ms + 1;
    let taken_b = b.take_due("app".into(), later, 10).await.unwrap().tasks;
    assert_eq!(
        taken_b.len(),
        1,
        "the lease ran out: another replica takes the task"
    );
    // A's late result is not recorded; B's is.
    let (late, late_attempt) = attempted(&taken_a[0].task, AttemptOutcome::Retry, later);
    a.record_attempts(vec![(late, late_attempt)]).await.unwrap();
    let tasks = b.tasks(envelope.clone()).await.unwrap();
    assert_eq!(
        (tasks[0].status, tasks[0].attempts),
        (TaskStatus::Pending, 0),
        "{tasks:?}"
    );
    assert!(
        b.take_due("app".into(), later + 1_000, 10)
            .await
            .unwrap()
            .tasks
            .is_empty(),
        "still leased to B"
    );
    let (done, done_attempt) = attempted(&taken_b[0].task, AttemptOutcome::Delivered, later);
    b.record_attempts(vec![(done, done_attempt.clone())])
        .await
        .unwrap();
    let tasks = b.tasks(envelope.clone()).await.unwrap();
    assert_eq!(
        (tasks[0].status, tasks[0].attempts),
        (TaskStatus::Delivered, 1)
    );
    assert_eq!(
        b.attempts(envelope.clone(), "app".into()).await.unwrap(),
        [done_attempt]
    );

    // A redelivery while an attempt is in flight: the attempt's result does not undo it.
    assert_eq!(a.redeliver(envelope.clone(), None, later).await.unwrap(), 1);
    let taken = a.take_due("app".into(), later, 10).await.unwrap().tasks;
    assert_eq!(taken.len(), 1);
    assert_eq!(
        b.redeliver(envelope.clone(), None, later + 10)
            .await
            .unwrap(),
        1
    );
    let (stale, stale_attempt) = attempted(&taken[0].task, AttemptOutcome::Dead, later + 20);
    a.record_attempts(vec![(stale, stale_attempt)])
        .await
        .unwrap();
    let tasks = a.tasks(envelope.clone()).await.unwrap();
    assert_eq!(
        tasks[0].status,
        TaskStatus::Pending,
        "the redelivery stands: {tasks:?}"
    );
    hookgate::store::Maintenance::close(&a);
    hookgate::store::Maintenance::close(&b);
}

/// Per-object order is the order the database got the events, not the order of the replicas'
/// ids (their clocks differ), and one delivery per object is in flight at a time even when a
/// redelivery makes an older event pending again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_object_order_follows_commits_not_replica_clocks() {
    use hookgate::store::{AttemptOutcome, IngestStore, TaskQueue};
    let _serial = SERIAL.lock().await;
    let url = common::postgres::fresh_database("replicas_order").await;
    let (a, b) = (
        pg_connect(&url).await.unwrap(),
        pg_connect(&url).await.unwrap(),
    );
    // B's clock is behind: its event, committed second, has the smaller id.
    let first = ulid::Ulid::new().to_string();
    let behind = ulid::Ulid::from_parts(ulid::Ulid::new().timestamp_ms() - 60_000, 1).to_string();
    assert!(behind < first);
    a.commit(new_receipt("evt_o1", &first, b"post:p1"))
        .await
        .unwrap();
    b.commit(new_receipt("evt_o2", &behind, b"post:p1"))
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let due = b.take_due("app".into(), now, 10).await.unwrap().tasks;
    let ids: Vec<&str> = due.iter().map(|t| t.task.envelope_id.as_str()).collect();
    assert_eq!(
        ids,
        [first.as_str()],
        "the first committed, alone: its lane waits"
    );
    assert!(a
        .take("app".into(), vec![behind.clone()], now)
        .await
        .unwrap()
        .is_empty());
    let (done, attempt) = attempted(&due[0].task, AttemptOutcome::Delivered, now);
    b.record_attempts(vec![(done, attempt)]).await.unwrap();
    let second = a.take_due("app".into(), now, 10).await.unwrap().tasks;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].task.envelope_id, behind);

    // While the second is in flight, redelivering the first does not put two in flight.
    assert_eq!(b.redeliver(first.clone(), None, now).await.unwrap(), 1);
    assert!(
        b.take_due("app".into(), now, 10)
            .await
            .unwrap()
            .tasks
            .is_empty(),
        "the lane has a delivery in flight"
    );
    let (done, attempt) = attempted(&second[0].task, AttemptOutcome::Delivered, now);
    a.record_attempts(vec![(done, attempt)]).await.unwrap();
    let again = b.take_due("app".into(), now, 10).await.unwrap().tasks;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].task.envelope_id, first);
    hookgate::store::Maintenance::close(&a);
    hookgate::store::Maintenance::close(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_made_on_one_replica_holds_on_the_others_and_after_a_restart() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::postgres::fresh_database("replicas_pause").await;
    let sink = sink(Duration::ZERO).await;
    let config = write_config(dir.path(), &database, &sink);
    let mut replicas = start(&config, 2).await;
    let client = client();
    let admin = |port: u16, path: &str| format!("http://127.0.0.1:{port}/admin{path}");
    let action = |port: u16, path: &'static str| {
        let client = client.clone();
        async move {
            let response = client
                .post(admin(port, path))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    };
    // Poll a replica until `done` holds for one of its answers (no fixed sleep).
    async fn until(
        client: &reqwest::Client,
        port: u16,
        id: &str,
        done: impl Fn(u16, &Value) -> bool,
    ) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = post(client, port, id).await;
            if done(status, &body) || Instant::now() > deadline {
                return (status, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    action(replicas[0].port, "/instances/demo/pause").await;
    let (status, body) = until(&client, replicas[1].port, "evt_paused", |s, _| s == 503).await;
    assert_eq!(status, 503, "the other replica pauses too: {body}");
    assert_eq!(body["error"]["code"], "paused");

    // A restarted replica starts paused.
    let port = replicas[1].port;
    replicas.pop().unwrap().sigkill();
    let mut restarted = start(&config, 1).await;
    assert_ne!(restarted[0].port, port);
    let (status, _) = post(&client, restarted[0].port, "evt_paused").await;
    assert_eq!(status, 503);

    // A paused sink keeps its task pending across replicas; resuming delivers it.
    // The sink is paused before the instance resumes, so a replica that answers 200 again
    // has read the sink's pause too (one refresh reads both).
    action(restarted[0].port, "/sinks/app/pause").await;
    action(restarted[0].port, "/instances/demo/resume").await;
    let (status, body) = until(&client, replicas[0].port, "evt_held", |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");
    let sinks: Value = client
        .get(admin(replicas[0].port, "/sinks"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sinks["sinks"][0]["paused"], true, "{sinks}");
    // (`evt_paused` may have been accepted and delivered before the pause reached replica 1.)
    let held = || {
        sink.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event_id"] == "evt_held")
            .count()
    };
    assert_eq!(held(), 0, "a paused sink got a delivery");
    action(replicas[0].port, "/sinks/app/resume").await;
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while held() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held(), 1, "resuming delivers the held task once");
    drop(restarted.pop());
}
