//! Arbitrary bytes against the commit log's on-disk format (`store::log::{record, segment}`).
//!
//! The input is read four ways: as a frame (`record::decode_frame`), as a stored payload
//! (`record::open_payload`, LZ4 or not, then `record::Entry::decode`), as a whole segment
//! (`segment::scan`), and as the frames after a valid segment header
//! (`segment::encode_header(0, 0)` followed by the input), so the fuzzer reaches the record loop
//! without forging a header checksum. Nothing may panic, and:
//! - a decoded frame re-encodes (`encode_frame`) to the same bytes, and its payload lies in the
//!   input; its `next` is the aligned end of the frame, even when the input cuts its padding;
//! - a payload opens to at most `MAX_PAYLOAD` bytes; a decoded entry re-encodes to the same
//!   bytes, which decode to the same entry, and `seal_payload` of them opens to them again;
//! - a scan's records (payloads) lie in the input, their lsns rise by one from `after_lsn`, each
//!   one decodes again at its offset, and `end` is a multiple of 8 and in the input, except when
//!   the scan ended on a whole record whose padding alone is cut off: then `end` is the input's
//!   length rounded up to 8 (`record::decode_frame` keeps a record aligned, `recover` takes the
//!   segment's size as the larger of the two).
#![no_main]

use std::borrow::Cow;

use hookgate::store::log::record::{self, Entry, Frame, FRAME_HEADER, MAX_PAYLOAD};
use hookgate::store::log::segment::{self, Scan, Stop, HEADER};
use libfuzzer_sys::fuzz_target;

/// An entry re-encodes to the payload it came from, and that decodes to the same entry.
fn check_entry(payload: &[u8]) -> Option<Entry<'_>> {
    let entry = Entry::decode(payload).ok()?;
    let encoded = entry.encode();
    assert_eq!(
        Entry::decode(&encoded).as_ref(),
        Ok(&entry),
        "a decoded entry does not round-trip"
    );
    // The encoding is canonical: nothing else decodes to the same entry.
    assert_eq!(encoded, payload, "an entry re-encodes to other bytes");
    Some(entry)
}

/// A stored payload opened (decompressed if it was compressed), if it opens.
fn open(stored: &[u8]) -> Option<Cow<'_, [u8]>> {
    let raw = record::open_payload(stored).ok()?;
    assert!(raw.len() <= MAX_PAYLOAD, "opened to {} bytes", raw.len());
    Some(raw)
}

/// An entry's encoding, stored as the log stores it, opens to the same bytes.
fn check_sealed(raw: &[u8]) {
    let stored = record::seal_payload(raw.to_vec());
    assert_eq!(
        open(&stored).as_deref(),
        Some(raw),
        "a sealed payload does not open to its entry"
    );
}

/// `stored` as a record's payload: opened, then decoded as an entry.
fn check_payload(stored: &[u8]) {
    if check_entry(stored).is_some() {
        check_sealed(stored);
    }
    if let Some(Cow::Owned(raw)) = open(stored) {
        if check_entry(&raw).is_some() {
            check_sealed(&raw);
        }
    }
}

fn check_frame(data: &[u8]) {
    match record::decode_frame(data) {
        Frame::Record {
            lsn,
            batch,
            payload,
            next,
        } => {
            let len = payload.len();
            assert!(len > 0 && len <= MAX_PAYLOAD, "payload length {len}");
            assert!(FRAME_HEADER + len <= data.len(), "payload past the input");
            assert_eq!(payload, &data[FRAME_HEADER..FRAME_HEADER + len]);
            assert_eq!(next, record::aligned(FRAME_HEADER + len));
            let mut again = Vec::new();
            record::encode_frame(&mut again, lsn, batch, payload);
            assert_eq!(again.len(), record::aligned(FRAME_HEADER + len));
            assert_eq!(
                &again[..FRAME_HEADER + len],
                &data[..FRAME_HEADER + len],
                "a frame re-encodes to other bytes"
            );
            check_payload(payload);
        }
        Frame::End => assert!(
            data[..FRAME_HEADER.min(data.len())].iter().all(|b| *b == 0),
            "End over nonzero bytes"
        ),
        Frame::Invalid(_) => {}
    }
}

