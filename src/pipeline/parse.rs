//! Stage 8: the verified raw bytes become a JSON value: JSON as-is (serde_json's recursion limit
//! refuses absurd nesting), form-encoded bodies as an object of strings. Anything else is
//! `invalid_payload`.

use actix_web::http::header::CONTENT_TYPE;
use serde_json::{Map, Value};

use super::signature::Verified;
use crate::provider::definition::BodyFormat;

/// A body that is not what its format says.
#[derive(Debug, thiserror::Error)]
#[error("the body is not valid {format}: {detail}")]
pub struct ParseError {
    pub format: &'static str,
    pub detail: String,
}

pub fn parse(delivery: &Verified<'_>) -> Result<Value, ParseError> {
    let format = match delivery.instance.kind.body {
        BodyFormat::Auto => {
            let is_form = delivery
                .headers
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
    };
    parse_bytes(format, &delivery.body)
}

const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

pub fn parse_bytes(format: BodyFormat, body: &[u8]) -> Result<Value, ParseError> {
    match format {
        BodyFormat::Json | BodyFormat::Auto => {
            serde_json::from_slice(body).map_err(|e| ParseError {
                format: "JSON",
                detail: e.to_string(),
            })
        }
        BodyFormat::Form => {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).map_err(|e| ParseError {
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
}
