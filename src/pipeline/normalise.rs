//! Stages 10–11: the event ID and the envelope, driven by the kind's [`EventRule`].
//!
//! The event ID is the provider's own when the payload or headers carry one; otherwise a stable
//! key hashed from the fields that identify the event (`id_derive`), or from the raw body. The
//! envelope follows DESIGN §2: `type` keeps the provider's words, `action` is canonical unless the
//! kind opts out, and deletes carry their last state in `previous` with `current` null.

use actix_web::http::header::HeaderMap;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::envelope::{
    canonical_action, format_millis, parse_occurred_at, Envelope, ACTION_DELETED,
};
use crate::provider::kind::{ChangesRule, EventRule};
use crate::provider::source::{Context, Sources};

/// Prefix of event IDs hookgate derived itself.
pub const DERIVED_ID_PREFIX: &str = "derived:";
/// Provider event IDs longer than this are replaced by their hash (keys stay small).
const MAX_EVENT_ID_LEN: usize = 256;

/// Why a verified event could not become an envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormaliseError {
    #[error("the payload matches none of the kind's event formats")]
    NoFormat,
    #[error("no event type found")]
    MissingType,
    #[error("cannot tell object and action apart in event type `{0}`")]
    NoObjectAction(String),
    #[error("the batch at `{0}` is not an array")]
    NotABatch(String),
    #[error("the batch at `{0}` holds no events")]
    EmptyBatch(String),
    /// One element of a batch; the batch is refused as a whole (it is stored in one commit).
    #[error("event {index} of the batch (`{batch}/{index}`): {cause}")]
    Element {
        index: usize,
        batch: String,
        cause: Box<NormaliseError>,
    },
}

/// The events in a payload: the elements of the rule's batch array, or the body itself.
pub fn elements<'v>(rule: &EventRule, body: &'v Value) -> Result<Vec<&'v Value>, NormaliseError> {
    match &rule.batch {
        None => Ok(vec![body]),
        Some(pointer) => match body.pointer(pointer) {
            Some(Value::Array(items)) => Ok(items.iter().collect()),
            _ => Err(NormaliseError::NotABatch(pointer.clone())),
        },
    }
}

fn derive(values: impl Iterator<Item = Vec<u8>>) -> String {
    let mut hasher = Sha256::new();
    for value in values {
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(&value);
    }
    let digest = hasher.finalize();
    format!("{DERIVED_ID_PREFIX}{}", hex::encode(&digest[..16]))
}

/// The event's ID: provider's own, derived from `id_derive`, or a hash of the raw body (of the
/// element, inside a batch).
pub fn event_id(rule: Option<&EventRule>, ctx: &Context<'_>, raw_body: &[u8]) -> String {
    if rule.is_some_and(|r| r.batch.is_some()) && !std::ptr::eq(ctx.body, ctx.root) {
        let element = serde_json::to_vec(ctx.body).unwrap_or_default();
        return event_id_from(rule, ctx, &element);
    }
    event_id_from(rule, ctx, raw_body)
}

/// The derived ID of a batch element that repeats an earlier element's derived ID: the
/// element's position in the batch is hashed in (a resent batch keeps its order, so the same
/// element gets the same ID again).
pub fn with_position(derived: &str, position: usize) -> String {
    derive(
        [
            derived.as_bytes().to_vec(),
            position.to_string().into_bytes(),
        ]
        .into_iter(),
    )
}

/// A provider's event ID as kept: as sent, or its hash when it is absurdly long.
pub fn bounded_event_id(id: String) -> String {
    if id.len() > MAX_EVENT_ID_LEN {
        derive(std::iter::once(id.into_bytes()))
    } else {
        id
    }
}

