"""Joins dash_vs_grpo.py results of different seeds (run separately) into one aggregate, table and plot.

  python benchmarks/merge_seeds.py docs/benchmarks/dash_vs_grpo_samplers.json docs/benchmarks/dash_vs_grpo_seeds12.json \
      --algos grpo,dash --json docs/benchmarks/dash_vs_grpo_seeds.json

Each input is either a multi-seed JSON (its `runs`) or a single-seed one of the earlier layout (top-level `steps`,
`after`, `before`; its seed is the config's, `settings.seeds` or 0). Only runs with the same settings that matter
(config, steps, P, G, new tokens, micro-batch, learning rate) are joined. Summaries are recomputed from the
per-step metrics, so older files get the newer fields (response length, truncation, sampling share).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import log, write_json  # noqa: E402
from dash_vs_grpo_report import aggregate, fmt_seeds, plot_seeds, ratios_of, summarize  # noqa: E402

SAME = ("config", "steps", "prompts_per_step", "samples_per_prompt", "max_new_tokens", "micro_batch_size",
        "sampling_batch_size", "learning_rate", "filter_threshold", "eval_prompts")


def runs_of(path, algos):
  d = json.load(open(path))
  if "runs" in d:
    raw = d["runs"]
  else:
    raw = [{"seed": (d["settings"].get("seeds") or [0])[0], "before": d["before"], "after": d["after"],
            "steps": d["steps"], "warm_up_s": d.get("warm_up_s"), "compilations": d.get("compilations"),
            "recompiled_during_training": d.get("recompiled_during_training")}]
  out = []
  for r in raw:
    missing = [a for a in algos if a not in r["steps"]]
    if missing:
      raise SystemExit(f"{path}: seed {r['seed']} has no {missing}")
    summaries = [summarize(a, r["steps"][a], r["after"].get(a)) for a in algos]
    out.append(dict(r, steps={a: r["steps"][a] for a in algos}, after={a: r["after"][a] for a in algos},
                    summary=summaries, ratios=ratios_of(summaries), source=path))
  return d["settings"], d["environment"], out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("inputs", nargs="+")
  ap.add_argument("--algos", default="grpo,dash")
  ap.add_argument("--json", required=True)
  ap.add_argument("--png", default=None)
  args = ap.parse_args(argv)
  algos = [a for a in args.algos.split(",") if a]
  args.png = args.png or os.path.splitext(args.json)[0] + ".png"
  runs, settings, envs = [], None, []
  for path in args.inputs:
    s, env, rs = runs_of(path, algos)
    if settings is None:
      settings = dict(s)
    bad = [k for k in SAME if s.get(k) != settings.get(k)]
    if bad:
      raise SystemExit(f"{path}: settings differ from the first input's in {bad}")
    envs.append({"source": path, **env})
    runs += rs
  seeds = [r["seed"] for r in runs]
  if len(set(seeds)) != len(seeds):
    raise SystemExit(f"a seed appears twice: {seeds}")
  runs.sort(key=lambda r: r["seed"])
  settings.update(algos=algos, seeds=sorted(seeds), sources=args.inputs,
                  command=" ".join(["python"] + sys.argv))
  agg = aggregate(runs, algos)
  title = (f"{settings['model']}, P={settings['prompts_per_step']} x G={settings['samples_per_prompt']}, "
           f"{settings['max_new_tokens']} new tokens, {settings['steps']} steps, seeds {sorted(seeds)}")
  plot_seeds(args.png, runs, algos, title)
  write_json(args.json, {"environments": envs, "settings": settings, "runs": runs, "aggregate": agg,
                         "png": args.png})
  log(fmt_seeds(agg))
  log(f"JSON: {args.json}; PNG: {args.png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
