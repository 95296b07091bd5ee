"""The sampler's programs for the fit check, as a run executes them.

With `sampling.continuous` (the default) a sampler call is several programs driven from the host (see
`dashjax.sampling.continuous`): `start`, one `chunk[S]` per bucket S and a `compact[S]` into each smaller bucket.
They are compiled here in the order a call runs them, each on the abstract outputs of the one before, with the
shardings the compiler gave those outputs: what is compiled is what a run would be handed. The static sampler is one
program.

The decode step is costed per iteration: the chunk program at a given bucket is a `while_loop` whose body is one
decode step, and the compiler's cost model counts a loop body once. The attention's inner loop over blocks of
generated keys is counted once too, so the costed chunk is compiled with one block spanning the `context` keys it
reads (the same bytes as the run's blocks of `sampling.attention_block`, one loop trip instead of several).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from dashjax.sampling.continuous import ContinuousSampler, mesh_of


def _abstract_outputs(jitted, args, compiled):
  """ShapeDtypeStructs of a compiled program's outputs, with the shardings the compiler chose for them."""
  shapes = jax.eval_shape(jitted, *args)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                      compiled.output_shardings)


def continuous_jobs(prefix: str, sampler: ContinuousSampler, params, tokens, valid, key, resident: int, compile_one,
                    start_only: bool = False):
  """Compiles start, every chunk bucket and compaction of one call of `sampler` -> (list of ProgramFit, start's
  abstract outputs or None).

  `compile_one(name, jitted, args, resident) -> (ProgramFit, compiled or None)`. A program that fails stops the
  chain (the next one's inputs are its outputs)."""
  mesh = key.sharding.mesh
  scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
  rows = tokens.shape[0] * sampler.cfg.samples_per_prompt
  sizes = sampler.buckets(rows)
  fits = []
  m = mesh_of(tokens)
  start = sampler.start_program(sizes[0], m)
  args = (params, tokens, valid, key)
  fit, compiled = compile_one(f"{prefix}/start", start, args, resident)
  fits.append(fit)
  if compiled is None:
    return fits, None
  started = prompts, call, slots = _abstract_outputs(start, args, compiled)
  if start_only:  # only what costing a decode step needs
    return fits, started
  for b, size in enumerate(sizes):
    nxt = sizes[b + 1] if b + 1 < len(sizes) else 0
    chunk = sampler.chunk_program(size, nxt, m)
    args = (params, prompts, call, slots, key, scalar)
    fit, compiled = compile_one(f"{prefix}/chunk[{size}]", chunk, args, resident)
    fits.append(fit)
    if compiled is None or not nxt:
      break
    call, slots, _ = _abstract_outputs(chunk, args, compiled)
    compact = sampler.compact_program(nxt, m)
    fit, compiled = compile_one(f"{prefix}/compact[{nxt}]", compact, (slots,), resident)
    fits.append(fit)
    if compiled is None:
      break
    slots = _abstract_outputs(compact, (slots,), compiled)
  return fits, started


def decode_step_sampler(sampler: ContinuousSampler, prompt_len: int, context: int, steps: int) -> ContinuousSampler:
  """A copy of `sampler` whose decode attention reads the `context - prompt_len` generated keys as one block and
  whose loop runs `steps` decode steps per trip."""
  generated = max(1, min(context - prompt_len, sampler.cfg.max_new_tokens))
  return ContinuousSampler(sampler.graphdef, dataclasses.replace(sampler.cfg, attention_block=generated),
                           steps_per_trip=steps)


def decode_step_job(sampler: ContinuousSampler, params, started, key, prompt_len: int, context: int, compile_one):
  """One decode step of the first bucket (every row live, each reading `context` keys) on `started`, the start
  program's abstract outputs. The chunk program is compiled with one and with two steps per loop trip; the
  difference of their costs is one step, free of what the chunk does once per call (layout copies of the cache
  on entry and exit). Returns the ProgramFit of the one-step chunk with the per-step cost in its cost fields."""
  prompts, call, slots = started
  size = slots.live_S.shape[0]
  scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(key.sharding.mesh, PartitionSpec()))
  fits = []
  for steps in (1, 2):
    costing = decode_step_sampler(sampler, prompt_len, context, steps)
    chunk = costing.chunk_program(size, 0, mesh_of(prompts.first_B))
    fits.append(compile_one(f"decode_step[x{steps}]", chunk, (params, prompts, call, slots, key, scalar), 0)[0])
  one, two = fits
  step = dataclasses.replace(one, name="decode_step", compile_s=one.compile_s + two.compile_s,
                             error=one.error or two.error)
  for field in ("flops", "bytes_accessed", "predicted_s"):
    a, b = getattr(one, field), getattr(two, field)
    setattr(step, field, (b - a) if a is not None and b is not None else None)
  return step
