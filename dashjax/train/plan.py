"""Batch sizes chosen, not hand-set: `sampling.batch_size=auto` and `train.micro_batch_size=auto`.

Sampling wants many rows per call and backprop few rows per micro-step (the paper's preemptive sampling). The
planner lists every pair of sizes the batch rules allow (`config.validate`: divide R = P * G, whole groups per
sampler call, rows split evenly over the mesh), keeps the pairs whose every program fits a chip with a margin, and
takes the one with the least time per update; ties go to less memory.

    update_s = calls x call_s(S) + micro_steps x step_s(m) + apply_s       (grpo: S = m, one call per micro-step)

Sampler and learner are separable: call_s and the sampler's memory depend on S alone, step_s and the micro-step's
memory on m alone, so each is found at a few sizes and interpolated (memory and time are close to affine in rows).
- `predicted` (a TPU topology, no TPU needed): the TPU compiler's memory and cost analysis of the programs compiled
  at 8 and 16 layers and extrapolated to the model's (both are affine in layers past the few a chip's on-chip memory
  can hold: each layer adds its weights, cache and activations); every row is assumed to run to
  `sampling.max_new_tokens`, decode costed at the mean context.
- `measured` (local devices): the programs are run on random weights at those sizes and timed (random weights
  rarely emit EOS, so rows run to max_new_tokens here too); memory from the same compiles.
Dash's filtering only shortens backprop: its micro-steps are an expectation over how many groups it keeps
(`choose`), every number equally likely unless a kept fraction is given (`--kept_fraction`, from a run's metrics).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from dashjax.config import ConfigError

AUTO = "auto"
FIELDS = ("sampling.batch_size", "train.micro_batch_size")
MARGIN = 0.10  # of the chip's memory, left free
MEASURED_POINTS = 8  # sizes probed per axis on local devices (more are interpolated: the cost is convex in rows)


class PlanError(ConfigError):
  """No allowed size fits, or the planner cannot cost this target; one line."""


def samples_micro_batches(c) -> bool:
  """grpo's kind of algorithm: one sampler call per micro-batch, so its sampler size is its micro-batch."""
  from dashjax.rl.algorithms import algorithm

  return algorithm(c).sampler_rows_field == "train.micro_batch_size"


def _filtering(c) -> bool:
  from dashjax.rl.algorithms import algorithm

  return c.mode == "rl" and bool(algorithm(c).filtering)


def is_auto(c) -> bool:
  return any(str(_get(c, f)).lower() == AUTO for f in FIELDS)


def _get(c, field):
  section, name = field.split(".")
  return c[section][name]


def with_sizes(c, sampler_rows: int, micro: int):
  """A copy of `c` with both sizes concrete (grpo samples micro-batches: its sampler size follows m)."""
  out = c.copy_and_resolve_references()
  with out.unlocked(), out.ignore_type():  # the copy's fields are typed by their values ("auto" is a str)
    out.sampling.batch_size = int(micro if samples_micro_batches(c) else sampler_rows)
    out.train.micro_batch_size = int(micro)
  return out


def allowed(c, num_devices: int, free: bool = False) -> list[tuple[int, int]]:
  """(sampling.batch_size, train.micro_batch_size) pairs the batch rules accept; an `auto` field (every field with
  `free`) ranges over the divisors of R, a set one stays as it is. Raises ConfigError (the first size's problem)
  when none is allowed."""
  from dashjax.config import validate

  G = 1 if c.mode == "sft" else int(c.rl.samples_per_prompt)
  R = int(c.rl.prompts_per_step) * G
  divisors = [d for d in range(1, R + 1) if R % d == 0]
  auto_s, auto_m = (free or str(_get(c, f)).lower() == AUTO for f in FIELDS)
  sizes_s = divisors if auto_s else [int(c.sampling.batch_size)]
  sizes_m = divisors if auto_m else [int(c.train.micro_batch_size)]
  if samples_micro_batches(c) or c.mode == "sft":
    sizes_s = sizes_s[-1:]  # unused: grpo's calls are micro-batches, sft samples only to evaluate
  pairs, first_error = [], None
  for s in sizes_s:
    for m in sizes_m:
      try:
        validate(with_sizes(c, s, m), num_devices=num_devices, check_model_source=False)
        pairs.append((s, m))
      except ConfigError as e:
        first_error = first_error or e
  if not pairs:
    raise first_error
  return pairs


