//! Walks `fixtures/<kind>/`: every case is posted byte-exact with its recorded headers to a
//! gateway serving the kind's fixture instance, with the clock at the time the fixtures were
//! signed. The answer and the envelopes must equal `<case>.expected.json`.
//!
//! Set `HOOKGATE_BLESS=1` to (re)write the expected files from what the gateway produces, then
//! review the diff by hand before committing it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

struct Case {
    name: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    expected_path: PathBuf,
}

fn cases(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let Some(name) = file.strip_suffix(".headers.json") else {
            continue;
        };
        let body_path = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let f = p.file_name().unwrap().to_str().unwrap();
                f.starts_with(&format!("{name}."))
                    && !f.ends_with(".headers.json")
                    && !f.ends_with(".expected.json")
            })
            .unwrap_or_else(|| panic!("no body file for case {name}"));
        let headers: BTreeMap<String, String> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cases.push(Case {
            name: name.to_owned(),
            body: std::fs::read(body_path).unwrap(),
            headers: headers.into_iter().collect(),
            expected_path: dir.join(format!("{name}.expected.json")),
        });
    }
    cases
}

fn instance_config(dir: &Path) -> (String, String, i64) {
    let text = std::fs::read_to_string(dir.join("instance.toml")).unwrap();
    let meta: toml::Table = toml::from_str(&text).unwrap();
    let signed_at = meta["signed_at"].as_integer().unwrap();
    let instance = meta["instance"].as_table().unwrap();
    let kind = instance["kind"].as_str().unwrap().to_owned();
    let mut providers = toml::Table::new();
    providers.insert(kind.clone(), toml::Value::Table(instance.clone()));
    let mut root = toml::Table::new();
    root.insert("providers".into(), toml::Value::Table(providers));
    (kind, toml::to_string(&root).unwrap(), signed_at)
}

fn without_id(mut envelope: Value) -> Value {
    envelope.as_object_mut().unwrap().remove("id");
    envelope
}

#[tokio::test]
async fn every_fixture_is_verified_and_normalised_into_its_golden_envelope() {
    let bless = std::env::var_os("HOOKGATE_BLESS").is_some();
    let mut kinds: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("instance.toml").is_file())
        .collect();
    kinds.sort();
    assert!(kinds.len() >= 4, "fixtures for the built-in kinds");
    let mut checked = 0;
    for dir in kinds {
        let (kind, config, signed_at) = instance_config(&dir);
        let app = spawn_with(
            &config,
            SpawnOptions {
                clock_unix: Some(signed_at),
                ..Default::default()
            },
        )
        .await;
        let cases = cases(&dir);
        assert!(!cases.is_empty(), "{kind} has fixtures");
        let mut answers = Vec::new();
        for case in &cases {
            let response = app.post(&kind, &case.headers, case.body.clone()).await;
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap();
            answers.push((status, answer));
        }
        let stored: usize = answers
            .iter()
            .filter(|(_, a)| a["status"] == "accepted")
            .count();
        let envelopes = app.sink_envelopes(stored).await;
        for (case, (status, answer)) in cases.iter().zip(answers) {
            let id = answer.get("id").cloned();
            let mine: Vec<Value> = envelopes
                .iter()
                .filter(|e| Some(&e["id"]) == id.as_ref())
                .cloned()
                .map(without_id)
                .collect();
            let mut response = answer.clone();
            if let Some(obj) = response.as_object_mut() {
                if obj.remove("id").is_some() {
                    obj.insert("id".into(), json!("<gateway id>"));
                }
            }
            let actual = json!({"status": status, "response": response, "envelopes": mine});
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
            assert_eq!(actual, expected, "{kind}/{}", case.name);
            checked += 1;
        }
        app.stop().await;
    }
    assert!(bless || checked >= 16, "checked {checked} cases");
}
