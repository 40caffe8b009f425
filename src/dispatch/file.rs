//! The `file` sink: appends one envelope per line (JSON Lines) and `fdatasync`s before the
//! attempt counts as delivered, so a crash can repeat lines but never lose one.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::Attempt;
use crate::envelope::Envelope;

#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
    /// Opened by [`FileSink::open`] at startup (or by the first write).
    file: Arc<Mutex<Option<File>>>,
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

    /// Creates the file (and its directory) if needed and opens it for appending.
    pub fn open(&self) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if file.is_none() {
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        Ok(())
    }

    fn write(&self, envelopes: &[Envelope]) -> std::io::Result<()> {
        self.open()?;
        let guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(file) = guard.as_ref() else {
            return Err(std::io::Error::other("the sink file is not open"));
        };
        let mut out = BufWriter::new(file);
        for envelope in envelopes {
            serde_json::to_writer(&mut out, envelope)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        file.sync_data()
    }

    pub async fn append(&self, envelopes: &[Envelope]) -> Attempt {
        let sink = self.clone();
        let envelopes = envelopes.to_vec();
        let result = tokio::task::spawn_blocking(move || sink.write(&envelopes)).await;
        match result {
            Ok(Ok(())) => Attempt::Delivered {
                http_status: None,
                exit_code: None,
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
