//! Small pieces the pages share: badges, times, pretty JSON, the current/previous diff.

use maud::{html, Markup};
use serde_json::Value;

use crate::store::{Receipt, ReceiptStatus, TaskRecord, TaskStatus};

/// Rows a diff shows at most (a huge payload must not make a huge page).
pub const MAX_DIFF_ROWS: usize = 400;

/// One word for where an event stands: `unprocessable`, `dead` (some sink gave up), `pending`
/// (some delivery is still owed), `delivered` (every sink has it) or `accepted` (no sink
/// matched).
pub fn event_status(receipt: &Receipt, tasks: &[TaskRecord]) -> &'static str {
    if receipt.status == ReceiptStatus::Unprocessable {
        "unprocessable"
    } else if tasks.iter().any(|t| t.status == TaskStatus::Dead) {
        "dead"
    } else if tasks.iter().any(|t| t.status == TaskStatus::Pending) {
        "pending"
    } else if tasks.is_empty() {
        "accepted"
    } else {
        "delivered"
    }
}

pub fn task_status(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Pending => "pending",
        TaskStatus::Delivered => "delivered",
        TaskStatus::Dead => "dead",
    }
}

pub fn badge(word: &str) -> Markup {
    html! { span class={ "badge " (word) } { (word) } }
}

/// A stored RFC 3339 UTC time, shown as `2024-01-15 10:30:00.123`.
pub fn time(text: &str) -> Markup {
    let shown = text.replacen('T', " ", 1);
    let shown = shown.trim_end_matches('Z');
    html! { time datetime=(text) { (shown) } }
}

/// Unix milliseconds as [`time`].
pub fn time_ms(ms: i64) -> Markup {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => time(&crate::envelope::format_millis(t)),
        None => html! { "—" },
    }
}

/// A duration in a few characters: `850 ms`, `42 s`, `3 min`, `5 h`, `2 d`.
pub fn age(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        _ if ms < 1000 => format!("{} ms", ms.max(0)),
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

/// `text` re-indented when it is JSON, keeping its exact key order and number spelling (a
/// parse into a map would sort keys and could round numbers); `None` when it is not JSON.
pub fn pretty_json(text: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', depth * 2));
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                b'{' | b'[' => {
                    out.push(b);
                    let close = if b == b'{' { b'}' } else { b']' };
                    let next = bytes[i + 1..]
                        .iter()
                        .position(|c| !c.is_ascii_whitespace())
                        .map(|p| i + 1 + p);
                    if next.is_some_and(|n| bytes[n] == close) {
                        out.push(close);
                        i = next.unwrap_or(i);
                    } else {
                        depth += 1;
                        newline(&mut out, depth);
                    }
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                    out.push(b);
                }
                b',' => {
                    out.push(b);
                    newline(&mut out, depth);
                }
                b':' => out.extend_from_slice(b": "),
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ => out.push(b),
            }
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// How a field of `current` compares with `previous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// In both, with different values.
    Changed,
    /// In both, equal.
    Same,
    /// Only in `current` (a `previous` that lists only changed fields leaves these out).
    OnlyCurrent,
    /// Only in `previous`.
    OnlyPrevious,
}

impl Change {
    pub fn class(self) -> &'static str {
        match self {
            Change::Changed => "changed",
            Change::Same => "same",
            Change::OnlyCurrent => "current",
            Change::OnlyPrevious => "removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiffRow {
    /// JSON pointer of the field (`/status`, `/items/0/price`).
    pub path: String,
    pub previous: Option<String>,
    pub current: Option<String>,
    pub change: Change,
}

/// Leaves of a JSON value by pointer (an empty object or array is a leaf).
fn leaves(value: &Value, path: String, out: &mut Vec<(String, String)>, limit: usize) {
    if out.len() >= limit {
        return;
    }
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                let key = key.replace('~', "~0").replace('/', "~1");
                leaves(v, format!("{path}/{key}"), out, limit);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, format!("{path}/{i}"), out, limit);
            }
        }
        other => out.push((
            if path.is_empty() { "/".into() } else { path },
            other.to_string(),
        )),
    }
}

