"""The decode floor written as a program, to read the TPU cost model against itself.

`bytes accessed` is the compiler's count of every operand and result of every instruction, on-chip copies included:
once a model's weights no longer fit on-chip memory they are staged into it in slices at each step, and the count
holds each weight byte at least twice (the copy from HBM, the matmul's read of the copy). Against the bandwidth
floor, which counts each byte once, any program that streams weights then looks slow, however little it reads.

The reference program reads exactly what the floor counts, in the plainest way: every weight of the sampler's
layout once, in a matmul with the step's rows (contracting its smaller side, as the model's matmuls do), and each
layer's live keys and values once (the prompt's once per prompt, the generated ones once per row), in the same
shardings as the decode step. It computes nothing useful. Compiled for the same slice, its count is what this cost
model charges for the floor's bytes, so the decode step's count over the reference's is the part of the gap that is
the decode path's own, and the reference's count over the floor the part that is the cost model's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from dashjax.parallel.mesh import row_axes_for


def _weights(sampler_params, tied: bool):
  """The leaves the floor counts: all but an untied embedding (looked up a few rows, not read whole)."""
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(sampler_params)[0]:
    if not tied and jax.tree_util.keystr(path).startswith("['embed']"):
      continue
    out.append(x)
  return out


def floor_reference(weights, h_BxW, k_prompt, v_prompt, k_gen, v_gen, samples: int):
  """Reads each weight and each live key and value once; returns one number per row."""
  h = h_BxW
  B = h.shape[0]
  for w in weights:
    if w.ndim == 1:
      h = h * (1.0 + 1e-6 * jnp.sum(h[:, :w.shape[0]] * w.astype(h.dtype), axis=-1, keepdims=True))
      continue
    m = w.reshape(-1, w.shape[-1])
    # contract the smaller side (an embedding [V, H] is read as the LM head, H -> V), in place: no transposed copy
    side = 0 if m.shape[0] <= m.shape[1] else 1
    y = jax.lax.dot_general(h[:, :m.shape[side]].astype(m.dtype), m, (((1,), (side,)), ((), ())),
                            preferred_element_type=jnp.float32)
    h = h * (1.0 + 1e-6 * jnp.sum(y, axis=-1, keepdims=True)).astype(h.dtype)
  # per layer, keys [rows, kv head, dim, key] and values [rows, kv head, key, dim]: each matmul's operand in the
  # order a batched matmul reads it (no backend copies a cache to transpose it), one array per layer (a slice of a
  # stacked cache is counted as a read of the whole stack by some backends)
  for layer in range(len(k_prompt)):
    P, KH, D, _ = k_prompt[layer].shape
    q = h[:, :KH * D].reshape(B, KH, D).astype(k_gen[layer].dtype)
    qp = q.reshape(P, samples, KH, D).transpose(0, 2, 1, 3)  # [prompt, head, sample, dim]
    s_prompt = jnp.einsum("pkgd,pkdt->pkgt", qp, k_prompt[layer], preferred_element_type=jnp.float32)
    o_prompt = jnp.einsum("pkgt,pktd->pkgd", s_prompt.astype(v_prompt[layer].dtype), v_prompt[layer],
                          preferred_element_type=jnp.float32)
    s_gen = jnp.einsum("bkd,bkdt->bkt", q, k_gen[layer], preferred_element_type=jnp.float32)
    o_gen = jnp.einsum("bkt,bktd->bkd", s_gen.astype(v_gen[layer].dtype), v_gen[layer],
                       preferred_element_type=jnp.float32)
    total = jnp.sum(o_prompt, axis=(1, 3)).reshape(B) + jnp.sum(o_gen, axis=(1, 2))
    h = h * (1.0 + 1e-6 * total[:, None]).astype(h.dtype)
  return jnp.sum(h.astype(jnp.float32), axis=-1)


def reference_job(sampler_params, model_cfg, mesh, rows: int, samples: int, prompt_len: int, context: int,
                  compile_one):
  """`floor_reference` compiled at the decode step's shapes and shardings: its ProgramFit (the compiler's count in
  `bytes_accessed`)."""
  cfg = model_cfg
  weights = _weights(sampler_params, cfg.tie_word_embeddings)
  dtype = max((w.dtype for w in weights), key=lambda d: jnp.dtype(d).itemsize)
  width = max(min(math.prod(w.shape[:-1]), w.shape[-1]) for w in weights if w.ndim > 1)
  width = max(width, cfg.num_kv_heads * cfg.head_dim)
  axes = row_axes_for(mesh, rows // samples)  # whole prompts per chip, as the sampler splits its rows

  def split(lead, ndim):  # rows on dimension `lead`, split as the sampler's
    return NamedSharding(mesh, PartitionSpec(*([None] * lead), axes, *([None] * (ndim - lead - 1))))

  gen = max(context - prompt_len, 1)
  P = rows // samples
  keys = lambda n, t: [jax.ShapeDtypeStruct((n, cfg.num_kv_heads, cfg.head_dim, t), dtype,  # noqa: E731
                                            sharding=split(0, 4)) for _ in range(cfg.num_layers)]
  values = lambda n, t: [jax.ShapeDtypeStruct((n, cfg.num_kv_heads, t, cfg.head_dim), dtype,  # noqa: E731
                                              sharding=split(0, 4)) for _ in range(cfg.num_layers)]
  h = jax.ShapeDtypeStruct((rows, width), dtype, sharding=split(0, 2))
  fn = jax.jit(lambda w, h, kp, vp, kg, vg: floor_reference(w, h, kp, vp, kg, vg, samples))
  return compile_one("decode_floor_reference", fn, (weights, h, keys(P, prompt_len), values(P, prompt_len),
                                                    keys(rows, gen), values(rows, gen)), 0)[0]
