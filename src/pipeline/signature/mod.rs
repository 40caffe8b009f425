//! Stage 7: signature verification over the raw bytes, and the matching signer.
//!
//! [`Scheme`] is the closed set of schemes a provider definition can name; each lives in its own
//! module ([`hmac`], [`standard`], [`twilio`], [`asymmetric`]). [`verify`] is the only way to turn
//! a [`Received`] delivery into a [`Verified`] one; later stages accept only `Verified`. Every key
//! of the instance is tried (rotation), each MAC is computed once per key and compared with every
//! signature sent (at most [`MAX_SIGNATURES`]), comparisons are constant time, and failures carry
//! a typed reason that never includes the expected value. [`Scheme::sign`] produces what the provider
//! would send; `hookgate sign`, `hookgate replay` and the tests use it.

pub mod asymmetric;
pub mod hmac;
pub mod keys;
pub mod standard;
pub mod twilio;

use std::borrow::Cow;
use std::ops::Deref;
use std::sync::OnceLock;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

pub use self::keys::Key;
use super::Received;
use crate::provider::definition::{SignatureDef, TimestampFormat};
use crate::provider::source::{text_of, Context, Source, Sources};
use crate::secret::Secret;

/// Default timestamp tolerance when neither the kind nor the instance sets one.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// Most signatures one header may carry (Standard Webhooks entries, Stripe `v1`, Paddle `h1`):
/// more is `malformed_signature_header`, so a delivery costs at most this many comparisons per
/// key, whatever the sender writes.
pub const MAX_SIGNATURES: usize = 16;

/// The refusal for a header with more than [`MAX_SIGNATURES`] signatures.
pub(crate) fn too_many_signatures(header: &HeaderName) -> SignatureError {
    SignatureError::Malformed(format!(
        "{header} header (more than {MAX_SIGNATURES} signatures)"
    ))
}

/// The closed set of signature schemes.
#[derive(Debug)]
pub enum Scheme {
    Hmac(hmac::HmacScheme),
    Keyed(hmac::KeyedScheme),
    StandardWebhooks(standard::StandardScheme),
    Twilio(twilio::TwilioScheme),
    Ed25519(asymmetric::AsymmetricScheme),
    EcdsaP256(asymmetric::AsymmetricScheme),
    Token(hmac::TokenScheme),
    /// Authenticated by the instance's Basic Auth (stage 6), which is then mandatory.
    Basic,
    OneOf(Vec<Scheme>),
}

/// Why a delivery's signature was refused. Messages never contain an expected value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing {0}")]
    Missing(String),
    #[error("malformed {0}")]
    Malformed(String),
    #[error("signature matched none of the {keys} configured secret(s)")]
    NoMatch { keys: usize },
    #[error(
        "timestamp is {} s {}, outside the {tolerance_secs} s tolerance",
        skew_secs.unsigned_abs(),
        if *skew_secs < 0 { "in the future" } else { "old" }
    )]
    OutOfTolerance { skew_secs: i64, tolerance_secs: u64 },
    #[error("{0}")]
    Other(String),
}

/// What a signature is checked against: the raw request, the parsed body on demand, and the
/// public URL for schemes that sign it.
pub struct Message<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The URL the provider called (instance `public_url` plus the query string).
    pub url: Option<&'a str>,
    /// The request's query string (token schemes may read a key from it).
    pub query: &'a str,
    /// The instance set its own `tolerance_secs`: a delivery without a timestamp is refused
    /// even where the kind's timestamp is optional.
    pub require_timestamp: bool,
    json: OnceLock<Option<Value>>,
}

impl<'a> Message<'a> {
    pub fn new(headers: &'a HeaderMap, body: &'a [u8], url: Option<&'a str>) -> Self {
        Self {
            headers,
            body,
            url,
            query: "",
            require_timestamp: false,
            json: OnceLock::new(),
        }
    }

