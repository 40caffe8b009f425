//! The command line: `serve`, `check`, `sign`, `replay`, `events`, `instances`, `sinks` and
//! `storage`. Output goes through [`outln!`], so a closed pipe (`hookgate events list | head`)
//! ends the command quietly instead of panicking.

/// `println!` that hands the write error back (`?`) instead of panicking on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod control;
mod events;
mod replay;
mod sign;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{self, DEFAULT_CONFIG_PATH};
use crate::provider::registry::Registry;
use crate::startup::Application;
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "hookgate",
    version,
    about = "Self-hosted inbound webhook gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve webhooks until SIGINT/SIGTERM.
    Serve {
        /// Configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "HOOKGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate the configuration and provider definitions without serving.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "HOOKGATE_CONFIG")]
        config: PathBuf,
        /// Also check the store: with `postgres`, connect and say whether the database is
        /// reachable and migrated (nothing is changed).
        #[arg(long)]
        storage: bool,
    },
    /// Print the headers a provider would send for a body (and a ready curl command).
    Sign(sign::SignArgs),
    /// Send fixture files, freshly signed, to a running gateway or any URL.
    Replay(replay::ReplayArgs),
    /// List, show and redeliver stored events and dead letters.
    Events(events::EventsArgs),
    /// List provider instances; pause or resume one (paused: 503 `paused`, providers retry).
    Instances(control::ControlArgs),
    /// List sinks; pause or resume one (paused: its tasks stay pending); send a test envelope.
    Sinks(control::ControlArgs),
    /// Maintain the embedded store (the gateway must be stopped).
    Storage {
        #[command(subcommand)]
        action: StorageCommand,
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH, env = "HOOKGATE_CONFIG", global = true)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Delete the index (event-ID table, queues, browse indexes) and rebuild it from the log.
    RebuildIndex,
}

/// Runs the parsed command. A closed stdout (the reader of a pipe went away) is success: the
/// reader has what it wanted.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match run_command(cli) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        result => result,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config, storage } => check(config, storage),
        Command::Sign(args) => sign::run(args),
        Command::Replay(args) => current_thread()?.block_on(replay::run(args)),
        Command::Events(args) => current_thread()?.block_on(events::run(args)),
        Command::Instances(args) => {
            current_thread()?.block_on(control::run(crate::store::PauseTarget::Instance, args))
        }
        Command::Sinks(args) => {
            current_thread()?.block_on(control::run(crate::store::PauseTarget::Sink, args))
        }
        Command::Storage { action, config } => storage(action, config),
    }
}

fn storage(action: StorageCommand, path: PathBuf) -> anyhow::Result<()> {
    let loaded = config::load(&path)?;
    let _log_writer = telemetry::init(&loaded.settings.log);
    match action {
        StorageCommand::RebuildIndex => {
            let records = crate::store::log::LogStore::rebuild_index(&loaded.settings.storage)?;
            outln!(
                "Rebuilt the index of {} from its log: {records} records applied.",
                loaded.settings.storage.path.as_str()
            );
        }
    }
    Ok(())
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let loaded = config::load(&path)?;
    let _log_writer = telemetry::init(&loaded.settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let app = Application::build(loaded).await?;
        app.run_until_stopped().await?;
        Ok(())
    })
}

fn check(path: PathBuf, storage: bool) -> anyhow::Result<()> {
    let loaded = config::load(&path)?;
    let registry = Registry::build(&loaded)?;
    crate::dispatch::build_routes(&loaded, Vec::new())?;
    let mut names: Vec<String> = registry
        .iter()
        .map(|i| format!("{} ({})", i.name, i.kind.name))
        .collect();
    names.sort();
    outln!(
        "{}: OK: {} provider instance(s) [{}], {} sink(s), providers from {}",
        loaded.file_name(),
        names.len(),
        names.join(", "),
        loaded.settings.sinks.len(),
        loaded.providers_dir.display()
    );
    for instance in registry.iter().filter(|i| i.uses_demo_secret()) {
        outln!(
            "warning: providers.{} uses the public demo secret; replace it before going live",
            instance.name
        );
    }
    if storage {
        check_storage(&loaded.settings.storage)?;
    }
    Ok(())
}

/// `check --storage`: reachability and schema, without changing anything.
fn check_storage(settings: &config::StorageSettings) -> anyhow::Result<()> {
    use crate::store::postgres::{self, SCHEMA_VERSION};
    match settings.backend {
        config::StorageBackend::Embedded => {
            let path = std::path::Path::new(settings.path.as_str());
            let state = if path.join("log").is_dir() {
                "holds a store"
            } else if path.exists() {
                "exists, no store yet (created at the first start)"
            } else {
                "does not exist yet (created at the first start)"
            };
            outln!("storage: embedded at {}: {state}", path.display());
        }
        config::StorageBackend::Postgres => {
            let status = current_thread()?
                .block_on(postgres::schema_status(settings))
                .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
            let migrated = match status.version {
                v if v == SCHEMA_VERSION => format!("migrated (schema version {v})"),
                v if v > SCHEMA_VERSION => anyhow::bail!(
                    "storage: {} has schema version {v}, newer than this hookgate \
                     ({SCHEMA_VERSION}): run a newer hookgate",
                    status.target
                ),
                0 => format!(
                    "not migrated yet (schema version {SCHEMA_VERSION} is applied by \
                     `hookgate serve` at start)"
                ),
                v => format!(
                    "at schema version {v} of {SCHEMA_VERSION} (`hookgate serve` applies the \
                     rest at start)"
                ),
            };
            outln!(
                "storage: PostgreSQL {} at {} is reachable, {migrated}",
                status.server,
                status.target
            );
        }
    }
    Ok(())
}
