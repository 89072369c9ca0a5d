#!/usr/bin/env bash
# Measures sessiond against its targets, on this machine, in one run:
#
#   warm Validate / no-op Health/Check             >= 0.8
#   Validate without the local tier / Redis GET    >= 0.5
#   CreateSession / pgbench single-row INSERT      >= 0.5    (alternated, like the warm ratio)
#   Validate p99 at half its peak throughput       <= 1 ms   (next to the no-op's p99 at that rate)
#   Validate p99 with Redis dead                   <  5 ms   (open loop at REDIS_DEAD_RATE)
#   cold Validate p99 over 10M sessions            <  2 ms   (when seed.sh's database exists)
#
# The warm ratio pairs each slice of Validate with a slice of the no-op (sessiond-bench --rounds),
# so both see the same machine. The table also prints the no-op over Redis GET: no Validate over
# gRPC can beat the no-op, so that is the ceiling of the Redis ratio on this machine.
#
# It builds release, starts its own sessiond servers on free loopback ports against a fresh
# database sessiond_compare_<pid> on the local Postgres and the local Redis under a unique key
# prefix, with generated keys; runs sessiond-bench, redis-benchmark and pgbench at the same
# concurrency; prints every raw result and then the ratios. On exit it stops its servers, drops its
# database and deletes its Redis keys. It never stops Postgres or Redis.
#
#   crates/sessiond-bench/compare.sh
#   CONCURRENCY=64 DURATION=20s crates/sessiond-bench/compare.sh
#
# Environment (defaults): CONCURRENCY (32), CONNECTIONS (2), DURATION (10s), WARMUP (2s),
# SESSIONS (1000, for validate-spread), PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres),
# REDIS_HOST (127.0.0.1), REDIS_PORT (6379), REDIS_REQUESTS (200000, for redis-benchmark),
# COLD_DB (sessiond_bench_10m: made by crates/sessiond-bench/seed.sh; the cold step is skipped if it
# has no rows), COLD_SAMPLE (50000), COLD_RATE (500, open loop), REDIS_DEAD_RATE (1000),
# CREATE_PAIRS (3) and CREATE_PAIR_SECS (5: CreateSession and pgbench alternated, for their ratio),
# BIN_DIR (unset: build release and use target/release), OUT (a temp dir: where the JSON and logs
# are kept).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

concurrency="${CONCURRENCY:-32}"
connections="${CONNECTIONS:-2}"
duration="${DURATION:-10s}"
warmup="${WARMUP:-2s}"
sessions="${SESSIONS:-1000}"
redis_requests="${REDIS_REQUESTS:-200000}"
cold_db="${COLD_DB:-sessiond_bench_10m}"
cold_sample="${COLD_SAMPLE:-50000}"
cold_rate="${COLD_RATE:-500}"
redis_dead_rate="${REDIS_DEAD_RATE:-1000}"
pairs="${CREATE_PAIRS:-3}"
pair_secs="${CREATE_PAIR_SECS:-5}"

bench_begin compare sessiond sessiond-bench
echo "== concurrency=$concurrency connections=$connections duration=$duration warmup=$warmup"

# start_server NAME DATABASE [VAR=VALUE...]: a sessiond over DATABASE with a Redis key prefix of
# its own (lib.sh's start_sessiond). The per-user session limit stays at its default (100): it
# decides how a create is written.
start_server() {
  local name="$1" database="$2"
  shift 2
  start_sessiond "$name" "$out/sessiond-$name.log" \
    SESSIOND_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$database" \
    SESSIOND_REDIS_KEY_PREFIX="$prefix$name:" "$@"
}

row() { # row FILE JQ-FILTER-ON-NAME FIELD
  jq -r --arg field "$3" "[.results[] | select(.failed == null) | select(.name | $2)][0][\$field] // empty" "$1"
}

common=(--concurrency "$concurrency" --connections "$connections" --duration "$duration" --warmup "$warmup")

echo
echo "== (c) sessiond-bench: every scenario"
start_server main "$db"
"$bench" --addr "$addr" "${common[@]}" --sessions "$sessions" --scenario all --json "$out/all.json"
echo
echo "== (c) sessiond-bench: Validate p99 at half its peak (open loop, timed from the scheduled send)"
"$bench" --addr "$addr" "${common[@]}" --scenario validate-warm --rate-of-peak 0.5 --json "$out/half-peak.json"
stop_last_server

echo
echo "== (c) sessiond-bench: Validate without the in-process tier"
start_server no-local "$db" SESSIOND_LOCAL_CACHE=off
"$bench" --addr "$addr" "${common[@]}" --sessions "$sessions" --scenario validate-no-local-cache --json "$out/no-local.json"
stop_last_server