fn event_id_from(rule: Option<&EventRule>, ctx: &Context<'_>, raw_body: &[u8]) -> String {
    if let Some(rule) = rule {
        if let Some(id) = rule.id.first_text(ctx) {
            return bounded_event_id(id);
        }
        let parts: Vec<Option<Vec<u8>>> = rule
            .id_derive
            .0
            .iter()
            .map(|s| s.resolve(ctx).map(|v| v.to_string().into_bytes()))
            .collect();
        if parts.iter().any(Option::is_some) {
            // What tells identical batch elements apart joins the hash only when present, so
            // the IDs of events that never carried it stay what they were.
            let distinct = rule
                .id_distinct
                .0
                .iter()
                .filter_map(|s| s.resolve(ctx).map(|v| v.to_string().into_bytes()));
            return derive(
                parts
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .chain(distinct),
            );
        }
    }
    derive(std::iter::once(raw_body.to_vec()))
}

/// `{"title": {"previous": "Old", "current": "New"}}` → `{"title": "Old"}` (GitLab's `changes`).
fn previous_from_changes(changes: &ChangesRule, ctx: &Context<'_>) -> Option<Value> {
    let Value::Object(fields) = changes.source.resolve(ctx)?.into_owned() else {
        return None;
    };
    let previous: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(field, change)| Some((field, change.get(&changes.key)?.clone())))
        .collect();
    (!previous.is_empty()).then_some(Value::Object(previous))
}

/// What the envelope needs besides the payload.
pub struct EnvelopeInfo<'a> {
    pub id: String,
    pub provider: &'a str,
    pub kind: &'a str,
    pub event_id: String,
    pub received_at: chrono::DateTime<chrono::Utc>,
}

fn first_owned(sources: &Sources, ctx: &Context<'_>) -> Option<Value> {
    sources.first(ctx).map(|v| v.into_owned())
}

