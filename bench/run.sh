#!/usr/bin/env bash
# Benchmark harness: hookgate against a bare actix-web handler that checks the same HMAC
# (examples/bare.rs), both driven by wrk with pre-signed requests, alternately, REPS times.
# Prints a Markdown table (medians and every repetition) to stdout; progress to stderr.
# Loopback only. See docs/performance.md, section "wrk harness (bench/run.sh)".
#
#   bench/run.sh                          # 3 reps x (10 s at c=64, 5 s at c=1) x 4 runs x 2 servers
#   DURATION=3s REPS=1 bench/run.sh       # smoke run
#   HOOKGATE_BIN=/x/hookgate BARE_BIN=/x/bare HOOKGATE_REV=abc123 bench/run.sh   # no build
#
# Per repetition, in this order, bare first, then hookgate, for each of:
#   unique events c=64 (-t$THREADS -c$CONNS -d$DURATION), unique c=1 (-t1 -c1 -d$C1_DURATION),
#   duplicates c=64, duplicates c=1.
# Unique runs send requests pre-signed by bench/wrkbench.py: a ~1 KiB JSON body with a unique
# "id" (run nonce, repetition, run, wrk thread, sequence number) and the same X-Webhook-ID.
# Both servers get the same bytes. Duplicate runs repeat one request stored once beforehand.
# Before and after every run the script waits until the server's CPU use is idle, so one
# server's background work (hookgate's delivery to the file sink) never lands in another
# server's measurement, and hookgate's CPU and disk figures include that work.
#
# Exit status: 0; 3 when the report flags something (errors, wrapped ids, a server that did
# not go idle); anything else is a failure of the harness.
#
# Environment (defaults):
#   DURATION=10s C1_DURATION=(half of DURATION) REPS=3 THREADS=2 CONNS=64
#   LINES=200000 (pre-signed unique requests per wrk thread, c=64) C1_LINES=100000
#   IP_COUNT=300000 distinct X-Forwarded-For addresses for the memory check (0 skips it)
#   IP_DURATION=15s (~300k requests at ~20k/s)  WARMUP=2s  IDLE_TIMEOUT=120 (seconds)
#   HOOKGATE_BENCH_DATA=/tmp/hookgate-bench (recreated; also <dir>-ips)
#   BIN_DIR=${CARGO_TARGET_DIR:-target}/release, HOOKGATE_BIN, BARE_BIN: prebuilt binaries
#   (setting BIN_DIR, or both *_BIN, skips `cargo build`; SKIP_BUILD=1 too)
#   HOOKGATE_REV: label for the binary in the report (default: git commit of this tree)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
if [ -z "${C1_DURATION:-}" ]; then
  if [[ $DURATION =~ ^([0-9]+)s$ ]] && (( BASH_REMATCH[1] >= 2 )); then
    C1_DURATION="$(( BASH_REMATCH[1] / 2 ))s"
  else
    C1_DURATION=$DURATION
  fi
fi
REPS=${REPS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
LINES=${LINES:-200000}
C1_LINES=${C1_LINES:-100000}
IP_COUNT=${IP_COUNT:-300000}
IP_DURATION=${IP_DURATION:-15s}
WARMUP=${WARMUP:-2s}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-120}
DATA=${HOOKGATE_BENCH_DATA:-/tmp/hookgate-bench}
export HOOKGATE_BENCH_DATA=$DATA
unset HOOKGATE_DEMO_SECRET   # bare hard-codes the demo secret; both must check the same one
HG_PORT=8080 BARE_PORT=18090 IPS_PORT=8081

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }
py() { python3 bench/wrkbench.py "$@"; }

# --- binaries -------------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  apt-get install -y wrk >&2 || { apt-get update >&2 && apt-get install -y wrk >&2; } \
    || die "could not install wrk"
fi
command -v python3 >/dev/null || die "python3 is required"

BUILD=1
[ -n "${BIN_DIR:-}" ] && BUILD=0
[ -n "${HOOKGATE_BIN:-}" ] && [ -n "${BARE_BIN:-}" ] && BUILD=0
[ "${SKIP_BUILD:-0}" = 1 ] && BUILD=0
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
HOOKGATE_BIN=${HOOKGATE_BIN:-$BIN_DIR/hookgate}
BARE_BIN=${BARE_BIN:-$BIN_DIR/examples/bare}
if [ "$BUILD" = 1 ]; then
  log "cargo build --release --bin hookgate --example bare"
  cargo build --release --bin hookgate --example bare >&2 \
    || die "build failed; benchmark another build with HOOKGATE_BIN=... BARE_BIN=... (see docs/performance.md)"
  HOOKGATE_REV=${HOOKGATE_REV:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo +dirty)}
