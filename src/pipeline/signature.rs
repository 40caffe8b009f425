//! Stage 7: signature verification over the raw bytes, and the matching signer.
//!
//! [`Scheme`] is the closed set of schemes a provider definition can name. [`verify`] is the only
//! way to turn a [`Received`] delivery into a [`Verified`] one; later stages accept only
//! `Verified`. Every secret of the instance is tried (rotation), MACs are compared in constant
//! time (`Mac::verify_slice`, `subtle`), and failures carry a typed reason that never includes
//! the expected value. [`Scheme::sign`] produces what the provider would send; `hookgate sign`,
//! `replay` and the tests use it.

use std::ops::Deref;

use actix_web::http::header::{HeaderMap, HeaderName};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::Received;
use crate::provider::definition::{HmacAlgorithm, SignatureDef, SignatureEncoding};
use crate::secret::Secret;

/// Default timestamp tolerance when neither the kind nor the instance sets one.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// The closed set of signature schemes.
#[derive(Debug)]
pub enum Scheme {
    Hmac(HmacScheme),
    Stripe(StripeScheme),
    /// Authenticated by the instance's Basic Auth (stage 6), which is then mandatory.
    Basic,
    Token(TokenScheme),
}

#[derive(Debug)]
pub struct HmacScheme {
    pub algorithm: HmacAlgorithm,
    pub header: HeaderName,
    pub prefix: String,
    pub prefix_optional: bool,
    pub encoding: SignatureEncoding,
    pub signed: Vec<Part>,
    pub timestamp_header: Option<HeaderName>,
    pub timestamp_required: bool,
    pub tolerance_secs: u64,
}

/// One piece of an HMAC's signed string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(Vec<u8>),
    Body,
    Timestamp,
    Header(HeaderName),
}

#[derive(Debug)]
pub struct StripeScheme {
    pub header: HeaderName,
    pub tolerance_secs: u64,
}

#[derive(Debug)]
pub struct TokenScheme {
    pub header: HeaderName,
}

/// Why a delivery's signature was refused. Messages never contain an expected value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing {0}")]
    Missing(String),
    #[error("malformed {0}")]
    Malformed(String),
    #[error("signature matched none of the {secrets} configured secret(s)")]
    NoMatch { secrets: usize },
    #[error("timestamp is {skew_secs} s away from now, outside the {tolerance_secs} s tolerance")]
    OutOfTolerance { skew_secs: i64, tolerance_secs: u64 },
}

/// A delivery whose signature (or Basic Auth, for `basic` kinds) has been verified.
/// Only [`verify`] constructs it.
#[derive(Debug)]
pub struct Verified(Received);

impl Deref for Verified {
    type Target = Received;

    fn deref(&self) -> &Received {
        &self.0
    }
}

impl Verified {
    pub fn into_inner(self) -> Received {
        self.0
    }
}

/// Verifies `received` against its instance's secrets at `now` (Unix seconds).
pub fn verify(received: Received, now: i64) -> Result<Verified, SignatureError> {
    let instance = &received.instance;
    instance.kind.scheme.verify(
        &received.headers,
        &received.body,
        &instance.secrets,
        instance.tolerance_secs,
        now,
    )?;
    Ok(Verified(received))
}

fn header_name(key: &str, text: &str) -> Result<HeaderName, (String, String)> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
        (
            key.to_owned(),
            format!("`{text}` is not a valid header name"),
        )
    })
}

/// Parses `{body}`, `{timestamp}`, `{header:Name}` and literal text.
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
            _ => match name.strip_prefix("header:") {
                Some(h) => Part::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("`{h}` is not a valid header name"))?,
                ),
                None => return Err(format!("unknown placeholder `{{{name}}}` in `{template}`")),
            },
        });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.as_bytes().to_vec()));
    }
    if !parts.contains(&Part::Body) {
        return Err(format!("`{template}` does not sign `{{body}}`"));
    }
    Ok(parts)
}

