//! `config.toml`: the typed settings, how they are layered and what makes them invalid.
//!
//! Settings come from one TOML file (default `./config.toml`) overridden by environment variables
//! named `HOOKGATE__SECTION__KEY` (for example `HOOKGATE__SERVER__BIND=0.0.0.0:8080`). Every string
//! value goes through `${VAR}` expansion ([`crate::secret::Expanded`]). Unknown keys, unset
//! variables, bad CIDRs and impossible limits are rejected here with the file and the key at
//! fault; whatever needs the provider definitions (unknown kinds, missing secrets) is checked when
//! the registry compiles ([`crate::provider::registry`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::secret::{redact_url, Expanded, Secret};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";
/// Prefix of environment overrides: `HOOKGATE__SERVER__BIND`.
pub const ENV_PREFIX: &str = "HOOKGATE";
/// Separator between the prefix and each key level in environment overrides.
pub const ENV_SEPARATOR: &str = "__";
/// Hard ceiling for any body limit: larger bodies are not webhooks.
pub const MAX_BODY_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// A configuration error, always naming the file and, when known, the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}{message}", key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: impl Into<String>, key: Option<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            key,
            message: message.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP listener and request limits.
    #[serde(default)]
    pub server: ServerSettings,
    /// Where and how events are stored.
    #[serde(default)]
    pub storage: StorageSettings,
    /// Log format and level.
    #[serde(default)]
    pub log: LogSettings,
    /// Directory holding `<kind>.toml` provider definitions; default `providers/` next to the
    /// configuration file.
    pub providers_dir: Option<Expanded>,
    /// Provider instances, each served at `/webhooks/<name>`.
    #[serde(default)]
    pub providers: BTreeMap<String, InstanceSettings>,
    /// Sync handlers that receive every matching envelope after it is stored.
    #[serde(default)]
    pub sinks: Vec<SinkSettings>,
    /// The operator API.
    #[serde(default)]
    pub admin: AdminSettings,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on, `host:port`. Port 0 picks a free port.
    pub bind: Expanded,
    /// Largest accepted request body, enforced while reading.
    pub body_limit_bytes: u64,
    /// CIDRs of reverse proxies whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Which header the trusted proxies set: `x-forwarded-for` (default) or `forwarded`. Only
    /// that one is believed; a request carrying both that name different clients is 403.
    pub forwarded_header: ForwardedHeader,
    /// Worker threads; default: one per core.
    pub workers: Option<usize>,
    /// Largest total size of the request headers (names + values); more is 431.
    pub max_header_bytes: usize,
    /// Time a client has to send the request head (line and headers).
    pub header_read_timeout_ms: u64,
    /// Time a client has to send the whole body once the head is read.
    pub body_read_timeout_ms: u64,
    /// Idle keep-alive time of a connection between requests.
    pub keep_alive_secs: u64,
    /// Open connections per worker before new ones wait.
    pub max_connections_per_worker: usize,
    /// Time to finish in-flight requests on shutdown.
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: Expanded::from("127.0.0.1:8080"),
            body_limit_bytes: 1024 * 1024,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            workers: None,
            max_header_bytes: 16 * 1024,
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 10_000,
            keep_alive_secs: 30,
            max_connections_per_worker: 25_000,
            shutdown_timeout_secs: 10,
        }
    }
}

