//! Segment files: `log/<number, 20 digits>.seg`, each a header and then frames
//! ([`super::record`]), preallocated with zeros.
//!
//! The header (32 bytes): magic `HGLOG001`, segment number, the lsn its first record follows
//! (the previous segment's last lsn), CRC-32 of those 24 bytes, 4 zero bytes.
//!
//! [`scan`] reads one segment's bytes and says where its whole records end and why; it is
//! pure, so the recovery rules are fuzzed and unit-tested without files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{decode_frame, open_payload, Entry, Frame, FRAME_HEADER};

pub const HEADER: usize = 32;
const MAGIC: &[u8; 8] = b"HGLOG001";

pub fn file_name(number: u64) -> String {
    format!("{number:020}.seg")
}

pub fn path(dir: &Path, number: u64) -> PathBuf {
    dir.join(file_name(number))
}

/// The segment number of a file name, if it is one.
pub fn number_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub fn encode_header(number: u64, after_lsn: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&number.to_le_bytes());
    h[16..24].copy_from_slice(&after_lsn.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// (segment number, lsn before its first record).
pub fn decode_header(bytes: &[u8]) -> Result<(u64, u64), &'static str> {
    let h = bytes
        .get(..HEADER)
        .ok_or("the segment header is cut short")?;
    if &h[..8] != MAGIC {
        return Err("not a hookgate log segment (bad magic)");
    }
    let crc = u32::from_le_bytes(h[24..28].try_into().expect("4"));
    if crc32fast::hash(&h[..24]) != crc {
        return Err("the segment header's checksum does not match");
    }
    Ok((
        u64::from_le_bytes(h[8..16].try_into().expect("8")),
        u64::from_le_bytes(h[16..24].try_into().expect("8")),
    ))
}

/// A whole record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub lsn: u64,
    /// Offset of the frame in the segment.
    pub offset: usize,
    /// Offset of the payload in the segment, and its length.
    pub payload: usize,
    pub len: usize,
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Zeros (or the end of the file) after the last record.
    End,
    /// A seal record: the segment is full and nothing may follow.
    Sealed,
    /// Something at `offset` is not a whole record.
    Invalid {
        offset: usize,
        reason: &'static str,
        /// A whole record of a later write lies beyond it, at this offset: the damage is in
        /// the middle of the log, not a torn last write.
        later_write_at: Option<usize>,
    },
}

/// One segment, scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub number: u64,
    pub after_lsn: u64,
    pub records: Vec<Found>,
    /// Offset after the last whole record (where the next one goes).
    pub end: usize,
    pub stop: Stop,
    /// The first segment still kept, as the newest truncation record in this segment says.
    pub truncated_to: Option<u64>,
}

/// Scans a segment's bytes (header included). Never panics, whatever the input.
pub fn scan(bytes: &[u8]) -> Result<Scan, &'static str> {
    let (number, after_lsn) = decode_header(bytes)?;
    let mut scan = Scan {
        number,
        after_lsn,
        records: Vec::new(),
        end: HEADER,
        stop: Stop::End,
        truncated_to: None,
    };
    let mut last_lsn = after_lsn;
    let mut at = HEADER;
    while at < bytes.len() {
        match decode_frame(&bytes[at..]) {
            Frame::End => break,
            Frame::Invalid(reason) => {
                scan.stop = invalid(bytes, at, reason, last_lsn);
                return Ok(scan);
            }
            Frame::Record {
                lsn,
                batch: _,
                payload,
                next,
            } => {
                let opened = open_payload(payload);
                let entry = match &opened {
                    Ok(raw) => Entry::decode(raw),
                    Err(e) => Err(e.clone()),
                };
                let sealed = matches!(entry, Ok(Entry::Seal));
                // Lsns rise by one; a seal repeats the last one.
                let expected = if sealed {
                    Some(last_lsn)
                } else {
                    last_lsn.checked_add(1)
                };
                if Some(lsn) != expected {
                    scan.stop = Stop::Invalid {
                        offset: at,
                        reason: "a record out of sequence",
                        later_write_at: Some(at),
                    };
                    return Ok(scan);
                }
                if entry.is_err() {
                    scan.stop = Stop::Invalid {
                        offset: at,
                        reason: "a record whose content does not decode",
                        later_write_at: Some(at),
                    };
                    return Ok(scan);
                }
                if let Ok(Entry::Truncated { first_segment }) = entry {
                    scan.truncated_to = Some(first_segment);
                }
                if !sealed {
                    scan.records.push(Found {
                        lsn,
                        offset: at,
                        payload: at + FRAME_HEADER,
                        len: payload.len(),
                    });
                }
                last_lsn = lsn;
                at += next;
                scan.end = at;
                if sealed {
                    scan.stop = Stop::Sealed;
                    return Ok(scan);
                }
            }
        }
    }
    Ok(scan)
}

