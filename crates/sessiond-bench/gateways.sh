#!/usr/bin/env bash
# crates/sessiond-bench/gateways.sh: what checking sessions at the edge costs, in one run.
#
#   (a) nginx with sessiond's forward-auth (deploy/gateway/nginx.conf, as tests/gateways.rs runs
#       it) against the same nginx passing the same requests to the same upstream with no auth:
#       wrk, closed loop, the two alternated ROUNDS times; requests/s and p99 of each, and the
#       ratios of their medians. The upstream is nginx itself answering 200, so the figures are
#       the proxy's and sessiond's, not an application's.
#   (b) Envoy's Check against Validate on the same sessiond (sessiond-bench, each slice paired
#       with a slice of the no-op Health/Check).
#
# Builds release, starts a sessiond over a fresh database and Redis key prefix (the shared Postgres
# and Redis on loopback), and an nginx on free loopback ports; stops both and removes their data on
# exit.
#
#   crates/sessiond-bench/gateways.sh
#   ROUNDS=5 WRK_DURATION=10s crates/sessiond-bench/gateways.sh
#
# Environment (defaults): ROUNDS (3), WRK_DURATION (5s), WRK_CONNECTIONS (32), WRK_THREADS (1),
# CONCURRENCY (32) and DURATION (10s) for (b), and lib.sh's. Needs nginx (Debian's nginx-light)
# and wrk.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rounds="${ROUNDS:-3}"
wrk_duration="${WRK_DURATION:-5s}"
wrk_connections="${WRK_CONNECTIONS:-32}"
wrk_threads="${WRK_THREADS:-1}"
concurrency="${CONCURRENCY:-32}"
duration="${DURATION:-10s}"
for tool in nginx wrk; do
  command -v "$tool" >/dev/null || { echo "gateways.sh needs $tool (apt-get install nginx-light wrk)" >&2; exit 1; }
done

bench_begin gateways sessiond sessiond-bench
forward_auth_port="$(free_port)"
start_sessiond main "$work/sessiond.log" SESSIOND_FORWARD_AUTH_ADDR="127.0.0.1:$forward_auth_port"
token="$("$bench" --addr "$addr" --print-token)"

auth_port="$(free_port)"
open_port="$(free_port)"
app_port="$(free_port)"
sed -e "s/sessiond-forward-auth.auth.svc.cluster.local:9191/127.0.0.1:$forward_auth_port/" \
  -e "s/application.default.svc.cluster.local:8080/127.0.0.1:$app_port/" \
  -e "s/listen 8080;/listen 127.0.0.1:$auth_port;/" deploy/gateway/nginx.conf >"$work/site.conf"
cat >"$work/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi;
  scgi_temp_path $work/scgi;
  include $work/site.conf;
  # The same requests to the same upstream, unchecked.
  server {
    listen 127.0.0.1:$open_port;
    location / { proxy_pass http://application; }
  }
  # The upstream both pass requests to.
  server {
    listen 127.0.0.1:$app_port;
    location / { return 200 "ok\n"; }
  }
}
NGINX
nginx -p "$work" -c "$work/nginx.conf" 2>"$work/nginx-stderr.log" &
pids+=("$!")
for _ in $(seq 1 50); do
  curl -fsS -o /dev/null "http://127.0.0.1:$open_port/" 2>/dev/null && break
  sleep 0.1
done
status="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$auth_port/")"
refused="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$auth_port/")"
if [[ "$status" != 200 || "$refused" != 401 ]]; then
  echo "nginx answers $status with the token and $refused without (want 200 and 401)" >&2
  cat "$work/nginx-error.log" >&2
  exit 1
fi
echo "== nginx: forward-auth at 127.0.0.1:$auth_port (200 with the token, 401 without), no auth at 127.0.0.1:$open_port"

# run_wrk PORT [HEADER]: requests/s and p99 (ms) of one wrk run.
run_wrk() {
  local port="$1" result
  shift
  result="$(wrk -t "$wrk_threads" -c "$wrk_connections" -d "$wrk_duration" --latency "$@" "http://127.0.0.1:$port/")"
  if grep -q "Non-2xx" <<<"$result"; then
    echo "wrk met non-2xx answers:" >&2
    echo "$result" >&2
    exit 1
  fi
  local rps p99
  rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$result")"
  p99="$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } print v }' <<<"$result")"
  echo "$rps $p99"
}

echo
echo "== (a) wrk -t $wrk_threads -c $wrk_connections -d $wrk_duration --latency, alternated $rounds times"
printf '%-6s %-22s %12s %10s\n' round arm 'requests/s' 'p99 ms'
open_rps=() auth_rps=() open_p99=() auth_p99=()
for round in $(seq 1 "$rounds"); do
  line="$(run_wrk "$open_port")"
  read -r rps p99 <<<"$line"
  open_rps+=("$rps") open_p99+=("$p99")
  printf '%-6s %-22s %12s %10s\n' "$round" "nginx, no auth" "$rps" "$p99"
  line="$(run_wrk "$auth_port" -H "Authorization: Bearer $token")"
  read -r rps p99 <<<"$line"
  auth_rps+=("$rps") auth_p99+=("$p99")
  printf '%-6s %-22s %12s %10s\n' "$round" "nginx + forward-auth" "$rps" "$p99"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
m_open_rps="$(median "${open_rps[@]}")" m_auth_rps="$(median "${auth_rps[@]}")"
m_open_p99="$(median "${open_p99[@]}")" m_auth_p99="$(median "${auth_p99[@]}")"
echo "median: no auth $m_open_rps/s p99 $m_open_p99 ms; forward-auth $m_auth_rps/s p99 $m_auth_p99 ms"
awk -v a="$m_auth_rps" -v o="$m_open_rps" -v ap="$m_auth_p99" -v op="$m_open_p99" \
  'BEGIN { printf "forward-auth / no auth: throughput %.2f, p99 %.2f\n", a / o, ap / op }'

echo
echo "== (b) sessiond-bench: Check against Validate on the same sessiond"
"$bench" --addr "$addr" --concurrency "$concurrency" --duration "$duration" \
  --scenario validate-warm --scenario check-warm
