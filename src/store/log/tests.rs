//! Unit tests of the commit-log store that need its insides: fault hooks, leases, caches.
use super::*;
use crate::clock::ManualClock;
use crate::store::{NewEnvelope, ReceiptStatus};

fn settings(dir: &Path) -> StorageSettings {
    StorageSettings {
        path: dir.join("store").to_str().unwrap().into(),
        dedup_ttl_secs: 100,
        write_timeout_ms: 2_000,
        ..StorageSettings::default()
    }
}

fn ulid(n: u128) -> String {
    ulid::Ulid::from(n).to_string()
}

fn event(id: &str, event_id: &str, body: &[u8]) -> NewReceipt {
    let envelope: Envelope = serde_json::from_value(serde_json::json!({
        "id": id, "provider": "p", "kind": "generic", "event_id": event_id,
        "type": "a.created", "action": "created", "object": "a", "object_id": null,
        "current": null, "previous": null, "occurred_at": null,
        "received_at": "2024-01-01T00:00:00.000Z", "meta": {}
    }))
    .unwrap();
    NewReceipt {
        receipt: Receipt {
            id: id.into(),
            provider: "p".into(),
            kind: "generic".into(),
            event_id: Some(event_id.into()),
            received_at: envelope.received_at.clone(),
            client_ip: None,
            headers: vec![],
            status: ReceiptStatus::Accepted,
            error: None,
            envelope_ids: vec![],
            types: vec![],
            subjects: Vec::new(),
            event_ids: vec![],
        },
        body: bytes::Bytes::copy_from_slice(body),
        events: vec![NewEnvelope {
            dedup: DedupKey {
                provider: "p".into(),
                event_id: event_id.into(),
            },
            json: serde_json::to_vec(&envelope).unwrap().into(),
            envelope,
            sinks: vec!["sink-a".into()],
            lane: Vec::new(),
            not_before_ms: 0,
        }],
        replay_guard: None,
    }
}

