//! hookgate: a self-hosted inbound webhook gateway.
//!
//! # Layout
//!
//! Read in the order a request travels:
//!
//! - [`startup`]: builds the app (listener, store, providers, sinks) for `serve` and the tests.
//! - [`routes`]: `/webhooks/{name}` ([`routes::webhook`] drives the stages) and the health checks.
//! - [`pipeline`]: the stages: [`pipeline::body`] (size, deadline), [`pipeline::access`] (client IP,
//!   allowlist, rate limit, Basic Auth), [`pipeline::signature`] (the only way to a `Verified`
//!   delivery), [`pipeline::parse`], [`pipeline::normalise`] (event ID, envelope).
//! - [`provider`]: provider definitions (`providers/*.toml`) compiled into kinds and instances.
//! - [`envelope`]: the provider-neutral envelope, canonical actions, ids.
//! - [`store`]: durable, group-committed storage with the idempotency table ([`store::sled`]).
//! - [`dispatch`]: delivers stored envelopes to the sinks (http, command, file, in-process),
//!   with retries, dead letters and per-object ordering.
//! - [`metrics`]: Prometheus metrics; [`routes::admin`]: the operator API.
//! - [`error`]: the one error type at the HTTP boundary, with stable codes.
//! - [`config`], [`secret`]: `config.toml`, `${VAR}` expansion, redacted secrets.
//! - [`fixture`]: recorded deliveries, shared by the golden test and `hookgate replay`.
//! - [`clock`], [`telemetry`], [`cli`]: time as a dependency, logging, the command line.

mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod envelope;
mod error;
pub mod fixture;
mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod provider;
mod routes;
pub mod secret;
pub mod startup;
pub mod store;
pub mod telemetry;
