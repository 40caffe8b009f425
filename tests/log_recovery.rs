//! Recovery of the commit-log store from what a crash, a torn write or damage leaves on disk:
//! a torn last write is cut at the last whole record (everything before it survives, nothing
//! after it appears); damage anywhere else refuses to open, naming the file and offset;
//! a missing index is rebuilt from the log; retention deletes whole segments.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hookgate::clock::ManualClock;
use hookgate::config::StorageSettings;
use hookgate::envelope::Envelope;
use hookgate::metrics::Metrics;
use hookgate::store::log::segment::{self, Stop};
use hookgate::store::log::LogStore;
use hookgate::store::EventBrowser;
use hookgate::store::{
    AttemptOutcome, AttemptRecord, Commit, Committed, DedupKey, IngestStore, Maintenance,
    NewEnvelope, NewReceipt, Receipt, ReceiptStatus, StoreError, TaskQueue, TaskStatus,
};

mod common;

const T0: i64 = 1_700_000_000;

fn settings(dir: &Path) -> StorageSettings {
    StorageSettings {
        path: dir.to_str().unwrap().into(),
        dedup_ttl_secs: 3_600,
        segment_bytes: 4 * 1024,
        cache_capacity_bytes: 8 * 1024 * 1024,
        ..StorageSettings::default()
    }
}

fn open_at(dir: &Path, clock: Arc<ManualClock>) -> Result<LogStore, StoreError> {
    LogStore::open(&settings(dir), clock, Arc::new(Metrics::new()))
}

fn open(dir: &Path) -> Result<LogStore, StoreError> {
    open_at(dir, Arc::new(ManualClock::at_unix(T0)))
}

/// Gateway ids: ULIDs at T0 plus `n` ms.
fn gateway_id(n: u64) -> String {
    ulid::Ulid::from_parts(T0 as u64 * 1000 + n, u128::from(n)).to_string()
}

/// Letters that do not compress (records must fill segments in these tests).
fn noise(n: u64, len: usize) -> String {
    let mut seed = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect()
}