/// The header a trusted proxy writes the client address into (`server.forwarded_header`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, ...`
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`
    Forwarded,
}

/// Which store the gateway runs on (`storage.backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    /// The embedded commit log and sled index under `storage.path`: one node, no server.
    #[default]
    Embedded,
    /// A PostgreSQL database at `storage.url`, shared by any number of replicas.
    Postgres,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// `embedded` (default) or `postgres`.
    pub backend: StorageBackend,
    /// Data directory of the embedded store (created if missing): `log/`, the commit log, and
    /// `index/`, the sled index. Not used by `postgres`.
    pub path: Expanded,
    /// `postgres://user:pass@host:port/db` (TLS from `sslmode`); a secret: never logged.
    pub url: Option<Secret>,
    /// Connections each replica keeps to PostgreSQL.
    pub pool_size: u32,
    /// Longest wait for a PostgreSQL connection (connecting, or a free one from the pool).
    pub connect_timeout_ms: u64,
    /// How long event IDs are remembered for duplicate detection.
    pub dedup_ttl_secs: u64,
    /// How long stored deliveries, envelopes and attempt records are kept once every delivery
    /// task is finished (delivered or dead); 0 keeps them forever.
    pub retention_secs: u64,
    /// Pending writes before new deliveries are refused with 503.
    pub queue_capacity: usize,
    /// Bytes the pending writes may hold (counted until the index has applied them, so this
    /// also bounds the in-memory claims not yet in sled) before new deliveries are refused
    /// with 503.
    pub queue_max_bytes: u64,
    /// Most writes committed by one fsync.
    pub max_batch: usize,
    /// Longest wait for storage (a write to become durable, a read) before the request is
    /// answered 503 `storage_unavailable`: a stalled disk never hangs a request.
    pub write_timeout_ms: u64,
    /// How long a delivery task handed to a worker stays reserved for it before another
    /// worker may take it again.
    pub lease_secs: u64,
    /// sled page-cache budget in bytes (the index).
    pub cache_capacity_bytes: u64,
    /// Size of one commit-log segment file, preallocated when it is created.
    pub segment_bytes: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Embedded,
            path: Expanded::from("./data"),
            url: None,
            pool_size: 16,
            connect_timeout_ms: 2_000,
            dedup_ttl_secs: 7 * 24 * 3600,
            retention_secs: 30 * 24 * 3600,
            queue_capacity: 8192,
            queue_max_bytes: 64 * 1024 * 1024,
            max_batch: 1024,
            write_timeout_ms: 5_000,
            lease_secs: 30,
            cache_capacity_bytes: 64 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `hookgate=debug`; `RUST_LOG` wins when set.
    pub level: Expanded,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: Expanded::from("info"),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[providers.<name>]`: one instance of a provider kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    /// Provider definition (`providers/<kind>.toml`); defaults to the instance name.
    pub kind: Option<String>,
    /// Signing secrets; any one may match, so old and new can overlap during rotation. Empty
    /// strings are ignored, which makes `${OLD_SECRET:-}` an optional slot.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Accepted clock skew of signed timestamps, past and future; default from the kind.
    pub tolerance_secs: Option<u64>,
    /// CIDRs allowed to deliver; empty means everyone.
    #[serde(default)]
    pub allow_ips: Vec<IpNet>,
    /// Per client IP limit for this instance.
    pub rate_limit: Option<RateLimitSettings>,
    /// HTTP Basic Auth credentials the provider sends: one `{ username, password }`, or a
    /// list of them, any of which is accepted (rotation, like `secrets`).
    pub basic_auth: Option<BasicAuthList>,
    /// Body limit for this instance; default `server.body_limit_bytes`.
    pub body_limit_bytes: Option<u64>,
    /// The public URL the provider calls (`https://hooks.example.com/webhooks/twilio`), for
    /// schemes that sign it (Twilio, Square); the request's query string is appended.
    pub public_url: Option<Expanded>,
    /// The token a provider's GET subscription handshake echoes (Meta's `hub.verify_token`),
    /// for kinds whose handshake checks one; a secret, never logged.
    pub verify_token: Option<Secret>,
    /// `async` (default) or `sync`: deliver to the sinks before answering.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// Sync mode: the body this `http` sink answers with becomes the answer to the provider
    /// (Discord interactions, Slack slash commands).
    pub reply_from: Option<String>,
    /// Most events one delivery may carry (the elements of a batch); a larger batch is
    /// refused with 413 `too_many_events`. Each event costs a claim, an envelope and a task per
    /// sink, so this bounds what one request can make the gateway do.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
}

/// Default `batch_max_events`.
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 1000;

fn default_batch_max_events() -> usize {
    DEFAULT_BATCH_MAX_EVENTS
}

/// `rate_limit = { per_second = 50, burst = 100 }`
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Sustained requests per second (may be fractional, e.g. 0.5).
    pub per_second: f64,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
    /// Status of the refusal: 429 (default) or 503, for senders that drop a delivery on any
    /// 4xx instead of retrying (Pipedrive).
    #[serde(default = "default_rate_limit_status")]
    pub status: u16,
}

fn default_rate_limit_status() -> u16 {
    429
}

