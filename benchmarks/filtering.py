"""The update phase alone against the kept fraction: `Updater.update` on one sampled batch, rows kept deterministically.

  python benchmarks/filtering.py --quick       # 2 repeats (~4 min on 2 CPU cores)
  python benchmarks/filtering.py               # 5 repeats, and the filtered-vs-unfiltered gradient check (~9 min)

One batch is sampled once with the main job's config (SmolLM2-135M-Instruct, 8 prompts x 4 samples = 32 rows,
32 new tokens, micro-batch 4). For each kept fraction f the kept rows are fixed up front:
  --granularity group (default): round(f * P) whole groups, the first ones of a seeded permutation of the groups.
      This is what DASH keeps with binary rewards: a group is either mixed (every row has |A| > 0) or dropped
      whole, so real kept fractions are multiples of G / R (1/8 here) and f is rounded to the nearest one.
  --granularity row: round(f * R) rows of a seeded permutation of the rows.
Timing: one call per fraction first (the first one overall compiles the micro-step and the optimizer step), reported
separately; then --repeats rounds, fraction order reversed every other round, each call timed around
`Updater.update` (zeroed accumulator, ceil(kept / 4) micro-steps over the packed rows, one AdamW update, waited for).
Parameters carry over from call to call as in training; the cost does not depend on their values.
A least-squares fit of the medians, time = fixed + per_micro_step * micro_steps, splits the per-update fixed cost
(zeroed accumulator, optimizer step) from the per-micro-step cost.
With --check, the accumulated gradient of the kept rows is compared with the unfiltered gradient of all rows whose
advantages outside the kept set are 0 (what filtering assumes); they must agree to float rounding.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, ROOT, environment, load_config, log, table, write_json  # noqa: E402


def kept_rows(fraction, R, G, granularity, seed=0):
  rng = np.random.default_rng(seed)
  if granularity == "group":
    n = max(1, int(round(fraction * R / G))) if fraction > 0 else 0  # some group survives any f > 0
    groups = rng.permutation(R // G)[:n]
    return np.sort((groups[:, None] * G + np.arange(G)[None, :]).reshape(-1))
  n = max(1, int(round(fraction * R))) if fraction > 0 else 0
  return np.sort(rng.permutation(R)[:n])


def gradient_check(trainer, batch, adv, rows):
  """max |g_filtered - g_unfiltered| / max |g_unfiltered| with the dropped rows' advantages set to 0."""
  from dashjax.rl.batching import Part
  from dashjax.train.update import UpdateResult

  all_rows = np.arange(batch.num_rows)
  adv0 = np.where(np.isin(all_rows, rows), adv, 0.0).astype(np.float32)
  g_f, g_u = (trainer.updater.gradient(trainer.params, trainer.ref_params, [Part(batch, adv0, r, all_rows)],
                                       UpdateResult()) for r in (rows, all_rows))
  diff = max(float(jax.numpy.max(jax.numpy.abs(a - b))) for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_u)))
  scale = max(float(jax.numpy.max(jax.numpy.abs(b))) for b in jax.tree.leaves(g_u))
  return diff / max(scale, 1e-30), scale


