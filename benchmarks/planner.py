"""The planner's choice against a measured grid: real training updates of the main job at each (sampler rows,
micro-batch), on this machine.

  python benchmarks/planner.py [--config configs/smollm2_arith.py] [--steps 3] [--kept-fraction K] [--json PATH]
  python benchmarks/planner.py --grid-from PATH      # plan again against a stored grid (its measurements reused)

For each pair of the grid a Trainer runs `--steps` updates (the first untimed: it compiles); time per update is the
mean of the rest (sample + reward + update). The planner (`dashjax.train.plan`, measured on local devices) then
plans the same config with both sizes `auto`; the table gives each pair's measured time against the grid's best and
the planner's choice. Done when the choice is within 10% of the best. DASH backprops only its kept groups: the
planner plans as `dashjax-train` does at start-up, not knowing how many it will keep (each number of kept groups
equally likely). From the same probe it also chooses as if told the kept fraction the main job's DASH runs had
(`docs/benchmarks/dash_vs_grpo_seeds.json`, mean over steps and seeds, as a user would read it from a run's
metrics.jsonl) and as if nothing were filtered (1, the upper bound); both are in the table and the JSON.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, environment, fresh_copy, load_config, log, table, write_json  # noqa: E402

GRID_S = (8, 16, 32)
GRID_M = (2, 4, 8, 16)


def measure(config, loaded, s: int, m: int, steps: int, out: str) -> dict:
  from flax import nnx

  from dashjax.train.trainer import Trainer

  graphdef, state, tokenizer = loaded
  c = copy.deepcopy(config)
  c.sampling.batch_size, c.train.micro_batch_size = s, m
  c.train.num_steps, c.train.checkpoint_every = steps, 0
  c.eval.before = c.eval.after = False
  c.eval.every = 0
  trainer = Trainer(c, os.path.join(out, f"s{s}_m{m}"), model_and_tokenizer=(nnx.merge(graphdef, fresh_copy(state)),
                                                                             tokenizer))
  try:
    per = []
    for _ in range(steps):
      per.append(trainer.train_step())
  finally:
    trainer.close()
  timed = per[1:]
  mean = lambda k: sum(x[k] for x in timed) / len(timed)  # noqa: E731
  return {"sampling.batch_size": s, "train.micro_batch_size": m, "update_s": mean("step_s"),
          "sample_s": mean("sample_s"), "learn_s": mean("update_s"), "first_step_s": per[0]["step_s"],
          "kept_fraction": mean("kept_fraction"), "micro_steps": mean("micro_steps")}


def recorded_kept_fraction() -> float:
  import json

  d = json.load(open(os.path.join(ROOT, "docs", "benchmarks", "dash_vs_grpo_seeds.json")))
  kept = [s["kept_fraction"] for r in d["runs"] for s in r["steps"]["dash"]]
  return sum(kept) / len(kept)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=os.path.join(ROOT, "configs", "smollm2_arith.py"))
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--kept-fraction", type=float, default=None, help="default: unknown, as dashjax-train plans")
  ap.add_argument("--grid-from", default=None, help="a planner.py JSON whose grid measurements are reused")
  ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "planner.json"))
  args = ap.parse_args(argv)
  env = environment()
  config = load_config(args.config)
  from flax import nnx

  from dashjax.models.loading import load_model
  from dashjax.train import plan as size_plan

  model, tokenizer = load_model(config.model.source, dtype=config.model.dtype)
  graphdef, state = nnx.split(model)
  loaded = (graphdef, state, tokenizer)

  t0 = time.perf_counter()
  auto = copy.deepcopy(config)
  auto.sampling.batch_size = auto.train.micro_batch_size = "auto"
  kept = args.kept_fraction  # None: unknown, as a run starts
  report = size_plan.plan(auto, progress=lambda msg: log(f"planner: {msg}"), kept_fraction=kept)
  plan_s = time.perf_counter() - t0
  log(size_plan.format_table(report))
  choice = (report["choice"]["sampling.batch_size"], report["choice"]["train.micro_batch_size"])
  # The same probe's choice under other kept fractions (no new measurement).
  import jax

  pairs = size_plan.allowed(auto, len(jax.devices()))
  sides = [size_plan.Side(**report["sides"][n]) for n in ("sampler", "learner")]
  told = {"recorded": recorded_kept_fraction(), "none filtered": 1.0}
  other = {}
  for name, q in told.items():
    _, best_q = size_plan.choose(auto, pairs, *sides, report["apply_s"], report["memory_per_chip_bytes"],
                                 report["margin"], report["source"], kept_fraction=q)
    other[name] = {"kept_fraction": q, "choice": (best_q["sampling.batch_size"], best_q["train.micro_batch_size"])}
  grid = [(s, m) for s in GRID_S for m in GRID_M]
  for pair in [choice] + [o["choice"] for o in other.values()]:
    if pair not in grid:
      grid.append(pair)
  out = tempfile.mkdtemp(prefix="planner_grid_")
  rows = []
  if args.grid_from:
    import json

    rows = json.load(open(args.grid_from))["grid"]
    done = {(r["sampling.batch_size"], r["train.micro_batch_size"]) for r in rows}
    grid = [p for p in grid if p not in done]
  for s, m in grid:
    r = measure(config, loaded, s, m, args.steps, out)
    log(f"grid s={s:3d} m={m:3d}: {r['update_s']:.2f} s per update (sample {r['sample_s']:.2f}, learn "
        f"{r['learn_s']:.2f}, kept {r['kept_fraction']:.2f})")
    rows.append(r)
  best = min(rows, key=lambda r: r["update_s"])
  chosen = next(r for r in rows if (r["sampling.batch_size"], r["train.micro_batch_size"]) == choice)
  planned = {(r["sampling.batch_size"], r["train.micro_batch_size"]): r["update_s"] for r in report["candidates"]}
  measured = {(r["sampling.batch_size"], r["train.micro_batch_size"]): r["update_s"] for r in rows}
  for o in other.values():
    o["over_best"] = measured[o["choice"]] / best["update_s"]
  result = {"environment": env, "config": args.config, "steps": args.steps, "plan_s": plan_s, "plan": report,
            "kept_fraction_told": kept, "grid_from": args.grid_from, "other_kept_fractions": other,
            "grid": rows, "best": best, "choice": chosen, "choice_over_best": chosen["update_s"] / best["update_s"]}
  write_json(args.json, result)
  head = ["sampler rows", "micro-batch", "measured s/update", "x best", "planner's estimate s", ""]
  body = [[str(r["sampling.batch_size"]), str(r["train.micro_batch_size"]), f"{r['update_s']:.2f}",
           f"{r['update_s'] / best['update_s']:.2f}",
           f"{planned.get((r['sampling.batch_size'], r['train.micro_batch_size']), float('nan')):.2f}",
           "planner's choice" if r is chosen else ("best" if r is best else "")] for r in rows]
  log(table(head, body))
  told_as = "unknown" if kept is None else f"{kept:.2f}"
  log(f"planner's choice {choice} (kept fraction {told_as}): {result['choice_over_best']:.3f} x the grid's best "
      f"({best['update_s']:.2f} s); planning took {plan_s:.0f} s. JSON: {args.json}")
  for name, o in other.items():
    log(f"  told kept fraction {o['kept_fraction']:.2f} ({name}): {o['choice']}, {o['over_best']:.3f} x the best")
  return 0


if __name__ == "__main__":
  sys.exit(main())
