# crates/sessiond-bench/lib.sh: what the benchmark scripts share; sourced, not run.
#
#   bench_begin NAME BINARIES...   a temp folder ($work), keys, a fresh database ($db) and Redis key
#                                  prefix ($prefix) of this run, removed on exit with every server
#                                  started; prints the run's header; builds BINARIES release unless
#                                  BIN_DIR is set ($bin: where they are, $bench: sessiond-bench)
#   free_port                      a free loopback port
#   start_sessiond NAME LOG [VAR=VALUE...]
#                                  a sessiond over $db and $prefix with this run's keys and the rate
#                                  limits off, waited for until SERVING; sets $addr and $ops (its
#                                  gRPC and ops URLs). Later VAR=VALUE override the defaults.
#   stop_last_server               stops the sessiond (or other server) started last
#
# Environment (defaults): PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres), REDIS_HOST
# (127.0.0.1), REDIS_PORT (6379), BIN_DIR (unset: build release into target/release). The scripts
# never stop Postgres or Redis.

redis_host="${REDIS_HOST:-127.0.0.1}"
redis_port="${REDIS_PORT:-6379}"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"

# The workspace root, two levels up: cargo builds there, and target/ is there.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

pids=()

bench_begin() {
  local name="$1"
  shift
  work="$(mktemp -d -t "sessiond-$name.XXXXXX")"
  out="${OUT:-$work}"
  mkdir -p "$out"
  db="sessiond_${name//-/_}_$$"
  prefix="sessiond-$name:$$:"
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM

  echo "== sessiond crates/sessiond-bench/$name.sh on $(hostname), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "== git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  if [[ -z "${BIN_DIR:-}" ]]; then
    echo "== building release"
    local targets=()
    for binary in "$@"; do targets+=(--bin "$binary"); done
    cargo build --release --quiet -p sessiond -p sessiond-bench "${targets[@]}"
  fi
  bin="${BIN_DIR:-target/release}"
  bench="$bin/sessiond-bench"

  openssl genpkey -algorithm ed25519 -out "$work/signing.pem" 2>/dev/null
  head -c 32 /dev/urandom >"$work/refresh.key"
  createdb "$db"
}

bench_cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  dropdb --if-exists --force "$db" 2>/dev/null || true
  redis-cli -h "$redis_host" -p "$redis_port" --scan --pattern "${prefix}*" 2>/dev/null |
    xargs -r -n 500 redis-cli -h "$redis_host" -p "$redis_port" unlink >/dev/null 2>&1 || true
  # $out is kept when it is a folder of its own (OUT).
  rm -rf "$work"
  exit "$status"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The rate limits are off: a load tool creates and rotates far faster than any client, and the
# figures are of the operations, not of their refusals.
start_sessiond() {
  local name="$1" log="$2"
  shift 2
  local port ops_port
  port="$(free_port)"
  ops_port="$(free_port)"
  env SESSIOND_LISTEN_ADDR="127.0.0.1:$port" \
    SESSIOND_OPS_ADDR="127.0.0.1:$ops_port" \
    SESSIOND_DATABASE_URL="postgres://$PGUSER@$PGHOST:$PGPORT/$db" \
    SESSIOND_REDIS_URL="redis://$redis_host:$redis_port" \
    SESSIOND_REDIS_KEY_PREFIX="$prefix" \
    SESSIOND_SIGNING_KEY_FILE="$work/signing.pem" \
    SESSIOND_REFRESH_KEY_FILE="$work/refresh.key" \
    SESSIOND_CREATE_RATE_PER_USER=off SESSIOND_REFRESH_RATE_PER_SESSION=off \
    "$@" "$bin/sessiond" >"$log" 2>&1 &
  pids+=("$!")
  addr="http://127.0.0.1:$port"
  ops="http://127.0.0.1:$ops_port"
  "$bench" --addr "$addr" --ready-only --wait-ready 60s >/dev/null
  echo "== sessiond '$name' serving at $addr${*:+ ($*)}"
}

stop_last_server() {
  local pid="${pids[-1]}"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset 'pids[-1]'
}
