//! hookgate embedded in an application, with an in-process sync handler.
//!
//! ```sh
//! cargo run --example embedded            # serves the committed config.toml
//! ```
//! Every stored envelope is handed to `PrintHandler` (as well as to the configured sinks), with
//! the same retries, ordering and dead letters as any sink. Returning `Err` retries it later.

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use hookgate::config::RetrySettings;
use hookgate::dispatch::{HandlerRoute, SyncHandler};
use hookgate::envelope::Envelope;
use hookgate::startup::{Application, Dependencies};

/// Prints each envelope; a real handler would update the application's own records.
struct PrintHandler;

impl SyncHandler for PrintHandler {
    fn handle<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            println!(
                "{} {}:{}.{} {}",
                envelope.id,
                envelope.provider,
                envelope.object,
                envelope.action,
                envelope.object_id.as_deref().unwrap_or("-")
            );
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loaded = hookgate::config::load(Path::new("config.toml"))?;
    let _log_writer = hookgate::telemetry::init(&loaded.settings.log);
    let app = Application::build_with(
        loaded,
        Dependencies {
            handlers: vec![HandlerRoute {
                name: "print".into(),
                events: Vec::new(), // every envelope
                retry: RetrySettings::default(),
                handler: Arc::new(PrintHandler),
            }],
            ..Default::default()
        },
    )
    .await?;
    app.run_until_stopped().await?;
    Ok(())
}
