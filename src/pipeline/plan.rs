//! Stages 9–10 without side effects: what a verified, parsed body asks for. A handshake to
//! answer, events (each with its event ID) to claim and store, or a body that cannot be
//! normalised. [`crate::ingest`] carries out the plan; the fuzz target calls [`plan`] too.

use actix_web::http::header::HeaderMap;
use serde_json::Value;

use super::normalise::{self, NormaliseError};
use super::parse;
use crate::json::{self, MAX_BODY_DEPTH};
use crate::provider::definition::BodyFormat;
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

/// The kind's unsigned POST handshake this body matches (WooCommerce's ping, Notion's
/// verification token), with the body as read: JSON, else a form.
pub fn unsigned_match<'k>(
    kind: &'k Kind,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<(&'k Handshake, Value)> {
    if !kind.has_unsigned_handshakes() {
        return None;
    }
    let value = parse::parse_bytes(BodyFormat::Json, body)
        .or_else(|_| parse::parse_bytes(BodyFormat::Form, body))
        .ok()?;
    let ctx = Context::whole(&value, headers, "");
    let handshake = kind.unsigned_handshake(&ctx)?;
    Some((handshake, value))
}

/// The event ID before the body is parsed into a tree, when the body cannot change the plan
/// (no handshakes, one format for every body, no batch) and the kind's first ID source is a
/// header that is present or a top-level field of a JSON body that has it. Then a duplicate is
/// answered without building the body's tree; `None` leaves it to the full path.
pub fn early_event_id(kind: &Kind, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let [rule] = kind.formats.as_slice() else {
        return None;
    };
    if !kind.handshakes.is_empty() || rule.when.is_some() || rule.batch.is_some() {
        return None;
    }
    // Exactly as the body-parsing path resolves it (`Sources::first_text`).
    let value = match rule.id.0.first()? {
        Source::Header(name) => {
            let value = headers.get(name)?.to_str().ok()?;
            if value.is_empty() {
                return None;
            }
            value.to_owned()
        }
        Source::Body(pointer) | Source::Root(pointer) => {
            let key = pointer.strip_prefix('/')?;
            if key.contains(['/', '~']) || parse::format_of(kind.body, headers) != BodyFormat::Json
            {
                return None;
            }
            top_level_text(body, key)?
        }
        _ => return None,
    };
    Some(normalise::bounded_event_id(value))
}

/// The text of a top-level field of a JSON object, read without building the tree: other
/// values are only skipped. `None` unless `body` is JSON the full parse would accept (within
/// the depth limit, one value, nothing after it). A key given twice counts by its last value,
/// as in the parsed tree.
fn top_level_text(body: &[u8], key: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// Whether a key is the one looked for, without allocating it.
    struct IsKey<'k>(&'k str);
    impl<'de> Visitor<'de> for IsKey<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E>(self, v: &str) -> Result<bool, E> {
            Ok(v == self.0)
        }
    }
    impl<'de> DeserializeSeed<'de> for IsKey<'_> {
        type Value = bool;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }

    /// The top-level value: the looked-for field's value when it is an object that has it.
    struct Top<'k>(&'k str);
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = Option<Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(matches) = map.next_key_seed(IsKey(self.0))? {
                if matches {
                    found = Some(map.next_value::<Value>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    impl<'de> DeserializeSeed<'de> for Top<'_> {
        type Value = Option<Value>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    if !json::within_depth(body, MAX_BODY_DEPTH) {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Top(key).deserialize(&mut de).ok()?;
    de.end().ok()?;
    text_of(&value?)
}

#[cfg(test)]
mod tests {
    use super::top_level_text;

    /// What the full parse would resolve for `/key`.
    fn parsed(body: &str, key: &str) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        crate::provider::source::text_of(value.get(key)?)
    }

    #[test]
    fn the_top_level_field_reads_as_the_parsed_tree_does() {
        let bodies = [
            r#"{"id":"evt_1","data":{"id":"inner"}}"#,
            r#"{"data":{"id":"inner"},"id":42}"#,
            r#"{"id":"first","id":"last"}"#,
            r#"{"i\u0064":"escaped key","other":[1,{"id":2}]}"#,
            r#"{"id":""}"#,
            r#"{"id":null}"#,
            r#"{"id":{"nested":true}}"#,
            r#"{"id":true}"#,
            r#"{"id":1.5e3}"#,
            r#"{"name":"no id"}"#,
            r#"["id","evt"]"#,
            r#""id""#,
            r#" {"id" : "spaced"} "#,
        ];
        for body in bodies {
            assert_eq!(
                top_level_text(body.as_bytes(), "id"),
                parsed(body, "id"),
                "{body}"
            );
        }
    }

    #[test]
    fn bodies_the_full_parse_refuses_give_nothing() {
        let deep = format!(r#"{{"id":"x","d":{}{}}}"#, "[".repeat(70), "]".repeat(70));
        for body in [
            r#"{"id":"x""#,
            r#"{"id":"x"} trailing"#,
            r#"{"id":"x",}"#,
            r#"{"id":"x","bad":"\q"}"#,
            deep.as_str(),
            "",
        ] {
            assert_eq!(top_level_text(body.as_bytes(), "id"), None, "{body}");
        }
    }
}
