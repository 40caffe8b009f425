//! Time as a dependency: the gateway asks a [`Clock`] for "now" (signature tolerance,
//! `received_at`, claim expiry), so tests can pin or move time instead of sleeping.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Whole seconds since the Unix epoch.
    fn unix_secs(&self) -> i64 {
        self.now().timestamp()
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stays where it is set; for tests and fixture replays.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn at_unix(secs: i64) -> Self {
        Self(Mutex::new(
            DateTime::from_timestamp(secs, 0).unwrap_or_default(),
        ))
    }

    pub fn set_unix(&self, secs: i64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            DateTime::from_timestamp(secs, 0).unwrap_or_default();
    }

    pub fn advance_secs(&self, secs: i64) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += chrono::Duration::seconds(secs);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
