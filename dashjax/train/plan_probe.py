"""The planner's measurements of each axis (see `dashjax.train.plan`): memory and seconds of one sampler call at
S rows and of one micro-step at m rows, on a TPU slice by the compiler's cost model or on local devices by running.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from dashjax.train.plan import PlanError, Side, probe_points, samples_micro_batches, with_sizes

PREDICTED_POINTS = 2  # sizes compiled per axis for a TPU slice (memory and cost are affine in rows)
PROBE_TOKENS = 64  # a measured sampler call decodes at most this many tokens; longer calls are scaled from it


def _pair_with(pairs, s=None, m=None, grpo=False):
  """An allowed pair with sampler rows s (grpo: its micro-batch) and micro-batch m."""
  for ps, pm in pairs:
    if (s is None or (pm if grpo else ps) == s) and (m is None or pm == m):
      return ps, pm
  raise PlanError(f"no allowed pair with sampler rows {s} and micro-batch {m}")


# Layer counts compiled for a slice: the model's own when it has at most 16, else 8 and 16, extrapolated. Not 1 and
# 2: a model that small keeps its weights in the chip's on-chip memory through the decode loop (v5e: 128 MiB), which
# the full model cannot, and its small temporaries need no buffers; past a few layers each layer adds a steady cost
# (Qwen2.5-0.5B decode: 4 and 8 layers extrapolate to 4.44 GB per step, 24 layers compiled: 4.40 GB; 1 and 2 layers
# extrapolate to 2.07 GB) and steady temporaries (tests/test_plan.py).
def layer_counts(layers: int) -> tuple[int, ...]:
  return (layers,) if layers <= 16 else (8, 16)


def _extrapolate(by_layers: dict, layers: int) -> float:
  """A quantity compiled at the layer counts of `layer_counts`, at `layers` (affine in the layer count)."""
  if len(by_layers) == 1:
    return next(iter(by_layers.values()))
  (a, qa), (b, qb) = sorted(by_layers.items())
  return qa + (layers - a) * (qb - qa) / (b - a)


def predicted_sides(c, topology, devices, s_sizes, m_sizes, pairs, say):
  """Both axes from programs compiled for the slice at `layer_counts` and extrapolated to the model's."""
  from dashjax.models.presets import model_config
  from dashjax.train.fit import check, chip_memory

  arch = model_config(c.model.source)
  L = arch.num_layers
  T, N = int(c.data.max_prompt_tokens), int(c.sampling.max_new_tokens)
  grpo = samples_micro_batches(c)
  sampler = {"memory": {}, "seconds": {}, "worst": {}}
  learner = {"memory": {}, "seconds": {}, "worst": {}}
  apply_l = {}
  raw = {}  # (axis, size, layers) -> (bytes, seconds, worst)
  counts = layer_counts(L)
  for layers in counts:
    cfg_l = dataclasses.replace(arch, num_layers=layers)
    for s in (probe_points(s_sizes, PREDICTED_POINTS) if c.mode == "rl" else []):
      ps, pm = _pair_with(pairs, s=s, grpo=grpo)
      cc = with_sizes(c, ps, pm)
      say(f"sampler at {s} rows, {layers} layer(s)")
      # The call's largest programs: start, and a decode step of the first (largest) bucket; the smaller buckets
      # and compactions that follow need less. The static sampler's one program is compiled for its memory.
      costing = cc if cc.sampling.continuous else _continuous(cc)
      r = check(costing, topology=topology, programs_wanted=("decode",), model_cfg=cfg_l, decode_context=T + N // 2)
      start = r["programs"].get("sampler/start", {})
      mem = {"sampler/start": start.get("total_bytes", 0),
             "sampler/decode_step": (r.get("decode") or {}).get("program_bytes", 0) + start.get("resident_bytes", 0)}
      if not cc.sampling.continuous:
        static = check(cc, topology=topology, programs_wanted=("sampler",), model_cfg=cfg_l)["programs"]["sampler"]
        mem = {"sampler": static["total_bytes"]}
      worst = max(mem, key=mem.get)
      step = (r.get("decode") or {}).get("predicted_s")
      if start.get("predicted_s") is None or step is None:
        raise PlanError(f"the TPU cost model gave no time for the sampler at {s} rows "
                        f"({start.get('error') or (r.get('decode') or {}).get('error') or 'no cost analysis'})")
      raw["s", s, layers] = (mem[worst], start["predicted_s"] + (N - 1) * step, worst)
    # Memory at the smallest and the largest micro-batch: between two small ones the compiler's buffers can come out
    # flat or even falling (v4, v6e), and a line through them says nothing of 256 rows.
    for m in dict.fromkeys(_ends(m_sizes)):
      ps, pm = _pair_with(pairs, m=m)
      say(f"micro-step memory at {m} rows, {layers} layers")
      mem = check(with_sizes(c, ps, pm), topology=topology, programs_wanted=("micro_step",),
                  model_cfg=cfg_l)["programs"]["micro_step"]
      raw["m", m, layers] = (mem["total_bytes"], None, "micro_step")
  # Time of the micro-step and the optimizer step: loops are costed once per body, so from the unrolled step with one
  # attention block and one log-prob chunk, at 1 and 2 layers (its FLOPs are exactly affine in layers). Known bias:
  # this variant holds the whole completion's logits at once, so its bytes, and the time of large micro-batches,
  # are overstated against the chunked step that runs.
  micro_l, apply_l = {}, {}
  for layers in (1, 2):
    cfg_l = dataclasses.replace(arch, num_layers=layers)
    for m in sorted(m_sizes)[:PREDICTED_POINTS]:
      ps, pm = _pair_with(pairs, m=m)
      cc = with_sizes(c, ps, pm)
      say(f"micro-step time at {m} rows, {layers} layer(s)")
      t = check(_unrolled(cc, T + N), topology=topology, programs_wanted=("micro_step",),
                model_cfg=cfg_l)["programs"]["micro_step"]
      if t["predicted_s"] is None:
        raise PlanError(f"the TPU cost model gave no time for the micro-step at {m} rows ({t['error'][:200]})")
      micro_l[m, layers] = t["predicted_s"]
    say(f"optimizer step, {layers} layer(s)")
    r = check(cc, topology=topology, programs_wanted=("apply", "sampler_cast"), model_cfg=cfg_l)
    apply_l[layers] = sum(p["predicted_s"] or 0.0 for p in r["programs"].values())
  for (axis, size, layers), _ in list(raw.items()):
    if layers != counts[0]:
      continue
    side = sampler if axis == "s" else learner
    side["memory"][size] = _extrapolate({k: raw[axis, size, k][0] for k in counts}, L)
    if axis == "s":
      side["seconds"][size] = _extrapolate({k: raw[axis, size, k][1] for k in counts}, L)
    side["worst"][size] = raw[axis, size, counts[-1]][2]
  for m in sorted(m_sizes)[:PREDICTED_POINTS]:  # the micro-step's time: the smallest sizes (they compile fastest)
    learner["seconds"][m] = _extrapolate({k: micro_l[m, k] for k in (1, 2)}, L)
  if grpo or c.mode == "sft":  # grpo: the sampler side is indexed by its micro-batch; sft has no sampler call
    sampler = sampler if sampler["memory"] else {"memory": {1: 0.0}, "seconds": {1: 0.0}, "worst": {1: "-"}}
  return Side(**sampler), Side(**learner), _extrapolate(apply_l, L), chip_memory(devices[0])


def _continuous(c):
  out = c.copy_and_resolve_references()
  with out.unlocked():
    out.sampling.continuous = True
  return out


def _unrolled(c, context: int):
  out = c.copy_and_resolve_references()
  with out.unlocked():
    out.train.scan_layers, out.train.logprob_chunk, out.train.attention_block = False, 0, int(context)
  return out


def measured_sides(c, devices, s_points, m_points, pairs, say):
  """Both axes timed on the local devices with random weights (rows run to max_new_tokens: EOS is rare), memory
  from the fit check's compile of the smallest and largest sizes."""
  from flax import nnx

  from dashjax.config import validate
  from dashjax.models.compute import cast_floats
  from dashjax.models.config import resolve_dtype
  from dashjax.models.presets import model_config
  from dashjax.models.transformer import Transformer
  from dashjax.train.fit import check, chip_memory
  from dashjax.parallel.mesh import LEARNER_RULES, SAMPLER_RULES, batch_sharding, make_mesh, param_shardings
  from dashjax.rl.batching import MicroBatches
  from dashjax.train import programs

  arch = model_config(c.model.source)
  T, N = int(c.data.max_prompt_tokens), int(c.sampling.max_new_tokens)
  G = 1 if c.mode == "sft" else int(c.rl.samples_per_prompt)
  grpo = samples_micro_batches(c)
  dtype, param_dtype = resolve_dtype(c.model.dtype), resolve_dtype(c.model.param_dtype)
  first = with_sizes(c, *pairs[0])
  mesh = make_mesh(validate(first, num_devices=len(devices), check_model_source=False).mesh_shape, devices)
  say("random weights for the probe")
  model = Transformer(arch, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  learner_sh, sampler_sh = param_shardings(state, mesh, LEARNER_RULES), param_shardings(state, mesh, SAMPLER_RULES)
  params = jax.device_put(state, learner_sh)
  low = jax.device_put(cast_floats(state, dtype), sampler_sh)
  rng = np.random.default_rng(0)
  put = lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim))  # noqa: E731

  sampler = {"memory": {}, "seconds": {}, "worst": {}}
  n_probe = min(N, PROBE_TOKENS)
  for s in (s_points if c.mode == "rl" else []):
    ps, pm = _pair_with(pairs, s=s, grpo=grpo)
    cc = with_sizes(c, ps, pm)
    with cc.unlocked():
      cc.sampling.max_new_tokens = n_probe
    say(f"sampler call at {s} rows ({n_probe} new tokens)")
    fn = programs.train_sampler(cc, graphdef, (), 0)
    tokens = put(rng.integers(1, arch.vocab_size, (s // G, T)).astype(np.int32))
    valid = put(np.ones((s // G, T), bool))
    key = jax.random.key(0)
    jax.block_until_ready(fn(low, tokens, valid, key))  # compiles
    t = _best_of(lambda: jax.block_until_ready(fn(low, tokens, valid, key)))
    sampler["seconds"][s] = t * N / n_probe  # decode dominates a call: scaled to max_new_tokens
  learner = {"memory": {}, "seconds": {}, "worst": {}}
  opt = None
  for m in m_points:
    ps, pm = _pair_with(pairs, m=m)
    cc = with_sizes(c, ps, pm)
    plan_m = validate(cc, num_devices=len(devices), check_model_source=False)
    progs = programs.build(cc, plan_m, graphdef, mesh, learner_sh, sampler_sh)
    opt, lrn = progs.optimizer, progs.learner
    say(f"micro-step at {m} rows")
    # every row real, every token weighted, advantages 1: the whole step runs (filler rows would cost the same)
    mb = {k: np.ones(shape, dt) for k, (shape, dt) in MicroBatches.spec(m, T, N).items()}
    mb["tokens"] = rng.integers(1, arch.vocab_size, mb["tokens"].shape).astype(np.int32)
    mb["weights"] /= N
    mb["old_logprobs"][:] = 0.0
    mb = {k: put(v) for k, v in mb.items()}
    ref = params if (c.mode == "rl" and c.rl.kl_beta > 0) else None
    step = lambda: jax.block_until_ready(lrn.micro_step(params, lrn.zero_grads(params), ref, mb))  # noqa: E731
    step()  # compiles
    learner["seconds"][m] = _best_of(step)
  say("optimizer step")
  grads = lrn.zero_grads(params)
  copy = jax.tree.map(jnp.copy, params)
  opt_state = opt.init(copy)
  copy, opt_state, _ = lrn.apply(copy, opt_state, grads)  # compiles
  jax.block_until_ready(copy)

  def apply_once():
    nonlocal copy, opt_state
    copy, opt_state, _ = lrn.apply(copy, opt_state, lrn.zero_grads(copy))
    jax.block_until_ready(copy)

  apply_s = _best_of(apply_once)
  del copy, opt_state, params, low, state, model
  # Memory: the fit check's compile at the smallest and largest sizes of each axis (the rest interpolated).
  ends = [(s, m) for s, m in zip(_ends(s_points), _ends(m_points))] if s_points else [(None, m) for m in _ends(m_points)]
  for s, m in dict.fromkeys(ends):
    try:
      ps, pm = _pair_with(pairs, s=s, m=m, grpo=grpo)
    except PlanError:  # the two ends do not pair: the micro-batch's end alone
      ps, pm = _pair_with(pairs, m=m)
    say(f"memory at sampler rows {ps}, micro-batch {pm}")
    r = check(with_sizes(c, ps, pm), devices, programs_wanted=("sampler", "micro_step"), decode_context=0)["programs"]
    samp = {k: v for k, v in r.items() if k.startswith("sampler")}
    if samp:
      worst = max(samp, key=lambda k: samp[k]["total_bytes"])
      key = pm if grpo else ps
      sampler["memory"][key], sampler["worst"][key] = samp[worst]["total_bytes"], worst
    learner["memory"][pm], learner["worst"][pm] = r["micro_step"]["total_bytes"], "micro_step"
  if not sampler["seconds"]:
    sampler = {"memory": {1: 0.0}, "seconds": {1: 0.0}, "worst": {1: "-"}}
  elif not sampler["memory"]:
    sampler["memory"], sampler["worst"] = {1: 0.0}, {1: "-"}
  return Side(**sampler), Side(**learner), apply_s, chip_memory(devices[0])


def _ends(points):
  return [min(points), max(points)]


def _best_of(fn, reps: int = 2) -> float:
  """The least of `reps` timed runs (a shared machine only ever adds time)."""
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best