/// Classifies an invalid frame at `at`: only the last write can be torn, so a whole record of a
/// later write beyond it means the damage is in the middle.
fn invalid(bytes: &[u8], at: usize, reason: &'static str, last_lsn: u64) -> Stop {
    let mut later_write_at = None;
    let mut probe = at + 8;
    while probe + FRAME_HEADER <= bytes.len() {
        if let Frame::Record { lsn, batch, .. } = decode_frame(&bytes[probe..]) {
            // The torn write began at most at the record after the last whole one.
            if lsn > last_lsn && batch > last_lsn.saturating_add(1) {
                later_write_at = Some(probe);
                break;
            }
        }
        probe += 8;
    }
    Stop::Invalid {
        offset: at,
        reason,
        later_write_at,
    }
}

/// Reads frames one after another from segment files, a chunk at a time.
#[derive(Default)]
pub struct Reader {
    segment: u64,
    start: u64,
    buf: Vec<u8>,
}

const READ_CHUNK: usize = 1 << 20;

impl Reader {
    /// The whole record at `offset` of `segment` (lsn, payload, offset after it), or `None`
    /// at the end of what is written (zeros, a torn frame, the end of the file).
    pub fn frame(
        &mut self,
        file: &File,
        segment: u64,
        offset: u64,
    ) -> std::io::Result<Option<(u64, Vec<u8>, u64)>> {
        // At most: a read, a re-read from the frame, a read large enough for it.
        for _ in 0..3 {
            let within = self.segment == segment
                && offset >= self.start
                && offset < self.start + self.buf.len() as u64;
            if within {
                let at = (offset - self.start) as usize;
                match decode_frame(&self.buf[at..]) {
                    Frame::Record {
                        lsn, payload, next, ..
                    } => return Ok(Some((lsn, payload.to_vec(), offset + next as u64))),
                    Frame::End => return Ok(None),
                    Frame::Invalid(_) => {
                        // Cut by the chunk's end, or really the end: read from here, enough
                        // for the whole frame, once.
                        let len = self
                            .buf
                            .get(at..at + 4)
                            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4")) as usize);
                        if self.start == offset && self.buf.len() >= FRAME_HEADER + len {
                            return Ok(None);
                        }
                        self.fill(file, segment, offset, READ_CHUNK.max(FRAME_HEADER + len))?;
                        continue;
                    }
                }
            }
            self.fill(file, segment, offset, READ_CHUNK)?;
        }
        Ok(None)
    }

    fn fill(&mut self, file: &File, segment: u64, offset: u64, len: usize) -> std::io::Result<()> {
        let size = file.metadata()?.len();
        let len = len.min(size.saturating_sub(offset) as usize);
        self.buf = vec![0u8; len];
        file.read_exact_at(&mut self.buf, offset)?;
        self.segment = segment;
        self.start = offset;
        Ok(())
    }
}

/// Reads `len` bytes at `offset` of an open segment.
pub fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// A segment being created: written and synced under this name, then renamed into place, so
/// a crash mid-creation never leaves a segment without its header.
pub fn temp_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg.new"))
}

/// A fresh temporary file for segment `number` (an old one left by a crash is replaced).
fn open_temp(dir: &Path, number: u64) -> std::io::Result<File> {
    let temp = temp_path(dir, number);
    let _ = std::fs::remove_file(&temp);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&temp)
}

