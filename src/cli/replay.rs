//! `hookgate replay`: sends fixture files to a running gateway (or any URL), each freshly signed
//! with its provider's scheme, the configured secret and the current time. One line per fixture;
//! the exit status is non-zero if any delivery was not acknowledged with a 2xx.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use chrono::Utc;
use clap::Args;
use serde_json::Value;

use super::sign::{load_kind, resign};
use crate::config::{self, InstanceSettings, LoadedSettings};
use crate::fixture::{self, FixtureSet};
use crate::secret::Secret;
use crate::telemetry::{escape_controls, LineStyle};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Configuration of the target gateway: instances, secrets and address.
    #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH, env = "HOOKGATE_CONFIG")]
    config: PathBuf,
    /// Send here instead: a base URL (`http://127.0.0.1:8080`, the instance path is added) or
    /// a full URL.
    #[arg(long)]
    to: Option<String>,
    /// Instance to send to (default: the one named like the kind, else the first of that kind).
    #[arg(long)]
    provider: Option<String>,
    /// Sign with this secret instead of the configured one.
    #[arg(long, env = "HOOKGATE_REPLAY_SECRET")]
    secret: Option<String>,
    /// Fixture files, kind directories, or the fixtures root.
    #[arg(required = true)]
    fixtures: Vec<PathBuf>,
}

/// Where and how one kind's fixtures are sent.
struct Target {
    url: String,
    secret: Option<Secret>,
    public_url: Option<String>,
    basic_auth: Option<(String, Secret)>,
    providers_dir: PathBuf,
}

fn instance_for<'s>(
    loaded: &'s LoadedSettings,
    kind: &str,
    wanted: Option<&str>,
) -> Option<(&'s String, &'s InstanceSettings)> {
    let providers = &loaded.settings.providers;
    if let Some(name) = wanted {
        return providers.get_key_value(name);
    }
    providers.get_key_value(kind).or_else(|| {
        providers
            .iter()
            .find(|(name, i)| i.kind.as_deref().unwrap_or(name) == kind)
    })
}

fn with_path(base: &str, instance: &str) -> String {
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    if after_scheme.trim_end_matches('/').contains('/') {
        base.to_owned()
    } else {
        format!("{}/webhooks/{instance}", base.trim_end_matches('/'))
    }
}

