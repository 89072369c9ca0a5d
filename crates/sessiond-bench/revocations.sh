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
#
# Environment: COUNT (500), and lib.sh's.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

count="${COUNT:-500}"
bench_begin revocations sessiond sessiond-bench revocation-latency

start_sessiond A "$work/sessiond-A.log"
a="$addr"
start_sessiond B "$work/sessiond-B.log"
"$bin/revocation-latency" --revoke-on "$a" --watch-on "$addr" --jwks "$ops/.well-known/jwks.json" --count "$count"
