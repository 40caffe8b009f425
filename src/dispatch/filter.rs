//! Sink filters (DESIGN §6): which envelopes a sink gets.
//!
//! `events` globs name `provider:object.action`. A glob without a colon is either a configured
//! instance's name (all of its events) or an `object.action` glob over every instance (the
//! seeds' `post.*` style); a colon-less word that is neither is refused, as is a glob naming an
//! instance that is not configured, so a typo never silently delivers nothing. `where`
//! conditions compare envelope fields (`current.status`, `meta.user_id`, `provider`, ...) with
//! a value: a string is a glob (`presence-*`; without `*`, `?` or `[` it is plain equality), a
//! number or boolean must be equal, a list is any of its values. Every condition must hold, and
//! the envelope must match `events` too.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::WhereValue;
use crate::envelope::Envelope;

/// The envelope's top-level fields a condition may name.
const FIELDS: &[&str] = &[
    "id",
    "provider",
    "kind",
    "event_id",
    "type",
    "action",
    "object",
    "object_id",
    "current",
    "previous",
    "occurred_at",
    "received_at",
    "meta",
];

/// Characters that make a string a glob.
const GLOB_CHARS: &[char] = &['*', '?', '['];

/// One `events` entry, compiled.
#[derive(Debug, Clone)]
struct EventGlob {
    /// `None`: every instance.
    provider: Option<glob::Pattern>,
    /// Over `object.action`.
    subject: glob::Pattern,
}

/// What a condition compares with.
#[derive(Debug, Clone)]
enum Expected {
    Glob(glob::Pattern),
    Exact(Value),
    AnyOf(Vec<Expected>),
}

#[derive(Debug, Clone)]
struct Condition {
    /// The field path, split at dots: `["current", "status"]`.
    path: Vec<String>,
    expected: Expected,
}

/// A sink's compiled filter: `events` globs and `where` conditions.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    globs: Vec<EventGlob>,
    conditions: Vec<Condition>,
}

fn pattern(text: &str, written: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(text).map_err(|e| format!("`{written}` is not a valid glob: {e}"))
}

fn is_glob(text: &str) -> bool {
    text.contains(GLOB_CHARS)
}

impl EventFilter {
    /// Compiles one `events` entry against the configured instance names.
    fn glob(written: &str, instances: &[&str]) -> Result<EventGlob, String> {
        if written == "*" {
            return Ok(EventGlob {
                provider: None,
                subject: pattern("*", written)?,
            });
        }
        match written.split_once(':') {
            Some((provider, subject)) => {
                if !is_glob(provider) && !instances.contains(&provider) {
                    return Err(format!(
                        "`{written}` names instance `{provider}`, which is not configured \
                         (configured: {})",
                        list(instances)
                    ));
                }
                Ok(EventGlob {
                    provider: Some(pattern(provider, written)?),
                    subject: pattern(subject, written)?,
                })
            }
            None if instances.contains(&written) => Ok(EventGlob {
                provider: Some(pattern(written, written)?),
                subject: pattern("*", written)?,
            }),
            None if written.contains('.') || is_glob(written) => Ok(EventGlob {
                provider: None,
                subject: pattern(written, written)?,
            }),
            None => Err(format!(
                "`{written}` is neither a configured instance ({}) nor an `object.action` glob \
                 such as `{written}.*`",
                list(instances)
            )),
        }
    }

    /// Compiles `events` and `where`; errors name the entry (`events[1]`, `where."current.x"`).
    pub fn compile(
        events: &[String],
        conditions: &BTreeMap<String, WhereValue>,
        instances: &[&str],
    ) -> Result<Self, (String, String)> {
        let globs = events
            .iter()
            .enumerate()
            .map(|(i, p)| Self::glob(p, instances).map_err(|m| (format!("events[{i}]"), m)))
            .collect::<Result<_, _>>()?;
        let conditions = conditions
            .iter()
            .map(|(path, value)| {
                condition(path, value).map_err(|m| (format!("where.\"{path}\""), m))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { globs, conditions })
    }

    pub fn matches(&self, envelope: &Envelope) -> bool {
        let by_type = self.globs.is_empty()
            || self.globs.iter().any(|g| {
                g.provider
                    .as_ref()
                    .is_none_or(|p| p.matches(&envelope.provider))
                    && g.subject
                        .matches(&format!("{}.{}", envelope.object, envelope.action))
            });
        by_type
            && self
                .conditions
                .iter()
                .all(|c| field(envelope, &c.path).is_some_and(|value| c.expected.holds(&value)))
    }
}

fn list(instances: &[&str]) -> String {
    if instances.is_empty() {
        return "none".to_owned();
    }
    let mut names = instances.to_vec();
    names.sort_unstable();
    names.join(", ")
}

fn condition(path: &str, value: &WhereValue) -> Result<Condition, String> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    let top = parts[0].as_str();
    if !FIELDS.contains(&top) || parts.iter().any(String::is_empty) {
        return Err(format!(
            "`{path}` is not an envelope field (one of {}, then `.field` inside current, \
             previous or meta)",
            FIELDS.join(", ")
        ));
    }
    if parts.len() > 1 && !matches!(top, "current" | "previous" | "meta") {
        return Err(format!("`{top}` has no fields inside it"));
    }
    Ok(Condition {
        path: parts,
        expected: expected(value)?,
    })
}

fn expected(value: &WhereValue) -> Result<Expected, String> {
    Ok(match value {
        WhereValue::Text(text) if is_glob(text) => Expected::Glob(pattern(text, text)?),
        WhereValue::Text(text) => Expected::Exact(Value::String(text.clone())),
        WhereValue::Bool(b) => Expected::Exact(Value::Bool(*b)),
        WhereValue::Int(n) => Expected::Exact(Value::from(*n)),
        WhereValue::Float(f) => Expected::Exact(Value::from(*f)),
        WhereValue::AnyOf(values) => {
            Expected::AnyOf(values.iter().map(expected).collect::<Result<_, _>>()?)
        }
    })
}

