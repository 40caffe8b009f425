//! What happens after an attempt: delivered, retried later (exponential backoff with jitter, or
//! the sink's explicit `retry.schedule`; `Retry-After` honoured), or dead-lettered (a permanent
//! failure, the attempt budget or the schedule spent, or the delivery too old).

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use super::Attempt;
use crate::config::RetrySettings;
use crate::store::{AttemptOutcome, AttemptRecord, TaskRecord, TaskStatus};

/// The delay before retry number `n` (1-based): `initial * 2^(n-1)`, capped, then scaled by a
/// factor in [0.5, 1) so that many failing deliveries do not retry in lockstep.
pub fn backoff(policy: &RetrySettings, n: u32, jitter_seed: &str) -> Duration {
    let exponential = policy
        .initial_backoff_ms
        .saturating_mul(1u64 << n.saturating_sub(1).min(40));
    let capped = exponential.min(policy.max_backoff_ms);
    let random = RandomState::new().hash_one((jitter_seed, n)) % 1000;
    Duration::from_millis(capped / 2 + capped / 2 * random / 1000)
}

/// Applies `attempt` to `task` at `now_ms`; returns the attempt record to store.
pub fn apply(
    policy: &RetrySettings,
    task: &mut TaskRecord,
    attempt: &Attempt,
    now_ms: i64,
    at: String,
    duration: Duration,
) -> AttemptRecord {
    task.attempts += 1;
    task.round_attempts += 1;
    let (mut outcome, http_status, exit_code, error, retry_after) = match attempt {
        Attempt::Delivered {
            http_status,
            exit_code,
            ..
        } => (
            AttemptOutcome::Delivered,
            *http_status,
            *exit_code,
            None,
            None,
        ),
        Attempt::Retry {
            error,
            http_status,
            exit_code,
            retry_after,
        } => (
            AttemptOutcome::Retry,
            *http_status,
            *exit_code,
            Some(error.clone()),
            *retry_after,
        ),
        Attempt::Permanent { error, http_status } => (
            AttemptOutcome::Dead,
            *http_status,
            None,
            Some(error.clone()),
            None,
        ),
    };
    let too_old = now_ms.saturating_sub(task.round_started_ms)
        >= i64::try_from(policy.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let schedule_spent =
        !policy.schedule.is_empty() && task.round_attempts as usize > policy.schedule.len();
    if outcome == AttemptOutcome::Retry
        && (task.round_attempts >= policy.max_attempts || too_old || schedule_spent)
    {
        outcome = AttemptOutcome::Dead;
    }
    match outcome {
        AttemptOutcome::Delivered => {
            task.status = TaskStatus::Delivered;
            task.next_attempt_ms = None;
            task.last_error = None;
        }
        AttemptOutcome::Dead => {
            task.status = TaskStatus::Dead;
            task.next_attempt_ms = None;
            task.last_error = error.clone();
        }
        AttemptOutcome::Retry => {
            let delay = match retry_after {
                Some(wait) => wait.min(Duration::from_millis(policy.max_backoff_ms)),
                None => policy
                    .scheduled(task.round_attempts)
                    .unwrap_or_else(|| backoff(policy, task.round_attempts, &task.envelope_id)),
            };
            task.status = TaskStatus::Pending;
            task.next_attempt_ms = Some(now_ms + delay.as_millis() as i64);
            task.last_error = error.clone();
        }
    }
    let response = match attempt {
        Attempt::Delivered { response, .. } => response.clone(),
        _ => None,
    };
    AttemptRecord {
        number: task.attempts,
        at,
        outcome,
        http_status,
        exit_code,
        error,
        duration_ms: duration.as_millis() as u64,
        response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetrySettings {
        RetrySettings {
            schedule: Vec::new(),
            max_attempts: 3,
            initial_backoff_ms: 1000,
            max_backoff_ms: 5000,
            max_age_secs: 3600,
        }
    }

    fn task() -> TaskRecord {
        TaskRecord {
            sink: "s".into(),
            envelope_id: "e".into(),
            status: TaskStatus::Pending,
            attempts: 0,
            round_attempts: 0,
            created_at_ms: 0,
            round_started_ms: 0,
            next_attempt_ms: Some(0),
            last_error: None,
            lane: Vec::new(),
        }
    }

    fn retry(after: Option<Duration>) -> Attempt {
        Attempt::Retry {
            error: "HTTP 503".into(),
            http_status: Some(503),
            exit_code: None,
            retry_after: after,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = policy();
        for n in 1..=5 {
            let d = backoff(&p, n, "x").as_millis() as u64;
            let full = (1000u64 << (n - 1)).min(5000);
            assert!(d >= full / 2 && d < full, "attempt {n}: {d} ms");
        }
    }

    #[test]
    fn failures_retry_until_the_budget_is_spent_then_dead_letter() {
        let p = policy();
        let mut t = task();
        let first = apply(&p, &mut t, &retry(None), 0, "t".into(), Duration::ZERO);
        assert_eq!(first.outcome, AttemptOutcome::Retry);
        assert_eq!(t.status, TaskStatus::Pending);
        assert!(t.next_attempt_ms.unwrap() >= 500);
        apply(&p, &mut t, &retry(None), 10, "t".into(), Duration::ZERO);
        let last = apply(&p, &mut t, &retry(None), 20, "t".into(), Duration::ZERO);
        assert_eq!(last.outcome, AttemptOutcome::Dead);
        assert_eq!((t.status, t.attempts), (TaskStatus::Dead, 3));
    }

    #[test]
    fn retry_after_is_honoured_within_the_cap_and_4xx_is_final() {
        let p = policy();
        let mut t = task();
        apply(
            &p,
            &mut t,
            &retry(Some(Duration::from_secs(2))),
            0,
            "t".into(),
            Duration::ZERO,
        );
        assert_eq!(t.next_attempt_ms, Some(2000));
        apply(
            &p,
            &mut t,
            &retry(Some(Duration::from_secs(60))),
            0,
            "t".into(),
            Duration::ZERO,
        );
        assert_eq!(t.next_attempt_ms, Some(5000));
        let mut t = task();
        let permanent = Attempt::Permanent {
            error: "HTTP 400".into(),
            http_status: Some(400),
        };
        let record = apply(&p, &mut t, &permanent, 0, "t".into(), Duration::ZERO);
        assert_eq!(
            (record.outcome, t.status),
            (AttemptOutcome::Dead, TaskStatus::Dead)
        );
    }

    #[test]
    fn an_old_delivery_is_dead_lettered_on_its_next_failure() {
        let p = policy();
        let mut t = task();
        apply(
            &p,
            &mut t,
            &retry(None),
            3_600_000,
            "t".into(),
            Duration::ZERO,
        );
        assert_eq!(t.status, TaskStatus::Dead);
    }
}
