//! HMAC schemes: a signed-string template ([`HmacScheme`]: GitHub, Shopify, Slack, Zoom, Twitch,
//! Linear, Square, Pusher, Mailgun, the generic kind), `key=value` signature headers
//! ([`KeyedScheme`]: Stripe, Paddle), and plain shared tokens ([`TokenScheme`]: GitLab).

use actix_web::http::header::HeaderName;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::{
    check_tolerance, describe, format_timestamp, header_name, parse_timestamp, set_pointer, source,
    sources, too_many_signatures, Key, Message, SignInput, SignatureError, Signed,
    DEFAULT_TOLERANCE_SECS, MAX_SIGNATURES,
};
use crate::provider::definition::{
    HmacAlgorithm, SignatureDef, SignatureEncoding, TimestampFormat,
};
use crate::provider::source::{Source, Sources};
use crate::secret::{digest_eq, Secret};

/// One piece of a signed string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(Vec<u8>),
    Body,
    Timestamp,
    Url,
    Value(Source),
}

/// Parses `{body}`, `{timestamp}`, `{url}`, `{header:Name}`, `{/pointer}` and literal text.
pub fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest.as_bytes()[..open].to_vec()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?
            + open;
        let name = &rest[open + 1..close];
        parts.push(match name {
            "body" => Part::Body,
            "timestamp" => Part::Timestamp,
            "url" => Part::Url,
            _ if name.starts_with("header:") || name.starts_with('/') => {
                Part::Value(Source::parse(name)?)
            }
            _ => return Err(format!("unknown placeholder `{{{name}}}` in `{template}`")),
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.as_bytes().to_vec()));
    }
    Ok(parts)
}

/// Parses a signed-string template and its timestamp source together: a template that signs
/// `{timestamp}` needs a source for it; `{body}` is required unless `unsigned_body`.
pub(crate) fn compile_signed(
    template: &str,
    timestamp: Option<&str>,
    unsigned_body: bool,
) -> Result<(Vec<Part>, Option<Source>), (String, String)> {
    let signed = parse_template(template).map_err(|m| ("signature.signed".into(), m))?;
    if !signed.contains(&Part::Body) && !unsigned_body {
        return Err((
            "signature.signed".into(),
            "the template does not sign `{body}` (set unsigned_body = true if the provider really signs only fields)".into(),
        ));
    }
    let timestamp = timestamp
        .map(|t| source("signature.timestamp", t))
        .transpose()?;
    if signed.contains(&Part::Timestamp) && timestamp.is_none() {
        return Err((
            "signature.timestamp".into(),
            "`{timestamp}` is signed, so a timestamp source is required".into(),
        ));
    }
    Ok((signed, timestamp))
}

/// Concatenates a template's parts for one message.
pub(crate) fn assemble(parts: &[Part], message: &Message<'_>, timestamp: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.body.len() + 64);
    for part in parts {
        match part {
            Part::Literal(bytes) => out.extend_from_slice(bytes),
            Part::Body => out.extend_from_slice(message.body),
            Part::Timestamp => out.extend_from_slice(timestamp.as_bytes()),
            Part::Url => out.extend_from_slice(message.url.unwrap_or_default().as_bytes()),
            Part::Value(source) => {
                if let Some(text) = message.text(source) {
                    out.extend_from_slice(text.as_bytes());
                }
            }
        }
    }
    out
}

pub fn mac(algorithm: HmacAlgorithm, key: &[u8], message: &[u8]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, message),
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, message),
    }
}

pub(crate) fn encode(encoding: SignatureEncoding, bytes: &[u8]) -> String {
    match encoding {
        SignatureEncoding::Hex => hex::encode(bytes),
        SignatureEncoding::Base64 => BASE64.encode(bytes),
    }
}

pub(crate) fn decode(encoding: SignatureEncoding, text: &str) -> Option<Vec<u8>> {
    match encoding {
        SignatureEncoding::Hex => hex::decode(text).ok(),
        SignatureEncoding::Base64 => BASE64.decode(text).ok(),
    }
}