cold_rows="$(psql -X -d "$cold_db" -Atc 'SELECT reltuples::bigint FROM pg_class WHERE relname = '"'session'" 2>/dev/null || true)"
if [[ -n "$cold_rows" && "$cold_rows" -gt 0 ]]; then
  echo
  echo "== (c) sessiond-bench: cold Validate over $cold_db (~$cold_rows sessions; each token used once)"
  start_server cold "$cold_db"
  "$bench" --addr "$addr" "${common[@]}" --scenario validate-cold \
    --database-url "postgres://$PGUSER@$PGHOST:$PGPORT/$cold_db" --signing-key-file "$work/signing.pem" \
    --cold-sample "$cold_sample" --json "$out/cold.json"
  stop_last_server
  # A fresh server (own Redis prefix, empty in-process tier): no session of the closed-loop run is
  # cached for this one.
  start_server cold-open "$cold_db"
  "$bench" --addr "$addr" "${common[@]}" --scenario validate-cold --rate "$cold_rate" \
    --database-url "postgres://$PGUSER@$PGHOST:$PGPORT/$cold_db" --signing-key-file "$work/signing.pem" \
    --cold-sample "$cold_sample" --json "$out/cold-open.json"
  stop_last_server
else
  echo
  echo "== cold Validate skipped: no seeded database $cold_db (run crates/sessiond-bench/seed.sh)"
fi

echo
echo "== (c) sessiond-bench: Validate with Redis dead (nothing listens on its port), open loop at $redis_dead_rate req/s"
start_server redis-dead "$db" SESSIOND_REDIS_URL="redis://127.0.0.1:$(free_port)"
"$bench" --addr "$addr" "${common[@]}" --sessions "$sessions" --scenario validate-spread --rate "$redis_dead_rate" \
  --json "$out/redis-dead.json"
curl -fsS "$ops/metrics" >"$out/redis-dead.metrics"
redis_dead_errors="$(awk '/^sessiond_redis_errors_total/ { s += $2 } END { print s + 0 }' "$out/redis-dead.metrics")"
redis_dead_validates="$(awk '/^sessiond_rpc_requests_total\{.*method="Validate"/ { s += $2 } END { print s + 0 }' "$out/redis-dead.metrics")"
echo "Redis errors (timeouts, refused connections) while Redis was dead: $redis_dead_errors for $redis_dead_validates Validate calls"
stop_last_server

echo
echo "== (d) redis-benchmark GET, $concurrency clients"
redis_line="$(redis-benchmark -h "$redis_host" -p "$redis_port" -t get -c "$concurrency" -n "$redis_requests" -q | tr '\r' '\n' | grep -E '^GET' | tail -1)"
echo "$redis_line"
redis_rps="$(sed -nE 's/^GET: ([0-9.]+) requests per second.*/\1/p' <<<"$redis_line")"

echo
echo "== (d) CreateSession alternated with pgbench (one session-shaped INSERT per transaction), $concurrency clients, $pairs pairs of $pair_secs s"
cat >"$work/insert.sql" <<'SQL'
\set uid random(1, 1000000000000)
INSERT INTO session (session_id, user_id, device_id, device_name, user_agent, ip_address, metadata,
                     created_at, last_seen_at, expires_at, idle_expires_at)
VALUES (encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
          PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
          FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid,
        'pgbench-' || :uid, 'device-1', 'bench device', 'pgbench/1.0', '203.0.113.7', '{"app": "bench"}',
        now(), now(), now() + interval '30 days', now() + interval '7 days');
SQL
# Like the warm ratio's paired slices: the VM's speed drifts, so each CreateSession slice is
# followed by a pgbench slice on the same Postgres and database, and the means are compared.
start_server create "$db"
create_rates=() pg_rates=()
for pair in $(seq 1 "$pairs"); do
  "$bench" --addr "$addr" --concurrency "$concurrency" --connections "$connections" --duration "${pair_secs}s" \
    --warmup 1s --no-baseline --rounds 1 --scenario create --json "$out/create-$pair.json" | grep -E '^create'
  create_rates+=("$(row "$out/create-$pair.json" '. == "create"' throughput)")
  pgbench -n -f "$work/insert.sql" -c "$concurrency" -j 2 -T "$pair_secs" "$db" >"$out/pgbench-$pair.txt" 2>&1
  pg_rates+=("$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$out/pgbench-$pair.txt" | head -1)")
  echo "pgbench: tps = ${pg_rates[-1]}"
done
stop_last_server
mean() { printf '%s\n' "$@" | awk '$1 != "" { s += $1; n++ } END { if (n) printf "%.1f", s / n }'; }
create_paired="$(mean "${create_rates[@]}")"
pg_tps="$(mean "${pg_rates[@]}")"

