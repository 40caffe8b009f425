//! Public-key schemes: Ed25519 (Discord) and ECDSA P-256 with SHA-256 (SendGrid). The signed
//! message is a template like the HMAC schemes' (`{timestamp}{body}`); instances list public keys
//! in `secrets`, and `sign` takes the private key.

use actix_web::http::header::HeaderName;
use ed25519_dalek::{Signer as _, Verifier as _};

use super::hmac::{assemble, compile_signed, decode, encode, Part};
use super::keys::{self, Key};
use super::{
    check_tolerance, describe, format_timestamp, parse_timestamp, sources, Message, SignInput,
    SignatureError, Signed, DEFAULT_TOLERANCE_SECS,
};
use crate::provider::definition::{SignatureDef, SignatureEncoding, TimestampFormat};
use crate::provider::source::{Source, Sources};
use crate::secret::Secret;

/// The signature bytes, the signed message and the timestamp (if any).
type Prepared = (Vec<u8>, Vec<u8>, Option<i64>);

#[derive(Debug)]
pub struct AsymmetricScheme {
    pub signature: Sources,
    pub encoding: SignatureEncoding,
    pub signed: Vec<Part>,
    pub timestamp: Option<Source>,
    pub tolerance_secs: u64,
}

impl AsymmetricScheme {
    pub fn compile(def: &SignatureDef) -> Result<Self, (String, String)> {
        let (SignatureDef::Ed25519 {
            signature,
            encoding,
            signed,
            timestamp,
            tolerance_secs,
        }
        | SignatureDef::EcdsaP256 {
            signature,
            encoding,
            signed,
            timestamp,
            tolerance_secs,
        }) = def
        else {
            unreachable!("called for public-key definitions only");
        };
        let (signed, timestamp) = compile_signed(signed, timestamp.as_deref(), false)?;
        Ok(Self {
            signature: sources("signature.signature", signature)?,
            encoding: *encoding,
            signed,
            timestamp,
            tolerance_secs: tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS),
        })
    }

    pub fn written_headers(&self) -> Vec<HeaderName> {
        self.signature
            .0
            .iter()
            .take(1)
            .chain(self.timestamp.iter())
            .filter_map(|s| match s {
                Source::Header(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    /// The signature bytes, the signed message and the timestamp (if any).
    fn prepare(&self, message: &Message<'_>) -> Result<Prepared, SignatureError> {
        let sent = message
            .first_text(&self.signature)
            .ok_or_else(|| SignatureError::Missing(describe(&self.signature)))?;
        let signature = decode(self.encoding, sent.trim()).ok_or_else(|| {
            SignatureError::Malformed(format!(
                "{} (not {:?})",
                describe(&self.signature),
                self.encoding
            ))
        })?;
        let (ts_text, ts) = match &self.timestamp {
            Some(source) => {
                let text = message.text(source).ok_or_else(|| {
                    SignatureError::Missing(describe(&Sources(vec![source.clone()])))
                })?;
                let ts = parse_timestamp(&text, "timestamp")?;
                (text.into_owned(), Some(ts))
            }
            None => (String::new(), None),
        };
        Ok((signature, assemble(&self.signed, message, &ts_text), ts))
    }

    fn finish(
        &self,
        matched: bool,
        keys: &[Key],
        ts: Option<i64>,
        tolerance: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        if !matched {
            return Err(SignatureError::NoMatch { keys: keys.len() });
        }
        match ts {
            Some(ts) => check_tolerance(ts, now, tolerance),
            None => Ok(()),
        }
    }

    pub fn verify_ed25519(
        &self,
        message: &Message<'_>,
        keys: &[Key],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        let (signature, signed, ts) = self.prepare(message)?;
        let signature = ed25519_dalek::Signature::from_slice(&signature).map_err(|_| {
            SignatureError::Malformed(format!("{} (not 64 bytes)", describe(&self.signature)))
        })?;
        let matched = keys.iter().any(|key| match key {
            Key::Ed25519(public) => public.verify(&signed, &signature).is_ok(),
            _ => false,
        });
        self.finish(matched, keys, ts, tolerance_secs, now)
    }

    pub fn verify_p256(
        &self,
        message: &Message<'_>,
        keys: &[Key],
        tolerance_secs: u64,
        now: i64,
    ) -> Result<(), SignatureError> {
        let (signature, signed, ts) = self.prepare(message)?;
        let signature = p256::ecdsa::Signature::from_der(&signature)
            .or_else(|_| p256::ecdsa::Signature::from_slice(&signature))
            .map_err(|_| {
                SignatureError::Malformed(format!(
                    "{} (not an ECDSA signature)",
                    describe(&self.signature)
                ))
            })?;
        // Signatures with a high S are as valid as their low-S twin; accept both.
        let normalized = signature.normalize_s().unwrap_or(signature);
        let matched = keys.iter().any(|key| match key {
            Key::P256(public) => {
                public.verify(&signed, &signature).is_ok()
                    || public.verify(&signed, &normalized).is_ok()
            }
            _ => false,
        });
        self.finish(matched, keys, ts, tolerance_secs, now)
    }

    fn sign_with(
        &self,
        input: &SignInput<'_>,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<Signed, String> {
        let ts = format_timestamp(input.timestamp, TimestampFormat::Unix);
        let message = Message::new(input.headers, input.body, input.url);
        let signature = encode(self.encoding, &sign(&assemble(&self.signed, &message, &ts)));
        let mut headers = Vec::new();
        match self.signature.0.first() {
            Some(Source::Header(h)) => headers.push((h.clone(), signature)),
            _ => return Err("the signature source cannot be written".into()),
        }
        if let Some(Source::Header(h)) = &self.timestamp {
            headers.push((h.clone(), ts));
        }
        Ok(Signed {
            headers,
            body: None,
            query: None,
        })
    }

    pub fn sign_ed25519(&self, secret: &Secret, input: &SignInput<'_>) -> Result<Signed, String> {
        let key = keys::ed25519_signing(secret)?;
        self.sign_with(input, |m| key.sign(m).to_bytes().to_vec())
    }

    pub fn sign_p256(&self, secret: &Secret, input: &SignInput<'_>) -> Result<Signed, String> {
        let key = keys::p256_signing(secret)?;
        self.sign_with(input, |m| {
            let signature: p256::ecdsa::Signature = key.sign(m);
            signature.to_der().as_bytes().to_vec()
        })
    }
}
