//! `hookgate events`: list, show and redeliver stored events and dead letters. Talks to the
//! running gateway's `/admin` API when one answers (with `admin.token`); otherwise opens the
//! store directly (the store can only be open in one process at a time).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::admin::{self, ListQuery};
use crate::clock::{Clock, SystemClock};
use crate::config::StorageBackend;
use crate::config::{self, LoadedSettings};
use crate::metrics::Metrics;
use crate::store::log::LogStore;
use crate::store::postgres::PgStore;
use crate::store::Store;
use crate::telemetry::{escape_controls, LineStyle};

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH, env = "HOOKGATE_CONFIG", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Stored events, newest first, with their delivery status per sink.
    List {
        #[arg(long)]
        provider: Option<String>,
        /// accepted | unprocessable | pending | delivered | dead
        #[arg(long)]
        status: Option<String>,
        /// Search by the provider's event id.
        #[arg(long)]
        event_id: Option<String>,
        /// A glob over the provider's event type, e.g. 'customer.*'.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// A glob over the envelope object, e.g. 'deal'.
        #[arg(long)]
        object: Option<String>,
        /// The canonical action, e.g. 'updated'.
        #[arg(long)]
        action: Option<String>,
        /// Received at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Received before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = admin::DEFAULT_LIMIT)]
        limit: usize,
        /// Show events older than this id (the `next` of the previous page).
        #[arg(long)]
        before: Option<String>,
    },
    /// One event: the raw delivery, its envelopes, and every attempt per sink (JSON).
    Show { id: String },
    /// Run a stored delivery (e.g. an unprocessable one, after a definition fix) through the
    /// current definitions again, without verification; new envelopes are stored and delivered.
    Reprocess { id: String },
    /// Write a stored event as a replayable fixture: body, headers and expected envelopes
    /// (`hookgate replay`, the golden test). Secrets are never written.
    Export {
        id: String,
        /// The fixture directory (one per kind; created, `instance.toml` written if missing).
        #[arg(long)]
        fixture: PathBuf,
        /// The case name; default the provider's event id.
        #[arg(long)]
        name: Option<String>,
    },
    /// Dead letters.
    DeadLetters {
        #[arg(long)]
        sink: Option<String>,
        #[arg(long, default_value_t = admin::DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Deliver an event again (all sinks, or --sink), or every dead letter.
    Redeliver {
        /// The event's id; omit with --dead-letters.
        id: Option<String>,
        #[arg(long)]
        dead_letters: bool,
        #[arg(long)]
        sink: Option<String>,
    },
}

/// Where the commands run.
pub(super) enum Backend {
    Api {
        client: reqwest::Client,
        base: String,
        token: String,
    },
    Store(Arc<dyn Store>),
}

pub(super) async fn backend(loaded: &LoadedSettings) -> anyhow::Result<Backend> {
    let settings = &loaded.settings;
    if let Some(token) = settings.admin.token.as_ref().filter(|t| !t.is_empty()) {
        let base = format!("{}/admin", loaded.local_url());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let probe = client
            .get(format!("{base}/dead-letters?limit=1"))
            .bearer_auth(token.expose_str())
            .send()
            .await;
        if probe.is_ok() {
            return Ok(Backend::Api {
                client,
                base,
                token: token.expose_str().to_owned(),
            });
        }
    }
    // PostgreSQL is shared: the command connects to it like one more replica.
    let store: Arc<dyn Store> = match settings.storage.backend {
        StorageBackend::Postgres => Arc::new(
            PgStore::connect_migrated(&settings.storage, Arc::new(SystemClock))
                .await
                .map_err(|e| anyhow!("{e}"))?,
        ),
        StorageBackend::Embedded => Arc::new(
            LogStore::open(
                &settings.storage,
                Arc::new(SystemClock),
                Arc::new(Metrics::new()),
            )
            .map_err(|e| {
                anyhow!(
                    "{e}\n(if the gateway is running, set [admin] token in {} so this command \
                     can use its API)",
                    loaded.file_name()
                )
            })?,
        ),
    };
    Ok(Backend::Store(store))
}