fn open(dir: &Path, tweak: impl FnOnce(&mut StorageSettings)) -> LogStore {
    let mut s = settings(dir);
    tweak(&mut s);
    LogStore::open(
        &s,
        Arc::new(ManualClock::at_unix(1_000)),
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

/// Holds every sync until the returned sender is dropped or sent to.
fn hold_syncs(store: &LogStore) -> std::sync::mpsc::Sender<()> {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = Mutex::new(held);
    store.set_before_sync(Some(Arc::new(move || {
        let _ = lock(&held).recv();
    })));
    release
}

/// The task delivered by its first attempt, with that attempt's record.
fn delivered(mut task: TaskRecord) -> (TaskRecord, crate::store::AttemptRecord) {
    task.status = TaskStatus::Delivered;
    task.next_attempt_ms = None;
    let attempt = crate::store::AttemptRecord {
        number: 1,
        at: "t".into(),
        outcome: crate::store::AttemptOutcome::Delivered,
        http_status: None,
        exit_code: None,
        error: None,
        duration_ms: 0,
        response: None,
    };
    (task, attempt)
}

fn key(event_id: &str) -> DedupKey {
    DedupKey {
        provider: "p".into(),
        event_id: event_id.into(),
    }
}

/// The fault-injecting "disk" holds every sync: neither the commit nor a duplicate check
/// of the same event (written to the log, not yet synced) may answer, and a worker is not
/// handed its task, until the sync returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_or_handed_out_before_its_sync_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), |_| {}));
    let release = hold_syncs(&store);
    let commit = tokio::spawn(store.commit(event(&ulid(1), "e1", b"{}")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!commit.is_finished(), "acknowledged before the sync");
    // The record is written and the writer is inside its sync.
    assert!(lock(&store.shared.intake)
        .inflight
        .contains_key(&key("e1").to_bytes()));
    let duplicate = tokio::spawn(store.find_duplicate(key("e1")));
    let again = tokio::spawn(store.commit(event(&ulid(2), "e1", b"{}")));
    let taken = tokio::spawn(store.take_due("sink-a".into(), 10, 10));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !duplicate.is_finished(),
        "duplicate answered before the sync"
    );
    assert!(
        !again.is_finished(),
        "duplicate commit answered before the sync"
    );
    assert!(
        taken.await.unwrap().unwrap().tasks.is_empty(),
        "a worker saw an unsynced task"
    );
    release.send(()).unwrap();
    assert_eq!(
        commit.await.unwrap().unwrap(),
        Commit::Stored(vec![Committed::Accepted])
    );
    assert_eq!(duplicate.await.unwrap().unwrap(), Some(ulid(1)));
    assert_eq!(
        again.await.unwrap().unwrap(),
        Commit::Stored(vec![Committed::Duplicate { id: ulid(1) }])
    );
    store.set_before_sync(None);
    let taken = store.take_due("sink-a".into(), 10, 10).await.unwrap();
    assert_eq!(taken.tasks.len(), 1, "handed out once synced and applied");
    drop(release);
}

#[test]
fn recent_claims_are_bounded_oldest_first_and_expire() {
    let mut recent = RecentClaims::default();
    for n in 0..=RECENT_CLAIMS as u64 {
        recent.insert(n.to_be_bytes().to_vec(), format!("id{n}"), 100, n + 1);
    }
    assert_eq!(recent.claims.len(), RECENT_CLAIMS);
    assert_eq!(
        recent.get(&0u64.to_be_bytes(), 10),
        None,
        "the oldest went first"
    );
    assert_eq!(recent.get(&1u64.to_be_bytes(), 10), Some("id1"));
    assert_eq!(recent.get(&1u64.to_be_bytes(), 100), None, "expired");
    // A key claimed again keeps its newer claim when its old place is evicted.
    recent.insert(1u64.to_be_bytes().to_vec(), "again".into(), 200, 99_999);
    recent.insert(b"x".to_vec(), "x".into(), 200, 100_000);
    assert_eq!(recent.get(&1u64.to_be_bytes(), 150), Some("again"));
}

/// Receipts still pending at the front do not stop retention, and no purge reads more
/// than a few receipts per one it may delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_moves_past_pending_receipts_a_few_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), |_| {});
    for n in 1..=20u128 {
        store
            .commit(event(&ulid(n << 80), &format!("e{n}"), b"{}"))
            .await
            .unwrap();
    }
    // The newest ten are finished; the oldest ten are still pending.
    let mut done = Vec::new();
    for n in 11..=20u128 {
        let task = store.tasks(ulid(n << 80)).await.unwrap().remove(0);
        done.push(delivered(task));
    }
    store.record_attempts(done).await.unwrap();
    let first = store.purge_before(1_000, 1).await.unwrap();
    assert_eq!(
        first, 0,
        "the first purge looks at four pending receipts only"
    );
    let mut purged = first;
    for _ in 0..20 {
        purged += store.purge_before(1_000, 1).await.unwrap();
    }
    assert_eq!(purged, 10);
    for n in 1..=10u128 {
        assert!(
            store.receipt(ulid(n << 80)).await.unwrap().is_some(),
            "pending kept"
        );
    }
}

/// An attempt record that timed out may still land: its task stays leased, so no other
/// taker attempts it again meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_record_that_timed_out_keeps_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    // The default test deadline (2 s): a slow CI disk must not time out the set-up commit.
    let store = open(dir.path(), |_| {});
    store.commit(event(&ulid(1), "e1", b"{}")).await.unwrap();
    let due = store.take_due("sink-a".into(), 10, 10).await.unwrap();
    let task = due.tasks[0].task.clone();
    let leased = |store: &LogStore| {
        lock(&store.shared.leases)
            .0
            .get("sink-a")
            .is_some_and(|l| l.contains_key(&id_key(&ulid(1)).unwrap()))
    };
    assert!(leased(&store));
    let release = hold_syncs(&store);
    let result = store.record_attempts(vec![delivered(task)]).await;
    assert!(
        matches!(result, Err(StoreError::Timeout(2_000))),
        "{result:?}"
    );
    assert!(
        leased(&store),
        "the lease ended with a write that may still land"
    );
    store.set_before_sync(None);
    drop(release);
}