/// Whether any shared key's MAC equals one of `candidates`: `mac_of` runs once per key (never
/// once per candidate), and every comparison is constant time.
pub(crate) fn any_key_matches(
    keys: &[Key],
    candidates: &[Vec<u8>],
    mut mac_of: impl FnMut(&[u8]) -> Vec<u8>,
) -> bool {
    if candidates.is_empty() {
        return false;
    }
    let mut matched = subtle::Choice::from(0);
    for key in keys {
        let Key::Shared(secret) = key else {
            continue;
        };
        let expected = mac_of(secret.expose());
        for candidate in candidates {
            matched |= expected.as_slice().ct_eq(candidate);
        }
    }
    matched.into()
}

/// Whether any shared key's MAC of `signed` equals one of `signatures` (constant time).
fn any_match(
    algorithm: HmacAlgorithm,
    keys: &[Key],
    signed: &[u8],
    signatures: &[Vec<u8>],
) -> bool {
    any_key_matches(keys, signatures, |key| mac(algorithm, key, signed))
}

#[derive(Debug)]
pub struct HmacScheme {
    pub algorithm: HmacAlgorithm,
    pub signature: Sources,
    pub prefix: String,
    pub prefix_optional: bool,
    /// Several signatures per header value (and repeated headers), see the definition.
    pub separator: Option<String>,
    pub encoding: SignatureEncoding,
    pub signed: Vec<Part>,
    pub timestamp: Option<Source>,
    pub timestamp_format: TimestampFormat,
    pub timestamp_required: bool,
    pub tolerance_secs: u64,
    pub replay_guard: Option<Source>,
}