impl Backend {
    /// Calls the admin API (only on the API backend).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let Backend::Api {
            client,
            base,
            token,
        } = self
        else {
            unreachable!("only called on the API backend");
        };
        let response = client
            .request(method, format!("{base}{path}"))
            .query(query)
            .bearer_auth(token)
            .send()
            .await?;
        read(response).await
    }

    pub(super) async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, query).await
    }

    pub(super) async fn post(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, query).await
    }
}

async fn read(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let bytes = response.bytes().await?;
    // The same nesting limit the store reads envelopes with.
    let body: Value = crate::json::read(&bytes).context("the gateway answered no JSON")?;
    if !status.is_success() {
        bail!(
            "{}: {}",
            status,
            text(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("request failed")
            )
        );
    }
    Ok(body)
}

fn opt(name: &'static str, value: &Option<String>) -> Vec<(&'static str, String)> {
    value.iter().map(|v| (name, v.clone())).collect()
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let loaded = config::load(&args.config)?;
    let backend = backend(&loaded).await?;
    let now = SystemClock.now().timestamp_millis();
    let result = match (&backend, args.command) {
        (
            _,
            EventsCommand::List {
                provider,
                status,
                event_id,
                event_type,
                object,
                action,
                since,
                until,
                limit,
                before,
            },
        ) => {
            let query = ListQuery {
                provider,
                status,
                event_id,
                event_type,
                object,
                action,
                since,
                until,
                limit: Some(limit),
                before,
            };
            let body = match &backend {
                Backend::Store(store) => admin::list(&**store, &query)
                    .await
                    .map_err(|e| anyhow!(e))?,
                Backend::Api { .. } => {
                    let mut params = vec![("limit", limit.to_string())];
                    params.extend(opt("provider", &query.provider));
                    params.extend(opt("status", &query.status));
                    params.extend(opt("event_id", &query.event_id));
                    params.extend(opt("type", &query.event_type));
                    params.extend(opt("object", &query.object));
                    params.extend(opt("action", &query.action));
                    params.extend(opt("since", &query.since));
                    params.extend(opt("until", &query.until));
                    params.extend(opt("before", &query.before));
                    backend.get("/events", &params).await?
                }
            };
            print_list(&body)?;
            Ok(())
        }
        (Backend::Store(store), EventsCommand::Show { id }) => {
            let body = admin::show(&**store, &id)
                .await
                .map_err(|e| anyhow!(e))?
                .ok_or_else(|| anyhow!("no stored event has id {id}"))?;
            print_json(&body)?;
            Ok(())
        }
        (Backend::Store(store), EventsCommand::Reprocess { id }) => {
            // The stopped gateway's own parts: its definitions, sinks (their tasks are
            // delivered at its next start) and ingest step.
            let registry = crate::provider::registry::Registry::build(&loaded)?;
            let routes = crate::dispatch::build_routes(&loaded, Vec::new())?;
            let dispatcher = Arc::new(crate::dispatch::Dispatcher::new(
                routes,
                store.clone(),
                Arc::new(SystemClock),
                Arc::new(Metrics::new()),
                Duration::from_secs(loaded.settings.storage.lease_secs),
                Arc::new(crate::pause::Pauses::default()),
                Arc::new(crate::observe::Observer::default()),
            ));
            let ingestor = crate::ingest::Ingestor::new(store.clone(), dispatcher);
            let body = admin::reprocess(&**store, &registry, &ingestor, &id, SystemClock.now())
                .await
                .map_err(|e| anyhow!(e))?
                .ok_or_else(|| anyhow!("no stored event has id {id}"))?;
            print_json(&body)?;
            Ok(())
        }
        (Backend::Api { .. }, EventsCommand::Reprocess { id }) => {
            let body = backend
                .post(&format!("/events/{id}/reprocess"), &[])
                .await?;
            print_json(&body)?;
            Ok(())
        }
        (_, EventsCommand::Export { id, fixture, name }) => {
            let body = match &backend {
                Backend::Store(store) => admin::show(&**store, &id)
                    .await
                    .map_err(|e| anyhow!(e))?
                    .ok_or_else(|| anyhow!("no stored event has id {id}"))?,
                Backend::Api { .. } => backend.get(&format!("/events/{id}"), &[]).await?,
            };
            let written = export(&loaded, &body, &fixture, name.as_deref())?;
            outln!("{}", text(&written));
            Ok(())
        }
        (Backend::Api { .. }, EventsCommand::Show { id }) => {
            let body = backend.get(&format!("/events/{id}"), &[]).await?;
            print_json(&body)?;
            Ok(())
        }
        (_, EventsCommand::DeadLetters { sink, limit }) => {
            let body = match &backend {
                Backend::Store(store) => admin::dead_letters(&**store, sink.as_deref(), limit)
                    .await
                    .map_err(|e| anyhow!(e))?,
                Backend::Api { .. } => {
                    let mut query = vec![("limit", limit.to_string())];
                    query.extend(opt("sink", &sink));
                    backend.get("/dead-letters", &query).await?
                }
            };
            print_json(&body)?;
            Ok(())
        }
        (
            _,
            EventsCommand::Redeliver {
                id,
                dead_letters,
                sink,
            },
        ) => {
            let count = match (&backend, id, dead_letters) {
                (_, Some(_), true) | (_, None, false) => {
                    bail!("give an event id, or --dead-letters")
                }
                (Backend::Store(store), Some(id), false) => {
                    admin::redeliver(&**store, &id, sink.as_deref(), now)
                        .await
                        .map_err(|e| anyhow!(e))?
                        .ok_or_else(|| anyhow!("no stored event has id {id}"))?
                }
                (Backend::Store(store), None, true) => {
                    admin::redeliver_dead_letters(&**store, sink.as_deref(), now)
                        .await
                        .map_err(|e| anyhow!(e))?
                }
                (Backend::Api { .. }, Some(id), false) => backend
                    .post(&format!("/events/{id}/redeliver"), &opt("sink", &sink))
                    .await?["redelivered"]
                    .as_u64()
                    .unwrap_or(0)
                    as usize,
                (Backend::Api { .. }, None, true) => backend
                    .post("/dead-letters/redeliver", &opt("sink", &sink))
                    .await?["redelivered"]
                    .as_u64()
                    .unwrap_or(0) as usize,
            };
            outln!("{count} delivery task(s) scheduled again");
            Ok(())
        }
    };
    if let Backend::Store(store) = backend {
        store.close();
    }
    result
}

