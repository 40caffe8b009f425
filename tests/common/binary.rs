//! The real `hookgate` binary as a child process, and signed generic events sent to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{generic_body, generic_headers, GENERIC_SECRET};

/// How long a started gateway may take to log "Listening.".
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The gateway binary as a child process; killed (SIGKILL) when dropped.
pub struct Gateway {
    child: Child,
    pub port: u16,
}

impl Gateway {
    /// Starts `hookgate serve --config <config>` and waits until it has logged the port it
    /// listens on. The config must log JSON at `info` (the "Listening." line carries the port).
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (port_tx, port_rx) = std::sync::mpsc::channel::<Result<u16, String>>();
        // Reads the log until the port shows, then keeps draining it so the child never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
            for line in lines.by_ref() {
                let port = serde_json::from_str::<Value>(&line)
                    .ok()
                    .filter(|log| log["fields"]["message"] == "Listening.")
                    .and_then(|log| log["fields"]["port"].as_u64());
                if let Some(port) = port {
                    let _ = port_tx.send(Ok(port as u16));
                    break;
                }
                seen.push(line);
            }
            let _ = port_tx.send(Err(seen.join("\n")));
            for _ in lines {}
        });
        let port = match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(port)) => port,
            Ok(Err(log)) => {
                let _ = child.wait();
                panic!("the gateway exited before listening:\n{log}");
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not listen within {START_TIMEOUT:?}");
            }
        };
        Self { child, port }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9` this child and reap it.
    pub fn sigkill(mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The answer to one signed generic event.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// 2xx with this `status` (`accepted`, `duplicate`).
    Status(String),
    /// Any other HTTP status.
    Http(u16),
    /// No answer: connection refused or reset, timeout, unreadable body.
    Failed,
}

/// Posts the signed generic event `id` about object `object_id`.
pub async fn send(client: &reqwest::Client, port: u16, id: &str, object_id: &str) -> Answer {
    let body = generic_body(id, "post.created", object_id);
    let now = chrono::Utc::now().timestamp();
    let mut request = client.post(format!("http://127.0.0.1:{port}/webhooks/demo"));
    for (k, v) in generic_headers(GENERIC_SECRET, id, now, body.as_bytes()) {
        request = request.header(k, v);
    }
    let Ok(response) = request.body(body).send().await else {
        return Answer::Failed;
    };
    if !response.status().is_success() {
        return Answer::Http(response.status().as_u16());
    }
    match response.json::<Value>().await {
        Ok(answer) => Answer::Status(answer["status"].as_str().unwrap_or_default().to_owned()),
        Err(_) => Answer::Failed,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}
