//! Arbitrary bytes as a provider definition (`providers/<kind>.toml`).
//!
//! Parsed as `load_file` parses (TOML into `Definition`), compiled with `kind::compile`, and a
//! kind that compiles is then used the way startup and the request path use it: keys compiled
//! from secrets of every format, a fixed delivery signed and verified, and the normaliser run
//! over fixed payloads. Nothing may panic: a definition the operator wrote must fail with a
//! compile error, never crash the gateway at startup or on a request.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use actix_web::http::header::HeaderMap;
use hookgate::pipeline::signature::{apply_headers, Message, SignInput};
use hookgate::provider::definition::Definition;
use hookgate::provider::kind::compile;
use hookgate::secret::Secret;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Secrets in each format some scheme accepts: shared, whsec_, Ed25519 public (hex), P-256
/// public (base64 DER).
const VERIFY_SECRETS: [&str; 4] = [
    "fixture-generic-secret",
    "whsec_b+QiJVs4HBGc3+5mM/08ng0iJUKAukZA5C5EuSNmvxY=",
    "c8f8f83163eed9033f14993513a10261b4f37f83e5d9139405078fbe0fa16d31",
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7YMv4d9bKC0KW1Pj0aIu794YNKEJ+AB0sKXo8CI9pwaNz3Ea7S2ZMiimnlhiL7PilY2DubD7TrIxZP4UyhGhmQ==",
];

/// Signing counterparts: shared, whsec_, Ed25519 seed (hex), P-256 scalar (hex).
const SIGN_SECRETS: [&str; 4] = [
    "fixture-generic-secret",
    "whsec_b+QiJVs4HBGc3+5mM/08ng0iJUKAukZA5C5EuSNmvxY=",
    "b52956e4e14e9b52975012205d4408bf0886921ce20d6c48cd20640d622b460c",
    "64286b6fa331b7319152e64b988253baf0bc2fa116b58cf9459cb7ef525e5dae",
];

const BODIES: [&[u8]; 3] = [
    include_bytes!("../../fixtures/generic/post_updated.json"),
    include_bytes!("../../fixtures/sendgrid/batch_processed_delivered_open.json"),
    include_bytes!("../../fixtures/gitlab/issue_update_token.json"),
];

struct Fixed {
    headers: HeaderMap,
    bodies: Vec<(&'static [u8], Value)>,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| Fixed {
        headers: common::fixture_headers(),
        bodies: BODIES
            .iter()
            .map(|b| (*b, serde_json::from_slice(b).expect("fixture JSON")))
            .collect(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(definition) = toml::from_str::<Definition>(text) else {
        return;
    };
    let Ok(kind) = compile("fuzz", definition) else {
        return;
    };
    let fixed = fixed();

    // Startup: what registry::Registry::build asks of a kind.
    let _ = (
        kind.scheme.needs_secrets(),
        kind.scheme.needs_basic_auth(),
        kind.scheme.needs_url(),
        kind.scheme.default_tolerance_secs(),
        kind.scheme.secret_headers(),
        kind.scheme.signature_headers(),
    );
    let secrets: Vec<Secret> = VERIFY_SECRETS.iter().map(|s| Secret::new(*s)).collect();
    let keys: Vec<_> = secrets
        .iter()
        .filter_map(|s| kind.scheme.compile_keys(std::slice::from_ref(s)).ok())
        .flatten()
        .collect();
    let _ = kind.scheme.compile_keys(&secrets);

    // Request path: a delivery signed as the provider would (hookgate sign), then verified.
    let (raw, value) = &fixed.bodies[data.len() % fixed.bodies.len()];
    let url = Some("https://hooks.example.com/webhooks/fuzz?bodySHA256=00");
    for secret in SIGN_SECRETS {
        let input = SignInput {
            body: raw,
            headers: &fixed.headers,
            timestamp: common::received_at(),
            url,
        };
        let Ok(signed) = kind.scheme.sign(&Secret::new(secret), &input) else {
            continue;
        };
        let mut headers = fixed.headers.clone();
        if apply_headers(&mut headers, &signed).is_err() {
            continue;
        }
        let body = signed.body.as_deref().unwrap_or(raw);
        let message = Message::new(&headers, body, url);
        let _ = kind
            .scheme
            .verify(&message, &keys, kind.scheme.default_tolerance_secs(), common::NOW);
    }
    let message = Message::new(&fixed.headers, raw, url);
    let _ = kind.scheme.verify(&message, &keys, 300, common::NOW);

    // Stages 9–11 with the fuzzed event rules.
    common::normalise_all(&kind, value, &fixed.headers, raw);
});
