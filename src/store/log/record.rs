//! The log's on-disk records: a checksummed frame around one [`Entry`].
//!
//! A frame is 8-byte aligned:
//!
//! ```text
//! len u32 | crc u32 | lsn u64 | batch u64 | payload (len bytes) | zero padding to 8
//! ```
//!
//! all little-endian. `crc` is CRC-32 over `lsn`, `batch` and the payload. `lsn` is the record's
//! sequence number (strictly increasing through the log); `batch` is the lsn of the first record
//! of the same write, which lets recovery tell a torn last write from damage in the middle.
//! A zero `len` is the end of the written part of a segment (segments are preallocated with
//! zeros). The payload is an [`Entry`] in a small length-prefixed binary encoding; decoding
//! borrows from the payload, so bodies and envelopes are never copied to be applied, and
//! their positions in the file are what the index stores.

use thiserror::Error;

pub const FRAME_HEADER: usize = 24;
/// Largest payload a frame may claim (larger is damage, not a record).
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

/// Rounds up to the frame alignment.
pub fn aligned(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Appends one frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, lsn: u64, batch: u64, payload: &[u8]) {
    let start = out.len();
    let len = u32::try_from(payload.len()).expect("payload fits a frame");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&batch.to_le_bytes());
    out.extend_from_slice(payload);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start + 8..]);
    let crc = hasher.finalize();
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + aligned(FRAME_HEADER + payload.len()), 0);
}

/// What is at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole, checksummed record; `next` is the offset after it and its padding (relative to
    /// the input; past its end when only padding is missing).
    Record {
        lsn: u64,
        batch: u64,
        payload: &'a [u8],
        next: usize,
    },
    /// Zeros: nothing was written here.
    End,
    /// Not a whole record: a torn write or damage.
    Invalid(&'static str),
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the frame at the start of `bytes`. Never panics, whatever the input.
pub fn decode_frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.len() < 4 {
        return if bytes.iter().all(|b| *b == 0) {
            Frame::End
        } else {
            Frame::Invalid("a frame header is cut short")
        };
    }
    let len = u32_at(bytes, 0) as usize;
    if len == 0 {
        return if bytes[..FRAME_HEADER.min(bytes.len())]
            .iter()
            .all(|b| *b == 0)
        {
            Frame::End
        } else {
            Frame::Invalid("a zero length with data after it")
        };
    }
    if len > MAX_PAYLOAD {
        return Frame::Invalid("a frame length beyond any record");
    }
    if bytes.len() < FRAME_HEADER + len {
        return Frame::Invalid("a record is cut short");
    }
    let crc = u32_at(bytes, 4);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[8..FRAME_HEADER + len]);
    if hasher.finalize() != crc {
        return Frame::Invalid("a record's checksum does not match");
    }
    Frame::Record {
        lsn: u64_at(bytes, 8),
        batch: u64_at(bytes, 16),
        payload: &bytes[FRAME_HEADER..FRAME_HEADER + len],
        // Aligned even when the padding is cut off: the record is whole, and the next one
        // goes at the aligned offset.
        next: aligned(FRAME_HEADER + len),
    }
}

