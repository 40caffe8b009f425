//! A small load generator for a running gateway's generic instance: unique (or repeated) events
//! signed like a real sender, N concurrent keep-alive connections, latency percentiles.
//!
//! ```sh
//! cargo run --release -- serve &                     # the committed config: /webhooks/demo
//! cargo run --release --example loadgen -- --requests 50000 --concurrency 64
//! cargo run --release --example loadgen -- --requests 50000 --concurrency 64 --duplicates
//! ```
//! Loopback only: `--url` must point at 127.0.0.1/localhost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};

struct Args {
    url: String,
    secret: String,
    requests: usize,
    concurrency: usize,
    duplicates: bool,
    /// Send every request with a distinct `X-Forwarded-For` client address.
    distinct_ips: bool,
    /// Print one JSON line instead of text.
    json: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: "http://127.0.0.1:8080/webhooks/demo".into(),
        secret: std::env::var("HOOKGATE_DEMO_SECRET")
            .unwrap_or_else(|_| hookgate::provider::registry::DEMO_SECRET.into()),
        requests: 20_000,
        concurrency: 64,
        duplicates: false,
        distinct_ips: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("flag needs a value");
        match flag.as_str() {
            "--url" => args.url = value(),
            "--secret" => args.secret = value(),
            "--requests" => args.requests = value().parse().expect("number"),
            "--concurrency" => args.concurrency = value().parse().expect("number"),
            "--duplicates" => args.duplicates = true,
            "--distinct-ips" => args.distinct_ips = true,
            "--json" => args.json = true,
            other => panic!("unknown flag {other}"),
        }
    }
    let host = args.url.split('/').nth(2).unwrap_or_default();
    assert!(
        host.starts_with("127.") || host.starts_with("localhost"),
        "load tests target loopback only"
    );
    args
}

fn signed(secret: &str, id: &str) -> (String, String) {
    let body = format!(
        r#"{{"id":"{id}","type":"post.created","created_at":"2024-01-15T10:30:00Z","data":{{"object":{{"id":"post_{id}","title":"load test"}}}}}}"#
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    (
        body,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
    )
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .unwrap();
    let run_id = std::process::id();
    if args.duplicates {
        // Store the one event first, so every timed request is a duplicate.
        let (body, sig) = signed(&args.secret, &format!("dup-{run_id}"));
        send(
            &client,
            &args.url,
            &format!("dup-{run_id}"),
            body,
            sig,
            None,
        )
        .await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, next) = (client.clone(), args.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.requests {
                    break;
                }
                let id = if args.duplicates {
                    format!("dup-{run_id}")
                } else {
                    format!("load-{run_id}-{i}")
                };
                let (body, sig) = signed(&args.secret, &id);
                let xff = args.distinct_ips.then(|| {
                    let n = i as u32 + 1;
                    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
                });
                let t = Instant::now();
                if !send(&client, &args.url, &id, body, sig, xff).await {
                    failures += 1;
                }
                latencies.push(t.elapsed());
            }
            (latencies, failures)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await.unwrap();
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    if args.json {
        println!(
            r#"{{"mode":"{}","requests":{},"concurrency":{},"rps":{:.0},"p50_ms":{:.3},"p99_ms":{:.3},"max_ms":{:.3},"failures":{}}}"#,
            if args.duplicates {
                "duplicate"
            } else {
                "unique"
            },
            latencies.len(),
            args.concurrency,
            latencies.len() as f64 / elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
            failures
        );
        return;
    }
    println!(
        "{} {} requests, concurrency {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, failures {}",
        if args.duplicates { "duplicate" } else { "unique" },
        latencies.len(),
        args.concurrency,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        failures
    );
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    body: String,
    sig: String,
    xff: Option<String>,
) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut request = client.post(url);
    if let Some(xff) = xff {
        request = request.header("X-Forwarded-For", xff);
    }
    match request
        .header("Content-Type", "application/json")
        .header("X-Webhook-ID", id)
        .header("X-Webhook-Timestamp", now.to_string())
        .header("X-Webhook-Signature", sig)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}
