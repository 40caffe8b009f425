//! Stages 4–6: who is calling and whether they may. Client IP (proxy-aware), CIDR allowlist,
//! per-client rate limit (GCRA via `governor`) and HTTP Basic Auth in constant time.
//!
//! The client IP is the TCP peer unless the peer is a trusted proxy; then the right-most address
//! in the configured header (`X-Forwarded-For` or `Forwarded: for=`, `server.forwarded_header`)
//! that is not itself a trusted proxy is the client; the other header, when present, must agree.
//! A forwarded chain that cannot be parsed yields no client IP, which fails any allowlist.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{BasicAuthSettings, ForwardedHeader, RateLimitSettings};

/// `X-Forwarded-For`, set by most proxies.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// RFC 7239 `Forwarded`.
pub const FORWARDED: &str = "forwarded";
/// The `WWW-Authenticate` challenge sent with 401 `unauthorized`.
pub const BASIC_CHALLENGE: &str = "Basic realm=\"hookgate\", charset=\"UTF-8\"";

/// A trusted proxy's request whose `X-Forwarded-For` and `Forwarded` headers name different
/// clients: one of them was written by the client, so neither is believed (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedConflict;

/// Resolves the client address of a request that arrived from `peer`. IPv4-mapped addresses
/// (`::ffff:a.b.c.d`, what a dual-stack listener reports for IPv4 peers) are IPv4 from here on,
/// so they match IPv4 `trusted_proxies` and `allow_ips` and are stored as IPv4.
///
/// Only `source` (`server.forwarded_header`) is believed; when a trusted proxy's request also
/// carries the other header and it names a different client, the request is refused.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    source: ForwardedHeader,
) -> Result<Option<IpAddr>, ForwardedConflict> {
    let peer = canonical(peer);
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return Ok(Some(peer));
    }
    let xff = x_forwarded_for_chain(headers);
    let forwarded = forwarded_chain(headers);
    let (chosen, other) = match source {
        ForwardedHeader::XForwardedFor => (xff, forwarded),
        ForwardedHeader::Forwarded => (forwarded, xff),
    };
    let Some(chosen) = chosen else {
        return Ok(Some(peer));
    };
    let client = walk(peer, &chosen, trusted);
    if let Some(other) = other {
        if walk(peer, &other, trusted) != client {
            return Err(ForwardedConflict);
        }
    }
    Ok(client)
}

/// Walks a forwarded chain from the nearest hop outwards; the first hop not trusted is the
/// client. A hop that cannot be parsed gives no client.
fn walk(peer: IpAddr, chain: &[Option<IpAddr>], trusted: &[IpNet]) -> Option<IpAddr> {
    let mut candidate = peer;
    for hop in chain.iter().rev() {
        let ip = canonical((*hop)?);
        candidate = ip;
        if !trusted.iter().any(|net| net.contains(&ip)) {
            return Some(ip);
        }
    }
    Some(candidate)
}

/// `X-Forwarded-For` hops, left (origin) to right (nearest); `None` entries failed to parse.
fn x_forwarded_for_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let xff: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .filter_map(|v| v.to_str().ok())
        .collect();
    if xff.is_empty() {
        return None;
    }
    Some(
        xff.iter()
            .flat_map(|v| v.split(','))
            .map(|hop| parse_hop(hop.trim()))
            .collect(),
    )
}

/// RFC 7239 `Forwarded: for=` hops, left to right.
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let forwarded: Vec<&str> = headers
        .get_all(FORWARDED)
        .filter_map(|v| v.to_str().ok())
        .collect();
    if forwarded.is_empty() {
        return None;
    }
    Some(
        forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_hop(v.trim().trim_matches('"')))
            })
            .collect(),
    )
}

/// `1.2.3.4`, `1.2.3.4:567`, `[2001:db8::1]:80` or `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

/// Whether `ip` may deliver to an instance with this allowlist.
pub fn is_allowed(ip: Option<IpAddr>, allow: &[IpNet]) -> bool {
    if allow.is_empty() {
        return true;
    }
    ip.is_some_and(|ip| {
        let ip = canonical(ip);
        allow.iter().any(|net| net.contains(&ip))
    })
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The rate-limit key: IPv6 clients are limited per /64, since one host usually owns a /64.
fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Per-client GCRA limiter of one instance.
pub struct ClientLimiter {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>,
    clock: DefaultClock,
}

impl std::fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("tracked_clients", &self.limiter.len())
            .finish()
    }
}

