#!/usr/bin/env bash
# crates/sessiond-bench/revocations.sh: revocation propagation between two replicas.
#
# Builds release, starts two sessiond replicas (A and B) over one fresh Postgres database and one
# Redis key prefix (the shared Postgres and Redis on loopback; nothing else is touched), and runs
# `revocation-latency`: COUNT revocations on A, each timed from A's answer to (a) its event at a
# WatchRevocations subscriber of B and (b) the first refusal by a sessiond-verifier following B.
#
#   crates/sessiond-bench/revocations.sh            # COUNT=500
#   COUNT=2000 BIN_DIR=target/release crates/sessiond-bench/revocations.sh
set -euo pipefail

count="${COUNT:-500}"
redis_host="${REDIS_HOST:-127.0.0.1}"
redis_port="${REDIS_PORT:-6379}"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
work="$(mktemp -d -t sessiond-revocations.XXXXXX)"
db="sessiond_revocations_$$"
prefix="sessiond-revocations:$$:"
pids=()

cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  dropdb --if-exists --force "$db" 2>/dev/null || true
  redis-cli -h "$redis_host" -p "$redis_port" --scan --pattern "${prefix}*" 2>/dev/null |
    xargs -r -n 500 redis-cli -h "$redis_host" -p "$redis_port" unlink >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== sessiond crates/sessiond-bench/revocations.sh on $(hostname), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "== git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
if [[ -z "${BIN_DIR:-}" ]]; then
  echo "== building release"
  cargo build --release --quiet -p sessiond --bin sessiond -p sessiond-bench --bin sessiond-bench --bin revocation-latency
fi
bin="${BIN_DIR:-target/release}"

openssl genpkey -algorithm ed25519 -out "$work/signing.pem" 2>/dev/null
head -c 32 /dev/urandom >"$work/refresh.key"
createdb "$db"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_replica NAME: starts a replica over the shared database and key prefix; sets $addr, $ops.
start_replica() {
  local name="$1" port ops_port
  port="$(free_port)"
  ops_port="$(free_port)"
  env SESSIOND_LISTEN_ADDR="127.0.0.1:$port" \
    SESSIOND_OPS_ADDR="127.0.0.1:$ops_port" \
    SESSIOND_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$db" \
    SESSIOND_REDIS_URL="redis://$redis_host:$redis_port" \
    SESSIOND_REDIS_KEY_PREFIX="$prefix" \
    SESSIOND_SIGNING_KEY_FILE="$work/signing.pem" \
    SESSIOND_REFRESH_KEY_FILE="$work/refresh.key" \
    SESSIOND_CREATE_RATE_PER_USER=off \
    "$bin/sessiond" >"$work/sessiond-$name.log" 2>&1 &
  pids+=("$!")
  addr="http://127.0.0.1:$port"
  ops="http://127.0.0.1:$ops_port"
  "$bin/sessiond-bench" --addr "$addr" --ready-only --wait-ready 60s >/dev/null
  echo "== replica $name serving at $addr"
}

start_replica A
a="$addr"
start_replica B
"$bin/revocation-latency" --revoke-on "$a" --watch-on "$addr" --jwks "$ops/.well-known/jwks.json" --count "$count"
