#!/usr/bin/env bash
# Power-loss test: hookgate's store on LazyFS (github.com/dsrhaslab/lazyfs), a FUSE file system
# that keeps every write it has not been asked to fsync in its own cache and drops that cache on
# `lazyfs::clear-cache`. Each round: start the gateway with storage.path (and the file sink)
# inside the mount, send signed unique events from several clients, SIGKILL the gateway
# mid-load, drop every unsynced write (the power cut), unmount and mount again (the reboot).
# After the last round: every event acknowledged with 200 "accepted" must be answered
# "duplicate", and must be in the file sink. See README.md "Power-loss test (LazyFS)".
#
#   scripts/lazyfs-power-loss.sh [LAZYFS_SRC]
#
# LazyFS is not in any package registry: point LAZYFS_SRC (or the first argument) at a checkout
# of its source. It is built once into LAZYFS_BUILD_DIR (default target/lazyfs) with cmake, g++
# and libfuse3-dev; libpcache downloads toml11 v3.7.1 and spdlog v1.10.0 while it builds unless
# LAZYFS_TOML11_SRC / LAZYFS_SPDLOG_SRC point at those sources (offline builds).
#
# Environment: ROUNDS (10), CLIENTS (8 concurrent senders), LOAD_SECS (3; the kill comes at a
# random moment between 0.5 s and LOAD_SECS), DRAIN_SECS (60; time the outbox gets to fill the
# sink after the last restart), HOOKGATE_BIN (default: `cargo build --release` and
# target/release/hookgate; the binary is copied, so a rebuild during the run does not change
# it), LAZYFS_CACHE_SIZE ("1gb"), KEEP_WORK=1 (keep the temp dir and its logs), NO_FSYNC=1 (the
# negative control: the gateway runs with fsync, fdatasync and sync_file_range turned into
# no-ops by an LD_PRELOAD shim built with cc, and the test must then report lost events).
# Exit status: 0 when nothing was lost; 1 when something was, or the gateway did not come back
# after a power cut; 2 when the test could not run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLIENT_PY="$REPO/scripts/power-loss-client.py"
LAZYFS_SRC=${LAZYFS_SRC:-${1:-}}
ROUNDS=${ROUNDS:-10}
CLIENTS=${CLIENTS:-8}
LOAD_SECS=${LOAD_SECS:-3}
DRAIN_SECS=${DRAIN_SECS:-60}
LAZYFS_BUILD_DIR=${LAZYFS_BUILD_DIR:-$REPO/target/lazyfs}
LAZYFS_CACHE_SIZE=${LAZYFS_CACHE_SIZE:-1gb}

log() { printf '[power-loss] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 2
}

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "CLIENTS must be a positive integer"
[[ $LOAD_SECS =~ ^[1-9][0-9]*$ ]] || die "LOAD_SECS must be a positive integer (seconds)"
[[ -n $LAZYFS_SRC ]] || die "set LAZYFS_SRC (or pass it as the first argument) to a LazyFS source tree"
[[ -d $LAZYFS_SRC/lazyfs && -d $LAZYFS_SRC/libs/libpcache ]] ||
    die "$LAZYFS_SRC does not look like a LazyFS source tree (no lazyfs/ and libs/libpcache/)"
LAZYFS_SRC=$(cd "$LAZYFS_SRC" && pwd)
for tool in python3 fusermount3 mountpoint; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -e /dev/fuse ]] || die "/dev/fuse is missing (FUSE is not available here)"

# --- 1. LazyFS, built once -------------------------------------------------------------------

