//! Verification keys compiled from an instance's `secrets` at startup, in the form each scheme
//! needs: shared secrets as bytes (`whsec_` base64-decoded for Standard Webhooks), public keys
//! parsed for Ed25519 and ECDSA. Nothing here is printed: `Debug` is redacted.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use p256::pkcs8::DecodePublicKey;

use crate::secret::Secret;

/// Prefix of Standard Webhooks shared secrets (base64 after it).
pub const WHSEC_PREFIX: &str = "whsec_";
/// Prefix of Standard Webhooks Ed25519 public keys (base64 after it).
pub const WHPK_PREFIX: &str = "whpk_";
/// Prefix of Standard Webhooks Ed25519 signing keys (base64 seed after it), for `sign`.
pub const WHSK_PREFIX: &str = "whsk_";

/// Secret bytes with a redacted `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl SecretBytes {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(***)")
    }
}

/// One verification key.
#[derive(Clone)]
pub enum Key {
    Shared(SecretBytes),
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Key::Shared(_) => "Key::Shared(***)",
            Key::Ed25519(_) => "Key::Ed25519",
            Key::P256(_) => "Key::P256",
        })
    }
}

/// Hex or base64 (standard or URL-safe, padded or not).
pub fn decode_flexible(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(text).ok();
    }
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [&BASE64, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// `whsec_<base64>` (or bare base64) → shared key; `whpk_<base64>` → Ed25519 public key.
pub fn standard_key(secret: &Secret) -> Result<Key, String> {
    let text = secret.expose_str().trim();
    if let Some(public) = text.strip_prefix(WHPK_PREFIX) {
        let bytes = BASE64
            .decode(public)
            .map_err(|_| "a whpk_ key is not valid base64".to_owned())?;
        return ed25519_from_bytes(&bytes).map(Key::Ed25519);
    }
    let encoded = text.strip_prefix(WHSEC_PREFIX).unwrap_or(text);
    BASE64
        .decode(encoded)
        .map(|bytes| Key::Shared(bytes.into()))
        .map_err(|_| "a Standard Webhooks secret is whsec_ followed by base64".to_owned())
}

fn ed25519_from_bytes(bytes: &[u8]) -> Result<ed25519_dalek::VerifyingKey, String> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("an Ed25519 public key is 32 bytes, not {}", bytes.len()))?;
    ed25519_dalek::VerifyingKey::from_bytes(&array)
        .map_err(|_| "not a valid Ed25519 public key".to_owned())
}

/// An Ed25519 public key, hex (Discord) or base64.
pub fn ed25519_public(secret: &Secret) -> Result<Key, String> {
    let bytes = decode_flexible(secret.expose_str())
        .ok_or_else(|| "an Ed25519 public key is hex or base64".to_owned())?;
    ed25519_from_bytes(&bytes).map(Key::Ed25519)
}

/// An ECDSA P-256 public key: PEM, or base64 of the DER SubjectPublicKeyInfo (SendGrid), or a
/// SEC1 point.
pub fn p256_public(secret: &Secret) -> Result<Key, String> {
    let text = secret.expose_str().trim();
    if text.starts_with("-----BEGIN") {
        return p256::ecdsa::VerifyingKey::from_public_key_pem(text)
            .map(Key::P256)
            .map_err(|_| "not a valid P-256 public key PEM".to_owned());
    }
    let der = decode_flexible(text).ok_or_else(|| "a P-256 public key is base64 DER".to_owned())?;
    p256::ecdsa::VerifyingKey::from_public_key_der(&der)
        .or_else(|_| p256::ecdsa::VerifyingKey::from_sec1_bytes(&der))
        .map(Key::P256)
        .map_err(|_| "not a valid P-256 public key".to_owned())
}

/// An Ed25519 signing key from a 32-byte seed (hex, base64, or `whsk_`/`whsec_`-prefixed
/// base64), for `hookgate sign` and `replay`.
pub fn ed25519_signing(secret: &Secret) -> Result<ed25519_dalek::SigningKey, String> {
    let text = secret.expose_str().trim();
    let text = text
        .strip_prefix(WHSK_PREFIX)
        .or_else(|| text.strip_prefix(WHSEC_PREFIX))
        .unwrap_or(text);
    let bytes =
        decode_flexible(text).ok_or_else(|| "an Ed25519 seed is hex or base64".to_owned())?;
    let seed: [u8; 32] = bytes
        .get(..32)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "an Ed25519 seed is 32 bytes".to_owned())?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// A P-256 signing key: PEM (PKCS#8), base64 PKCS#8 DER, or a 32-byte hex scalar.
pub fn p256_signing(secret: &Secret) -> Result<p256::ecdsa::SigningKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    let text = secret.expose_str().trim();
    if text.starts_with("-----BEGIN") {
        return p256::ecdsa::SigningKey::from_pkcs8_pem(text)
            .map_err(|_| "not a valid P-256 private key PEM".to_owned());
    }
    let bytes =
        decode_flexible(text).ok_or_else(|| "a P-256 private key is hex or base64".to_owned())?;
    p256::ecdsa::SigningKey::from_pkcs8_der(&bytes)
        .or_else(|_| p256::ecdsa::SigningKey::from_slice(&bytes))
        .map_err(|_| "not a valid P-256 private key".to_owned())
}
