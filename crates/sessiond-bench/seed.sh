#!/usr/bin/env bash
# Creates (if needed), migrates and seeds a sessiond database with COUNT sessions for the cold
# Validate benchmark, and prints how long the seeding took.
#
#   crates/sessiond-bench/seed.sh [DBNAME] [COUNT]        # defaults: sessiond_bench_10m 10000000
#
# The database is left in place for reuse: seeding 10M rows takes minutes. Drop it with
#   dropdb -h 127.0.0.1 -U postgres sessiond_bench_10m
# Refuses to seed a database that already holds sessions (drop it first to reseed), and refuses the
# shared `postgres` database.
#
# Environment: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres), BATCH (1000000), USERS (2000000),
# BIN_DIR (unset: build release and use target/release).
set -euo pipefail

db="${1:-sessiond_bench_10m}"
count="${2:-10000000}"
batch="${BATCH:-1000000}"
users="${USERS:-2000000}"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"

if [[ "$db" == postgres || "$db" == template* ]]; then
  echo "seed.sh: refusing to seed the shared database '$db'; pick a dedicated one" >&2
  exit 2
fi

# The workspace root, two levels up: cargo builds there, and target/ is there.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
# BIN_DIR: use the sessiond and sessiond-bench already built there instead of building release.
if [[ -z "${BIN_DIR:-}" ]]; then
  cargo build --release --quiet -p sessiond --bin sessiond -p sessiond-bench --bin sessiond-bench
fi
bin="${BIN_DIR:-target/release}"

if ! psql -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  createdb "$db"
  echo "created database $db"
fi

# sessiond applies its own migrations: start one on the database until it says SERVING.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp -t sessiond-seed.XXXXXX.log)"
SESSIOND_LISTEN_ADDR="127.0.0.1:$port" \
  SESSIOND_DATABASE_URL="postgres://${PGUSER}@${PGHOST}:${PGPORT}/${db}" \
  SESSIOND_REDIS_KEY_PREFIX="sessiond-seed:$$:" \
  "$bin/sessiond" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
if ! "$bin/sessiond-bench" --addr "http://127.0.0.1:$port" --ready-only --wait-ready 60s >/dev/null; then
  cat "$log" >&2
  exit 1
fi
kill "$server"
wait "$server" 2>/dev/null || true

existing="$(psql -d "$db" -Atc "SELECT count(*) FROM session")"
if [[ "$existing" != 0 ]]; then
  echo "seed.sh: $db already holds $existing sessions; reuse it, or drop it to reseed" >&2
  exit 0
fi

echo "seeding $count sessions ($users users, batches of $batch) into $db"
start=$(date +%s.%N)
psql -X -q -d "$db" -v count="$count" -v batch="$batch" -v users="$users" -f crates/sessiond-bench/seed.sql
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v n="$count" 'BEGIN { printf "seeded %d sessions in %.1f s\n", n, e - s }'
