//! Fixture files: recorded provider deliveries, shared by the golden test and `hookgate replay`.
//!
//! ```text
//! fixtures/<kind>/instance.toml          signed_at = <unix s>, [instance] (kind, secrets, ...),
//!                                        signing_key = "..." for public-key kinds
//! fixtures/<kind>/<case>.json | .form    the body, byte-exact
//! fixtures/<kind>/<case>.headers.json    the headers as sent, signatures included
//! fixtures/<kind>/<case>.expected.json   the expected answer and envelopes (golden test)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// File of the instance a fixture directory was signed for.
pub const INSTANCE_FILE: &str = "instance.toml";
pub const HEADERS_SUFFIX: &str = ".headers.json";
pub const EXPECTED_SUFFIX: &str = ".expected.json";

/// `instance.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFile {
    /// When the fixture signatures were made (Unix seconds).
    pub signed_at: i64,
    /// The private key matching the instance's public key, for public-key kinds.
    pub signing_key: Option<String>,
    /// The provider instance, as it would appear under `[providers.<name>]`.
    pub instance: toml::Table,
}

/// One kind's fixtures.
#[derive(Debug, Clone)]
pub struct FixtureSet {
    pub dir: PathBuf,
    pub kind: String,
    pub file: InstanceFile,
    pub cases: Vec<Case>,
}

/// One recorded delivery.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub body_path: PathBuf,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub expected_path: PathBuf,
}

impl FixtureSet {
    /// The instance's secrets as written in `instance.toml`.
    pub fn secrets(&self) -> Vec<String> {
        self.file
            .instance
            .get("secrets")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A string field of the instance (`public_url`, `kind`).
    pub fn instance_str(&self, key: &str) -> Option<&str> {
        self.file.instance.get(key).and_then(|v| v.as_str())
    }
}

/// Loads a kind directory (one holding `instance.toml`).
pub fn load_set(dir: &Path) -> Result<FixtureSet, String> {
    let instance_path = dir.join(INSTANCE_FILE);
    let text = std::fs::read_to_string(&instance_path)
        .map_err(|e| format!("{}: {e}", instance_path.display()))?;
    let file: InstanceFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", instance_path.display()))?;
    let kind = file
        .instance
        .get("kind")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .or_else(|| dir.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .ok_or_else(|| format!("{}: no kind", instance_path.display()))?;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(HEADERS_SUFFIX))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let cases = names
        .iter()
        .map(|name| load_case(dir, name))
        .collect::<Result<_, _>>()?;
    Ok(FixtureSet {
        dir: dir.to_path_buf(),
        kind,
        file,
        cases,
    })
}

fn load_case(dir: &Path, name: &str) -> Result<Case, String> {
    let headers_path = dir.join(format!("{name}{HEADERS_SUFFIX}"));
    let headers: BTreeMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(&headers_path)
            .map_err(|e| format!("{}: {e}", headers_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", headers_path.display()))?;
    let body_path = body_file(dir, name)
        .ok_or_else(|| format!("{}: no body file for case {name}", dir.display()))?;
    let body = std::fs::read(&body_path).map_err(|e| format!("{}: {e}", body_path.display()))?;
    Ok(Case {
        name: name.to_owned(),
        body_path,
        body,
        headers: headers.into_iter().collect(),
        expected_path: dir.join(format!("{name}{EXPECTED_SUFFIX}")),
    })
}

/// `<case>.<ext>` that is neither the headers nor the expected file.
fn body_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}.");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|f| f.to_str()).is_some_and(|f| {
                f.starts_with(&prefix)
                    && f[prefix.len()..].find('.').is_none()
                    && !f.ends_with(HEADERS_SUFFIX)
                    && !f.ends_with(EXPECTED_SUFFIX)
            })
        })
}

/// Everything `paths` name: the fixtures root (every kind), one kind directory, or single case
/// files (`fixtures/stripe/invoice_paid.json`). Returned per kind, in a stable order.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<FixtureSet>, String> {
    let mut sets: Vec<FixtureSet> = Vec::new();
    for path in paths {
        if path.is_dir() && path.join(INSTANCE_FILE).is_file() {
            sets.push(load_set(path)?);
        } else if path.is_dir() {
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join(INSTANCE_FILE).is_file())
                .collect();
            if dirs.is_empty() {
                return Err(format!("{}: no fixture directories", path.display()));
            }
            dirs.sort();
            for dir in dirs {
                sets.push(load_set(&dir)?);
            }
        } else if path.is_file() {
            let dir = path.parent().unwrap_or(Path::new("."));
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .ok_or_else(|| format!("{}: not a fixture file", path.display()))?;
            let name = file
                .strip_suffix(HEADERS_SUFFIX)
                .or_else(|| file.strip_suffix(EXPECTED_SUFFIX))
                .or_else(|| file.rsplit_once('.').map(|(n, _)| n))
                .unwrap_or(file);
            let mut set = load_set(dir)?;
            set.cases.retain(|c| c.name == name);
            if set.cases.is_empty() {
                return Err(format!("{}: no such fixture case", path.display()));
            }
            sets.push(set);
        } else {
            return Err(format!("{}: no such file or directory", path.display()));
        }
    }
    Ok(sets)
}