/// `basic_auth = { username = "...", password = "..." }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSettings {
    pub username: Expanded,
    pub password: Secret,
}

/// `basic_auth = { ... }` or `basic_auth = [{ ... }, { ... }]`: every pair is accepted.
#[derive(Debug, Clone)]
pub struct BasicAuthList(pub Vec<BasicAuthSettings>);

impl BasicAuthList {
    /// The pair a sender signing for this instance uses (`hookgate replay`): the first.
    pub fn first(&self) -> Option<&BasicAuthSettings> {
        self.0.first()
    }
}

impl<'de> Deserialize<'de> for BasicAuthList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(BasicAuthSettings),
            Many(Vec<BasicAuthSettings>),
        }
        match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected { username = \"...\", password = \"...\" } or a list of them",
            )
        })? {
            OneOrMany::One(one) => Ok(Self(vec![one])),
            OneOrMany::Many(many) => Ok(Self(many)),
        }
    }
}

/// `[[sinks]]`: a sync handler, tagged by `kind`. Every envelope goes to every sink whose
/// `events` match.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkSettings {
    /// POSTs the envelope as JSON, signed with Standard Webhooks headers.
    Http {
        #[serde(flatten)]
        common: SinkCommon,
        url: Expanded,
        /// `whsec_...`: signs `webhook-signature`; without it only id and timestamp are sent.
        secret: Option<Secret>,
        /// Per-attempt timeout.
        #[serde(default = "default_http_timeout_ms")]
        timeout_ms: u64,
        /// Extra request headers.
        #[serde(default)]
        headers: BTreeMap<String, Expanded>,
    },
    /// Runs a program with the envelope as JSON on stdin; exit 0 means delivered.
    Command {
        #[serde(flatten)]
        common: SinkCommon,
        command: Vec<Expanded>,
        #[serde(default = "default_command_timeout_ms")]
        timeout_ms: u64,
    },
    /// Appends one envelope per line (JSON Lines).
    File {
        #[serde(flatten)]
        common: SinkCommon,
        path: Expanded,
    },
}

/// What every sink has.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkCommon {
    /// Unique sink name, used in logs, metrics and the event browser.
    pub name: String,
    /// `provider:object.action` globs; a bare instance name means all of its events, a glob
    /// without a colon (`post.*`) matches `object.action` of every instance; empty means every
    /// envelope.
    #[serde(default)]
    pub events: Vec<String>,
    /// Conditions on envelope fields, all of which must hold:
    /// `where = { "current.status" = "published", "current.channel" = "presence-*" }`.
    #[serde(default, rename = "where")]
    pub conditions: BTreeMap<String, WhereValue>,
    /// How failed deliveries are retried before they become dead letters.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Deliveries in flight at once (different objects; one object is always in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl SinkSettings {
    pub fn common(&self) -> &SinkCommon {
        match self {
            SinkSettings::Http { common, .. }
            | SinkSettings::Command { common, .. }
            | SinkSettings::File { common, .. } => common,
        }
    }

    fn common_mut(&mut self) -> &mut SinkCommon {
        match self {
            SinkSettings::Http { common, .. }
            | SinkSettings::Command { common, .. }
            | SinkSettings::File { common, .. } => common,
        }
    }
}

fn default_concurrency() -> usize {
    8
}

fn default_http_timeout_ms() -> u64 {
    10_000
}

fn default_command_timeout_ms() -> u64 {
    30_000
}

/// A `where` value: a string is a glob (plain equality without `*`, `?`, `[`), a number or
/// boolean must be equal, a list is any of its values.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum WhereValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    AnyOf(Vec<WhereValue>),
}

/// A delay written `30s`, `5m`, `2h` or `1d` (`retry.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay(pub std::time::Duration);

impl std::str::FromStr for Delay {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a delay such as 30s, 5m, 2h or 1d");
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let secs = match unit {
            "ms" => return Ok(Delay(std::time::Duration::from_millis(n))).and_then(positive),
            "s" => n,
            "m" => n.saturating_mul(60),
            "h" => n.saturating_mul(3600),
            "d" => n.saturating_mul(86_400),
            _ => return Err(bad()),
        };
        positive(Delay(std::time::Duration::from_secs(secs)))
    }
}

