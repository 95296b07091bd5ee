"""Ahead-of-time fit check: compile every program of a training step for a device set and read its memory.

Nothing runs and no weights are read: parameters, optimizer state, prompts and micro-batches are
`ShapeDtypeStruct`s carrying the `NamedSharding`s the trainer gives them, lowered through the same programs
(`dashjax.train.programs`) and compiled for the local devices or for a TPU slice described by libtpu
(`--topology v5e:2x4`), which works on a CPU-only machine. Per chip, each program needs its arguments, outputs and
temporaries; the state that stays resident meanwhile (the stored parameters and Adam moments while the sampler
runs, for example) is added to get the figure checked against the chip's memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from dashjax.config import validate
from dashjax.models.compute import cast_floats, target_platform
from dashjax.models.config import resolve_dtype
from dashjax.models.presets import model_config
from dashjax.models.transformer import Transformer
from dashjax.parallel.cost import CostError, chip_for, decode_floor, kv_bytes_per_token, program_cost
from dashjax.parallel.devices import GiB, FitError, chip_memory, topology_devices  # noqa: F401 (re-exported)
from dashjax.parallel.mesh import (LEARNER_RULES, SAMPLER_RULES, batch_sharding, make_mesh, opt_state_shardings,
                                   param_shardings)
from dashjax.sampling.continuous import ContinuousSampler
from dashjax.train import programs
from dashjax.train.fit_reference import reference_job
from dashjax.train.fit_sampler import continuous_jobs, decode_step_job
from dashjax.train.plan import samples_micro_batches

def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def per_chip_bytes(tree) -> int:
  """Bytes of the largest shard per device of an abstract tree (what one chip holds)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
  return total


@dataclasses.dataclass
class ProgramFit:
  name: str
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  resident_bytes: int = 0  # state not among the program's arguments that stays in memory while it runs
  compile_s: float = 0.0
  error: str = ""
  flops: float | None = None  # the compiler's cost model, per chip (a loop body counted once)
  bytes_accessed: float | None = None
  predicted_s: float | None = None  # None where the backend has no cost model (XLA:CPU)

  @property
  def program_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def total_bytes(self) -> int:
    return self.program_bytes + self.resident_bytes


def _needed_from_error(message: str) -> int:
  """The bytes a too-large program needs, from the compiler's RESOURCE_EXHAUSTED message (0 if not stated)."""
  for pattern in (r"temporaries \(([\d.]+)([KMGT])\) exceeds", r"Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm"):
    m = re.search(pattern, message)
    if m:
      return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2)))
  return 0


def _compile(name: str, jitted, args, resident: int, chip=None) -> tuple[ProgramFit, object]:
  """(its fit, the compiled program or None where compiling failed)."""
  fit = ProgramFit(name, resident_bytes=resident)
  t0 = time.perf_counter()
  try:
    compiled = jitted.lower(*args).compile()
  except Exception as e:  # over-large programs fail here; report the figure, not the traceback
    msg = str(e)
    fit.compile_s = time.perf_counter() - t0
    fit.error = msg.splitlines()[0][:300] if msg else type(e).__name__
    fit.temp_bytes = _needed_from_error(msg)
    fit.argument_bytes = per_chip_bytes(args)  # what the arguments alone take, as the compiler did not say
    return fit, None
  fit.compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  fit.argument_bytes, fit.output_bytes = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  fit.alias_bytes, fit.temp_bytes = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
  cost = program_cost(compiled, chip)
  fit.flops, fit.bytes_accessed, fit.predicted_s = cost["flops"], cost["bytes_accessed"], cost["predicted_s"]
  return fit, compiled


def _gather_fit(name, low, out, resident) -> ProgramFit:
  """The leaf-by-leaf gather of `SamplerCast`: the cast copy and the gathered copy are whole in memory, plus the
  largest one-leaf gather program's temporaries."""
  fit = ProgramFit(name, argument_bytes=per_chip_bytes(low), output_bytes=per_chip_bytes(out),
                   resident_bytes=resident)
  t0 = time.perf_counter()
  seen = set()
  for x, y in zip(jax.tree.leaves(low), jax.tree.leaves(out)):
    key = (x.shape, str(x.dtype), x.sharding, y.sharding)
    if key in seen or x.sharding == y.sharding:
      continue
    seen.add(key)
    try:
      mem = jax.jit(lambda a: a, out_shardings=y.sharding).lower(x).compile().memory_analysis()
      fit.temp_bytes = max(fit.temp_bytes, int(mem.temp_size_in_bytes))
    except Exception as e:
      fit.error = str(e).splitlines()[0][:300]
  fit.compile_s = time.perf_counter() - t0
  return fit


