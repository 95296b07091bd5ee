"""Architectures known without a download: `model_config(source)` for the fit check and other shape-only work.

Hub names map to the figures of their published config.json; folders and .gguf files are read (headers only).
"""

from __future__ import annotations

import os

from dashjax.models.config import ModelConfig


def _qwen25(hidden, inter, layers, heads):
  return ModelConfig("qwen2", 151936, hidden, inter, layers, heads, 2, hidden // heads, rms_norm_eps=1e-6,
                     rope_theta=1e6, tie_word_embeddings=True, qkv_bias=True, max_position_embeddings=32768,
                     bos_token_id=151643, eos_token_ids=(151643,))


PRESETS = {
    "Qwen/Qwen2.5-0.5B": _qwen25(896, 4864, 24, 14),
    "Qwen/Qwen2.5-1.5B": _qwen25(1536, 8960, 28, 12),
    "Qwen/Qwen2.5-3B": _qwen25(2048, 11008, 36, 16),
    # The tiny-random alias: a 2-layer Llama over SmolLM2's 49152-token vocabulary.
    "tiny-random": ModelConfig("llama", 49152, 64, 128, 2, 4, 2, 16, tie_word_embeddings=True, rope_theta=1e5),
}
for _name in ("0.5B", "1.5B", "3B"):  # instruct variants share the architecture
  PRESETS[f"Qwen/Qwen2.5-{_name}-Instruct"] = PRESETS[f"Qwen/Qwen2.5-{_name}"]


def model_config(source: str) -> ModelConfig:
  """The architecture of a model source, without reading its weights."""
  if source in PRESETS:
    return PRESETS[source]
  from dashjax.models.loading import ALIASES

  if source in ALIASES:
    source = ALIASES[source]()
  if source.endswith(".gguf") and os.path.exists(source):
    from dashjax.models.gguf_io import GGUFFile, gguf_hf_config

    return ModelConfig.from_hf(gguf_hf_config(GGUFFile(source)))
  if os.path.isdir(source) and os.path.exists(os.path.join(source, "config.json")):
    from transformers import AutoConfig

    return ModelConfig.from_hf(AutoConfig.from_pretrained(source))
  raise ValueError(f"model source {source!r}: its architecture is not known offline; pass a local folder with "
                   f"config.json, a .gguf file, or one of {sorted(PRESETS)}")