/// A payload that does not decode although its checksum matched (a bug or a foreign file).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("undecodable log entry: {0}")]
pub struct DecodeError(pub &'static str);

const TAG_COMMIT: u8 = 1;
const TAG_UNPROCESSABLE: u8 = 2;
const TAG_PROBE: u8 = 3;
const TAG_ATTEMPTS: u8 = 4;
const TAG_REDELIVER: u8 = 5;
const TAG_EXPIRE: u8 = 6;
const TAG_PURGE: u8 = 7;
const TAG_SEAL: u8 = 8;
const TAG_TRUNCATED: u8 = 9;
const TAG_CARRY: u8 = 10;
/// A payload compressed with LZ4: the tag, the decoded length (u32), the LZ4 block.
const TAG_COMPRESSED: u8 = 0xC0;
/// Payloads shorter than this are stored as they are.
const COMPRESS_FROM: usize = 512;

/// The payload to store for an encoded entry: LZ4-compressed when that saves a tenth or more
/// (bodies and envelopes repeat each other's content, and JSON compresses well).
pub fn seal_payload(raw: Vec<u8>) -> Vec<u8> {
    if raw.len() < COMPRESS_FROM {
        return raw;
    }
    let packed = lz4_flex::block::compress(&raw);
    if packed.len() + 5 > raw.len() / 10 * 9 {
        return raw;
    }
    let mut out = Vec::with_capacity(packed.len() + 5);
    out.push(TAG_COMPRESSED);
    out.extend_from_slice(
        &u32::try_from(raw.len())
            .expect("payload fits a frame")
            .to_le_bytes(),
    );
    out.extend_from_slice(&packed);
    out
}

/// The encoded entry in a stored payload (decompressed if it was compressed). Never panics,
/// and never allocates more than [`MAX_PAYLOAD`], whatever the input.
pub fn open_payload(payload: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, DecodeError> {
    if payload.first() != Some(&TAG_COMPRESSED) {
        return Ok(std::borrow::Cow::Borrowed(payload));
    }
    let len = payload
        .get(1..5)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4")) as usize)
        .ok_or(DecodeError("a compressed payload is cut short"))?;
    if len > MAX_PAYLOAD {
        return Err(DecodeError("a compressed payload larger than any record"));
    }
    let raw = lz4_flex::block::decompress(&payload[5..], len)
        .map_err(|_| DecodeError("a compressed payload does not decompress"))?;
    if raw.len() != len {
        return Err(DecodeError("a compressed payload of the wrong length"));
    }
    Ok(std::borrow::Cow::Owned(raw))
}

/// One event of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEntry<'a> {
    /// The envelope's gateway id key.
    pub key: [u8; 16],
    pub lane: &'a [u8],
    pub not_before_ms: i64,
    pub sinks: Vec<&'a str>,
    /// The envelope as stored and delivered (JSON).
    pub envelope: &'a [u8],
}

/// An accepted delivery: everything it stores, in one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEntry<'a> {
    pub receipt_key: [u8; 16],
    /// The receipt as JSON.
    pub receipt: &'a [u8],
    pub body: &'a [u8],
    pub created_at_ms: i64,
    /// When the claims expire (Unix seconds).
    pub expires_at: u64,
    /// (dedup key, gateway id) claimed.
    pub claims: Vec<(&'a [u8], &'a str)>,
    pub events: Vec<EventEntry<'a>>,
}

/// One log record's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    Commit(CommitEntry<'a>),
    Unprocessable {
        key: [u8; 16],
        receipt: &'a [u8],
        body: &'a [u8],
    },
    /// A durable no-op (`/ready`).
    Probe,
    /// (task JSON, attempt JSON) pairs: the attempts and the tasks' new states.
    Attempts(Vec<(&'a [u8], &'a [u8])>),
    Redeliver {
        envelope: [u8; 16],
        sink: Option<&'a str>,
        now_ms: i64,
    },
    Expire {
        now_secs: u64,
    },
    /// Receipts to delete (each re-checked when applied: only if every task is finished).
    Purge(Vec<[u8; 16]>),
    /// The last record of a full segment; its lsn repeats the record before it.
    Seal,
    /// Segments before `first_segment` were deleted by retention.
    Truncated {
        first_segment: u64,
    },
    /// A receipt still being delivered, copied forward out of a segment retention retires:
    /// its receipt, body and envelopes, and its tasks' states (binary, as the index keeps them,
    /// with their sinks) for a rebuild that no longer has the original record.
    Carry(CarryEntry<'a>),
}

/// See [`Entry::Carry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarryEntry<'a> {
    pub receipt_key: [u8; 16],
    pub receipt: &'a [u8],
    pub body: &'a [u8],
    pub envelopes: Vec<CarriedEnvelope<'a>>,
}

/// (envelope key, envelope JSON, [(sink, task state)]).
pub type CarriedEnvelope<'a> = ([u8; 16], &'a [u8], Vec<(&'a str, &'a [u8])>);

/// Builds a payload.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn key(&mut self, k: &[u8; 16]) -> &mut Self {
        self.0.extend_from_slice(k);
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(u32::try_from(b.len()).expect("field fits a record"));
        self.0.extend_from_slice(b);
        self
    }
    pub fn count(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).expect("count fits a record"))
    }
}