impl HmacScheme {
    pub fn compile(def: &SignatureDef) -> Result<Self, (String, String)> {
        let SignatureDef::Hmac {
            algorithm,
            signature,
            prefix,
            prefix_optional,
            separator,
            encoding,
            signed,
            timestamp,
            timestamp_format,
            timestamp_required,
            tolerance_secs,
            unsigned_body,
            replay_guard,
        } = def
        else {
            unreachable!("called for hmac definitions only");
        };
        let (signed, timestamp) = compile_signed(signed, timestamp.as_deref(), *unsigned_body)?;
        let signature = sources("signature.signature", signature)?;
        if signature.is_empty() {
            return Err((
                "signature.signature".into(),
                "name at least one source".into(),
            ));
        }
        Ok(Self {
            algorithm: *algorithm,
            signature,
            prefix: prefix.clone(),
            prefix_optional: *prefix_optional,
            separator: match separator.as_deref() {
                Some("") => return Err(("signature.separator".into(), "must not be empty".into())),
                other => other.map(str::to_owned),
            },
            encoding: *encoding,
            timestamp_required: *timestamp_required || signed.contains(&Part::Timestamp),
            signed,
            timestamp,
            timestamp_format: *timestamp_format,
            tolerance_secs: tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS),
            replay_guard: replay_guard
                .as_deref()
                .map(|g| source("signature.replay_guard", g))
                .transpose()?,
        })
    }

    pub fn signs_url(&self) -> bool {
        self.signed.contains(&Part::Url)
    }

    pub fn written_headers(&self) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = self
            .signature
            .0
            .iter()
            .take(1)
            .filter_map(|s| match s {
                Source::Header(h) => Some(h.clone()),
                _ => None,
            })
            .collect();
        if let Some(Source::Header(h)) = &self.timestamp {
            out.push(h.clone());
        }
        out
    }

    pub fn verify(
        &self,
        message: &Message<'_>,
        keys: &[Key],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        let signatures = match &self.separator {
            Some(separator) => self.entries(message, separator)?,
            None => vec![self.single(message)?],
        };
        let timestamp = match &self.timestamp {
            Some(source) => match message.text(source) {
                Some(text) => Some((text.to_string(), parse_timestamp(&text, "timestamp")?)),
                None if self.timestamp_required || message.require_timestamp => {
                    return Err(SignatureError::Missing(describe(&Sources(vec![
                        source.clone()
                    ]))))
                }
                None => None,
            },
            None => None,
        };
        let ts_text = timestamp.as_ref().map(|(t, _)| t.as_str()).unwrap_or("");
        let signed = assemble(&self.signed, message, ts_text);
        if !any_match(self.algorithm, keys, &signed, &signatures) {
            return Err(SignatureError::NoMatch { keys: keys.len() });
        }
        if let Some((_, ts)) = timestamp {
            check_tolerance(ts, now, tolerance_secs)?;
        }
        Ok(())
    }

    /// The one signature of the first present source.
    fn single(&self, message: &Message<'_>) -> Result<Vec<u8>, SignatureError> {
        let sent = message
            .first_text(&self.signature)
            .ok_or_else(|| SignatureError::Missing(describe(&self.signature)))?;
        let what = || describe(&self.signature);
        let encoded = match sent.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest,
            None if self.prefix_optional => &sent,
            None => {
                return Err(SignatureError::Malformed(format!(
                    "{} (expected the `{}` prefix)",
                    what(),
                    self.prefix
                )))
            }
        };
        decode(self.encoding, encoded.trim()).ok_or_else(|| {
            SignatureError::Malformed(format!("{} (not {:?})", what(), self.encoding))
        })
    }

    /// Every signature of the first present source: each value of a repeated header, split at
    /// `separator`. Entries of another version (no `prefix`) or that do not decode are skipped,
    /// so one bad entry cannot hide a good one; at most [`MAX_SIGNATURES`] entries are read.
    fn entries(
        &self,
        message: &Message<'_>,
        separator: &str,
    ) -> Result<Vec<Vec<u8>>, SignatureError> {
        let missing = || SignatureError::Missing(describe(&self.signature));
        let values: Vec<String> = match self
            .signature
            .0
            .iter()
            .find(|s| message.text(s).is_some())
            .ok_or_else(missing)?
        {
            Source::Header(name) => message
                .headers
                .get_all(name)
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect(),
            source => message
                .text(source)
                .into_iter()
                .map(|t| t.into_owned())
                .collect(),
        };
        let mut out = Vec::new();
        let entries = values
            .iter()
            .flat_map(|v| v.split(separator))
            .map(str::trim)
            .filter(|e| !e.is_empty());
        for (n, entry) in entries.enumerate() {
            if n >= MAX_SIGNATURES {
                return Err(SignatureError::Malformed(format!(
                    "{} (more than {MAX_SIGNATURES} signatures)",
                    describe(&self.signature)
                )));
            }
            let encoded = match entry.strip_prefix(self.prefix.as_str()) {
                Some(rest) => rest,
                None if self.prefix_optional => entry,
                None => continue,
            };
            if let Some(signature) = decode(self.encoding, encoded.trim()) {
                out.push(signature);
            }
        }
        if out.is_empty() {
            return Err(SignatureError::Malformed(format!(
                "{} (no `{}` entry that is {:?})",
                describe(&self.signature),
                self.prefix,
                self.encoding
            )));
        }
        Ok(out)
    }

    pub fn sign(&self, secret: &Secret, input: &SignInput<'_>) -> Result<Signed, String> {
        let mut signed = Signed::default();
        let ts = format_timestamp(input.timestamp, self.timestamp_format);
        let mut headers = input.headers.clone();
        let mut body: Option<Value> = None;
        match &self.timestamp {
            Some(Source::Header(h)) => {
                signed.headers.push((h.clone(), ts.clone()));
                headers.insert(
                    h.clone(),
                    ts.parse().map_err(|_| "timestamp is not a header value")?,
                );
            }
            Some(Source::Body(pointer)) => {
                let mut json: Value = serde_json::from_slice(input.body)
                    .map_err(|e| format!("the body must be JSON to carry the timestamp: {e}"))?;
                let value = ts
                    .parse::<i64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::String(ts.clone()));
                set_pointer(&mut json, pointer, value);
                body = Some(json);
            }
            _ => {}
        }
        let body_bytes = match &body {
            Some(json) => serde_json::to_vec(json).map_err(|e| e.to_string())?,
            None => input.body.to_vec(),
        };
        let message = Message::new(&headers, &body_bytes, input.url);
        let mac = mac(
            self.algorithm,
            secret.expose(),
            &assemble(&self.signed, &message, &ts),
        );
        let value = format!("{}{}", self.prefix, encode(self.encoding, &mac));
        match self.signature.0.first() {
            Some(Source::Header(h)) => signed.headers.push((h.clone(), value)),
            Some(Source::Body(pointer)) => {
                let json = body.get_or_insert_with(|| {
                    serde_json::from_slice(&body_bytes).unwrap_or(Value::Null)
                });
                set_pointer(json, pointer, Value::String(value));
            }
            _ => return Err("the signature source cannot be written".into()),
        }
        signed.body = body
            .map(|json| serde_json::to_vec(&json))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(signed)
    }
}

