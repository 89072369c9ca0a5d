#!/usr/bin/env bash
# crates/sessiond-bench/capacity.sh: the per-operation costs the capacity model
# (docs/capacity.md) is derived from, measured on one release sessiond over a fresh database and
# Redis key prefix (the shared Postgres and Redis on loopback).
#
# For each scenario, closed-loop runs of sessiond-bench between readings of:
#   - Postgres's WAL position (pg_current_wal_lsn): WAL bytes per call;
#   - CPU time (utime + stime, /proc) of sessiond and of every postgres process, and Redis's
#     used_cpu_user + used_cpu_sys (INFO cpu): CPU microseconds per call of each;
# each scenario run twice, for DURATION and for 200 ms, and the difference divided by the
# difference in calls, so that what the scenario prepares (sessions, users) cancels out. Then,
# after the runs, the bytes one session takes in Postgres (tables and indexes, over the rows
# the runs left) and in Redis (MEMORY USAGE of its cached copy).
#
# CPU from /proc moves with what else the machine does: run it on a quiet machine, and read the
# sessiond figures beside the instruction counts of callgrind.sh. WAL bytes include the full-page
# images written after each checkpoint, so they fall as a run grows longer than the checkpoint
# interval and rise on a table too large for the buffer cache.
#
#   crates/sessiond-bench/capacity.sh
#   DURATION=20s CONCURRENCY=16 crates/sessiond-bench/capacity.sh
#
# Environment: DURATION (10s), CONCURRENCY (16), SESSIONS (20000: created before the runs, so the
# tables hold enough rows to measure), and lib.sh's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

duration="${DURATION:-10s}"
concurrency="${CONCURRENCY:-16}"
sessions="${SESSIONS:-20000}"
ticks="$(getconf CLK_TCK)"

bench_begin capacity sessiond sessiond-bench
start_sessiond main "$work/sessiond.log"
sessiond_pid="${pids[-1]}"

# cpu_ticks PID...: their utime + stime, in clock ticks.
cpu_ticks() {
  local total=0 pid fields
  for pid in "$@"; do
    if fields="$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null)"; then
      total=$((total + ${fields% *} + ${fields#* }))
    fi
  done
  echo "$total"
}
postgres_pids() { pgrep -x postgres || pgrep -f '^postgres' || true; }
redis_cpu_seconds() {
  redis-cli -h "$redis_host" -p "$redis_port" info cpu |
    awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.6f\n", s }'
}
wal_lsn() { psql -X -Atd "$db" -c 'SELECT pg_current_wal_lsn() - $$0/0$$::pg_lsn'; }

# costs SCENARIO DURATION [ARGS...]: one run, as "calls WAL sessiond-ticks postgres-ticks redis-µs".
costs() {
  local scenario="$1" run_for="$2"
  shift 2
  local wal0 s0 p0 r0 wal1 s1 p1 r1 calls
  wal0="$(wal_lsn)" s0="$(cpu_ticks "$sessiond_pid")" p0="$(cpu_ticks $(postgres_pids))" r0="$(redis_cpu_seconds)"
  "$bench" --addr "$addr" --concurrency "$concurrency" --duration "$run_for" --warmup 0s \
    --no-baseline --rounds 1 --scenario "$scenario" "$@" --json "$work/run.json" >"$work/run.txt"
  wal1="$(wal_lsn)" s1="$(cpu_ticks "$sessiond_pid")" p1="$(cpu_ticks $(postgres_pids))" r1="$(redis_cpu_seconds)"
  calls="$(jq '[.results[] | select(.failed == null) | .requests] | add' "$work/run.json")"
  awk -v c="$calls" -v w=$((wal1 - wal0)) -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v r0="$r0" -v r1="$r1" \
    'BEGIN { printf "%d %d %d %d %.1f\n", c, w, s, p, (r1 - r0) * 1e6 }'
}

# measure SCENARIO [ARGS...]: the costs per call of a run of DURATION, less those of a run of
# 200 ms: what the scenario prepares (its sessions, its users) is paid in both and cancels out.
measure() {
  local scenario="$1"
  shift
  local short long
  short="$(costs "$scenario" 200ms "$@")"
  long="$(costs "$scenario" "$duration" "$@")"
  awk -v name="$scenario" -v hz="$ticks" -v short="$short" -v long="$long" 'BEGIN {
    split(short, a, " "); split(long, b, " "); calls = b[1] - a[1]
    printf "%-16s %9d %12.0f %14.1f %15.1f %12.1f\n", name, calls, (b[2] - a[2]) / calls,
      (b[3] - a[3]) / hz * 1e6 / calls, (b[4] - a[4]) / hz * 1e6 / calls, (b[5] - a[5]) / calls
  }'
}

echo "== creating $sessions sessions first, so the tables hold rows to measure"
"$bench" --addr "$addr" --concurrency "$concurrency" --duration 1s --warmup 0s --no-baseline --rounds 1 \
  --scenario validate-spread --sessions "$sessions" >/dev/null
psql -X -qd "$db" -c 'CHECKPOINT'

echo
echo "== per call (closed loop, concurrency $concurrency, $duration each; CPU from /proc, Redis from INFO cpu)"
printf '%-16s %9s %12s %14s %15s %12s\n' scenario calls 'WAL bytes' 'sessiond µs' 'postgres µs' 'redis µs'
measure validate-warm
measure validate-spread --sessions "$sessions"
measure create
measure refresh
measure revoke-user --sessions-per-user 10

echo
echo "== Postgres bytes per session (tables with their indexes and TOAST, over the rows left)"
psql -X -d "$db" -c "
  WITH rows AS (SELECT count(*) AS sessions FROM session)
  SELECT relname AS relation, n_live_tup AS rows_in_it,
         pg_size_pretty(pg_total_relation_size(relid)) AS total,
         round(pg_total_relation_size(relid)::numeric / NULLIF((SELECT sessions FROM rows), 0)) AS bytes_per_session
  FROM pg_stat_user_tables WHERE relname IN ('session', 'refresh_token', 'revocation_event', 'user_not_before')
  ORDER BY pg_total_relation_size(relid) DESC"
psql -X -d "$db" -c "
  SELECT indexrelname AS index, pg_size_pretty(pg_relation_size(indexrelid)) AS size,
         round(pg_relation_size(indexrelid)::numeric / NULLIF((SELECT count(*) FROM session), 0)) AS bytes_per_session
  FROM pg_stat_user_indexes WHERE relname = 'session' ORDER BY pg_relation_size(indexrelid) DESC"

echo
echo "== Redis bytes per cached session (MEMORY USAGE, over up to 2000 of this run's keys)"
redis-cli -h "$redis_host" -p "$redis_port" --scan --pattern "${prefix}{u:*:s:*" | awk 'NR <= 2000' >"$work/keys"
while read -r key; do
  redis-cli -h "$redis_host" -p "$redis_port" memory usage "$key" samples 0
done <"$work/keys" | awk '$1 ~ /^[0-9]+$/ { n++; s += $1; if ($1 > max) max = $1 }
  END { if (n) printf "%d keys: mean %.0f bytes, max %d bytes\n", n, s / n, max; else print "no keys found" }'
