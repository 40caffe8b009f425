//! Helpers shared by the fuzz targets (included with `#[path]`, not a target itself).
#![allow(dead_code)]

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use hookgate::config::DEFAULT_BATCH_MAX_EVENTS;
use hookgate::pipeline::normalise::{self, EnvelopeInfo};
use hookgate::pipeline::plan::{self, Plan};
use hookgate::provider::kind::Kind;
use hookgate::provider::source::Context;
use serde_json::Value;

/// The fixtures' `signed_at`: fixture signatures verify at this instant.
pub const NOW: i64 = 1_705_314_600;

pub const TWILIO_URL: &str = "https://hooks.example.com/webhooks/twilio";

pub fn received_at() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW, 0).expect("valid instant")
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = s {
        s = rest;
    }
    s
}

/// Splits `<header lines>\n\n<body>`; without a blank line the whole input is headers.
pub fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[]),
    }
}

/// `Name: value` lines into a header map (lines that are not valid headers are skipped; the
/// pseudo-header `@url: ...` sets the URL a URL-signing scheme checks).
pub fn parse_headers(section: &[u8], url: &mut Option<String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in section.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        if name == b"@url" {
            *url = String::from_utf8(value.to_vec()).ok();
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    headers
}

/// Every `fixtures/*/*.headers.json` merged into one map, so kinds that take the event type or
/// ID from a header (GitHub, GitLab, Shopify...) see plausible values.
pub fn fixture_headers() -> HeaderMap {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");
    let mut headers = HeaderMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures dir")
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".headers.json"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read fixture headers");
        let map: serde_json::Map<String, Value> = serde_json::from_str(&text).expect("JSON");
        for (name, value) in map {
            if let (Ok(n), Some(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                value.as_str().and_then(|v| HeaderValue::from_str(v).ok()),
            ) {
                headers.insert(n, v);
            }
        }
    }
    headers
}

/// Stages 9–11 as the gateway drives them (minus the store): the same planning step
/// (`pipeline::plan`: handshake, format, batch elements, event IDs), then every envelope.
pub fn normalise_all(kind: &Kind, value: &Value, headers: &HeaderMap, raw: &[u8]) {
    let early = plan::early_event_id(kind, headers, raw);
    match plan::plan(kind, value, headers, raw, DEFAULT_BATCH_MAX_EVENTS) {
        Plan::Handshake(handshake) => {
            // The reply itself is HTTP, built by routes::webhook; resolve what it would read.
            let root = Context {
                body: value,
                root: value,
                headers,
                query: "",
                current: None,
            };
            match &handshake.reply {
                hookgate::provider::kind::Reply::Echo { source, .. }
                | hookgate::provider::kind::Reply::HmacEcho { source, .. } => {
                    let _ = source.resolve(&root);
                }
                _ => {}
            }
        }
        Plan::Unprocessable(_) | Plan::TooManyEvents { .. } => {}
        Plan::Events(events) => {
            // The early ID, when there is one, is the one the full path computes.
            if let Some(early) = &early {
                assert_eq!(Some(early), events.events.first().map(|(_, id)| id));
            }
            for (element, event_id) in &events.events {
                let info = EnvelopeInfo {
                    id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(),
                    provider: &kind.name,
                    kind: &kind.name,
                    event_id: event_id.clone(),
                    received_at: received_at(),
                };
                if let Ok(envelope) =
                    normalise::envelope(events.rule, element, events.root, events.headers, info)
                {
                    // The envelope is stored as JSON: serialising must not fail either, and
                    // (the body having passed the parser's nesting bound) what is stored nests
                    // within the envelope bound and reads back.
                    let stored = serde_json::to_vec(&envelope).expect("an envelope serialises");
                    assert!(
                        hookgate::json::within_depth(&stored, hookgate::json::MAX_ENVELOPE_DEPTH),
                        "an envelope deeper than MAX_ENVELOPE_DEPTH"
                    );
                    hookgate::json::read::<hookgate::envelope::Envelope>(&stored)
                        .expect("a stored envelope reads back");
                }
            }
        }
    }
}
