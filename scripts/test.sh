#!/usr/bin/env bash
# The whole test suite (the README's test command): `cargo test` next to a throw-away
# PostgreSQL server (scripts/with-postgres.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-postgres.sh cargo test --locked "$@"
