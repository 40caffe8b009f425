//! Where a value comes from: a JSON pointer into the body, a header, the resolved `current`
//! object, or a constant. Parsed once from the definition's strings:
//!
//! | written            | meaning                                       |
//! |--------------------|-----------------------------------------------|
//! | `/data/object`     | JSON pointer into the parsed body (in a batch: into the element) |
//! | `root:/time_ms`    | JSON pointer into the whole body, also inside a batch |
//! | `/data/object/*`   | the first value under `/data/object` (its only child, usually) |
//! | `header:X-Name`    | a request header (case-insensitive)           |
//! | `query:name`       | a query-string parameter (GET handshakes, token schemes) |
//! | `current:/id`      | JSON pointer into the envelope's `current`    |
//! | `const:text`       | the literal text                              |
//!
//! A JSON `null` counts as absent, so `"previous": null` falls through to the next source.

use std::borrow::Cow;

use actix_web::http::header::{HeaderMap, HeaderName};
use serde_json::Value;

const HEADER_PREFIX: &str = "header:";
const CURRENT_PREFIX: &str = "current:";
const ROOT_PREFIX: &str = "root:";
const WILDCARD: &str = "/*";
const CONST_PREFIX: &str = "const:";
const QUERY_PREFIX: &str = "query:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Body(String),
    Root(String),
    Header(HeaderName),
    /// A query-string parameter, decoded.
    Query(String),
    Current(String),
    Const(Value),
}

/// What sources are resolved against.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The event: the whole body, or one batch element.
    pub body: &'a Value,
    /// The whole body.
    pub root: &'a Value,
    pub headers: &'a HeaderMap,
    /// The request's query string, undecoded (empty where it plays no part).
    pub query: &'a str,
    pub current: Option<&'a Value>,
}

impl<'a> Context<'a> {
    /// The context of a whole body (no batch element, no `current` yet).
    pub fn whole(body: &'a Value, headers: &'a HeaderMap, query: &'a str) -> Self {
        Context {
            body,
            root: body,
            headers,
            query,
            current: None,
        }
    }
}

impl Source {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix(HEADER_PREFIX) {
            HeaderName::from_bytes(name.trim().as_bytes())
                .map(Source::Header)
                .map_err(|_| format!("`{name}` is not a valid header name"))
        } else if let Some(pointer) = text.strip_prefix(ROOT_PREFIX) {
            check_pointer(pointer)?;
            Ok(Source::Root(pointer.to_owned()))
        } else if let Some(pointer) = text.strip_prefix(CURRENT_PREFIX) {
            check_pointer(pointer)?;
            Ok(Source::Current(pointer.to_owned()))
        } else if let Some(name) = text.strip_prefix(QUERY_PREFIX) {
            if name.is_empty() {
                return Err("`query:` needs a parameter name".into());
            }
            Ok(Source::Query(name.to_owned()))
        } else if let Some(literal) = text.strip_prefix(CONST_PREFIX) {
            Ok(Source::Const(Value::String(literal.to_owned())))
        } else {
            check_pointer(text)?;
            Ok(Source::Body(text.to_owned()))
        }
    }

    pub fn resolve<'a>(&self, ctx: &Context<'a>) -> Option<Cow<'a, Value>> {
        let found = match self {
            Source::Body(pointer) => lookup(ctx.body, pointer).map(Cow::Borrowed),
            Source::Root(pointer) => lookup(ctx.root, pointer).map(Cow::Borrowed),
            Source::Current(pointer) => ctx
                .current
                .and_then(|current| lookup(current, pointer))
                .map(Cow::Borrowed),
            Source::Header(name) => ctx
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| Cow::Owned(Value::String(s.to_owned()))),
            Source::Query(name) => {
                query_param(ctx.query, name).map(|v| Cow::Owned(Value::String(v)))
            }
            Source::Const(value) => Some(Cow::Owned(value.clone())),
        };
        found.filter(|v| !v.is_null())
    }
}

/// The first value of a query-string parameter, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    if query.is_empty() {
        return None;
    }
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// A JSON pointer lookup; a trailing `/*` takes the first value of the object or array there.
fn lookup<'v>(value: &'v Value, pointer: &str) -> Option<&'v Value> {
    match pointer.strip_suffix(WILDCARD) {
        Some(parent) => match value.pointer(parent)? {
            Value::Object(map) => map.values().next(),
            Value::Array(items) => items.first(),
            _ => None,
        },
        None => value.pointer(pointer),
    }
}

fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "`{pointer}` is neither a JSON pointer (starting with `/`) nor `header:`, `query:`, `root:`, `current:` or `const:`"
        ))
    }
}

/// An ordered list of sources: the first present one wins.
#[derive(Debug, Clone, Default)]
pub struct Sources(pub Vec<Source>);

impl Sources {
    pub fn parse(texts: &[String]) -> Result<Self, (usize, String)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Source::parse(t).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()
            .map(Sources)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn first<'a>(&self, ctx: &Context<'a>) -> Option<Cow<'a, Value>> {
        self.0.iter().find_map(|s| s.resolve(ctx))
    }

    /// The first present value as text (numbers and booleans printed, objects refused).
    pub fn first_text(&self, ctx: &Context<'_>) -> Option<String> {
        self.0
            .iter()
            .find_map(|s| s.resolve(ctx).and_then(|v| text_of(&v)))
    }
}

/// A scalar as text: strings as-is, numbers and booleans printed; arrays and objects are not text.
pub fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `when = { source, equals }`: present (and equal, when `equals` is given).
#[derive(Debug, Clone)]
pub struct Condition {
    pub source: Source,
    pub equals: Option<Value>,
}

impl Condition {
    pub fn holds(&self, ctx: &Context<'_>) -> bool {
        match (self.source.resolve(ctx), &self.equals) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(found), Some(expected)) => {
                *found == *expected
                    || matches!((text_of(&found), text_of(expected)), (Some(a), Some(b)) if a == b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use serde_json::json;

    #[test]
    fn sources_resolve_from_body_headers_current_and_constants() {
        let body = json!({"data": {"id": 7, "none": null}});
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-event"),
            HeaderValue::from_static("ping"),
        );
        let current = json!({"id": "abc"});
        let ctx = Context {
            body: &body,
            root: &body,
            headers: &headers,
            query: "a=1&hub.challenge=x%20y",
            current: Some(&current),
        };
        assert_eq!(
            Source::parse("query:hub.challenge")
                .unwrap()
                .resolve(&ctx)
                .unwrap()
                .as_ref(),
            &json!("x y")
        );
        assert!(Source::parse("query:missing")
            .unwrap()
            .resolve(&ctx)
            .is_none());
        let list = Sources::parse(&[
            "/data/none".into(),
            "/data/missing".into(),
            "header:X-Event".into(),
        ])
        .unwrap();
        assert_eq!(list.first_text(&ctx).as_deref(), Some("ping"));
        assert_eq!(
            Source::parse("/data/id")
                .unwrap()
                .resolve(&ctx)
                .unwrap()
                .as_ref(),
            &json!(7)
        );
        assert_eq!(
            Sources::parse(&["current:/id".into()])
                .unwrap()
                .first_text(&ctx)
                .as_deref(),
            Some("abc")
        );
        assert_eq!(
            Source::parse("/data/*")
                .unwrap()
                .resolve(&ctx)
                .unwrap()
                .as_ref(),
            &json!(7)
        );
        assert_eq!(
            Sources::parse(&["const:x".into()])
                .unwrap()
                .first_text(&ctx)
                .as_deref(),
            Some("x")
        );
    }

    #[test]
    fn a_source_that_is_not_a_pointer_is_rejected() {
        assert!(Source::parse("data/id").is_err());
        assert!(Source::parse("header:bad header").is_err());
    }

    #[test]
    fn conditions_compare_numbers_and_strings_by_their_text() {
        let body = json!({"meta": {"v": 1, "version": "2.0"}});
        let headers = HeaderMap::new();
        let ctx = Context {
            body: &body,
            root: &body,
            headers: &headers,
            query: "",
            current: None,
        };
        let cond = |source: &str, equals: Value| Condition {
            source: Source::parse(source).unwrap(),
            equals: Some(equals),
        };
        assert!(cond("/meta/v", json!("1")).holds(&ctx));
        assert!(cond("/meta/version", json!("2.0")).holds(&ctx));
        assert!(!cond("/meta/version", json!("1.0")).holds(&ctx));
    }
}