/// `Stripe-Signature: t=..,v1=..`, `Paddle-Signature: ts=..;h1=..` and, without a timestamp,
/// `X-PagerDuty-Signature: v1=..,v1=..`.
#[derive(Debug)]
pub struct KeyedScheme {
    pub header: HeaderName,
    pub separator: String,
    /// `None`: the header carries only MACs and nothing is checked against a tolerance.
    pub timestamp_key: Option<String>,
    pub signature_key: String,
    pub signed: Vec<Part>,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub timestamp_format: TimestampFormat,
    pub tolerance_secs: u64,
}

impl KeyedScheme {
    pub fn compile(def: &SignatureDef) -> Result<Self, (String, String)> {
        let (
            header,
            separator,
            timestamp_key,
            signature_key,
            signed,
            algorithm,
            encoding,
            timestamp_format,
            tolerance,
        ) = match def {
            SignatureDef::Stripe {
                header,
                tolerance_secs,
            } => (
                header.as_str(),
                ",",
                Some("t"),
                "v1",
                "{timestamp}.{body}",
                HmacAlgorithm::Sha256,
                SignatureEncoding::Hex,
                TimestampFormat::Unix,
                *tolerance_secs,
            ),
            SignatureDef::KeyedHmac {
                header,
                separator,
                timestamp_key,
                signature_key,
                signed,
                algorithm,
                encoding,
                timestamp_format,
                tolerance_secs,
            } => (
                header.as_str(),
                separator.as_str(),
                timestamp_key.as_deref(),
                signature_key.as_str(),
                signed.as_deref().unwrap_or(if timestamp_key.is_some() {
                    "{timestamp}.{body}"
                } else {
                    "{body}"
                }),
                *algorithm,
                *encoding,
                *timestamp_format,
                *tolerance_secs,
            ),
            _ => unreachable!("called for keyed definitions only"),
        };
        let signed = parse_template(signed).map_err(|m| ("signature.signed".into(), m))?;
        if !signed.contains(&Part::Body) {
            return Err((
                "signature.signed".into(),
                "the template must sign `{body}`".into(),
            ));
        }
        if timestamp_key.is_none() && signed.contains(&Part::Timestamp) {
            return Err((
                "signature.timestamp_key".into(),
                "`{timestamp}` is signed, so the header needs a timestamp_key".into(),
            ));
        }
        Ok(Self {
            header: header_name("signature.header", header)?,
            separator: separator.to_owned(),
            timestamp_key: timestamp_key.map(str::to_owned),
            signature_key: signature_key.to_owned(),
            signed,
            algorithm,
            encoding,
            timestamp_format,
            tolerance_secs: tolerance.unwrap_or(DEFAULT_TOLERANCE_SECS),
        })
    }

