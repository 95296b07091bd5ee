#!/usr/bin/env bash
# Starts one dashjax-train process of a multi-process job (GPU/CPU clusters, no TPU discovery). Run it once per
# process, e.g. `srun launch/multihost.sh ...`, with the same arguments everywhere. See launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/multihost.sh CONFIG WORKDIR [--config.KEY=VALUE ...] [--auto_resume]

Sets DASHJAX_COORDINATOR, DASHJAX_NUM_PROCESSES and DASHJAX_PROCESS_ID, then execs
  dashjax-train --config=CONFIG --workdir=WORKDIR ARGS...
which calls jax.distributed.initialize() with them. Where they come from, first match wins:
  1. already set in the environment (all three);
  2. SLURM, under srun: SLURM_PROCID, SLURM_NTASKS, and the first host of SLURM_STEP_NODELIST (or
     SLURM_JOB_NODELIST, expanded with `scontrol show hostnames`) as coordinator, port $DASHJAX_PORT
     (default 12000 + SLURM_JOB_ID % 20000, the same on every task).
Every process must see the same WORKDIR (a shared filesystem or a gs:// bucket) and the same CONFIG and arguments.

environment:
  DASHJAX_PORT    coordinator port under SLURM
  DASHJAX_TRAIN   the command to exec (default: dashjax-train)
  DRY_RUN=1       print the variables and the command instead of running it
EOF
}

die() { echo "multihost.sh: $*" >&2; exit 2; }

case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] || { usage >&2; die "CONFIG and WORKDIR are required"; }
config="$1" workdir="$2"; shift 2

set_vars=0
for v in DASHJAX_COORDINATOR DASHJAX_NUM_PROCESSES DASHJAX_PROCESS_ID; do [ -n "${!v:-}" ] && set_vars=$((set_vars + 1)); done
if [ "$set_vars" = 3 ]; then
  source="environment"
elif [ "$set_vars" != 0 ]; then
  die "set all of DASHJAX_COORDINATOR (host:port), DASHJAX_NUM_PROCESSES and DASHJAX_PROCESS_ID, or none (SLURM)"
elif [ -n "${SLURM_PROCID:-}" ] && [ -n "${SLURM_NTASKS:-}" ]; then
  source="SLURM"
  nodelist="${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}"
  [ -n "$nodelist" ] || die "SLURM_PROCID is set but SLURM_STEP_NODELIST / SLURM_JOB_NODELIST are not"
  command -v scontrol >/dev/null || die "scontrol is not on PATH: cannot expand the node list '$nodelist'"
  head_node="$(scontrol show hostnames "$nodelist" | head -n 1)"
  [ -n "$head_node" ] || die "scontrol show hostnames '$nodelist' returned nothing"
  export DASHJAX_COORDINATOR="$head_node:${DASHJAX_PORT:-$((12000 + ${SLURM_JOB_ID:-0} % 20000))}"
  export DASHJAX_NUM_PROCESSES="$SLURM_NTASKS" DASHJAX_PROCESS_ID="$SLURM_PROCID"
else
  usage >&2
  die "not under SLURM (no SLURM_PROCID/SLURM_NTASKS): set DASHJAX_COORDINATOR=host:port, DASHJAX_NUM_PROCESSES and
  DASHJAX_PROCESS_ID for this process (DASHJAX_COORDINATOR is the address of process 0, the same for all)"
fi

case "$DASHJAX_NUM_PROCESSES$DASHJAX_PROCESS_ID" in *[!0-9]*) die "process count/id must be integers" ;; esac
[ "$DASHJAX_PROCESS_ID" -lt "$DASHJAX_NUM_PROCESSES" ] ||
  die "DASHJAX_PROCESS_ID=$DASHJAX_PROCESS_ID must be below DASHJAX_NUM_PROCESSES=$DASHJAX_NUM_PROCESSES"
case "$DASHJAX_COORDINATOR" in *:[0-9]*) ;; *) die "DASHJAX_COORDINATOR=$DASHJAX_COORDINATOR must be host:port" ;; esac

read -r -a train <<<"${DASHJAX_TRAIN:-dashjax-train}"
cmd=("${train[@]}" "--config=$config" "--workdir=$workdir" "$@")
echo "multihost.sh ($source): process $DASHJAX_PROCESS_ID of $DASHJAX_NUM_PROCESSES on $(hostname)," \
  "coordinator $DASHJAX_COORDINATOR" >&2
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '+ DASHJAX_COORDINATOR=%s DASHJAX_NUM_PROCESSES=%s DASHJAX_PROCESS_ID=%s' \
    "$DASHJAX_COORDINATOR" "$DASHJAX_NUM_PROCESSES" "$DASHJAX_PROCESS_ID"
  printf ' %q' "${cmd[@]}"
  printf '\n'
  exit 0
fi
export DASHJAX_COORDINATOR DASHJAX_NUM_PROCESSES DASHJAX_PROCESS_ID
exec "${cmd[@]}"