build_lazyfs() {
    local out=$LAZYFS_BUILD_DIR stamp=$LAZYFS_BUILD_DIR/.built-from
    if [[ -x $out/lazyfs/build/lazyfs && -f $stamp && $(cat "$stamp") == "$LAZYFS_SRC" ]]; then
        return
    fi
    for tool in cmake g++; do
        command -v "$tool" >/dev/null || die "$tool is required to build LazyFS"
    done
    [[ -f /usr/include/fuse3/fuse.h ]] || die "libfuse3-dev is required to build LazyFS"
    log "building LazyFS from $LAZYFS_SRC into $out"
    # A copy, so the source tree stays untouched; built where it stays (the binary's rpath
    # names libpcache's build directory).
    rm -rf "$out"
    mkdir -p "$out"
    cp -a "$LAZYFS_SRC/lazyfs" "$LAZYFS_SRC/libs" "$out/"
    rm -rf "$out/lazyfs/build" "$out/libs/libpcache/build"
    mkdir -p "$out/libs/libpcache/build/_deps" "$out/lazyfs/build"
    local pcache_args=()
    if [[ -n ${LAZYFS_TOML11_SRC:-} ]]; then
        pcache_args+=("-DFETCHCONTENT_SOURCE_DIR_TOML=$(cd "$LAZYFS_TOML11_SRC" && pwd)")
    fi
    if [[ -n ${LAZYFS_SPDLOG_SRC:-} ]]; then
        # lazyfs/CMakeLists.txt includes spdlog from libpcache's build/_deps/spdlog-src.
        cp -a "$LAZYFS_SPDLOG_SRC" "$out/libs/libpcache/build/_deps/spdlog-src"
        pcache_args+=("-DFETCHCONTENT_SOURCE_DIR_SPDLOG=$out/libs/libpcache/build/_deps/spdlog-src")
    fi
    local jobs
    jobs=$(nproc 2>/dev/null || echo 2)
    (cd "$out/libs/libpcache/build" && cmake .. ${pcache_args[@]+"${pcache_args[@]}"} &&
        cmake --build . -j "$jobs") >"$out/build-libpcache.log" 2>&1 ||
        die "libpcache build failed; see $out/build-libpcache.log"
    (cd "$out/lazyfs/build" && cmake -DLAZYFS_BUILD_TESTS=OFF .. && cmake --build . -j "$jobs") \
        >"$out/build-lazyfs.log" 2>&1 || die "lazyfs build failed; see $out/build-lazyfs.log"
    printf '%s' "$LAZYFS_SRC" >"$stamp"
}

if [[ -x $LAZYFS_SRC/lazyfs/build/lazyfs ]]; then
    LAZYFS_BIN=$LAZYFS_SRC/lazyfs/build/lazyfs # already built by its own build.sh
else
    build_lazyfs
    LAZYFS_BIN=$LAZYFS_BUILD_DIR/lazyfs/build/lazyfs
fi

# --- the gateway binary ----------------------------------------------------------------------

if [[ -z ${HOOKGATE_BIN:-} ]]; then
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --locked --quiet) || die "cargo build --release failed"
    HOOKGATE_BIN=$REPO/target/release/hookgate
fi
[[ -x $HOOKGATE_BIN ]] || die "no gateway binary at $HOOKGATE_BIN"

# --- temp dir, processes and cleanup ---------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hookgate-power-loss.XXXXXX")
MNT=$WORK/mnt     # LazyFS mount: the gateway's "disk"
ROOT=$WORK/root   # what is really on disk below LazyFS
FIFO=$WORK/faults.fifo
DONE_FIFO=$WORK/faults-done.fifo
mkdir -p "$MNT" "$ROOT"
cp "$HOOKGATE_BIN" "$WORK/hookgate"
BIN=$WORK/hookgate
LAZYFS_PID=""
GW_PID=""
CLIENT_PID=""
STATUS=2

is_running() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# Stops a process this script started, by PID: SIGKILL, then reap it.
stop_pid() {
    local pid=$1
    if is_running "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    [[ -n $pid ]] && wait "$pid" 2>/dev/null || true
}

