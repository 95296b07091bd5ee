"""Hugging Face checkpoints <-> our NNX state: safetensors read with numpy (no torch at run time)."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dashjax.models.config import ModelConfig, resolve_dtype
from dashjax.models.transformer import Transformer

# (our path inside a layer, HF name inside "model.layers.{i}.", transpose?)
_LAYER_MAP = [
    (("attn", "q", "kernel"), "self_attn.q_proj.weight", True),
    (("attn", "k", "kernel"), "self_attn.k_proj.weight", True),
    (("attn", "v", "kernel"), "self_attn.v_proj.weight", True),
    (("attn", "o", "kernel"), "self_attn.o_proj.weight", True),
    (("attn", "q", "bias"), "self_attn.q_proj.bias", False),
    (("attn", "k", "bias"), "self_attn.k_proj.bias", False),
    (("attn", "v", "bias"), "self_attn.v_proj.bias", False),
    (("attn", "q_norm", "scale"), "self_attn.q_norm.weight", False),
    (("attn", "k_norm", "scale"), "self_attn.k_norm.weight", False),
    (("mlp", "gate", "kernel"), "mlp.gate_proj.weight", True),
    (("mlp", "up", "kernel"), "mlp.up_proj.weight", True),
    (("mlp", "down", "kernel"), "mlp.down_proj.weight", True),
    (("attn_norm", "scale"), "input_layernorm.weight", False),
    (("mlp_norm", "scale"), "post_attention_layernorm.weight", False),
]


def _layer_entries(cfg: ModelConfig):
  for path, name, transpose in _LAYER_MAP:
    if path[-1] == "bias" and not cfg.qkv_bias:
      continue
    if path[1:2] in (("q_norm",), ("k_norm",)) and not cfg.qk_norm:
      continue
    yield path, name, transpose


def hf_to_pure(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
  """Maps HF tensor names to the nested dict layout of `nnx.to_pure_dict(state)`."""

  def take(name):
    if name not in tensors:
      raise KeyError(f"checkpoint is missing tensor {name!r} required by a {cfg.model_type} model")
    return tensors[name]

  pure = {"embed": take("model.embed_tokens.weight"),
          "final_norm": {"scale": take("model.norm.weight")},
          "layers": {}}
  for i in range(cfg.num_layers):
    layer = {}
    for path, name, transpose in _layer_entries(cfg):
      w = take(f"model.layers.{i}.{name}")
      node = layer
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = w.T if transpose else w
    pure["layers"][i] = layer
  if not cfg.tie_word_embeddings:
    pure["lm_head"] = {"kernel": take("lm_head.weight").T}
  return pure


def pure_to_hf(pure: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
  out = {"model.embed_tokens.weight": pure["embed"], "model.norm.weight": pure["final_norm"]["scale"]}
  for i in range(cfg.num_layers):
    for path, name, transpose in _layer_entries(cfg):
      node = pure["layers"][i]
      for key in path:
        node = node[key]
      out[f"model.layers.{i}.{name}"] = node.T if transpose else node
  if not cfg.tie_word_embeddings:
    out["lm_head.weight"] = pure["lm_head"]["kernel"].T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
  """All tensors of a single-file or sharded (model.safetensors.index.json) checkpoint as numpy arrays."""
  from safetensors.numpy import load_file

  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = sorted(f for f in os.listdir(folder) if re.fullmatch(r".*\.safetensors", f))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {folder!r} (a Hugging Face model folder was expected)")
  tensors = {}
  for name in files:
    tensors.update(_load_safetensors_file(os.path.join(folder, name), load_file))
  return tensors


def _load_safetensors_file(path, load_file):
  try:
    return load_file(path)
  except (TypeError, ValueError):
    # bfloat16 has no plain numpy dtype: read through ml_dtypes via the framework-agnostic reader.
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="flax") as f:
      for k in f.keys():
        out[k] = np.asarray(f.get_tensor(k))
    return out


def build_model(cfg: ModelConfig, pure: dict, dtype="float32", param_dtype=None) -> Transformer:
  """Creates the module without random init (eval_shape) and fills it with the given weights."""
  dtype = resolve_dtype(dtype)
  param_dtype = resolve_dtype(param_dtype) if param_dtype is not None else dtype
  abstract = nnx.eval_shape(lambda: Transformer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)

  def cast(path, leaf):
    arr = _lookup(pure, path)
    if tuple(arr.shape) != tuple(leaf.shape):
      raise ValueError(f"weight {'/'.join(map(str, path))} has shape {arr.shape}, model expects {leaf.shape}")
    return jnp.asarray(arr, dtype=leaf.dtype)

  values = jax.tree_util.tree_map_with_path(lambda p, x: cast(tuple(_key(k) for k in p), x), nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, values)
  return nnx.merge(graphdef, state)


def _key(k):
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


def _lookup(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def model_to_pure_numpy(model: Transformer, dtype=None) -> dict:
  """The parameters as host arrays, in `dtype` (default: as stored)."""
  _, state = nnx.split(model)
  target = None if dtype is None else np.dtype(resolve_dtype(dtype))
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), dtype=target or x.dtype), nnx.to_pure_dict(state))


def load_hf_folder(folder: str, dtype="float32", param_dtype="float32"):
  """(model, tokenizer) from a local Hugging Face folder: config.json, *.safetensors, tokenizer files."""
  from transformers import AutoConfig, AutoTokenizer

  if not os.path.exists(os.path.join(folder, "config.json")):
    raise FileNotFoundError(f"{folder!r} has no config.json; expected a Hugging Face model folder")
  cfg = ModelConfig.from_hf(AutoConfig.from_pretrained(folder))
  model = build_model(cfg, hf_to_pure(read_safetensors(folder), cfg), dtype, param_dtype)
  tokenizer = AutoTokenizer.from_pretrained(folder)
  return model, tokenizer


def save_hf(model: Transformer, tokenizer, out_dir: str, dtype=None) -> str:
  """Writes a transformers-loadable folder (config.json, model.safetensors, tokenizer files), the weights in their
  storage dtype (model.param_dtype) unless `dtype` ("bfloat16", ...) asks for another."""
  from safetensors.numpy import save_file

  os.makedirs(out_dir, exist_ok=True)
  cfg = model.cfg
  cfg.to_hf().save_pretrained(out_dir)
  save_file(pure_to_hf(model_to_pure_numpy(model, dtype), cfg), os.path.join(out_dir, "model.safetensors"),
            metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
  return out_dir