fn positive(delay: Delay) -> Result<Delay, String> {
    if delay.0.is_zero() {
        return Err("a delay must be longer than 0".into());
    }
    Ok(delay)
}

/// `retry = { max_attempts = 8, initial_backoff_ms = 1000, max_backoff_ms = 3600000 }`, or an
/// explicit `schedule = ["1m", "5m", "30m"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Delays before retry 1, 2, ... instead of exponential backoff; the delivery becomes a
    /// dead letter when they are used up (or after `max_attempts`, whichever comes first).
    /// Checked at start (`check` names the entry); see [`Delay`].
    pub schedule: Vec<String>,
    /// Attempts before the delivery becomes a dead letter.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time, with jitter.
    pub initial_backoff_ms: u64,
    /// Longest delay between attempts (also caps `Retry-After`).
    pub max_backoff_ms: u64,
    /// A delivery older than this is dead-lettered after its next failure.
    pub max_age_secs: u64,
}

impl RetrySettings {
    /// The scheduled delay before retry `n` (1-based), if the schedule has one.
    pub fn scheduled(&self, n: u32) -> Option<std::time::Duration> {
        let text = self
            .schedule
            .get(usize::try_from(n).ok()?.checked_sub(1)?)?;
        text.parse::<Delay>().ok().map(|d| d.0)
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            schedule: Vec::new(),
            max_attempts: 8,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 3_600_000,
            max_age_secs: 3 * 24 * 3600,
        }
    }
}

/// `[admin]`: the operator API under `/admin`, disabled without a token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer token for `/admin/...`; unset or empty disables the admin API.
    pub token: Option<Secret>,
    /// `/metrics` answers only requests with the admin bearer token (needs `token`).
    #[serde(default)]
    pub protect_metrics: bool,
}

/// How an instance hands envelopes to the sinks.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Store, acknowledge, then deliver in the background with retries.
    #[default]
    Async,
    /// Store, deliver to the sinks, then answer: 200 when all delivered, 503 otherwise.
    Sync,
}

/// Settings plus where they came from, so relative paths and errors refer to the right file.
#[derive(Debug, Clone)]
pub struct LoadedSettings {
    pub settings: Settings,
    /// The file that was read.
    pub file: PathBuf,
    /// Provider definitions directory, resolved.
    pub providers_dir: PathBuf,
    /// `server.bind`, parsed.
    pub bind: SocketAddr,
}

impl LoadedSettings {
    pub fn file_name(&self) -> String {
        self.file.display().to_string()
    }

    /// `http://host:port` of this gateway as a local client reaches it (a wildcard bind
    /// address becomes loopback).
    pub fn local_url(&self) -> String {
        let mut addr = self.bind;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }
}

/// Reads `path`, applies environment overrides, expands variables and validates.
pub fn load(path: &Path) -> Result<LoadedSettings, ConfigError> {
    let file_name = path.display().to_string();
    if !path.is_file() {
        return Err(ConfigError::new(
            &file_name,
            None,
            "configuration file not found (pass --config PATH)",
        ));
    }
    check_instance_names_as_written(path, &file_name)?;
    let layered = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR),
        )
        .build()
        .map_err(|e| ConfigError::new(&file_name, None, e.to_string()))?;
    let mut settings: Settings = serde_path_to_error::deserialize(layered).map_err(|e| {
        let mut key = e.path().to_string();
        let mut message = e.into_inner().to_string();
        // The `config` crate's own words for a bad value ("enum DeliveryMode does not have
        // variant constructor fast") lose serde's list of choices; the file read by `toml`
        // alone gives serde's message for the same mistake when it is in the file.
        if let Some((file_key, file_message)) = file_error(path) {
            if file_key == key || key == "." {
                key = file_key;
                message = file_message;
            }
        }
        // serde names the table holding an unknown key; the key itself is what is wrong.
        if let Some(field) = unknown_field(&message) {
            key = if key == "." {
                field.to_owned()
            } else {
                format!("{key}.{field}")
            };
        }
        blame_environment(ConfigError::new(
            &file_name,
            (key != ".").then_some(key),
            message,
        ))
    })?;
    restore_where_keys(path, &file_name, &mut settings)?;
    from_settings(settings, path).map_err(blame_environment)
}