# --- (e) the ratios -------------------------------------------------------------------------------
noop="$(jq -r '.noop_throughput // empty' "$out/all.json")"
warm="$(row "$out/all.json" '. == "validate-warm"' throughput)"
warm_noop="$(row "$out/all.json" '. == "validate-warm"' noop_throughput)"
no_local="$(row "$out/no-local.json" 'startswith("validate-no-local-cache")' throughput)"
peak="$(row "$out/half-peak.json" '. == "validate-warm"' throughput)"
half_rate="$(row "$out/half-peak.json" 'startswith("validate-warm @")' throughput)"
half_p99="$(row "$out/half-peak.json" 'startswith("validate-warm @")' p99_us)"
half_noop_p99="$(row "$out/half-peak.json" 'startswith("health-noop @")' p99_us)"
dead_p99="$(row "$out/redis-dead.json" 'startswith("validate-spread")' p99_us)"
cold_p99=""
if [[ -f "$out/cold.json" ]]; then
  cold_p99="$(row "$out/cold.json" '. == "validate-cold"' p99_us)"
  cold_closed_rate="$(row "$out/cold.json" '. == "validate-cold"' throughput)"
  cold_open_p99="$(row "$out/cold-open.json" '. == "validate-cold"' p99_us)"
fi

verdict() { # verdict VALUE OP TARGET
  awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
    if (v == "") { print "n/a"; exit }
    ok = (op == ">=") ? (v >= t) : (op == "<") ? (v < t) : (v <= t); print ok ? "met" : "NOT met" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print ""; else printf "%.3f", a / b }'; }
ms() { awk -v us="$1" 'BEGIN { if (us != "") printf "%.3f", us / 1000 }'; }
line() { printf '%-46s %-44s %-9s %-8s %s\n' "$@"; }

r_warm="$(ratio "$warm" "$warm_noop")"
r_redis="$(ratio "$no_local" "$redis_rps")"
r_noop_redis="$(ratio "$noop" "$redis_rps")"
r_pg="$(ratio "$create_paired" "$pg_tps")"
half_ms="$(ms "$half_p99")"
dead_ms="$(ms "$dead_p99")"

echo
echo "== (e) targets (concurrency $concurrency; every figure from this run)"
line "target" "measured" "value" "goal" "verdict"
line "warm Validate / no-op Health/Check" \
  "$(printf '%.0f / %.0f req/s (paired slices)' "${warm:-0}" "${warm_noop:-0}")" "$r_warm" ">= 0.8" "$(verdict "$r_warm" '>=' 0.8)"
line "Validate without local tier / Redis GET" \
  "$(printf '%.0f / %.0f req/s' "${no_local:-0}" "${redis_rps:-0}")" "$r_redis" ">= 0.5" "$(verdict "$r_redis" '>=' 0.5)"
line "  ceiling: no-op Health/Check / Redis GET" \
  "$(printf '%.0f / %.0f req/s' "${noop:-0}" "${redis_rps:-0}")" "$r_noop_redis" "-" "(reported)"
line "CreateSession / pgbench INSERT" \
  "$(printf '%.0f req/s / %.0f tps (alternated)' "${create_paired:-0}" "${pg_tps:-0}")" "$r_pg" ">= 0.5" "$(verdict "$r_pg" '>=' 0.5)"
line "Validate p99 at half peak (ms)" \
  "$(printf 'at %.0f req/s (peak %.0f); no-op p99 %s' "${half_rate:-0}" "${peak:-0}" "$(ms "$half_noop_p99")")" "$half_ms" "<= 1 ms" "$(verdict "$half_ms" '<=' 1)"
line "Validate p99 with Redis dead (ms)" \
  "$(printf 'at %s req/s; %s Redis errors / %s calls' "$redis_dead_rate" "${redis_dead_errors:-?}" "${redis_dead_validates:-?}")" "$dead_ms" "< 5 ms" "$(verdict "$dead_ms" '<' 5)"
if [[ -n "$cold_p99" ]]; then
  cold_open_ms="$(ms "$cold_open_p99")"
  line "cold Validate p99 (ms), $cold_db" \
    "$(printf 'open loop at %s req/s' "$cold_rate")" "$cold_open_ms" "< 2 ms" "$(verdict "$cold_open_ms" '<' 2)"
  line "  the same, closed loop (ms)" \
    "$(printf 'c=%s, %.0f req/s' "$concurrency" "${cold_closed_rate:-0}")" "$(ms "$cold_p99")" "-" "(reported)"
fi
echo
echo "== note: a sessiond older than SESSIOND_LOCAL_CACHE ignores it: its 'without local tier' server"
echo "   is then an ordinary one."
if [[ "$out" != "$work" ]]; then echo "== JSON and server logs kept in $out"; fi