fi
HOOKGATE_REV=${HOOKGATE_REV:-prebuilt}
[ -x "$HOOKGATE_BIN" ] || die "no hookgate binary at $HOOKGATE_BIN"
[ -x "$BARE_BIN" ] || die "no bare binary at $BARE_BIN"

# --- scratch space, processes ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/hookgate-wrk.XXXXXX)
REQ=$WORK/requests LOGS=$WORK/logs RESULTS=$WORK/results.jsonl
mkdir -p "$REQ" "$LOGS"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$REQ"
  log "logs and raw results kept in $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fresh_dir() {   # remove a data dir only if this harness made it
  if [ -e "$1" ]; then
    if [ -e "$1/.hookgate-bench" ] || [ -z "$(ls -A "$1" 2>/dev/null)" ]; then
      rm -rf "$1"
    else
      die "$1 exists and was not made by bench/run.sh; remove it or set HOOKGATE_BENCH_DATA"
    fi
  fi
  mkdir -p "$1" && touch "$1/.hookgate-bench"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {   # port pid
  for _ in $(seq 1 200); do
    kill -0 "$2" 2>/dev/null || die "server (pid $2) exited; see $LOGS"
    port_open "$1" && return 0
    sleep 0.1
  done
  die "nothing listening on $1"
}
start() {   # name port cmd...: sets STARTED to the pid
  local name=$1 port=$2; shift 2
  port_open "$port" && die "127.0.0.1:$port is already in use; not benchmarking someone else's server"
  "$@" >>"$LOGS/$name.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
  wait_port "$port" "$STARTED"
}
stop() {   # pid
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# CPU of the whole machine (user nice system irq softirq steal), and of this shell's reaped
# children (bash `times`, line 2: "0m1.234s 0m0.056s"): wrk's own CPU is the delta around it.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
child_ms() { awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] }
  printf "%d\n", t * 1000 }' "$1"; }
write_bytes() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
WARNS=()
IDLE_WAITED=0
wait_idle() {   # pid name: until it uses < 4 % of a core over half a second
  local prev now start=$SECONDS t0=${EPOCHREALTIME/,/.}
  prev=$(cpu_ticks "$1")
  while :; do
    sleep 0.5
    now=$(cpu_ticks "$1")
    (( (now - prev) * 100 <= 2 * CLK_TCK )) && break   # <= 0.02 s of CPU in 0.5 s
    prev=$now
    if (( SECONDS - start > IDLE_TIMEOUT )); then
      WARNS+=("$2 (pid $1) was still busy ${IDLE_TIMEOUT}s after a run; later numbers overlap its work")
      log "warning: $2 not idle after ${IDLE_TIMEOUT}s"
      break
    fi
  done
  IDLE_WAITED=$(python3 -c "print(round(${EPOCHREALTIME/,/.} - $t0 - 0.5, 1))")   # minus the one sample
}

