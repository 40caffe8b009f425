//! The provider-neutral envelope every sink receives (DESIGN §2), canonical actions, and the
//! gateway's sortable ids.

use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One normalised event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// Gateway-assigned ULID: unique and sortable by arrival.
    pub id: String,
    /// Instance name from the URL.
    pub provider: String,
    /// Provider definition it was verified with.
    pub kind: String,
    /// The provider's event id, or a derived stable key.
    pub event_id: String,
    /// The provider's own event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Canonical verb (`created`, `updated`, `deleted`, `merged`) or the provider's own.
    pub action: String,
    /// What the event is about.
    pub object: String,
    pub object_id: Option<String>,
    /// State after the event; `null` for deletes.
    pub current: Option<Value>,
    /// State or changed fields before the event; `null` when unknown.
    pub previous: Option<Value>,
    pub occurred_at: Option<String>,
    pub received_at: String,
    /// Provider extras.
    pub meta: Map<String, Value>,
}

pub const ACTION_CREATED: &str = "created";
pub const ACTION_UPDATED: &str = "updated";
pub const ACTION_DELETED: &str = "deleted";
pub const ACTION_MERGED: &str = "merged";

/// Maps provider verbs onto the canonical set; other verbs pass through unchanged.
pub fn canonical_action(verb: &str) -> &str {
    match verb.to_ascii_lowercase().as_str() {
        "added" | "add" | "create" | "created" => ACTION_CREATED,
        "updated" | "update" | "change" | "changed" | "edited" => ACTION_UPDATED,
        "deleted" | "delete" | "remove" | "removed" => ACTION_DELETED,
        "merged" | "merge" => ACTION_MERGED,
        _ => verb,
    }
}

/// RFC 3339 in UTC with milliseconds, as `received_at` is written.
pub fn format_millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A payload timestamp as RFC 3339 UTC: Unix seconds, milliseconds or microseconds (by
/// magnitude), numeric strings, or RFC 3339 text. Sub-second precision is kept when present.
pub fn parse_occurred_at(value: &Value) -> Option<String> {
    let from_number = |n: f64| -> Option<DateTime<Utc>> {
        let micros = if n.abs() >= 1e14 {
            n
        } else if n.abs() >= 1e11 {
            n * 1e3
        } else {
            n * 1e6
        };
        DateTime::from_timestamp_micros(micros as i64)
    };
    let time = match value {
        Value::Number(n) => from_number(n.as_f64()?)?,
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(n) => from_number(n)?,
            Err(_) => DateTime::parse_from_rfc3339(s.trim())
                .ok()?
                .with_timezone(&Utc),
        },
        _ => return None,
    };
    let format = if time.timestamp_subsec_nanos() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    Some(time.to_rfc3339_opts(format, true))
}

/// Monotonic ULID source: ids sort by creation even within one millisecond.
#[derive(Default)]
pub struct IdGenerator(Mutex<ulid::Generator>);

impl std::fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdGenerator")
    }
}

impl IdGenerator {
    pub fn next(&self, now: DateTime<Utc>) -> String {
        let mut generator = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let time = std::time::SystemTime::from(now);
        match generator.generate_from_datetime(time) {
            Ok(id) => id.to_string(),
            // The random part overflowed within one millisecond: fall back to a fresh ULID.
            Err(_) => ulid::Ulid::from_datetime(time).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verbs_map_onto_canonical_actions() {
        for (verb, expected) in [
            ("added", "created"),
            ("create", "created"),
            ("change", "updated"),
            ("edited", "updated"),
            ("removed", "deleted"),
            ("merged", "merged"),
            ("opened", "opened"),
            ("paid", "paid"),
        ] {
            assert_eq!(canonical_action(verb), expected, "{verb}");
        }
    }

    #[test]
    fn timestamps_are_read_in_any_common_unit() {
        let expect = "2024-01-15T10:30:00Z";
        assert_eq!(parse_occurred_at(&json!(1705314600)).unwrap(), expect);
        assert_eq!(
            parse_occurred_at(&json!(1705314600000_i64)).unwrap(),
            expect
        );
        assert_eq!(
            parse_occurred_at(&json!(1705314600123456_i64)).unwrap(),
            "2024-01-15T10:30:00.123Z"
        );
        assert_eq!(parse_occurred_at(&json!("1705314600")).unwrap(), expect);
        assert_eq!(
            parse_occurred_at(&json!("2024-01-15T11:30:00+01:00")).unwrap(),
            expect
        );
        assert_eq!(parse_occurred_at(&json!("yesterday")), None);
    }

    #[test]
    fn ids_are_sortable_in_creation_order() {
        let ids = IdGenerator::default();
        let now = Utc::now();
        let a = ids.next(now);
        let b = ids.next(now);
        assert!(a < b);
        assert_eq!(a.len(), 26);
    }
}