/// The error deserialising the file alone (no environment) gives, with its key.
fn file_error(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let deserializer = toml::Deserializer::new(&text);
    match serde_path_to_error::deserialize::<_, Settings>(deserializer) {
        Ok(_) => None,
        Err(e) => {
            let key = e.path().to_string();
            let inner = e.into_inner();
            Some((key, inner.message().to_owned()))
        }
    }
}

/// `unknown field `x`, expected ...` → `x`.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")?
        .split('`')
        .next()
        .filter(|f| !f.is_empty())
}

/// The environment variable that would set `key` (`server.bind` → `HOOKGATE__SERVER__BIND`).
pub fn env_name(key: &str) -> String {
    let path: String = key
        .split(['.', '['])
        .map(|part| part.trim_end_matches(']').to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(ENV_SEPARATOR);
    format!("{ENV_PREFIX}{ENV_SEPARATOR}{path}")
}

/// An error about a key that an environment variable overrides is that variable's fault, not
/// the file's: say so.
fn blame_environment(mut error: ConfigError) -> ConfigError {
    let Some(key) = &error.key else {
        return error;
    };
    // The key itself, or a table above it (a whole `HOOKGATE__SERVER__...` override).
    let mut candidate = key.clone();
    loop {
        let name = env_name(&candidate);
        if std::env::var_os(&name).is_some() {
            error.file = format!("environment variable {name} (overrides {})", error.file);
            return error;
        }
        match candidate.rsplit_once('.') {
            Some((parent, _)) => candidate = parent.to_owned(),
            None => return error,
        }
    }
}

/// The `config` crate lowercases keys; `where` names JSON fields, whose case matters
/// (`current.firstName`), so its keys are taken as written in the file.
fn restore_where_keys(
    path: &Path,
    file_name: &str,
    settings: &mut Settings,
) -> Result<(), ConfigError> {
    let table = read_table(path, file_name)?;
    let Some(toml::Value::Array(sinks)) = table.get("sinks") else {
        return Ok(());
    };
    for (sink, written) in settings.sinks.iter_mut().zip(sinks) {
        let Some(toml::Value::Table(conditions)) = written.get("where") else {
            continue;
        };
        let common = sink.common_mut();
        let mut restored = BTreeMap::new();
        for (key, value) in std::mem::take(&mut common.conditions) {
            let original = conditions
                .keys()
                .find(|k| k.to_lowercase() == key)
                .cloned()
                .unwrap_or(key);
            restored.insert(original, value);
        }
        common.conditions = restored;
    }
    Ok(())
}

/// The file as a TOML table; a syntax error names its line and column.
fn read_table(path: &Path, file_name: &str) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(file_name, None, format!("cannot read: {e}")))?;
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            format!("line {line}, column {column}: ")
        });
        ConfigError::new(
            file_name,
            None,
            format!(
                "TOML syntax error at {}{}",
                at.unwrap_or_default(),
                e.message()
            ),
        )
    })
}

/// The `config` crate lowercases keys, which would silently move `[providers.Stripe]` to
/// `/webhooks/stripe`; instance names are therefore checked as written in the file.
fn check_instance_names_as_written(path: &Path, file_name: &str) -> Result<(), ConfigError> {
    let table = read_table(path, file_name)?;
    if let Some(toml::Value::Table(providers)) = table.get("providers") {
        for name in providers.keys() {
            if !is_valid_instance_name(name) {
                return Err(ConfigError::new(
                    file_name,
                    Some(format!("providers.{name}")),
                    INSTANCE_NAME_RULE,
                ));
            }
        }
    }
    Ok(())
}

/// Validates already-deserialised settings (used by tests that build settings in code).
pub fn from_settings(settings: Settings, file: &Path) -> Result<LoadedSettings, ConfigError> {
    let file_name = file.display().to_string();
    let base = file.parent().unwrap_or(Path::new("."));
    let bind = validate(&settings, &file_name)?;
    let providers_dir = match &settings.providers_dir {
        Some(dir) => base.join(dir.as_str()),
        None => base.join("providers"),
    };
    Ok(LoadedSettings {
        settings,
        file: file.to_path_buf(),
        providers_dir,
        bind,
    })
}

