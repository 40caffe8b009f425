//! Stages 9–10 without side effects: what a verified, parsed body asks for. A handshake to
//! answer, events (each with its event ID) to claim and store, or a body that cannot be
//! normalised. [`crate::ingest`] carries out the plan; the fuzz target calls [`plan`] too.

use actix_web::http::header::HeaderMap;
use serde_json::Value;

use super::normalise::{self, NormaliseError};
use crate::provider::kind::{EventRule, Handshake, Kind};
use crate::provider::source::{text_of, Context, Source};

/// What to do with a verified body.
#[derive(Debug)]
pub enum Plan<'a> {
    /// Stage 9: answer as the provider requires; nothing is stored.
    Handshake(&'a Handshake),
    /// Stages 10–13: claim, normalise and store these events.
    Events(Events<'a>),
    /// Stage 11 cannot succeed: keep the receipt for inspection, answer 422.
    Unprocessable(NormaliseError),
    /// A batch of more events than the instance takes in one delivery: refused (413) before
    /// any event ID is computed, nothing stored.
    TooManyEvents { count: usize, limit: usize },
}

/// The events of one body.
#[derive(Debug)]
pub struct Events<'a> {
    pub rule: &'a EventRule,
    /// The whole body.
    pub root: &'a Value,
    pub headers: &'a HeaderMap,
    /// One per event: the element (the body itself unless it is a batch) and its event ID.
    pub events: Vec<(&'a Value, String)>,
    /// The body is a batch: the answer lists every event.
    pub is_batch: bool,
    /// A value the kind accepts once only (Mailgun's token).
    pub replay_guard: Option<String>,
}

/// Plans a verified body. `raw` is the exact bytes (event IDs may be hashed from them); a
/// batch of more than `max_events` elements is [`Plan::TooManyEvents`].
pub fn plan<'a>(
    kind: &'a Kind,
    root: &'a Value,
    headers: &'a HeaderMap,
    raw: &[u8],
    max_events: usize,
) -> Plan<'a> {
    let ctx = Context::whole(root, headers, "");
    if let Some(handshake) = kind.handshake(&ctx) {
        return Plan::Handshake(handshake);
    }
    let Some(rule) = kind.format(&ctx) else {
        return Plan::Unprocessable(NormaliseError::NoFormat);
    };
    let elements = match normalise::elements(rule, root) {
        Ok(elements) => elements,
        Err(e) => return Plan::Unprocessable(e),
    };
    if let (Some(pointer), true) = (&rule.batch, elements.is_empty()) {
        return Plan::Unprocessable(NormaliseError::EmptyBatch(pointer.clone()));
    }
    if elements.len() > max_events {
        return Plan::TooManyEvents {
            count: elements.len(),
            limit: max_events,
        };
    }
    // Derived IDs repeated inside one batch are told apart by position (provider IDs that
    // repeat are the same event twice, and stay so).
    let mut seen = std::collections::HashSet::new();
    let events = elements
        .into_iter()
        .enumerate()
        .map(|(position, element)| {
            let ctx = Context {
                body: element,
                ..ctx
            };
            let mut id = normalise::event_id(Some(rule), &ctx, raw);
            if rule.batch.is_some()
                && id.starts_with(normalise::DERIVED_ID_PREFIX)
                && !seen.insert(id.clone())
            {
                id = normalise::with_position(&id, position);
                seen.insert(id.clone());
            }
            (element, id)
        })
        .collect();
    let replay_guard = kind
        .scheme
        .replay_guard()
        .and_then(|source| source.resolve(&ctx))
        .and_then(|v| text_of(&v));
    Plan::Events(Events {
        rule,
        root,
        headers,
        events,
        is_batch: rule.batch.is_some(),
        replay_guard,
    })
}

/// The event ID before the body is parsed, when the kind takes it from a header that is
/// present and the body cannot change the plan: no handshakes, one format for every body, no
/// batch. Then a duplicate is answered without parsing at all.
pub fn header_event_id(kind: &Kind, headers: &HeaderMap) -> Option<String> {
    let [rule] = kind.formats.as_slice() else {
        return None;
    };
    if !kind.handshakes.is_empty() || rule.when.is_some() || rule.batch.is_some() {
        return None;
    }
    let Some(Source::Header(name)) = rule.id.0.first() else {
        return None;
    };
    // Exactly as the body-parsing path resolves it (`Sources::first_text`).
    let value = headers.get(name)?.to_str().ok()?;
    if value.is_empty() {
        return None;
    }
    Some(normalise::bounded_event_id(value.to_owned()))
}
