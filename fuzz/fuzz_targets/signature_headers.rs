//! Arbitrary header values and bodies against the signature verifiers of eight kinds.
//!
//! Input: `<selector byte><Name: value lines>\n\n<body>`. The selector (mod 8) picks the kind;
//! each line becomes a header (`@url: ...` overrides the URL Twilio signs). Keys are the
//! fixtures' (`fixtures/<kind>/instance.toml`), so seeds made from the fixtures verify at
//! `NOW` and the fuzzer starts on the success path. `verify` must never panic, and no header
//! with more signatures than `MAX_SIGNATURES` may verify.
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::sync::OnceLock;

use hookgate::pipeline::signature::{Key, Message, MAX_SIGNATURES};
use hookgate::provider::kind::{load_file, Kind};
use hookgate::secret::Secret;
use libfuzzer_sys::fuzz_target;

macro_rules! provider {
    ($name:literal) => {
        ($name, concat!(env!("CARGO_MANIFEST_DIR"), "/../providers/", $name, ".toml"))
    };
}

/// (kind, definition file, secret): the order is the selector's.
const KINDS: [((&str, &str), &str); 8] = [
    (provider!("stripe"), "whsec_fixtureStripeSecret0000000000"),
    (
        provider!("paddle"),
        "pdl_ntfset_01hm0fxtr3p4dd13s3cr3t000000_Fixture0Paddle0Secret0Key00000",
    ),
    (
        provider!("standard-webhooks"),
        "whsec_b+QiJVs4HBGc3+5mM/08ng0iJUKAukZA5C5EuSNmvxY=",
    ),
    (provider!("slack"), "fixture0slack0signing0secret0000"),
    (provider!("twilio"), "fixture0twilio0auth0token000000"),
    // Ed25519 public key, 64 hex digits (Discord's format).
    (
        provider!("discord"),
        "c8f8f83163eed9033f14993513a10261b4f37f83e5d9139405078fbe0fa16d31",
    ),
    // P-256 public key, base64 DER SubjectPublicKeyInfo (SendGrid's format).
    (
        provider!("sendgrid"),
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7YMv4d9bKC0KW1Pj0aIu794YNKEJ+AB0sKXo8CI9pwaNz3Ea7S2ZMiimnlhiL7PilY2DubD7TrIxZP4UyhGhmQ==",
    ),
    (provider!("mailgun"), "fixture-mailgun-webhook-signing-key-0000"),
];

struct Loaded {
    kind: Kind,
    keys: Vec<Key>,
}

fn loaded() -> &'static [Loaded] {
    static LOADED: OnceLock<Vec<Loaded>> = OnceLock::new();
    LOADED.get_or_init(|| {
        KINDS
            .iter()
            .map(|((name, path), secret)| {
                let kind = load_file(Path::new(path), name)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let keys = kind
                    .scheme
                    .compile_keys(&[Secret::new(*secret)])
                    .unwrap_or_else(|e| panic!("{name} key: {e}"));
                Loaded { kind, keys }
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let all = loaded();
    let target = &all[selector as usize % all.len()];
    let (head, body) = common::split_input(rest);
    let mut url = Some(common::TWILIO_URL.to_owned());
    let headers = common::parse_headers(head, &mut url);
    let message = Message::new(&headers, body, url.as_deref());
    // The multi-signature bound: no header with more entries than MAX_SIGNATURES verifies.
    let entries = |name: &str, separator: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map_or(0, |v| v.split(separator).filter(|e| !e.trim().is_empty()).count())
    };
    let over_bound = match target.kind.name.as_str() {
        "standard-webhooks" => entries("webhook-signature", " ").max(entries("svix-signature", " ")),
        "stripe" => entries("stripe-signature", ","),
        "paddle" => entries("paddle-signature", ";"),
        _ => 0,
    } > MAX_SIGNATURES + 1;
    // The gateway's own call, then extremes of clock and tolerance (arithmetic on timestamps).
    for (tolerance, now) in [
        (300, common::NOW),
        (u64::MAX, i64::MIN),
        (0, i64::MAX),
    ] {
        let verified = target.kind.scheme.verify(&message, &target.keys, tolerance, now);
        assert!(
            !(over_bound && verified.is_ok()),
            "a header with more than MAX_SIGNATURES signatures verified"
        );
    }
});
