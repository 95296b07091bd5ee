"""Continuous-batching sampler: rows that have ended stop costing decode compute.

`ContinuousSampler(graphdef, cfg)(params, prompt_tokens_PxT, prompt_valid_PxT, rng) -> Rollouts`, the same call and
result as the static `Sampler` and, for the same key, the same tokens: row r's t-th token is drawn from uniforms that
depend only on (rng, r, t) (`draw.row_uniforms`), whichever slot or step decodes it.

A call runs as a few compiled programs driven from the host:
  start     prefill the P prompts once; draw every row's first token from its prompt's last logits; give the first
            S rows a decode slot (S = cfg.slots, or all B = P * G rows).
  chunk[S]  a `lax.while_loop` over decode steps of S slots, each at its own step (`Transformer.decode_slots`). A
            row that ends frees its slot, which takes the next queued row within the same step. The loop exits
            once nothing is queued and the live rows fit the next smaller bucket (or after cfg.chunk_steps steps).
  compact   gathers the live slots into the next smaller bucket (powers of two down to cfg.min_slots, or multiples
            of cfg.bucket_step first).
The host reads three scalars per chunk. Programs are compiled once per bucket size (and prompt shape), then reused
across calls whatever the mix of lengths. The G samples of a prompt read its single prefilled KV.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dashjax.parallel.mesh import row_constraint
from dashjax.sampling import slots as sl
from dashjax.sampling.draw import draw_tokens, row_uniforms
from dashjax.sampling.sampler import Rollouts, Sampler, SamplerStats, SamplingConfig, stats_from


class ContinuousSampler:
  """A continuous-batching sampler bound to a model structure and sampling settings (see the module doc).

  `traces` counts how often each program was traced (each trace is a compilation); `last_stats` describes the last
  call's decode compute.
  """

  def __init__(self, graphdef, cfg: SamplingConfig, steps_per_trip: int = 1):
    self.graphdef, self.cfg = graphdef, cfg
    # Decode steps per loop trip (the cond is checked between trips only): 2 serves the fit check, which costs one
    # step as the difference of the two programs; runs use 1.
    self.steps_per_trip = steps_per_trip
    self.traces: collections.Counter = collections.Counter()
    self.last_stats: SamplerStats | None = None
    self._eos = tuple(cfg.eos_ids) if cfg.eos_ids else (-1,)
    self._programs: dict[tuple, object] = {}

  def _draw(self, logits, rng, rows, t):
    c = self.cfg
    return draw_tokens(logits, row_uniforms(rng, rows, t), temperature=c.temperature, top_k=c.top_k, top_p=c.top_p)

  def _start_fn(self, params, tokens_PxT, valid_PxT, rng, S: int, mesh=None):
    self.traces[f"start[{S}]"] += 1
    c = self.cfg
    model = nnx.merge(self.graphdef, params)
    G, N = c.samples_per_prompt, c.max_new_tokens
    B = tokens_PxT.shape[0] * G
    last_logits_PxV, prefix = model.prefill(tokens_PxT, valid_PxT)
    rows = jnp.arange(B, dtype=jnp.int32)
    first, lp = self._draw(jnp.repeat(last_logits_PxV, G, axis=0), rng, rows, jnp.zeros_like(rows))
    prompts = sl.Prompts(prefix, jnp.sum(valid_PxT, axis=-1, dtype=jnp.int32), first)
    call = sl.start_call(first, lp, jnp.asarray(self._eos, jnp.int32), N, c.pad_id)
    if S == B:  # slot s holds row s for the whole call: its prompt is s // G, read without a gather
      slots = sl.Slots(model.init_decode_cache(S, N), rows, jnp.zeros_like(rows), first, ~call.eos_B & (N > 1))
      return prompts, call._replace(next=call.num_queued), _split_rows(slots, mesh)
    call, slots = sl.refill(call, sl.empty_slots(model, S, N, B), first)
    return prompts, call, _split_rows(slots, mesh)

  def _chunk_fn(self, next_size: int, mesh, params, prompts: sl.Prompts, call: sl.CallState, slots: sl.Slots, rng,
                max_steps):
    S = slots.live_S.shape[0]
    self.traces[f"chunk[{S}]"] += 1
    c = self.cfg
    model = nnx.merge(self.graphdef, params)
    G = c.samples_per_prompt
    B = call.lengths_B.shape[0]
    eos = jnp.asarray(self._eos, jnp.int32)
    # With a slot for every row (sampling.slots=0) nothing is ever queued: the rows start together and a live row
    # advances one token per step, so all live rows are at one step and their keys are written as one column.
    in_step = self.buckets(B)[0] == B

    def cond(carry):
      i, call, slots = carry
      live = jnp.sum(slots.live_S)
      can_compact = (call.next >= call.num_queued) & (live <= next_size)
      return (live > 0) & (i < max_steps) & ~can_compact

    def body(carry):
      i, call, slots = carry
      prompt_S = jnp.minimum(slots.row_S, B - 1) // G
      positions = prompts.prompt_len_P[prompt_S] + slots.t_S
      limit = jnp.where(slots.live_S, slots.t_S + 1, 0)
      grouped = None if S == B else prompt_S  # all rows in their own slots: grouped prompt reads (see _start_fn)
      shared_t = jnp.max(jnp.where(slots.live_S, slots.t_S, 0)) if in_step else None
      logits, cache = model.decode_slots(slots.tok_S, positions, prompts.prefix, grouped, slots.cache, slots.t_S,
                                         limit, c.attention_block, shared_t)
      new, lp = self._draw(logits, rng, slots.row_S, slots.t_S + 1)
      call, slots = sl.record(call, slots._replace(cache=cache), new, lp, eos)
      call, slots = sl.refill(call, slots, prompts.first_B)
      return i + 1, call, _split_rows(slots, mesh)

    def trip(carry):
      for _ in range(self.steps_per_trip):
        carry = body(carry)
      return carry

    steps, call, slots = jax.lax.while_loop(cond, trip, (jnp.int32(0), call, slots))
    info = jnp.stack([steps, jnp.sum(slots.live_S, dtype=jnp.int32), call.num_queued - call.next])
    return call, slots, info

  def _compact_fn(self, size: int, mesh, slots: sl.Slots):
    self.traces[f"compact[{slots.live_S.shape[0]}->{size}]"] += 1
    return _split_rows(sl.compact(slots, size), mesh)

  # The jitted programs of a call, one per (kind, bucket, mesh); public so that the fit check lowers the very
  # functions a run calls.
  def start_program(self, size: int, mesh=None):
    """`(params, tokens_PxT, valid_PxT, rng) -> (Prompts, CallState, Slots)` with `size` slots."""
    return self._program(("start", size, mesh), lambda: functools.partial(self._start_fn, S=size, mesh=mesh))

  def chunk_program(self, size: int, next_size: int, mesh=None):
    """`(params, prompts, call, slots, rng, max_steps) -> (call, slots, info)`: decode `size` slots until a
    compaction into `next_size` is possible (0: until every row ends)."""
    return self._program(("chunk", size, next_size, mesh),
                         lambda: functools.partial(self._chunk_fn, next_size, mesh), donate_argnums=(2, 3))

  def compact_program(self, size: int, mesh=None):
    """`slots -> slots` with the live rows moved into `size` slots (smaller outputs: nothing to donate)."""
    return self._program(("compact", size, mesh), lambda: functools.partial(self._compact_fn, size, mesh))

  def _program(self, key, fn, **jit_kw):
    if key not in self._programs:
      self._programs[key] = jax.jit(fn(), **jit_kw)
    return self._programs[key]

  def buckets(self, rows: int) -> tuple[int, ...]:
    slots = min(rows, self.cfg.slots) if self.cfg.slots else rows
    return sl.bucket_sizes(slots, self.cfg.min_slots, self.cfg.bucket_step)

  def __call__(self, params, prompt_tokens_PxT, prompt_valid_PxT, rng) -> Rollouts:
    c = self.cfg
    sizes = self.buckets(prompt_tokens_PxT.shape[0] * c.samples_per_prompt)
    mesh = mesh_of(prompt_tokens_PxT)
    prompts, call, slots = self.start_program(sizes[0], mesh)(params, prompt_tokens_PxT, prompt_valid_PxT, rng)
    max_steps = jnp.int32(c.chunk_steps or c.max_new_tokens)
    b, steps, slot_steps, chunks, compactions = 0, 0, 0, 0, 0
    while True:
      nxt = sizes[b + 1] if b + 1 < len(sizes) else 0
      call, slots, info = self.chunk_program(sizes[b], nxt, mesh)(params, prompts, call, slots, rng, max_steps)
      ran, live, queued = (int(x) for x in jax.device_get(info))
      chunks, steps, slot_steps = chunks + 1, steps + ran, slot_steps + sizes[b] * ran
      if live == 0 and queued == 0:
        break
      while queued == 0 and b + 1 < len(sizes) and live <= sizes[b + 1]:
        b, compactions = b + 1, compactions + 1
        slots = self.compact_program(sizes[b], mesh)(slots)
    self.last_stats = stats_from(jax.device_get(call.lengths_B), steps, slot_steps, chunks=chunks,
                                 compactions=compactions)
    return Rollouts(call.tokens_BxN, call.logprobs_BxN, call.lengths_B, ~call.eos_B, jnp.int32(steps))

  def stats(self, out: Rollouts) -> SamplerStats:
    """Decode compute of the last call (`out` is its result), counted on the host as it ran."""
    return self.last_stats

  def warmup(self, params, prompt_tokens_PxT, prompt_valid_PxT, rng):
    """Compiles every program a call of this prompt shape can need (each bucket's chunk and compaction) without
    decoding: later calls of that shape compile nothing."""
    c = self.cfg
    sizes = self.buckets(prompt_tokens_PxT.shape[0] * c.samples_per_prompt)
    mesh = mesh_of(prompt_tokens_PxT)
    prompts, call, slots = self.start_program(sizes[0], mesh)(params, prompt_tokens_PxT, prompt_valid_PxT, rng)
    for b, size in enumerate(sizes):
      nxt = sizes[b + 1] if b + 1 < len(sizes) else 0
      call, slots, _ = self.chunk_program(size, nxt, mesh)(params, prompts, call, slots, rng, jnp.int32(0))
      if nxt:
        slots = self.compact_program(nxt, mesh)(slots)
    jax.block_until_ready(slots)


def mesh_of(x):
  """The device mesh an input array (or abstract array) is laid out over, or None (one device, host arrays)."""
  mesh = getattr(getattr(x, "sharding", None), "mesh", None)
  return mesh if isinstance(mesh, jax.sharding.Mesh) and mesh.size > 1 else None


def _split_rows(slots: sl.Slots, mesh) -> sl.Slots:
  """The slots (their KV caches above all) split by rows over the mesh's (data, fsdp) chips, as the prompts are.
  Left to the compiler, the start program returned every chip the whole cache: 6 GiB per chip for Qwen2.5-0.5B's
  256 rows x 2048 tokens on a v5e-8, and more than a v5e chip holds for 3B."""
  constrain = row_constraint(mesh) if mesh is not None else None
  return slots if constrain is None else jax.tree.map(constrain, slots)


def make_sampler(graphdef, cfg: SamplingConfig):
  """The sampler `cfg` asks for: continuous batching (`cfg.continuous`) or the static one-program sampler."""
  return ContinuousSampler(graphdef, cfg) if cfg.continuous else Sampler(graphdef, cfg)