unmount_lazyfs() {
    if mountpoint -q "$MNT"; then
        local i
        for i in 1 2 3 4 5 6 7 8 9 10; do
            fusermount3 -u "$MNT" 2>/dev/null && break
            sleep 0.5
        done
        if mountpoint -q "$MNT"; then
            fusermount3 -uz "$MNT" 2>/dev/null || true # lazy: detach even if still busy
        fi
    fi
    if [[ -n $LAZYFS_PID ]]; then
        # LazyFS aborts when unmounted ("terminate called without an active exception");
        # the block's stderr swallows bash's "Aborted" job notice.
        {
            local i
            for i in $(seq 1 100); do
                is_running "$LAZYFS_PID" || break
                sleep 0.1
            done
            stop_pid "$LAZYFS_PID"
        } 2>/dev/null
        LAZYFS_PID=""
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$CLIENT_PID"
    stop_pid "$GW_PID"
    unmount_lazyfs
    exec 8<&-
    if [[ ${KEEP_WORK:-0} == 1 || $STATUS != 0 ]]; then
        log "logs and data kept in $WORK"
    elif ! mountpoint -q "$MNT"; then
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

ulimit -c 0 # LazyFS aborts on unmount ("terminate called without an active exception")

GW_PRELOAD=()
if [[ ${NO_FSYNC:-0} == 1 ]]; then
    command -v cc >/dev/null || die "NO_FSYNC=1 needs a C compiler (cc)"
    cat >"$WORK/nosync.c" <<'EOF'
#define _GNU_SOURCE
#include <fcntl.h>
int fsync(int fd) { (void)fd; return 0; }
int fdatasync(int fd) { (void)fd; return 0; }
int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
    (void)fd; (void)off; (void)n; (void)flags; return 0;
}
EOF
    cc -shared -fPIC -O2 -o "$WORK/nosync.so" "$WORK/nosync.c" || die "building the no-sync shim failed"
    GW_PRELOAD=("LD_PRELOAD=$WORK/nosync.so")
    log "NO_FSYNC=1: negative control, the gateway never syncs; this run must report losses"
fi

# Both FIFOs exist before LazyFS starts; the completion FIFO is held open read-write here, so
# LazyFS's blocking open of it returns at once and `read` below waits for "finished::...".
mkfifo "$FIFO" "$DONE_FIFO"
exec 8<>"$DONE_FIFO"
cat >"$WORK/lazyfs.toml" <<EOF
[faults]
fifo_path="$FIFO"
fifo_path_completed="$DONE_FIFO"
[cache]
apply_eviction=false
[cache.simple]
custom_size="$LAZYFS_CACHE_SIZE"
blocks_per_page=1
[filesystem]
log_all_operations=false
logfile=""
EOF

mount_lazyfs() {
    "$LAZYFS_BIN" "$MNT" --config-path "$WORK/lazyfs.toml" \
        -o modules=subdir -o subdir="$ROOT" -f >>"$WORK/lazyfs.out" 2>&1 &
    LAZYFS_PID=$!
    local i
    for i in $(seq 1 300); do
        mountpoint -q "$MNT" && return
        is_running "$LAZYFS_PID" || die "LazyFS exited before mounting; see $WORK/lazyfs.out"
        sleep 0.1
    done
    die "LazyFS did not mount $MNT within 30 s"
}

# Sends one command to LazyFS's FIFO. Commands must not share a read(), so each waits to be
# handled: clear-cache for its completion line, the report for its last log line.
lazyfs_command() {
    printf '%s\n' "$1" >"$FIFO"
}

# Bytes LazyFS holds that were never fsynced (from its unsynced-data report).
unsynced_bytes() {
    local before after line
    before=$(grep -c 'report: total number of bytes un-fsynced\|report: all data blocks are synced' \
        "$WORK/lazyfs.out" || true)
    lazyfs_command "lazyfs::unsynced-data-report"
    for _ in $(seq 1 300); do
        after=$(grep -c 'report: total number of bytes un-fsynced\|report: all data blocks are synced' \
            "$WORK/lazyfs.out" || true)
        ((after > before)) && break
        sleep 0.1
    done
    line=$(grep 'report: total number of bytes un-fsynced\|report: all data blocks are synced' \
        "$WORK/lazyfs.out" | tail -n1 || true)
    if [[ $line =~ un-fsynced:\ ([0-9]+) ]]; then
        echo "${BASH_REMATCH[1]}"
    elif [[ $line == *"all data blocks are synced"* ]]; then
        echo 0
    else
        echo "?"
    fi
}

power_cut() {
    local line
    lazyfs_command "lazyfs::clear-cache"
    read -r -t 60 -u 8 line || die "LazyFS did not confirm clear-cache within 60 s"
    [[ $line == "finished::clear-cache" ]] || die "unexpected LazyFS answer: $line"
}

SECRET="power-loss-$RANDOM$RANDOM$RANDOM"
cat >"$WORK/hookgate.toml" <<EOF
providers_dir = "$REPO/providers"

[server]
bind = "127.0.0.1:0"

