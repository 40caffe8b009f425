//! Building and running the application. [`Application::build`] turns validated settings into a
//! bound listener, an open store, compiled providers and sinks; `hookgate serve` and the tests
//! both use it. Tests bind port 0 and read [`Application::port`].

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock::{Clock, SystemClock};
use crate::config::StorageBackend;
use crate::config::{ConfigError, LoadedSettings};
use crate::dispatch::{self, Dispatcher, HandlerRoute};
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::observe::Observer;
use crate::pause::{self, Pauses};
use crate::provider::registry::Registry;
use crate::routes::{self, admin, health, webhook, AppState};
use crate::store::log::LogStore;
use crate::store::postgres::PgStore;
use crate::store::Store;
use crate::telemetry::LogBudget;

/// How often idle rate-limiter entries are forgotten.
const LIMITER_PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// How long in-flight deliveries may take to finish at shutdown.
const WORKER_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Receipts purged per store write (keeps each write short: commits queue behind it) and per
/// maintenance round.
const PURGE_BATCH: usize = 500;
const PURGE_ROUND: usize = 10_000;
/// How often expired duplicate claims (and deliveries past retention) are removed.
const CLAIM_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
/// Rejection log lines per second (and burst) before they are counted instead of written.
const REJECTION_LOG_PER_SECOND: u32 = 20;
const REJECTION_LOG_BURST: u32 = 100;

/// What [`Application::build_with`] lets a caller replace.
#[derive(Default)]
pub struct Dependencies {
    /// Time source; default the system clock.
    pub clock: Option<Arc<dyn Clock>>,
    /// Event store; default a [`LogStore`] at `storage.path`.
    pub store: Option<Arc<dyn Store>>,
    /// In-process sync handlers, delivered to like configured sinks.
    pub handlers: Vec<HandlerRoute>,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Sink(String),
    #[error("cannot start the HTTP server: {0}")]
    Server(std::io::Error),
}

/// A built, not yet running, gateway.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Builds the gateway with the system clock and the configured embedded store.
    pub async fn build(loaded: LoadedSettings) -> Result<Self, StartupError> {
        Self::build_with(loaded, Dependencies::default()).await
    }

    /// Builds the gateway with injected dependencies (tests, embedding).
    pub async fn build_with(
        loaded: LoadedSettings,
        deps: Dependencies,
    ) -> Result<Self, StartupError> {
        let clock = deps.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let registry = Registry::build(&loaded)?;
        for instance in registry.iter() {
            if instance.uses_demo_secret() {
                warn!(
                    provider = %instance.name,
                    "USING THE PUBLIC DEMO SECRET: anyone can forge deliveries to /webhooks/{}. \
                     Set a real secret before exposing this gateway.",
                    instance.name
                );
            }
        }
        let routes = dispatch::build_routes(&loaded, deps.handlers)?;
        for route in &routes {
            route.open().map_err(StartupError::Sink)?;
        }
        let metrics = Arc::new(Metrics::new());
        let settings = loaded.settings;
        let server_settings = settings.server.clone();
        let addr = loaded.bind;
        let listener = TcpListener::bind(addr).map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let port = listener.local_addr().map_err(StartupError::Server)?.port();
        let store: Arc<dyn Store> = match deps.store {
            Some(store) => store,
            None => match settings.storage.backend {
                StorageBackend::Embedded => Arc::new(LogStore::open(
                    &settings.storage,
                    clock.clone(),
                    metrics.clone(),
                )?),
                StorageBackend::Postgres => {
                    Arc::new(PgStore::connect(&settings.storage, clock.clone()).await?)
                }
            },
        };
        let pauses = Arc::new(Pauses::default());
        // A pause made before this start holds from the first request on.
        match store.paused().await {
            Ok(list) => {
                pauses.replace(&list);
                for pause in &list {
                    warn!(
                        target = pause.target.as_str(),
                        name = %pause.name,
                        "Paused (resume with `hookgate {}s resume {}`).",
                        pause.target.as_str(),
                        pause.name
                    );
                }
            }
            Err(e) => warn!(error = %e, "Cannot read the pauses yet; retrying in the background."),
        }
        let observer = Arc::new(Observer::new(
            registry.iter().map(|i| i.name.as_str()),
            routes.iter().map(|r| r.name.as_str()),
            clock.now().timestamp_millis(),
        ));
        let dispatcher = Arc::new(Dispatcher::new(
            routes,
            store.clone(),
            clock.clone(),
            metrics.clone(),
            Duration::from_secs(settings.storage.lease_secs),
            pauses.clone(),
            observer.clone(),
        ));
        let instance_metrics = registry
            .iter()
            .map(|i| (i.name.clone(), metrics.instance(&i.name)))
            .collect();
        let state = web::Data::new(AppState {
            ingestor: Ingestor::new(store.clone(), dispatcher.clone()),
            dispatcher,
            registry,
            store,
            clock,
            trusted_proxies: server_settings.trusted_proxies.clone(),
            forwarded_header: server_settings.forwarded_header,
            body_read_timeout: Duration::from_millis(server_settings.body_read_timeout_ms),
            max_header_bytes: server_settings.max_header_bytes,
            instance_metrics,
            unknown_metrics: metrics.instance(webhook::UNKNOWN_PROVIDER_LABEL),
            rejection_log: LogBudget::new(REJECTION_LOG_PER_SECOND, REJECTION_LOG_BURST),
            metrics,
            admin_token: settings.admin.token.clone().filter(|t| !t.is_empty()),
            protect_metrics: settings.admin.protect_metrics,
            retention_secs: settings.storage.retention_secs,
            pauses,
            last_events: Default::default(),
            observer,
            admin_failures: Default::default(),
        });
        let app_state = state.clone();
        let ui_state = web::Data::new(crate::ui::UiState::new(state.admin_token.as_ref()));
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(ui_state.clone())
                // The receiver checks the header size itself (no middleware on the hot path);
                // everything else goes through the middleware.
                .service(web::scope("/webhooks").default_service(web::to(webhook::route)))
                .service(
                    web::scope("")
                        .wrap(actix_web::middleware::from_fn(routes::limit_headers))
                        .service(health::read_only("/health", health::health))
                        .service(health::read_only("/ready", health::ready))
                        .service(health::read_only("/metrics", health::metrics))
                        .service(admin::scope())
                        .service(crate::ui::scope())
                        .default_service(web::to(routes::not_found)),
                )
                // Where a nested scope (`/admin`) sends what it does not route.
                .default_service(web::to(routes::not_found))
        })
        .client_request_timeout(Duration::from_millis(
            server_settings.header_read_timeout_ms,
        ))
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(Duration::from_secs(server_settings.keep_alive_secs))
        .max_connections(server_settings.max_connections_per_worker)
        .shutdown_timeout(server_settings.shutdown_timeout_secs);
        if let Some(workers) = server_settings.workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener).map_err(StartupError::Server)?.run();
        info!(%addr, port, "Listening.");
        Ok(Self {
            port,
            server,
            state,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server gracefully when called (tests, embedding).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM or [`ServerHandle::stop`], then stops the dispatcher and
    /// closes the store (everything committed stays; pending deliveries resume on the next start).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let store = self.state.store.clone();
        let workers = self.state.dispatcher.spawn_workers(&stop_rx);
        let refresh = tokio::spawn(refresh_pauses(self.state.clone(), stop_rx.clone()));
        let maintenance = tokio::spawn(maintain(self.state.clone(), stop_rx));
        let result = self.server.await;
        info!("HTTP server stopped; finishing background work.");
        let _ = stop_tx.send(true);
        // Deliveries in flight get a bounded time to finish; whatever does not finish stays
        // pending in the store and is attempted again after the next start.
        let drain = futures_util::future::join_all(workers);
        if tokio::time::timeout(WORKER_DRAIN_TIMEOUT, drain)
            .await
            .is_err()
        {
            warn!("Deliveries still in flight at shutdown; they will be retried after restart.");
        }
        let _ = maintenance.await;
        let _ = refresh.await;
        drop(self.state);
        store.close();
        info!("Stopped.");
        result
    }
}

