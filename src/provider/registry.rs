//! Provider instances ready to serve: each `[providers.<name>]` joined with its compiled
//! [`Kind`], its secrets, allowlist, limiter and Basic Auth. Built once at startup; checks what
//! needs both the configuration and the definitions (unknown kinds, missing secrets, Basic Auth
//! required by `basic` kinds).

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use super::kind::{self, Kind};
use crate::config::{ConfigError, DeliveryMode, LoadedSettings};
use crate::pipeline::access::{BasicAuth, ClientLimiter};
use crate::pipeline::signature::Key;
use crate::secret::Secret;

/// The signing secret of the committed demo instance. Anyone can read it in the repository, so
/// a gateway using it logs a warning at startup.
pub const DEMO_SECRET: &str = "hookgate-demo-secret-do-not-use-in-production";

/// One served provider instance, `/webhooks/<name>`.
#[derive(Debug)]
pub struct Instance {
    pub name: String,
    pub kind: Arc<Kind>,
    /// The configured secrets, as written (handshakes and `replay` sign with them).
    pub secrets: Vec<Secret>,
    /// The secrets compiled for the kind's scheme (decoded keys, parsed public keys).
    pub keys: Vec<Key>,
    pub public_url: Option<String>,
    /// What a GET handshake's token must equal (Meta's `hub.verify_token`).
    pub verify_token: Option<Secret>,
    pub tolerance_secs: u64,
    /// The instance sets `tolerance_secs` itself: a delivery without a timestamp is refused.
    pub require_timestamp: bool,
    pub allow_ips: Vec<IpNet>,
    pub limiter: Option<ClientLimiter>,
    /// Status of a rate-limit refusal (`rate_limit.status`: 429 or 503).
    pub rate_limit_status: actix_web::http::StatusCode,
    pub basic_auth: Option<BasicAuth>,
    pub body_limit: usize,
    /// Whether sinks run before the answer.
    pub mode: DeliveryMode,
    /// Sync mode: the sink whose answer is the provider's answer.
    pub reply_from: Option<String>,
    /// Most events one delivery may carry (`batch_max_events`).
    pub batch_max_events: usize,
}

impl Instance {
    pub fn uses_demo_secret(&self) -> bool {
        self.secrets
            .iter()
            .any(|s| s.expose() == DEMO_SECRET.as_bytes())
    }
}

/// All instances by name.
#[derive(Debug, Default)]
pub struct Registry {
    instances: HashMap<String, Arc<Instance>>,
}

impl Registry {
    pub fn build(loaded: &LoadedSettings) -> Result<Self, ConfigError> {
        let kinds = kind::load_dir(&loaded.providers_dir)?;
        let file = loaded.file_name();
        let settings = &loaded.settings;
        let mut instances = HashMap::new();
        for (name, cfg) in &settings.providers {
            let key = |field: &str| Some(format!("providers.{name}.{field}"));
            let kind_name = cfg.kind.clone().unwrap_or_else(|| name.clone());
            let kind = kinds.get(&kind_name).cloned().ok_or_else(|| {
                let mut known: Vec<_> = kinds.keys().map(String::as_str).collect();
                known.sort_unstable();
                ConfigError::new(
                    &file,
                    key("kind"),
                    format!(
                        "unknown provider kind `{kind_name}` (no {}/{kind_name}.toml; known: {})",
                        loaded.providers_dir.display(),
                        known.join(", ")
                    ),
                )
            })?;
            let secrets: Vec<Secret> = cfg
                .secrets
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect();
            // A kind whose provider sends the signing secret in a first, unsigned delivery
            // (Notion) starts without one: that delivery is stored for the operator to read.
            if kind.scheme.needs_secrets() && secrets.is_empty() && !kind.delivers_its_secret() {
                return Err(ConfigError::new(
                    &file,
                    key("secrets"),
                    format!("kind `{kind_name}` verifies signatures, so at least one non-empty secret is required"),
                ));
            }
            if !kind.scheme.needs_secrets() && !cfg.secrets.is_empty() {
                return Err(ConfigError::new(
                    &file,
                    key("secrets"),
                    format!("kind `{kind_name}` is authenticated by Basic Auth only and checks no signature, so `secrets` would be ignored; remove it and set basic_auth"),
                ));
            }
            if cfg.tolerance_secs.is_some() && !kind.scheme.has_timestamp() {
                return Err(ConfigError::new(
                    &file,
                    key("tolerance_secs"),
                    format!("kind `{kind_name}` carries no signed timestamp, so `tolerance_secs` would be ignored; remove it"),
                ));
            }
            if kind.scheme.needs_basic_auth() && cfg.basic_auth.is_none() {
                return Err(ConfigError::new(
                    &file,
                    key("basic_auth"),
                    format!("kind `{kind_name}` is authenticated by Basic Auth only, so basic_auth is required"),
                ));
            }
            if kind.scheme.needs_url() && cfg.public_url.is_none() {
                return Err(ConfigError::new(
                    &file,
                    key("public_url"),
                    format!("kind `{kind_name}` signs the URL it calls, so public_url is required"),
                ));
            }
            let verify_token = cfg.verify_token.clone().filter(|t| !t.is_empty());
            if kind.needs_verify_token() && verify_token.is_none() {
                return Err(ConfigError::new(
                    &file,
                    key("verify_token"),
                    format!("kind `{kind_name}` answers a subscription handshake that checks a verify token, so a non-empty verify_token is required"),
                ));
            }
            if !kind.needs_verify_token() && cfg.verify_token.is_some() {
                return Err(ConfigError::new(
                    &file,
                    key("verify_token"),
                    format!("kind `{kind_name}` has no handshake that checks a verify token, so `verify_token` would be ignored; remove it"),
                ));
            }
            let keys = kind.scheme.compile_keys(&secrets).map_err(|m| {
                ConfigError::new(
                    &file,
                    key("secrets"),
                    format!("for kind `{kind_name}`: {m}"),
                )
            })?;
            let body_limit = cfg
                .body_limit_bytes
                .unwrap_or(settings.server.body_limit_bytes);
            instances.insert(
                name.clone(),
                Arc::new(Instance {
                    name: name.clone(),
                    tolerance_secs: cfg
                        .tolerance_secs
                        .unwrap_or_else(|| kind.scheme.default_tolerance_secs()),
                    require_timestamp: cfg.tolerance_secs.is_some(),
                    kind,
                    secrets,
                    keys,
                    public_url: cfg.public_url.as_ref().map(|u| u.as_str().to_owned()),
                    verify_token,
                    allow_ips: cfg.allow_ips.clone(),
                    limiter: cfg.rate_limit.map(ClientLimiter::new),
                    rate_limit_status: cfg
                        .rate_limit
                        .and_then(|r| actix_web::http::StatusCode::from_u16(r.status).ok())
                        .unwrap_or(actix_web::http::StatusCode::TOO_MANY_REQUESTS),
                    basic_auth: cfg.basic_auth.as_ref().map(|list| BasicAuth::new(&list.0)),
                    body_limit: usize::try_from(body_limit).unwrap_or(usize::MAX),
                    mode: cfg.mode,
                    reply_from: cfg.reply_from.clone(),
                    batch_max_events: cfg.batch_max_events,
                }),
            );
        }
        Ok(Self { instances })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Instance>> {
        self.instances.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.instances.values()
    }

    /// The largest body any instance accepts.
    pub fn max_body_limit(&self) -> usize {
        self.instances
            .values()
            .map(|i| i.body_limit)
            .max()
            .unwrap_or(0)
    }
}