/// Checks what the settings alone can tell; returns the parsed listen address.
fn validate(settings: &Settings, file: &str) -> Result<SocketAddr, ConfigError> {
    let err = |key: &str, message: String| ConfigError::new(file, Some(key.to_owned()), message);
    let server = &settings.server;
    let bind = server.bind.as_str().parse::<SocketAddr>().map_err(|e| {
        err(
            "server.bind",
            format!("`{}` is not host:port ({e})", server.bind),
        )
    })?;
    check_body_limit(server.body_limit_bytes).map_err(|m| err("server.body_limit_bytes", m))?;
    for (key, value) in [
        (
            "server.header_read_timeout_ms",
            server.header_read_timeout_ms,
        ),
        ("server.body_read_timeout_ms", server.body_read_timeout_ms),
    ] {
        if value == 0 {
            return Err(err(key, "must be greater than 0".into()));
        }
    }
    if server.max_header_bytes < 1024 {
        return Err(err(
            "server.max_header_bytes",
            "must be at least 1024".into(),
        ));
    }
    if server.workers == Some(0) {
        return Err(err("server.workers", "must be greater than 0".into()));
    }
    let storage = &settings.storage;
    match storage.backend {
        StorageBackend::Embedded => {
            if storage.path.as_str().is_empty() {
                return Err(err("storage.path", "must not be empty".into()));
            }
            if storage.url.is_some() {
                return Err(err(
                    "storage.url",
                    "is used only with `backend = \"postgres\"`; the embedded store keeps its \
                     data under `storage.path`"
                        .into(),
                ));
            }
        }
        StorageBackend::Postgres => {
            let url = storage.url.as_ref().map(Secret::expose_str).unwrap_or("");
            if url.is_empty() {
                return Err(err(
                    "storage.url",
                    "is required with `backend = \"postgres\"` \
                     (postgres://user:pass@host:port/db)"
                        .into(),
                ));
            }
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(err(
                    "storage.url",
                    "must start with postgres:// or postgresql://".into(),
                ));
            }
            if storage.pool_size == 0 {
                return Err(err("storage.pool_size", "must be greater than 0".into()));
            }
            if storage.connect_timeout_ms == 0 {
                return Err(err(
                    "storage.connect_timeout_ms",
                    "must be greater than 0".into(),
                ));
            }
        }
    }
    for (key, value) in [
        ("storage.dedup_ttl_secs", storage.dedup_ttl_secs),
        ("storage.queue_max_bytes", storage.queue_max_bytes),
        ("storage.write_timeout_ms", storage.write_timeout_ms),
        ("storage.lease_secs", storage.lease_secs),
    ] {
        if value == 0 {
            return Err(err(key, "must be greater than 0".into()));
        }
    }
    if storage.queue_capacity == 0 || storage.max_batch == 0 {
        return Err(err(
            "storage.queue_capacity",
            "queue_capacity and max_batch must be greater than 0".into(),
        ));
    }
    for (name, instance) in &settings.providers {
        let key = |field: &str| format!("providers.{name}.{field}");
        if !is_valid_instance_name(name) {
            return Err(err(&format!("providers.{name}"), INSTANCE_NAME_RULE.into()));
        }
        if let Some(limit) = instance.body_limit_bytes {
            check_body_limit(limit).map_err(|m| err(&key("body_limit_bytes"), m))?;
        }
        if instance.batch_max_events == 0 {
            return Err(err(&key("batch_max_events"), "must be at least 1".into()));
        }
        if let Some(rate) = instance.rate_limit {
            if !(rate.per_second.is_finite() && rate.per_second > 0.0) {
                return Err(err(
                    &key("rate_limit.per_second"),
                    "must be a positive number".into(),
                ));
            }
            if rate.burst == 0 {
                return Err(err(&key("rate_limit.burst"), "must be at least 1".into()));
            }
            if !matches!(rate.status, 429 | 503) {
                return Err(err(
                    &key("rate_limit.status"),
                    format!("must be 429 or 503, got {}", rate.status),
                ));
            }
        }
        if let Some(sink) = &instance.reply_from {
            if instance.mode != DeliveryMode::Sync {
                return Err(err(
                    &key("reply_from"),
                    "needs mode = \"sync\": only a sink called before the answer can give it"
                        .into(),
                ));
            }
            let is_http = settings
                .sinks
                .iter()
                .any(|s| matches!(s, SinkSettings::Http { .. }) && s.common().name == *sink);
            if !is_http {
                return Err(err(
                    &key("reply_from"),
                    format!("names no `http` sink `{sink}`"),
                ));
            }
        }
        if let Some(url) = &instance.public_url {
            let text = url.as_str();
            if !(text.starts_with("https://") || text.starts_with("http://")) || text.contains('?')
            {
                return Err(err(
                    &key("public_url"),
                    "must be an http(s) URL without a query string".into(),
                ));
            }
        }
        if let Some(list) = &instance.basic_auth {
            if list.0.is_empty() {
                return Err(err(
                    &key("basic_auth"),
                    "lists no credentials; remove it or add { username, password }".into(),
                ));
            }
            for (j, auth) in list.0.iter().enumerate() {
                let field = |name: &str| match list.0.len() {
                    1 => key(&format!("basic_auth.{name}")),
                    _ => key(&format!("basic_auth[{j}].{name}")),
                };
                if auth.username.as_str().is_empty() || auth.username.as_str().contains(':') {
                    return Err(err(
                        &field("username"),
                        "must be non-empty and contain no `:`".into(),
                    ));
                }
                if auth.password.is_empty() {
                    return Err(err(&field("password"), "must not be empty".into()));
                }
            }
        }
    }
    if settings.admin.protect_metrics && settings.admin.token.as_ref().is_none_or(Secret::is_empty)
    {
        return Err(err(
            "admin.protect_metrics",
            "needs admin.token: /metrics would answer nobody".into(),
        ));
    }
    let mut sink_names = std::collections::HashSet::new();
    for (i, sink_settings) in settings.sinks.iter().enumerate() {
        let key = |field: &str| format!("sinks[{i}].{field}");
        let sink = sink_settings.common();
        let valid_name = !sink.name.is_empty()
            && sink
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name || !sink_names.insert(sink.name.clone()) {
            return Err(err(
                &key("name"),
                format!(
                    "sink name `{}` is empty, used twice, or not letters, digits, `-` and `_`",
                    sink.name
                ),
            ));
        }
        for (j, delay) in sink.retry.schedule.iter().enumerate() {
            delay
                .parse::<Delay>()
                .map_err(|m| err(&key(&format!("retry.schedule[{j}]")), m))?;
        }
        if sink.concurrency == 0 {
            return Err(err(&key("concurrency"), "must be at least 1".into()));
        }
        let retry = &sink.retry;
        if retry.max_attempts == 0
            || retry.initial_backoff_ms == 0
            || retry.max_backoff_ms < retry.initial_backoff_ms
        {
            return Err(err(
                &key("retry"),
                "max_attempts and initial_backoff_ms must be positive, and max_backoff_ms at least initial_backoff_ms".into(),
            ));
        }
        match sink_settings {
            SinkSettings::Http {
                url, timeout_ms, ..
            } => {
                let text = url.as_str();
                if !(text.starts_with("http://") || text.starts_with("https://")) {
                    return Err(err(
                        &key("url"),
                        format!("`{}` is not an http(s) URL", redact_url(text)),
                    ));
                }
                if *timeout_ms == 0 {
                    return Err(err(&key("timeout_ms"), "must be positive".into()));
                }
            }
            SinkSettings::Command {
                command,
                timeout_ms,
                ..
            } => {
                if command.is_empty() || command[0].as_str().is_empty() {
                    return Err(err(&key("command"), "name the program to run".into()));
                }
                if *timeout_ms == 0 {
                    return Err(err(&key("timeout_ms"), "must be positive".into()));
                }
            }
            SinkSettings::File { path, .. } => {
                if path.as_str().is_empty() {
                    return Err(err(&key("path"), "must not be empty".into()));
                }
            }
        }
    }
    Ok(bind)
}

fn check_body_limit(limit: u64) -> Result<(), String> {
    if limit == 0 || limit > MAX_BODY_LIMIT_BYTES {
        return Err(format!(
            "must be between 1 and {MAX_BODY_LIMIT_BYTES} bytes, got {limit}"
        ));
    }
    Ok(())
}

const INSTANCE_NAME_RULE: &str =
    "instance names are 1-64 lowercase letters, digits, `-` and `_` (they appear in URLs)";

pub fn is_valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