/// Prepares segment `number` ahead of time, off the commit path: a temporary file of `size`
/// zero bytes, written (not only allocated: on ext4 an allocated block is "unwritten", and the
/// first fdatasync after writing it must commit the conversion to the journal) and synced.
pub fn prepare(dir: &Path, number: u64, size: u64) -> std::io::Result<File> {
    let file = open_temp(dir, number)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = zeros.len().min((size - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// Puts a prepared segment in place: its header written and synced, then the file renamed to
/// its name and the directory synced.
pub fn install(dir: &Path, file: File, number: u64, after_lsn: u64) -> std::io::Result<File> {
    file.write_all_at(&encode_header(number, after_lsn), 0)?;
    file.sync_data()?;
    std::fs::rename(temp_path(dir, number), path(dir, number))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Creates a segment file of `size` bytes with its header, allocated on disk, and makes it and
/// its directory entry durable (when no prepared segment is at hand).
pub fn create(dir: &Path, number: u64, after_lsn: u64, size: u64) -> std::io::Result<File> {
    let file = open_temp(dir, number)?;
    // Allocated now (a file system without fallocate gets a sparse file); the writer prepares
    // the next segment fully written in the background, see `prepare`.
    if rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).is_err() {
        file.set_len(size)?;
    }
    file.write_all_at(&encode_header(number, after_lsn), 0)?;
    file.sync_all()?;
    std::fs::rename(temp_path(dir, number), path(dir, number))?;
    sync_dir(dir)?;
    Ok(file)
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::record::{encode_frame, Entry};
    use super::*;

    fn segment(records: &[(u64, u64, Entry)]) -> Vec<u8> {
        let mut bytes = encode_header(0, 0).to_vec();
        for (lsn, batch, entry) in records {
            encode_frame(&mut bytes, *lsn, *batch, &entry.encode());
        }
        bytes.resize(bytes.len() + 256, 0);
        bytes
    }

    #[test]
    fn names_round_trip_and_foreign_files_are_not_segments() {
        assert_eq!(number_of(&file_name(42)), Some(42));
        assert_eq!(number_of("00000000000000000042.tmp"), None);
        assert_eq!(number_of("42.seg"), None);
    }

    #[test]
    fn a_clean_segment_scans_to_its_end() {
        let bytes = segment(&[
            (1, 1, Entry::Probe),
            (2, 1, Entry::Expire { now_secs: 1 }),
            (3, 3, Entry::Truncated { first_segment: 0 }),
        ]);
        let scan = scan(&bytes).unwrap();
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.stop, Stop::End);
        assert_eq!(scan.truncated_to, Some(0));
        assert!(bytes[scan.end..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_torn_last_write_is_told_from_damage_before_a_later_write() {
        let bytes = segment(&[
            (1, 1, Entry::Probe),
            (2, 2, Entry::Probe),
            (3, 2, Entry::Probe),
            (4, 4, Entry::Probe),
        ]);
        let third = scan(&bytes).unwrap().records[2].offset;
        let fourth = scan(&bytes).unwrap().records[3].offset;
        // Record 3 of write 2 damaged: record 4 is a later write, so this is the middle.
        let mut damaged = bytes.clone();
        damaged[third + FRAME_HEADER] ^= 0xff;
        let found = scan(&damaged).unwrap();
        assert_eq!(found.records.len(), 2);
        assert_eq!(
            found.stop,
            Stop::Invalid {
                offset: third,
                reason: "a record's checksum does not match",
                later_write_at: Some(fourth)
            }
        );
        // The same damage with the later write gone (never written): a torn tail.
        let mut torn = damaged.clone();
        torn[fourth..].fill(0);
        assert!(matches!(
            scan(&torn).unwrap().stop,
            Stop::Invalid {
                later_write_at: None,
                ..
            }
        ));
    }

    #[test]
    fn a_seal_ends_the_segment_and_lsns_must_rise_by_one() {
        let sealed = segment(&[(1, 1, Entry::Probe), (1, 1, Entry::Seal)]);
        let found = scan(&sealed).unwrap();
        assert_eq!((found.records.len(), found.stop), (1, Stop::Sealed));
        let gap = segment(&[(1, 1, Entry::Probe), (3, 3, Entry::Probe)]);
        assert!(matches!(scan(&gap).unwrap().stop, Stop::Invalid { .. }));
    }

    #[test]
    fn the_reader_reads_frames_across_chunks_and_larger_than_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![7u8; READ_CHUNK + READ_CHUNK / 2];
        let mut bytes = encode_header(0, 0).to_vec();
        let mut lsn = 0;
        for size in [10, READ_CHUNK - 40, big.len(), 3] {
            lsn += 1;
            let body = &big[..size];
            encode_frame(
                &mut bytes,
                lsn,
                lsn,
                &Entry::Unprocessable {
                    key: [0; 16],
                    receipt: b"{}",
                    body,
                }
                .encode(),
            );
        }
        bytes.resize(bytes.len() + 100, 0);
        let path = dir.path().join(file_name(0));
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut reader = Reader::default();
        let mut offset = HEADER as u64;
        let mut seen = Vec::new();
        while let Some((lsn, payload, next)) = reader.frame(&file, 0, offset).unwrap() {
            assert!(Entry::decode(&open_payload(&payload).unwrap()).is_ok());
            seen.push(lsn);
            offset = next;
        }
        assert_eq!(seen, vec![1, 2, 3, 4]);
    }

    /// Found by fuzzing: a header claiming the largest lsn must not overflow the scan.
    #[test]
    fn a_segment_after_the_largest_lsn_scans_without_overflow() {
        let mut bytes = encode_header(0, u64::MAX).to_vec();
        encode_frame(&mut bytes, 0, u64::MAX, &Entry::Probe.encode());
        let found = scan(&bytes).unwrap();
        assert!(found.records.is_empty());
        assert!(matches!(found.stop, Stop::Invalid { .. }));
    }
}