/// A frozen disk: every write and `/ready`'s probe answers a timeout, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_answers_a_timeout_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), |s| s.write_timeout_ms = 800);
    let release = hold_syncs(&store);
    let started = std::time::Instant::now();
    let result = store.commit(event(&ulid(1), "e1", b"{}")).await;
    assert!(
        matches!(result, Err(StoreError::Timeout(800))),
        "{result:?}"
    );
    assert!(matches!(store.probe().await, Err(StoreError::Timeout(800))));
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(release);
    store.set_before_sync(None);
    // Once the disk moves again the first copy is stored: a retry is a duplicate.
    assert_eq!(
        store.commit(event(&ulid(2), "e1", b"{}")).await.unwrap(),
        Commit::Stored(vec![Committed::Duplicate { id: ulid(1) }])
    );
}

/// The write queue is bounded in bytes, not only in count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_queue_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), |s| s.queue_max_bytes = 100_000);
    let release = hold_syncs(&store);
    // Bytes that do not compress: the budget counts what is stored.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..60_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            b'a' + (seed % 26) as u8
        })
        .collect();
    let first = tokio::spawn(store.commit(event(&ulid(1), "e1", &big)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = store.commit(event(&ulid(2), "e2", &big)).await;
    assert!(matches!(second, Err(StoreError::QueueFull)), "{second:?}");
    let small = tokio::spawn(store.commit(event(&ulid(3), "e3", b"{}")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.send(()).unwrap();
    release.send(()).unwrap();
    store.set_before_sync(None);
    drop(release);
    assert!(first.await.unwrap().is_ok());
    assert!(small.await.unwrap().is_ok());
    // The budget also covers records synced but not yet applied to the index.
    store.tasks(ulid(3)).await.unwrap();
    assert!(store.commit(event(&ulid(2), "e2", &big)).await.is_ok());
}

#[test]
fn tasks_round_trip_through_their_compact_index_form() {
    let id = id_key(&ulid(7)).unwrap();
    for (status, next, error, lane) in [
        (TaskStatus::Pending, Some(5), None, b"post:1".to_vec()),
        (
            TaskStatus::Dead,
            None,
            Some("HTTP 500: ünïcode".to_owned()),
            Vec::new(),
        ),
        (
            TaskStatus::Delivered,
            None,
            Some(String::new()),
            b"x".to_vec(),
        ),
    ] {
        let task = TaskRecord {
            sink: "app".into(),
            envelope_id: ulid(7),
            status,
            attempts: 3,
            round_attempts: 2,
            created_at_ms: -1,
            round_started_ms: i64::MAX,
            next_attempt_ms: next,
            last_error: error,
            lane,
        };
        assert_eq!(decode_task(&id, "app", &encode_task(&task)).unwrap(), task);
    }
    assert!(decode_task(&id, "app", &[9]).is_err());
    assert!(decode_task(&id, "app", &[0, 1]).is_err());
}

/// Found by CI: a claim still waiting for the index must expire like any other, or a
/// redelivery after the TTL is answered `duplicate` while the applier lags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_claim_not_yet_in_the_index_is_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_unix(1_000));
    let store = LogStore::open(
        &settings(dir.path()),
        clock.clone(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    store.commit(event(&ulid(1), "e1", b"{}")).await.unwrap();
    // Hold the claim in flight, as a lagging applier would.
    {
        let mut intake = lock(&store.shared.intake);
        let claim = (ulid(1), 1, 1_000 + 100);
        intake.inflight.insert(key("e1").to_bytes(), claim);
        intake.recent = RecentClaims::default();
    }
    assert_eq!(
        store.find_duplicate(key("e1")).await.unwrap(),
        Some(ulid(1))
    );
    clock.advance_secs(101);
    assert_eq!(store.find_duplicate(key("e1")).await.unwrap(), None);
    assert_eq!(
        store.commit(event(&ulid(2), "e1", b"{}")).await.unwrap(),
        Commit::Stored(vec![Committed::Accepted])
    );
}

/// A receipt of `n` events (`<base>+1..`), each owed to `sink-a`; the first event's envelope
/// JSON is `first` when given.
fn batch(base: u128, n: u128, first: Option<&[u8]>) -> NewReceipt {
    let mut receipt = event(&ulid(base), "b0", &vec![b'x'; 64 * 1024]);
    let template = receipt.events.pop().unwrap();
    receipt.events = (1..=n)
        .map(|i| {
            let mut e = template.clone();
            e.envelope.id = ulid(base + i);
            e.envelope.event_id = format!("b{base}-{i}");
            e.dedup.event_id = e.envelope.event_id.clone();
            e.json = serde_json::to_vec(&e.envelope).unwrap().into();
            e
        })
        .collect();
    if let Some(json) = first {
        receipt.events[0].json = bytes::Bytes::copy_from_slice(json);
    }
    receipt
}

/// Reading the envelopes of one large receipt reads (and decompresses) its record once, not
/// once per envelope: memory and time per envelope follow its own size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envelopes_of_one_batch_are_read_with_one_read_of_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), |_| {});
    store.commit(batch(1_000, 300, None)).await.unwrap();
    let before = store.shared.payloads_read.load(Ordering::Relaxed);
    let due = store.take_due("sink-a".into(), 10, 300).await.unwrap();
    assert_eq!(due.tasks.len(), 300);
    assert!(due.tasks.iter().all(|t| t.envelope.is_ok()));
    let reads = store.shared.payloads_read.load(Ordering::Relaxed) - before;
    assert_eq!(reads, 1, "one read of the record for 300 envelopes");
}

/// An envelope that cannot be decoded is handed out with the reason (the worker dead-letters
/// it); the other tasks of the same take are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_envelope_is_handed_out_with_its_reason_not_as_a_failed_take() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), |_| {});
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    store
        .commit(batch(2_000, 3, Some(deep.as_bytes())))
        .await
        .unwrap();
    let due = store.take_due("sink-a".into(), 10, 10).await.unwrap();
    assert_eq!(due.tasks.len(), 3);
    let error = due.tasks[0].envelope.as_ref().unwrap_err();
    assert!(
        error.contains("cannot be read") && error.contains("160 levels"),
        "{error}"
    );
    assert!(due.tasks[1..].iter().all(|t| t.envelope.is_ok()));
    let err = store.envelope(ulid(2_001)).await.unwrap_err();
    assert!(matches!(err, StoreError::Unreadable(_)), "{err}");
}

/// A task entry the index cannot decode is handed out with the reason instead of failing
/// every round; once its (dead) attempt is recorded the entry is whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_task_entry_becomes_a_dead_letter_not_a_failed_round() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), |_| {});
    store.commit(batch(3_000, 2, None)).await.unwrap();
    // A read waits for the index to apply the commit, so the damage is not overwritten.
    assert_eq!(store.pending_count("sink-a".into()).await.unwrap(), 2);
    let damaged = key_of(&ulid(3_001)).unwrap();
    store
        .shared
        .index
        .insert(task_index(&damaged, "sink-a"), &[0xff][..])
        .unwrap();
    let due = store.take_due("sink-a".into(), 10, 10).await.unwrap();
    assert_eq!(due.tasks.len(), 2);
    let error = due.tasks[0].envelope.as_ref().unwrap_err();
    assert!(error.contains("damaged task entry"), "{error}");
    let mut task = due.tasks[0].task.clone();
    task.status = TaskStatus::Dead;
    task.next_attempt_ms = None;
    let attempt = crate::store::AttemptRecord {
        number: 1,
        at: "t".into(),
        outcome: crate::store::AttemptOutcome::Dead,
        http_status: None,
        exit_code: None,
        error: Some(error.clone()),
        duration_ms: 0,
        response: None,
    };
    store.record_attempts(vec![(task, attempt)]).await.unwrap();
    let tasks = store.tasks(ulid(3_001)).await.unwrap();
    assert_eq!(tasks[0].status, TaskStatus::Dead);
    assert_eq!(store.pending_count("sink-a".into()).await.unwrap(), 1);
}
