#!/usr/bin/env bash
# Runs N copies of a command on this machine as processes 0..N-1 of one JAX job (coordinator on 127.0.0.1), for
# trying the multi-process path without a cluster. Output lines are prefixed with [process id].
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/local_processes.sh N COMMAND [ARGS...]

Each copy gets DASHJAX_COORDINATOR=127.0.0.1:$DASHJAX_PORT (default: a free port), DASHJAX_NUM_PROCESSES=N,
DASHJAX_PROCESS_ID=i and JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}. If one copy fails the others are stopped.
Add XLA_FLAGS=--xla_force_host_platform_device_count=K for K CPU devices per process.

examples:
  launch/local_processes.sh 2 python -c 'import jax; from dashjax.parallel.distributed import initialize_from_env
initialize_from_env(); print(jax.process_count(), jax.device_count())'
EOF
}

case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] || { usage >&2; exit 2; }
n="$1"; shift
case "$n" in ''|*[!0-9]*|0) echo "local_processes.sh: N must be a positive integer, got '$n'" >&2; exit 2 ;; esac
port="${DASHJAX_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

pids=()
for ((i = 0; i < n; i++)); do
  DASHJAX_COORDINATOR="127.0.0.1:$port" DASHJAX_NUM_PROCESSES="$n" DASHJAX_PROCESS_ID="$i" \
    JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=($!)
done

stop_all() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap 'stop_all; exit 130' INT TERM
# Poll, so that the first failure (in any process) stops the rest instead of leaving them waiting for it.
rc=0 left="$n"
finished=()
while [ "$left" -gt 0 ]; do
  for ((i = 0; i < n; i++)); do
    [ -z "${finished[$i]:-}" ] && ! kill -0 "${pids[$i]}" 2>/dev/null || continue
    code=0
    wait "${pids[$i]}" || code=$?
    finished[$i]=1 left=$((left - 1))
    if [ "$code" != 0 ] && [ "$rc" = 0 ]; then
      rc=$code
      echo "local_processes.sh: process $i exited with status $code; stopping the others" >&2
      stop_all
    fi
  done
  sleep 0.2
done
sleep 0.2  # let the prefixing filters flush
exit "$rc"