SYNC_SEQ=0   # a fresh sync path per wrk run (see bench/signed.lua)
rep=0
run_wrk() {   # server pid port mode conns threads duration request-file [lua args...]
  local server=$1 pid=$2 port=$3 mode=$4 conns=$5 threads=$6 dur=$7 file=$8; shift 8
  local out="$LOGS/rep$rep-$server-$mode-c$conns.log" c0 c1
  SYNC_SEQ=$((SYNC_SEQ + 1))
  wait_idle "$pid" "$server"
  c0=$(cpu_ticks "$pid") b0=$(busy_ticks)
  times >"$WORK/times0"; t0=${EPOCHREALTIME/,/.}
  wrk -t"$threads" -c"$conns" -d"$dur" --latency --timeout 30s -s bench/signed.lua \
    "http://127.0.0.1:$port/webhooks/demo" -- "$file" threads="$threads" sync="$REQ/sync-$SYNC_SEQ" "$@" \
    >"$out" 2>&1 || die "wrk failed; see $out"
  t1=${EPOCHREALTIME/,/.}; times >"$WORK/times1"
  s1=$(cpu_ticks "$pid") b1=$(busy_ticks)
  wait_idle "$pid" "$server"
  c1=$(cpu_ticks "$pid")
  py record "$RESULTS" kind=run rep="$rep" server="$server" mode="$mode" conns="$conns" \
    cpu_us=$(( (c1 - c0) * 1000000 / CLK_TCK )) idle_wait_s="$IDLE_WAITED" \
    wall_s="$(python3 -c "print($t1 - $t0)")" machine_ticks=$(( b1 - b0 )) server_ticks=$(( s1 - c0 )) \
    wrk_ms=$(( $(child_ms "$WORK/times1") - $(child_ms "$WORK/times0") )) --wrk "$out"
}
ok_of() { python3 -c 'import json,sys
rs=[json.loads(l) for l in open(sys.argv[1])]
print(sum(r["ok"] for r in rs if r.get("kind")=="run" and r["rep"]==int(sys.argv[2]) and r["server"]==sys.argv[3] and r["mode"]==sys.argv[4]))' \
  "$RESULTS" "$rep" "$1" "$2"; }

# --- start ----------------------------------------------------------------------------------
NONCE=$(date +%s)$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
fresh_dir "$DATA"
py record "$RESULTS" kind=meta date="$(date -u +%Y-%m-%dT%H:%MZ)" hookgate_bin="$HOOKGATE_BIN" \
  hookgate_rev="$HOOKGATE_REV" bare_bin="$BARE_BIN" wrk="$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)" \
  nproc="$(nproc)" clk_tck="$CLK_TCK" load_start="$(cut -d' ' -f1-3 /proc/loadavg)" duration="$DURATION" \
  c1_duration="$C1_DURATION" wrk_threads="$THREADS" conns="$CONNS" lines="$LINES" nonce="$NONCE"
log "hookgate $HOOKGATE_BIN ($HOOKGATE_REV), bare $BARE_BIN; $REPS rep(s), $DURATION at c=$CONNS, $C1_DURATION at c=1; run nonce $NONCE; work dir $WORK"

start bare "$BARE_PORT" "$BARE_BIN" "127.0.0.1:$BARE_PORT"; BARE=$STARTED
start hookgate "$HG_PORT" "$HOOKGATE_BIN" serve --config bench/config.toml; HG=$STARTED

# The one duplicate: stored once now, repeated by every duplicate run.
py gen --out "$REQ/dup" --dup --id-prefix "wrk-$NONCE"
py send "$REQ/dup.req" "$BARE_PORT" || die "bare rejected the duplicate request"
py send "$REQ/dup.req" "$HG_PORT" || die "hookgate rejected the duplicate request"
log "warm-up: $WARMUP of duplicates against each server (not reported)"
for port in "$BARE_PORT" "$HG_PORT"; do
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s bench/signed.lua "http://127.0.0.1:$port/webhooks/demo" \
    -- "$REQ/dup.req" threads="$THREADS" >"$LOGS/warmup-$port.log" 2>&1 || die "warm-up failed"
done

for rep in $(seq 1 "$REPS"); do
  log "== repetition $rep/$REPS: pre-signing $THREADS x $LINES + $C1_LINES unique requests"
  py gen --out "$REQ/u64" --threads "$THREADS" --lines "$LINES" --id-prefix "wrk-$NONCE-r$rep-c64"
  py gen --out "$REQ/u01" --threads 1 --lines "$C1_LINES" --id-prefix "wrk-$NONCE-r$rep-c01"

  read -r _ DUP_U0 < <(py metrics "$HG_PORT")
  IO0=$(write_bytes "$HG")
  for server in bare hookgate; do
    if [ $server = bare ]; then pid=$BARE port=$BARE_PORT; else pid=$HG port=$HG_PORT; fi
    log "$server: unique, c=$CONNS"
    run_wrk $server "$pid" "$port" unique "$CONNS" "$THREADS" "$DURATION" "$REQ/u64-t%d.req"
  done
  for server in bare hookgate; do
    if [ $server = bare ]; then pid=$BARE port=$BARE_PORT; else pid=$HG port=$HG_PORT; fi
    log "$server: unique, c=1"
    run_wrk $server "$pid" "$port" unique 1 1 "$C1_DURATION" "$REQ/u01-t%d.req"
  done
  IO1=$(write_bytes "$HG")   # run_wrk waited until hookgate went idle
  read -r _ DUP_U1 < <(py metrics "$HG_PORT")

  for conns in "$CONNS" 1; do
    threads=$THREADS dur=$DURATION
    [ "$conns" = 1 ] && threads=1 dur=$C1_DURATION
    for server in bare hookgate; do
      if [ $server = bare ]; then pid=$BARE port=$BARE_PORT; else pid=$HG port=$HG_PORT; fi
      log "$server: duplicates, c=$conns"
      run_wrk $server "$pid" "$port" dup "$conns" "$threads" "$dur" "$REQ/dup.req"
    done
  done
  IO2=$(write_bytes "$HG")
  read -r OK_NOW DUP_NOW < <(py metrics "$HG_PORT")
  rm -f "$REQ"/u64-t*.req "$REQ"/u01-t*.req
  if [ "$OK_NOW" != - ] && [ "$DUP_NOW" != - ]; then
    STORED=$(( OK_NOW - DUP_NOW )) UNIQUE_DUPS=$(( DUP_U1 - DUP_U0 ))
  else   # metric names changed: fall back on what wrk saw acknowledged (+1: the duplicate)
    STORED=$(( $(python3 -c 'import json,sys; print(sum(r["ok"] for r in map(json.loads, open(sys.argv[1])) if r.get("kind")=="run" and r["server"]=="hookgate" and r["mode"]=="unique"))' "$RESULTS") + 1 ))
    UNIQUE_DUPS=unknown
    [ "$rep" = 1 ] && WARNS+=("hookgate /metrics lacks hookgate_requests_total/hookgate_duplicates_total: stored events estimated from wrk, duplicates not checked")
  fi
  py record "$RESULTS" kind=resources rep="$rep" hg_hwm_kb="$(hwm_kb "$HG")" bare_hwm_kb="$(hwm_kb "$BARE")" \
    write_bytes=$(( IO1 - IO0 )) unique_ok="$(ok_of hookgate unique)" \
    dup_write_bytes=$(( IO2 - IO1 )) dup_ok="$(ok_of hookgate dup)" \
    du_bytes="$(du -sb "$DATA" | cut -f1)" stored_total="$STORED" unique_dups="$UNIQUE_DUPS"
  UNIQUE_DUPS_TOTAL=$(( ${UNIQUE_DUPS_TOTAL:-0} + ${UNIQUE_DUPS/unknown/0} ))
done
ACKED=$(python3 -c 'import json,sys; print(sum(r["ok"] for r in map(json.loads, open(sys.argv[1])) if r.get("kind")=="run" and r["server"]=="hookgate" and r["mode"]=="unique"))' "$RESULTS")
stop "$HG"
stop "$BARE"

# --- memory with many distinct clients (rate limiter buckets) -------------------------------
if [ "$IP_COUNT" -gt 0 ]; then
  log "== hookgate with up to $IP_COUNT distinct client IPs via a trusted proxy, $IP_DURATION"
  fresh_dir "$DATA-ips"
  start hookgate-ips "$IPS_PORT" "$HOOKGATE_BIN" serve --config bench/config-ips.toml; HGI=$STARTED
  py send "$REQ/dup.req" "$IPS_PORT" || die "hookgate (ips) rejected the duplicate request"
  out=$LOGS/ips.log
  wrk -t"$THREADS" -c"$CONNS" -d"$IP_DURATION" --latency --timeout 30s -s bench/signed.lua \
    "http://127.0.0.1:$IPS_PORT/webhooks/demo" -- "$REQ/dup.req" threads="$THREADS" sync="$REQ/sync-ips" xff="$IP_COUNT" >"$out" 2>&1 \
    || die "wrk failed; see $out"
  py record "$RESULTS" kind=ips server=hookgate-ips mode=dup-distinct-ips conns="$CONNS" ip_count="$IP_COUNT" \
    hwm_kb="$(hwm_kb "$HGI")" --wrk "$out"
  stop "$HGI"
fi

final=(kind=final load_end="$(cut -d' ' -f1-3 /proc/loadavg)" stored_total="$STORED" \
  acked_total="$ACKED" unique_dups="${UNIQUE_DUPS_TOTAL:-0}")
i=0
for w in "${WARNS[@]}"; do i=$((i + 1)); final+=("warn_$i=$w"); done
py record "$RESULTS" "${final[@]}"
rc=0
py report "$RESULTS" || rc=$?
exit "$rc"