def probe_points(sizes, n: int) -> list[int]:
  """At most n of the sizes, always the smallest and the largest, the rest spread geometrically."""
  sizes = sorted(set(sizes))
  if len(sizes) <= n:
    return sizes
  idx = np.unique(np.round(np.geomspace(1, len(sizes), n)).astype(int) - 1)
  return [sizes[i] for i in idx]


def interpolate(points: dict, x: float) -> float:
  """Piecewise linear through {size: value}, extended linearly past both ends (one point: constant)."""
  xs = sorted(points)
  if len(xs) == 1:
    return points[xs[0]]
  i = min(max(np.searchsorted(xs, x) - 1, 0), len(xs) - 2)
  x0, x1 = xs[i], xs[i + 1]
  return points[x0] + (x - x0) * (points[x1] - points[x0]) / (x1 - x0)


def memory_at(points: dict, x: float) -> float:
  """`interpolate` for memory, never below what a smaller size needed: the same program on more rows holds at least
  as much (two compiles of small sizes can come out equal or reversed, and a line through them would then fall)."""
  floor = max((v for k, v in points.items() if k <= x), default=0.0)
  return max(interpolate(points, x), floor)


@dataclasses.dataclass
class Side:
  """One axis (the sampler's rows or the micro-batch) at its probed sizes: memory per chip and seconds."""
  memory: dict  # size -> bytes of the largest program, resident state included
  seconds: dict  # size -> seconds of one call / one micro-step
  worst: dict  # size -> the name of the largest program


def kept_groups(prompts: int, kept_fraction: float | None) -> np.ndarray:
  """Probabilities of keeping k = 0..P of an update's P groups under filtering.

  Filtering keeps or drops a group whole (binary rewards: a group's advantages are all zero exactly when its rewards
  are all equal), each group kept with probability q = `kept_fraction`: k ~ Binomial(P, q). None says nothing is
  known of q (uniform on [0, 1]), under which every k is equally likely."""
  if kept_fraction is None:
    return np.full(prompts + 1, 1.0 / (prompts + 1))
  q = float(kept_fraction)
  return np.array([math.comb(prompts, k) * q ** k * (1 - q) ** (prompts - k) for k in range(prompts + 1)])


