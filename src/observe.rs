//! What the dashboard's instances and rejected pages show, kept in memory by this replica since
//! it started: per instance the answers by kind (accepted, duplicate, rejected by code), answer
//! latency, the clock skew of signed timestamps; per sink the attempts by outcome; and a bounded
//! ring of the last rejections (never a body, never a header).
//!
//! Each instance and sink has a window of the last 60 minutes, one slot per minute, so "the last
//! hour" (p99, success rate, the charts) costs 60 slots to read and one lock to record. Slots are
//! keyed by the minute they hold, so a quiet minute reads as zero without anyone clearing it.
//! Latency is kept as a log-scale histogram (4 buckets per doubling, so a percentile is within
//! 19 % of the true value), which is enough to tell 2 ms from 20 ms.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Rejections kept for `/ui/rejected` and `/admin/rejected`.
pub const REJECTION_RING: usize = 1000;
/// Events whose duplicate deliveries are counted; past it, the tenth hit longest ago is
/// forgotten.
pub const DUPLICATE_IDS: usize = 10_000;
/// Minutes in a window.
pub const WINDOW_MINUTES: usize = 60;
/// Rejection messages longer than this are cut (they can quote what the caller sent).
const MESSAGE_MAX_CHARS: usize = 300;
/// Latency buckets: bucket `b` holds answers of up to `2^(b/4)` µs; the last holds the rest
/// (2^24 µs ≈ 17 s).
const LATENCY_BUCKETS: usize = 97;
const MINUTE_MS: i64 = 60_000;

/// One rejected request.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub at_ms: i64,
    /// The instance name; `unknown` for names that are not configured.
    pub instance: String,
    pub client_ip: Option<IpAddr>,
    pub status: u16,
    /// The typed error code (`invalid_signature`, ...).
    pub code: &'static str,
    /// The error's message, at most 300 characters.
    pub message: String,
}

/// Which rejections to list.
#[derive(Debug, Clone, Default)]
pub struct RejectionQuery {
    pub instance: Option<String>,
    pub code: Option<String>,
    pub limit: usize,
}

/// One instance's counters.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStats {
    pub name: String,
    /// Since this replica started.
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Rejections by code since start, most frequent first.
    pub rejected_by_code: Vec<(String, u64)>,
    /// 99th percentile of answer latency over the last hour.
    pub p99_ms: Option<f64>,
    /// Receive time minus the signed timestamp of the last request that carried one: positive
    /// when the request was signed in the past.
    pub last_skew_secs: Option<i64>,
    /// The skew of the largest magnitude seen in the last hour (signed).
    pub max_abs_skew_secs: Option<i64>,
    /// The last hour, oldest minute first.
    pub minutes: Vec<Minute>,
}

/// One minute of an instance.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Minute {
    pub start_ms: i64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

/// One sink's counters.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStats {
    pub name: String,
    /// Attempts since this replica started.
    pub delivered: u64,
    pub failed: u64,
    /// Delivered / all attempts in the last hour; `None` without attempts.
    pub success_rate: Option<f64>,
    /// The last hour, oldest minute first.
    pub minutes: Vec<SinkMinute>,
}

/// One minute of a sink.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SinkMinute {
    pub start_ms: i64,
    pub delivered: u64,
    pub failed: u64,
}

/// Duplicate deliveries of one stored event seen by this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DuplicateHits {
    pub count: u64,
    pub last_ms: i64,
}

/// How a request was answered, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Answered {
    Accepted,
    Duplicate,
    /// A handshake or anything else acknowledged that is neither accepted nor a duplicate.
    #[default]
    Other,
    Rejected,
}

/// The observer of one gateway process.
#[derive(Debug)]
pub struct Observer {
    started_ms: i64,
    /// By name; fixed at start (the configured instances), so lookups need no lock.
    instances: BTreeMap<String, InstanceCell>,
    sinks: Vec<(String, SinkCell)>,
    rejections: Mutex<VecDeque<Rejection>>,
    /// By the gateway id of the stored event a duplicate named.
    duplicates: Mutex<HashMap<String, DuplicateHits>>,
}

#[derive(Debug, Default)]
struct InstanceCell {
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    inner: Mutex<InstanceInner>,
}

#[derive(Debug)]
struct InstanceInner {
    by_code: HashMap<&'static str, u64>,
    last_skew_secs: Option<i64>,
    slots: Vec<InstanceSlot>,
}

impl Default for InstanceInner {
    fn default() -> Self {
        Self {
            by_code: HashMap::new(),
            last_skew_secs: None,
            slots: vec![InstanceSlot::default(); WINDOW_MINUTES],
        }
    }
}