[storage]
path = "$MNT/store"

[log]
format = "json"
level = "info"

[providers.demo]
kind = "generic"
secrets = ["$SECRET"]

# Inside the mount: the power cut hits the sink's file too, so an envelope survives only if the
# sink fsynced it, and one the sink lost must be delivered again from the store's outbox.
[[sinks]]
name = "audit"
kind = "file"
path = "$MNT/envelopes.jsonl"
EOF

# The gateway does not come back after a power cut: a durability failure (exit 1), not a
# test that could not run. The first start is before any power cut: that one is exit 2.
gateway_down() {
    local why=$1 gwlog=$2
    ((GW_STARTS > 1)) || die "$why; see $gwlog"
    tail -n 5 "$gwlog" >&2 || true
    log "$why after power cut $((GW_STARTS - 1)); see $gwlog"
    echo "power-loss: rounds=$((GW_STARTS - 1)) acknowledged=$(sort -u "$WORK/acked-all.txt" | wc -l)" \
        "lost=unknown (the gateway did not come back after power cut $((GW_STARTS - 1)))"
    STATUS=1
    exit 1
}

GW_STARTS=0
start_gateway() {
    GW_STARTS=$((GW_STARTS + 1))
    local gwlog=$WORK/gateway-$GW_STARTS.log
    # The gateway's environment must not override the config (HOOKGATE__...).
    env $(compgen -e | grep '^HOOKGATE' | sed 's/^/-u /') -u RUST_LOG ${GW_PRELOAD[@]+"${GW_PRELOAD[@]}"} \
        "$BIN" serve --config "$WORK/hookgate.toml" >/dev/null 2>"$gwlog" &
    GW_PID=$!
    PORT=""
    for _ in $(seq 1 600); do
        is_running "$GW_PID" || gateway_down "the gateway exited during start $GW_STARTS" "$gwlog"
        PORT=$(grep -m1 '"Listening\."' "$gwlog" 2>/dev/null | grep -o '"port":[0-9]*' | cut -d: -f2 || true)
        [[ -n $PORT ]] && break
        sleep 0.1
    done
    [[ -n $PORT ]] || gateway_down "the gateway did not listen within 60 s" "$gwlog"
    python3 "$CLIENT_PY" ready --port "$PORT" --seconds 60 ||
        gateway_down "the gateway was not ready within 60 s" "$gwlog"
}

kill_gateway() {
    kill -KILL "$GW_PID"
    wait "$GW_PID" 2>/dev/null || true
    GW_PID=""
}

: >"$WORK/acked-all.txt"
: >"$WORK/lost-all.txt"
: >"$WORK/unanswered-all.txt"

# Resends the IDs in $1 and adds the lost/unanswered ones to the running lists; $3 says what
# they are, for the log.
verify_ids() {
    local ids=$1 tag=$2 what=$3
    python3 "$CLIENT_PY" verify --port "$PORT" --secret "$SECRET" --workers "$CLIENTS" \
        --ids "$ids" --lost "$WORK/lost-$tag.txt" --unanswered "$WORK/unanswered-$tag.txt" \
        >"$WORK/verify-$tag.json" || die "the verify client failed ($what)"
    cat "$WORK/lost-$tag.txt" >>"$WORK/lost-all.txt"
    cat "$WORK/unanswered-$tag.txt" >>"$WORK/unanswered-all.txt"
    log "$what resent: $(cat "$WORK/verify-$tag.json")"
}

log "LazyFS: $LAZYFS_BIN"
log "gateway: $HOOKGATE_BIN (sha256 $(sha256sum "$BIN" | cut -c1-12)), data in $MNT/store"
log "work dir: $WORK"
RUN="pl$(date +%s)"
UNEXPECTED_DUPLICATES=0
mount_lazyfs