/// A stored value as it may go to a terminal: ids, types and errors come from senders and
/// sinks, so their control characters are shown escaped, never sent to the terminal.
pub(super) fn text(value: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(value, LineStyle::Text { ansi: false })
}

/// JSON for the terminal: serde_json escapes C0 controls; DEL and C1 are escaped here too.
pub(super) fn print_json(body: &Value) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(body)?;
    outln!("{}", escape_controls(&json, LineStyle::Json));
    Ok(())
}

fn print_list(body: &Value) -> anyhow::Result<()> {
    let events = body["events"].as_array().cloned().unwrap_or_default();
    for event in &events {
        let deliveries: Vec<String> = event["deliveries"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|t| {
                        format!(
                            "{}:{}({})",
                            text(t["sink"].as_str().unwrap_or_default()),
                            text(t["status"].as_str().unwrap_or_default()),
                            t["attempts"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let field = |name: &str| text(event[name].as_str().unwrap_or_default()).into_owned();
        outln!(
            "{}  {}  {:<12} {:<14} {:<40} {}",
            field("id"),
            field("received_at"),
            field("provider"),
            field("status"),
            field("event_id"),
            deliveries.join(" ")
        );
    }
    if let Some(next) = body["next"].as_str() {
        outln!("more: --before {}", text(next));
    }
    Ok(())
}

/// Writes the event `shown` (the `show` JSON) as fixture case files in `dir`; returns what it
/// wrote. The expected file holds what the gateway answered and stored, with gateway ids
/// replaced and `received_at` at `signed_at` (the golden test's clock).
fn export(
    loaded: &LoadedSettings,
    shown: &Value,
    dir: &std::path::Path,
    name: Option<&str>,
) -> anyhow::Result<String> {
    use crate::fixture::{EXPECTED_SUFFIX, HEADERS_SUFFIX, INSTANCE_FILE};
    let record = &shown["delivery"]["record"];
    let kind_name = record["kind"].as_str().unwrap_or_default().to_owned();
    let provider = record["provider"].as_str().unwrap_or_default().to_owned();
    let received = record["received_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .ok_or_else(|| anyhow!("the stored event has no receive time"))?;
    let signed_at = received.timestamp();
    let body = match shown["delivery"]["body_encoding"].as_str() {
        Some("base64") => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(shown["delivery"]["body"].as_str().unwrap_or_default())
                .context("the stored body is not base64")?
        }
        _ => shown["delivery"]["body"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
    };
    let event_id = record["event_id"].as_str().unwrap_or("event");
    let case: String = name
        .unwrap_or(event_id)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let headers: std::collections::BTreeMap<String, String> = record["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned())))
        .collect();
    let is_form = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("content-type") && v.starts_with("application/x-www-form-urlencoded")
    });
    // What the kind answers: its formats say whether bodies are batches.
    let kind = super::sign::load_kind(&loaded.providers_dir, &kind_name)?;
    let is_batch = kind.formats.iter().any(|f| f.batch.is_some());
    let at = crate::envelope::format_millis(
        chrono::DateTime::from_timestamp(signed_at, 0).unwrap_or_default(),
    );
    let envelopes: Vec<Value> = shown["envelopes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut envelope = e["envelope"].clone();
            if let Some(map) = envelope.as_object_mut() {
                map.remove("id");
                map.insert("received_at".into(), Value::String(at.clone()));
            }
            envelope
        })
        .collect();
    let expected = if record["status"] == "unprocessable" {
        serde_json::json!({
            "status": 422,
            "response": {"error": {
                "code": "unprocessable_event",
                "message": format!(
                    "the event cannot be normalised: {}",
                    record["error"].as_str().unwrap_or_default()
                ),
            }},
            "envelopes": [],
        })
    } else {
        let ids: Vec<Value> = envelopes.iter().map(|e| e["event_id"].clone()).collect();
        let mut response = serde_json::json!({
            "status": "accepted",
            "id": "<gateway id>",
            "event_id": ids.first().cloned().unwrap_or(Value::Null),
        });
        if is_batch {
            response["events"] = ids
                .iter()
                .map(|id| serde_json::json!({"event_id": id, "id": "<gateway id>", "status": "accepted"}))
                .collect();
        }
        serde_json::json!({"status": 200, "response": response, "envelopes": envelopes})
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let instance = dir.join(INSTANCE_FILE);
    if !instance.exists() {
        std::fs::write(
            &instance,
            format!(
                "# Exported by `hookgate events export` from instance `{provider}`. hookgate never \
                 writes a secret:\n# add the instance's secrets (or basic_auth) here, or pass \
                 --secret to `hookgate replay`.\nsigned_at = {signed_at}\n\n[instance]\nkind = \
                 \"{kind_name}\"\nsecrets = []\n"
            ),
        )?;
    }
    let body_path = dir.join(format!("{case}.{}", if is_form { "form" } else { "json" }));
    std::fs::write(&body_path, &body)?;
    std::fs::write(
        dir.join(format!("{case}{HEADERS_SUFFIX}")),
        serde_json::to_string_pretty(&headers)? + "\n",
    )?;
    std::fs::write(
        dir.join(format!("{case}{EXPECTED_SUFFIX}")),
        serde_json::to_string_pretty(&expected)? + "\n",
    )?;
    Ok(format!(
        "wrote {} and its {HEADERS_SUFFIX} and {EXPECTED_SUFFIX} files",
        body_path.display()
    ))
}
