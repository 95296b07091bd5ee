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

from dashjax.models.attention import Segment, attend
from dashjax.models.compute import PLAIN, ComputeOptions, cast_floats, einsum_f32, remat_policy
from dashjax.models.config import ModelConfig
from dashjax.models.ragged import ragged_decode_attention
from dashjax.models.rope import apply_rope, inverse_frequencies


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

  def __call__(self, x_BxTxD, positions_BxT, valid_BxT, opts: ComputeOptions = PLAIN):
    """Causal self-attention over the sequence itself; also returns its KV (the prompt cache in prefill)."""
    q, k, v = self._project(x_BxTxD, positions_BxT)
    out = self._attend(q, [Segment(k, v, valid_BxT, 1, 0)], opts)
    return self._output(out, x_BxTxD.dtype), LayerKV(k, v)

  def decode(self, x_BxTxD, positions_BxT, prefix: LayerKV, prefix_valid_BpxS, cache: LayerKV | None, step, *,
             group: int, opts: ComputeOptions = PLAIN):
    """T new tokens per row against the prompt cache and the row's generated tokens (written at slots
    [step, step+T) of `cache`; with cache=None the T tokens are all there is, as in the learner)."""
    q, k, v = self._project(x_BxTxD, positions_BxT)
    if cache is None:
      k_all, v_all = k, v
    else:
      k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), step, axis=2)
      v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), step, axis=2)
    segments = [Segment(prefix.k, prefix.v, prefix_valid_BpxS, group, None), Segment(k_all, v_all, None, 1, step)]
    out = self._attend(q, segments, opts)
    return self._output(out, x_BxTxD.dtype), LayerKV(k_all, v_all)

  def decode_slots(self, x_SxTxD, positions_SxT, prefix: LayerKV, prefix_valid_PxT, prompt_idx_S, cache: LayerKV,
                   t_S, limit_S, block: int, shared_t=None):
    """One token per row, rows at their own steps: the key is written at slot t_S[s] of row s's cache and the query
    reads the row's prompt (prompt_idx_S) and its first limit_S generated keys (see `ragged`).

    `shared_t`: every row whose output counts is at this step; the keys are written as one column at shared_t (other
    rows' caches take a key they never read). The per-row scatter made the TPU compiler stage each layer's whole
    cache, all N slots, in and out of its on-chip memory at every step; a column write touches S x K x D values."""
    S = x_SxTxD.shape[0]
    q, k, v = self._project(x_SxTxD, positions_SxT)
    if shared_t is not None:
      k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), shared_t, axis=2)
      v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), shared_t, axis=2)
    else:
      rows = jnp.arange(S)
      k_all = cache.k.at[rows, :, t_S].set(k[:, :, 0].astype(cache.k.dtype))
      v_all = cache.v.at[rows, :, t_S].set(v[:, :, 0].astype(cache.v.dtype))
    qr = q[:, :, 0].reshape(S, self.cfg.num_kv_heads, -1, self.cfg.head_dim)
    out = ragged_decode_attention(qr, prefix.k, prefix.v, prefix_valid_PxT, prompt_idx_S, k_all, v_all, limit_S,
                                  self.cfg.head_dim ** -0.5, block)
    return self._output(out[:, :, :, None], x_SxTxD.dtype), LayerKV(k_all, v_all)

  def _attend(self, q_BxHxTxD, segments, opts: ComputeOptions):
    B, _, T, D = q_BxHxTxD.shape
    qr = q_BxHxTxD.reshape(B, self.cfg.num_kv_heads, -1, T, D)
    return attend(qr, segments, self.cfg.head_dim ** -0.5, opts.attention, opts.attention_block)


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

  def __call__(self, x, positions, valid, opts: ComputeOptions = PLAIN):
    a, kv = self.attn(self.attn_norm(x), positions, valid, opts)
    x = x + a
    return x + self.mlp(self.mlp_norm(x)), kv

  def decode(self, x, positions, *attn_args, group: int, opts: ComputeOptions = PLAIN):
    a, kv = self.attn.decode(self.attn_norm(x), positions, *attn_args, group=group, opts=opts)
    x = x + a
    return x + self.mlp(self.mlp_norm(x)), kv


  def decode_slots(self, x, positions, *attn_args):
    a, kv = self.attn.decode_slots(self.attn_norm(x), positions, *attn_args)
    x = x + a
    return x + self.mlp(self.mlp_norm(x)), kv


def _layer_fn(graphdef, call, opts: ComputeOptions, dtype):
  """(layer state, x, own inputs) -> (x, kv) for one decoder layer, with gathered weights and rematerialized as
  `opts` say. Weights are cast to the compute dtype before the gather (half the bytes moved) and inside the remat
  region (the gathered copy is dropped after the layer and rebuilt in backprop: at most one layer's is whole)."""

  def run(state, x, own):
    if opts.gather is not None:
      state = opts.gather(cast_floats(state, dtype))
    return call(nnx.merge(graphdef, state), x, own)

  return jax.checkpoint(run, policy=remat_policy(opts.remat)) if opts.remat != "none" else run