for round in $(seq 1 "$ROUNDS"); do
    start_gateway
    if ((round > 1)); then
        verify_ids "$WORK/acked-$((round - 1)).txt" "r$((round - 1))" \
            "round $round: after the restart, round $((round - 1))'s acknowledged events"
    fi
    python3 "$CLIENT_PY" load --port "$PORT" --secret "$SECRET" --workers "$CLIENTS" \
        --prefix "$RUN-r$round" --seconds $((LOAD_SECS + 30)) --acked "$WORK/acked-$round.txt" \
        >"$WORK/load-$round.json" &
    CLIENT_PID=$!
    kill_ms=$((500 + RANDOM % (LOAD_SECS * 1000 - 499)))
    sleep "$((kill_ms / 1000)).$(printf '%03d' $((kill_ms % 1000)))"
    kill_gateway # SIGKILL, mid-load
    wait "$CLIENT_PID" || die "the load client failed in round $round"
    CLIENT_PID=""
    cat "$WORK/acked-$round.txt" >>"$WORK/acked-all.txt"
    dup=$(grep -o '"unexpected_duplicate": [0-9]*' "$WORK/load-$round.json" | grep -o '[0-9]*$')
    UNEXPECTED_DUPLICATES=$((UNEXPECTED_DUPLICATES + dup))
    dropped=$(unsynced_bytes)
    power_cut # every write not fsynced is gone
    unmount_lazyfs
    mount_lazyfs # power back on: fresh kernel page cache, fresh LazyFS cache
    log "round $round: killed after ${kill_ms} ms, acknowledged $(wc -l <"$WORK/acked-$round.txt")," \
        "unsynced bytes dropped ${dropped}; load $(cat "$WORK/load-$round.json")"
done

# --- after the last power cut ----------------------------------------------------------------

start_gateway
sort -u "$WORK/acked-all.txt" >"$WORK/acked-sorted.txt"
ACKED=$(wc -l <"$WORK/acked-sorted.txt")

# Every acknowledged envelope reaches the sink (the outbox delivers what the power cut took
# from the sink's file). Checked before any resend, which would store a lost event again.
deadline=$((SECONDS + DRAIN_SECS))
while :; do
    python3 "$CLIENT_PY" sink "$MNT/envelopes.jsonl" 2>"$WORK/sink-torn.txt" | sort -u >"$WORK/sink-ids.txt"
    UNDELIVERED=$(comm -23 "$WORK/acked-sorted.txt" "$WORK/sink-ids.txt" | wc -l)
    ((UNDELIVERED == 0 || SECONDS >= deadline)) && break
    sleep 1
done
comm -23 "$WORK/acked-sorted.txt" "$WORK/sink-ids.txt" >"$WORK/undelivered.txt"
# Envelopes the sink kept but that were never acknowledged (the kill came between commit and
# answer): the sink only gets durable events, so these must be duplicates too.
comm -13 "$WORK/acked-sorted.txt" "$WORK/sink-ids.txt" >"$WORK/sink-only.txt"

verify_ids "$WORK/acked-sorted.txt" final "final: all acknowledged events"
verify_ids "$WORK/sink-only.txt" sink-only "final: events in the sink that were never acknowledged"
# The last verify's lost IDs are sink-only ones: phantoms, not acknowledged events.
cp "$WORK/lost-sink-only.txt" "$WORK/phantom.txt"
PHANTOM=$(wc -l <"$WORK/phantom.txt")
LOST=$(sort -u "$WORK/lost-all.txt" | comm -12 - "$WORK/acked-sorted.txt" | wc -l)
UNANSWERED=$(sort -u "$WORK/unanswered-all.txt" | wc -l)
kill -TERM "$GW_PID"
wait "$GW_PID" 2>/dev/null || true
GW_PID=""
[[ -s $WORK/sink-torn.txt ]] && log "sink: $(cat "$WORK/sink-torn.txt")"

echo "power-loss: rounds=$ROUNDS acknowledged=$ACKED lost=$LOST" \
    "(undelivered=$UNDELIVERED phantom=$PHANTOM unanswered=$UNANSWERED" \
    "unexpected_duplicates=$UNEXPECTED_DUPLICATES)"
for f in lost-all undelivered phantom unanswered-all; do
    if [[ -s $WORK/$f.txt ]]; then
        log "$f (first 10):"
        sort -u "$WORK/$f.txt" >"$WORK/$f.sorted"
        head -n 10 "$WORK/$f.sorted" >&2
    fi
done
if ((LOST + UNDELIVERED + PHANTOM + UNANSWERED + UNEXPECTED_DUPLICATES > 0)); then
    STATUS=1
    exit 1
fi
STATUS=0
