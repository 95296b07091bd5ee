"""Model and checkpoint I/O against transformers' PyTorch implementations, on tiny random checkpoints.

Run with `-s` to see the measured errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config

from conftest import LLAMA3_ROPE, SMALL_VOCAB
from dashjax.models.config import ModelConfig, resolve_dtype
from dashjax.models.hf_io import build_model, hf_to_pure, model_to_pure_numpy, read_safetensors, save_hf
from dashjax.models.loading import load_model
from dashjax.models.rope import inverse_frequencies

LINEAR_ROPE = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}


@pytest.fixture(autouse=True)
def _exact_matmuls():
  # Parity tolerances assume true float32 matmuls (no TF32/bf16 passes on accelerators).
  with jax.default_matmul_precision("highest"):
    yield


# Jitted entry points: eager op-by-op dispatch is several times slower here, and jit is how models really run.
# The decode step is traced, so one compilation serves every step.
@nnx.jit
def _forward(model, tokens, valid):
  return model(tokens, valid)


@nnx.jit
def _prefill(model, tokens, valid):
  return model.prefill(tokens, valid)


@nnx.jit
def _decode(model, tokens, positions, prefix, cache, step):
  return model.decode(tokens, positions, prefix, cache, step)


def _fwd(model, tokens, valid=None):
  tokens = jnp.asarray(tokens)
  valid = jnp.ones(tokens.shape, bool) if valid is None else jnp.asarray(valid)
  return np.asarray(_forward(model, tokens, valid))


def _ours(folder, dtype="float32"):
  cfg = ModelConfig.from_hf(AutoConfig.from_pretrained(folder))
  return build_model(cfg, hf_to_pure(read_safetensors(folder), cfg), dtype)


def _torch(folder):
  return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _left_pad(rows, T):
  tokens = np.zeros((len(rows), T), np.int32)
  valid = np.zeros((len(rows), T), bool)
  for i, r in enumerate(rows):
    tokens[i, T - len(r):] = r
    valid[i, T - len(r):] = True
  return tokens, valid


def _rel(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(got - ref).max() / np.abs(ref).max())


def _torch_logits(model, tokens_1d):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens_1d, np.int64))[None]).logits[0].numpy()


def _random_rows(seed, lens, vocab):
  rng = np.random.RandomState(seed)
  return [rng.randint(0, vocab, n) for n in lens]


# -------------------------------------------------------------------------------------------------- logits parity

PARITY_CASES = {
    "llama": ("llama", {}),
    "llama-rope-llama3": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "llama-rope-linear": ("llama", {"rope_parameters": LINEAR_ROPE}),
    "qwen2-tied-bias": ("qwen2", {}),
    "qwen3-qknorm-headdim32": ("qwen3", {}),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_logits_match_transformers_on_left_padded_batch(tiny_hf_model, case):
  family, overrides = PARITY_CASES[case]
  folder = tiny_hf_model(family, tokenizer=False, **overrides)
  ref_model, ours = _torch(folder), _ours(folder)
  cfg = ours.cfg
  # The checkpoint's features really are exercised (a misread config would make the parity vacuous).
  assert cfg.qkv_bias == (family == "qwen2") and cfg.qk_norm == (family == "qwen3")
  assert cfg.tie_word_embeddings == (family == "qwen2") and (ours.lm_head is None) == cfg.tie_word_embeddings
  if family == "qwen3":
    assert cfg.head_dim == 32 != cfg.hidden_size // cfg.num_heads
  assert cfg.rope_type == overrides.get("rope_parameters", {}).get("rope_type", "default")
  inv_err = _rel(inverse_frequencies(cfg), ref_model.model.rotary_emb.inv_freq.numpy())
  assert inv_err < 1e-6

  lens = [24, 17, 9]
  rows = _random_rows(1, lens, SMALL_VOCAB)
  tokens, valid = _left_pad(rows, max(lens))
  got = _fwd(ours, tokens, valid)
  assert got.dtype == np.float32 and got.shape == (3, max(lens), SMALL_VOCAB)
  # Reference: each row alone and unpadded, so padding must not leak into real positions.
  errs = [_rel(got[i][valid[i]], _torch_logits(ref_model, r)) for i, r in enumerate(rows)]
  print(f"\n[parity] {case}: rel logits err per row {['%.2e' % e for e in errs]}, inv_freq err {inv_err:.1e}")
  assert max(errs) < 1e-4


# -------------------------------------------------------------------------------------------------- KV cache

# Two families keep compile time down: between them they cover rope scaling, GQA 2:1 and 4:1, qk norm and
# head_dim != hidden/heads; biases and tied embeddings go through the same code as the full forward.
@pytest.mark.parametrize("family,overrides", [("llama", {"rope_parameters": LLAMA3_ROPE}), ("qwen3", {})],
                         ids=["llama3", "qwen3"])
def test_prefill_then_decode_matches_full_forward(tiny_hf_model, family, overrides):
  model = _ours(tiny_hf_model(family, tokenizer=False, **overrides))
  lens, N = [12, 7, 3], 6
  prompts, valid = _left_pad(_random_rows(2, lens, SMALL_VOCAB), max(lens))
  Tp = prompts.shape[1]
  cont = np.random.RandomState(3).randint(0, SMALL_VOCAB, (len(lens), N)).astype(np.int32)
  full = _fwd(model, np.concatenate([prompts, cont], 1), np.concatenate([valid, np.ones_like(cont, bool)], 1))
  # Logits after prompt token Tp-1 and after each continuation token.
  want = full[:, Tp - 1:]
  start = valid.sum(1).astype(np.int32)[:, None]  # position of the first generated token

  last, prefix = _prefill(model, jnp.asarray(prompts), jnp.asarray(valid))
  err_prefill = _rel(last, want[:, 0])

  cache = model.init_decode_cache(len(lens), N)
  stepwise = []
  for t in range(N):
    logits, cache = _decode(model, jnp.asarray(cont[:, t:t + 1]), jnp.asarray(start + t), prefix, cache, t)
    stepwise.append(np.asarray(logits[:, 0]))
  err_step = _rel(np.stack(stepwise, 1), want[:, 1:])

  # Several tokens per call (causal inside the chunk, attending to the earlier chunk through the cache).
  cache = model.init_decode_cache(len(lens), N)
  chunks = []
  for t in range(0, N, 3):
    logits, cache = _decode(model, jnp.asarray(cont[:, t:t + 3]), jnp.asarray(start + t + np.arange(3)), prefix,
                            cache, t)
    chunks.append(np.asarray(logits))
  err_chunk = _rel(np.concatenate(chunks, 1), want[:, 1:])
  print(f"\n[decode] {family}: prefill {err_prefill:.1e}, token-by-token {err_step:.1e}, chunked {err_chunk:.1e}")
  assert max(err_prefill, err_step, err_chunk) < 1e-5


def test_prefix_sharing_matches_repeated_prompts(tiny_hf_model):
  model = _ours(tiny_hf_model("qwen3", tokenizer=False))
  P, G, N = 2, 3, 4
  lens = [11, 6]
  prompts, valid = _left_pad(_random_rows(4, lens, SMALL_VOCAB), max(lens))
  # Every row continues with different tokens, as G samples of one prompt would.
  cont = np.random.RandomState(5).randint(0, SMALL_VOCAB, (P * G, N)).astype(np.int32)
  start = np.repeat(valid.sum(1), G).astype(np.int32)[:, None]

  def run(tokens, valid_rows):
    last, prefix = _prefill(model, jnp.asarray(tokens), jnp.asarray(valid_rows))
    cache = model.init_decode_cache(P * G, N)
    out = []
    for t in range(N):
      logits, cache = _decode(model, jnp.asarray(cont[:, t:t + 1]), jnp.asarray(start + t), prefix, cache, t)
      out.append(np.asarray(logits[:, 0]))
    return np.asarray(last), np.stack(out, 1)

  shared_first, shared = run(prompts, valid)
  assert shared_first.shape[0] == P  # one prefill row per prompt: the cache is not copied G times
  rep_first, repeated = run(np.repeat(prompts, G, 0), np.repeat(valid, G, 0))
  err_first = _rel(np.repeat(shared_first, G, 0), rep_first)
  err_decode = _rel(shared, repeated)
  print(f"\n[prefix sharing] P={P} G={G}: first-token {err_first:.1e}, decode {err_decode:.1e}")
  assert err_first < 1e-6 and err_decode < 1e-5
  # Rows of a group really differ after their own tokens, and rows read their own prompt (b // G).
  assert np.abs(shared[0, 1:] - shared[1, 1:]).max() > 1e-3
  assert np.abs(shared[0, 0] - shared[G, 0]).max() > 1e-3


# -------------------------------------------------------------------------------------------------- save / load

def test_save_hf_roundtrip_with_tokenizer(tiny_hf_model, tmp_path):
  folder = tiny_hf_model("llama", rope_parameters=LLAMA3_ROPE)
  model, tok = load_model(folder)
  out = save_hf(model, tok, str(tmp_path / "saved"))
  for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
    assert os.path.exists(os.path.join(out, name)), name

  text = "The quick brown fox, 12 + 30 = 42."
  tok2 = AutoTokenizer.from_pretrained(out)
  assert tok2(text)["input_ids"] == tok(text)["input_ids"] and len(tok2) == len(tok) == model.cfg.vocab_size
  assert (tok2.eos_token, tok2.bos_token) == (tok.eos_token, tok.bos_token)

  ids = tok(text)["input_ids"]
  ours = _fwd(model, [ids])[0]
  with open(os.path.join(out, "config.json")) as f:
    rope = json.load(f)["rope_parameters"]
  # Integer fields must stay integers: transformers rejects original_max_position_embeddings=32.0.
  assert rope == LLAMA3_ROPE and isinstance(rope["original_max_position_embeddings"], int), rope
  hf = _torch(out)
  err_hf = _rel(ours, _torch_logits(hf, ids))
  err_src = _rel(ours, _torch_logits(_torch(folder), ids))

  model2, _ = load_model(out)
  assert model2.cfg == model.cfg
  p1, p2 = model_to_pure_numpy(model), model_to_pure_numpy(model2)
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  np.testing.assert_array_equal(_fwd(model2, [ids])[0], ours)
  print(f"\n[save_hf] llama3-rope + tokenizer: vs transformers(saved) {err_hf:.1e}, vs transformers(source) "
        f"{err_src:.1e}, reload identical")
  assert err_hf < 1e-4 and err_src < 1e-4


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_save_hf_roundtrip_config_features(tiny_hf_model, tmp_path, family):
  # Tied embeddings (qwen2) and head_dim != hidden/heads (qwen3) must survive config.json.
  folder = tiny_hf_model(family, tokenizer=False)
  model = _ours(folder)
  out = save_hf(model, None, str(tmp_path / "saved"))
  ids = _random_rows(6, [15], SMALL_VOCAB)[0]
  ours = _fwd(model, [ids])
  err = _rel(ours[0], _torch_logits(_torch(out), ids))
  model2 = _ours(out)
  assert model2.cfg == model.cfg
  np.testing.assert_array_equal(_fwd(model2, [ids]), ours)
  print(f"\n[save_hf] {family}: vs transformers(saved) {err:.1e}, reload identical")
  assert err < 1e-4


def test_sharded_checkpoint_loads_identically(tiny_hf_model, tmp_path):
  folder = tiny_hf_model("llama")
  out = str(tmp_path / "sharded")
  _torch(folder).save_pretrained(out, max_shard_size="4MB")
  for f in os.listdir(folder):
    if f.startswith("tokenizer") or f.endswith(".jinja"):
      shutil.copy(os.path.join(folder, f), out)
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    shards = set(json.load(f)["weight_map"].values())
  assert len(shards) > 1 and not os.path.exists(os.path.join(out, "model.safetensors"))

  single, sharded = read_safetensors(folder), read_safetensors(out)
  assert sorted(single) == sorted(sharded)
  for k in single:
    np.testing.assert_array_equal(single[k], sharded[k], err_msg=k)
  (m1, _), (m2, _) = load_model(folder), load_model(out)
  ids = _random_rows(7, [10], m1.cfg.vocab_size)
  np.testing.assert_array_equal(_fwd(m1, ids), _fwd(m2, ids))
  print(f"\n[sharded] {len(shards)} shards, {len(sharded)} tensors identical, logits identical")


def test_bfloat16_checkpoint_reads(tiny_hf_model, tmp_path):
  # Released checkpoints are usually stored in bfloat16, which plain numpy cannot represent.
  folder = tiny_hf_model("qwen2", tokenizer=False)
  out = str(tmp_path / "bf16")
  _torch(folder).to(torch.bfloat16).save_pretrained(out)
  f32, bf16 = read_safetensors(folder), read_safetensors(out)
  assert sorted(f32) == sorted(bf16)
  for k, v in bf16.items():
    assert v.dtype == jnp.bfloat16, (k, v.dtype)
    np.testing.assert_array_equal(v, f32[k].astype(jnp.bfloat16), err_msg=k)
  model = _ours(out)  # float32 compute from bfloat16 weights
  assert np.isfinite(_fwd(model, _random_rows(8, [12], SMALL_VOCAB))).all()


def test_bfloat16_compute_close_to_float32(tiny_hf_model):
  folder = tiny_hf_model("qwen3", tokenizer=False)
  m32, m16 = _ours(folder), _ours(folder, dtype="bfloat16")
  assert m16.embed[...].dtype == jnp.bfloat16 and m16.layers[0].attn.q.kernel[...].dtype == jnp.bfloat16
  lens = [24, 17, 9]  # the parity test's shapes: the float32 forward is already compiled
  tokens, valid = _left_pad(_random_rows(9, lens, SMALL_VOCAB), max(lens))
  l32, l16 = _fwd(m32, tokens, valid), _fwd(m16, tokens, valid)
  assert l16.dtype == np.float32
  err = _rel(l16[valid], l32[valid])
  agree = float((l16[valid].argmax(-1) == l32[valid].argmax(-1)).mean())
  print(f"\n[bfloat16] rel logits err vs float32 {err:.1e}, argmax agreement {agree:.2f}")
  assert 0 < err < 5e-2 and agree > 0.8

  # The decode path runs in bfloat16 too (caches take the compute dtype).
  last, prefix = _prefill(m16, jnp.asarray(tokens), jnp.asarray(valid))
  cache = m16.init_decode_cache(len(lens), 2)
  assert cache.layers[0].k.dtype == jnp.bfloat16 and prefix.layers[0].k.dtype == jnp.bfloat16
  logits, _ = _decode(m16, jnp.asarray(tokens[:, -1:]), jnp.asarray(valid.sum(1)[:, None]), prefix, cache, 0)
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


# -------------------------------------------------------------------------------------------------- errors

def test_unsupported_model_type_names_the_field(tmp_path):
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    ModelConfig.from_hf(GPT2Config(n_layer=1, n_embd=32, n_head=2))
  GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="model_type"):
    load_model(str(tmp_path))


def test_missing_files_raise_file_not_found(tiny_hf_model, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_model(str(tmp_path))
  shutil.copy(os.path.join(tiny_hf_model("llama", tokenizer=False), "config.json"), tmp_path)
  with pytest.raises(FileNotFoundError, match="safetensors"):
    load_model(str(tmp_path))


@pytest.mark.parametrize("family,missing", [
    ("llama", "model.layers.1.mlp.up_proj.weight"),
    ("llama", "lm_head.weight"),
    ("qwen2", "model.layers.0.self_attn.k_proj.bias"),
    ("qwen3", "model.layers.1.self_attn.q_norm.weight"),
])
def test_missing_tensor_raises_key_error_naming_it(tiny_hf_model, tmp_path, family, missing):
  from safetensors.numpy import save_file

  folder = tiny_hf_model(family, tokenizer=False)
  tensors = read_safetensors(folder)
  del tensors[missing]
  shutil.copy(os.path.join(folder, "config.json"), tmp_path)
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(KeyError, match=missing.replace(".", r"\.")):
    load_model(str(tmp_path))


def test_wrong_shape_raises_value_error(tiny_hf_model):
  folder = tiny_hf_model("qwen3", tokenizer=False)
  cfg = ModelConfig.from_hf(AutoConfig.from_pretrained(folder))
  bad = dataclasses.replace(cfg, intermediate_size=96)
  with pytest.raises(ValueError, match="shape"):
    build_model(bad, hf_to_pure(read_safetensors(folder), bad))


def test_bad_sources_raise_value_error(tmp_path):
  with pytest.raises(ValueError, match="not a folder"):
    load_model("this is :: not a model")
  not_gguf = tmp_path / "weights.bin"
  not_gguf.write_bytes(b"\0" * 16)
  with pytest.raises(ValueError, match="not a .gguf"):
    load_model(str(not_gguf))
  with pytest.raises(ValueError, match="dtype"):
    resolve_dtype("float8")


def test_hub_name_offline_says_what_works():
  # HF_HUB_OFFLINE=1 (conftest): the download fails at once, and the message points to the offline options.
  with pytest.raises(RuntimeError, match="smollm2-135m-instruct"):
    load_model("dashjax-tests/does-not-exist")


def test_save_hf_writes_the_storage_dtype_unless_asked(tiny_hf_model, tmp_path):
  """float32 storage with bfloat16 compute saves float32 weights (nothing rounded); dtype= converts on request."""
  folder = tiny_hf_model("llama", tokenizer=False)
  cfg = ModelConfig.from_hf(AutoConfig.from_pretrained(folder))
  model = build_model(cfg, hf_to_pure(read_safetensors(folder), cfg), "bfloat16", "float32")
  assert model.embed[...].dtype == jnp.float32 and model.dtype == jnp.bfloat16
  save_hf(model, None, str(tmp_path / "f32"))
  save_hf(model, None, str(tmp_path / "bf16"), dtype="bfloat16")
  src, f32, bf16 = (read_safetensors(p) for p in (folder, str(tmp_path / "f32"), str(tmp_path / "bf16")))
  for k in src:
    assert f32[k].dtype == np.float32 and bf16[k].dtype == jnp.bfloat16, k
    np.testing.assert_array_equal(f32[k], src[k], err_msg=k)
    np.testing.assert_array_equal(bf16[k], src[k].astype(jnp.bfloat16), err_msg=k)
