#!/usr/bin/env bash
# Creates one virtual environment per peer framework next to this script. They cannot share dashjax's venv:
# tunix pins safetensors<0.8 and an older transformers; trl brings torch. Re-running is cheap (pip skips what is there).
#   bash benchmarks/peers/setup_envs.sh            # both
#   bash benchmarks/peers/setup_envs.sh trl        # one
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
which_envs=("${@:-trl tunix}")
for name in ${which_envs[@]}; do
  venv="$here/.venv-$name"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  case "$name" in
    # torch pinned to the CPU build measured in shared/research/env.md; trl 1.x for generation_batch_size.
    trl) "$venv/bin/pip" install -q "torch==2.13.0" "trl>=1.16,<2" ;;
    # tunix resolves its own jax/flax/transformers; nothing else needed (the tokenizer and weights are local files).
    tunix) "$venv/bin/pip" install -q google-tunix ;;
    *) echo "unknown env $name (use trl or tunix)" >&2; exit 2 ;;
  esac
  echo "== $name: $("$venv/bin/pip" list 2>/dev/null | grep -iE '^(trl|torch|transformers|google-tunix|jax|flax|safetensors|accelerate) ' | tr -s ' ' | paste -sd, -)"
done
