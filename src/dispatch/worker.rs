//! One worker per sink: take due tasks in arrival order (one per ordering lane), deliver them,
//! record each attempt, repeat. It wakes on new commits, at the next due retry, or every few
//! seconds; it stops when told, leaving unfinished tasks pending for the next start.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{retry, Route};
use crate::clock::Clock;
use crate::envelope::{format_millis, Envelope};
use crate::metrics::Metrics;
use crate::store::{AttemptOutcome, Store, TaskRecord, TaskStatus};

/// Pending tasks looked at per round (the order constraint needs the ones ahead).
const SCAN_LIMIT: usize = 10_000;
/// Wake-up interval without commits or due retries.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Pause after a storage error.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What the worker needs.
pub struct Worker {
    pub store: Arc<dyn Store>,
    pub route: Arc<Route>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

impl Worker {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut commits = self.store.commits();
        let name = self.route.name.clone();
        debug!(sink = %name, "Delivery worker started.");
        loop {
            if *stop.borrow() {
                break;
            }
            let wait = match self.round().await {
                Ok(Some(wait)) => wait,
                Ok(None) => continue,
                Err(e) => {
                    warn!(sink = %name, error = %e, "Delivery round failed; retrying.");
                    STORE_RETRY
                }
            };
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
        debug!(sink = %name, "Delivery worker stopped.");
    }

    /// Delivers what is due. `Ok(None)`: go again at once; `Ok(Some(d))`: nothing due for `d`.
    async fn round(&self) -> Result<Option<Duration>, String> {
        let store = self.store.clone();
        let name = self.route.name.clone();
        let pending = tokio::task::spawn_blocking(move || store.pending_tasks(&name, SCAN_LIMIT))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.metrics
            .queue_depth
            .with_label_values(&[&self.route.name])
            .set(pending.len() as i64);
        let now = self.clock.now().timestamp_millis();
        let mut blocked: HashSet<&[u8]> = HashSet::new();
        let mut due = Vec::new();
        let mut next_due: Option<i64> = None;
        for task in &pending {
            let lane = task.lane.as_slice();
            if !lane.is_empty() && !blocked.insert(lane) {
                continue; // an earlier envelope of this object is still pending
            }
            if task.next_attempt_ms <= now {
                due.push(task.envelope_id.clone());
                if due.len() >= self.route.concurrency {
                    break;
                }
            } else {
                next_due =
                    Some(next_due.map_or(task.next_attempt_ms, |n| n.min(task.next_attempt_ms)));
            }
        }
        if due.is_empty() {
            let wait = next_due
                .map(|t| Duration::from_millis(u64::try_from(t - now).unwrap_or(0)))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL)
                .max(Duration::from_millis(5));
            return Ok(Some(wait));
        }
        self.deliver(&due).await?;
        Ok(None)
    }

    /// Attempts `ids` now and records the outcomes. Returns whether all were delivered.
    pub async fn deliver(&self, ids: &[String]) -> Result<bool, String> {
        let store = self.store.clone();
        let sink = self.route.name.clone();
        let wanted = ids.to_vec();
        let loaded = tokio::task::spawn_blocking(move || {
            wanted
                .iter()
                .map(|id| {
                    let task = store
                        .tasks(id)?
                        .into_iter()
                        .find(|t| t.sink == sink && t.status == TaskStatus::Pending);
                    let envelope = store.envelope(id)?;
                    Ok((task, envelope))
                })
                .collect::<Result<Vec<_>, crate::store::StoreError>>()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let mut tasks: Vec<TaskRecord> = Vec::new();
        let mut envelopes: Vec<Envelope> = Vec::new();
        for (task, envelope) in loaded {
            match (task, envelope) {
                (Some(task), Some(envelope)) => {
                    tasks.push(task);
                    envelopes.push(envelope);
                }
                (Some(mut task), None) => {
                    // The envelope is gone (it never should be): nothing can ever be delivered.
                    let attempt = super::Attempt::Permanent {
                        error: "the stored envelope is missing".into(),
                        http_status: None,
                    };
                    let now = self.clock.now();
                    let record = retry::apply(
                        &self.route.retry,
                        &mut task,
                        &attempt,
                        now.timestamp_millis(),
                        format_millis(now),
                        Duration::ZERO,
                    );
                    self.record(vec![(task, record)]).await?;
                }
                _ => {}
            }
        }
        if envelopes.is_empty() {
            return Ok(true);
        }
        let started = Instant::now();
        let attempts = self.route.sink.deliver(&envelopes).await;
        let duration = started.elapsed();
        let now = self.clock.now();
        let mut all_delivered = true;
        let mut done = Vec::with_capacity(tasks.len());
        for (mut task, attempt) in tasks.into_iter().zip(attempts) {
            let record = retry::apply(
                &self.route.retry,
                &mut task,
                &attempt,
                now.timestamp_millis(),
                format_millis(now),
                duration,
            );
            let outcome = match record.outcome {
                AttemptOutcome::Delivered => "delivered",
                AttemptOutcome::Retry => "retry",
                AttemptOutcome::Dead => "dead",
            };
            self.metrics
                .deliveries
                .with_label_values(&[&self.route.name, outcome])
                .inc();
            self.metrics
                .delivery_duration
                .with_label_values(&[&self.route.name])
                .observe(duration.as_secs_f64());
            match record.outcome {
                AttemptOutcome::Delivered => {
                    debug!(sink = %self.route.name, id = %task.envelope_id, "Delivered.")
                }
                AttemptOutcome::Retry => {
                    all_delivered = false;
                    info!(sink = %self.route.name, id = %task.envelope_id, attempt = task.attempts,
                        error = record.error.as_deref().unwrap_or_default(), "Delivery failed; will retry.");
                }
                AttemptOutcome::Dead => {
                    all_delivered = false;
                    self.metrics
                        .dead_letters
                        .with_label_values(&[&self.route.name])
                        .inc();
                    warn!(sink = %self.route.name, id = %task.envelope_id, attempts = task.attempts,
                        error = record.error.as_deref().unwrap_or_default(), "Delivery dead-lettered.");
                }
            }
            done.push((task, record));
        }
        self.record(done).await?;
        Ok(all_delivered)
    }

    async fn record(
        &self,
        done: Vec<(TaskRecord, crate::store::AttemptRecord)>,
    ) -> Result<(), String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.record_attempts(&done))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}
