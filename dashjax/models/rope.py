"""Rotary position embeddings with the checkpoint's theta and scaling (HF "rotate_half" layout)."""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np

from dashjax.models.config import ModelConfig


@functools.lru_cache(maxsize=64)
def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
  """Per-pair inverse frequencies [head_dim // 2], float32, after the checkpoint's scaling rule."""
  d = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
  s = cfg.rope_scaling_dict
  if cfg.rope_type == "linear":
    inv = inv / s["factor"]
  elif cfg.rope_type == "llama3":
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_ctx = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def apply_rope(x_BxHxTxD, positions_BxT, inv_freq):
  """Rotates the two halves of the last axis by position-dependent angles (computed in float32)."""
  angles = positions_BxT.astype(jnp.float32)[:, None, :, None] * jnp.asarray(inv_freq)[None, None, None, :]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x = x_BxHxTxD.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxHxTxD.dtype)
