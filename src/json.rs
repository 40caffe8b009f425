//! How deep JSON may nest, one set of limits for whoever writes and whoever reads it back.
//!
//! A body is refused at stage 8 when its arrays and objects nest deeper than
//! [`MAX_BODY_DEPTH`]. An envelope puts at most [`ENVELOPE_DEPTH`] levels around a value taken
//! from the body (the envelope object and its `meta` map), so no envelope hookgate stores is
//! deeper than [`MAX_ENVELOPE_DEPTH`]. Readers of stored envelopes, and of the admin API's
//! answers (`hookgate events`), accept up to [`MAX_READ_DEPTH`]: more than anything any version
//! of hookgate stored (before the body bound, serde_json's own limit let bodies nest 127
//! levels), so an envelope that was accepted is always readable. Depth is measured on the bytes
//! before anything is parsed, so a reader's recursion (and its stack) is bounded by the limit,
//! never by the input.

use serde::de::DeserializeOwned;

/// Deepest nesting of arrays and objects a request body may have.
pub const MAX_BODY_DEPTH: usize = 64;
/// Levels an envelope adds around a value from the body: the envelope and its `meta` map.
pub const ENVELOPE_DEPTH: usize = 2;
/// Deepest envelope hookgate writes.
pub const MAX_ENVELOPE_DEPTH: usize = MAX_BODY_DEPTH + ENVELOPE_DEPTH;
/// Deepest stored or served JSON a reader accepts: every envelope ever written (old bodies up
/// to 127 levels, plus the envelope's own), wrapped in an admin answer, with room to spare.
pub const MAX_READ_DEPTH: usize = 160;

const _: () = assert!(MAX_ENVELOPE_DEPTH <= MAX_READ_DEPTH);

/// Why bytes are not the JSON a reader wanted.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("arrays and objects nest deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error(transparent)]
    Syntax(#[from] serde_json::Error),
}

/// Whether the arrays and objects in `bytes` nest at most `limit` deep. Only brackets outside
/// strings count, exactly as a JSON parser sees them; stops at the first level too deep.
pub fn within_depth(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Parses `bytes` as `T` when they nest at most `limit` levels deep (`limit` at most
/// [`MAX_READ_DEPTH`], which keeps the parser's recursion small).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, JsonError> {
    let limit = limit.min(MAX_READ_DEPTH);
    if !within_depth(bytes, limit) {
        return Err(JsonError::TooDeep { limit });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // The depth is bounded above; serde_json's own limit (128) would refuse old envelopes.
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A stored envelope (or anything read back from the store or the admin API).
pub fn read<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    from_slice(bytes, MAX_READ_DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert!(within_depth(b"1", 0));
        assert!(!within_depth(b"[]", 0));
        assert!(within_depth(br#"{"a":[{"b":[]}]}"#, 4));
        assert!(!within_depth(br#"{"a":[{"b":[]}]}"#, 3));
        assert!(within_depth(br#"["[[[[", "\"[[[", "\\"]"#, 1));
        assert!(!within_depth(br#"["\\", [[]]]"#, 2));
    }

    #[test]
    fn a_reader_takes_what_the_limit_allows_and_names_the_limit_otherwise() {
        let ok: Value = from_slice(nested(MAX_BODY_DEPTH).as_bytes(), MAX_BODY_DEPTH).unwrap();
        assert!(ok.is_array());
        let err =
            from_slice::<Value>(nested(MAX_BODY_DEPTH + 1).as_bytes(), MAX_BODY_DEPTH).unwrap_err();
        assert!(matches!(
            err,
            JsonError::TooDeep {
                limit: MAX_BODY_DEPTH
            }
        ));
        assert!(err.to_string().contains("64 levels"), "{err}");
        // Deeper than serde_json's own limit, as old gateways stored: still readable.
        let old: Value = read(nested(129).as_bytes()).unwrap();
        assert!(old.is_array());
        assert!(read::<Value>(nested(MAX_READ_DEPTH + 1).as_bytes()).is_err());
        assert!(read::<Value>(nested(1_000_000).as_bytes()).is_err());
        assert!(matches!(
            read::<Value>(b"[1] x").unwrap_err(),
            JsonError::Syntax(_)
        ));
    }
}
