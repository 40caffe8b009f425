//! `hookgate check`: strict validation that names the file and the key at fault.

mod common;

use std::path::Path;
use std::process::Command;

use common::providers_dir;

/// Runs `hookgate check` on `config` (written into a temp dir) with extra environment.
fn check(config: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = format!(
        "providers_dir = \"{}\"\n{config}",
        providers_dir().display()
    );
    std::fs::write(&path, config).unwrap();
    run_check(&path, env)
}

fn run_check(path: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookgate"));
    command.args(["check", "--config"]).arg(path);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn assert_rejected(config: &str, env: &[(&str, &str)], fragments: &[&str]) {
    let (ok, text) = check(config, env);
    assert!(!ok, "accepted:\n{config}");
    assert!(text.contains("gateway.toml"), "names the file: {text}");
    for fragment in fragments {
        assert!(text.contains(fragment), "`{fragment}` not in: {text}");
    }
}

#[test]
fn the_committed_configuration_is_valid_out_of_the_box() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, text) = run_check(&root.join("config.toml"), &[]);
    assert!(ok, "{text}");
    assert!(text.contains("demo (generic)"), "{text}");
    assert!(text.contains("public demo secret"), "{text}");
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    assert_rejected("[server]\nbnid = \"x\"\n", &[], &["bnid"]);
    assert_rejected(
        "[providers.demo]\nkind = \"generic\"\nsecrets = [\"s\"]\nsecret = \"typo\"\n",
        &[],
        &["providers.demo", "secret"],
    );
}

#[test]
fn bad_cidrs_and_limits_name_their_key() {
    assert_rejected(
        "[providers.demo]\nkind = \"generic\"\nsecrets = [\"s\"]\nallow_ips = [\"10.0.0/8\"]\n",
        &[],
        &["providers.demo.allow_ips[0]"],
    );
    assert_rejected(
        "[server]\nbody_limit_bytes = 0\n",
        &[],
        &["server.body_limit_bytes"],
    );
    assert_rejected(
        "[providers.demo]\nkind = \"generic\"\nsecrets = [\"s\"]\nrate_limit = { per_second = 0, burst = 1 }\n",
        &[],
        &["providers.demo.rate_limit.per_second"],
    );
    assert_rejected(
        "[[sinks]]\nname = \"a\"\nkind = \"file\"\npath = \"x\"\n[[sinks]]\nname = \"a\"\nkind = \"file\"\npath = \"y\"\n",
        &[],
        &["sinks[1].name"],
    );
}

#[test]
fn sink_filters_secrets_and_headers_are_compiled_by_check_and_named() {
    let http = |extra: &str| {
        format!(
            "[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\n{extra}\n"
        )
    };
    assert_rejected(
        &http("secret = \"whsec_not base64!\""),
        &[],
        &["sinks[0].secret"],
    );
    assert_rejected(
        &http("events = [\"*:ok.*\", \"[\"]"),
        &[],
        &["sinks[0].events[1]"],
    );
    assert_rejected(
        &http("headers = { \"bad header\" = \"x\" }"),
        &[],
        &["sinks[0].headers.bad header"],
    );
    // `check` compiles sinks without touching them: no file sink is created.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("never-created.jsonl");
    let (ok, text) = check(
        &format!(
            "[[sinks]]\nname = \"audit\"\nkind = \"file\"\npath = \"{}\"\n",
            target.display()
        ),
        &[],
    );
    assert!(ok, "{text}");
    assert!(!target.exists(), "check created the sink file");
}

#[test]
fn an_unset_variable_is_named_and_a_set_one_is_used() {
    let config = "[providers.demo]\nkind = \"generic\"\nsecrets = [\"${HG_TEST_SECRET}\"]\n";
    assert_rejected(
        config,
        &[],
        &["HG_TEST_SECRET", "providers.demo.secrets[0]"],
    );
    let (ok, text) = check(config, &[("HG_TEST_SECRET", "from-env")]);
    assert!(ok, "{text}");
    assert!(
        !text.contains("from-env"),
        "secrets are not printed: {text}"
    );
}

#[test]
fn kinds_and_their_requirements_are_checked_against_the_definitions() {
    assert_rejected(
        "[providers.demo]\nkind = \"nosuchkind\"\nsecrets = [\"s\"]\n",
        &[],
        &["providers.demo.kind", "nosuchkind"],
    );
    assert_rejected(
        "[providers.stripe]\nsecrets = [\"\"]\n",
        &[],
        &["providers.stripe.secrets"],
    );
    assert_rejected(
        "[providers.pipedrive]\n",
        &[],
        &["providers.pipedrive.basic_auth"],
    );
    assert_rejected(
        "[providers.Bad]\nkind = \"generic\"\nsecrets = [\"s\"]\n",
        &[],
        &["providers.Bad", "lowercase"],
    );
}

