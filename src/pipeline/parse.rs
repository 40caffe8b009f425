//! Stage 8: the verified raw bytes become a JSON value: JSON as-is, form-encoded bodies as an
//! object of strings. Anything else is `invalid_payload`, and so is JSON that nests deeper than
//! [`MAX_BODY_DEPTH`] levels: that bound leaves room for the levels an envelope adds, so every
//! envelope stored can be read back ([`crate::json`]).

use actix_web::http::header::{HeaderMap, CONTENT_TYPE};
use serde_json::{Map, Value};

use super::signature::Verified;
use crate::json::{self, JsonError, MAX_BODY_DEPTH};
use crate::provider::definition::BodyFormat;

/// A body that is not what its format says, or nests too deep.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not valid {format}: {detail}")]
    Invalid {
        format: &'static str,
        detail: String,
    },
    #[error("the body nests arrays and objects deeper than {limit} levels, the most accepted")]
    TooDeep { limit: usize },
}

pub fn parse(delivery: &Verified<'_>) -> Result<Value, ParseError> {
    let format = format_of(delivery.instance.kind.body, delivery.headers);
    parse_bytes(format, &delivery.body)
}

/// The format a body is parsed as: the kind's, or for `Auto` the one its content type names.
pub fn format_of(kind: BodyFormat, headers: &HeaderMap) -> BodyFormat {
    match kind {
        BodyFormat::Auto => {
            let is_form = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(FORM_CONTENT_TYPE));
            if is_form {
                BodyFormat::Form
            } else {
                BodyFormat::Json
            }
        }
        format => format,
    }
}

const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

pub fn parse_bytes(format: BodyFormat, body: &[u8]) -> Result<Value, ParseError> {
    match format {
        BodyFormat::Json | BodyFormat::Auto => {
            json::from_slice(body, MAX_BODY_DEPTH).map_err(|e| match e {
                JsonError::TooDeep { limit } => ParseError::TooDeep { limit },
                JsonError::Syntax(e) => ParseError::Invalid {
                    format: "JSON",
                    detail: e.to_string(),
                },
            })
        }
        BodyFormat::Form => {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|e| ParseError::Invalid {
                    format: "form data",
                    detail: e.to_string(),
                })?;
            let mut object = Map::new();
            for (key, value) in pairs {
                object.insert(key, Value::String(value));
            }
            Ok(Value::Object(object))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_form_bodies_parse_and_garbage_is_invalid() {
        assert_eq!(
            parse_bytes(BodyFormat::Json, br#"{"a":1}"#).unwrap()["a"],
            1
        );
        assert_eq!(
            parse_bytes(BodyFormat::Form, b"a=1&b=x+y").unwrap()["b"],
            "x y"
        );
        assert!(parse_bytes(BodyFormat::Json, b"{").is_err());
        assert!(parse_bytes(BodyFormat::Json, b"[1e400]").is_err());
        let deep = "[".repeat(100_000);
        assert!(parse_bytes(BodyFormat::Json, deep.as_bytes()).is_err());
    }

    #[test]
    fn json_nested_past_the_body_limit_is_refused_as_too_deep() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_bytes(BodyFormat::Json, nested(MAX_BODY_DEPTH).as_bytes()).is_ok());
        let refused = parse_bytes(BodyFormat::Json, nested(MAX_BODY_DEPTH + 1).as_bytes());
        assert!(matches!(
            refused,
            Err(ParseError::TooDeep {
                limit: MAX_BODY_DEPTH
            })
        ));
        // Brackets inside strings are text, not nesting.
        let text = format!(r#"{{"s":"{}"}}"#, "[".repeat(1000));
        assert!(parse_bytes(BodyFormat::Json, text.as_bytes()).is_ok());
    }
}