/// Builds the envelope for one event (`body` is the element inside a batch).
pub fn envelope(
    rule: &EventRule,
    body: &Value,
    root: &Value,
    headers: &HeaderMap,
    info: EnvelopeInfo<'_>,
) -> Result<Envelope, NormaliseError> {
    let ctx = Context {
        body,
        root,
        headers,
        query: "",
        current: None,
    };
    let parts: Vec<String> = rule
        .type_parts
        .iter()
        .filter_map(|part| part.first_text(&ctx))
        .collect();
    if parts.is_empty() {
        return Err(NormaliseError::MissingType);
    }
    let event_type = parts.join(&rule.type_separator);

    let (object, raw_action) = if rule.object.is_empty() {
        match rule.split.apply(&event_type) {
            Some((object, action)) => (object.to_owned(), Some(action.to_owned())),
            None => (event_type.clone(), None),
        }
    } else {
        (
            rule.object
                .first_text(&ctx)
                .ok_or_else(|| NormaliseError::NoObjectAction(event_type.clone()))?,
            // With `object` alone, the action is the split type's (Stripe thin events).
            rule.action.first_text(&ctx).or_else(|| {
                rule.split
                    .apply(&event_type)
                    .map(|(_, action)| action.to_owned())
            }),
        )
    };
    let raw_action = raw_action
        .or_else(|| rule.default_action.clone())
        .ok_or_else(|| NormaliseError::NoObjectAction(event_type.clone()))?;
    let raw_action = rule.actions.get(&raw_action).cloned().unwrap_or(raw_action);
    let action = if rule.canonicalise {
        canonical_action(&raw_action).to_owned()
    } else {
        raw_action
    };

    let mut current = match rule.current_by_object.get(&object) {
        Some(source) => source.resolve(&ctx).map(|v| v.into_owned()),
        None => first_owned(&rule.current, &ctx),
    };
    let mut previous = first_owned(&rule.previous, &ctx).or_else(|| {
        rule.previous_changes
            .as_ref()
            .and_then(|changes| previous_from_changes(changes, &ctx))
    });
    let with_current = Context {
        current: current.as_ref(),
        ..ctx
    };
    let object_id = rule.object_id.first_text(&with_current);
    let occurred_at = rule
        .occurred_at
        .0
        .iter()
        .filter_map(|s| s.resolve(&with_current))
        .find_map(|v| parse_occurred_at(&v));
    let mut meta = Map::new();
    for (name, field) in &rule.meta {
        if let Some(value) = field
            .sources
            .first(&with_current)
            .and_then(|v| field.apply(v.into_owned()))
        {
            meta.insert(name.clone(), value);
        }
    }
    if action == ACTION_DELETED {
        // After a delete there is no current state; what was deleted is the previous state.
        let last = current.take();
        if previous.is_none() {
            previous = last;
        }
    }

    Ok(Envelope {
        id: info.id,
        provider: info.provider.to_owned(),
        kind: info.kind.to_owned(),
        event_id: info.event_id,
        event_type,
        action,
        object,
        object_id,
        current,
        previous,
        occurred_at,
        received_at: format_millis(info.received_at),
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(toml_text: &str) -> EventRule {
        let text = format!("[signature]\nscheme = \"basic\"\n[[event]]\n{toml_text}");
        let def: crate::provider::definition::Definition = toml::from_str(&text).unwrap();
        crate::provider::kind::compile("t", def)
            .unwrap()
            .formats
            .remove(0)
    }

    fn info() -> EnvelopeInfo<'static> {
        EnvelopeInfo {
            id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(),
            provider: "p",
            kind: "t",
            event_id: "e".into(),
            received_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    #[test]
    fn a_deleted_event_moves_its_state_to_previous() {
        let r = rule(
            r#"type = ["/type"]
            current = ["/data/object"]
            previous = ["/data/previous_attributes"]
            object_id = ["current:/id"]"#,
        );
        let body = json!({"type": "customer.deleted", "data": {"object": {"id": "cus_1"}}});
        let e = envelope(&r, &body, &body, &HeaderMap::new(), info()).unwrap();
        assert_eq!(
            (e.object.as_str(), e.action.as_str()),
            ("customer", "deleted")
        );
        assert_eq!(e.current, None);
        assert_eq!(e.previous, Some(json!({"id": "cus_1"})));
        assert_eq!(e.object_id.as_deref(), Some("cus_1"));
    }

    #[test]
    fn a_type_without_an_action_uses_the_default_or_is_refused() {
        let r = rule(r#"type = ["/type"]"#);
        let body = json!({"type": "push"});
        assert_eq!(
            envelope(&r, &body, &body, &HeaderMap::new(), info()).unwrap_err(),
            NormaliseError::NoObjectAction("push".into())
        );
        let r = rule("type = [\"/type\"]\ndefault_action = \"received\"");
        let e = envelope(&r, &body, &body, &HeaderMap::new(), info()).unwrap();
        assert_eq!((e.object.as_str(), e.action.as_str()), ("push", "received"));
        assert_eq!(
            envelope(&r, &json!({}), &json!({}), &HeaderMap::new(), info()).unwrap_err(),
            NormaliseError::MissingType
        );
    }

    #[test]
    fn derived_ids_are_stable_and_depend_only_on_the_chosen_fields() {
        let r = rule(
            r#"type = ["/type"]
            id_derive = ["/meta/id", "/meta/ts"]"#,
        );
        let headers = HeaderMap::new();
        let a = json!({"meta": {"id": 1, "ts": 5}, "retry": 0});
        let b = json!({"meta": {"id": 1, "ts": 5}, "retry": 3});
        let c = json!({"meta": {"id": 1, "ts": 6}, "retry": 0});
        let id = |v: &Value| {
            event_id(
                Some(&r),
                &Context {
                    body: v,
                    root: v,
                    headers: &headers,
                    query: "",
                    current: None,
                },
                b"",
            )
        };
        assert_eq!(id(&a), id(&b));
        assert_ne!(id(&a), id(&c));
        assert!(id(&a).starts_with(DERIVED_ID_PREFIX));
    }

    /// Deterministic xorshift64* for the property test below.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A value nesting exactly `depth` levels (arrays and objects, chosen at random).
    fn nested(gen: &mut Gen, depth: usize) -> Value {
        let mut value = match gen.below(3) {
            0 => json!("leaf"),
            1 => json!(gen.below(1000)),
            _ => Value::Null,
        };
        for _ in 0..depth {
            value = if gen.below(2) == 0 {
                json!([value])
            } else {
                json!({ "k": value })
            };
        }
        value
    }

    /// Every pointer in `value` with the number of arrays and objects around it.
    fn pointers(value: &Value, at: String, above: usize, out: &mut Vec<(String, usize)>) {
        out.push((at.clone(), above));
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    pointers(child, format!("{at}/{key}"), above + 1, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    pointers(child, format!("{at}/{i}"), above + 1, out);
                }
            }
            _ => {}
        }
    }

    /// The nesting bound holds end to end for every committed kind: a fixture body with a
    /// value anywhere replaced by one nesting to exactly the body limit still parses, every
    /// envelope made from it nests at most `MAX_ENVELOPE_DEPTH` and reads back unchanged, and
    /// one level more is refused at parse.
    #[test]
    fn envelopes_of_bodies_at_the_nesting_limit_stay_within_the_read_limit_property() {
        use crate::json::{self, MAX_BODY_DEPTH, MAX_ENVELOPE_DEPTH};
        use crate::pipeline::parse::{parse_bytes, ParseError};
        use crate::pipeline::plan::{plan, Plan};
        use crate::provider::definition::BodyFormat;
        use actix_web::http::header::{HeaderName, HeaderValue};

        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let kinds = crate::provider::kind::load_dir(&root.join("providers")).unwrap();
        let sets = crate::fixture::discover(&[root.join("fixtures")]).unwrap();
        let mut gen = Gen(0x6e65_7374);
        let mut checked = 0;
        for set in &sets {
            let kind = &kinds[&set.kind];
            for case in &set.cases {
                let Ok(original) = serde_json::from_slice::<Value>(&case.body) else {
                    continue; // a form body: one level of strings
                };
                let mut headers = HeaderMap::new();
                for (name, value) in &case.headers {
                    headers.insert(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_str(value).unwrap(),
                    );
                }
                let mut spots = Vec::new();
                pointers(&original, String::new(), 0, &mut spots);
                for round in 0..25 {
                    let (at, above) = spots[gen.below(spots.len())].clone();
                    let what = format!("{}/{} round {round} at `{at}`", set.kind, case.name);
                    let mut body = original.clone();
                    let deep = nested(&mut gen, MAX_BODY_DEPTH - above);
                    *body.pointer_mut(&at).unwrap() = deep;
                    let bytes = serde_json::to_vec(&body).unwrap();
                    let parsed = parse_bytes(BodyFormat::Json, &bytes)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let mut deeper = original.clone();
                    *deeper.pointer_mut(&at).unwrap() =
                        nested(&mut gen, MAX_BODY_DEPTH - above + 1);
                    assert!(
                        matches!(
                            parse_bytes(BodyFormat::Json, &serde_json::to_vec(&deeper).unwrap()),
                            Err(ParseError::TooDeep { .. })
                        ),
                        "{what}: one level more is refused"
                    );
                    let Plan::Events(events) = plan(kind, &parsed, &headers, &bytes, 1000) else {
                        continue;
                    };
                    for (element, event_id) in &events.events {
                        let info = EnvelopeInfo {
                            id: "01HZZZZZZZZZZZZZZZZZZZZZZZ".into(),
                            provider: "p",
                            kind: &kind.name,
                            event_id: event_id.clone(),
                            received_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
                        };
                        let Ok(envelope) =
                            envelope(events.rule, element, events.root, events.headers, info)
                        else {
                            continue;
                        };
                        let stored = serde_json::to_vec(&envelope).unwrap();
                        assert!(
                            json::within_depth(&stored, MAX_ENVELOPE_DEPTH),
                            "{what}: the envelope nests deeper than {MAX_ENVELOPE_DEPTH}"
                        );
                        let read: Envelope = json::read(&stored).unwrap();
                        assert_eq!(read, envelope, "{what}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 300, "only {checked} envelopes were checked");
    }
}
