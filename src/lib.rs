//! hookgate: a self-hosted inbound webhook gateway.
//!
//! # Layout
//!
//! Read in the order a request travels:
//!
//! - [`config`]: `config.toml` as serde types, `${VAR}` expansion ([`secret`]), checks that need
//!   nothing else. A leaf: it imports no other module but [`secret`].
//! - [`startup`]: config → runtime objects (registry, sink routes, store, dispatcher, ingestor)
//!   → the running [`startup::Application`], for `serve` and the tests.
//! - `routes`: HTTP only. `/webhooks/{name}` runs stages 1–8, calls the plan and the ingest
//!   step, and turns their typed outcome into the answer; health, metrics and `/admin` too.
//! - [`pipeline`]: the stages: [`pipeline::body`] (size, deadline), [`pipeline::access`] (client
//!   IP, allowlist, rate limit, Basic Auth), [`pipeline::signature`] (the only way to a
//!   `Verified` request), [`pipeline::parse`], [`pipeline::plan`] (pure: handshake | events |
//!   unprocessable) and [`pipeline::normalise`] (event IDs, envelopes).
//! - `ingest`: stages 10–12: duplicate check, envelopes, the durable commit; sync mode through
//!   the dispatcher. Its outcome is `Accepted | Duplicate` per event.
//! - [`provider`]: provider definitions (`providers/*.toml`) compiled into kinds and instances.
//! - [`envelope`]: the provider-neutral envelope, canonical actions, ids; [`json`]: how deep
//!   JSON may nest, one set of limits for the parser and every reader of stored JSON.
//! - [`store`]: the backend-neutral contract ([`store::contract`]: ingest, task queue, event
//!   browser, maintenance) and the embedded backend ([`store::log`]).
//! - [`dispatch`]: sink routes (a sink with its filter and retry policy), the dispatcher that
//!   plans tasks and runs one worker per sink, retries, dead letters, per-object order.
//! - `error`: the one error type at the HTTP boundary, with stable codes; `admin`: the
//!   operator's queries, shared by `/admin` and `hookgate events`.
//! - [`pause`]: instances and sinks paused at run time (kept by the store, copied here).
//! - [`metrics`], [`telemetry`]: Prometheus metrics; logging (non-blocking, rejections within a
//!   budget).
//! - [`fixture`]: recorded requests, shared by the golden test and `hookgate replay`.
//! - `ui`: the dashboard at `/ui` (server-rendered HTML, signed session cookies, CSRF).
//! - [`clock`], [`cli`]: time as a dependency, the command line.
//!
//! Words: a *receipt* is an inbound request as kept; an *attempt* is one outbound try to a
//! sink; a *delivery task* is one envelope owed to one sink; a *sink route* is a sink with its
//! filter and settings. A provider's *kind* is its definition; a sink's `kind` key in the
//! config picks the sink type (`http`, `command`, `file`).

mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod envelope;
mod error;
pub mod fixture;
mod ingest;
pub mod json;
pub mod metrics;
pub mod observe;
pub mod pause;
pub mod pipeline;
pub mod provider;
mod routes;
pub mod secret;
pub mod startup;
pub mod store;
pub mod telemetry;
mod ui;