def check(config, devices=None, *, topology: str = "", programs_wanted=None, progress=None, model_cfg=None,
          decode_context: int = 1024) -> dict:
  """Compiles each program of a training step for `devices` (default: the local ones) and returns the report.

  `model_cfg` replaces the architecture of `config.model.source` (e.g. fewer layers, for a quick check).
  `decode_context`: the keys per row at which one decode step is costed against its floor (0: not costed); capped
  at the prompt plus `sampling.max_new_tokens`."""
  if topology:
    devices = topology_devices(topology)
  devices = list(devices if devices is not None else jax.devices())
  chip = None
  if devices[0].platform == "tpu":  # speed needs the chip's bandwidth and peak: an unknown kind stops here
    try:
      chip = chip_for(devices[0].device_kind)
    except CostError as e:
      raise FitError(str(e)) from None
  plan = validate(config, num_devices=len(devices), check_model_source=False)
  mesh = make_mesh(plan.mesh_shape, devices)
  platform = devices[0].platform
  capacity = chip_memory(devices[0])
  c = config
  cfg = model_cfg or model_config(c.model.source)
  dtype, param_dtype = resolve_dtype(c.model.dtype), resolve_dtype(c.model.param_dtype)
  model = nnx.eval_shape(lambda: Transformer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  learner_sh = param_shardings(state, mesh, LEARNER_RULES)
  sampler_sh = param_shardings(state, mesh, SAMPLER_RULES)
  params = _abstract(state, learner_sh)
  sampler_params = _abstract(jax.eval_shape(lambda p: cast_floats(p, dtype), state), sampler_sh)

  progs = programs.build(c, plan, graphdef, mesh, learner_sh, sampler_sh)
  opt_abstract = jax.eval_shape(progs.optimizer.init, params)
  opt_state = _abstract(opt_abstract, opt_state_shardings(opt_abstract, params, learner_sh, mesh))
  ref = params if (c.mode == "rl" and c.rl.kl_beta > 0) else None

  T, N = int(c.data.max_prompt_tokens), int(c.sampling.max_new_tokens)
  decode_context = min(int(decode_context), T + N)
  rows = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=batch_sharding(mesh, len(shape)))  # noqa: E731
  micro_batch = progs.micro_batch(lambda ndim: batch_sharding(mesh, ndim))
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                             sharding=NamedSharding(mesh, PartitionSpec()))

  stored, moments, ref_b = per_chip_bytes(params), per_chip_bytes(opt_state), per_chip_bytes(ref or {})
  cast_b = per_chip_bytes(sampler_params) if dtype != param_dtype else 0
  jobs = []
  grpo_copy = 0
  if c.mode == "rl":
    P_call = plan.sampler_rows // c.rl.samples_per_prompt
    prompts = (sampler_params, rows((P_call, T), jnp.int32), rows((P_call, T), bool), key)
    # grpo keeps the sampler's copy alive through its micro-steps
    grpo_copy = cast_b if samples_micro_batches(c) else 0
    jobs.append(("sampler", progs.sampler, prompts, stored + moments + ref_b))
  jobs.append(("micro_step", progs.learner.micro_step, (params, params, ref, micro_batch),
               moments + (grpo_copy if c.mode == "rl" else 0)))
  jobs.append(("apply", progs.learner.apply_program(params, opt_state), (params, opt_state, params), ref_b))
  if c.eval.before or c.eval.after or c.eval.every:
    P_eval = programs.eval_rows(c) // max(int(c.eval.samples), 1)
    jobs.append(("eval_sampler", progs.eval_sampler,
                 (sampler_params, rows((P_eval, T), jnp.int32), rows((P_eval, T), bool), key),
                 stored + moments + ref_b))
  if progs.cast is not None:
    jobs.append(("sampler_cast", progs.cast.cast, (params,), moments + ref_b))
    low = _abstract(jax.eval_shape(progs.cast.cast, params), learner_sh)
    jobs.append(("sampler_gather", (low, sampler_params), None, stored + moments + ref_b))

  results, decode = [], None
  compile_one = functools.partial(_compile, chip=chip)
  with target_platform(platform):
    for name, fn, args, resident in jobs:
      only_decode = bool(programs_wanted) and name == "sampler" and "decode" in programs_wanted
      if programs_wanted and name not in programs_wanted and not only_decode:
        continue
      if progress:
        progress(name)
      if isinstance(fn, ContinuousSampler):
        fits, started = continuous_jobs(name, fn, *args, resident, compile_one,
                                        start_only=only_decode and name not in programs_wanted)
        results.extend(fits)
        if name == "sampler" and started is not None and decode_context:
          if progress:
            progress(f"decode_step (context {decode_context})")
          step = decode_step_job(fn, args[0], started, key, T, decode_context, compile_one)
          reference = None
          if chip is not None:  # the cost model read against itself: the floor's bytes written as a program
            if progress:
              progress("decode_floor_reference")
            reference = reference_job(sampler_params, cfg, mesh, plan.sampler_rows, c.rl.samples_per_prompt, T,
                                      decode_context, compile_one)
          decode = _decode_report(step, chip, cfg, sampler_params, plan.sampler_rows, c.rl.samples_per_prompt, mesh,
                                  T, decode_context, reference)
      elif hasattr(fn, "program"):  # the static sampler: one program (a decode step is not costed alone)
        results.append(compile_one(name, fn.program, args, resident)[0])
      else:
        results.append(compile_one(name, fn, args, resident)[0] if args is not None else
                       _gather_fit(name, *fn, resident))
  fits = all(not r.error and r.total_bytes <= capacity for r in results)
  return {
      "topology": topology or f"local:{platform}", "chips": len(devices), "device_kind": devices[0].device_kind,
      "memory_per_chip_bytes": int(capacity), "mesh": dict(zip(("data", "fsdp", "tensor"), plan.mesh_shape)),
      "model": c.model.source, "dtype": c.model.dtype, "param_dtype": c.model.param_dtype,
      "state_per_chip_bytes": {"params": stored, "opt_state": moments, "ref_params": ref_b, "sampler_params": cast_b},
      "programs": {r.name: {"total_bytes": r.total_bytes, "program_bytes": r.program_bytes,
                            "argument_bytes": r.argument_bytes, "output_bytes": r.output_bytes,
                            "alias_bytes": r.alias_bytes, "temp_bytes": r.temp_bytes,
                            "resident_bytes": r.resident_bytes, "compile_s": round(r.compile_s, 2),
                            "fits": not r.error and r.total_bytes <= capacity, "error": r.error,
                            "flops": r.flops, "bytes_accessed": r.bytes_accessed, "predicted_s": r.predicted_s}
                   for r in results},
      "decode": decode,
      "fits": bool(fits),
  }