def fit_fixed_and_slope(micro, secs):
  a = np.stack([np.ones(len(micro)), np.asarray(micro, float)], 1)
  (fixed, slope), *_ = np.linalg.lstsq(a, np.asarray(secs, float), rcond=None)
  return float(fixed), float(slope)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=os.path.join(ROOT, "configs", "smollm2_arith.py"))
  ap.add_argument("--fractions", default="1.0,0.7,0.4,0.1")
  ap.add_argument("--granularity", choices=("group", "row"), default="group")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                  help="compare filtered and unfiltered gradients (untimed)")
  ap.add_argument("--quick", action="store_true", help="2 repeats, no gradient check")
  ap.add_argument("--json", default=None, help="default benchmarks/results/filtering[_quick].json")
  args = ap.parse_args(argv)
  if args.quick:
    args.repeats, args.check = 2, False
  suffix = ("_quick" if args.quick else "") + ("_rows" if args.granularity == "row" else "")
  args.json = args.json or os.path.join(RESULTS, f"filtering{suffix}.json")
  fractions = [float(f) for f in args.fractions.split(",")]
  if 1.0 not in fractions:
    fractions.insert(0, 1.0)

  from dashjax.rl.advantages import group_advantages
  from dashjax.rl.batching import Part
  from dashjax.train.trainer import Trainer
  from dashjax.train.update import UpdateResult

  config = load_config(args.config)
  config.eval.before = config.eval.after = False
  env = environment()
  log("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
  t_start = time.perf_counter()
  trainer = Trainer(config, tempfile.mkdtemp(prefix="filtering_"))
  try:
    c, G = config, config.rl.samples_per_prompt
    examples = trainer.iterator.next_batch()
    sc = trainer.collector.collect(trainer.sampler_params(), examples, jax.random.key(c.train.seed))
    batch, R = sc.batch, sc.batch.num_rows
    adv = group_advantages(sc.rewards, G, c.rl.advantage)
    settings = {"config": os.path.relpath(args.config, ROOT), "model": c.model.source, "rows": R,
                "prompts": R // G, "samples_per_prompt": G, "max_new_tokens": c.sampling.max_new_tokens,
                "sequence_len": batch.tokens_RxS.shape[1], "prompt_len": batch.prompt_len,
                "micro_batch_size": c.train.micro_batch_size, "granularity": args.granularity,
                "repeats": args.repeats, "fractions": fractions, "mean_response_len":
                float(batch.completion_mask_RxN.sum(1).mean()), "command": " ".join(["python"] + sys.argv)}
    log("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    rows = {f: kept_rows(f, R, G, args.granularity) for f in fractions}
    all_rows = np.arange(R)

    def update(f):  # the trainer's recipe on fixed rows; parameters carry over as in training
      result = UpdateResult()
      t0 = time.perf_counter()
      trainer.state = trainer.updater.update(trainer.state, [Part(batch, adv, rows[f], all_rows)], result)
      return time.perf_counter() - t0, result.micro_steps

    res = {f: {"fraction": f, "kept_rows": len(rows[f]), "kept_fraction": len(rows[f]) / R, "times_s": []}
           for f in fractions}
    for f in fractions:
      res[f]["first_call_s"], res[f]["micro_steps"] = update(f)
      log(f"first call, kept {f}: {res[f]['first_call_s']:.2f}s, micro-steps: {res[f]['micro_steps']}")
    for r in range(args.repeats):
      for f in (fractions if r % 2 == 0 else fractions[::-1]):
        dt, micro = update(f)
        assert micro == res[f]["micro_steps"]
        res[f]["times_s"].append(dt)
      log(f"round {r + 1}: " + ", ".join(f"{f}: {res[f]['times_s'][-1]:.2f}s" for f in fractions))
    compiles = trainer.learner.compile_counts()
    if args.check:
      for f in fractions:
        res[f]["grad_rel_diff"], res[f]["grad_scale"] = gradient_check(trainer, batch, adv, rows[f])
  finally:
    trainer.close()

  full = statistics.median(res[1.0]["times_s"])
  for f in fractions:
    d = res[f]
    d["median_s"], d["min_s"] = statistics.median(d["times_s"]), min(d["times_s"])
    d["ratio"] = d["median_s"] / full
    d["ideal_ratio"] = d["micro_steps"] / res[1.0]["micro_steps"]
  fixed, per_micro = fit_fixed_and_slope([res[f]["micro_steps"] for f in fractions],
                                         [res[f]["median_s"] for f in fractions])
  ratios = {str(f): res[f]["ratio"] for f in fractions}
  target_f = min(fractions, key=lambda f: abs(f - 0.4))
  out = {"environment": env, "settings": settings, "rows": [res[f] for f in fractions],
         "update_time_ratio": ratios, "fit": {"fixed_s": fixed, "per_micro_step_s": per_micro},
         "compilations": compiles, "wall_s": time.perf_counter() - t_start, "load_average_end": os.getloadavg(),
         "target": {"fraction": target_f, "ratio": res[target_f]["ratio"], "max": 0.5,
                    "met": res[target_f]["ratio"] <= 0.5}}
  write_json(args.json, out)

  head = ["kept (nominal)", "kept rows", "kept fraction", "micro-steps", "first call s", "median s", "min s",
          "ratio vs 1.0", "micro-step ratio"]
  if args.check:
    head.append("grad rel. diff")
  lines = []
  for f in fractions:
    d = res[f]
    cells = [f"{f:g}", f"{d['kept_rows']}/{R}", f"{d['kept_fraction']:.3f}", str(d["micro_steps"]),
             f"{d['first_call_s']:.2f}", f"{d['median_s']:.2f}", f"{d['min_s']:.2f}", f"{d['ratio']:.3f}",
             f"{d['ideal_ratio']:.3f}"]
    if args.check:
      cells.append(f"{d['grad_rel_diff']:.1e}")
    lines.append(cells)
  log("")
  log(f"Update phase against kept fraction: {c.model.source}, {R} rows ({R // G} prompts x {G}), "
      f"{c.sampling.max_new_tokens} new tokens, sequence {batch.tokens_RxS.shape[1]} tokens, micro-batch "
      f"{c.train.micro_batch_size}, {args.granularity} granularity; jax {env['jax']}, {env['nproc']} x "
      f"{env['cpu_model']}.")
  log(f"Seconds: `Updater.update` (accumulate over the packed micro-batches + AdamW), median of {args.repeats} "
      "interleaved calls; first call (compilation at the first fraction) excluded. Micro-step ratio = micro-steps / "
      "micro-steps at 1.0 (the ideal).")
  log("")
  log(table(head, lines))
  log("")
  log(f"fit: {fixed:.3f}s fixed per update + {per_micro:.3f}s per micro-step")
  log(f"compilations across all fractions: micro_step {compiles['micro_step']}, apply {compiles['apply']}")
  verdict = "met" if out["target"]["met"] else "missed"
  log(f"target: kept {target_f:g} takes {res[target_f]['ratio']:.3f} of kept 1.0 (<= 0.5): {verdict}")
  log(f"wall time {out['wall_s']:.0f}s; load average start {env['load_average_start']}, end "
      f"{out['load_average_end']}; JSON: {args.json}")
  return 0 if math.isfinite(full) else 1


if __name__ == "__main__":
  sys.exit(main())