/// `current` against `previous`, field by field (leaves by JSON pointer), changed first, at
/// most [`MAX_DIFF_ROWS`] rows; `true` when rows were left out.
pub fn diff(current: &Value, previous: &Value) -> (Vec<DiffRow>, bool) {
    let limit = MAX_DIFF_ROWS + 1;
    let mut now = Vec::new();
    let mut before = Vec::new();
    if !current.is_null() {
        leaves(current, String::new(), &mut now, limit);
    }
    if !previous.is_null() {
        leaves(previous, String::new(), &mut before, limit);
    }
    let before_map: std::collections::HashMap<&str, &str> = before
        .iter()
        .map(|(p, v)| (p.as_str(), v.as_str()))
        .collect();
    let now_paths: std::collections::HashSet<&str> = now.iter().map(|(p, _)| p.as_str()).collect();
    let mut rows: Vec<DiffRow> = now
        .iter()
        .map(|(path, value)| {
            let old = before_map.get(path.as_str()).map(|v| (*v).to_owned());
            let change = match &old {
                Some(old) if old == value => Change::Same,
                Some(_) => Change::Changed,
                None => Change::OnlyCurrent,
            };
            DiffRow {
                path: path.clone(),
                previous: old,
                current: Some(value.clone()),
                change,
            }
        })
        .collect();
    rows.extend(
        before
            .iter()
            .filter(|(p, _)| !now_paths.contains(p.as_str()))
            .map(|(path, value)| DiffRow {
                path: path.clone(),
                previous: Some(value.clone()),
                current: None,
                change: Change::OnlyPrevious,
            }),
    );
    let rank = |c: Change| match c {
        Change::Changed => 0,
        Change::OnlyPrevious => 1,
        Change::OnlyCurrent => 2,
        Change::Same => 3,
    };
    rows.sort_by_key(|r| rank(r.change));
    let cut = rows.len() > MAX_DIFF_ROWS || now.len() >= limit || before.len() >= limit;
    rows.truncate(MAX_DIFF_ROWS);
    (rows, cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pretty_json_keeps_order_and_numbers_and_strings() {
        let text = r#"{"z":1,"a":[1.50, {}, []],"s":"a,b:{c}\"]","n":12345678901234567890123}"#;
        let pretty = pretty_json(text).unwrap();
        assert_eq!(
            pretty,
            "{\n  \"z\": 1,\n  \"a\": [\n    1.50,\n    {},\n    []\n  ],\n  \"s\": \"a,b:{c}\\\"]\",\n  \"n\": 12345678901234567890123\n}"
        );
        assert_eq!(pretty_json("not json"), None);
        assert_eq!(pretty_json("{ }").unwrap(), "{}");
    }

    #[test]
    fn the_diff_marks_changed_added_and_removed_fields() {
        let current = json!({"status": "active", "plan": {"id": "p2"}, "name": "n"});
        let previous = json!({"status": "trialing", "plan": {"id": "p2"}, "old": true});
        let (rows, cut) = diff(&current, &previous);
        assert!(!cut);
        let find = |p: &str| rows.iter().find(|r| r.path == p).unwrap().change;
        assert_eq!(rows[0].path, "/status");
        assert_eq!(find("/status"), Change::Changed);
        assert_eq!(find("/plan/id"), Change::Same);
        assert_eq!(find("/name"), Change::OnlyCurrent);
        assert_eq!(find("/old"), Change::OnlyPrevious);
        let (rows, _) = diff(&json!({"a/b": 1}), &Value::Null);
        assert_eq!(rows[0].path, "/a~1b");
    }

    #[test]
    fn a_huge_diff_is_cut() {
        let big: Vec<u32> = (0..1000).collect();
        let (rows, cut) = diff(&json!(big), &Value::Null);
        assert!(cut);
        assert_eq!(rows.len(), MAX_DIFF_ROWS);
    }
}
