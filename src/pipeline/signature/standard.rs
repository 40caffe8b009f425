//! Standard Webhooks (<https://www.standardwebhooks.com>): `webhook-id`, `webhook-timestamp` and
//! `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>` and
//! `v1a,<base64 Ed25519>` over `{id}.{timestamp}.{body}`. The same headers with other prefixes
//! (`svix-id`, ...) are accepted. Shared secrets are `whsec_<base64>`, public keys
//! `whpk_<base64>`.

use actix_web::http::header::{HeaderMap, HeaderName};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};

use super::hmac::{any_key_matches, mac};
use super::keys::{self, Key};
use super::{
    check_tolerance, parse_timestamp, too_many_signatures, Message, SignInput, SignatureError,
    Signed, MAX_SIGNATURES,
};
use crate::provider::definition::HmacAlgorithm;
use crate::secret::Secret;

const ID: &str = "id";
const TIMESTAMP: &str = "timestamp";
const SIGNATURE: &str = "signature";
const VERSION_HMAC: &str = "v1";
const VERSION_ED25519: &str = "v1a";

#[derive(Debug)]
pub struct StandardScheme {
    /// (id, timestamp, signature) header names per accepted prefix, in order.
    pub header_sets: Vec<[HeaderName; 3]>,
    pub tolerance_secs: u64,
}

/// A Standard Webhooks signing key: `whsec_` (HMAC) or `whsk_` (Ed25519), decoded.
pub enum SigningKey {
    Hmac(keys::SecretBytes),
    Ed25519(ed25519_dalek::SigningKey),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigningKey::Hmac(_) => "SigningKey::Hmac(..)",
            SigningKey::Ed25519(_) => "SigningKey::Ed25519(..)",
        })
    }
}

impl SigningKey {
    pub fn parse(secret: &Secret) -> Result<Self, String> {
        if secret.expose_str().trim().starts_with(keys::WHSK_PREFIX) {
            return keys::ed25519_signing(secret).map(SigningKey::Ed25519);
        }
        match keys::standard_key(secret)? {
            Key::Shared(key) => Ok(SigningKey::Hmac(key)),
            _ => Err("signing needs a whsec_ secret or a whsk_ signing key".into()),
        }
    }
}

impl StandardScheme {
    pub fn compile(prefixes: &[String], tolerance: Option<u64>) -> Result<Self, (String, String)> {
        if prefixes.is_empty() {
            return Err((
                "signature.header_prefixes".into(),
                "list at least one prefix".into(),
            ));
        }
        let header_sets = prefixes
            .iter()
            .map(|p| {
                let name = |suffix: &str| {
                    super::header_name("signature.header_prefixes", &format!("{p}{suffix}"))
                };
                Ok([name(ID)?, name(TIMESTAMP)?, name(SIGNATURE)?])
            })
            .collect::<Result<_, (String, String)>>()?;
        Ok(Self {
            header_sets,
            tolerance_secs: tolerance.unwrap_or(super::DEFAULT_TOLERANCE_SECS),
        })
    }

    /// The header set this delivery uses: the first whose signature header is present.
    pub fn headers_in(&self, headers: &HeaderMap) -> Option<&[HeaderName; 3]> {
        self.header_sets
            .iter()
            .find(|set| headers.contains_key(&set[2]))
    }

    pub fn all_headers(&self) -> Vec<HeaderName> {
        self.header_sets
            .first()
            .map(|s| s.to_vec())
            .unwrap_or_default()
    }

    pub fn verify(
        &self,
        message: &Message<'_>,
        keys: &[Key],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        let Some([id_name, ts_name, sig_name]) = self.headers_in(message.headers) else {
            let sig = &self.header_sets[0][2];
            return Err(SignatureError::Missing(format!("{sig} header")));
        };
        let text = |name: &HeaderName| {
            message
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| SignatureError::Missing(format!("{name} header")))
        };
        let id = text(id_name)?;
        let timestamp = text(ts_name)?;
        let ts = parse_timestamp(timestamp, &format!("{ts_name} header"))?;
        let mut signed = Vec::with_capacity(message.body.len() + 64);
        signed.extend_from_slice(id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(timestamp.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(message.body);
        // Parse every entry first (at most MAX_SIGNATURES), then one MAC per key against all.
        // An entry that does not parse is skipped, not fatal: it must not hide a valid one.
        let mut any_known = false;
        let mut malformed = None;
        let mut hmac_signatures = Vec::new();
        let mut ed25519_signatures = Vec::new();
        for (n, item) in text(sig_name)?.split_whitespace().enumerate() {
            if n >= MAX_SIGNATURES {
                return Err(too_many_signatures(sig_name));
            }
            let Some((version, encoded)) = item.split_once(',') else {
                malformed = Some("entries are <version>,<base64>");
                continue;
            };
            let Ok(signature) = BASE64.decode(encoded) else {
                malformed = Some("not base64");
                continue;
            };
            match version {
                VERSION_HMAC => {
                    any_known = true;
                    hmac_signatures.push(signature);
                }
                VERSION_ED25519 => {
                    any_known = true;
                    if let Ok(signature) = ed25519_dalek::Signature::from_slice(&signature) {
                        ed25519_signatures.push(signature);
                    }
                }
                // Unknown versions are skipped, as the specification asks.
                _ => {}
            }
        }
        let matched = any_key_matches(keys, &hmac_signatures, |key| {
            mac(HmacAlgorithm::Sha256, key, &signed)
        }) || keys.iter().any(|key| match key {
            Key::Ed25519(public) => ed25519_signatures
                .iter()
                .any(|signature| public.verify(&signed, signature).is_ok()),
            _ => false,
        });
        if !any_known {
            if let Some(why) = malformed {
                return Err(SignatureError::Malformed(format!(
                    "{sig_name} header ({why})"
                )));
            }
            return Err(SignatureError::Missing(format!(
                "v1 or v1a signature in {sig_name} header"
            )));
        }
        if !matched {
            return Err(SignatureError::NoMatch { keys: keys.len() });
        }
        check_tolerance(ts, now, tolerance_secs)
    }

    pub fn sign(&self, secret: &Secret, input: &SignInput<'_>) -> Result<Signed, String> {
        self.sign_with(&SigningKey::parse(secret)?, input)
    }

    /// Signs with a key decoded once (the `http` sink signs every delivery).
    pub fn sign_with(&self, key: &SigningKey, input: &SignInput<'_>) -> Result<Signed, String> {
        let [id_name, ts_name, sig_name] = &self.header_sets[0];
        let id = input
            .headers
            .get(id_name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("msg_{}", ulid::Ulid::new()));
        let ts = input.timestamp.timestamp().to_string();
        let mut signed = format!("{id}.{ts}.").into_bytes();
        signed.extend_from_slice(input.body);
        let signature = match key {
            SigningKey::Ed25519(key) => format!(
                "{VERSION_ED25519},{}",
                BASE64.encode(key.sign(&signed).to_bytes())
            ),
            SigningKey::Hmac(key) => format!(
                "{VERSION_HMAC},{}",
                BASE64.encode(mac(HmacAlgorithm::Sha256, key.expose(), &signed))
            ),
        };
        Ok(Signed {
            headers: vec![
                (id_name.clone(), id),
                (ts_name.clone(), ts),
                (sig_name.clone(), signature),
            ],
            body: None,
            query: None,
        })
    }
}
