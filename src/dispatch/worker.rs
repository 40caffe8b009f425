//! One worker per sink: take due tasks from the store's queue (leased, one per ordering lane),
//! deliver them, record each attempt, repeat. It wakes on new commits and redeliveries, at the
//! next due retry, or every few seconds; it stops when told, leaving unfinished tasks pending
//! for the next start. Sync-mode requests use [`Worker::attempt`] for their own tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{retry, Attempt, SinkRoute};
use crate::clock::Clock;
use crate::envelope::{format_millis, Envelope};
use crate::metrics::Metrics;
use crate::observe::Observer;
use crate::pause::Pauses;
use crate::store::{
    AttemptOutcome, AttemptRecord, DueTask, PauseTarget, Store, StoreError, TaskRecord,
};

/// Wake-up interval without commits or due retries.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Pause after a storage error.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Shortest sleep before a retry that is due "now".
const MIN_WAIT: Duration = Duration::from_millis(5);
/// How often the queue-depth metric is recounted ([`crate::store::TaskQueue::pending_count`]
/// is exact, while a round only sees the tasks its scan reached).
const DEPTH_REFRESH: Duration = Duration::from_secs(5);

/// What a worker needs.
#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn Store>,
    pub route: Arc<SinkRoute>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// While this sink is paused, its tasks stay pending.
    pub pauses: Arc<Pauses>,
    /// The dashboard's per-sink counters.
    pub observer: Arc<Observer>,
}

impl Worker {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut wakeups = self.store.wakeups();
        let mut pause_changes = self.pauses.subscribe();
        let name = self.route.name.clone();
        debug!(sink = %name, "Delivery worker started.");
        let mut depth_counted: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            if self.pauses.is_paused(PauseTarget::Sink, &name) {
                // Take nothing: the tasks stay pending (and unleased) until the sink resumes.
                tokio::select! {
                    _ = pause_changes.changed() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
            if depth_counted.is_none_or(|at| at.elapsed() >= DEPTH_REFRESH) {
                match self.store.pending_count(name.clone()).await {
                    Ok(depth) => {
                        self.metrics
                            .queue_depth
                            .with_label_values(&[&name])
                            .set(i64::try_from(depth).unwrap_or(i64::MAX));
                        depth_counted = Some(Instant::now());
                    }
                    Err(e) => warn!(sink = %name, error = %e, "Cannot count the queue."),
                }
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
                _ = wakeups.changed() => {}
                _ = pause_changes.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
        debug!(sink = %name, "Delivery worker stopped.");
    }

    /// Delivers what is due. `Ok(None)`: go again at once; `Ok(Some(d))`: nothing due for `d`.
    async fn round(&self) -> Result<Option<Duration>, StoreError> {
        let now = self.clock.now().timestamp_millis();
        let due = self
            .store
            .take_due(self.route.name.clone(), now, self.route.concurrency)
            .await?;
        if due.tasks.is_empty() {
            let wait = due
                .next_due_ms
                .map(|t| Duration::from_millis(u64::try_from(t - now).unwrap_or(0)))
                .unwrap_or(IDLE_POLL)
                .clamp(MIN_WAIT, IDLE_POLL);
            return Ok(Some(wait));
        }
        self.attempt(due.tasks).await?;
        Ok(None)
    }

    /// Attempts leased tasks now and records the outcomes. Returns whether all were delivered.
    pub async fn attempt(&self, due: Vec<DueTask>) -> Result<bool, StoreError> {
        Ok(self.attempt_with_replies(due).await?.0)
    }

    /// [`Self::attempt`], with each delivered envelope's sink answer (by envelope id).
    pub async fn attempt_with_replies(
        &self,
        due: Vec<DueTask>,
    ) -> Result<(bool, Vec<(String, Option<super::SinkReply>)>), StoreError> {
        let mut replies = Vec::new();
        let mut tasks: Vec<TaskRecord> = Vec::with_capacity(due.len());
        let mut envelopes: Vec<Envelope> = Vec::with_capacity(due.len());
        let mut done = Vec::new();
        let mut all_delivered = true;
        for DueTask { task, envelope } in due {
            match envelope {
                Ok(envelope) => {
                    tasks.push(task);
                    envelopes.push(envelope);
                }
                Err(error) => {
                    // Unreadable: nothing can ever be delivered. A dead letter, not a stuck queue.
                    all_delivered = false;
                    done.push(self.outcome(
                        task,
                        &Attempt::Permanent {
                            error,
                            http_status: None,
                        },
                        Duration::ZERO,
                    ));
                }
            }
        }
        if !envelopes.is_empty() {
            let started = Instant::now();
            let attempts = self.route.sink.deliver(&envelopes).await;
            let duration = started.elapsed();
            for ((task, attempt), envelope) in tasks.into_iter().zip(attempts).zip(&envelopes) {
                let (task, record) = self.outcome(task, &attempt, duration);
                all_delivered &= record.outcome == AttemptOutcome::Delivered;
                done.push((task, record));
                if let Attempt::Delivered { reply, .. } = attempt {
                    replies.push((envelope.id.clone(), reply));
                }
            }
        }
        self.store.record_attempts(done).await?;
        Ok((all_delivered, replies))
    }

    /// Applies one attempt to its task: new state, metrics, a log line for failures.
    fn outcome(
        &self,
        mut task: TaskRecord,
        attempt: &Attempt,
        duration: Duration,
    ) -> (TaskRecord, AttemptRecord) {
        let now = self.clock.now();
        let record = retry::apply(
            &self.route.retry,
            &mut task,
            attempt,
            now.timestamp_millis(),
            format_millis(now),
            duration,
        );
        let sink = &self.route.name;
        let outcome = match record.outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Dead => "dead",
        };
        self.metrics
            .deliveries
            .with_label_values(&[sink, outcome])
            .inc();
        self.observer.attempted(
            sink,
            record.outcome == AttemptOutcome::Delivered,
            now.timestamp_millis(),
        );
        self.metrics
            .delivery_duration
            .with_label_values(&[sink])
            .observe(duration.as_secs_f64());
        let error = record.error.as_deref().unwrap_or_default();
        match record.outcome {
            AttemptOutcome::Delivered => debug!(%sink, id = %task.envelope_id, "Delivered."),
            AttemptOutcome::Retry => info!(%sink, id = %task.envelope_id, attempt = task.attempts,
                %error, "Delivery failed; will retry."),
            AttemptOutcome::Dead => {
                self.metrics.dead_letters.with_label_values(&[sink]).inc();
                warn!(%sink, id = %task.envelope_id, attempts = task.attempts, %error,
                    "Delivery dead-lettered.");
            }
        }
        (task, record)
    }
}