fn target(
    set: &FixtureSet,
    loaded: Option<&LoadedSettings>,
    args: &ReplayArgs,
) -> anyhow::Result<Target> {
    let configured = loaded.and_then(|l| instance_for(l, &set.kind, args.provider.as_deref()));
    let fixture_secret = set
        .file
        .signing_key
        .clone()
        .or_else(|| set.secrets().into_iter().next());
    match (configured, loaded) {
        (Some((name, instance)), Some(loaded)) => {
            let base = args.to.clone().unwrap_or_else(|| loaded.local_url());
            // Public-key kinds are configured with the public key: sign with the fixture's
            // private key (the instance must list the matching public key).
            let secret = match &set.file.signing_key {
                Some(key) => Some(Secret::new(key.clone())),
                None => instance.secrets.iter().find(|s| !s.is_empty()).cloned(),
            };
            Ok(Target {
                url: with_path(&base, name),
                secret,
                public_url: instance.public_url.as_ref().map(|u| u.as_str().to_owned()),
                basic_auth: instance
                    .basic_auth
                    .as_ref()
                    .and_then(|list| list.first())
                    .map(|a| (a.username.as_str().to_owned(), a.password.clone())),
                providers_dir: loaded.providers_dir.clone(),
            })
        }
        _ => {
            let Some(to) = &args.to else {
                bail!(
                    "no instance of kind `{}` in {}; pass --to URL (or --provider NAME)",
                    set.kind,
                    args.config.display()
                );
            };
            Ok(Target {
                url: with_path(to, &set.kind),
                secret: fixture_secret.map(Secret::new),
                public_url: set.instance_str("public_url").map(str::to_owned),
                basic_auth: None,
                providers_dir: loaded
                    .map(|l| l.providers_dir.clone())
                    .unwrap_or_else(|| PathBuf::from("providers")),
            })
        }
    }
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let sets = fixture::discover(&args.fixtures).map_err(|e| anyhow!(e))?;
    let loaded = if args.config.is_file() {
        Some(config::load(&args.config)?)
    } else if args.to.is_none() {
        bail!(
            "{} not found: pass --config PATH or --to URL",
            args.config.display()
        );
    } else {
        None
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let (mut sent, mut failed) = (0usize, 0usize);
    for set in &sets {
        let target = match target(set, loaded.as_ref(), &args) {
            Ok(target) => target,
            Err(e) => {
                // One kind without a target does not stop the others.
                for case in &set.cases {
                    outln!("{:<48} SKIP {e}", format!("{}/{}", set.kind, case.name));
                }
                sent += set.cases.len();
                failed += set.cases.len();
                continue;
            }
        };
        let kind = load_kind(&target.providers_dir, &set.kind)?;
        let secret = match (&args.secret, &target.secret) {
            (Some(s), _) => Secret::new(s.clone()),
            (None, Some(s)) => s.clone(),
            (None, None) if !kind.scheme.needs_secrets() => Secret::new(String::new()),
            (None, None) => bail!("no secret to sign `{}` fixtures with", set.kind),
        };
        for case in &set.cases {
            let mut headers = case.headers.clone();
            if let Some((user, password)) = &target.basic_auth {
                headers.retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.expose_str()));
                headers.push(("Authorization".into(), format!("Basic {token}")));
            }
            // What the provider never signs and the gateway only acknowledges (WooCommerce's
            // ping) goes as recorded: re-signed, it would be verified and parsed as an event.
            let resigned = if let Some(recorded) = sent_unsigned(&kind, &headers, &case.body) {
                super::sign::Resigned {
                    headers: recorded,
                    body: case.body.to_vec(),
                    url: None,
                    query: None,
                }
            } else {
                resign(
                    &kind,
                    &secret,
                    &case.body,
                    &headers,
                    target.public_url.as_deref(),
                    Utc::now(),
                )?
            };
            // A URL-signing scheme may have added a query (Twilio's bodySHA256).
            let mut url = target.url.clone();
            if let Some((_, query)) = resigned.url.as_deref().and_then(|u| u.split_once('?')) {
                url = format!("{url}?{query}");
            }
            url = super::sign::with_query(&url, resigned.query.as_deref());
            let label = format!("{}/{}", set.kind, case.name);
            sent += 1;
            let mut request = client.post(&url);
            for (name, value) in &resigned.headers {
                request = request.header(name.as_str(), value.as_bytes());
            }
            let response = request.body(resigned.body).send().await;
            match response {
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    // The answer names ids the gateway chose or read from the fixture: shown
                    // with control characters escaped, never sent to the terminal as they are.
                    let summary = summarize(&text);
                    let summary = escape_controls(&summary, LineStyle::Text { ansi: false });
                    outln!("{label:<48} {} {summary}", status.as_u16());
                    if !status.is_success() {
                        failed += 1;
                    }
                }
                Err(e) => {
                    failed += 1;
                    outln!("{label:<48} ERR {e}");
                }
            }
        }
    }
    outln!("{} passed, {} failed", sent - failed, failed);
    if failed > 0 {
        bail!("{failed} of {sent} fixture deliveries were not acknowledged");
    }
    Ok(())
}

/// The recorded headers, when the delivery carries none of the kind's signature headers and is
/// an unsigned handshake the gateway answers without storing.
fn sent_unsigned(
    kind: &crate::provider::kind::Kind,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<actix_web::http::header::HeaderMap> {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    let signature_headers = kind.scheme.signature_headers();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if signature_headers.contains(&name) {
            return None;
        }
        map.append(name, value);
    }
    let (handshake, _) = crate::pipeline::plan::unsigned_match(kind, &map, body)?;
    (!matches!(handshake.reply, crate::provider::kind::Reply::Store)).then_some(map)
}

/// `accepted evt_1`, `handshake ping`, `invalid_signature: ...`, or the first bytes of text.
fn summarize(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v["error"]["code"].is_string() => format!(
            "{}: {}",
            v["error"]["code"].as_str().unwrap_or_default(),
            v["error"]["message"].as_str().unwrap_or_default()
        ),
        Ok(v) if v["handshake"].is_string() => {
            format!("handshake {}", v["handshake"].as_str().unwrap_or_default())
        }
        Ok(v) if v["status"].is_string() => format!(
            "{} {}",
            v["status"].as_str().unwrap_or_default(),
            v["event_id"].as_str().unwrap_or_default()
        ),
        _ => text.chars().take(60).collect(),
    }
}