def choose(c, pairs, sampler: Side, learner: Side, apply_s: float, capacity: int, margin: float, source: str,
           kept_fraction: float | None = 1.0):
  """The candidate table and the choice (least update time among those that fit; ties: less memory).

  A filtering algorithm (dash) backprops only its kept groups: k of them pack into ceil(k G / m) micro-steps, and
  an update that keeps none skips its optimizer step. Its update time is the expectation over k (`kept_groups`):
  `kept_fraction` 1 is the upper bound (no filtering), None an unknown fraction (what a run starts with); a run's
  metrics.jsonl gives the real figure (`kept_fraction`, about 0.2-0.5 for the main job). `micro_steps` in the
  table is then an expectation too."""
  G = 1 if c.mode == "sft" else int(c.rl.samples_per_prompt)
  P = int(c.rl.prompts_per_step)
  R = P * G
  passes = int(c.rl.epochs_per_batch)
  applies = int(c.rl.updates_per_batch) * passes
  grpo = samples_micro_batches(c)
  p_k = kept_groups(P, kept_fraction) if _filtering(c) else np.eye(P + 1)[P]  # no filtering: all kept
  limit = (1.0 - margin) * capacity
  rows = []
  for s, m in pairs:
    s_eff = m if grpo else s
    mem_s, mem_m = memory_at(sampler.memory, s_eff), memory_at(learner.memory, m)
    calls = 0 if c.mode == "sft" else R // s_eff
    steps_k = passes * np.ceil(np.arange(P + 1) * G / m - 1e-9)
    steps, updating = float(p_k @ steps_k), float(p_k[1:].sum())
    update = (calls * interpolate(sampler.seconds, s_eff) + steps * interpolate(learner.seconds, m)
              + updating * applies * apply_s)
    worst_name = _nearest(sampler.worst, s_eff) if mem_s >= mem_m else _nearest(learner.worst, m)
    rows.append({"sampling.batch_size": s_eff, "train.micro_batch_size": m, "fits": bool(max(mem_s, mem_m) <= limit),
                 "memory_bytes": int(max(mem_s, mem_m)), "worst_program": worst_name, "update_s": float(update),
                 "sampler_calls": calls, "micro_steps": int(steps) if steps == int(steps) else round(steps, 3),
                 "source": source})
  ok = [r for r in rows if r["fits"]]
  if not ok:
    smallest = min(rows, key=lambda r: r["memory_bytes"])
    raise PlanError(f"no allowed batch size fits: the smallest candidate (sampling.batch_size="
                    f"{smallest['sampling.batch_size']}, train.micro_batch_size={smallest['train.micro_batch_size']}) "
                    f"needs {smallest['memory_bytes'] / 2**30:.2f} GiB per chip in {smallest['worst_program']}, over "
                    f"{limit / 2**30:.2f} GiB ({100 * (1 - margin):.0f}% of the chip's {capacity / 2**30:.2f} GiB); "
                    f"use more chips (mesh.fsdp), train.remat=full or a smaller sampling.max_new_tokens")
  best = min(ok, key=lambda r: (round(r["update_s"], 6), r["memory_bytes"]))
  return rows, best


def _nearest(named: dict, x):
  return named[min(named, key=lambda k: abs(k - x))]


def plan(c, *, topology: str = "", devices=None, margin: float = MARGIN, progress=None, confirm: bool = False,
         free: bool = False, kept_fraction: float | None = None) -> dict:
  """The planner's report: `choice`, `candidates`, `configured` (the config's own sizes, when set), `source`.
  `free`: plan both sizes whatever the config sets (the config's own sizes are then reported as `configured`)."""
  from dashjax.train.fit import topology_devices

  say = progress or (lambda msg: None)
  if topology:
    devices = topology_devices(topology)
  import jax

  devices = list(devices if devices is not None else jax.devices())
  pairs = allowed(c, len(devices), free)
  grpo = samples_micro_batches(c)
  s_sizes = sorted({m if grpo else s for s, m in pairs}) if c.mode == "rl" else []
  m_sizes = sorted({m for _, m in pairs})
  t0 = time.perf_counter()
  if devices[0].platform == "tpu":
    from dashjax.train.plan_probe import predicted_sides

    sampler, learner, apply_s, capacity = predicted_sides(c, topology, devices, s_sizes, m_sizes, pairs, say)
    source = "predicted"
  else:
    from dashjax.train.plan_probe import measured_sides

    sampler, learner, apply_s, capacity = measured_sides(c, devices, probe_points(s_sizes, MEASURED_POINTS),
                                                         probe_points(m_sizes, MEASURED_POINTS), pairs, say)
    source = "measured"
  rows, best = choose(c, pairs, sampler, learner, apply_s, capacity, margin, source, kept_fraction)
  report = {"choice": {f: best[f] for f in FIELDS}, "candidates": rows, "source": source,
            "kept_fraction": kept_fraction, "filtering": _filtering(c),
            "sides": {"sampler": dataclasses.asdict(sampler), "learner": dataclasses.asdict(learner)},
            "topology": topology or f"local:{devices[0].platform}", "chips": len(devices),
            "memory_per_chip_bytes": int(capacity), "margin": margin, "apply_s": apply_s,
            "plan_s": round(time.perf_counter() - t0, 1), "configured": None}
  own_fields = FIELDS[1:] if grpo else FIELDS  # grpo's sampler size is its micro-batch
  if not any(str(_get(c, f)).lower() == AUTO for f in own_fields):
    own = [r for r in rows if all(str(_get(c, f)) == str(r[f]) for f in own_fields)]
    report["configured"] = own[0] if own else None
  if confirm and devices[0].platform == "tpu":
    from dashjax.train.fit import check

    say("confirming the choice: every program at the model's size")
    full = check(with_sizes(c, best["sampling.batch_size"], best["train.micro_batch_size"]), devices,
                 topology=topology, programs_wanted=("sampler", "micro_step", "apply"), decode_context=0)
    report["confirmed"] = {"fits": full["fits"], "programs": {k: v["total_bytes"] for k, v in full["programs"].items()}}
  return report


