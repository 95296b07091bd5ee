"""Decode-slot bookkeeping for the continuous sampler, all on device.

A sampler call has B = P * G rows (row p * G + g is sample g of prompt p). They are decoded in S <= B slots; each
slot holds one row at its own step, and its own generated-token KV cache. The state lives in two pytrees:

  CallState  per row, fixed size B: the output buffers and the queue of rows still to be decoded
  Slots      per slot, size S (a bucket): which row, at which token, the last token, whether it is live, the cache

`refill` gives every free slot the next queued row (in row order); `compact` gathers the live slots into a smaller
bucket once nothing is queued. Neither copies prompt KV: a slot reads its prompt's cache through row // G.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dashjax.models.transformer import DecodeCache, PromptCache


class Prompts(NamedTuple):
  """Read-only for the whole call: the prefilled prompts and each row's first token (drawn from the prefill)."""

  prefix: PromptCache  # [P, K, T, D] per layer
  prompt_len_P: jax.Array  # real tokens per prompt (the position of the first generated token)
  first_B: jax.Array  # each row's first token


class CallState(NamedTuple):
  tokens_BxN: jax.Array  # completion ids, pad_id after the end
  logprobs_BxN: jax.Array  # 0 after the end
  lengths_B: jax.Array  # tokens generated so far, the EOS included
  eos_B: jax.Array  # the row ended with an EOS
  queue_B: jax.Array  # rows that need decoding (their first token did not end them), in row order, then the rest
  num_queued: jax.Array  # [] how many entries of queue_B are real
  next: jax.Array  # [] the first queue entry not yet given a slot


class Slots(NamedTuple):
  cache: DecodeCache  # [S, K, N, D] per layer: slot t holds the row's generated token t
  row_S: jax.Array  # the row held (B: none)
  t_S: jax.Array  # index of the row's last token, the one the next step feeds
  tok_S: jax.Array  # that token
  live_S: jax.Array  # holds a row that has not ended


def bucket_sizes(slots: int, min_slots: int = 1, step: int = 0) -> tuple[int, ...]:
  """Compiled batch sizes, largest first: `slots`, then the multiples of `step` below it (step 0: none), then the
  powers of two below the smallest of those, down to `min_slots`. Finer steps waste fewer slot-steps on ended rows
  and cost one compiled program more per size."""
  sizes = [slots] + list(range((slots - 1) // step * step, 0, -step) if step else [])
  s = 1 << ((sizes[-1] - 1).bit_length() - 1) if sizes[-1] > 1 else 0  # the largest power of two below
  while s >= 1:
    sizes.append(s)
    s //= 2
  return tuple(x for x in sizes if x >= min_slots) or (slots,)


def empty_slots(model, S: int, N: int, B: int) -> Slots:
  zeros = jnp.zeros((S,), jnp.int32)
  return Slots(model.init_decode_cache(S, N), jnp.full((S,), B, jnp.int32), zeros, zeros, jnp.zeros((S,), bool))


def start_call(first_B, lp_B, eos_ids, N: int, pad_id: int) -> CallState:
  """Output buffers holding each row's first token, and the queue of rows that go on to be decoded."""
  B = first_B.shape[0]
  eos_B = jnp.isin(first_B, eos_ids)
  needs = ~eos_B & (N > 1)
  queue = jnp.argsort(~needs, stable=True).astype(jnp.int32)
  return CallState(jnp.full((B, N), pad_id, jnp.int32).at[:, 0].set(first_B),
                   jnp.zeros((B, N), jnp.float32).at[:, 0].set(lp_B), jnp.ones((B,), jnp.int32), eos_B, queue,
                   jnp.sum(needs, dtype=jnp.int32), jnp.int32(0))


def refill(call: CallState, slots: Slots, first_B) -> tuple[CallState, Slots]:
  """Each free slot takes the next queued row (at token 0, its first token from the prefill)."""
  B = first_B.shape[0]
  free = ~slots.live_S
  pos = call.next + jnp.cumsum(free, dtype=jnp.int32) - 1
  take = free & (pos < call.num_queued)
  new_row = call.queue_B[jnp.clip(pos, 0, B - 1)]
  row = jnp.where(take, new_row, jnp.where(slots.live_S, slots.row_S, B))
  slots = slots._replace(row_S=row, t_S=jnp.where(take, 0, slots.t_S),
                         tok_S=jnp.where(take, first_B[jnp.minimum(new_row, B - 1)], slots.tok_S),
                         live_S=slots.live_S | take)
  return call._replace(next=call.next + jnp.sum(take, dtype=jnp.int32)), slots


def record(call: CallState, slots: Slots, new_S, lp_S, eos_ids) -> tuple[CallState, Slots]:
  """Writes each live slot's new token (index t + 1 of its row) and ends rows at an EOS or at the last column."""
  B, N = call.tokens_BxN.shape
  row = jnp.where(slots.live_S, slots.row_S, B)  # free slots write nowhere (out of range: dropped)
  col = slots.t_S + 1
  is_eos = jnp.isin(new_S, eos_ids)
  call = call._replace(tokens_BxN=call.tokens_BxN.at[row, col].set(new_S, mode="drop"),
                       logprobs_BxN=call.logprobs_BxN.at[row, col].set(lp_S, mode="drop"),
                       lengths_B=call.lengths_B.at[row].set(col + 1, mode="drop"),
                       eos_B=call.eos_B.at[row].set(is_eos, mode="drop"))
  live = slots.live_S & ~is_eos & (col + 1 < N)
  # Free slots keep their step, so that their (ignored) cache writes stay inside the cache.
  return call, slots._replace(t_S=jnp.where(slots.live_S, col, slots.t_S), tok_S=new_S, live_S=live)


def compact(slots: Slots, size: int) -> Slots:
  """The live slots (in slot order), then free ones, gathered into a bucket of `size` slots."""
  order = jnp.argsort(~slots.live_S, stable=True)[:size]
  return jax.tree.map(lambda x: jnp.take(x, order, axis=0), slots)