    /// The body as JSON, parsed at most once (only schemes with body fields need it).
    pub fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.body).ok())
            .as_ref()
    }

    /// A source's value as text.
    pub fn text(&self, source: &Source) -> Option<Cow<'_, str>> {
        if let Source::Header(name) = source {
            return self
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| Cow::Borrowed(s.trim()))
                .filter(|s| !s.is_empty());
        }
        let null = Value::Null;
        let ctx = Context {
            body: self.json().unwrap_or(&null),
            root: self.json().unwrap_or(&null),
            headers: self.headers,
            query: self.query,
            current: None,
        };
        source
            .resolve(&ctx)
            .and_then(|v| text_of(&v))
            .map(Cow::Owned)
    }

    /// The first present source's text, with a name for error messages.
    pub fn first_text(&self, sources: &Sources) -> Option<Cow<'_, str>> {
        sources.0.iter().find_map(|s| self.text(s))
    }
}

/// What [`Scheme::sign`] needs to sign a delivery.
pub struct SignInput<'a> {
    pub body: &'a [u8],
    pub headers: &'a HeaderMap,
    pub timestamp: DateTime<Utc>,
    pub url: Option<&'a str>,
}

/// A signed delivery: headers to set and, for schemes that sign inside the body, a new body.
#[derive(Debug, Default)]
pub struct Signed {
    pub headers: Vec<(HeaderName, String)>,
    pub body: Option<Vec<u8>>,
    /// A query string the request must carry (a token scheme reading `?code=`).
    pub query: Option<String>,
}

/// A delivery whose signature (or Basic Auth, for `basic` kinds) has been verified.
/// Only [`verify`] constructs it, and [`Verified::stored`] for a receipt the gateway verified
/// when it arrived.
#[derive(Debug)]
pub struct Verified<'r>(Received<'r>);

impl<'r> Verified<'r> {
    /// A stored receipt, verified when it was received (its signature may since have expired
    /// or its secret been rotated): `hookgate events reprocess` runs it through the current
    /// definitions again. Only ever built from what the store holds.
    pub(crate) fn stored(received: Received<'r>) -> Self {
        Verified(received)
    }

    /// A delivery the kind declares unsigned (an `unsigned` `store` handshake, Notion's
    /// verification token): stored by the format of that handshake's name only, which the
    /// route checks.
    pub(crate) fn unsigned(received: Received<'r>) -> Self {
        Verified(received)
    }
}

impl<'r> Deref for Verified<'r> {
    type Target = Received<'r>;

    fn deref(&self) -> &Received<'r> {
        &self.0
    }
}

/// Verifies `received` against its instance's keys at `now` (Unix seconds).
pub fn verify(received: Received<'_>, now: i64) -> Result<Verified<'_>, SignatureError> {
    SKEW.with(|s| s.set(None));
    let instance = &received.instance;
    let url = instance
        .public_url
        .as_deref()
        .map(|base| match received.query {
            "" => base.to_owned(),
            q => format!("{base}?{q}"),
        });
    let mut message = Message::new(received.headers, &received.body, url.as_deref());
    message.require_timestamp = instance.require_timestamp;
    message.query = received.query;
    instance
        .kind
        .scheme
        .verify(&message, &instance.keys, instance.tolerance_secs, now)?;
    Ok(Verified(received))
}

pub(crate) fn header_name(key: &str, text: &str) -> Result<HeaderName, (String, String)> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
        (
            key.to_owned(),
            format!("`{text}` is not a valid header name"),
        )
    })
}

pub(crate) fn sources(key: &str, texts: &[String]) -> Result<Sources, (String, String)> {
    Sources::parse(texts).map_err(|(i, m)| (format!("{key}[{i}]"), m))
}

pub(crate) fn source(key: &str, text: &str) -> Result<Source, (String, String)> {
    Source::parse(text).map_err(|m| (key.to_owned(), m))
}