/// Reads the store's pauses every [`pause::REFRESH`]: what another replica (or a `hookgate
/// instances|sinks pause` run against the database) changed takes effect here too.
async fn refresh_pauses(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(pause::REFRESH);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => match state.store.paused().await {
                Ok(list) => {
                    failing = false;
                    if state.pauses.replace(&list) {
                        info!(paused = list.len(), "Pauses changed.");
                    }
                }
                // The last copy stays in force; one line per outage, not one per second.
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %e, "Cannot read the pauses; keeping the last ones read.");
                }
                Err(_) => {}
            },
            _ = stop.changed() => break,
        }
    }
}

/// Periodic upkeep: forget idle rate-limit keys, expire old duplicate claims.
async fn maintain(state: web::Data<AppState>, mut stop: watch::Receiver<bool>) {
    let mut prune = tokio::time::interval(LIMITER_PRUNE_INTERVAL);
    let mut expire = tokio::time::interval(CLAIM_EXPIRY_INTERVAL);
    loop {
        tokio::select! {
            _ = prune.tick() => {
                for instance in state.registry.iter() {
                    if let Some(limiter) = &instance.limiter {
                        limiter.prune();
                    }
                }
            }
            _ = expire.tick() => {
                let now = state.clock.now();
                let retention_ms =
                    i64::try_from(state.retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                match state.store.expire_claims(u64::try_from(now.timestamp()).unwrap_or(0)).await {
                    Ok(0) => {}
                    Ok(n) => info!(expired = n, "Expired duplicate claims."),
                    Err(e) => warn!(error = %e, "Claim expiry failed."),
                }
                if retention_ms > 0 {
                    let cutoff = now.timestamp_millis().saturating_sub(retention_ms);
                    let mut purged = 0;
                    while purged < PURGE_ROUND {
                        match state.store.purge_before(cutoff, PURGE_BATCH).await {
                            Ok(n) => {
                                purged += n;
                                if n < PURGE_BATCH {
                                    break;
                                }
                            }
                            Err(e) => {
                                warn!(error = %e, "Retention purge failed.");
                                break;
                            }
                        }
                    }
                    if purged > 0 {
                        info!(purged, "Purged deliveries past their retention.");
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
}