impl Expected {
    fn holds(&self, value: &Value) -> bool {
        match self {
            Expected::Glob(glob) => value.as_str().is_some_and(|text| glob.matches(text)),
            Expected::Exact(Value::Number(n)) => {
                value.as_f64().zip(n.as_f64()).is_some_and(|(a, b)| a == b)
            }
            Expected::Exact(expected) => value == expected,
            Expected::AnyOf(all) => all.iter().any(|e| e.holds(value)),
        }
    }
}

/// The value at `path` in the envelope (`["current", "status"]`).
fn field<'e>(envelope: &'e Envelope, path: &[String]) -> Option<Cow<'e, Value>> {
    let text = |s: &str| Some(Cow::Owned(Value::String(s.to_owned())));
    let (top, rest) = path.split_first()?;
    let root: &Value = match top.as_str() {
        "id" => return text(&envelope.id),
        "provider" => return text(&envelope.provider),
        "kind" => return text(&envelope.kind),
        "event_id" => return text(&envelope.event_id),
        "type" => return text(&envelope.event_type),
        "action" => return text(&envelope.action),
        "object" => return text(&envelope.object),
        "object_id" => return envelope.object_id.as_deref().and_then(text),
        "occurred_at" => return envelope.occurred_at.as_deref().and_then(text),
        "received_at" => return text(&envelope.received_at),
        "current" => envelope.current.as_ref()?,
        "previous" => envelope.previous.as_ref()?,
        "meta" => {
            let (name, rest) = rest.split_first()?;
            return walk(envelope.meta.get(name)?, rest).map(Cow::Borrowed);
        }
        _ => return None,
    };
    walk(root, rest).map(Cow::Borrowed)
}

fn walk<'v>(mut value: &'v Value, path: &[String]) -> Option<&'v Value> {
    for part in path {
        value = match value {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(provider: &str, object: &str, action: &str, current: Value) -> Envelope {
        serde_json::from_value(serde_json::json!({
            "id": "x", "provider": provider, "kind": provider, "event_id": "e",
            "type": "t", "action": action, "object": object, "object_id": null,
            "current": current, "previous": null, "occurred_at": null,
            "received_at": "2024-01-01T00:00:00.000Z", "meta": {"user_id": 7}
        }))
        .unwrap()
    }

    fn filter(events: &[&str]) -> Result<EventFilter, (String, String)> {
        let events: Vec<String> = events.iter().map(|s| (*s).to_owned()).collect();
        EventFilter::compile(&events, &BTreeMap::new(), &["stripe", "pipedrive", "blog"])
    }

    #[test]
    fn globs_with_and_without_a_colon() {
        let f = filter(&["stripe:customer.*", "pipedrive", "post.*"]).unwrap();
        let e = |p: &str, o: &str, a: &str| envelope(p, o, a, Value::Null);
        assert!(f.matches(&e("stripe", "customer.subscription", "updated")));
        assert!(!f.matches(&e("stripe", "invoice", "paid")));
        assert!(f.matches(&e("pipedrive", "deal", "updated")));
        assert!(f.matches(&e("blog", "post", "created")));
        assert!(f.matches(&e("stripe", "post", "deleted")));
        assert!(!f.matches(&e("blog", "page", "created")));
        assert!(EventFilter::default().matches(&e("a", "b", "c")));
        assert!(filter(&["*"]).unwrap().matches(&e("a", "b", "c")));
        assert!(filter(&["*:deal.*"])
            .unwrap()
            .matches(&e("x", "deal", "added")));
    }

    #[test]
    fn unknown_instances_and_bad_globs_are_refused() {
        let (key, message) = filter(&["post.*", "stripee:customer.*"]).unwrap_err();
        assert_eq!(key, "events[1]");
        assert!(message.contains("`stripee`"), "{message}");
        let (_, message) = filter(&["stripee"]).unwrap_err();
        assert!(
            message.contains("neither a configured instance"),
            "{message}"
        );
        assert!(filter(&["["]).is_err());
    }

    #[test]
    fn where_conditions_compare_fields_exactly_or_by_glob() {
        let mut conditions = BTreeMap::new();
        conditions.insert(
            "current.status".to_owned(),
            WhereValue::Text("published".into()),
        );
        conditions.insert(
            "current.channel".to_owned(),
            WhereValue::Text("presence-*".into()),
        );
        conditions.insert("meta.user_id".to_owned(), WhereValue::Int(7));
        let f = EventFilter::compile(&[], &conditions, &[]).unwrap();
        let yes = serde_json::json!({"status": "published", "channel": "presence-1"});
        let no = serde_json::json!({"status": "draft", "channel": "presence-1"});
        let other = serde_json::json!({"status": "published", "channel": "private-1"});
        assert!(f.matches(&envelope("b", "post", "created", yes)));
        assert!(!f.matches(&envelope("b", "post", "created", no)));
        assert!(!f.matches(&envelope("b", "post", "created", other)));
        assert!(!f.matches(&envelope("b", "post", "deleted", Value::Null)));

        let bad = |path: &str| {
            let mut c = BTreeMap::new();
            c.insert(path.to_owned(), WhereValue::Bool(true));
            EventFilter::compile(&[], &c, &[]).unwrap_err()
        };
        assert!(bad("status").1.contains("not an envelope field"));
        assert!(bad("provider.name").1.contains("no fields"));
        assert_eq!(bad("current.").0, "where.\"current.\"");
    }
}
