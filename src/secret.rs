//! Secret-holding strings and `${VAR}` expansion of configuration values.
//!
//! Every string in `config.toml` is read through [`Expanded`], which replaces `${VAR}` and
//! `${VAR:-default}` with the environment's value while deserialising, so an unset variable is
//! reported with the exact key that used it. [`Secret`] wraps values that must never be printed:
//! its `Debug` and `Display` are redacted, and it exposes bytes only to the code that signs or
//! verifies with them.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A configuration string after `${VAR}` expansion.
#[derive(Clone, PartialEq, Eq)]
pub struct Expanded(pub String);

impl Expanded {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Expanded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Expanded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Expanded {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// Why a `${...}` reference could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpandError {
    #[error("environment variable `{0}` is not set")]
    Unset(String),
    #[error("unterminated `${{` in value")]
    Unterminated,
    #[error("invalid variable name `{0}` in `${{...}}`")]
    BadName(String),
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` (a literal `$`) using `lookup`.
pub fn expand_with(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(ExpandError::Unterminated)?;
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(ExpandError::BadName(name.to_owned()));
            }
            match (lookup(name), default) {
                (Some(value), _) if !(value.is_empty() && default.is_some()) => {
                    out.push_str(&value)
                }
                (_, Some(default)) => out.push_str(default),
                (Some(value), None) => out.push_str(&value),
                (None, None) => return Err(ExpandError::Unset(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands a value against the process environment.
pub fn expand(input: &str) -> Result<String, ExpandError> {
    expand_with(input, |name| std::env::var(name).ok())
}

impl<'de> Deserialize<'de> for Expanded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpandedVisitor;

        impl Visitor<'_> for ExpandedVisitor {
            type Value = Expanded;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Expanded, E> {
                expand(v).map(Expanded).map_err(E::custom)
            }

            // Environment overrides may arrive typed (`HOOKGATE__..=1234`): keep them as text.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Expanded, E> {
                Ok(Expanded(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Expanded, E> {
                Ok(Expanded(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Expanded, E> {
                Ok(Expanded(v.to_string()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Expanded, E> {
                Ok(Expanded(v.to_string()))
            }
        }

        deserializer.deserialize_any(ExpandedVisitor)
    }
}

/// A secret (signing key, password, token). Never printed, never compared with `==`.
#[derive(Clone, Deserialize)]
#[serde(from = "Expanded")]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes, for keying a MAC or a constant-time comparison.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret as text, for schemes that parse it (`whsec_...`).
    pub fn expose_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `sent` is this secret, compared as SHA-256 digests in constant time: the time
    /// taken depends neither on where the values differ nor on the secret's length (comparing
    /// the raw bytes would stop at once on a length mismatch, telling the sender the length).
    pub fn matches(&self, sent: &[u8]) -> bool {
        digest_eq(self.expose(), sent)
    }
}

/// `expected == sent` as SHA-256 digests compared in constant time (see [`Secret::matches`]).
pub fn digest_eq(expected: &[u8], sent: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let expected: [u8; 32] = Sha256::digest(expected).into();
    let sent: [u8; 32] = Sha256::digest(sent).into();
    expected.ct_eq(&sent).into()
}

impl From<Expanded> for Secret {
    fn from(value: Expanded) -> Self {
        Self(value.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A URL as it may be shown (logs, attempt records, the admin API, `hookgate check`): without
/// its query string, fragment and `user:password@`, which is where tokens live.
pub fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end], &url[scheme_end + at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_url_keeps_scheme_host_and_path_only() {
        for (url, shown) in [
            (
                "https://h.example/hooks?token=abc",
                "https://h.example/hooks",
            ),
            (
                "https://user:pw@h.example:8443/p#frag",
                "https://h.example:8443/p",
            ),
            ("http://a@b@h.example?x", "http://h.example"),
            ("https://h.example/a@b/c", "https://h.example/a@b/c"),
            ("not a url?secret", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_secret_matches_only_itself_whatever_the_length_sent() {
        let secret = Secret::new("s3cret-token");
        assert!(secret.matches(b"s3cret-token"));
        for wrong in [&b""[..], b"s3cret", b"s3cret-token2", b"S3cret-token"] {
            assert!(!secret.matches(wrong));
        }
        assert!(digest_eq(b"", b""));
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_are_expanded_and_defaults_apply_to_unset_or_empty_variables() {
        assert_eq!(expand_with("a${SET}b", env).unwrap(), "avalueb");
        assert_eq!(expand_with("${MISSING:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_with("${EMPTY:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_with("${EMPTY}", env).unwrap(), "");
        assert_eq!(expand_with("${MISSING:-}", env).unwrap(), "");
        assert_eq!(expand_with("cost $$5 $x", env).unwrap(), "cost $5 $x");
    }

    #[test]
    fn an_unset_variable_is_an_error_naming_it() {
        assert_eq!(
            expand_with("${MISSING}", env),
            Err(ExpandError::Unset("MISSING".into()))
        );
        assert_eq!(expand_with("${SET", env), Err(ExpandError::Unterminated));
        assert!(matches!(
            expand_with("${9X}", env),
            Err(ExpandError::BadName(_))
        ));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
    }
}
