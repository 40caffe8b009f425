//! The `http` sink: POSTs the envelope as JSON, signed with Standard Webhooks headers
//! (`webhook-id` = the envelope id, stable across retries; `webhook-timestamp`;
//! `webhook-signature` with the sink's `whsec_` secret), so any Standard Webhooks library can
//! verify it. 2xx is delivered; 408, 429, 5xx, timeouts and connection errors are retried
//! (`Retry-After` honoured); any other status is a permanent failure.
//!
//! Redirects are not followed: a 3xx is a failed attempt (retried) whose error names the
//! `Location`, so a redirect is never recorded as delivered and the sink's own headers
//! (credentials, often) never reach another host. Of an error answer at most
//! [`ERROR_BODY_LIMIT`] bytes are read. Errors show the URL without query or userinfo.

use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use chrono::Utc;

use super::Attempt;
use crate::envelope::Envelope;
use crate::pipeline::signature::standard::SigningKey;
use crate::pipeline::signature::standard::StandardScheme;
use crate::pipeline::signature::SignInput;
use crate::secret::redact_url;

/// The Standard Webhooks header set hookgate signs outgoing deliveries with.
const OUTGOING_PREFIX: &str = "webhook-";
/// How much of a failed response body is read and kept in the attempt record.
pub const ERROR_BODY_LIMIT: usize = 512;
/// How much of a successful answer is read: the start is kept in the attempt record, the whole
/// (up to this) may become the provider's answer (`reply_from`).
pub const REPLY_LIMIT: usize = 64 * 1024;

pub struct HttpSink {
    url: String,
    key: Option<SigningKey>,
    signer: StandardScheme,
    headers: Vec<(HeaderName, HeaderValue)>,
    client: reqwest::Client,
}

impl HttpSink {
    /// `key` signs every delivery; `headers` are sent with each.
    pub fn new(
        url: &str,
        key: Option<SigningKey>,
        timeout: Duration,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("hookgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url: url.to_owned(),
            key,
            signer: StandardScheme::compile(&[OUTGOING_PREFIX.to_owned()], None)
                .map_err(|(_, m)| m)?,
            headers,
            client,
        })
    }

    pub async fn deliver(&self, envelope: &Envelope) -> Attempt {
        let body = match serde_json::to_vec(envelope) {
            Ok(body) => body,
            Err(e) => {
                return Attempt::Permanent {
                    error: format!("cannot serialise the envelope: {e}"),
                    http_status: None,
                }
            }
        };
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json");
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_bytes());
        }
        let mut id_header = HeaderMap::new();
        if let Ok(id) = HeaderValue::from_str(&envelope.id) {
            id_header.insert(HeaderName::from_static("webhook-id"), id);
        }
        let now = Utc::now();
        match &self.key {
            Some(key) => {
                let signed = self.signer.sign_with(
                    key,
                    &SignInput {
                        body: &body,
                        headers: &id_header,
                        timestamp: now,
                        url: None,
                    },
                );
                match signed {
                    Ok(signed) => {
                        for (name, value) in signed.headers {
                            request = request.header(name.as_str(), value);
                        }
                    }
                    Err(e) => {
                        return Attempt::Permanent {
                            error: format!("cannot sign: {e}"),
                            http_status: None,
                        }
                    }
                }
            }
            None => {
                request = request
                    .header("webhook-id", envelope.id.as_str())
                    .header("webhook-timestamp", now.timestamp().to_string());
            }
        }
        match request.body(body).send().await {
            Ok(response) => classify(response).await,
            Err(e) => Attempt::Retry {
                error: if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    format!("request to {} failed: {}", redact_url(&self.url), cause(e))
                },
                http_status: None,
                exit_code: None,
                retry_after: None,
            },
        }
    }
}

/// A reqwest error and its causes, without the URL (which may carry a token).
fn cause(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// At most `limit` bytes of an answer's body, read chunk by chunk: the rest is never read
/// (the connection is dropped with it).
async fn read_at_most(response: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    bytes
}

/// At most [`ERROR_BODY_LIMIT`] bytes of an error answer's body, as text.
async fn snippet(mut response: reqwest::Response) -> String {
    let bytes = read_at_most(&mut response, ERROR_BODY_LIMIT).await;
    text_snippet(&bytes[..bytes.len().min(ERROR_BODY_LIMIT)])
}

/// Bytes as trimmed text: a character cut in two at the end is dropped, not shown as garbage.
fn text_snippet(bytes: &[u8]) -> String {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return String::from_utf8_lossy(bytes).trim().to_owned(),
    };
    text.trim().to_owned()
}

async fn classify(mut response: reqwest::Response) -> Attempt {
    let status = response.status();
    let code = status.as_u16();
    if status.is_success() {
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // One byte past the limit tells a whole answer from a cut one: a cut answer is never
        // relayed to the provider (it would be broken JSON); the default answer goes instead.
        let bytes = read_at_most(&mut response, REPLY_LIMIT + 1).await;
        let text = text_snippet(&bytes[..bytes.len().min(ERROR_BODY_LIMIT)]);
        let whole = bytes.len() <= REPLY_LIMIT;
        if !whole {
            tracing::warn!(
                url = %redact_url(response.url().as_str()),
                limit = REPLY_LIMIT,
                "The sink's answer is larger than a provider answer may be; not relayed."
            );
        }
        return Attempt::Delivered {
            http_status: Some(code),
            exit_code: None,
            response: (!text.is_empty()).then_some(text),
            reply: (whole && !bytes.is_empty()).then(|| super::SinkReply {
                content_type,
                body: bytes.into(),
            }),
        };
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|v| redact_url(&String::from_utf8_lossy(v.as_bytes())))
            .unwrap_or_else(|| "nowhere".to_owned());
        return Attempt::Retry {
            error: format!(
                "HTTP {code}: redirected to {location}; redirects are not followed (set the sink's url to where it should deliver)"
            ),
            http_status: Some(code),
            exit_code: None,
            retry_after,
        };
    }
    let error = format!("HTTP {code}: {}", snippet(response).await);
    if code == 408 || code == 429 || status.is_server_error() {
        Attempt::Retry {
            error,
            http_status: Some(code),
            exit_code: None,
            retry_after,
        }
    } else {
        Attempt::Permanent {
            error,
            http_status: Some(code),
        }
    }
}
