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
    file: Arc<Mutex<File>>,
}

impl FileSink {
    pub fn open(path: &str) -> std::io::Result<Self> {
        let path = PathBuf::from(path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    fn write(&self, envelopes: &[Envelope]) -> std::io::Result<()> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = BufWriter::new(&*file);
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
