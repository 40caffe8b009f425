//! Pauses at run time (DESIGN §6): a paused instance answers 503 `paused` with `Retry-After`,
//! a paused sink's tasks stay pending until it is resumed. The store keeps the pauses
//! ([`crate::store::Controls`]), so they survive restarts and every replica of a shared store
//! sees them; [`Pauses`] is this process's copy, read on the request path without I/O and
//! refreshed from the store every [`REFRESH`] (and at once after a change made here).

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::{Pause, PauseTarget};

/// How often the store's pauses are read again (what another replica changed shows up here
/// within this).
pub const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Default, PartialEq, Eq)]
struct Paused {
    instances: HashSet<String>,
    sinks: HashSet<String>,
}

/// The pauses as last read from the store.
#[derive(Debug)]
pub struct Pauses {
    current: RwLock<Paused>,
    /// Bumped on every change, so sink workers wake when they are resumed.
    changes: watch::Sender<u64>,
}

impl Default for Pauses {
    fn default() -> Self {
        Self {
            current: RwLock::new(Paused::default()),
            changes: watch::Sender::new(0),
        }
    }
}

impl Pauses {
    pub fn is_paused(&self, target: PauseTarget, name: &str) -> bool {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        match target {
            PauseTarget::Instance => current.instances.contains(name),
            PauseTarget::Sink => current.sinks.contains(name),
        }
    }

    /// Replaces the copy with what the store holds; returns whether anything changed.
    pub fn replace(&self, pauses: &[Pause]) -> bool {
        let mut next = Paused::default();
        for pause in pauses {
            match pause.target {
                PauseTarget::Instance => next.instances.insert(pause.name.clone()),
                PauseTarget::Sink => next.sinks.insert(pause.name.clone()),
            };
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if *current == next {
            return false;
        }
        *current = next;
        drop(current);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// Changes after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_copy_answers_and_notifies_only_on_change() {
        let pauses = Pauses::default();
        let mut changes = pauses.subscribe();
        let list = vec![Pause {
            target: PauseTarget::Sink,
            name: "app".into(),
            paused_at_ms: 1,
        }];
        assert!(pauses.replace(&list));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(pauses.is_paused(PauseTarget::Sink, "app"));
        assert!(!pauses.is_paused(PauseTarget::Instance, "app"));
        assert!(!pauses.replace(&list));
        assert!(!changes.has_changed().unwrap());
        assert!(pauses.replace(&[]));
        assert!(!pauses.is_paused(PauseTarget::Sink, "app"));
    }
}