impl Entry<'_> {
    /// The payload bytes of this entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Entry::Commit(c) => {
                w.u8(TAG_COMMIT)
                    .key(&c.receipt_key)
                    .i64(c.created_at_ms)
                    .u64(c.expires_at)
                    .count(c.claims.len());
                for (key, id) in &c.claims {
                    w.bytes(key).bytes(id.as_bytes());
                }
                w.count(c.events.len());
                for e in &c.events {
                    w.key(&e.key)
                        .bytes(e.lane)
                        .i64(e.not_before_ms)
                        .count(e.sinks.len());
                    for sink in &e.sinks {
                        w.bytes(sink.as_bytes());
                    }
                    w.bytes(e.envelope);
                }
                w.bytes(c.receipt).bytes(c.body);
            }
            Entry::Unprocessable { key, receipt, body } => {
                w.u8(TAG_UNPROCESSABLE).key(key).bytes(receipt).bytes(body);
            }
            Entry::Probe => {
                w.u8(TAG_PROBE);
            }
            Entry::Attempts(done) => {
                w.u8(TAG_ATTEMPTS).count(done.len());
                for (task, attempt) in done {
                    w.bytes(task).bytes(attempt);
                }
            }
            Entry::Redeliver {
                envelope,
                sink,
                now_ms,
            } => {
                w.u8(TAG_REDELIVER).key(envelope).i64(*now_ms);
                match sink {
                    Some(s) => w.u8(1).bytes(s.as_bytes()),
                    None => w.u8(0),
                };
            }
            Entry::Expire { now_secs } => {
                w.u8(TAG_EXPIRE).u64(*now_secs);
            }
            Entry::Purge(keys) => {
                w.u8(TAG_PURGE).count(keys.len());
                for k in keys {
                    w.key(k);
                }
            }
            Entry::Seal => {
                w.u8(TAG_SEAL);
            }
            Entry::Truncated { first_segment } => {
                w.u8(TAG_TRUNCATED).u64(*first_segment);
            }
            Entry::Carry(c) => {
                w.u8(TAG_CARRY)
                    .key(&c.receipt_key)
                    .bytes(c.receipt)
                    .bytes(c.body)
                    .count(c.envelopes.len());
                for (key, envelope, tasks) in &c.envelopes {
                    w.key(key).bytes(envelope).count(tasks.len());
                    for (sink, state) in tasks {
                        w.bytes(sink.as_bytes()).bytes(state);
                    }
                }
            }
        }
        w.0
    }

    /// Decodes a payload; never panics, whatever the input.
    pub fn decode(payload: &[u8]) -> Result<Entry<'_>, DecodeError> {
        let mut r = Reader(payload);
        let entry = match r.u8()? {
            TAG_COMMIT => {
                let receipt_key = r.key()?;
                let created_at_ms = r.i64()?;
                let expires_at = r.u64()?;
                let mut claims = Vec::new();
                for _ in 0..r.count()? {
                    claims.push((r.bytes()?, r.str()?));
                }
                let mut events = Vec::new();
                for _ in 0..r.count()? {
                    let key = r.key()?;
                    let lane = r.bytes()?;
                    let not_before_ms = r.i64()?;
                    let mut sinks = Vec::new();
                    for _ in 0..r.count()? {
                        sinks.push(r.str()?);
                    }
                    events.push(EventEntry {
                        key,
                        lane,
                        not_before_ms,
                        sinks,
                        envelope: r.bytes()?,
                    });
                }
                Entry::Commit(CommitEntry {
                    receipt_key,
                    receipt: r.bytes()?,
                    body: r.bytes()?,
                    created_at_ms,
                    expires_at,
                    claims,
                    events,
                })
            }
            TAG_UNPROCESSABLE => Entry::Unprocessable {
                key: r.key()?,
                receipt: r.bytes()?,
                body: r.bytes()?,
            },
            TAG_PROBE => Entry::Probe,
            TAG_ATTEMPTS => {
                let mut done = Vec::new();
                for _ in 0..r.count()? {
                    done.push((r.bytes()?, r.bytes()?));
                }
                Entry::Attempts(done)
            }
            TAG_REDELIVER => {
                let envelope = r.key()?;
                let now_ms = r.i64()?;
                let sink = match r.u8()? {
                    0 => None,
                    1 => Some(r.str()?),
                    _ => return Err(DecodeError("a bad option flag")),
                };
                Entry::Redeliver {
                    envelope,
                    sink,
                    now_ms,
                }
            }
            TAG_EXPIRE => Entry::Expire { now_secs: r.u64()? },
            TAG_PURGE => {
                let mut keys = Vec::new();
                for _ in 0..r.count()? {
                    keys.push(r.key()?);
                }
                Entry::Purge(keys)
            }
            TAG_SEAL => Entry::Seal,
            TAG_TRUNCATED => Entry::Truncated {
                first_segment: r.u64()?,
            },
            TAG_CARRY => {
                let receipt_key = r.key()?;
                let receipt = r.bytes()?;
                let body = r.bytes()?;
                let mut envelopes = Vec::new();
                for _ in 0..r.count()? {
                    let key = r.key()?;
                    let envelope = r.bytes()?;
                    let mut tasks = Vec::new();
                    for _ in 0..r.count()? {
                        tasks.push((r.str()?, r.bytes()?));
                    }
                    envelopes.push((key, envelope, tasks));
                }
                Entry::Carry(CarryEntry {
                    receipt_key,
                    receipt,
                    body,
                    envelopes,
                })
            }
            _ => return Err(DecodeError("an unknown entry tag")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("bytes left after the entry"));
        }
        Ok(entry)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(DecodeError("a field runs past the entry"))?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn key(&mut self) -> Result<[u8; 16], DecodeError> {
        Ok(self.take(16)?.try_into().expect("16"))
    }
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        // Every counted item takes at least four bytes: a count beyond that is damage.
        if n > self.0.len() / 4 + 1 {
            return Err(DecodeError("a count larger than the entry"));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("a name that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> Entry<'static> {
        Entry::Commit(CommitEntry {
            receipt_key: [1; 16],
            receipt: br#"{"id":"r"}"#,
            body: b"{\"a\":1}",
            created_at_ms: 7,
            expires_at: 99,
            claims: vec![(b"demo\0e1", "01ENV")],
            events: vec![EventEntry {
                key: [2; 16],
                lane: b"post:1",
                not_before_ms: 5,
                sinks: vec!["audit", "app"],
                envelope: br#"{"action":"created"}"#,
            }],
        })
    }

    #[test]
    fn every_entry_round_trips_through_a_frame() {
        let entries = vec![
            commit(),
            Entry::Unprocessable {
                key: [3; 16],
                receipt: b"{}",
                body: b"x",
            },
            Entry::Probe,
            Entry::Attempts(vec![(b"{}", b"{}")]),
            Entry::Redeliver {
                envelope: [4; 16],
                sink: Some("app"),
                now_ms: 1,
            },
            Entry::Redeliver {
                envelope: [4; 16],
                sink: None,
                now_ms: 1,
            },
            Entry::Expire { now_secs: 3 },
            Entry::Purge(vec![[5; 16]]),
            Entry::Seal,
            Entry::Truncated { first_segment: 9 },
            Entry::Carry(CarryEntry {
                receipt_key: [6; 16],
                receipt: b"{}",
                body: b"b",
                envelopes: vec![([7; 16], b"{}", vec![("app", b"state")])],
            }),
        ];
        let mut log = Vec::new();
        for (n, e) in entries.iter().enumerate() {
            encode_frame(&mut log, n as u64 + 1, 1, &e.encode());
        }
        assert_eq!(log.len() % 8, 0);
        let mut at = 0;
        for (n, expected) in entries.iter().enumerate() {
            let Frame::Record {
                lsn,
                batch,
                payload,
                next,
            } = decode_frame(&log[at..])
            else {
                panic!("frame {n} did not decode");
            };
            assert_eq!((lsn, batch), (n as u64 + 1, 1));
            assert_eq!(&Entry::decode(payload).unwrap(), expected);
            at += next;
        }
        assert_eq!(decode_frame(&[0; 64]), Frame::End);
    }

    #[test]
    fn a_flipped_bit_or_a_cut_is_never_a_record() {
        let mut log = Vec::new();
        encode_frame(&mut log, 1, 1, &commit().encode());
        let whole = FRAME_HEADER + commit().encode().len();
        for cut in 0..whole {
            assert!(
                matches!(decode_frame(&log[..cut]), Frame::Invalid(_) | Frame::End),
                "cut at {cut}"
            );
        }
        for at in 0..whole {
            for bit in 0..8 {
                let mut damaged = log.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    !matches!(decode_frame(&damaged), Frame::Record { .. }),
                    "flip at {at} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn garbage_payloads_are_errors_not_panics() {
        let payload = commit().encode();
        for cut in 0..payload.len() {
            assert!(Entry::decode(&payload[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Entry::decode(&[42]).is_err());
        assert!(Entry::decode(&[TAG_PURGE, 255, 255, 255, 255]).is_err());
    }

    #[test]
    fn large_payloads_are_compressed_and_open_to_the_same_bytes() {
        let body = br#"{"object":"customer","email":"a@example.com","name":"A"}"#.repeat(40);
        let entry = Entry::Unprocessable {
            key: [3; 16],
            receipt: br#"{"id":"x"}"#,
            body: &body,
        };
        let raw = entry.encode();
        let stored = seal_payload(raw.clone());
        assert!(
            stored.len() < raw.len() / 2,
            "{} of {}",
            stored.len(),
            raw.len()
        );
        assert_eq!(&*open_payload(&stored).unwrap(), &raw[..]);
        let small = Entry::Probe.encode();
        assert_eq!(seal_payload(small.clone()), small);
        for cut in 0..stored.len() {
            let _ = open_payload(&stored[..cut]);
        }
        assert!(open_payload(&[TAG_COMPRESSED, 255, 255, 255, 255, 0]).is_err());
    }
}
