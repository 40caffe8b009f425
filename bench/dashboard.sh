#!/usr/bin/env bash
# How fast the dashboard's pages are on a large embedded store: loads EVENTS unique events
# (pre-signed by bench/wrkbench.py, sent by wrk; one sink delivers, one refuses a tenth of them,
# which become dead letters), then times each page with curl, REPS times, and prints the median
# per page in a Markdown table. Loopback only; the data dir is recreated.
#
#   bench/dashboard.sh                        # 1,000,000 events
#   EVENTS=100000 bench/dashboard.sh          # quicker
#   SKIP_LOAD=1 bench/dashboard.sh            # time the pages of the store loaded last time
#
# Environment (defaults): EVENTS=1000000 REPS=5 HOOKGATE_BIN=target/release/hookgate
#   DATA=/tmp/hookgate-dashboard-bench PORT=18088
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-1000000}
REPS=${REPS:-5}
BIN=${HOOKGATE_BIN:-target/release/hookgate}
DATA=${DATA:-/tmp/hookgate-dashboard-bench}
PORT=${PORT:-18088}
TOKEN=dashboard-bench-token
THREADS=2

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install -y wrk)" >&2; exit 1; }
[[ -x $BIN ]] || cargo build --release --bin hookgate >&2

if [[ -z ${SKIP_LOAD:-} ]]; then
  rm -rf "$DATA"
fi
mkdir -p "$DATA"
cat >"$DATA/config.toml" <<EOF
providers_dir = "$PWD/providers"
[server]
bind = "127.0.0.1:$PORT"
[storage]
path = "$DATA/store"
[log]
level = "warn"
[admin]
token = "$TOKEN"
[providers.demo]
kind = "generic"
secrets = ["hookgate-demo-secret-do-not-use-in-production"]
[[sinks]]
name = "audit"
kind = "file"
path = "$DATA/envelopes.jsonl"
[[sinks]]
name = "refuses"
kind = "http"
url = "http://127.0.0.1:9/never"
where = { "event_id" = "*7" }          # a tenth of the events: dead letters
retry = { max_attempts = 1 }
EOF

started_ms=$(date +%s%3N)
"$BIN" serve --config "$DATA/config.toml" >>"$DATA/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1200); do
  curl -fs "http://127.0.0.1:$PORT/ready" >/dev/null && break
  sleep 0.1
done
echo "== ready after $(( $(date +%s%3N) - started_ms )) ms" >&2

if [[ -z ${SKIP_LOAD:-} ]]; then
  per_thread=$(( (EVENTS + THREADS - 1) / THREADS ))
  echo "== signing $EVENTS requests" >&2
  python3 bench/wrkbench.py gen --out "$DATA/load" --threads "$THREADS" --lines "$per_thread" \
    --id-prefix "dash$(date +%s)" >&2
  # wrk cycles through the records: stop once every id was sent (the count of 2xx).
  echo "== loading (wrk)" >&2
  started=$(date +%s)
  wrk -t"$THREADS" -c64 -d3600s --timeout 30s -s bench/signed.lua \
    "http://127.0.0.1:$PORT/webhooks/demo" -- "$DATA/load-t%d.req" threads="$THREADS" \
    >"$DATA/wrk.log" 2>&1 &
  WRK=$!
  while :; do
    ok=$(curl -fs "http://127.0.0.1:$PORT/metrics" |
      awk '/^hookgate_requests_total\{.*outcome="ok"/ {s += $2} END {print s + 0}')
    (( ok >= EVENTS )) && break
    kill -0 $WRK 2>/dev/null || { echo "wrk stopped early; see $DATA/wrk.log" >&2; exit 1; }
    sleep 2
  done
  kill $WRK; wait $WRK 2>/dev/null || true
  rm -f "$DATA"/load-t*.req
  echo "== loaded $ok acknowledged in $(( $(date +%s) - started )) s; store: $(du -sh "$DATA/store" | cut -f1)" >&2
fi

# A session: sign in with the token; the cookie jar keeps it.
JAR=$DATA/cookies
curl -fs -c "$JAR" -o /dev/null -d "token=$TOKEN" "http://127.0.0.1:$PORT/ui/login"
first=$(curl -fs "http://127.0.0.1:$PORT/admin/events?limit=1" -H "Authorization: Bearer $TOKEN" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["events"][0]["id"])')
older=$(curl -fs "http://127.0.0.1:$PORT/admin/events?limit=50" -H "Authorization: Bearer $TOKEN" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["next"])')

pages=(
  "/ui/events"
  "/ui/events?before=$older"
  "/ui/events?instance=demo"
  "/ui/events?type=post.*"
  "/ui/events?status=dead"
  "/ui/events?status=delivered"
  "/ui/events?status=unprocessable"
  "/ui/events?type=nomatch.*"
  "/ui/events?status=duplicate"
  "/ui/events?since=2020-01-01T00:00"
  "/ui/events?q=$first"
  "/ui/events/$first"
  "/ui/dead-letters"
  "/ui/dead-letters?sink=refuses"
  "/ui/instances"
  "/ui/rejected"
)
echo "| page | median ms (of $REPS) | status |"
echo "|---|---|---|"
for page in "${pages[@]}"; do
  times=()
  code=0
  for _ in $(seq "$REPS"); do
    read -r code t < <(curl -s -b "$JAR" -o /dev/null -w '%{http_code} %{time_total}\n' \
      "http://127.0.0.1:$PORT$page")
    times+=("$t")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]*1000}')
  shown=${page//$first/<id>}
  shown=${shown//$older/<cursor>}
  echo "| \`$shown\` | $median | $code |"
done