fn check_scan(bytes: &[u8], scan: &Scan) {
    assert_eq!(
        segment::decode_header(bytes),
        Ok((scan.number, scan.after_lsn))
    );
    // Past the input only by padding that is cut off (checked with the stop below).
    assert!(
        scan.end <= record::aligned(bytes.len()),
        "end {} past {}",
        scan.end,
        bytes.len()
    );
    assert!(scan.end >= HEADER, "end {} inside the header", scan.end);
    assert_eq!(scan.end % 8, 0, "end {} is not aligned", scan.end);

    // Where the next frame starts: records follow each other, each aligned, from the header on.
    let mut frames_end = HEADER;
    let mut truncated_to = None;
    for (i, found) in scan.records.iter().enumerate() {
        // u128: the expected lsn itself must not overflow here.
        assert_eq!(
            found.lsn as u128,
            scan.after_lsn as u128 + 1 + i as u128,
            "record {i}: lsns do not rise by one from after_lsn {}",
            scan.after_lsn
        );
        assert_eq!(
            found.offset, frames_end,
            "record {i} not right after the one before"
        );
        assert_eq!(found.payload, found.offset + FRAME_HEADER);
        let payload_end = found.payload.checked_add(found.len).expect("no overflow");
        assert!(
            payload_end <= bytes.len(),
            "record {i}: payload past the input"
        );
        assert!(payload_end <= scan.end, "record {i}: payload past end");
        let Frame::Record { lsn, payload, .. } = record::decode_frame(&bytes[found.offset..])
        else {
            panic!("record {i} does not decode at its offset");
        };
        assert_eq!((lsn, payload.len()), (found.lsn, found.len));
        let raw = open(payload).unwrap_or_else(|| panic!("record {i}: payload does not open"));
        match check_entry(&raw) {
            Some(Entry::Seal) => panic!("record {i}: a seal among the records"),
            Some(Entry::Truncated { first_segment }) => truncated_to = Some(first_segment),
            Some(_) => {}
            None => panic!("record {i} has content that does not decode"),
        }
        frames_end = found.offset + record::aligned(FRAME_HEADER + found.len);
    }
    assert_eq!(scan.truncated_to, truncated_to);
    if scan.end > bytes.len() {
        assert!(
            matches!(scan.stop, Stop::End | Stop::Sealed),
            "end {} past {} although the scan stopped at {:?}",
            scan.end,
            bytes.len(),
            scan.stop
        );
    }
    // `end` is right after the last whole frame: the last record's, or the seal after it.
    if scan.stop == Stop::Sealed {
        let Frame::Record {
            lsn, payload, next, ..
        } = record::decode_frame(&bytes[frames_end..])
        else {
            panic!("no seal frame at {frames_end}");
        };
        let raw = open(payload).expect("the seal's payload opens");
        assert_eq!(Entry::decode(&raw), Ok(Entry::Seal));
        let last = scan.records.last().map_or(scan.after_lsn, |r| r.lsn);
        assert_eq!(lsn, last, "a seal that does not repeat the last lsn");
        frames_end += next;
    }
    assert_eq!(
        scan.end, frames_end,
        "end is not after the last whole frame"
    );

    match &scan.stop {
        Stop::End => assert!(
            bytes
                .get(scan.end..)
                .unwrap_or_default()
                .iter()
                .take(FRAME_HEADER)
                .all(|b| *b == 0),
            "End before nonzero bytes"
        ),
        Stop::Sealed => {}
        Stop::Invalid {
            offset,
            later_write_at,
            ..
        } => {
            assert_eq!(*offset, scan.end, "invalid frame not where the records end");
            assert!(*offset < bytes.len());
            if let Some(later) = later_write_at {
                assert!(*later >= *offset && *later < bytes.len());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_frame(data);
    check_payload(data);

    if let Ok(scan) = segment::scan(data) {
        check_scan(data, &scan);
    }

    let mut bytes = segment::encode_header(0, 0).to_vec();
    bytes.extend_from_slice(data);
    match segment::scan(&bytes) {
        Ok(scan) => {
            assert_eq!((scan.number, scan.after_lsn), (0, 0));
            check_scan(&bytes, &scan);
        }
        Err(reason) => panic!("a valid header was refused: {reason}"),
    }
});
