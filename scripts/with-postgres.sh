#!/usr/bin/env bash
# Runs a command next to a throw-away PostgreSQL server, then stops and deletes it.
#
#   scripts/with-postgres.sh cargo test --locked
#
# The cluster is made with initdb in a temp dir and listens on 127.0.0.1 on a free port only
# (no Unix socket outside the temp dir). PostgreSQL refuses to run as root, so under root it runs
# as `nobody`. The command sees:
#   HOOKGATE_TEST_PG      postgres://hookgate@127.0.0.1:PORT/postgres (trust auth, superuser)
#   HOOKGATE_TEST_PG_CTL  a script taking `stop`, `crash` (an immediate stop: no checkpoint, the
#                         restart recovers from the WAL) or `start`, for the outage test
# Needs Debian's `postgresql` package (`.ci/run` installs it when missing).
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z $bindir || ! -x $bindir/initdb ]]; then
    echo "with-postgres: no PostgreSQL server found under /usr/lib/postgresql;" \
        "install Debian's postgresql package (apt-get install -y postgresql)" >&2
    exit 1
fi

tmp=$(mktemp -d /tmp/hookgate-pg.XXXXXX)
chmod 755 "$tmp"
as_owner=()
if [[ $(id -u) -eq 0 ]]; then
    chown nobody "$tmp"
    as_owner=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"${as_owner[@]}" "$bindir/initdb" -D "$tmp/data" -U hookgate --auth=trust -E UTF8 \
    --locale=C.UTF-8 --no-sync >"$tmp/initdb.log" 2>&1 || {
    cat "$tmp/initdb.log" >&2
    exit 1
}
cat >"$tmp/ctl" <<CTL
#!/usr/bin/env bash
# stop | crash | start the test cluster
set -euo pipefail
case \$1 in
    stop) ${as_owner[*]} "$bindir/pg_ctl" -D "$tmp/data" -m fast -w stop >/dev/null ;;
    crash) ${as_owner[*]} "$bindir/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null ;;
    start) ${as_owner[*]} "$bindir/pg_ctl" -D "$tmp/data" -w -l "$tmp/server.log" \\
        -o "-c listen_addresses=127.0.0.1 -p $port -k $tmp -c max_connections=400" start >/dev/null ;;
    *) echo "usage: \$0 stop|crash|start" >&2; exit 2 ;;
esac
CTL
chmod 755 "$tmp/ctl"

cleanup() {
    "$tmp/ctl" stop 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
"$tmp/ctl" start || {
    cat "$tmp/server.log" >&2
    exit 1
}

export HOOKGATE_TEST_PG="postgres://hookgate@127.0.0.1:$port/postgres"
export HOOKGATE_TEST_PG_CTL="$tmp/ctl"
echo "with-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
"$@"
