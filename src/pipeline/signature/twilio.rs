//! Twilio: `X-Twilio-Signature` is the base64 HMAC-SHA1 (keyed with the auth token) of the URL
//! Twilio called followed, for form posts, by every distinct field name and value, sorted. For
//! JSON bodies the URL carries `bodySHA256=<hex sha256 of the body>`, only the URL is signed,
//! and the body must hash to that value. Twilio's libraries also accept the URL with the default
//! port added or removed; so does this.

use actix_web::http::header::{HeaderName, CONTENT_TYPE};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::hmac::{any_key_matches, mac};
use super::{Key, Message, SignInput, SignatureError, Signed};
use crate::provider::definition::HmacAlgorithm;
use crate::secret::Secret;

const BODY_SHA256: &str = "bodySHA256";

#[derive(Debug)]
pub struct TwilioScheme {
    pub header: HeaderName,
}

fn is_form(message: &Message<'_>) -> bool {
    message
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// What Twilio signs after the URL: for form posts every distinct field name and value,
/// sorted (parsed once per delivery, whatever the number of URL variants tried); else nothing.
fn signed_fields(message: &Message<'_>) -> Result<String, SignatureError> {
    let mut out = String::new();
    if is_form(message) {
        let mut fields: Vec<(String, String)> = serde_urlencoded::from_bytes(message.body)
            .map_err(|_| SignatureError::Malformed("form body".into()))?;
        // Sorted by name then value; a repeated name=value pair is signed once, as Twilio does.
        fields.sort();
        fields.dedup();
        for (name, value) in fields {
            out.push_str(&name);
            out.push_str(&value);
        }
    }
    Ok(out)
}

/// The URL as configured, and with the default port toggled.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        let Some(rest) = url.strip_prefix(scheme) else {
            continue;
        };
        let (host, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if let Some(bare) = host.strip_suffix(port) {
            variants.push(format!("{scheme}{bare}{path}"));
        } else if !host.contains(':') {
            variants.push(format!("{scheme}{host}{port}{path}"));
        }
    }
    variants
}

impl TwilioScheme {
    pub fn verify(&self, message: &Message<'_>, keys: &[Key]) -> Result<(), SignatureError> {
        let header = &self.header;
        let sent = message
            .headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| SignatureError::Missing(format!("{header} header")))?;
        let signature = BASE64
            .decode(sent.trim())
            .map_err(|_| SignatureError::Malformed(format!("{header} header (not base64)")))?;
        let url = message
            .url
            .ok_or_else(|| SignatureError::Other("public_url is not configured".into()))?;
        let fields = signed_fields(message)?;
        let candidates = [signature];
        let mut matched = false;
        for variant in url_variants(url) {
            let mut signed = variant.into_bytes();
            signed.extend_from_slice(fields.as_bytes());
            matched |= any_key_matches(keys, &candidates, |token| {
                mac(HmacAlgorithm::Sha1, token, &signed)
            });
        }
        if !matched {
            return Err(SignatureError::NoMatch { keys: keys.len() });
        }
        if !is_form(message) {
            // JSON: the signed URL must pin the body.
            let expected = url
                .split_once('?')
                .and_then(|(_, query)| {
                    serde_urlencoded::from_str::<Vec<(String, String)>>(query).ok()
                })
                .and_then(|q| q.into_iter().find(|(k, _)| k == BODY_SHA256))
                .map(|(_, v)| v)
                .ok_or_else(|| {
                    SignatureError::Missing(format!("{BODY_SHA256} in the URL of a non-form body"))
                })?;
            let actual = hex::encode(Sha256::digest(message.body));
            if !bool::from(
                actual
                    .as_bytes()
                    .ct_eq(expected.to_ascii_lowercase().as_bytes()),
            ) {
                return Err(SignatureError::Other(format!(
                    "the body does not match the signed {BODY_SHA256}"
                )));
            }
        }
        Ok(())
    }

    pub fn sign(&self, secret: &Secret, input: &SignInput<'_>) -> Result<Signed, String> {
        let url = input
            .url
            .ok_or("Twilio signs the URL: configure public_url (or pass --url)")?;
        let message = Message::new(input.headers, input.body, Some(url));
        let signed = url.to_owned() + &signed_fields(&message).map_err(|e| e.to_string())?;
        let mac = mac(HmacAlgorithm::Sha1, secret.expose(), signed.as_bytes());
        Ok(Signed {
            headers: vec![(self.header.clone(), BASE64.encode(mac))],
            body: None,
            query: None,
        })
    }
}

/// The query a JSON delivery's URL carries: `bodySHA256=<hex>`.
pub fn body_sha256_query(body: &[u8]) -> String {
    format!("{BODY_SHA256}={}", hex::encode(Sha256::digest(body)))
}
