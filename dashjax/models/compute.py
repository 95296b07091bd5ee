"""How a forward pass is computed, separate from what the model is: memory-saving switches and precision helpers.

`ComputeOptions` travels with a call (`model.hidden(..., opts=...)`), never inside the module, so the sampler and the
learner run the same graphdef with different settings (plain attention for decode, remat and blockwise attention in
backprop). Every option computes the same function; tests hold each one against the plain path.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("auto", "plain", "blockwise", "fused")

_TARGET_PLATFORM = contextvars.ContextVar("dashjax_target_platform", default=None)


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
  remat: str = "none"  # per decoder layer: none, full (keep only layer inputs), save_dots (keep matmul outputs)
  attention: str = "plain"  # plain, blockwise (online softmax over key blocks), fused (platform kernel), auto
  attention_block: int = 512  # keys per block for blockwise attention
  scan_layers: bool = False  # run the decoder layers as one lax.scan (compiles one layer instead of all)
  # Called on each layer's parameter state inside the (rematerialized) layer: FSDP gathers weights there, so that
  # the gathered copy lives for one layer only and its gradient is reduce-scattered back.
  gather: Callable | None = None
  # Called on the residual stream [B, T, D] at layer boundaries: keeps activations sharded by rows.
  constrain: Callable | None = None

  def __post_init__(self):
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"train.remat={self.remat!r} is not one of {REMAT_POLICIES}")
    if self.attention not in ATTENTION_IMPLS:
      raise ValueError(f"train.attention={self.attention!r} is not one of {ATTENTION_IMPLS}")
    if self.attention_block < 1:
      raise ValueError(f"train.attention_block={self.attention_block} must be >= 1")


PLAIN = ComputeOptions()


def remat_policy(name: str):
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  if name == "save_dots":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  raise ValueError(f"no remat policy {name!r}")


@contextlib.contextmanager
def target_platform(name: str):
  """Traces for `name` ("tpu", "gpu", "cpu") instead of the default backend: for ahead-of-time compiles."""
  token = _TARGET_PLATFORM.set(name)
  try:
    yield
  finally:
    _TARGET_PLATFORM.reset(token)


def platform() -> str:
  return _TARGET_PLATFORM.get() or jax.default_backend()


def cast_floats(tree, dtype):
  """The tree with its floating-point leaves in `dtype` (integer leaves untouched)."""
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def einsum_f32(eq: str, a, b):
  """einsum with float32 results from any operand dtype.

  TPUs and GPUs accumulate bfloat16 products in float32 natively (preferred_element_type). XLA:CPU rejects some
  bfloat16 x bfloat16 = float32 dots, so there the operands are upcast first: bfloat16 products are exact in float32,
  so the result is the same up to summation order.
  """
  if a.dtype == jnp.float32 and b.dtype == jnp.float32:
    return jnp.einsum(eq, a, b)
  if platform() == "cpu":
    return jnp.einsum(eq, a.astype(jnp.float32), b.astype(jnp.float32))
  return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32)
