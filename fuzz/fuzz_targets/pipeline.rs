//! The request path in-process, for the `generic` kind, from the signature stage on.
//!
//! The fuzz input is the body. It is signed the way a sender would (HMAC-SHA256 with the
//! instance's secret, computed here independently of hookgate), so `signature::verify` must
//! accept it; then `parse::parse` and stages 9–11 run through the gateway's own planning step.
//! A correctly signed body that is refused, or any panic, is a bug.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::{Arc, OnceLock};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use actix_web::web::Bytes;
use hmac::{Hmac, Mac};
use hookgate::config::DeliveryMode;
use hookgate::pipeline::signature::verify;
use hookgate::pipeline::{parse, Received};
use hookgate::provider::kind::load_file;
use hookgate::provider::registry::Instance;
use hookgate::secret::Secret;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fixture-generic-secret";

fn instance() -> Arc<Instance> {
    static INSTANCE: OnceLock<Arc<Instance>> = OnceLock::new();
    INSTANCE
        .get_or_init(|| {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../providers/generic.toml");
            let kind = load_file(std::path::Path::new(path), "generic").expect("generic kind");
            let secrets = vec![Secret::new(SECRET)];
            let keys = kind.scheme.compile_keys(&secrets).expect("keys");
            Arc::new(Instance {
                name: "generic".into(),
                tolerance_secs: kind.scheme.default_tolerance_secs(),
                require_timestamp: false,
                kind: Arc::new(kind),
                secrets,
                keys,
                public_url: None,
                verify_token: None,
                allow_ips: Vec::new(),
                limiter: None,
                rate_limit_status: actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                basic_auth: None,
                body_limit: 1 << 20,
                mode: DeliveryMode::Async,
                reply_from: None,
                batch_max_events: hookgate::config::DEFAULT_BATCH_MAX_EVENTS,
            })
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let instance = instance();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key");
    mac.update(data);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let mut headers = HeaderMap::new();
    let h = |s: &'static str| HeaderName::from_static(s);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(h("x-webhook-signature"), signature.parse().expect("ascii"));
    headers.insert(
        h("x-webhook-timestamp"),
        common::NOW.to_string().parse().expect("ascii"),
    );
    let received = Received {
        instance: instance.clone(),
        headers: &headers,
        query: "",
        body: Bytes::copy_from_slice(data),
        client_ip: None,
        received_at: common::received_at(),
    };
    let verified = match verify(received, common::NOW) {
        Ok(v) => v,
        Err(e) => panic!("a correctly signed body was refused: {e}"),
    };
    let Ok(value) = parse::parse(&verified) else {
        return;
    };
    common::normalise_all(&instance.kind, &value, verified.headers, &verified.body);
});
