//! The request path of `POST /webhooks/{name}`, one module per group of stages (DESIGN §1):
//!
//! | stage | module |
//! |-------|--------|
//! | 3 body limit, read timeout | [`body`] |
//! | 4–6 client IP, allowlist, rate limit, Basic Auth | [`access`] |
//! | 7 signature (turns [`Received`] into [`signature::Verified`]) | [`signature`] |
//! | 8 parse | [`parse`] |
//! | 9–11 handshakes, event ID, envelopes | [`normalise`] |
//!
//! Routing (1–2), the duplicate claim and persistence (10, 12) and the answer (13) are driven by
//! [`crate::routes::webhook`].

pub mod access;
pub mod body;
pub mod normalise;
pub mod parse;
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
pub struct Received {
    pub instance: Arc<Instance>,
    pub headers: HeaderMap,
    /// The request's query string (signed by URL-signing schemes).
    pub query: String,
    pub body: Bytes,
    pub client_ip: Option<IpAddr>,
    pub received_at: DateTime<Utc>,
}
