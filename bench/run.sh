#!/usr/bin/env bash
# Benchmark harness: hookgate against a bare actix-web handler that checks the same HMAC, with
# the same load generator, on this machine. Prints a Markdown table for docs/performance.md.
# Loopback only; every run is bounded by its request count.
#
#   bench/run.sh                 # full run (about 3 minutes on 2 cores)
#   REQUESTS=20000 bench/run.sh  # shorter
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-60000}
C1_REQUESTS=${C1_REQUESTS:-5000}
IP_REQUESTS=${IP_REQUESTS:-300000}
DATA=${HOOKGATE_BENCH_DATA:-/tmp/hookgate-bench}
export HOOKGATE_BENCH_DATA=$DATA

cargo build --release --quiet --bin hookgate --example loadgen --example bare
BIN=target/release
LOAD=$BIN/examples/loadgen
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; exit 1
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
rss_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

echo "== bare actix-web + HMAC baseline" >&2
$BIN/examples/bare 127.0.0.1:18090 & PIDS+=($!); BARE=$!
wait_port 18090
$LOAD --url http://127.0.0.1:18090/webhooks/demo --requests 2000 --concurrency 64 --json >/dev/null
BARE64=$($LOAD --url http://127.0.0.1:18090/webhooks/demo --requests "$REQUESTS" --concurrency 64 --json)
BARE1=$($LOAD --url http://127.0.0.1:18090/webhooks/demo --requests "$C1_REQUESTS" --concurrency 1 --json)
kill "$BARE"

echo "== hookgate (durable store, file sink)" >&2
rm -rf "$DATA" "$DATA-ips"
$BIN/hookgate serve --config bench/config.toml & PIDS+=($!); HG=$!
wait_port 8080
U=http://127.0.0.1:8080/webhooks/demo
UNIQ64=$($LOAD --url $U --requests "$REQUESTS" --concurrency 64 --json)
UNIQ1=$($LOAD --url $U --requests "$C1_REQUESTS" --concurrency 1 --json)
DUP64=$($LOAD --url $U --requests "$REQUESTS" --concurrency 64 --duplicates --json)
DUP1=$($LOAD --url $U --requests "$C1_REQUESTS" --concurrency 1 --duplicates --json)
RSS=$(rss_mb "$HG")
sleep 2
STORED=$((REQUESTS + C1_REQUESTS + 2))
BYTES=$(du -sb "$DATA" | cut -f1)
kill -TERM "$HG"; wait "$HG" 2>/dev/null || true

echo "== hookgate, $IP_REQUESTS distinct client IPs via a trusted proxy" >&2
$BIN/hookgate serve --config bench/config-ips.toml & PIDS+=($!); HG=$!
wait_port 8081
IPS=$($LOAD --url http://127.0.0.1:8081/webhooks/demo --requests "$IP_REQUESTS" --concurrency 64 --duplicates --distinct-ips --json)
IPRSS=$(rss_mb "$HG")
kill -TERM "$HG"; wait "$HG" 2>/dev/null || true

python3 - "$BARE64" "$BARE1" "$UNIQ64" "$UNIQ1" "$DUP64" "$DUP1" "$RSS" "$BYTES" "$STORED" "$IPS" "$IPRSS" <<'PY'
import json, sys
bare64, bare1, u64, u1, d64, d1 = (json.loads(a) for a in sys.argv[1:7])
rss, size, stored, ips, iprss = float(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9]), json.loads(sys.argv[10]), float(sys.argv[11])
def row(name, value, target, ok): print(f"| {name} | {value} | {target} | {'met' if ok else 'NOT met'} |")
print(f"| measure | result | target | |\n|---|---|---|---|")
print(f"| bare actix + HMAC, c=64 | {bare64['rps']:.0f} req/s (p99 {bare64['p99_ms']:.2f} ms) | baseline | |")
print(f"| bare actix + HMAC, c=1 | {bare1['rps']:.0f} req/s (p99 {bare1['p99_ms']:.2f} ms) | baseline | |")
r = u64['rps'] / bare64['rps']
row("unique events acknowledged durably, c=64", f"{u64['rps']:.0f}/s = {r:.0%} of bare", ">= 40 % of bare", r >= 0.40)
r = d64['rps'] / bare64['rps']
row("duplicates, c=64", f"{d64['rps']:.0f}/s = {r:.0%} of bare", ">= 80 % of bare", r >= 0.80)
row("p99 unique, c=1", f"{u1['p99_ms']:.2f} ms (p50 {u1['p50_ms']:.2f})", "< 1 ms", u1['p99_ms'] < 1)
row("p99 unique, c=64", f"{u64['p99_ms']:.2f} ms (p50 {u64['p50_ms']:.2f})", "< 15 ms", u64['p99_ms'] < 15)
row("p99 duplicates, c=1", f"{d1['p99_ms']:.2f} ms", "< 1 ms", d1['p99_ms'] < 1)
row("p99 duplicates, c=64", f"{d64['p99_ms']:.2f} ms", "< 15 ms", d64['p99_ms'] < 15)
row("peak RSS after the runs above", f"{rss:.1f} MB", "-", True)
row(f"peak RSS, {ips['requests']} distinct client IPs", f"{iprss:.1f} MB ({ips['rps']:.0f} req/s)", "< 100 MB", iprss < 100)
print(f"| bytes on disk per stored event | {size/stored:.0f} B ({size/1e6:.1f} MB for {stored} events, raw + envelope + task) | - | |")
fails = sum(x['failures'] for x in (u64, u1, d64, d1))
print(f"\nfailed requests during the hookgate runs: {fails}; rate-limited (429) in the distinct-IP run: {ips['failures']}")
PY