impl Scheme {
    pub fn compile(def: &SignatureDef) -> Result<Scheme, (String, String)> {
        Ok(match def {
            SignatureDef::Hmac {
                algorithm,
                header,
                prefix,
                prefix_optional,
                encoding,
                signed,
                timestamp_header,
                timestamp_required,
                tolerance_secs,
            } => {
                let signed = parse_template(signed).map_err(|m| ("signature.signed".into(), m))?;
                let timestamp_header = timestamp_header
                    .as_deref()
                    .map(|h| header_name("signature.timestamp_header", h))
                    .transpose()?;
                if signed.contains(&Part::Timestamp) && timestamp_header.is_none() {
                    return Err((
                        "signature.timestamp_header".into(),
                        "`{timestamp}` is signed, so a timestamp header is required".into(),
                    ));
                }
                Scheme::Hmac(HmacScheme {
                    algorithm: *algorithm,
                    header: header_name("signature.header", header)?,
                    prefix: prefix.clone(),
                    prefix_optional: *prefix_optional,
                    encoding: *encoding,
                    timestamp_required: *timestamp_required || signed.contains(&Part::Timestamp),
                    signed,
                    timestamp_header,
                    tolerance_secs: tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS),
                })
            }
            SignatureDef::Stripe {
                header,
                tolerance_secs,
            } => Scheme::Stripe(StripeScheme {
                header: header_name("signature.header", header)?,
                tolerance_secs: tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS),
            }),
            SignatureDef::Basic => Scheme::Basic,
            SignatureDef::Token { header } => Scheme::Token(TokenScheme {
                header: header_name("signature.header", header)?,
            }),
        })
    }

    /// Whether instances of this kind need at least one secret.
    pub fn needs_secrets(&self) -> bool {
        !matches!(self, Scheme::Basic)
    }

    /// Whether instances of this kind must configure Basic Auth.
    pub fn needs_basic_auth(&self) -> bool {
        matches!(self, Scheme::Basic)
    }

    /// The kind's default tolerance, for schemes with timestamps.
    pub fn default_tolerance_secs(&self) -> u64 {
        match self {
            Scheme::Hmac(h) => h.tolerance_secs,
            Scheme::Stripe(s) => s.tolerance_secs,
            Scheme::Basic | Scheme::Token(_) => DEFAULT_TOLERANCE_SECS,
        }
    }

    /// A header whose value is itself a secret (never stored or logged).
    pub fn secret_header(&self) -> Option<&HeaderName> {
        match self {
            Scheme::Token(t) => Some(&t.header),
            _ => None,
        }
    }

    /// Headers that [`Scheme::sign`] produces (replaced when a fixture is re-signed).
    pub fn signature_headers(&self) -> Vec<HeaderName> {
        match self {
            Scheme::Hmac(h) => std::iter::once(h.header.clone())
                .chain(h.timestamp_header.clone())
                .collect(),
            Scheme::Stripe(s) => vec![s.header.clone()],
            Scheme::Basic => Vec::new(),
            Scheme::Token(t) => vec![t.header.clone()],
        }
    }

    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &[Secret],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        match self {
            Scheme::Hmac(h) => h.verify(headers, body, secrets, tolerance_secs, now),
            Scheme::Stripe(s) => s.verify(headers, body, secrets, tolerance_secs, now),
            Scheme::Basic => Ok(()),
            Scheme::Token(t) => {
                let sent = header_text(headers, &t.header)?;
                if secrets.iter().any(|s| ct_eq(sent.as_bytes(), s.expose())) {
                    Ok(())
                } else {
                    Err(SignatureError::NoMatch {
                        secrets: secrets.len(),
                    })
                }
            }
        }
    }

    /// The headers a provider would send for `body`, signed with `secret` at `timestamp`.
    /// `headers` are the delivery's other headers (some schemes sign one of them).
    pub fn sign(
        &self,
        secret: &Secret,
        body: &[u8],
        timestamp: i64,
        headers: &HeaderMap,
    ) -> Vec<(HeaderName, String)> {
        match self {
            Scheme::Hmac(h) => {
                let ts = timestamp.to_string();
                let mac = h.mac(secret, body, &ts, headers);
                let encoded = match h.encoding {
                    SignatureEncoding::Hex => hex::encode(mac),
                    SignatureEncoding::Base64 => BASE64.encode(mac),
                };
                let mut out = vec![(h.header.clone(), format!("{}{encoded}", h.prefix))];
                if let Some(ts_header) = &h.timestamp_header {
                    out.push((ts_header.clone(), ts));
                }
                out
            }
            Scheme::Stripe(s) => {
                let mac = hmac_parts(
                    HmacAlgorithm::Sha256,
                    secret.expose(),
                    &[timestamp.to_string().as_bytes(), b".", body],
                );
                vec![(
                    s.header.clone(),
                    format!("t={timestamp},v1={}", hex::encode(mac)),
                )]
            }
            Scheme::Basic => Vec::new(),
            Scheme::Token(t) => vec![(t.header.clone(), secret.expose_str().to_owned())],
        }
    }
}

fn header_text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, SignatureError> {
    let value = headers
        .get(name)
        .ok_or_else(|| SignatureError::Missing(format!("{name} header")))?;
    let text = value
        .to_str()
        .map_err(|_| SignatureError::Malformed(format!("{name} header (not visible ASCII)")))?
        .trim();
    if text.is_empty() {
        return Err(SignatureError::Missing(format!("{name} header")));
    }
    Ok(text)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Checks `timestamp` against `now` in both directions.
fn check_tolerance(timestamp: i64, now: i64, tolerance_secs: u64) -> Result<(), SignatureError> {
    let skew = now.saturating_sub(timestamp);
    if skew.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::OutOfTolerance {
            skew_secs: skew,
            tolerance_secs,
        });
    }
    Ok(())
}

