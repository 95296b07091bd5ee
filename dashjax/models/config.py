"""ModelConfig: one dataclass for the Llama, Qwen2/Qwen2.5 and Qwen3 decoder families."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPE_NAMES = tuple(_DTYPES)


def resolve_dtype(dtype: Any):
  if isinstance(dtype, str):
    if dtype not in _DTYPES:
      raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]
  return jnp.dtype(dtype).type if dtype is not None else jnp.float32


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer (hashable: usable as a jit static argument)."""

  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  # Hashable form of the scaling parameters: (("factor", 8.0), ...); empty for plain RoPE.
  rope_type: str = "default"
  rope_scaling: tuple[tuple[str, float | int], ...] = ()
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2/2.5
  qk_norm: bool = False  # Qwen3
  max_position_embeddings: int = 4096
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"model_type={self.model_type!r} is not supported; use one of {SUPPORTED_MODEL_TYPES}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    if self.rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(f"rope_type={self.rope_type!r} is not supported; use one of {SUPPORTED_ROPE_TYPES}")

  @property
  def rope_scaling_dict(self) -> dict[str, float | int]:
    return dict(self.rope_scaling)

  @classmethod
  def from_hf(cls, hf_config) -> "ModelConfig":
    """Builds a ModelConfig from a transformers config object (AutoConfig.from_pretrained(...))."""
    mt = hf_config.model_type
    if mt not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"model_type={mt!r} in config.json is not supported by dashjax; supported: {SUPPORTED_MODEL_TYPES}")
    if getattr(hf_config, "hidden_act", "silu") not in ("silu", "swish"):
      raise ValueError(f"hidden_act={hf_config.hidden_act!r} is not supported (SwiGLU with silu only)")
    if mt == "qwen2" and getattr(hf_config, "use_sliding_window", False):
      raise ValueError("use_sliding_window=True is not supported; set it to False in config.json")
    rope = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
    theta = rope.pop("rope_theta", None) or getattr(hf_config, "rope_theta", None) or 10000.0
    rope_type = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
    # Integers stay integers: transformers rejects e.g. original_max_position_embeddings=32.0 on save.
    scaling = tuple(sorted((k, v if isinstance(v, int) else float(v)) for k, v in rope.items()
                           if isinstance(v, (int, float))))
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    eos = hf_config.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    return cls(
        model_type=mt,
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        rms_norm_eps=hf_config.rms_norm_eps,
        rope_theta=float(theta),
        rope_type=rope_type,
        rope_scaling=scaling,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        qkv_bias=(mt == "qwen2") or bool(getattr(hf_config, "attention_bias", False)),
        qk_norm=(mt == "qwen3"),
        max_position_embeddings=getattr(hf_config, "max_position_embeddings", 4096),
        bos_token_id=getattr(hf_config, "bos_token_id", None),
        eos_token_ids=eos_ids,
        pad_token_id=getattr(hf_config, "pad_token_id", None),
    )

  def to_hf(self):
    """The equivalent transformers config object (for save_hf)."""
    import transformers

    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "qwen3": transformers.Qwen3Config, "mistral": transformers.MistralConfig}[self.model_type]
    rope_parameters = {"rope_type": self.rope_type, "rope_theta": self.rope_theta, **self.rope_scaling_dict}
    kw = dict(
        vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, rms_norm_eps=self.rms_norm_eps,
        rope_parameters=rope_parameters, tie_word_embeddings=self.tie_word_embeddings,
        max_position_embeddings=self.max_position_embeddings, bos_token_id=self.bos_token_id,
        eos_token_id=(list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else
                      (self.eos_token_ids[0] if self.eos_token_ids else None)),
        pad_token_id=self.pad_token_id,
    )
    if self.model_type in ("llama", "qwen3"):
      kw["attention_bias"] = self.qkv_bias
    return cls(**kw)