impl ClientLimiter {
    pub fn new(settings: RateLimitSettings) -> Self {
        let period = Duration::from_secs_f64(1.0 / settings.per_second);
        let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::dashmap(quota),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(wait)` when the client must wait before its next request. Requests without a known
    /// client IP share one bucket keyed by the unspecified address.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let key = ip
            .map(limit_key)
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets clients whose bucket is full again, so memory follows recent traffic only.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked_clients(&self) -> usize {
        self.limiter.len()
    }
}

/// Configured Basic Auth credentials (one pair or several, for rotation), kept as digests so
/// comparison time does not depend on where or whether the values differ, nor on their lengths,
/// nor on which pair matched.
pub struct BasicAuth {
    pairs: Vec<([u8; 32], [u8; 32])>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({} pair(s), ***)", self.pairs.len())
    }
}

impl BasicAuth {
    pub fn new(settings: &[BasicAuthSettings]) -> Self {
        Self {
            pairs: settings
                .iter()
                .map(|s| {
                    (
                        Sha256::digest(s.username.as_str().as_bytes()).into(),
                        Sha256::digest(s.password.expose()).into(),
                    )
                })
                .collect(),
        }
    }

    /// Whether the request carries one of these pairs.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let Some((user, pass)) = basic_credentials(headers) else {
            return false;
        };
        let user: [u8; 32] = Sha256::digest(user.as_bytes()).into();
        let pass: [u8; 32] = Sha256::digest(pass.as_bytes()).into();
        // Every comparison always runs.
        let ok = self
            .pairs
            .iter()
            .fold(subtle::Choice::from(0), |ok, (u, p)| {
                ok | (user.ct_eq(u) & pass.ct_eq(p))
            });
        ok.into()
    }
}

/// `Authorization: Basic base64(user:pass)`.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(BASE64.decode(encoded.trim()).ok()?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
        map
    }

    /// The client as `X-Forwarded-For` tells it (the default), conflicts as `None`.
    fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
        super::client_ip(peer, headers, trusted, ForwardedHeader::XForwardedFor).ok()?
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_ignored() {
        let h = headers(X_FORWARDED_FOR, "203.0.113.9");
        let peer: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])), Some(peer));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        // The left-most entry is attacker-controlled; the proxy appended the real client.
        let h = headers(X_FORWARDED_FOR, "1.1.1.1, 203.0.113.9, 10.0.0.7");
        assert_eq!(
            client_ip(peer, &h, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        let h = headers(
            FORWARDED,
            r#"for=192.0.2.60;proto=http, for="[2001:db8::1]:4711""#,
        );
        assert_eq!(
            super::client_ip(peer, &h, &trusted, ForwardedHeader::Forwarded),
            Ok(Some("2001:db8::1".parse().unwrap()))
        );
        let h = headers(X_FORWARDED_FOR, "not-an-ip");
        assert_eq!(client_ip(peer, &h, &trusted), None);
    }

    #[test]
    fn only_the_configured_header_is_believed_and_the_other_must_agree() {
        let trusted = nets(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let mut h = headers(FORWARDED, "for=203.0.113.9");
        let from_forwarded =
            |h: &HeaderMap| super::client_ip(peer, h, &trusted, ForwardedHeader::Forwarded);
        assert_eq!(from_forwarded(&h), Ok(Some("203.0.113.9".parse().unwrap())));
        h.insert(
            HeaderName::from_static(X_FORWARDED_FOR),
            HeaderValue::from_static("192.0.2.1"),
        );
        assert_eq!(from_forwarded(&h), Err(ForwardedConflict));
        assert_eq!(
            super::client_ip(peer, &h, &trusted, ForwardedHeader::XForwardedFor),
            Err(ForwardedConflict)
        );
        h.insert(
            HeaderName::from_static(X_FORWARDED_FOR),
            HeaderValue::from_static("203.0.113.9"),
        );
        assert_eq!(from_forwarded(&h), Ok(Some("203.0.113.9".parse().unwrap())));
        // Only the other header: not believed, the peer is the client.
        let h = headers(X_FORWARDED_FOR, "192.0.2.1");
        assert_eq!(from_forwarded(&h), Ok(Some(peer)));
    }

    #[test]
    fn an_ipv4_mapped_peer_or_hop_counts_as_ipv4() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let h = headers(X_FORWARDED_FOR, "203.0.113.9");
        assert_eq!(
            client_ip(mapped, &h, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        let h = headers(X_FORWARDED_FOR, "::ffff:203.0.113.9, ::ffff:10.0.0.7");
        assert_eq!(
            client_ip(mapped, &h, &trusted),
            Some("203.0.113.9".parse().unwrap())
        );
        let untrusted: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(untrusted, &HeaderMap::new(), &trusted),
            Some("198.51.100.1".parse().unwrap())
        );
    }

    #[test]
    fn allowlists_match_cidrs_and_mapped_addresses() {
        let allow = nets(&["192.0.2.0/24"]);
        assert!(is_allowed(Some("192.0.2.7".parse().unwrap()), &allow));
        assert!(is_allowed(
            Some("::ffff:192.0.2.7".parse().unwrap()),
            &allow
        ));
        assert!(!is_allowed(Some("192.0.3.7".parse().unwrap()), &allow));
        assert!(!is_allowed(None, &allow));
        assert!(is_allowed(None, &[]));
    }

    #[test]
    fn basic_auth_accepts_only_the_configured_pair() {
        let auth = BasicAuth::new(&[
            BasicAuthSettings {
                username: "hooks".into(),
                password: crate::secret::Secret::new("pw"),
            },
            BasicAuthSettings {
                username: "hooks".into(),
                password: crate::secret::Secret::new("next"),
            },
        ]);
        let next = format!("Basic {}", BASE64.encode("hooks:next"));
        assert!(auth.check(&headers("authorization", &next)));
        let good = format!("Basic {}", BASE64.encode("hooks:pw"));
        assert!(auth.check(&headers("authorization", &good)));
        let bad = format!("Basic {}", BASE64.encode("hooks:px"));
        assert!(!auth.check(&headers("authorization", &bad)));
        assert!(!auth.check(&headers("authorization", "Bearer x")));
        assert!(!auth.check(&HeaderMap::new()));
    }

    #[test]
    fn the_limiter_refuses_past_the_burst_and_keys_ipv6_by_prefix() {
        let limiter = ClientLimiter::new(RateLimitSettings {
            per_second: 0.001,
            burst: 2,
            status: 429,
        });
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(limiter.check(Some(a)).is_ok());
        assert!(limiter.check(Some(b)).is_ok());
        let wait = limiter.check(Some(a)).unwrap_err();
        assert!(wait > Duration::from_secs(1));
        assert!(limiter.check(Some("192.0.2.1".parse().unwrap())).is_ok());
    }
}