def resolve(c, *, devices=None, progress=None, recorded: dict | None = None):
  """`c` with its `auto` sizes replaced: by `recorded` (the sizes a resumed run chose before) or by a plan on the
  local devices. Returns (config, report or None)."""
  if not is_auto(c):
    return c, None
  if recorded:
    return with_sizes(c, recorded["sampling.batch_size"], recorded["train.micro_batch_size"]), None
  report = plan(c, devices=devices, progress=progress)
  choice = report["choice"]
  import jax

  if jax.process_count() > 1:  # each process timed its own probe: all take process 0's choice
    from jax.experimental import multihost_utils

    both = multihost_utils.broadcast_one_to_all(np.array([choice[f] for f in FIELDS], np.int32))
    choice = report["choice"] = dict(zip(FIELDS, (int(x) for x in both)))
  return with_sizes(c, choice["sampling.batch_size"], choice["train.micro_batch_size"]), report


def format_table(report: dict) -> str:
  rows = sorted(report["candidates"], key=lambda r: (r["sampling.batch_size"], r["train.micro_batch_size"]))
  pick = report["choice"]
  lines = [f"batch-size plan on {report['topology']} ({report['chips']} chips, {report['memory_per_chip_bytes'] / 2**30:.2f}"
           f" GiB each, {100 * report['margin']:.0f}% kept free); update time {report['source']}"
           + (" by the TPU compiler's cost model, not a measurement" if report["source"] == "predicted" else "")
           + _kept_note(report),
           f"{'sampler rows':>12} {'micro-batch':>11} {'calls':>6} {'micro-steps':>11} {'GiB/chip':>9} "
           f"{'update s':>10}  {'':6}"]
  for r in rows:
    mark = "<- chosen" if all(r[f] == pick[f] for f in FIELDS) else ("" if r["fits"] else "no fit")
    lines.append(f"{r['sampling.batch_size']:>12} {r['train.micro_batch_size']:>11} {r['sampler_calls']:>6} "
                 f"{r['micro_steps']:>11g} {r['memory_bytes'] / 2**30:>9.2f} {r['update_s']:>10.3f}  {mark}")
  if report.get("configured"):
    own = report["configured"]
    lines.append(f"configured sizes ({own['sampling.batch_size']}, {own['train.micro_batch_size']}): "
                 f"{own['update_s']:.3f} s per update, {'fits' if own['fits'] else 'does not fit'}")
  return "\n".join(lines)


def _kept_note(report: dict) -> str:
  if not report.get("filtering"):
    return ""
  q = report.get("kept_fraction")
  return ("; filtering keeps an unknown share of groups (each number equally likely)" if q is None else
          f"; filtering keeps {q:.2f} of groups")


def speedup(report: dict) -> float | None:
  own = report.get("configured")
  best = min((r for r in report["candidates"] if r["fits"]), key=lambda r: r["update_s"], default=None)
  if not own or not best or not math.isfinite(own["update_s"]):
    return None
  return own["update_s"] / best["update_s"]