def _run_layers(layers, call, opts: ComputeOptions, dtype, x, own_per_layer):
  """Runs x through every layer; `call(layer, x, own)` gets that layer's own inputs (its prompt KV, its cache).

  Returns the last hidden states and the tuple of per-layer KVs. With `opts.scan_layers` the layers run as one
  `lax.scan` over a stacked compute-dtype copy of their weights: one layer is compiled instead of all of them.
  """
  plain = opts.remat == "none" and opts.gather is None  # the sampler's path: call the modules directly
  fn = None if plain else _layer_fn(nnx.split(layers[0])[0], call, opts, dtype)
  if not opts.scan_layers:
    kvs = []
    for layer, own in zip(layers, own_per_layer):
      x = opts.constrain(x) if opts.constrain is not None else x
      x, kv = call(layer, x, own) if plain else fn(nnx.split(layer)[1], x, own)
      kvs.append(kv)
    return x, tuple(kvs)
  fn = fn or _layer_fn(nnx.split(layers[0])[0], call, opts, dtype)
  stack = lambda *xs: jnp.stack(xs)  # noqa: E731
  states = jax.tree.map(stack, *[cast_floats(nnx.split(layer)[1], dtype) for layer in layers])
  owns = jax.tree.map(stack, *own_per_layer)

  def body(x, xs):
    x = opts.constrain(x) if opts.constrain is not None else x
    return fn(*xs[:1], x, xs[1])

  x, kvs = jax.lax.scan(body, x, (states, owns))
  return x, tuple(jax.tree.map(lambda a, i=i: a[i], kvs) for i in range(len(layers)))


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

  def _weight(self, opts: ComputeOptions, tree):
    """A top-level weight in the compute dtype, gathered over FSDP when `opts` say so."""
    tree = cast_floats(tree, self.dtype)
    return tree if opts.gather is None else opts.gather(tree)

  def output_weight(self, opts: ComputeOptions = PLAIN):
    """The vocabulary projection's weight in the compute dtype (gathered over FSDP when `opts` say so); computed once
    and passed to `logits` when the projection runs in chunks, so that its cast and its gradient are not per chunk."""
    if self.lm_head is None:
      return self._weight(opts, {"embed": self.embed[...]})["embed"]
    return self._weight(opts, {"lm_head": {"kernel": self.lm_head.kernel[...]}})["lm_head"]["kernel"]

  def logits(self, h_BxTxD, opts: ComputeOptions = PLAIN, weight=None):
    """Final norm and output projection, logits in float32."""
    h = self.final_norm(h_BxTxD)
    w = self.output_weight(opts) if weight is None else weight
    eq = "btd,vd->btv" if self.lm_head is None else "btd,dv->btv"
    return einsum_f32(eq, h, w.astype(h.dtype))

  def embed_tokens(self, tokens_BxT, opts: ComputeOptions = PLAIN):
    # Never gathered over FSDP: a lookup in the sharded table gives each chip its columns, and its gradient is a
    # scatter into the chip's shard (gathering would add a whole [V, D] table and its gradient per chip).
    x = self.embed[...].astype(self.dtype)[tokens_BxT]
    return opts.constrain(x) if opts.constrain is not None else x

  def hidden(self, tokens_BxT, valid_BxT=None, positions_BxT=None, opts: ComputeOptions = PLAIN):
    """Runs all layers over full sequences; returns the last hidden states and each layer's KV."""
    if valid_BxT is None:
      valid_BxT = jnp.ones(tokens_BxT.shape, bool)
    if positions_BxT is None:
      positions_BxT = positions_from_valid(valid_BxT)
    x = self.embed_tokens(tokens_BxT, opts)
    call = lambda layer, x, _: layer(x, positions_BxT, valid_BxT, opts)  # noqa: E731
    return _run_layers(self.layers, call, opts, self.dtype, x, [None] * len(self.layers))

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

  def decode_hidden(self, tokens_BxT, positions_BxT, prefix: PromptCache, cache: DecodeCache | None, step,
                    opts: ComputeOptions = PLAIN):
    """`decode` without the output projection: last hidden states [B, T, D] and the cache.

    With cache=None the T tokens are a row's whole generation so far (the learner's completions): their keys are
    the generated segment, with no cache slots to fill.
    """
    group = tokens_BxT.shape[0] // prefix.valid_BpxS.shape[0]
    x = self.embed_tokens(tokens_BxT, opts)
    caches = cache.layers if cache is not None else (None,) * len(self.layers)

    def call(layer, x, own):
      pkv, ckv = own
      return layer.decode(x, positions_BxT, pkv, prefix.valid_BpxS, ckv, step, group=group, opts=opts)

    x, kvs = _run_layers(self.layers, call, opts, self.dtype, x, list(zip(prefix.layers, caches)))
    return x, DecodeCache(kvs)

  def decode_slots(self, tokens_S, positions_S, prefix: PromptCache, prompt_idx_S, cache: DecodeCache, t_S, limit_S,
                   block: int = 128, shared_t=None):
    """One token per decode slot, each slot at its own step (the continuous sampler's decode).

    Slot s feeds tokens_S[s] at position positions_S[s], writes its KV at slot t_S[s] of its cache row, and attends
    to prompt prompt_idx_S[s] of `prefix` (None: prompt s // (S // P), grouped as in `decode`) plus its generated
    keys [0, limit_S[s]) (limit 0: an empty slot whose output is ignored). Returns logits [S, V] (float32) and the
    cache. `shared_t`: the one step of every slot whose output counts, when there is one (see `Attention`).
    """
    x = self.embed_tokens(tokens_S[:, None])
    positions = positions_S[:, None]
    kvs = []
    for layer, pkv, ckv in zip(self.layers, prefix.layers, cache.layers):
      x, kv = layer.decode_slots(x, positions, pkv, prefix.valid_BpxS, prompt_idx_S, ckv, t_S, limit_S, block,
                                 shared_t)
      kvs.append(kv)
    return self.logits(x)[:, 0], DecodeCache(tuple(kvs))
