"""Device meshes and parameter placement by logical axes.

Every parameter is described by logical axis names (vocab, embed, heads, mlp); a rule table maps those names to
mesh axes (data, fsdp, tensor). The learner and the sampler use different tables over the same mesh: the learner
shards weights over fsdp to save memory, the sampler keeps them whole on each data replica so decode steps need no
all-gathers. Scaling out is then a change of `mesh.*` sizes, not of code.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
ROW_AXES = ("data", "fsdp")  # batch rows are split over both: FSDP is data parallelism with sharded weights

# Parameter path (joined with "/") -> logical axes of its dimensions.
PARAM_LOGICAL_AXES = [
    (r"embed$", ("vocab", "embed")),
    (r"attn/(q|k|v)/kernel$", ("embed", "heads")),
    (r"attn/(q|k|v)/bias$", ("heads",)),
    (r"attn/o/kernel$", ("heads", "embed")),
    (r"mlp/(gate|up)/kernel$", ("embed", "mlp")),
    (r"mlp/down/kernel$", ("mlp", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"(norm|q_norm|k_norm)/scale$", (None,)),
]

LEARNER_RULES = {"vocab": "tensor", "embed": "fsdp", "heads": "tensor", "mlp": "tensor"}
SAMPLER_RULES = {"vocab": "tensor", "embed": None, "heads": "tensor", "mlp": "tensor"}


def make_mesh(shape: tuple[int, int, int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over the first prod(shape) of the given (default: all) devices."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  n = int(np.prod(shape))
  if devices.size < n:
    raise ValueError(f"mesh shape {shape} needs {n} devices, {devices.size} are available")
  return Mesh(devices[:n].reshape(shape), MESH_AXES)


def logical_axes(path: str, ndim: int):
  for pattern, axes in PARAM_LOGICAL_AXES:
    if re.search(pattern, path):
      if len(axes) != ndim:
        raise ValueError(f"parameter {path} has {ndim} dims, its sharding rule names {len(axes)}")
      return axes
  raise ValueError(f"no sharding rule matches parameter {path!r}; add one to PARAM_LOGICAL_AXES")


def spec_for(path: str, shape, mesh: Mesh, rules: dict) -> P:
  parts = []
  for dim, name in zip(shape, logical_axes(path, len(shape))):
    axis = rules.get(name) if name else None
    # A dimension that does not split evenly stays whole rather than failing (e.g. 3 kv heads on 2 devices).
    parts.append(axis if axis and dim % mesh.shape[axis] == 0 and mesh.shape[axis] > 1 else None)
  return P(*parts)


def param_shardings(params, mesh: Mesh, rules: dict):
  """A pytree of NamedShardings matching `params` (an nnx.State of parameters)."""

  def one(path, leaf):
    return NamedSharding(mesh, spec_for("/".join(_path_keys(path)), leaf.shape, mesh, rules))

  return jax.tree_util.tree_map_with_path(one, params)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Rows over (data, fsdp), every other dimension whole."""
  return NamedSharding(mesh, P(ROW_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def place_params(params, mesh: Mesh, rules: dict):
  return jax.device_put(params, param_shardings(params, mesh, rules))


def state_of(model) -> "nnx.State":
  return nnx.split(model)[1]


def gathered_rules(rules: dict) -> dict:
  """The rules with the fsdp axis dropped: a weight as each device needs it for compute (tensor splits stay)."""
  return {k: (None if v == "fsdp" else v) for k, v in rules.items()}


def fsdp_gather(mesh: Mesh, rules: dict = LEARNER_RULES):
  """For `ComputeOptions.gather`: constrains a parameter subtree to its gathered layout (an all-gather over fsdp in
  the forward pass, a reduce-scatter of its gradient in the backward pass). None when fsdp is 1 (nothing to do)."""
  if mesh.shape["fsdp"] == 1:
    return None
  rules = gathered_rules(rules)

  def gather(tree):
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, param_shardings(tree, mesh, rules))

  return gather


def row_axes_for(mesh: Mesh, rows: int) -> tuple[str, ...] | None:
  """The row axes that split `rows` evenly, largest first: (data, fsdp), else one of them, else None."""
  for axes in (ROW_AXES, ("fsdp",), ("data",)):
    n = int(np.prod([mesh.shape[a] for a in axes]))
    if n > 1 and rows % n == 0:
      return axes
  return None


def row_constraint(mesh: Mesh):
  """For `ComputeOptions.constrain`: activations [rows, ...] stay split by rows over (data, fsdp), so no chip ever
  holds the whole micro-batch's activations (the partitioner would otherwise follow the weights' fsdp split)."""
  if mesh.shape["data"] * mesh.shape["fsdp"] == 1:
    return None

  def constrain(x):
    axes = row_axes_for(mesh, x.shape[0])
    spec = P(axes, *([None] * (x.ndim - 1))) if axes else P()
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  return constrain


def _path_keys(path) -> tuple[str, ...]:
  keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
  return tuple(k for k in keys if k != "value")  # nnx Variables add a trailing ".value" to the path


def opt_state_shardings(opt_state, params, param_shardings_tree, mesh: Mesh):
  """Shardings for an optimizer state: every leaf shaped like a parameter (Adam's moments, found by the parameter's
  path at the end of its own) takes that parameter's sharding; the rest (step counts) is replicated.

  Spelled out because `jit(optimizer.init)` cannot infer it: zeros have no data dependence on the parameters, so
  XLA would replicate the moments on every chip, FSDP or not.
  """
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings_tree)):
    by_path[_path_keys(path)] = (tuple(p.shape), s)
  replicated_ = NamedSharding(mesh, P())

  def one(path, leaf):
    keys = _path_keys(path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated_

  return jax.tree_util.tree_map_with_path(one, opt_state)