def _decode_report(step: ProgramFit, chip, model_cfg, sampler_params, rows: int, samples: int, mesh,
                   prompt_len: int, context: int, reference: ProgramFit | None = None) -> dict:
  """One decode step of the sampler's first bucket (`rows` slots, all live, each at `context` keys) against its
  floor on one chip: the compute-dtype weights it reads (whole per chip in the sampler's layout) plus its rows' KV."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  rows_chip = rows // shards if rows % shards == 0 else rows  # rows split over (data, fsdp) when they divide evenly
  out = {"batch": rows, "context": context, "rows_per_chip": rows_chip, "predicted_s": step.predicted_s,
         "flops": step.flops, "bytes_accessed": step.bytes_accessed, "compile_s": round(step.compile_s, 2),
         "error": step.error, "floor_s": None, "predicted_over_floor": None,
         "program_bytes": step.program_bytes}
  if chip is None:
    return out
  leaves = jax.tree_util.tree_flatten_with_path(sampler_params)[0]
  itemsize = max(jnp.dtype(x.dtype).itemsize for _, x in leaves)
  weight_bytes = per_chip_bytes(sampler_params)
  if not model_cfg.tie_word_embeddings:  # an untied embedding is looked up (a few rows), not read whole
    weight_bytes -= sum(per_chip_bytes(x) for p, x in leaves if jax.tree_util.keystr(p).startswith("['embed']"))
  cfg = model_cfg
  flops = rows_chip * (2 * weight_bytes / itemsize + 4 * context * cfg.num_heads * cfg.head_dim * cfg.num_layers)
  prompts_chip = max(1, -(-rows_chip // samples))  # samples of one prompt are consecutive rows
  floor = decode_floor(chip, weight_bytes=weight_bytes, rows=rows_chip, prompts=prompts_chip, prompt_len=prompt_len,
                       context=context, kv_token_bytes=kv_bytes_per_token(cfg, itemsize), flops=flops)
  out.update(chip=chip.name, prompts_per_chip=prompts_chip, **floor)
  if step.predicted_s:
    out["predicted_over_floor"] = step.predicted_s / floor["floor_s"]
  if reference is not None:
    out["reference"] = {"predicted_s": reference.predicted_s, "bytes_accessed": reference.bytes_accessed,
                        "flops": reference.flops, "error": reference.error, "compile_s": round(reference.compile_s, 2)}
    if reference.predicted_s and step.predicted_s:
      out["reference_over_floor"] = reference.predicted_s / floor["floor_s"]
      out["predicted_over_reference"] = step.predicted_s / reference.predicted_s
  return out


def format_report(report: dict) -> str:
  g = lambda b: f"{b / GiB:7.2f}"  # noqa: E731
  ms = lambda x: f"{1e3 * x:9.3f}" if x is not None else f"{'-':>9}"  # noqa: E731
  cap = report["memory_per_chip_bytes"]
  lines = [f"{report['model']} on {report['topology']} ({report['chips']} x {report['device_kind']}, "
           f"{cap / GiB:.2f} GiB per chip), mesh {report['mesh']}, compute {report['dtype']}, "
           f"storage {report['param_dtype']}",
           f"{'program':<20}{'args':>8}{'outputs':>8}{'aliased':>8}{'temps':>8}{'resident':>9}{'total':>8}"
           f"  {'of chip':>7}{'compile':>9}{'pred ms':>9}{'GB read':>8}  verdict",
           "-" * 117]
  for name, p in report["programs"].items():
    verdict = "fits" if p["fits"] else ("DOES NOT FIT" if not p["error"] or "RESOURCE_EXHAUSTED" in p["error"]
                                        else "ERROR")
    gb = f"{p['bytes_accessed'] / 1e9:8.3f}" if p.get("bytes_accessed") is not None else f"{'-':>8}"
    lines.append(f"{name:<20}{g(p['argument_bytes'])}{g(p['output_bytes'])}{g(p['alias_bytes'])}"
                 f"{g(p['temp_bytes'])}{g(p['resident_bytes']):>9}{g(p['total_bytes'])}  "
                 f"{100 * p['total_bytes'] / cap:6.1f}%{p['compile_s']:8.1f}s{ms(p.get('predicted_s'))}{gb}  {verdict}")
    if p["error"]:
      lines.append(f"  {p['error']}")
  lines.append(f"(GiB per chip; total = args + outputs - aliased (donated) + temps + resident state; pred ms and GB "
               f"read: the compiler's cost model per chip, a loop body counted once)  -> "
               f"{'FITS' if report['fits'] else 'DOES NOT FIT'}")
  d = report.get("decode")
  if d:
    line = (f"decode step: {d['batch']} rows ({d['rows_per_chip']} per chip) at {d['context']} keys: predicted "
            f"{ms(d['predicted_s']).strip()} ms")
    if d.get("floor_s"):
      line += (f", floor {1e3 * d['floor_s']:.3f} ms on {d['chip']} (weights {d['weight_bytes'] / 1e9:.3f} GB + KV "
               f"{d['kv_bytes'] / 1e9:.3f} GB read)")
      if d.get("predicted_over_floor"):
        line += f" -> predicted/floor {d['predicted_over_floor']:.2f}"
    lines.append(line)
    if d.get("predicted_over_reference"):
      lines.append(f"  the floor's bytes as a program (decode_floor_reference): predicted "
                   f"{1e3 * d['reference']['predicted_s']:.3f} ms, {d['reference_over_floor']:.2f}x the floor in this "
                   f"cost model; decode step / reference {d['predicted_over_reference']:.2f}")
  return "\n".join(lines)
