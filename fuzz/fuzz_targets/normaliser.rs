//! Arbitrary bytes as a delivery body, normalised by every built-in kind.
//!
//! `parse_bytes` as JSON (and as form data); a body that parses goes through every kind of
//! `providers/` (`load_dir`): handshake, `format`, `elements`, `event_id` and `envelope`, with
//! the fixtures' headers present. Nothing may panic on any payload, and every envelope made
//! from a body the parser accepts nests within `json::MAX_ENVELOPE_DEPTH` and reads back (the
//! nesting bound, end to end).
#![no_main]

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use actix_web::http::header::HeaderMap;
use hookgate::pipeline::parse::parse_bytes;
use hookgate::provider::definition::BodyFormat;
use hookgate::provider::kind::{load_dir, Kind};
use libfuzzer_sys::fuzz_target;

struct Fixed {
    kinds: Vec<Arc<Kind>>,
    headers: HeaderMap,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../providers"));
        let mut kinds: Vec<_> = load_dir(dir).expect("built-in kinds").into_iter().collect();
        kinds.sort_by(|a, b| a.0.cmp(&b.0));
        Fixed {
            kinds: kinds.into_iter().map(|(_, k)| k).collect(),
            headers: common::fixture_headers(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixed = fixed();
    for format in [BodyFormat::Json, BodyFormat::Form] {
        let Ok(value) = parse_bytes(format, data) else {
            continue;
        };
        for kind in &fixed.kinds {
            common::normalise_all(kind, &value, &fixed.headers, data);
        }
    }
});
