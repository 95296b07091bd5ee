"""Greedy generation equals transformers' greedy `generate`, token for token, on left-padded batches."""

import jax
import numpy as np
import pytest
from flax import nnx

import dashjax
from dashjax.sampling import Sampler, SamplingConfig
from dashjax.sampling.generate import encode_prompts

PROMPTS = ["What is 2 + 3?", "Tell me a long story about a dragon who learns to count to ten.", "Hi"]
NEW_TOKENS = 32


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_greedy_matches_transformers_generate(tiny_hf_model, family):
  import torch
  from transformers import AutoModelForCausalLM

  folder = tiny_hf_model(family)
  model, tokenizer = dashjax.load_model(folder)
  tokens, valid = encode_prompts(tokenizer, PROMPTS, chat=True)
  assert len(set(valid.sum(1))) == len(PROMPTS)  # really different prompt lengths

  ref_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = ref_model.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(valid, dtype=torch.long),
                             do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             pad_token_id=tokenizer.pad_token_id).numpy()[:, tokens.shape[1]:]
  # min_new_tokens keeps EOS from ending reference rows early; our sampler matches that with no EOS ids.
  graphdef, params = nnx.split(model)
  out = Sampler(graphdef, SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0))(
      params, tokens, valid, jax.random.key(0))
  ours = np.asarray(out.tokens_BxN)
  assert ref.shape == ours.shape == (len(PROMPTS), NEW_TOKENS)
  np.testing.assert_array_equal(ours, ref)
  assert len({tuple(r) for r in ours}) == len(PROMPTS)  # not a degenerate constant output


def test_generate_text_api_matches_transformers_with_eos(tiny_hf_model):
  """The text API stops rows at EOS like transformers does and decodes the same text."""
  import torch
  from transformers import AutoModelForCausalLM

  folder = tiny_hf_model("llama")
  model, tokenizer = dashjax.load_model(folder)
  texts = dashjax.generate(model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS)
  tokens, valid = encode_prompts(tokenizer, PROMPTS, chat=True)
  ref_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = ref_model.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(valid, dtype=torch.long),
                             do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id).numpy()[:, tokens.shape[1]:]
  want = [tokenizer.decode(r, skip_special_tokens=True) for r in ref]
  assert texts == want