/// Unix seconds from a header; values that look like milliseconds are scaled.
fn parse_timestamp(text: &str, what: &str) -> Result<i64, SignatureError> {
    let value: i64 = text
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed(format!("{what} (not a Unix timestamp)")))?;
    Ok(if value > 100_000_000_000 {
        value / 1000
    } else {
        value
    })
}

fn hmac_parts(algorithm: HmacAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match algorithm {
        HmacAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        HmacAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        HmacAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
    }
}

impl HmacScheme {
    fn mac(&self, secret: &Secret, body: &[u8], timestamp: &str, headers: &HeaderMap) -> Vec<u8> {
        let parts: Vec<&[u8]> = self
            .signed
            .iter()
            .map(|part| match part {
                Part::Literal(bytes) => bytes.as_slice(),
                Part::Body => body,
                Part::Timestamp => timestamp.as_bytes(),
                Part::Header(name) => headers.get(name).map(|v| v.as_bytes()).unwrap_or(b""),
            })
            .collect();
        hmac_parts(self.algorithm, secret.expose(), &parts)
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &[Secret],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        let sent = header_text(headers, &self.header)?;
        let encoded = match sent.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest,
            None if self.prefix_optional => sent,
            None => {
                return Err(SignatureError::Malformed(format!(
                    "{} header (expected the `{}` prefix)",
                    self.header, self.prefix
                )))
            }
        };
        let signature = match self.encoding {
            SignatureEncoding::Hex => hex::decode(encoded).ok(),
            SignatureEncoding::Base64 => BASE64.decode(encoded).ok(),
        }
        .ok_or_else(|| {
            SignatureError::Malformed(format!("{} header (not {:?})", self.header, self.encoding))
        })?;
        let timestamp = match &self.timestamp_header {
            Some(name) if headers.contains_key(name) || self.timestamp_required => {
                let text = header_text(headers, name)?;
                Some((
                    text.to_owned(),
                    parse_timestamp(text, &format!("{name} header"))?,
                ))
            }
            _ => None,
        };
        let ts_text = timestamp.as_ref().map(|(t, _)| t.as_str()).unwrap_or("");
        let matched = secrets.iter().any(|secret| {
            let expected = self.mac(secret, body, ts_text, headers);
            ct_eq(&expected, &signature)
        });
        if !matched {
            return Err(SignatureError::NoMatch {
                secrets: secrets.len(),
            });
        }
        if let Some((_, ts)) = timestamp {
            check_tolerance(ts, now, tolerance_secs)?;
        }
        Ok(())
    }
}

