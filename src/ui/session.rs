//! Dashboard sessions and CSRF tokens, with no server-side state.
//!
//! Signing in with the admin token sets the cookie `hookgate_session` =
//! `v1.<session id>.<expiry unix secs>.<MAC>`, where the MAC is HMAC-SHA256 under a key derived
//! from the admin token (HMAC of a fixed label keyed by the token). Every replica that shares
//! the token checks it without shared state, so sessions work behind a load balancer in front
//! of several PostgreSQL-backed replicas. Sessions end after [`SESSION_TTL`] whatever happens;
//! rotating `[admin] token` ends every session at once.
//!
//! Sign-out clears the cookie and puts its session id on this replica's revocation list until
//! it would have expired; other replicas do not see that list, so a cookie copied before
//! sign-out stays valid on them until its expiry (or a token rotation). That is the price of
//! needing no shared state, and it is written in the README.
//!
//! The CSRF token of a session is HMAC(key, "csrf" ‖ session id): every form carries it as the
//! hidden field `csrf`, and a POST whose field does not match its session's is refused (403).
//! Both MACs are compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The cookie's name.
pub const COOKIE: &str = "hookgate_session";
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Revoked sessions remembered at most (sign-outs within [`SESSION_TTL`]); beyond it the
/// oldest revocations are forgotten first.
const MAX_REVOKED: usize = 10_000;

type HmacSha256 = Hmac<Sha256>;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Random, hex; names the session in the revocation list and keys its CSRF token.
    pub id: String,
    /// Unix seconds.
    pub expires: i64,
}

/// The signing key and the revocation list.
pub struct Sessions {
    key: [u8; 32],
    revoked: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions { key: <redacted> }")
    }
}

impl Sessions {
    /// The key is derived from the admin token, so the token itself never signs anything the
    /// browser holds and a rotation invalidates every cookie.
    pub fn new(token: &Secret) -> Self {
        let mut mac = HmacSha256::new_from_slice(token.expose()).expect("HMAC takes any key");
        mac.update(b"hookgate dashboard session key v1");
        Self {
            key: mac.finalize().into_bytes().into(),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key");
        for part in parts {
            mac.update(part);
            mac.update(b"\0");
        }
        mac
    }

    /// A new session from now, and its cookie value.
    pub fn issue(&self, now_secs: i64) -> (Session, String) {
        let id = hex::encode(ulid::Ulid::new().to_bytes());
        let expires = now_secs + SESSION_TTL.as_secs() as i64;
        let payload = format!("v1.{id}.{expires}");
        let tag = b64(&self.mac(&[payload.as_bytes()]).finalize().into_bytes());
        (Session { id, expires }, format!("{payload}.{tag}"))
    }

    /// The session a cookie value proves: signed by this key, not expired, not signed out.
    pub fn verify(&self, value: &str, now_secs: i64) -> Option<Session> {
        let (payload, tag) = value.rsplit_once('.')?;
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .ok()?;
        self.mac(&[payload.as_bytes()]).verify_slice(&tag).ok()?;
        let mut parts = payload.split('.');
        let (Some("v1"), Some(id), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let expires: i64 = expires.parse().ok()?;
        if expires <= now_secs {
            return None;
        }
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        if revoked.contains_key(id) {
            return None;
        }
        Some(Session {
            id: id.to_owned(),
            expires,
        })
    }

    /// Sign-out: this session is refused here from now on.
    pub fn revoke(&self, session: &Session, now_secs: i64) {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.retain(|_, expires| *expires > now_secs);
        if revoked.len() >= MAX_REVOKED {
            if let Some(oldest) = revoked
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(id, _)| id.clone())
            {
                revoked.remove(&oldest);
            }
        }
        revoked.insert(session.id.clone(), session.expires);
    }

    /// The CSRF token forms of this session carry.
    pub fn csrf(&self, session: &Session) -> String {
        b64(&self
            .mac(&[b"csrf", session.id.as_bytes()])
            .finalize()
            .into_bytes())
    }

    /// Whether `sent` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, session: &Session, sent: &str) -> bool {
        let Ok(sent) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sent) else {
            return false;
        };
        self.mac(&[b"csrf", session.id.as_bytes()])
            .verify_slice(&sent)
            .is_ok()
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// `Set-Cookie` for a session (`value`), or one that clears it (`None`). `secure` adds the
/// `Secure` attribute (the request came over HTTPS, see [`super::is_https`]).
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(value) => format!(
            "{COOKIE}={value}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
            SESSION_TTL.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(token: &str) -> Sessions {
        Sessions::new(&Secret::from(crate::secret::Expanded(token.into())))
    }

    #[test]
    fn a_session_verifies_until_it_expires_or_is_revoked() {
        let s = sessions("token");
        let (session, cookie) = s.issue(1000);
        assert_eq!(s.verify(&cookie, 1001), Some(session.clone()));
        assert_eq!(s.verify(&cookie, session.expires), None);
        s.revoke(&session, 1002);
        assert_eq!(s.verify(&cookie, 1003), None);
    }

    #[test]
    fn a_forged_or_foreign_cookie_is_refused() {
        let s = sessions("token");
        let (session, cookie) = s.issue(1000);
        // Another token's key (a rotation) signs different cookies.
        assert_eq!(sessions("other").verify(&cookie, 1001), None);
        // A longer expiry with the old MAC.
        let (_, tag) = cookie.rsplit_once('.').unwrap();
        let forged = format!("v1.{}.{}.{tag}", session.id, session.expires + 1000);
        assert_eq!(s.verify(&forged, 1001), None);
        for junk in ["", ".", "v1", "v1.a.b.c", "v1..1.", "x.y.z.%%%"] {
            assert_eq!(s.verify(junk, 1001), None, "{junk}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let s = sessions("token");
        let (a, _) = s.issue(1000);
        let (b, _) = s.issue(1000);
        let token = s.csrf(&a);
        assert!(s.csrf_matches(&a, &token));
        assert!(!s.csrf_matches(&b, &token));
        assert!(!s.csrf_matches(&a, ""));
        assert!(!s.csrf_matches(&a, "not base64 !"));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let header = "a=1; hookgate_session=v1.x.2.y; b=3";
        assert_eq!(cookie_value(header, COOKIE), Some("v1.x.2.y"));
        assert_eq!(cookie_value("hookgate_sessionx=1", COOKIE), None);
        assert!(set_cookie(Some("v"), true).contains("HttpOnly; SameSite=Strict; Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }
}
