//! Prometheus metrics, served as text at `GET /metrics`. One registry per application, so tests
//! running several gateways in one process do not share counters.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Outcome label of requests that were acknowledged (accepted, duplicate, handshake).
pub const OUTCOME_OK: &str = "ok";
/// Outcome label of refused requests (the code label says why).
pub const OUTCOME_REJECTED: &str = "rejected";

/// One instance's hot-path metrics, looked up once at startup instead of per request.
#[derive(Debug, Clone)]
pub struct InstanceMetrics {
    /// `hookgate_requests_total{provider, outcome="ok", code=""}`.
    pub acknowledged: IntCounter,
    /// `hookgate_duplicates_total{provider}`.
    pub duplicates: IntCounter,
    /// `hookgate_request_duration_seconds{provider}`.
    pub duration: Histogram,
}

/// Every metric hookgate exports.
pub struct Metrics {
    registry: Registry,
    /// `hookgate_requests_total{provider, outcome, code}`.
    pub requests: IntCounterVec,
    /// `hookgate_request_duration_seconds{provider}`.
    pub request_duration: HistogramVec,
    /// `hookgate_duplicates_total{provider}`.
    pub duplicates: IntCounterVec,
    /// `hookgate_deliveries_total{sink, outcome}`: delivered, retry, dead.
    pub deliveries: IntCounterVec,
    /// `hookgate_delivery_duration_seconds{sink}`.
    pub delivery_duration: HistogramVec,
    /// `hookgate_delivery_queue_depth{sink}`: tasks waiting for an attempt.
    pub queue_depth: IntGaugeVec,
    /// `hookgate_dead_letters_total{sink}`.
    pub dead_letters: IntCounterVec,
    /// `hookgate_storage_commit_batch_size`.
    pub commit_batch: Histogram,
    /// `hookgate_storage_fsync_seconds`.
    pub fsync_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let latency = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let requests = counter(
            "hookgate_requests_total",
            "Webhook requests by provider instance, outcome and error code.",
            &["provider", "outcome", "code"],
        );
        let request_duration = histogram(
            "hookgate_request_duration_seconds",
            "Time from request to answer.",
            &["provider"],
            latency.clone(),
        );
        let duplicates = counter(
            "hookgate_duplicates_total",
            "Deliveries answered as duplicates.",
            &["provider"],
        );
        let deliveries = counter(
            "hookgate_deliveries_total",
            "Delivery attempts to sinks by outcome (delivered, retry, dead).",
            &["sink", "outcome"],
        );
        let delivery_duration = histogram(
            "hookgate_delivery_duration_seconds",
            "Duration of delivery attempts.",
            &["sink"],
            latency.clone(),
        );
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "hookgate_delivery_queue_depth",
                "Tasks waiting for a delivery attempt.",
            ),
            &["sink"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("unique metric");
        let dead_letters = counter(
            "hookgate_dead_letters_total",
            "Deliveries that became dead letters.",
            &["sink"],
        );
        let commit_batch = Histogram::with_opts(
            HistogramOpts::new(
                "hookgate_storage_commit_batch_size",
                "Writes made durable by one group commit.",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(commit_batch.clone()))
            .expect("unique metric");
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "hookgate_storage_fsync_seconds",
                "Time to flush and fsync one group commit.",
            )
            .buckets(latency),
        )
        .expect("valid metric");
        registry
            .register(Box::new(fsync_seconds.clone()))
            .expect("unique metric");
        Self {
            registry,
            requests,
            request_duration,
            duplicates,
            deliveries,
            delivery_duration,
            queue_depth,
            dead_letters,
            commit_batch,
            fsync_seconds,
        }
    }

    /// The handles of one instance (or of the `unknown` label).
    pub fn instance(&self, name: &str) -> InstanceMetrics {
        InstanceMetrics {
            acknowledged: self.requests.with_label_values(&[name, OUTCOME_OK, ""]),
            duplicates: self.duplicates.with_label_values(&[name]),
            duration: self.request_duration.with_label_values(&[name]),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
