"""Shared by the three drivers, each run in its own venv: so this module uses the standard library only.

The spec (one JSON file, written by compare.py) fixes the work of one optimizer update for every framework:
  model             folder with config.json, model.safetensors and tokenizer files (a Qwen2 model)
  prompts           jsonl with "prompt" (already chat-formatted text, fed verbatim) and "answer" (gold string)
  prompts_per_update P; with G samples each an update covers R = P * G completions
  G, max_new_tokens, micro_batch (rows per backward pass), max_prompt_tokens (padding width where one is needed)
  warmup_updates    updates run first and not timed (compilation, allocator warm-up)
  updates           timed updates
  mode              framework specific (run_trl.py / run_tunix.py / run_dashjax.py list theirs)
  learning_rate, temperature, seed
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time


def contains_gold(completion: str, target) -> float:
  """The reward every framework uses: 1 if the gold string occurs in the completion (cost ~ microseconds)."""
  t = str(target).strip()
  return float(bool(t) and t in completion)


def load_spec(modes: tuple[str, ...], argv=None) -> dict:
  """The spec named on the command line, with its mode checked against the driver's `modes`."""
  argv = sys.argv[1:] if argv is None else argv
  script = os.path.basename(sys.argv[0])
  if len(argv) != 1:
    sys.exit(f"usage: {script} SPEC.json")
  with open(argv[0]) as f:
    spec = json.load(f)
  if spec["mode"] not in modes:
    sys.exit(f"{script}: mode {spec['mode']!r} is not one of {modes}")
  spec["rows_per_update"] = spec["prompts_per_update"] * spec["G"]
  return spec


def dist_version(dist: str) -> str:
  from importlib.metadata import version

  return version(dist)


def run_driver(main, check_logits=None):
  """A driver's entry point: `SPEC.json` runs `main`; `--check-logits MODEL_DIR REF.npz KEY` runs `check_logits`."""
  if check_logits is not None and len(sys.argv) == 5 and sys.argv[1] == "--check-logits":
    check_logits(*sys.argv[2:5])
  else:
    main()


def read_prompts(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def summarize(update_s: list[float], warmup: int) -> dict:
  """Per-update wall times -> summary; the first `warmup` are reported but not in the statistics."""
  timed = update_s[warmup:]
  return {
      "update_s_all": update_s,
      "warmup_s": update_s[:warmup],
      "timed_s": timed,
      "median_s": statistics.median(timed) if timed else None,
      "mean_s": statistics.fmean(timed) if timed else None,
      "min_s": min(timed) if timed else None,
  }


def finish(spec: dict, framework: str, mode: str, update_s: list[float], setup_s: float, versions: dict,
           extra: dict | None = None) -> dict:
  """Prints one RESULT line and writes spec['out'] (if set)."""
  out = {"framework": framework, "mode": mode, "setup_s": setup_s, **summarize(update_s, spec["warmup_updates"]),
         "versions": {"python": platform.python_version(), **versions}, "extra": extra or {},
         "spec": {k: v for k, v in spec.items() if k != "out"}}
  line = {k: out[k] for k in ("framework", "mode", "median_s", "mean_s", "setup_s")}
  print("RESULT " + json.dumps(line), flush=True)
  if spec.get("out"):
    with open(spec["out"], "w") as f:
      json.dump(out, f, indent=1)
  return out


class Clock:
  """Wall-clock marks: `lap()` returns the seconds since the previous mark."""

  def __init__(self):
    self.t = time.perf_counter()

  def lap(self) -> float:
    now = time.perf_counter()
    dt, self.t = now - self.t, now
    return dt
