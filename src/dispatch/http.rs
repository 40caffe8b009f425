//! The `http` sink: POSTs the envelope as JSON, signed with Standard Webhooks headers
//! (`webhook-id` = the envelope id, stable across retries; `webhook-timestamp`;
//! `webhook-signature` with the sink's `whsec_` secret), so any Standard Webhooks library can
//! verify it. 2xx is delivered; 408, 429, 5xx, timeouts and connection errors are retried
//! (`Retry-After` honoured); any other status is a permanent failure.

use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use chrono::Utc;

use super::Attempt;
use crate::envelope::Envelope;
use crate::pipeline::signature::standard::SigningKey;
use crate::pipeline::signature::standard::StandardScheme;
use crate::pipeline::signature::SignInput;

/// The Standard Webhooks header set hookgate signs outgoing deliveries with.
const OUTGOING_PREFIX: &str = "webhook-";
/// How much of a failed response body is kept in the attempt record.
const ERROR_BODY_LIMIT: usize = 512;

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
                    format!("request failed: {e}")
                },
                http_status: None,
                exit_code: None,
                retry_after: None,
            },
        }
    }
}

async fn classify(response: reqwest::Response) -> Attempt {
    let status = response.status();
    let code = status.as_u16();
    if status.is_success() {
        return Attempt::Delivered {
            http_status: Some(code),
            exit_code: None,
        };
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut text = response.text().await.unwrap_or_default();
    if text.len() > ERROR_BODY_LIMIT {
        let mut cut = ERROR_BODY_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    let error = format!("HTTP {code}: {}", text.trim());
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
