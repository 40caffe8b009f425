//! The `file` sink: appends one envelope per line (JSON Lines) and `fdatasync`s before the
//! attempt counts as delivered, so a crash can repeat lines but never lose one.
//!
//! The file only ever holds whole lines: a write that fails part way (disk full) is cut back to
//! where it started before the attempt is retried, and a partial last line left by a crash is
//! cut off when the file is opened, so the next line never runs into a broken one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::Attempt;
use crate::envelope::Envelope;

#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    /// Opened by [`FileSink::open`] at startup (or by the first write).
    file: Arc<Mutex<Option<File>>>,
}

/// Bytes read per step when looking back for the last whole line.
const TAIL_CHUNK: u64 = 64 * 1024;

/// Cuts `file` after its last newline when it does not end with one (a line left partial by a
/// crash or a failed write). Returns how many bytes were cut.
fn cut_partial_line(file: &File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; TAIL_CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(TAIL_CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(at) = chunk.iter().rposition(|b| *b == b'\n') {
            let whole = start + at as u64 + 1;
            if whole < len {
                file.set_len(whole)?;
            }
            return Ok(len - whole);
        }
        end = start;
    }
    if len > 0 {
        file.set_len(0)?;
    }
    Ok(len)
}

/// Appends `lines` (whole lines) with `write` and syncs; when either fails the file is cut back
/// to its length before, so a retry starts on a line boundary.
fn append_whole(
    file: &File,
    lines: &[u8],
    write: impl FnOnce(&File, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let start = file.metadata()?.len();
    let written = write(file, lines).and_then(|()| file.sync_data());
    if let Err(e) = written {
        // Best effort: if this fails too, the next write cuts the partial line first.
        let _ = file.set_len(start).and_then(|()| file.sync_data());
        return Err(e);
    }
    Ok(())
}

impl FileSink {
    /// A sink appending to `path`; nothing is touched until [`FileSink::open`].
    pub fn new(path: &str) -> Self {
        Self {
            path: PathBuf::from(path),
            file: Arc::new(Mutex::new(None)),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Creates the file (and its directory) if needed and opens it for appending; a partial
    /// last line is cut off first.
    pub fn open(&self) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let opened = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&self.path)?;
            let cut = cut_partial_line(&opened)?;
            if cut > 0 {
                warn!(path = %self.path.display(), bytes = cut,
                    "The sink file ended in a partial line; cut back to the last whole line.");
            }
            *file = Some(opened);
        }
        Ok(())
    }

    fn write(&self, envelopes: &[Envelope]) -> std::io::Result<()> {
        self.open()?;
        let guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(file) = guard.as_ref() else {
            return Err(std::io::Error::other("the sink file is not open"));
        };
        let mut lines = Vec::new();
        for envelope in envelopes {
            serde_json::to_writer(&mut lines, envelope)?;
            lines.push(b'\n');
        }
        append_whole(file, &lines, |mut file, bytes| file.write_all(bytes))
    }

    pub async fn append(&self, envelopes: &[Envelope]) -> Attempt {
        let sink = self.clone();
        let envelopes = envelopes.to_vec();
        let result = tokio::task::spawn_blocking(move || sink.write(&envelopes)).await;
        match result {
            Ok(Ok(())) => Attempt::Delivered {
                http_status: None,
                exit_code: None,
                response: None,
                reply: None,
            },
            Ok(Err(e)) => Attempt::Retry {
                error: format!("{}: {e}", self.path.display()),
                http_status: None,
                exit_code: None,
                retry_after: None,
            },
            Err(e) => Attempt::Retry {
                error: format!("write task failed: {e}"),
                http_status: None,
                exit_code: None,
                retry_after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(dir: &std::path::Path, content: &[u8]) -> File {
        let path = dir.join("sink.jsonl");
        std::fs::write(&path, content).unwrap();
        OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap()
    }

    fn content(dir: &std::path::Path) -> Vec<u8> {
        std::fs::read(dir.join("sink.jsonl")).unwrap()
    }

    /// A disk that fills up half way through the write (ENOSPC after a partial write).
    fn full_disk_after_half(mut file: &File, bytes: &[u8]) -> std::io::Result<()> {
        file.write_all(&bytes[..bytes.len() / 2])?;
        Err(std::io::Error::from_raw_os_error(28))
    }

    #[test]
    fn a_write_that_fails_part_way_leaves_no_partial_line_for_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let file = opened(dir.path(), b"{\"n\":1}\n");
        let lines = b"{\"n\":2}\n{\"n\":3}\n";
        let err = append_whole(&file, lines, full_disk_after_half).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        assert_eq!(content(dir.path()), b"{\"n\":1}\n");
        // The retry, once there is room, appends whole lines after whole lines.
        append_whole(&file, lines, |mut f, b| f.write_all(b)).unwrap();
        assert_eq!(content(dir.path()), b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
    }

    #[test]
    fn a_partial_last_line_is_cut_when_the_file_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let file = opened(dir.path(), b"{\"n\":1}\n{\"n\":");
        assert_eq!(cut_partial_line(&file).unwrap(), 5);
        assert_eq!(content(dir.path()), b"{\"n\":1}\n");
        assert_eq!(cut_partial_line(&file).unwrap(), 0);
        // A long partial line (more than one look-back step) with no newline at all.
        let long = vec![b'x'; (TAIL_CHUNK as usize) * 2 + 7];
        let file = opened(dir.path(), &long);
        assert_eq!(cut_partial_line(&file).unwrap(), long.len() as u64);
        assert!(content(dir.path()).is_empty());
    }
}
