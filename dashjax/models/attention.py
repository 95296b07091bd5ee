"""Attention over several KV segments: plain (the reference), blockwise online softmax, and the platform's kernel.

A query block q [B, K, R, T, D] (K kv heads, R query heads per kv head) attends to a list of `Segment`s whose keys
are joined under one softmax: the prompt cache (shared by `group` consecutive rows, so G samples read one copy)
and the row's own keys. Masks are described, not materialized: key s of a segment is visible to query t when the
segment marks it valid and, for causal segments, s <= t + causal_offset.

  plain      scores [B, K, R, T, S] in float32, one softmax: fastest for short sequences, memory O(T * S).
  blockwise  a scan over key blocks with a running max and denominator (online softmax), the block rematerialized
             in backprop: memory O(T * block), any backend. The reference for every memory-saving path.
  fused      jax.nn.dot_product_attention with cuDNN on GPU (bfloat16/float16 compute); elsewhere blockwise.
             Opt-in: its layout and masks are tested through XLA's reference implementation of the same call on CPU,
             but it has not run on a GPU here yet.
  auto       blockwise on accelerators and on CPU when a segment is longer than 1024 keys; plain otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dashjax.models.compute import einsum_f32, platform

NEG_INF = -1e30
AUTO_PLAIN_MAX_KEYS = 1024  # on CPU, plain attention is faster and still small below this many keys


class Segment(NamedTuple):
  k: jax.Array  # [Bs, K, S, D], Bs = B // group
  v: jax.Array  # [Bs, K, S, D]
  valid: jax.Array | None = None  # [Bs, S] bool: keys that exist (prompt padding is False)
  group: int = 1  # query rows per KV row
  causal_offset: jax.Array | int | None = None  # key s visible to query t iff s <= t + offset; None: all visible


def resolve(impl: str, segments, dtype) -> str:
  if impl == "auto":
    if platform() in ("tpu", "gpu") or max(s.k.shape[2] for s in segments) > AUTO_PLAIN_MAX_KEYS:
      impl = "blockwise"
    else:
      impl = "plain"
  if impl == "fused" and (platform() != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16)):
    impl = "blockwise"  # cuDNN's kernel needs a GPU and half-precision operands
  return impl


def attend(q_BxKxRxTxD, segments, scale: float, impl: str = "plain", block: int = 512):
  """Softmax attention of q over the joined segments; float32 output [B, K, R, T, D]."""
  impl = resolve(impl, segments, segments[0].k.dtype)
  if impl == "plain":
    return _plain(q_BxKxRxTxD, segments, scale)
  if impl == "blockwise":
    return _blockwise(q_BxKxRxTxD, segments, scale, block)
  if impl == "fused":
    return _fused(q_BxKxRxTxD, segments, scale)
  raise ValueError(f"unknown attention implementation {impl!r}")


def _mask(seg: Segment, T: int, key_idx_S):
  """Visibility [Bs, 1, 1, 1, T, S] (broadcastable), or None when every key is visible."""
  mask = None
  if seg.valid is not None:
    mask = seg.valid[:, None, None, None, None, :]
  if seg.causal_offset is not None:
    causal = key_idx_S[None, :] <= jnp.arange(T)[:, None] + seg.causal_offset
    mask = causal[None, None, None, None] if mask is None else mask & causal
  return mask


def _scores(q, seg: Segment, scale, key_idx_S, k):
  """Masked float32 scores in the grouped layout [Bs, g, K, R, T, S]."""
  B, K, R, T, D = q.shape
  qg = q.reshape(B // seg.group, seg.group, K, R, T, D)
  s = einsum_f32("bgkrtd,bksd->bgkrts", qg, k) * scale
  mask = _mask(seg, T, key_idx_S)
  return s if mask is None else jnp.where(mask, s, NEG_INF), mask


def _weighted_values(p_grouped, v, shape):
  return einsum_f32("bgkrts,bksd->bgkrtd", p_grouped.astype(v.dtype), v).reshape(shape)


def _plain(q, segments, scale):
  B, K, R, T, D = q.shape
  scores = [_scores(q, seg, scale, jnp.arange(seg.k.shape[2]), seg.k)[0].reshape(B, K, R, T, -1)
            for seg in segments]
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
  out, start = 0.0, 0
  for seg, s in zip(segments, scores):
    S = s.shape[-1]
    p = probs[..., start:start + S].reshape(B // seg.group, seg.group, K, R, T, S)
    out = out + _weighted_values(p, seg.v, q.shape)
    start += S
  return out


def _blockwise(q, segments, scale, block):
  B, K, R, T, D = q.shape
  carry = (jnp.full((B, K, R, T), NEG_INF, jnp.float32), jnp.zeros((B, K, R, T), jnp.float32),
           jnp.zeros((B, K, R, T, D), jnp.float32))
  for seg in segments:
    Bs, _, S, _ = seg.k.shape
    bk = min(block, S)
    nb = -(-S // bk)
    pad = nb * bk - S
    valid = seg.valid if seg.valid is not None else jnp.ones((Bs, S), bool)
    k, v = seg.k, seg.v
    if pad:  # padded keys are invalid, so they take no weight
      k = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0)))
      v = jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0)))
      valid = jnp.pad(valid, ((0, 0), (0, pad)))
    blocks = (k.reshape(Bs, K, nb, bk, D).transpose(2, 0, 1, 3, 4), v.reshape(Bs, K, nb, bk, D).transpose(2, 0, 1, 3, 4),
              valid.reshape(Bs, nb, bk).transpose(1, 0, 2), jnp.arange(nb * bk).reshape(nb, bk))

    def body(carry, xs, seg=seg):
      m, l, acc = carry
      kb, vb, validb, idxb = xs
      s, mask = _scores(q, seg._replace(valid=validb), scale, idxb, kb)
      s = s.reshape(B, K, R, T, -1)
      mask = jnp.broadcast_to(mask, (B // seg.group, seg.group, K, R, T, s.shape[-1])).reshape(s.shape)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
      correction = jnp.exp(m - m_new)
      l = l * correction + jnp.sum(p, axis=-1)
      pg = p.reshape(B // seg.group, seg.group, K, R, T, -1)
      acc = acc * correction[..., None] + _weighted_values(pg, vb, q.shape)
      return (m_new, l, acc), None

    # Rematerialized per block: backprop keeps the running (m, l, acc) per block, never a block's scores.
    carry, _ = jax.lax.scan(jax.checkpoint(body), carry, blocks)
  _, l, acc = carry
  return acc / jnp.where(l > 0, l, 1.0)[..., None]


def _fused(q, segments, scale, implementation="cudnn"):
  """One cuDNN call over the joined keys; grouped segments are expanded to one KV row per query row."""
  B, K, R, T, D = q.shape
  ks, vs, masks = [], [], []
  for seg in segments:
    S = seg.k.shape[2]
    mask = _mask(seg, T, jnp.arange(S))
    mask = jnp.ones((B, T, S), bool) if mask is None else jnp.broadcast_to(
        mask[:, :, 0, 0], (B // seg.group, seg.group, T, S)).reshape(B, T, S)
    ks.append(jnp.repeat(seg.k, seg.group, axis=0))
    vs.append(jnp.repeat(seg.v, seg.group, axis=0))
    masks.append(mask)
  k = jnp.concatenate(ks, axis=2).transpose(0, 2, 1, 3)  # [B, S, K, D]
  v = jnp.concatenate(vs, axis=2).transpose(0, 2, 1, 3)
  mask = jnp.concatenate(masks, axis=-1)[:, None]  # [B, 1, T, S]
  qt = q.reshape(B, K * R, T, D).transpose(0, 2, 1, 3).astype(k.dtype)  # [B, T, N, D], heads kv-major
  out = jax.nn.dot_product_attention(qt, k, v, mask=mask, scale=scale, implementation=implementation)
  return out.transpose(0, 2, 1, 3).reshape(B, K, R, T, D).astype(jnp.float32)