/// A human name for where a value was looked for.
pub(crate) fn describe(sources: &Sources) -> String {
    sources
        .0
        .iter()
        .map(|s| match s {
            Source::Header(h) => format!("{h} header"),
            Source::Body(p) | Source::Root(p) => format!("body field {p}"),
            Source::Current(p) => format!("field {p}"),
            Source::Query(q) => format!("query parameter {q}"),
            Source::Const(_) => "constant".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

thread_local! {
    /// The skew [`check_tolerance`] saw in this thread's last [`verify`].
    static SKEW: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
}

/// Receive time minus the signed timestamp, in seconds, as checked by the last [`verify`] on
/// this thread (`None` when its scheme signs no timestamp). Read it right after `verify`,
/// before anything awaits.
pub fn observed_skew() -> Option<i64> {
    SKEW.with(std::cell::Cell::get)
}

/// Checks `timestamp` against `now` in both directions.
pub(crate) fn check_tolerance(
    timestamp: i64,
    now: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let skew = now.saturating_sub(timestamp);
    SKEW.with(|s| s.set(Some(skew)));
    if skew.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::OutOfTolerance {
            skew_secs: skew,
            tolerance_secs,
        });
    }
    Ok(())
}

/// Unix seconds from text: seconds, milliseconds (by magnitude) or RFC 3339.
pub(crate) fn parse_timestamp(text: &str, what: &str) -> Result<i64, SignatureError> {
    let text = text.trim();
    if let Ok(value) = text.parse::<i64>() {
        return Ok(if value.unsigned_abs() > 100_000_000_000 {
            value / 1000
        } else {
            value
        });
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .map_err(|_| SignatureError::Malformed(format!("{what} (not a timestamp)")))
}

pub(crate) fn format_timestamp(t: DateTime<Utc>, format: TimestampFormat) -> String {
    match format {
        TimestampFormat::Unix => t.timestamp().to_string(),
        TimestampFormat::UnixMs => t.timestamp_millis().to_string(),
        TimestampFormat::Rfc3339 => t.to_rfc3339_opts(SecondsFormat::Nanos, true),
    }
}

/// Writes `value` at a body pointer (creating objects on the way), for signers whose scheme
/// keeps the timestamp or signature inside the body.
pub(crate) fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let mut target = root;
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if !target.is_object() {
            *target = Value::Object(Default::default());
        }
        target = target
            .as_object_mut()
            .expect("just made an object")
            .entry(token)
            .or_insert(Value::Null);
    }
    *target = value;
}