impl StripeScheme {
    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &[Secret],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        let sent = header_text(headers, &self.header)?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for item in sent.split(',') {
            let Some((key, value)) = item.trim().split_once('=') else {
                return Err(SignatureError::Malformed(format!(
                    "{} header (items are key=value)",
                    self.header
                )));
            };
            match key {
                "t" => timestamp = Some(value),
                "v1" => signatures.push(hex::decode(value).map_err(|_| {
                    SignatureError::Malformed(format!("{} header (v1 is not hex)", self.header))
                })?),
                // v0 (test-mode legacy) and future schemes are ignored, as Stripe's libraries do.
                _ => {}
            }
        }
        let timestamp_text = timestamp
            .ok_or_else(|| SignatureError::Malformed(format!("{} header (no t=)", self.header)))?;
        let ts = parse_timestamp(timestamp_text, &format!("{} t=", self.header))?;
        if signatures.is_empty() {
            return Err(SignatureError::Missing(format!(
                "v1 signature in {} header",
                self.header
            )));
        }
        let matched = secrets.iter().any(|secret| {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.expose())
                .expect("HMAC accepts keys of any length");
            mac.update(timestamp_text.as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            signatures.iter().any(|sig| ct_eq(&expected, sig))
        });
        if !matched {
            return Err(SignatureError::NoMatch {
                secrets: secrets.len(),
            });
        }
        check_tolerance(ts, now, tolerance_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn scheme(toml_text: &str) -> Scheme {
        let def: SignatureDef = toml::from_str(toml_text).unwrap();
        Scheme::compile(&def).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    const GITHUB: &str = r#"
        scheme = "hmac"
        header = "X-Hub-Signature-256"
        prefix = "sha256="
    "#;

    /// GitHub's documented test vector ("Validating webhook deliveries").
    #[test]
    fn github_docs_vector_verifies() {
        let s = scheme(GITHUB);
        let secret = [Secret::new("It's a Secret to Everybody")];
        let h = headers(&[(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(s.verify(&h, b"Hello, World!", &secret, 300, 0), Ok(()));
        assert_eq!(
            s.verify(&h, b"Hello, World?", &secret, 300, 0),
            Err(SignatureError::NoMatch { secrets: 1 })
        );
        let signed = s.sign(&secret[0], b"Hello, World!", 0, &HeaderMap::new());
        assert_eq!(
            signed[0].1,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn malformed_and_missing_headers_have_their_own_reasons() {
        let s = scheme(GITHUB);
        let secret = [Secret::new("k")];
        assert!(matches!(
            s.verify(&HeaderMap::new(), b"x", &secret, 300, 0),
            Err(SignatureError::Missing(_))
        ));
        let h = headers(&[("x-hub-signature-256", "sha256=zz")]);
        assert!(matches!(
            s.verify(&h, b"x", &secret, 300, 0),
            Err(SignatureError::Malformed(_))
        ));
        let h = headers(&[("x-hub-signature-256", "md5=00")]);
        assert!(matches!(
            s.verify(&h, b"x", &secret, 300, 0),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn any_configured_secret_may_match() {
        let s = scheme(GITHUB);
        let old = Secret::new("old");
        let new = Secret::new("new");
        let signed = s.sign(&old, b"body", 0, &HeaderMap::new());
        let h = headers(&[("x-hub-signature-256", &signed[0].1)]);
        assert_eq!(s.verify(&h, b"body", &[new.clone(), old], 300, 0), Ok(()));
        assert_eq!(
            s.verify(&h, b"body", &[new], 300, 0),
            Err(SignatureError::NoMatch { secrets: 1 })
        );
    }

    /// Stripe signs `{t}.{body}` with HMAC-SHA256 keyed by the whole `whsec_...` string.
    /// Expected value computed independently:
    /// `printf '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test`.
    #[test]
    fn stripe_signature_verifies_against_an_independent_computation() {
        let s = scheme("scheme = \"stripe\"");
        let secret = [Secret::new("whsec_test")];
        let body = br#"{"id":"evt_1"}"#;
        let expected = "c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925";
        let computed = s.sign(&secret[0], body, 1_700_000_000, &HeaderMap::new());
        let value = &computed[0].1;
        assert_eq!(value, &format!("t=1700000000,v1={expected}"));
        let h = headers(&[("stripe-signature", value)]);
        assert_eq!(s.verify(&h, body, &secret, 300, 1_700_000_100), Ok(()));
        // Several v1 entries (Stripe sends one per active secret): any may match.
        let both = format!(
            "t=1700000000,v1={},{}",
            "00".repeat(32),
            &value[2 + 10 + 1..]
        );
        let h = headers(&[("stripe-signature", &both)]);
        assert_eq!(s.verify(&h, body, &secret, 300, 1_700_000_000), Ok(()));
    }

    #[test]
    fn stripe_rejects_stale_and_future_timestamps_after_the_signature_matches() {
        let s = scheme("scheme = \"stripe\"");
        let secret = [Secret::new("whsec_test")];
        let signed = s.sign(&secret[0], b"{}", 1_000, &HeaderMap::new());
        let h = headers(&[("stripe-signature", &signed[0].1)]);
        assert_eq!(
            s.verify(&h, b"{}", &secret, 300, 1_301),
            Err(SignatureError::OutOfTolerance {
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            s.verify(&h, b"{}", &secret, 300, 699),
            Err(SignatureError::OutOfTolerance {
                skew_secs: -301,
                tolerance_secs: 300
            })
        );
        let h = headers(&[("stripe-signature", "v1=00")]);
        assert!(matches!(
            s.verify(&h, b"{}", &secret, 300, 1_000),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn templates_parse_placeholders_and_require_the_body() {
        assert_eq!(
            parse_template("v0:{timestamp}:{body}").unwrap(),
            vec![
                Part::Literal(b"v0:".to_vec()),
                Part::Timestamp,
                Part::Literal(b":".to_vec()),
                Part::Body
            ]
        );
        assert!(parse_template("{timestamp}").is_err());
        assert!(parse_template("{nope}{body}").is_err());
    }

    #[test]
    fn token_scheme_compares_the_header_with_each_secret() {
        let s = scheme("scheme = \"token\"\nheader = \"X-Gitlab-Token\"");
        let h = headers(&[("x-gitlab-token", "tok")]);
        assert_eq!(s.verify(&h, b"", &[Secret::new("tok")], 0, 0), Ok(()));
        assert!(s.verify(&h, b"", &[Secret::new("tok2")], 0, 0).is_err());
    }
}
