//! `hookgate sign`: the headers a real provider would send for a body, signed with its scheme,
//! and a curl command that sends them. Also the re-signing that `replay` uses.

use std::path::{Path, PathBuf};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use clap::Args;

use crate::pipeline::signature::{apply_headers, twilio, Scheme, SignInput};
use crate::provider::kind::{self, Kind};
use crate::secret::Secret;

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Provider kind (a file in the providers directory).
    #[arg(long)]
    kind: String,
    /// Signing secret (for ed25519 / ecdsa kinds: the private key). Not used by kinds that
    /// are authenticated by Basic Auth only (pipedrive).
    #[arg(long, env = "HOOKGATE_SIGN_SECRET")]
    secret: Option<String>,
    /// HTTP Basic Auth credentials, `user:password`, sent as `Authorization`; required by
    /// kinds authenticated by Basic Auth only (pipedrive).
    #[arg(long, env = "HOOKGATE_SIGN_BASIC_AUTH")]
    basic_auth: Option<String>,
    /// Unix timestamp to sign at; default now.
    #[arg(long)]
    timestamp: Option<i64>,
    /// Extra header sent with the body, `Name=value` (repeatable); some schemes sign them.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The URL the provider calls (signed by Twilio and Square; used in the curl command).
    #[arg(long)]
    url: Option<String>,
    /// Provider definitions directory.
    #[arg(long, default_value = "providers")]
    providers: PathBuf,
    /// The body file, sent byte-exact.
    file: PathBuf,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .or_else(|| text.split_once(':'))
        .ok_or_else(|| format!("`{text}` is not Name=value"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// A delivery signed for sending.
pub struct Resigned {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The URL to post to, when the scheme changed it (Twilio JSON bodies carry `bodySHA256`).
    pub url: Option<String>,
    /// A query string the request must carry (a token in `?code=`).
    pub query: Option<String>,
}

/// Appends a query string to a URL.
pub fn with_query(url: &str, query: Option<&str>) -> String {
    match query {
        Some(query) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}{query}")
        }
        None => url.to_owned(),
    }
}

/// Drops the old signature headers, then signs `body` as the provider would at `now`.
pub fn resign(
    kind: &Kind,
    secret: &Secret,
    body: &[u8],
    headers: &[(String, String)],
    url: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<Resigned> {
    let stale = kind.scheme.signature_headers();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow!("`{name}` is not a header name"))?;
        if stale.contains(&name) {
            continue;
        }
        map.append(
            name,
            HeaderValue::from_str(value).map_err(|_| anyhow!("bad value for header {value}"))?,
        );
    }
    // Twilio signs JSON bodies through a bodySHA256 query parameter on the URL.
    let is_form = map
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let url = match (&kind.scheme, url) {
        (Scheme::Twilio(_), Some(url)) if !is_form => {
            let sep = if url.contains('?') { '&' } else { '?' };
            Some(format!("{url}{sep}{}", twilio::body_sha256_query(body)))
        }
        (_, url) => url.map(str::to_owned),
    };
    let signed = kind
        .scheme
        .sign(
            secret,
            &SignInput {
                body,
                headers: &map,
                timestamp: now,
                url: url.as_deref(),
            },
        )
        .map_err(|e| anyhow!("cannot sign for kind `{}`: {e}", kind.name))?;
    apply_headers(&mut map, &signed).map_err(|e| anyhow!(e))?;
    Ok(Resigned {
        headers: map,
        body: signed.body.unwrap_or_else(|| body.to_vec()),
        url,
        query: signed.query,
    })
}

pub fn load_kind(providers: &Path, name: &str) -> anyhow::Result<Kind> {
    let path = providers.join(format!("{name}.toml"));
    if !path.is_file() {
        bail!(
            "no provider definition {} (use --providers DIR)",
            path.display()
        );
    }
    Ok(kind::load_file(&path, name)?)
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

pub fn run(args: SignArgs) -> anyhow::Result<()> {
    let kind = load_kind(&args.providers, &args.kind)?;
    let body = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let now = match args.timestamp {
        Some(ts) => DateTime::from_timestamp(ts, 0).ok_or_else(|| anyhow!("bad --timestamp"))?,
        None => Utc::now(),
    };
    let mut headers = args.headers.clone();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        let content_type = if matches!(kind.body, crate::provider::definition::BodyFormat::Form) {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        headers.insert(0, ("Content-Type".into(), content_type.into()));
    }
    if let Some(credentials) = &args.basic_auth {
        if !credentials.contains(':') {
            bail!("--basic-auth is `user:password`");
        }
        headers.push((
            AUTHORIZATION.to_string(),
            format!("Basic {}", BASE64.encode(credentials)),
        ));
    }
    let secret = match (&args.secret, kind.scheme.needs_secrets()) {
        (Some(secret), _) => Secret::new(secret.clone()),
        (None, false) => Secret::new(""),
        (None, true) => bail!("kind `{}` signs deliveries: pass --secret", kind.name),
    };
    if kind.scheme.needs_basic_auth() && args.basic_auth.is_none() {
        bail!(
            "kind `{}` is authenticated by Basic Auth only: pass --basic-auth user:password \
             (the instance's basic_auth), or the gateway refuses the request with 401",
            kind.name
        );
    }
    let signed = resign(&kind, &secret, &body, &headers, args.url.as_deref(), now)?;
    let mut body_arg = args.file.display().to_string();
    if signed.body != body {
        let path = format!("{}.signed", args.file.display());
        std::fs::write(&path, &signed.body).with_context(|| format!("cannot write {path}"))?;
        eprintln!("note: this scheme signs inside the body; the signed body is in {path}");
        body_arg = path;
    }
    for (name, value) in &signed.headers {
        outln!("{name}: {}", value.to_str().unwrap_or_default());
    }
    let url = with_query(
        &signed
            .url
            .unwrap_or_else(|| format!("http://127.0.0.1:8080/webhooks/{}", args.kind)),
        signed.query.as_deref(),
    );
    let mut curl = format!("curl -sS -X POST {}", shell_quote(&url));
    for (name, value) in &signed.headers {
        curl.push_str(" \\\n  -H ");
        curl.push_str(&shell_quote(&format!(
            "{name}: {}",
            value.to_str().unwrap_or_default()
        )));
    }
    curl.push_str(&format!(" \\\n  --data-binary @{}", shell_quote(&body_arg)));
    outln!("\n{curl}");
    Ok(())
}