impl Scheme {
    pub fn compile(def: &SignatureDef) -> Result<Scheme, (String, String)> {
        Ok(match def {
            SignatureDef::Hmac { .. } => Scheme::Hmac(hmac::HmacScheme::compile(def)?),
            SignatureDef::KeyedHmac { .. } | SignatureDef::Stripe { .. } => {
                Scheme::Keyed(hmac::KeyedScheme::compile(def)?)
            }
            SignatureDef::StandardWebhooks {
                header_prefixes,
                tolerance_secs,
            } => Scheme::StandardWebhooks(standard::StandardScheme::compile(
                header_prefixes,
                *tolerance_secs,
            )?),
            SignatureDef::Twilio { header } => Scheme::Twilio(twilio::TwilioScheme {
                header: header_name("signature.header", header)?,
            }),
            SignatureDef::Ed25519 { .. } => {
                Scheme::Ed25519(asymmetric::AsymmetricScheme::compile(def)?)
            }
            SignatureDef::EcdsaP256 { .. } => {
                Scheme::EcdsaP256(asymmetric::AsymmetricScheme::compile(def)?)
            }
            SignatureDef::Basic => Scheme::Basic,
            SignatureDef::Token { header, query } => Scheme::Token(hmac::TokenScheme::compile(
                header.as_deref(),
                query.as_deref(),
            )?),
            SignatureDef::OneOf { schemes } => {
                if schemes.is_empty() {
                    return Err((
                        "signature.schemes".into(),
                        "list at least one scheme".into(),
                    ));
                }
                Scheme::OneOf(
                    schemes
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            Scheme::compile(s).map_err(|(k, m)| {
                                (
                                    k.replacen("signature", &format!("signature.schemes[{i}]"), 1),
                                    m,
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
        })
    }

    /// Turns an instance's configured secrets into keys for this scheme.
    pub fn compile_keys(&self, secrets: &[Secret]) -> Result<Vec<Key>, String> {
        match self {
            Scheme::Basic => Ok(Vec::new()),
            Scheme::StandardWebhooks(_) => secrets.iter().map(keys::standard_key).collect(),
            Scheme::Ed25519(_) => secrets.iter().map(keys::ed25519_public).collect(),
            Scheme::EcdsaP256(_) => secrets.iter().map(keys::p256_public).collect(),
            Scheme::OneOf(schemes) => {
                // Each secret is kept in every form some alternative can use.
                let mut out = Vec::new();
                for scheme in schemes {
                    out.extend(
                        secrets
                            .iter()
                            .filter_map(|s| scheme.compile_keys(std::slice::from_ref(s)).ok())
                            .flatten(),
                    );
                }
                if out.is_empty() && !secrets.is_empty() {
                    return Err("no secret suits any of the schemes".into());
                }
                Ok(out)
            }
            _ => Ok(secrets
                .iter()
                .map(|s| Key::Shared(s.expose().to_vec().into()))
                .collect()),
        }
    }

    /// Whether instances of this kind need at least one secret.
    pub fn needs_secrets(&self) -> bool {
        !matches!(self, Scheme::Basic)
    }

    /// Whether instances of this kind must configure Basic Auth.
    pub fn needs_basic_auth(&self) -> bool {
        matches!(self, Scheme::Basic)
    }

    /// Whether instances must configure `public_url` (the scheme signs the URL).
    pub fn needs_url(&self) -> bool {
        match self {
            Scheme::Twilio(_) => true,
            Scheme::Hmac(h) => h.signs_url(),
            Scheme::OneOf(s) => s.iter().any(Scheme::needs_url),
            _ => false,
        }
    }

    /// Whether deliveries carry a timestamp this scheme checks (so `tolerance_secs` means
    /// something).
    pub fn has_timestamp(&self) -> bool {
        match self {
            Scheme::Hmac(h) => h.timestamp.is_some(),
            Scheme::Ed25519(a) | Scheme::EcdsaP256(a) => a.timestamp.is_some(),
            Scheme::Keyed(k) => k.timestamp_key.is_some(),
            Scheme::StandardWebhooks(_) => true,
            Scheme::OneOf(s) => s.iter().any(Scheme::has_timestamp),
            Scheme::Basic | Scheme::Token(_) | Scheme::Twilio(_) => false,
        }
    }

    /// The kind's default tolerance, for schemes with timestamps.
    pub fn default_tolerance_secs(&self) -> u64 {
        match self {
            Scheme::Hmac(h) => h.tolerance_secs,
            Scheme::Keyed(k) => k.tolerance_secs,
            Scheme::StandardWebhooks(s) => s.tolerance_secs,
            Scheme::Ed25519(a) | Scheme::EcdsaP256(a) => a.tolerance_secs,
            Scheme::OneOf(s) => s
                .first()
                .map_or(DEFAULT_TOLERANCE_SECS, Scheme::default_tolerance_secs),
            Scheme::Basic | Scheme::Token(_) | Scheme::Twilio(_) => DEFAULT_TOLERANCE_SECS,
        }
    }

    /// Headers whose values are secrets themselves (never stored or logged).
    pub fn secret_headers(&self) -> Vec<HeaderName> {
        match self {
            Scheme::Token(t) => t.header().into_iter().cloned().collect(),
            Scheme::OneOf(s) => s.iter().flat_map(Scheme::secret_headers).collect(),
            _ => Vec::new(),
        }
    }

    /// The value that may be used once only, if the scheme has one (Mailgun's token).
    pub fn replay_guard(&self) -> Option<&Source> {
        match self {
            Scheme::Hmac(h) => h.replay_guard.as_ref(),
            _ => None,
        }
    }

    /// Whether a delivery with these headers, body and query carries this scheme's signature
    /// (a signed delivery never takes a kind's unsigned path).
    pub fn is_signed(&self, headers: &HeaderMap, body: &[u8], query: &str) -> bool {
        let mut message = Message::new(headers, body, None);
        message.query = query;
        !matches!(self, Scheme::Basic) && self.is_present(&message)
    }

    /// Whether this delivery carries this scheme's signature (for `one-of`).
    fn is_present(&self, message: &Message<'_>) -> bool {
        match self {
            Scheme::Hmac(h) => message.first_text(&h.signature).is_some(),
            Scheme::Keyed(k) => message.headers.contains_key(&k.header),
            Scheme::StandardWebhooks(s) => s.headers_in(message.headers).is_some(),
            Scheme::Twilio(t) => message.headers.contains_key(&t.header),
            Scheme::Ed25519(a) | Scheme::EcdsaP256(a) => message.first_text(&a.signature).is_some(),
            Scheme::Token(t) => message.first_text(&t.sources).is_some(),
            Scheme::Basic => true,
            Scheme::OneOf(s) => s.iter().any(|s| s.is_present(message)),
        }
    }

    pub fn verify(
        &self,
        message: &Message<'_>,
        keys: &[Key],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        match self {
            Scheme::Hmac(h) => h.verify(message, keys, tolerance_secs, now),
            Scheme::Keyed(k) => k.verify(message, keys, tolerance_secs, now),
            Scheme::StandardWebhooks(s) => s.verify(message, keys, tolerance_secs, now),
            Scheme::Twilio(t) => t.verify(message, keys),
            Scheme::Ed25519(a) => a.verify_ed25519(message, keys, tolerance_secs, now),
            Scheme::EcdsaP256(a) => a.verify_p256(message, keys, tolerance_secs, now),
            Scheme::Token(t) => t.verify(message, keys),
            Scheme::Basic => Ok(()),
            Scheme::OneOf(schemes) => match schemes.iter().find(|s| s.is_present(message)) {
                Some(scheme) => scheme.verify(message, keys, tolerance_secs, now),
                None => Err(SignatureError::Missing(
                    "signature (none of the accepted signature headers is present)".into(),
                )),
            },
        }
    }

    /// What a provider would send for this delivery, signed with `secret` (for asymmetric
    /// schemes, the private key).
    pub fn sign(&self, secret: &Secret, input: &SignInput<'_>) -> Result<Signed, String> {
        match self {
            Scheme::Hmac(h) => h.sign(secret, input),
            Scheme::Keyed(k) => Ok(k.sign(secret, input)),
            Scheme::StandardWebhooks(s) => s.sign(secret, input),
            Scheme::Twilio(t) => t.sign(secret, input),
            Scheme::Ed25519(a) => a.sign_ed25519(secret, input),
            Scheme::EcdsaP256(a) => a.sign_p256(secret, input),
            Scheme::Token(t) => Ok(t.sign(secret)),
            Scheme::Basic => Ok(Signed::default()),
            Scheme::OneOf(schemes) => {
                // Sign with the first alternative the secret suits.
                let mut last = String::from("no scheme");
                for scheme in schemes {
                    match scheme.sign(secret, input) {
                        Ok(signed) => return Ok(signed),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }

    /// Headers [`Scheme::sign`] sets (a re-signed fixture drops its old values of these).
    pub fn signature_headers(&self) -> Vec<HeaderName> {
        match self {
            Scheme::Hmac(h) => h.written_headers(),
            Scheme::Keyed(k) => vec![k.header.clone()],
            Scheme::StandardWebhooks(s) => s.all_headers(),
            Scheme::Twilio(t) => vec![t.header.clone()],
            Scheme::Ed25519(a) | Scheme::EcdsaP256(a) => a.written_headers(),
            Scheme::Token(t) => t.header().into_iter().cloned().collect(),
            Scheme::Basic => Vec::new(),
            Scheme::OneOf(s) => s.iter().flat_map(Scheme::signature_headers).collect(),
        }
    }
}

/// Applies a signer's headers to a header map, replacing old values.
pub fn apply_headers(headers: &mut HeaderMap, signed: &Signed) -> Result<(), String> {
    for (name, value) in &signed.headers {
        let value = HeaderValue::from_str(value).map_err(|e| format!("{name}: {e}"))?;
        headers.insert(name.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
