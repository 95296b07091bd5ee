"""Decoder-only transformer in Flax NNX covering Llama, Qwen2/2.5 and Qwen3 from one ModelConfig.

Three entry points share the same layers:
  * `__call__(tokens_BxT, valid_BxT)`: full causal forward -> logits [B, T, V] (training, scoring).
  * `prefill(tokens_BxT, valid_BxT)`: prompt forward -> last-position logits and the prompt's KV cache.
  * `decode(tokens_Bx1, positions_Bx1, prefix, cache, step)`: one token per row against the prompt cache
    (optionally shared by G consecutive rows) plus a per-row cache of generated tokens.

KV caches are head-major, [batch, kv_heads, seq, head_dim]: on XLA:CPU the attention einsums are ~8x faster
than with [batch, seq, heads, dim] (see the design notes in the README).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dashjax.models.config import ModelConfig
from dashjax.models.rope import apply_rope, inverse_frequencies

_NEG_INF = -1e30


class LayerKV(NamedTuple):
  k: jax.Array  # [B, Hkv, S, Dh]
  v: jax.Array  # [B, Hkv, S, Dh]


class PromptCache(NamedTuple):
  """KV of the (left-padded) prompts, one entry per prompt; rows share it in groups of `group`."""

  layers: tuple[LayerKV, ...]
  valid_BpxS: jax.Array  # True where the prompt position holds a real token


class DecodeCache(NamedTuple):
  """KV of generated tokens, one entry per sampled row; slot t holds generated token t."""

  layers: tuple[LayerKV, ...]


def _normal(std):
  return nnx.initializers.normal(stddev=std)


class Linear(nnx.Module):
  def __init__(self, d_in, d_out, *, bias, dtype, param_dtype, rngs):
    self.kernel = nnx.Param(_normal(0.02)(rngs.params(), (d_in, d_out), param_dtype))
    self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype)) if bias else None
    self.dtype = dtype

  def __call__(self, x):
    y = x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  def __init__(self, dim, *, eps, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x):
    # Normalize in float32 and cast back before scaling, as the reference implementations do.
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


def _attend(q_BxKxRxTxD, segments, scale):
  """Softmax attention over several KV segments at once.

  Each segment is (k [Bs, K, S, D], v, mask broadcastable to [B, 1, 1, T, S], group) where `group`
  consecutive query rows share one KV row (Bs = B // group): that is how G samples of a prompt read its
  prompt cache without copying it.
  """
  B, K, R, T, D = q_BxKxRxTxD.shape
  scores = []
  for k, v, mask, group in segments:
    qg = q_BxKxRxTxD.reshape(B // group, group, K, R, T, D)
    s = jnp.einsum("bgkrtd,bksd->bgkrts", qg, k, preferred_element_type=jnp.float32)
    s = s.reshape(B, K, R, T, -1) * scale
    scores.append(jnp.where(mask, s, _NEG_INF))
  probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
  out, start = 0.0, 0
  for (k, v, mask, group), s in zip(segments, scores):
    p = probs[..., start:start + s.shape[-1]].astype(v.dtype)
    start += s.shape[-1]
    pg = p.reshape(B // group, group, K, R, T, -1)
    out = out + jnp.einsum("bgkrts,bksd->bgkrtd", pg, v, preferred_element_type=jnp.float32).reshape(B, K, R, T, D)
  return out


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs):
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = Linear(d, h * hd, bias=cfg.qkv_bias, **lin)
    self.k = Linear(d, kv * hd, bias=cfg.qkv_bias, **lin)
    self.v = Linear(d, kv * hd, bias=cfg.qkv_bias, **lin)
    self.o = Linear(h * hd, d, bias=False, **lin)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(hd, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
      self.k_norm = RMSNorm(hd, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    else:
      self.q_norm = self.k_norm = None
    self.cfg = cfg

  def _project(self, x_BxTxD, positions_BxT):
    cfg = self.cfg
    B, T, _ = x_BxTxD.shape

    def heads(y, n):  # [B, T, n*Dh] -> [B, n, T, Dh]
      return y.reshape(B, T, n, cfg.head_dim).transpose(0, 2, 1, 3)

    q, k, v = heads(self.q(x_BxTxD), cfg.num_heads), heads(self.k(x_BxTxD), cfg.num_kv_heads), heads(
        self.v(x_BxTxD), cfg.num_kv_heads)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    inv = inverse_frequencies(self.cfg)  # a trace-time constant, kept out of the model state
    return apply_rope(q, positions_BxT, inv), apply_rope(k, positions_BxT, inv), v

  def _output(self, out_BxKxRxTxD, dtype):
    B, K, R, T, D = out_BxKxRxTxD.shape
    out = out_BxKxRxTxD.reshape(B, K * R, T, D).transpose(0, 2, 1, 3).reshape(B, T, K * R * D)
    return self.o(out.astype(dtype))

  def __call__(self, x_BxTxD, positions_BxT, mask_Bx1x1xTxS):
    """Self-attention over the sequence itself; also returns its KV (the prompt cache in prefill)."""
    cfg = self.cfg
    q, k, v = self._project(x_BxTxD, positions_BxT)
    B, _, T, D = q.shape
    qr = q.reshape(B, cfg.num_kv_heads, -1, T, D)
    out = _attend(qr, [(k, v, mask_Bx1x1xTxS, 1)], cfg.head_dim ** -0.5)
    return self._output(out, x_BxTxD.dtype), LayerKV(k, v)

  def decode(self, x_BxTxD, positions_BxT, prefix: LayerKV, prefix_mask, group, cache: LayerKV, step, gen_mask):
    cfg = self.cfg
    q, k, v = self._project(x_BxTxD, positions_BxT)
    k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), step, axis=2)
    v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), step, axis=2)
    B, _, T, D = q.shape
    qr = q.reshape(B, cfg.num_kv_heads, -1, T, D)
    out = _attend(qr, [(prefix.k, prefix.v, prefix_mask, group), (k_all, v_all, gen_mask, 1)], cfg.head_dim ** -0.5)
    return self._output(out, x_BxTxD.dtype), LayerKV(k_all, v_all)


class MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs):
    lin = dict(bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = Linear(cfg.hidden_size, cfg.intermediate_size, **lin)
    self.up = Linear(cfg.hidden_size, cfg.intermediate_size, **lin)
    self.down = Linear(cfg.intermediate_size, cfg.hidden_size, **lin)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    self.attn = Attention(cfg, **kw)
    self.mlp_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    self.mlp = MLP(cfg, **kw)

  def __call__(self, x, positions, mask):
    a, kv = self.attn(self.attn_norm(x), positions, mask)
    x = x + a
    return x + self.mlp(self.mlp_norm(x)), kv

  def decode(self, x, positions, *attn_args):
    a, kv = self.attn.decode(self.attn_norm(x), positions, *attn_args)
    x = x + a
    return x + self.mlp(self.mlp_norm(x)), kv


def positions_from_valid(valid_BxT):
  """Position ids for left-padded rows: 0 at the first real token; pads get 0."""
  return jnp.maximum(jnp.cumsum(valid_BxT.astype(jnp.int32), axis=-1) - 1, 0)


class Transformer(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs):
    param_dtype = param_dtype or dtype
    self.cfg = cfg
    self.dtype = dtype
    self.embed = nnx.Param(_normal(0.02)(rngs.params(), (cfg.vocab_size, cfg.hidden_size), param_dtype))
    self.layers = nnx.List(
        [Block(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype)
    self.lm_head = None if cfg.tie_word_embeddings else Linear(
        cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def logits(self, h_BxTxD):
    """Final norm and output projection, logits in float32."""
    h = self.final_norm(h_BxTxD)
    if self.lm_head is None:
      return jnp.einsum("btd,vd->btv", h, self.embed[...].astype(h.dtype), preferred_element_type=jnp.float32)
    return jnp.einsum("btd,dv->btv", h, self.lm_head.kernel[...].astype(h.dtype),
                      preferred_element_type=jnp.float32)

  def hidden(self, tokens_BxT, valid_BxT=None, positions_BxT=None):
    """Runs all layers over full sequences; returns the last hidden states and each layer's KV."""
    if valid_BxT is None:
      valid_BxT = jnp.ones(tokens_BxT.shape, bool)
    if positions_BxT is None:
      positions_BxT = positions_from_valid(valid_BxT)
    T = tokens_BxT.shape[1]
    causal = jnp.tril(jnp.ones((T, T), bool))
    mask = causal[None, None, None] & valid_BxT[:, None, None, None, :]
    x = self.embed[...].astype(self.dtype)[tokens_BxT]
    kvs = []
    for layer in self.layers:
      x, kv = layer(x, positions_BxT, mask)
      kvs.append(kv)
    return x, tuple(kvs)

  def __call__(self, tokens_BxT, valid_BxT=None, positions_BxT=None):
    """Logits [B, T, V] (float32) for every position of (left-padded) sequences."""
    h, _ = self.hidden(tokens_BxT, valid_BxT, positions_BxT)
    return self.logits(h)

  def prefill(self, tokens_BxT, valid_BxT):
    """Prompt forward: logits at the last position [B, V] and the prompt cache."""
    h, kvs = self.hidden(tokens_BxT, valid_BxT)
    return self.logits(h[:, -1:])[:, 0], PromptCache(kvs, valid_BxT)

  def init_decode_cache(self, batch, max_len, dtype=None) -> DecodeCache:
    cfg = self.cfg
    shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    dtype = dtype or self.dtype
    return DecodeCache(tuple(LayerKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_layers)))

  def decode(self, tokens_BxT, positions_BxT, prefix: PromptCache, cache: DecodeCache, step):
    """Feeds T new tokens per row written at cache slots [step, step+T); returns logits [B, T, V] and the cache.

    Rows are grouped over the prompt cache: with P prompts and B rows, row b reads prompt b // (B // P).
    """
    h, cache = self.decode_hidden(tokens_BxT, positions_BxT, prefix, cache, step)
    return self.logits(h), cache

  def decode_hidden(self, tokens_BxT, positions_BxT, prefix: PromptCache, cache: DecodeCache, step):
    """`decode` without the output projection: last hidden states [B, T, D] and the cache."""
    B, T = tokens_BxT.shape
    group = B // prefix.valid_BpxS.shape[0]
    prefix_mask = jnp.repeat(prefix.valid_BpxS, group, axis=0)[:, None, None, None, :]
    S = cache.layers[0].k.shape[2]
    gen_mask = (jnp.arange(S)[None, :] <= step + jnp.arange(T)[:, None])[None, None, None]
    x = self.embed[...].astype(self.dtype)[tokens_BxT]
    new_layers = []
    for layer, pkv, ckv in zip(self.layers, prefix.layers, cache.layers):
      x, kv = layer.decode(x, positions_BxT, pkv, prefix_mask, group, ckv, step, gen_mask)
      new_layers.append(kv)
    return x, DecodeCache(tuple(new_layers))
