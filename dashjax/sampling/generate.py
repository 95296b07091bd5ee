"""`generate(model, tokenizer, prompts, ...)`: text in, text out, for quick use and demos."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from dashjax.sampling.sampler import Sampler, SamplingConfig

PROMPT_BUCKET = 16  # prompts are left-padded to a multiple of this, so new lengths rarely recompile


def eos_ids_for(model, tokenizer) -> tuple[int, ...]:
  ids = set(model.cfg.eos_token_ids)
  if tokenizer is not None and tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  return tuple(sorted(ids))


def pad_id_for(model, tokenizer) -> int:
  for candidate in (getattr(tokenizer, "pad_token_id", None), model.cfg.pad_token_id, *eos_ids_for(model, tokenizer)):
    if candidate is not None:
      return int(candidate)
  return 0


def encode_prompts(tokenizer, prompts, *, chat: bool, bucket: int = PROMPT_BUCKET):
  """Tokenizes and left-pads prompts -> (tokens [P, T] int32, valid [P, T] bool), T a multiple of `bucket`."""
  if chat:
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
           for p in prompts]
    ids = [list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x) for x in ids]
  else:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
  width = max(1, max(len(x) for x in ids))
  width = -(-width // bucket) * bucket
  tokens = np.zeros((len(ids), width), np.int32)
  valid = np.zeros((len(ids), width), bool)
  for i, x in enumerate(ids):
    if x:
      tokens[i, width - len(x):] = x
      valid[i, width - len(x):] = True
  return tokens, valid


@functools.lru_cache(maxsize=16)
def _sampler(graphdef, cfg: SamplingConfig) -> Sampler:
  return Sampler(graphdef, cfg)


def generate(model, tokenizer, prompts, *, max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, samples_per_prompt: int = 1, chat: bool | None = None):
  """Completes each prompt; returns a list of strings (a list of lists when samples_per_prompt > 1).

  temperature=0 is greedy decoding. `chat` applies the tokenizer's chat template (default: when it has one).
  """
  if isinstance(prompts, str):
    prompts = [prompts]
  if chat is None:
    chat = getattr(tokenizer, "chat_template", None) is not None
  tokens, valid = encode_prompts(tokenizer, prompts, chat=chat)
  graphdef, params = nnx.split(model)
  cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k),
                       top_p=float(top_p), samples_per_prompt=samples_per_prompt,
                       eos_ids=eos_ids_for(model, tokenizer), pad_id=pad_id_for(model, tokenizer))
  out = _sampler(graphdef, cfg)(params, tokens, valid, jax.random.key(seed))
  ids, lengths = np.asarray(out.tokens_BxN), np.asarray(out.lengths_B)
  texts = [tokenizer.decode(ids[i, :lengths[i]], skip_special_tokens=True) for i in range(len(ids))]
  if samples_per_prompt == 1:
    return texts
  return [texts[i:i + samples_per_prompt] for i in range(0, len(texts), samples_per_prompt)]
