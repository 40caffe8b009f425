//! The `file` sink: appends one envelope per line (JSON Lines) and syncs the file before the
//! dispatcher removes the envelopes from the outbox, so a crash can repeat lines but never
//! lose one.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::envelope::Envelope;

#[derive(Debug)]
pub struct FileSink {
    name: String,
    path: PathBuf,
    file: Mutex<File>,
}

impl FileSink {
    pub fn open(name: &str, path: &str) -> std::io::Result<Self> {
        let path = PathBuf::from(path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            name: name.to_owned(),
            path,
            file: Mutex::new(file),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, envelopes: &[&Envelope]) -> std::io::Result<()> {
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
}
