//! The request path of `POST /webhooks/{name}`, one module per group of stages (DESIGN §1):
//!
//! | stage | module |
//! |-------|--------|
//! | 3 body limit, read timeout | [`body`] |
//! | 4–6 client IP, allowlist, rate limit, Basic Auth | [`access`] |
//! | 7 signature (turns [`Received`] into [`signature::Verified`]) | [`signature`] |
//! | 8 parse | [`parse`] |
//! | 9–10 handshake or events, event IDs (pure) | [`plan`] |
//! | 10–11 event ID, envelopes | [`normalise`] |
//!
//! Routing (1–2) and the answer (13) are HTTP, in [`crate::routes::webhook`]; the duplicate
//! claim, normalising and persisting (10–12) are [`crate::ingest`].

pub mod access;
pub mod body;
pub mod normalise;
pub mod parse;
pub mod plan;
pub mod signature;

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::header::HeaderMap;
use actix_web::web::Bytes;
use chrono::{DateTime, Utc};

use crate::provider::registry::Instance;

/// A delivery whose body has been read and whose caller passed the access checks, but whose
/// signature has not been verified yet.
#[derive(Debug)]
pub struct Received<'r> {
    pub instance: Arc<Instance>,
    /// The request's headers, borrowed: nothing is copied before the duplicate check.
    pub headers: &'r HeaderMap,
    /// The request's query string (signed by URL-signing schemes).
    pub query: &'r str,
    pub body: Bytes,
    pub client_ip: Option<IpAddr>,
    pub received_at: DateTime<Utc>,
}
