//! Walks `fixtures/<kind>/`: every case is posted byte-exact with its recorded headers to a
//! gateway serving the kind's fixture instance, with the clock at the time the fixtures were
//! signed. The answer and the envelopes must equal `<case>.expected.json`.
//!
//! Set `HOOKGATE_BLESS=1` to (re)write the expected files from what the gateway produces, then
//! review the diff by hand before committing it.

mod common;

use common::*;
use hookgate::fixture;
use serde_json::{json, Value};

fn without_id(mut envelope: Value) -> Value {
    envelope.as_object_mut().unwrap().remove("id");
    envelope
}

/// The answer with gateway ids replaced by a placeholder (they differ on every run).
fn stable(mut answer: Value) -> Value {
    if let Some(obj) = answer.as_object_mut() {
        if obj.get("id").is_some_and(Value::is_string) {
            obj.insert("id".into(), json!("<gateway id>"));
        }
        if let Some(Value::Array(events)) = obj.get_mut("events") {
            for event in events {
                event["id"] = json!("<gateway id>");
            }
        }
    }
    answer
}

#[tokio::test]
async fn every_fixture_is_verified_and_normalised_into_its_golden_envelope() {
    let bless = std::env::var_os("HOOKGATE_BLESS").is_some();
    let sets = fixture::discover(&[fixtures_dir()]).unwrap();
    assert!(sets.len() >= 18, "fixtures for every built-in kind");
    let mut checked = 0;
    for set in sets {
        let app = spawn_with(
            &fixture_instances(std::slice::from_ref(&set)),
            SpawnOptions {
                clock_unix: Some(set.file.signed_at),
                ..Default::default()
            },
        )
        .await;
        assert!(!set.cases.is_empty(), "{} has fixtures", set.kind);
        let mut answers = Vec::new();
        for case in &set.cases {
            let response = app.post(&set.kind, &case.headers, case.body.clone()).await;
            let status = response.status().as_u16();
            // A kind answering in the provider's format (Discord's deferred response) says
            // what happened in headers.
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| json!(v.to_str().unwrap()))
            };
            let outcome = header("x-hookgate-status")
                .map(|s| json!({"status": s, "id": header("x-hookgate-id")}));
            let text = response.text().await.unwrap();
            let mut answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if let Some(outcome) = outcome {
                answer =
                    json!({"answer": answer, "status": outcome["status"], "id": outcome["id"]});
            }
            answers.push((status, answer));
        }
        let stored: usize = answers
            .iter()
            .map(|(_, a)| match a["events"].as_array() {
                Some(events) => events.iter().filter(|e| e["status"] == "accepted").count(),
                None => usize::from(a["status"] == "accepted"),
            })
            .sum();
        let envelopes = app.sink_envelopes(stored).await;
        for (case, (status, answer)) in set.cases.iter().zip(answers) {
            let ids: Vec<Value> = match answer["events"].as_array() {
                Some(events) => events.iter().map(|e| e["id"].clone()).collect(),
                None => vec![answer["id"].clone()],
            };
            let mine: Vec<Value> = envelopes
                .iter()
                .filter(|e| ids.contains(&e["id"]))
                .cloned()
                .map(without_id)
                .collect();
            let actual = json!({"status": status, "response": stable(answer), "envelopes": mine});
            if bless {
                std::fs::write(
                    &case.expected_path,
                    serde_json::to_string_pretty(&actual).unwrap() + "\n",
                )
                .unwrap();
                continue;
            }
            let expected: Value = serde_json::from_str(
                &std::fs::read_to_string(&case.expected_path)
                    .unwrap_or_else(|_| panic!("{} missing", case.expected_path.display())),
            )
            .unwrap();
            assert_eq!(actual, expected, "{}/{}", set.kind, case.name);
            checked += 1;
        }
        app.stop().await;
    }
    assert!(bless || checked >= 50, "checked {checked} cases");
}