fn event(n: u64) -> NewReceipt {
    let id = gateway_id(n);
    let event_id = format!("evt_{n}");
    let filler = noise(n, 600);
    let envelope: Envelope = serde_json::from_value(serde_json::json!({
        "id": id, "provider": "demo", "kind": "generic", "event_id": event_id,
        "type": "post.created", "action": "created", "object": "post", "object_id": null,
        "current": {"n": n, "filler": filler}, "previous": null, "occurred_at": null,
        "received_at": "2023-11-14T22:13:20.000Z", "meta": {}
    }))
    .unwrap();
    NewReceipt {
        receipt: Receipt {
            id: id.clone(),
            provider: "demo".into(),
            kind: "generic".into(),
            event_id: Some(event_id.clone()),
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
        body: format!(r#"{{"id":"{event_id}","n":{n},"filler":"{filler}"}}"#)
            .into_bytes()
            .into(),
        events: vec![NewEnvelope {
            dedup: DedupKey {
                provider: "demo".into(),
                event_id,
            },
            json: serde_json::to_vec(&envelope).unwrap().into(),
            envelope,
            sinks: vec!["audit".into()],
            lane: Vec::new(),
            not_before_ms: 0,
        }],
        replay_guard: None,
    }
}

fn key(n: u64) -> DedupKey {
    DedupKey {
        provider: "demo".into(),
        event_id: format!("evt_{n}"),
    }
}

/// Records a delivered first attempt for each of these events.
async fn deliver(store: &LogStore, events: std::ops::Range<u64>) {
    let mut done = Vec::new();
    for n in events {
        let mut task = store.tasks(gateway_id(n)).await.unwrap().remove(0);
        task.status = TaskStatus::Delivered;
        task.next_attempt_ms = None;
        let attempt = AttemptRecord {
            number: 1,
            at: "t".into(),
            outcome: AttemptOutcome::Delivered,
            http_status: Some(200),
            exit_code: None,
            error: None,
            duration_ms: 1,
            response: None,
        };
        done.push((task, attempt));
    }
    store.record_attempts(done).await.unwrap();
}

/// A store of `count` events, one record each, closed.
async fn filled(count: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for n in 0..count {
        assert_eq!(
            store.commit(event(n)).await.unwrap(),
            Commit::Stored(vec![Committed::Accepted])
        );
    }
    store.close();
    dir
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The events whose claim the store knows.
async fn known(store: &LogStore, count: u64) -> Vec<u64> {
    let mut found = Vec::new();
    for n in 0..count {
        if store.find_duplicate(key(n)).await.unwrap().is_some() {
            found.push(n);
        }
    }
    found
}

fn refusal(result: Result<LogStore, StoreError>) -> String {
    match result {
        Ok(_) => panic!("a damaged store opened"),
        Err(e) => e.to_string(),
    }
}

/// Cut the last segment at every offset inside its last records (as a torn write would, by
/// truncation or by zeros on the preallocated file): every record whose bytes end before
/// the cut survives, and nothing after it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_the_last_whole_record_at_every_offset() {
    let dir = filled(12).await;
    let all = known(&open(dir.path()).unwrap(), 12).await;
    assert_eq!(all, (0..12).collect::<Vec<_>>());
    let last = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let scan = segment::scan(&bytes).unwrap();
    assert!(scan.records.len() >= 2, "{} records", scan.records.len());
    let tail = &scan.records[scan.records.len() - 2..];
    let first_cut = tail[0].offset;
    // The pure scan at every offset, both ways of tearing.
    for cut in first_cut..scan.end {
        let whole: Vec<u64> = scan
            .records
            .iter()
            .filter(|r| r.payload + r.len <= cut)
            .map(|r| r.lsn)
            .collect();
        let mut zeroed = bytes.clone();
        zeroed[cut..].fill(0);
        for torn in [&bytes[..cut], &zeroed[..]] {
            let found = segment::scan(torn).unwrap();
            let lsns: Vec<u64> = found.records.iter().map(|r| r.lsn).collect();
            assert_eq!(lsns, whole, "cut at {cut}");
            assert!(
                !matches!(
                    found.stop,
                    Stop::Invalid {
                        later_write_at: Some(_),
                        ..
                    }
                ),
                "cut at {cut} taken for damage in the middle"
            );
        }
    }
    // The whole store, reopened after a sample of those cuts (with its index lost too, as if
    // the crash came before it was flushed: it is rebuilt from the log).
    let total_before = scan.records.len() as u64;
    for cut in (first_cut..scan.end)
        .step_by(37)
        .chain([first_cut, scan.end - 1])
    {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        std::fs::remove_dir_all(copy.path().join("index")).unwrap();
        let torn = copy.path().join("log").join(last.file_name().unwrap());
        let file = std::fs::OpenOptions::new().write(true).open(&torn).unwrap();
        file.set_len(cut as u64).unwrap();
        drop(file);
        let store = open(copy.path()).unwrap();
        let survivors = scan
            .records
            .iter()
            .filter(|r| r.payload + r.len <= cut)
            .count() as u64;
        let lost = total_before - survivors;
        let expected: Vec<u64> = (0..12 - lost).collect();
        assert_eq!(known(&store, 12).await, expected, "cut at {cut}");
        // The store goes on from the cut: a new event is accepted, and survives a reopen.
        assert_eq!(
            store.commit(event(100)).await.unwrap(),
            Commit::Stored(vec![Committed::Accepted])
        );
        store.close();
        drop(store);
        let again = open(copy.path())
            .unwrap_or_else(|e| panic!("cut at {cut} (first {first_cut}, end {}): {e}", scan.end));
        assert!(again.find_duplicate(key(100)).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_middle_refuses_to_open_naming_the_place() {
    let dir = filled(12).await;
    let files = segments(dir.path());
    assert!(files.len() >= 3, "{} segments", files.len());
    // In a full (sealed) segment.
    let middle = &files[1];
    let bytes = std::fs::read(middle).unwrap();
    let scan = segment::scan(&bytes).unwrap();
    let at = scan.records[0].payload + 5;
    let mut damaged = bytes.clone();
    damaged[at] ^= 0x20;
    std::fs::write(middle, &damaged).unwrap();
    let message = refusal(open(dir.path()));
    let name = middle.file_name().unwrap().to_str().unwrap();
    assert!(message.contains(name), "{message}");
    assert!(
        message.contains(&format!("offset {}", scan.records[0].offset)),
        "{message}"
    );
    std::fs::write(middle, &bytes).unwrap();
    assert_eq!(known(&open(dir.path()).unwrap(), 12).await.len(), 12);

    // In the last segment, with whole records of later writes after it.
    let last = files.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    let scan = segment::scan(&bytes).unwrap();
    assert!(scan.records.len() >= 2);
    let mut damaged = bytes.clone();
    damaged[scan.records[0].payload] ^= 0x01;
    std::fs::write(last, &damaged).unwrap();
    let message = refusal(open(dir.path()));
    assert!(message.contains("whole records follow"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_or_deletion_in_the_middle_refuses_to_open() {
    let dir = filled(12).await;
    let files = segments(dir.path());
    // A full segment cut to half: its seal is gone.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let middle = copy.path().join("log").join(files[1].file_name().unwrap());
    let len = std::fs::metadata(&middle).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&middle)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let message = refusal(open(copy.path()));
    assert!(
        message.contains(files[1].file_name().unwrap().to_str().unwrap()),
        "{message}"
    );

    // A segment deleted from the middle, and the first one.
    for victim in [1, 0] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        std::fs::remove_file(
            copy.path()
                .join("log")
                .join(files[victim].file_name().unwrap()),
        )
        .unwrap();
        let message = refusal(open(copy.path()));
        assert!(
            message.contains(files[victim].file_name().unwrap().to_str().unwrap()),
            "{message}"
        );
    }

    // The last segment cut below what the index had applied: acknowledged records are gone.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let last = copy
        .path()
        .join("log")
        .join(files.last().unwrap().file_name().unwrap());
    let scan = segment::scan(&std::fs::read(&last).unwrap()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(scan.records[0].offset as u64 + 10)
        .unwrap();
    let message = refusal(open(copy.path()));
    assert!(message.contains("missing from the log"), "{message}");

    // The whole log deleted, the index kept.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    std::fs::remove_dir_all(copy.path().join("log")).unwrap();
    std::fs::create_dir(copy.path().join("log")).unwrap();
    let message = refusal(open(copy.path()));
    assert!(message.contains("no log segments"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_is_rebuilt_from_the_log_with_every_event_and_task() {
    let dir = filled(12).await;
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(known(&store, 12).await.len(), 12);
    assert_eq!(store.pending_count("audit".into()).await.unwrap(), 12);
    let (receipt, body) = store.receipt(gateway_id(3)).await.unwrap().unwrap();
    assert_eq!(receipt.event_ids, vec!["evt_3".to_owned()]);
    assert_eq!(
        body,
        format!(r#"{{"id":"evt_3","n":3,"filler":"{}"}}"#, noise(3, 600)).as_bytes()
    );
    let envelope = store.envelope(gateway_id(3)).await.unwrap().unwrap();
    assert_eq!(envelope.event_id, "evt_3");
    store.close();
    drop(store);
    // The same, through the named operation.
    let records = LogStore::rebuild_index(&settings(dir.path())).unwrap();
    assert!(records >= 12, "{records}");
    assert_eq!(known(&open(dir.path()).unwrap(), 12).await.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_in_the_old_layout_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db"), b"old sled log").unwrap();
    std::fs::write(dir.path().join("conf"), b"segment_size: 8388608").unwrap();
    let message = refusal(open(dir.path()));
    assert!(message.contains("old sled-only layout"), "{message}");
    assert!(message.contains("new directory"), "{message}");
}

/// Retention deletes whole segments once every receipt in them is purged and every claim
/// they made has expired; what is newer is untouched and the store reopens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_whole_segments_of_finished_expired_events() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_unix(T0));
    let store = open_at(dir.path(), clock.clone()).unwrap();
    for n in 0..12 {
        store.commit(event(n)).await.unwrap();
    }
    // Deliver the first eight.
    deliver(&store, 0..8).await;
    let before = segments(dir.path()).len();
    // Claims live for an hour: until they expire nothing may go.
    let cutoff = (T0 + 10) * 1000;
    let mut purged = 0;
    for _ in 0..10 {
        purged += store.purge_before(cutoff, 100).await.unwrap();
    }
    assert_eq!(purged, 8);
    assert_eq!(segments(dir.path()).len(), before, "claims still live");
    clock.advance_secs(7_200);
    store.expire_claims(T0 as u64 + 7_200).await.unwrap();
    store.purge_before(cutoff, 100).await.unwrap();
    let after = segments(dir.path()).len();
    assert!(after < before, "{before} segments, {after} after retention");
    // The pending four are untouched, before and after reopening.
    for n in 8..12 {
        assert!(store.envelope(gateway_id(n)).await.unwrap().is_some());
    }
    store.close();
    drop(store);
    let store = open_at(dir.path(), clock).unwrap();
    assert_eq!(store.pending_count("audit".into()).await.unwrap(), 4);
    for n in 8..12 {
        assert!(store.envelope(gateway_id(n)).await.unwrap().is_some());
    }
    assert!(store.receipt(gateway_id(0)).await.unwrap().is_none());
}

/// The real binary: `serve` on a damaged store exits non-zero naming the place, and
/// `storage rebuild-index` rebuilds a lost index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_damaged_store_and_rebuild_index_restores_a_lost_one() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    {
        let store = open(&store_dir).unwrap();
        for n in 0..12 {
            store.commit(event(n)).await.unwrap();
        }
        store.close();
    }
    let config = dir.path().join("config.toml");
    std::fs::write(&config, common::config_text(dir.path(), "", "")).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };

    let files = segments(&store_dir);
    let original = std::fs::read(&files[1]).unwrap();
    let mut damaged = original.clone();
    damaged[segment::HEADER + 30] ^= 0x08;
    std::fs::write(&files[1], &damaged).unwrap();
    let out = run(&["serve"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served a damaged store: {stderr}");
    let name = files[1].file_name().unwrap().to_str().unwrap();
    assert!(stderr.contains(name), "{stderr}");
    assert!(stderr.contains("offset"), "{stderr}");

    std::fs::write(&files[1], &original).unwrap();
    std::fs::remove_dir_all(store_dir.join("index")).unwrap();
    let out = run(&["storage", "rebuild-index"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("records applied"), "{stdout}");
    let store = open(&store_dir).unwrap();
    assert_eq!(known(&store, 12).await.len(), 12);
}

/// A crash while a segment is being created leaves at most an unfinished `.seg.new` file,
/// which the next start removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_segment_file_is_removed_and_the_store_opens() {
    let dir = filled(3).await;
    let next = segments(dir.path()).len() as u64;
    std::fs::write(segment::temp_path(&dir.path().join("log"), next), [0u8; 7]).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(known(&store, 3).await.len(), 3);
    assert!(!segment::temp_path(&dir.path().join("log"), next).exists());
}

/// A receipt still being delivered keeps its old segment only until retention copies it
/// forward; then the segment is deleted, and the delivery goes on, after a reopen and after a
/// rebuild of the index from what is left of the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_copies_pending_deliveries_forward_and_deletes_their_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_unix(T0));
    let store = open_at(dir.path(), clock.clone()).unwrap();
    for n in 0..12 {
        store.commit(event(n)).await.unwrap();
    }
    // Events 0 and 1 (the oldest segment) stay pending; the rest are delivered.
    deliver(&store, 2..12).await;
    let first = segments(dir.path())[0].clone();
    clock.advance_secs(7_200);
    store.expire_claims(T0 as u64 + 7_200).await.unwrap();
    let cutoff = (T0 + 10) * 1000;
    for _ in 0..6 {
        store.purge_before(cutoff, 100).await.unwrap();
    }
    assert!(!first.exists(), "the oldest segment was not retired");
    for n in [0, 1] {
        assert!(store.envelope(gateway_id(n)).await.unwrap().is_some());
        assert!(store.receipt(gateway_id(n)).await.unwrap().is_some());
    }
    assert_eq!(store.pending_count("audit".into()).await.unwrap(), 2);
    store.close();
    drop(store);
    for rebuild in [false, true] {
        if rebuild {
            std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        }
        let store = open_at(dir.path(), clock.clone()).unwrap();
        let due = store
            .take_due("audit".into(), i64::MAX / 2, 10)
            .await
            .unwrap();
        let mut ids: Vec<String> = due
            .tasks
            .iter()
            .map(|t| t.task.envelope_id.clone())
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            vec![gateway_id(0), gateway_id(1)],
            "rebuild: {rebuild}"
        );
        assert!(due.tasks.iter().all(|t| t.envelope.is_ok()));
        store.close();
    }
}
