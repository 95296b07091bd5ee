"""The jitted sampler: prefill once per prompt, then decode every row in one `lax.while_loop`.

`Sampler(graphdef, cfg)(params, prompt_tokens_PxT, prompt_valid_PxT, rng) -> Rollouts` is a pure function of the
parameter state. Rows come out prompt-major: row p * G + g is sample g of prompt p.

The whole generation is one XLA program, so the KV caches never leave it: XLA updates them in place inside the
loop (no per-step copies, nothing to donate across calls). With `share_prefix` the P prompts are prefilled once
and their caches are read by all G rows of the group; otherwise each prompt is repeated G times and prefilled
G times, which is the baseline the benchmark compares against.

Row r's t-th token is drawn from uniforms that depend only on (rng, r, t) (`draw.row_uniforms`), so the
continuous-batching sampler (continuous.py), which decodes rows in other batches and at other loop steps, returns the
same rows for the same key. `make_sampler` (continuous.py) picks one of the two from `SamplingConfig.continuous`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dashjax.sampling.draw import draw_tokens, row_uniforms


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  samples_per_prompt: int = 1
  share_prefix: bool = True
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0
  # `make_sampler` picks the continuous-batching sampler (see continuous.py) unless this is False.
  continuous: bool = True
  slots: int = 0  # continuous: decode slots, 0 = every row of the call
  chunk_steps: int = 0  # continuous: most decode steps per compiled chunk, 0 = until a compaction is possible
  min_slots: int = 4  # continuous: the smallest compiled batch that live rows are compacted into (one program each)
  bucket_step: int = 0  # continuous: compiled batches every `bucket_step` rows (then powers of two); 0: powers of two
  attention_block: int = 128  # continuous: generated keys read per block (only blocks up to the longest row)

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0 means greedy)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 disables nucleus sampling)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables top-k)")
    if self.samples_per_prompt < 1:
      raise ValueError(f"samples_per_prompt={self.samples_per_prompt} must be >= 1")
    for name, low in (("slots", 0), ("chunk_steps", 0), ("min_slots", 1), ("bucket_step", 0),
                      ("attention_block", 1)):
      if getattr(self, name) < low:
        raise ValueError(f"{name}={getattr(self, name)} must be >= {low}")


@dataclasses.dataclass(frozen=True)
class SamplerStats:
  """Where one sampler call's decode compute went. A slot-step is one row of one decode step; a row of length n
  needs n - 1 of them (its first token comes from the prefill), the rest were spent on rows already ended."""

  decode_steps: int  # decode iterations run
  slot_steps: int  # rows decoded summed over iterations (static: B * decode_steps)
  wasted_slot_steps: int  # slot_steps - sum(lengths - 1)
  chunks: int = 1  # compiled decode programs run (continuous: one per chunk)
  compactions: int = 0  # moves of the live rows into a smaller compiled batch

  @property
  def wasted_fraction(self) -> float:
    return self.wasted_slot_steps / max(self.slot_steps, 1)


def stats_from(lengths_B, decode_steps, slot_steps, **kw) -> SamplerStats:
  useful = int(np.sum(np.asarray(lengths_B, np.int64) - 1))
  return SamplerStats(int(decode_steps), int(slot_steps), int(slot_steps) - useful, **kw)


class Rollouts(NamedTuple):
  tokens_BxN: jax.Array  # completion ids; pad_id after the end of each row
  logprobs_BxN: jax.Array  # log-prob of each sampled token under the sampled distribution; 0 after the end
  lengths_B: jax.Array  # tokens generated, the EOS included
  truncated_B: jax.Array  # True where max_new_tokens was reached before an EOS
  decode_steps: jax.Array  # decode iterations run (the loop stops once every row is done)


def sample(graphdef, cfg: SamplingConfig, params, prompt_tokens_PxT, prompt_valid_PxT, rng) -> Rollouts:
  model = nnx.merge(graphdef, params)
  G, N = cfg.samples_per_prompt, cfg.max_new_tokens
  P = prompt_tokens_PxT.shape[0]
  B = P * G
  if cfg.share_prefix:
    last_logits, prefix = model.prefill(prompt_tokens_PxT, prompt_valid_PxT)
    logits_BxV = jnp.repeat(last_logits, G, axis=0)
  else:
    logits_BxV, prefix = model.prefill(jnp.repeat(prompt_tokens_PxT, G, axis=0),
                                       jnp.repeat(prompt_valid_PxT, G, axis=0))
  prompt_len_B = jnp.repeat(jnp.sum(prompt_valid_PxT, axis=-1, dtype=jnp.int32), G)
  eos = jnp.asarray(cfg.eos_ids if cfg.eos_ids else (-1,), jnp.int32)

  rows_B = jnp.arange(B, dtype=jnp.int32)

  def draw(step, logits):
    u = row_uniforms(rng, rows_B, jnp.full((B,), step, jnp.int32))
    return draw_tokens(logits, u, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)

  tok, lp = draw(0, logits_BxV)
  tokens = jnp.full((B, N), cfg.pad_id, jnp.int32).at[:, 0].set(tok)
  logprobs = jnp.zeros((B, N), jnp.float32).at[:, 0].set(lp)
  done = jnp.isin(tok, eos)
  lengths = jnp.ones((B,), jnp.int32)
  cache = model.init_decode_cache(B, N)

  def cond(carry):
    t, _, done, *_ = carry
    return (t + 1 < N) & ~jnp.all(done)

  def body(carry):
    t, tok, done, lengths, tokens, logprobs, cache = carry
    logits, cache = model.decode(tok[:, None], (prompt_len_B + t)[:, None], prefix, cache, t)
    new, lp = draw(t + 1, logits[:, 0])
    new = jnp.where(done, cfg.pad_id, new)
    lp = jnp.where(done, 0.0, lp)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], t + 1, axis=1)
    logprobs = jax.lax.dynamic_update_slice_in_dim(logprobs, lp[:, None], t + 1, axis=1)
    lengths = jnp.where(done, lengths, t + 2)
    done = done | jnp.isin(new, eos)
    return t + 1, new, done, lengths, tokens, logprobs, cache

  carry = (jnp.int32(0), tok, done, lengths, tokens, logprobs, cache)
  steps, _, done, lengths, tokens, logprobs, _ = jax.lax.while_loop(cond, body, carry)
  return Rollouts(tokens, logprobs, lengths, ~done, steps)


class Sampler:
  """A compiled sampler bound to a model structure and sampling settings.

  Call it with the parameter state (`nnx.split(model)[1]`), left-padded prompts and a PRNG key. It recompiles only
  when the prompt batch shape changes; pad prompts to a few fixed lengths to keep that rare.
  """

  def __init__(self, graphdef, cfg: SamplingConfig):
    self.graphdef, self.cfg = graphdef, cfg
    # The whole call is this one jitted program (lowerable on abstract inputs: the fit check compiles it).
    self.program = jax.jit(functools.partial(sample, graphdef, cfg))

  def __call__(self, params, prompt_tokens_PxT, prompt_valid_PxT, rng) -> Rollouts:
    return self.program(params, prompt_tokens_PxT, prompt_valid_PxT, rng)

  def stats(self, out: Rollouts) -> SamplerStats:
    """Decode compute of the call that returned `out` (pass a host copy: multi-process arrays are global): every
    row is decoded at every step until the last row ends."""
    lengths, steps = jax.device_get((out.lengths_B, out.decode_steps))
    return stats_from(lengths, steps, len(lengths) * int(steps))