#[derive(Debug, Clone)]
struct InstanceSlot {
    /// The minute (Unix ms / 60 000) this slot holds; stale slots read as empty.
    minute: i64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    max_abs_skew: Option<i64>,
    latency: [u32; LATENCY_BUCKETS],
}

impl Default for InstanceSlot {
    fn default() -> Self {
        Self {
            minute: i64::MIN,
            accepted: 0,
            duplicates: 0,
            rejected: 0,
            max_abs_skew: None,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

#[derive(Debug)]
struct SinkCell {
    delivered: AtomicU64,
    failed: AtomicU64,
    slots: Mutex<Vec<SinkSlot>>,
}

impl Default for SinkCell {
    fn default() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            slots: Mutex::new(vec![SinkSlot::default(); WINDOW_MINUTES]),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SinkSlot {
    minute: i64,
    delivered: u64,
    failed: u64,
}

impl Default for SinkSlot {
    fn default() -> Self {
        Self {
            minute: i64::MIN,
            delivered: 0,
            failed: 0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slot of `minute`, cleared when it last held an older minute.
fn slot_of<T: Default>(slots: &mut [T], minute: i64, held: impl Fn(&T) -> i64) -> &mut T {
    let i = minute.rem_euclid(slots.len() as i64) as usize;
    if held(&slots[i]) != minute {
        slots[i] = T::default();
    }
    &mut slots[i]
}

/// The window's slots that hold one of the 60 minutes up to `now_minute`, oldest first, with
/// the minute each stands for (`None` for a minute nothing was recorded in).
fn window<T>(slots: &[T], now_minute: i64, held: impl Fn(&T) -> i64) -> Vec<(i64, Option<&T>)> {
    let n = slots.len() as i64;
    (now_minute - n + 1..=now_minute)
        .map(|m| {
            let slot = &slots[m.rem_euclid(n) as usize];
            (m, (held(slot) == m).then_some(slot))
        })
        .collect()
}

fn latency_bucket(latency: Duration) -> usize {
    let micros = latency.as_micros().max(1) as f64;
    ((micros.log2() * 4.0).ceil().max(0.0) as usize).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of a bucket, in ms.
fn bucket_ms(bucket: usize) -> f64 {
    2f64.powf(bucket as f64 / 4.0) / 1000.0
}

fn percentile(histogram: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, count) in histogram.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_ms(bucket));
        }
    }
    Some(bucket_ms(LATENCY_BUCKETS - 1))
}

fn cut(message: String) -> String {
    match message.char_indices().nth(MESSAGE_MAX_CHARS) {
        Some((at, _)) => format!("{}…", &message[..at]),
        None => message,
    }
}

impl Default for Observer {
    /// An observer of nothing (for commands that run a dispatcher outside the gateway).
    fn default() -> Self {
        Self::new([], [], 0)
    }
}

impl Observer {
    /// An observer of these instances and sinks.
    pub fn new<'a>(
        instances: impl IntoIterator<Item = &'a str>,
        sinks: impl IntoIterator<Item = &'a str>,
        started_ms: i64,
    ) -> Self {
        Self {
            started_ms,
            instances: instances
                .into_iter()
                .map(|name| (name.to_owned(), InstanceCell::default()))
                .collect(),
            sinks: sinks
                .into_iter()
                .map(|name| (name.to_owned(), SinkCell::default()))
                .collect(),
            rejections: Mutex::new(VecDeque::with_capacity(REJECTION_RING)),
            duplicates: Mutex::new(HashMap::new()),
        }
    }

    /// Records a duplicate delivery of the stored event `id` (a gateway id).
    pub fn duplicate_hit(&self, id: &str, now_ms: i64) {
        let mut hits = lock(&self.duplicates);
        if let Some(hit) = hits.get_mut(id) {
            hit.count += 1;
            hit.last_ms = now_ms;
            return;
        }
        if hits.len() >= DUPLICATE_IDS {
            // Forget the tenth hit longest ago in one go, so this runs once per 1,000 new ids.
            let mut times: Vec<i64> = hits.values().map(|h| h.last_ms).collect();
            let cut = DUPLICATE_IDS / 10;
            let (_, nth, _) = times.select_nth_unstable(cut);
            let nth = *nth;
            hits.retain(|_, h| h.last_ms > nth);
        }
        hits.insert(
            id.to_owned(),
            DuplicateHits {
                count: 1,
                last_ms: now_ms,
            },
        );
    }

    /// The duplicate deliveries this replica saw of the stored event `id`.
    pub fn duplicate_hits(&self, id: &str) -> Option<DuplicateHits> {
        lock(&self.duplicates).get(id).copied()
    }

    /// The events with duplicate deliveries, the latest hit first.
    pub fn recent_duplicates(&self, limit: usize) -> Vec<(String, DuplicateHits)> {
        let hits = lock(&self.duplicates);
        let mut list: Vec<(String, DuplicateHits)> =
            hits.iter().map(|(id, h)| (id.clone(), *h)).collect();
        drop(hits);
        list.sort_by(|a, b| b.1.last_ms.cmp(&a.1.last_ms).then_with(|| b.0.cmp(&a.0)));
        list.truncate(limit);
        list
    }

    /// When this process started (Unix ms): counters cover the time since.
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// Records one answer of `/webhooks/{instance}`. `skew_secs` is the receive time minus the
    /// signed timestamp, when the request carried one. Names that are not configured count
    /// nowhere (they are the caller's words); their rejections still enter the ring.
    pub fn answered(
        &self,
        instance: &str,
        answered: Answered,
        latency: Duration,
        skew_secs: Option<i64>,
        now_ms: i64,
    ) {
        let Some(cell) = self.instances.get(instance) else {
            return;
        };
        let counter = match answered {
            Answered::Accepted => Some(&cell.accepted),
            Answered::Duplicate => Some(&cell.duplicates),
            Answered::Rejected => Some(&cell.rejected),
            Answered::Other => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut inner = lock(&cell.inner);
        if skew_secs.is_some() {
            inner.last_skew_secs = skew_secs;
        }
        let slot = slot_of(&mut inner.slots, minute, |s| s.minute);
        slot.minute = minute;
        match answered {
            Answered::Accepted => slot.accepted += 1,
            Answered::Duplicate => slot.duplicates += 1,
            Answered::Rejected => slot.rejected += 1,
            Answered::Other => {}
        }
        slot.latency[latency_bucket(latency)] += 1;
        if let Some(skew) = skew_secs {
            if slot.max_abs_skew.is_none_or(|m| skew.abs() > m.abs()) {
                slot.max_abs_skew = Some(skew);
            }
        }
    }

    /// Records a rejection: counted by code for a configured instance, and kept in the ring.
    pub fn rejected(&self, mut rejection: Rejection) {
        if let Some(cell) = self.instances.get(&rejection.instance) {
            *lock(&cell.inner).by_code.entry(rejection.code).or_default() += 1;
        }
        rejection.message = cut(rejection.message);
        let mut ring = lock(&self.rejections);
        if ring.len() == REJECTION_RING {
            ring.pop_front();
        }
        ring.push_back(rejection);
    }

    /// Records one delivery attempt to a sink.
    pub fn attempted(&self, sink: &str, delivered: bool, now_ms: i64) {
        let Some((_, cell)) = self.sinks.iter().find(|(name, _)| name == sink) else {
            return;
        };
        let counter = if delivered {
            &cell.delivered
        } else {
            &cell.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut slots = lock(&cell.slots);
        let slot = slot_of(&mut slots, minute, |s| s.minute);
        slot.minute = minute;
        if delivered {
            slot.delivered += 1;
        } else {
            slot.failed += 1;
        }
    }

    /// The kept rejections that match, newest first.
    pub fn rejections(&self, query: &RejectionQuery) -> Vec<Rejection> {
        let ring = lock(&self.rejections);
        ring.iter()
            .rev()
            .filter(|r| query.instance.as_deref().is_none_or(|i| r.instance == i))
            .filter(|r| query.code.as_deref().is_none_or(|c| r.code == c))
            .take(query.limit)
            .cloned()
            .collect()
    }

    /// Every configured instance, by name.
    pub fn instances(&self, now_ms: i64) -> Vec<InstanceStats> {
        let now_minute = now_ms.div_euclid(MINUTE_MS);
        self.instances
            .iter()
            .map(|(name, cell)| {
                let inner = lock(&cell.inner);
                let mut rejected_by_code: Vec<(String, u64)> = inner
                    .by_code
                    .iter()
                    .map(|(code, n)| ((*code).to_owned(), *n))
                    .collect();
                rejected_by_code.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let mut histogram = [0u64; LATENCY_BUCKETS];
                let mut max_abs_skew: Option<i64> = None;
                let minutes = window(&inner.slots, now_minute, |s| s.minute)
                    .into_iter()
                    .map(|(minute, slot)| {
                        let Some(slot) = slot else {
                            return Minute {
                                start_ms: minute * MINUTE_MS,
                                ..Minute::default()
                            };
                        };
                        for (total, n) in histogram.iter_mut().zip(slot.latency.iter()) {
                            *total += u64::from(*n);
                        }
                        if let Some(skew) = slot.max_abs_skew {
                            if max_abs_skew.is_none_or(|m| skew.abs() > m.abs()) {
                                max_abs_skew = Some(skew);
                            }
                        }
                        Minute {
                            start_ms: minute * MINUTE_MS,
                            accepted: slot.accepted,
                            duplicates: slot.duplicates,
                            rejected: slot.rejected,
                        }
                    })
                    .collect();
                InstanceStats {
                    name: name.clone(),
                    accepted: cell.accepted.load(Ordering::Relaxed),
                    duplicates: cell.duplicates.load(Ordering::Relaxed),
                    rejected: cell.rejected.load(Ordering::Relaxed),
                    rejected_by_code,
                    p99_ms: percentile(&histogram, 0.99),
                    last_skew_secs: inner.last_skew_secs,
                    max_abs_skew_secs: max_abs_skew,
                    minutes,
                }
            })
            .collect()
    }

    /// Every configured sink, in config order.
    pub fn sinks(&self, now_ms: i64) -> Vec<SinkStats> {
        let now_minute = now_ms.div_euclid(MINUTE_MS);
        self.sinks
            .iter()
            .map(|(name, cell)| {
                let slots = lock(&cell.slots);
                let minutes: Vec<SinkMinute> = window(&slots, now_minute, |s| s.minute)
                    .into_iter()
                    .map(|(minute, slot)| SinkMinute {
                        start_ms: minute * MINUTE_MS,
                        delivered: slot.map_or(0, |s| s.delivered),
                        failed: slot.map_or(0, |s| s.failed),
                    })
                    .collect();
                let delivered: u64 = minutes.iter().map(|m| m.delivered).sum();
                let all = delivered + minutes.iter().map(|m| m.failed).sum::<u64>();
                SinkStats {
                    name: name.clone(),
                    delivered: cell.delivered.load(Ordering::Relaxed),
                    failed: cell.failed.load(Ordering::Relaxed),
                    success_rate: (all > 0).then(|| delivered as f64 / all as f64),
                    minutes,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn rejection(instance: &str, code: &'static str, at_ms: i64) -> Rejection {
        Rejection {
            at_ms,
            instance: instance.to_owned(),
            client_ip: None,
            status: 401,
            code,
            message: "no".into(),
        }
    }

    #[test]
    fn counts_answers_by_kind_and_minute() {
        let o = Observer::new(["a", "b"], ["s"], T0);
        let ms = Duration::from_millis(2);
        o.answered("a", Answered::Accepted, ms, Some(3), T0);
        o.answered("a", Answered::Accepted, ms, None, T0 + 61_000);
        o.answered("a", Answered::Duplicate, ms, Some(-40), T0 + 61_000);
        o.answered("a", Answered::Rejected, ms, None, T0 + 61_000);
        o.answered("nobody", Answered::Accepted, ms, None, T0);
        let stats = o.instances(T0 + 61_000);
        assert_eq!(stats.len(), 2);
        let a = &stats[0];
        assert_eq!((a.accepted, a.duplicates, a.rejected), (2, 1, 1));
        assert_eq!(a.minutes.len(), WINDOW_MINUTES);
        let last = a.minutes[WINDOW_MINUTES - 1];
        assert_eq!((last.accepted, last.duplicates, last.rejected), (1, 1, 1));
        assert_eq!(a.minutes[WINDOW_MINUTES - 2].accepted, 1);
        assert_eq!(a.last_skew_secs, Some(-40));
        assert_eq!(a.max_abs_skew_secs, Some(-40));
        assert_eq!(stats[1].accepted, 0);
        assert_eq!(stats[1].p99_ms, None);
    }

    #[test]
    fn minutes_older_than_an_hour_are_forgotten() {
        let o = Observer::new(["a"], ["s"], T0);
        o.answered(
            "a",
            Answered::Accepted,
            Duration::from_secs(1),
            Some(99),
            T0,
        );
        o.attempted("s", false, T0);
        let later = T0 + 60 * MINUTE_MS;
        let a = &o.instances(later)[0];
        assert!(a.minutes.iter().all(|m| m.accepted == 0));
        assert_eq!(a.p99_ms, None);
        assert_eq!(a.max_abs_skew_secs, None);
        // The counters since start stay.
        assert_eq!(a.accepted, 1);
        assert_eq!(a.last_skew_secs, Some(99));
        // A slot reused for a new minute starts empty.
        o.answered(
            "a",
            Answered::Accepted,
            Duration::from_millis(1),
            None,
            later,
        );
        assert_eq!(
            o.instances(later)[0].minutes[WINDOW_MINUTES - 1].accepted,
            1
        );
        let s = &o.sinks(later)[0];
        assert_eq!(s.success_rate, None);
        assert_eq!(s.failed, 1);
    }

    #[test]
    fn p99_is_within_a_bucket_of_the_truth() {
        let o = Observer::new(["a"], [], T0);
        for i in 0..1000u64 {
            let latency = if i < 990 { 1 } else { 50 };
            o.answered(
                "a",
                Answered::Accepted,
                Duration::from_millis(latency),
                None,
                T0,
            );
        }
        let p99 = o.instances(T0)[0].p99_ms.unwrap();
        assert!((1.0..1.2).contains(&p99), "{p99}");
        o.answered("a", Answered::Accepted, Duration::from_millis(50), None, T0);
        let p99 = o.instances(T0)[0].p99_ms.unwrap();
        assert!((50.0..60.0).contains(&p99), "{p99}");
    }

    #[test]
    fn sink_success_rate_covers_the_last_hour() {
        let o = Observer::new([], ["s", "t"], T0);
        for delivered in [true, true, true, false] {
            o.attempted("s", delivered, T0);
        }
        o.attempted("nobody", true, T0);
        let stats = o.sinks(T0);
        assert_eq!(stats[0].success_rate, Some(0.75));
        assert_eq!((stats[0].delivered, stats[0].failed), (3, 1));
        assert_eq!(stats[0].minutes[WINDOW_MINUTES - 1].delivered, 3);
        assert_eq!(stats[1].success_rate, None);
        assert_eq!(stats[1].minutes.len(), WINDOW_MINUTES);
    }

    #[test]
    fn the_ring_keeps_the_newest_and_filters() {
        let o = Observer::new(["a"], [], T0);
        for i in 0..(REJECTION_RING as i64 + 5) {
            let code = if i % 2 == 0 {
                "invalid_signature"
            } else {
                "missing_signature"
            };
            o.rejected(rejection(if i % 3 == 0 { "a" } else { "unknown" }, code, i));
        }
        let all = o.rejections(&RejectionQuery {
            limit: usize::MAX,
            ..Default::default()
        });
        assert_eq!(all.len(), REJECTION_RING);
        assert_eq!(all[0].at_ms, REJECTION_RING as i64 + 4);
        assert_eq!(all.last().unwrap().at_ms, 5);
        let some = o.rejections(&RejectionQuery {
            instance: Some("a".into()),
            code: Some("invalid_signature".into()),
            limit: 3,
        });
        assert_eq!(some.len(), 3);
        assert!(some
            .iter()
            .all(|r| r.instance == "a" && r.code == "invalid_signature"));
        // Counted by code only for the configured instance, since start.
        let a = &o.instances(T0)[0];
        let total: u64 = a.rejected_by_code.iter().map(|(_, n)| n).sum();
        assert_eq!(total, (REJECTION_RING as u64 + 5).div_ceil(3));
        assert_eq!(a.rejected_by_code[0].0, "invalid_signature");
    }

    #[test]
    fn duplicate_hits_are_counted_per_event_and_bounded() {
        let o = Observer::new([], [], T0);
        o.duplicate_hit("a", T0);
        o.duplicate_hit("b", T0 + 1);
        o.duplicate_hit("a", T0 + 2);
        assert_eq!(
            o.duplicate_hits("a"),
            Some(DuplicateHits {
                count: 2,
                last_ms: T0 + 2
            })
        );
        assert_eq!(o.duplicate_hits("c"), None);
        let recent: Vec<String> = o
            .recent_duplicates(10)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(recent, ["a", "b"]);
        for n in 0..(DUPLICATE_IDS as i64 * 2) {
            o.duplicate_hit(&format!("id{n}"), T0 + 10 + n);
        }
        let kept = lock(&o.duplicates).len();
        assert!(kept <= DUPLICATE_IDS, "{kept}");
        // The newest are kept, the oldest forgotten.
        assert!(o
            .duplicate_hits(&format!("id{}", DUPLICATE_IDS * 2 - 1))
            .is_some());
        assert_eq!(o.duplicate_hits("a"), None);
        assert_eq!(o.recent_duplicates(1)[0].1.count, 1);
    }

    #[test]
    fn long_messages_are_cut() {
        let o = Observer::new([], [], T0);
        let mut r = rejection("unknown", "unknown_provider", 0);
        r.message = "é".repeat(1000);
        o.rejected(r);
        let kept = &o.rejections(&RejectionQuery {
            limit: 1,
            ..Default::default()
        })[0];
        assert_eq!(kept.message.chars().count(), MESSAGE_MAX_CHARS + 1);
    }
}
