#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target of hookgate for a bounded time each.
#
#   bash fuzz/run.sh                      # every target, 60 s each
#   FUZZ_SECONDS=300 bash fuzz/run.sh     # longer
#   FUZZ_TARGETS="pipeline normaliser" bash fuzz/run.sh
#
# What works on this machine (Rust stable only):
#   cargo install cargo-fuzz              # once; 0.13.2 was used
#   cargo fuzz build -O -a -s none        # -s none: no sanitizer, so no nightly -Z flags;
#                                         # -a: debug assertions + overflow checks stay on
#   cargo fuzz run <target> -O -a -s none <corpus dirs> -- -max_total_time=N
#   (this script runs the built binary, fuzz/target/<host>/release/<target>, the same way)
# Stable rustc 1.95 builds this as is: with `-s none` cargo-fuzz passes only stable -C flags
# (sancov passes, trace-compares, --cfg fuzzing), so RUSTC_BOOTSTRAP is NOT needed. Where a
# nightly toolchain exists, FUZZ_SANITIZER=address FUZZ_TOOLCHAIN=nightly enables ASan.
#
# The build uses its own target dir (fuzz/target) so it never contends with builds of
# /work/main/target. New inputs found go to fuzz/corpus-work/<target> (ignored by git); the
# committed seeds in fuzz/corpus/<target> are read only (regenerate: python3 fuzz/seed_corpus.py).
# A crashing input is kept in fuzz/artifacts/<target>/; its log in fuzz/target/logs/<target>.log.
# Exit status: 0 when no target crashed, 1 otherwise (2 when a build fails).
set -uo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUZZ_DIR")"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-none}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:++$FUZZ_TOOLCHAIN}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FUZZ_DIR/target}"
LOGS="$CARGO_TARGET_DIR/logs"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: installing it (cargo install cargo-fuzz)" >&2
  cargo install cargo-fuzz || exit 2
fi

cd "$ROOT" || exit 2
TARGETS="${FUZZ_TARGETS:-$(cargo $TOOLCHAIN fuzz list)}"
FLAGS=(-O -a -s "$SANITIZER")

echo "== building: $(echo $TARGETS)"
for target in $TARGETS; do
  cargo $TOOLCHAIN fuzz build "${FLAGS[@]}" "$target" || { echo "build of $target failed" >&2; exit 2; }
done

BIN_DIR="$CARGO_TARGET_DIR/$(rustc $TOOLCHAIN -vV | sed -n 's/^host: //p')/release"
mkdir -p "$LOGS"
failed=()
summary=()
for target in $TARGETS; do
  work="$FUZZ_DIR/corpus-work/$target"
  seeds="$FUZZ_DIR/corpus/$target"
  mkdir -p "$work" "$seeds" "$FUZZ_DIR/artifacts/$target"
  log="$LOGS/$target.log"
  echo "== $target: ${SECONDS_EACH}s (log: $log)"
  # -timeout: an input taking over 10 s is reported as a hang; -rss_limit_mb: as an OOM.
  extra=()
  [ -f "$FUZZ_DIR/$target.dict" ] && extra+=(-dict="$FUZZ_DIR/$target.dict")
  started=$SECONDS
  # The binary built above is run directly: `cargo fuzz run` would first rebuild whenever src/
  # changed meanwhile (another engineer's edits), which is time outside -max_total_time.
  "$BIN_DIR/$target" -artifact_prefix="$FUZZ_DIR/artifacts/$target/" \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${extra[@]}" "$work" "$seeds" >"$log" 2>&1
  status=$?
  took=$((SECONDS - started))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    summary+=("$target: CRASH (exit $status) after ${runs:-?} runs, ${took}s wall; see $log")
    grep -m1 -A30 -E "panicked at|ERROR: libFuzzer|==ERROR" "$log" | sed 's/^/    /'
    ls "$FUZZ_DIR/artifacts/$target" | sed 's/^/    artifact: /'
  else
    summary+=("$target: ok, ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-cov ?}, ${took}s wall")
  fi
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "crashed: ${failed[*]}"
  exit 1
fi
