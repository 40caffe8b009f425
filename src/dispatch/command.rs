//! The `command` sink: runs the program with the envelope as JSON on stdin. Exit 0 is delivered;
//! any other exit, a failure to start, or running past the timeout (the process is killed) is
//! retried. The end of stderr is kept in the attempt record.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::Attempt;
use crate::envelope::Envelope;

/// How much of stderr is kept in the attempt record.
const STDERR_LIMIT: usize = 4096;

#[derive(Debug)]
pub struct CommandSink {
    argv: Vec<String>,
    timeout: Duration,
}

impl CommandSink {
    pub fn new(argv: Vec<String>, timeout: Duration) -> Self {
        Self { argv, timeout }
    }

    fn retry(error: String, exit_code: Option<i32>) -> Attempt {
        Attempt::Retry {
            error,
            http_status: None,
            exit_code,
            retry_after: None,
        }
    }

    pub async fn deliver(&self, envelope: &Envelope) -> Attempt {
        let input = match serde_json::to_vec(envelope) {
            Ok(input) => input,
            Err(e) => {
                return Attempt::Permanent {
                    error: format!("cannot serialise the envelope: {e}"),
                    http_status: None,
                }
            }
        };
        let mut child = match Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return Self::retry(format!("cannot run {}: {e}", self.argv[0]), None),
        };
        let mut stdin = child.stdin.take();
        let mut stderr = child.stderr.take();
        let run = async {
            if let Some(stdin) = stdin.as_mut() {
                // A program that exits without reading its input is judged by its exit code.
                let _ = stdin.write_all(&input).await;
            }
            drop(stdin);
            let mut captured = Vec::new();
            if let Some(stderr) = stderr.as_mut() {
                let _ = stderr.read_to_end(&mut captured).await;
            }
            (child.wait().await, captured)
        };
        match tokio::time::timeout(self.timeout, run).await {
            Err(_) => Self::retry(
                format!("timed out after {} ms", self.timeout.as_millis()),
                None,
            ),
            Ok((Err(e), _)) => Self::retry(format!("wait failed: {e}"), None),
            Ok((Ok(status), stderr)) => {
                if status.success() {
                    Attempt::Delivered {
                        http_status: None,
                        exit_code: Some(0),
                    }
                } else {
                    let tail = &stderr[stderr.len().saturating_sub(STDERR_LIMIT)..];
                    let text = String::from_utf8_lossy(tail).trim().to_owned();
                    Self::retry(
                        match status.code() {
                            Some(code) => format!("exit {code}: {text}"),
                            None => format!("killed by a signal: {text}"),
                        },
                        status.code(),
                    )
                }
            }
        }
    }
}
