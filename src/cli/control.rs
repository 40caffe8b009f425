//! `hookgate instances` and `hookgate sinks`: list them with their pause state, pause and
//! resume them, and send a sink a test envelope. Like `hookgate events`, through the running
//! gateway's `/admin` API when one answers, else on the store directly (a pause made offline
//! holds from the next start; with PostgreSQL, running replicas see it within a second).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::events::{backend, print_json, text, Backend};
use crate::admin;
use crate::clock::{Clock, SystemClock};
use crate::config;
use crate::store::PauseTarget;

#[derive(Debug, Args)]
pub struct ControlArgs {
    #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH, env = "HOOKGATE_CONFIG", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: ControlCommand,
}

#[derive(Debug, Subcommand)]
enum ControlCommand {
    /// Every configured name and whether it is paused.
    List,
    /// Pause: an instance answers 503 `paused` (providers retry); a sink's tasks stay pending.
    Pause { name: String },
    /// Resume what was paused.
    Resume { name: String },
    /// Sinks only: send one test envelope (type `hookgate.test`) and print the sink's answer.
    Test { name: String },
}

pub async fn run(target: PauseTarget, args: ControlArgs) -> anyhow::Result<()> {
    let loaded = config::load(&args.config)?;
    let names: Vec<String> = match target {
        PauseTarget::Instance => loaded.settings.providers.keys().cloned().collect(),
        PauseTarget::Sink => loaded
            .settings
            .sinks
            .iter()
            .map(|s| s.common().name.clone())
            .collect(),
    };
    let known = |name: &str| -> anyhow::Result<()> {
        if names.iter().any(|n| n == name) {
            return Ok(());
        }
        bail!(
            "no {} named `{}` in {} (configured: {})",
            target.as_str(),
            text(name),
            loaded.file_name(),
            names.join(", ")
        )
    };
    let plural = format!("{}s", target.as_str());
    if let ControlCommand::Test { name } = &args.command {
        if target != PauseTarget::Sink {
            bail!("only sinks can be tested");
        }
        known(name)?;
        return test(&loaded, name).await;
    }
    let backend = backend(&loaded).await?;
    let now = SystemClock.now().timestamp_millis();
    let result = match (&backend, &args.command) {
        (Backend::Api { .. }, ControlCommand::List) => {
            print_states(&backend.get(&format!("/{plural}"), &[]).await?, &plural)
        }
        (Backend::Store(store), ControlCommand::List) => print_states(
            &admin::pause_states(&**store, target, &names)
                .await
                .map_err(|e| anyhow!(e))?,
            &plural,
        ),
        (_, ControlCommand::Pause { name } | ControlCommand::Resume { name }) => {
            known(name)?;
            let paused = matches!(args.command, ControlCommand::Pause { .. });
            let body = match &backend {
                Backend::Api { .. } => {
                    let action = if paused { "pause" } else { "resume" };
                    backend
                        .post(&format!("/{plural}/{name}/{action}"), &[])
                        .await?
                }
                Backend::Store(store) => admin::set_paused(&**store, target, name, paused, now)
                    .await
                    .map_err(|e| anyhow!(e))?,
            };
            let verb = if paused { "paused" } else { "resumed" };
            let changed = body["changed"].as_bool().unwrap_or(false);
            outln!(
                "{} {} {}{}",
                target.as_str(),
                text(name),
                verb,
                if changed { "" } else { " (it already was)" }
            );
            Ok(())
        }
        (_, ControlCommand::Test { .. }) => unreachable!("handled above"),
    };
    if let Backend::Store(store) = backend {
        store.close();
    }
    result
}

fn print_states(body: &Value, plural: &str) -> anyhow::Result<()> {
    for entry in body[plural].as_array().cloned().unwrap_or_default() {
        let name = text(entry["name"].as_str().unwrap_or_default()).into_owned();
        match entry["paused_at"].as_str() {
            Some(at) if entry["paused"] == true => outln!("{name:<24} paused since {}", text(at)),
            _ => outln!("{name:<24} running"),
        }
    }
    Ok(())
}

/// Through the API when the gateway runs; otherwise the sink is built from the config here.
async fn test(loaded: &config::LoadedSettings, name: &str) -> anyhow::Result<()> {
    let backend = backend(loaded).await?;
    let body = match &backend {
        Backend::Api { .. } => backend.post(&format!("/sinks/{name}/test"), &[]).await?,
        Backend::Store(store) => {
            let routes = crate::dispatch::build_routes(loaded, Vec::new())?;
            for route in routes.iter().filter(|r| r.name == name) {
                route.open().map_err(|e| anyhow!(e))?;
            }
            let dispatcher = crate::dispatch::Dispatcher::new(
                routes,
                store.clone(),
                Arc::new(SystemClock),
                Arc::new(crate::metrics::Metrics::new()),
                std::time::Duration::from_secs(loaded.settings.storage.lease_secs),
                Arc::new(crate::pause::Pauses::default()),
                Arc::new(crate::observe::Observer::default()),
            );
            let result = dispatcher.test_sink(name).await;
            store.close();
            result.ok_or_else(|| anyhow!("no sink named `{name}`"))?
        }
    };
    print_json(&body)?;
    if body["outcome"] != "delivered" {
        bail!("the sink did not accept the test envelope");
    }
    Ok(())
}