    pub fn verify(
        &self,
        message: &Message<'_>,
        keys: &[Key],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        let header = &self.header;
        let sent = message
            .text(&Source::Header(header.clone()))
            .ok_or_else(|| SignatureError::Missing(format!("{header} header")))?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for (n, item) in sent.split(self.separator.as_str()).enumerate() {
            // The timestamp and at most MAX_SIGNATURES others (signatures, other versions).
            if n > MAX_SIGNATURES {
                return Err(too_many_signatures(header));
            }
            let Some((key, value)) = item.trim().split_once('=') else {
                return Err(SignatureError::Malformed(format!(
                    "{header} header (items are key=value)"
                )));
            };
            if Some(key) == self.timestamp_key.as_deref() {
                timestamp = Some(value.to_owned());
            } else if key == self.signature_key {
                signatures.push(decode(self.encoding, value).ok_or_else(|| {
                    SignatureError::Malformed(format!(
                        "{header} header ({key} is not {:?})",
                        self.encoding
                    ))
                })?);
            }
            // Other keys (Stripe's legacy v0, future schemes) are ignored, as the providers'
            // own libraries do.
        }
        let ts = match &self.timestamp_key {
            Some(key) => {
                let text = timestamp.as_deref().ok_or_else(|| {
                    SignatureError::Malformed(format!("{header} header (no {key}=)"))
                })?;
                Some(parse_timestamp(text, &format!("{header} {key}="))?)
            }
            None => None,
        };
        if signatures.is_empty() {
            return Err(SignatureError::Missing(format!(
                "{} signature in {header} header",
                self.signature_key
            )));
        }
        let signed = assemble(&self.signed, message, timestamp.as_deref().unwrap_or(""));
        if !any_match(self.algorithm, keys, &signed, &signatures) {
            return Err(SignatureError::NoMatch { keys: keys.len() });
        }
        match ts {
            Some(ts) => check_tolerance(ts, now, tolerance_secs),
            None => Ok(()),
        }
    }

    pub fn sign(&self, secret: &Secret, input: &SignInput<'_>) -> Signed {
        let ts = format_timestamp(input.timestamp, self.timestamp_format);
        let message = Message::new(input.headers, input.body, input.url);
        let mac = mac(
            self.algorithm,
            secret.expose(),
            &assemble(&self.signed, &message, &ts),
        );
        let signature = format!("{}={}", self.signature_key, encode(self.encoding, &mac));
        let value = match &self.timestamp_key {
            Some(key) => format!("{key}={ts}{}{signature}", self.separator),
            None => signature,
        };
        Signed {
            headers: vec![(self.header.clone(), value)],
            body: None,
            query: None,
        }
    }
}

/// A token sent verbatim in a header or a query parameter.
#[derive(Debug)]
pub struct TokenScheme {
    /// Where the token is looked for, in order: the header, then the query parameter.
    pub sources: Sources,
}

impl TokenScheme {
    pub fn compile(header: Option<&str>, query: Option<&str>) -> Result<Self, (String, String)> {
        let mut sources = Vec::new();
        if let Some(header) = header {
            sources.push(Source::Header(header_name("signature.header", header)?));
        }
        if let Some(query) = query {
            if query.is_empty() {
                return Err(("signature.query".into(), "must not be empty".into()));
            }
            sources.push(Source::Query(query.to_owned()));
        }
        if sources.is_empty() {
            return Err((
                "signature.header".into(),
                "name the token's `header`, `query` parameter, or both".into(),
            ));
        }
        Ok(Self {
            sources: Sources(sources),
        })
    }

    /// The header the token travels in, if any.
    pub fn header(&self) -> Option<&HeaderName> {
        self.sources.0.iter().find_map(|s| match s {
            Source::Header(h) => Some(h),
            _ => None,
        })
    }

    /// What `sign` writes: the header, else the query parameter.
    pub fn sign(&self, secret: &Secret) -> Signed {
        match (self.header(), self.sources.0.first()) {
            (Some(header), _) => Signed {
                headers: vec![(header.clone(), secret.expose_str().to_owned())],
                ..Signed::default()
            },
            (None, Some(Source::Query(name))) => Signed {
                query: Some(
                    serde_urlencoded::to_string([(name, secret.expose_str())]).unwrap_or_default(),
                ),
                ..Signed::default()
            },
            _ => Signed::default(),
        }
    }

    pub fn verify(&self, message: &Message<'_>, keys: &[Key]) -> Result<(), SignatureError> {
        let sent = message
            .first_text(&self.sources)
            .ok_or_else(|| SignatureError::Missing(describe(&self.sources)))?;
        // Digests, not the raw bytes: a raw comparison ends early on a length mismatch.
        let matched = keys.iter().fold(false, |matched, k| match k {
            Key::Shared(secret) => digest_eq(secret.expose(), sent.as_bytes()) | matched,
            _ => matched,
        });
        if matched {
            Ok(())
        } else {
            Err(SignatureError::NoMatch { keys: keys.len() })
        }
    }
}