#[test]
fn environment_variables_override_the_file() {
    let (ok, text) = check("", &[("HOOKGATE__SERVER__BIND", "not-an-address")]);
    assert!(!ok);
    assert!(text.contains("server.bind"), "{text}");
    let (ok, text) = check("", &[("HOOKGATE__SERVER__BODY_LIMIT_BYTES", "2048")]);
    assert!(ok, "{text}");
}

#[test]
fn a_broken_provider_definition_names_its_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers");
    std::fs::create_dir(&providers).unwrap();
    std::fs::write(
        providers.join("mine.toml"),
        "[signature]\nscheme = \"hmac\"\nsignature = \"header:X-Sig\"\n[[event]]\ntype = [\"type\"]\n",
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[providers.mine]\nsecrets = [\"s\"]\n").unwrap();
    let (ok, text) = run_check(&config, &[]);
    assert!(!ok);
    assert!(text.contains("mine.toml"), "{text}");
    assert!(text.contains("event[0].type[0]"), "{text}");
    std::fs::write(
        providers.join("mine.toml"),
        "[signature]\nscheme = \"rot13\"\n[[event]]\ntype = [\"/type\"]\n",
    )
    .unwrap();
    let (ok, text) = run_check(&config, &[]);
    assert!(!ok);
    assert!(
        text.contains("mine.toml") && text.contains("rot13"),
        "{text}"
    );
}

#[test]
fn storage_backend_settings_are_checked() {
    assert_rejected(
        "[storage]\nbackend = \"postgres\"\n",
        &[],
        &["storage.url", "required"],
    );
    assert_rejected(
        "[storage]\nbackend = \"postgres\"\nurl = \"mysql://x@h/db\"\n",
        &[],
        &["storage.url", "postgres://"],
    );
    assert_rejected(
        "[storage]\nurl = \"postgres://x@h/db\"\n",
        &[],
        &["storage.url", "backend = \"postgres\""],
    );
    assert_rejected(
        "[storage]\nbackend = \"postgres\"\nurl = \"postgres://x@h/db\"\npool_size = 0\n",
        &[],
        &["storage.pool_size"],
    );
    assert_rejected("[storage]\nbackend = \"sqlite\"\n", &[], &["backend"]);
    // The URL comes from the environment like any secret.
    let (ok, text) = check(
        "[storage]\nbackend = \"postgres\"\nurl = \"${HG_TEST_DB_URL}\"\n",
        &[("HG_TEST_DB_URL", "postgres://u:pw@127.0.0.1:1/db")],
    );
    assert!(ok, "{text}");
}

/// `check --storage` against the test server and an address where nothing listens.
#[test]
fn check_storage_says_whether_the_database_is_reachable_and_migrated() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = runtime.block_on(common::postgres::fresh_database("check_storage"));
    // A password in the URL is never printed (trust auth ignores it).
    let with_password = url.replacen("postgres://hookgate@", "postgres://hookgate:s3cr3t-pw@", 1);
    let storage = |url: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "providers_dir = \"{}\"\n[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n\
                 connect_timeout_ms = 1000\n",
                providers_dir().display()
            ),
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["check", "--storage", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !text.contains("s3cr3t-pw"),
            "the password was printed: {text}"
        );
        (output.status.success(), text)
    };

    let (ok, text) = storage(&with_password);
    assert!(ok, "{text}");
    assert!(text.contains("is reachable, not migrated yet"), "{text}");

    // What `serve` does at start: migrate.
    runtime.block_on(async {
        let settings = hookgate::config::StorageSettings {
            backend: hookgate::config::StorageBackend::Postgres,
            url: Some(hookgate::secret::Secret::new(url.clone())),
            ..Default::default()
        };
        let store = hookgate::store::postgres::PgStore::connect(
            &settings,
            std::sync::Arc::new(hookgate::clock::SystemClock),
        )
        .await
        .unwrap();
        hookgate::store::Maintenance::close(&store);
    });
    let (ok, text) = storage(&with_password);
    assert!(ok, "{text}");
    assert!(
        text.contains("is reachable, migrated (schema version 2)"),
        "{text}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (ok, text) = storage(&format!(
        "postgres://hookgate:s3cr3t-pw@127.0.0.1:{port}/db"
    ));
    assert!(!ok, "{text}");
    assert!(
        text.contains("cannot connect to hookgate@127.0.0.1"),
        "{text}"
    );
}
