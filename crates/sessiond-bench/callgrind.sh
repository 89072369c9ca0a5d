#!/usr/bin/env bash
# Server CPU per call, in instructions: runs the sessiond in BIN_DIR under callgrind against a
# fresh database and the local Redis, warms it up, zeroes the counters, drives SCENARIO for 20 s
# with sessiond-bench, and prints the server's instructions per call. Unlike wall-clock figures,
# the count does not move with what else the machine is doing, so two builds compare exactly.
#
#   crates/sessiond-bench/callgrind.sh /tmp/b/old create
#   crates/sessiond-bench/callgrind.sh target/release validate-warm
#
# Needs valgrind (callgrind_control, callgrind_annotate), openssl, createdb/dropdb. Loopback only.
set -euo pipefail
bin=$1
scenario=${2:-create}
work=$(mktemp -d)
db="sessiond_callgrind_$$"
port=$((20000 + RANDOM % 10000))
server=""
cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    dropdb -h 127.0.0.1 -U postgres --if-exists "$db"
    rm -rf "$work"
}
trap cleanup EXIT
openssl genpkey -algorithm ed25519 -out "$work/signing.pem" 2>/dev/null
head -c 32 /dev/urandom >"$work/refresh.key"
createdb -h 127.0.0.1 -U postgres "$db"
# Generous timeouts: under valgrind the server runs some 50 times slower.
SESSIOND_LISTEN_ADDR="127.0.0.1:$port" SESSIOND_OPS_ADDR="127.0.0.1:$((port + 1))" \
SESSIOND_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" \
SESSIOND_REDIS_URL=redis://127.0.0.1:6379 SESSIOND_REDIS_KEY_PREFIX="callgrind:$$:" \
SESSIOND_SIGNING_KEY_FILE="$work/signing.pem" SESSIOND_REFRESH_KEY_FILE="$work/refresh.key" \
SESSIOND_DATABASE_TIMEOUT=30s SESSIOND_REDIS_TIMEOUT=2s SESSIOND_REQUEST_TIMEOUT=60s RUST_LOG=warn \
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin/sessiond" >"$work/log" 2>&1 &
server=$!
bench="$bin/sessiond-bench"
"$bench" --addr "http://127.0.0.1:$port" --ready-only --wait-ready 120s >/dev/null
"$bench" --addr "http://127.0.0.1:$port" --scenario "$scenario" --concurrency 4 --duration 5s \
    --warmup 1s --no-baseline >/dev/null
callgrind_control -z "$server" >/dev/null
"$bench" --addr "http://127.0.0.1:$port" --scenario "$scenario" --concurrency 4 --duration 20s \
    --warmup 0s --no-baseline --json "$work/run.json" >/dev/null
callgrind_control -d "$server" >/dev/null
sleep 1
calls=$(python3 -c "import json; print(sum(r['requests'] for r in json.load(open('$work/run.json'))['results']))")
instructions=$(callgrind_annotate "$work/cg.out.1" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | tr -d ',' | awk '{print $1}')
echo "$bin $scenario: $calls calls, $instructions instructions, $((instructions / calls)) per call"
