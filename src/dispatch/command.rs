//! The `command` sink: runs the program with the envelope as JSON on stdin. Exit 0 is delivered;
//! any other exit, a failure to start, or running past the timeout (the process is killed) is
//! retried. The end of stderr (its last [`STDERR_LIMIT`] bytes) is kept in the attempt record;
//! the rest is read and dropped as it comes, so a chatty program costs no memory.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::Attempt;
use crate::envelope::Envelope;

/// How much of stderr is kept in the attempt record.
pub const STDERR_LIMIT: usize = 512;

/// Reads `reader` to its end, keeping only the last `limit` bytes.
async fn read_tail(reader: &mut (impl AsyncReadExt + Unpin), limit: usize) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    // Never grows: at most `limit` kept plus one chunk read.
    let mut tail = Vec::with_capacity(limit + chunk.len());
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > limit {
                    tail.drain(..tail.len() - limit);
                }
            }
        }
    }
    tail
}

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
                captured = read_tail(stderr, STDERR_LIMIT).await;
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
                        response: None,
                        reply: None,
                    }
                } else {
                    let text = String::from_utf8_lossy(&stderr).trim().to_owned();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_tail_of_a_long_stream_is_kept() {
        let mut long = tokio::io::repeat(b'x')
            .take(8 * 1024 * 1024)
            .chain(&b"the end"[..]);
        let tail = read_tail(&mut long, STDERR_LIMIT).await;
        assert_eq!(tail.len(), STDERR_LIMIT);
        assert!(tail.ends_with(b"xxthe end"));
        assert!(
            tail.capacity() <= STDERR_LIMIT + 4096,
            "{}",
            tail.capacity()
        );
    }
}
