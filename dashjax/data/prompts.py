"""Prompt text and fixed-width token batches for the sampler."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dashjax.data.examples import Example

TEMPLATES = ("raw", "chat")


class PromptFormatter:
  """Turns examples into prompt text and left-padded token arrays of ONE fixed width per run.

  template="raw" (the paper's setting): the problem text itself, no system prompt and no chat template, with
    `instruction` appended after a blank line when given.
  template="chat": the same text as the user turn of the tokenizer's chat template, plus the generation prompt.
  Every batch is padded to exactly `max_prompt_tokens`, so the jitted sampler sees a single prompt shape and never
  recompiles. Longer prompts are an error, never truncated: a truncated prompt on one side only (the reference code
  truncated on the learner) makes the sampler's and the learner's sequences disagree.
  """

  def __init__(self, tokenizer, *, template: str = "raw", instruction: str = "", max_prompt_tokens: int,
               add_special_tokens: bool = False):
    if template not in TEMPLATES:
      raise ValueError(f"unknown prompt template {template!r}; use one of {TEMPLATES}")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
      raise ValueError("template='chat' but the tokenizer has no chat template; use template='raw'")
    if max_prompt_tokens < 1:
      raise ValueError(f"data.max_prompt_tokens must be >= 1, got {max_prompt_tokens}")
    self.tokenizer = tokenizer
    self.template = template
    self.instruction = instruction
    self.max_prompt_tokens = int(max_prompt_tokens)
    # False matches TRL and `encode_prompts`; True lets a tokenizer add its BOS for base models that expect one.
    # (Chat templates already spell out their special tokens, so adding them again would duplicate BOS.)
    self.add_special_tokens = add_special_tokens and template == "raw"

  @property
  def pad_id(self) -> int:
    """Pad id for the prompt area (masked out by `valid`, so any id works): pad, else EOS, else 0."""
    for candidate in (getattr(self.tokenizer, "pad_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
      if candidate is not None:
        return int(candidate)
    return 0

  def format(self, example: Example | str) -> str:
    problem = example.problem if isinstance(example, Example) else example
    text = f"{problem}\n\n{self.instruction}" if self.instruction else problem
    if self.template == "raw":
      return text
    return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=False)

  def token_ids(self, examples: Sequence[Example | str]) -> list[list[int]]:
    texts = [self.format(ex) for ex in examples]
    if not texts:
      return []
    return [list(x) for x in self.tokenizer(texts, add_special_tokens=self.add_special_tokens)["input_ids"]]

  def fits(self, examples: Sequence[Example | str]) -> list[bool]:
    """Whether each example's prompt fits in max_prompt_tokens (to filter a dataset once, up front)."""
    return [0 < len(x) <= self.max_prompt_tokens for x in self.token_ids(examples)]

  def encode(self, examples: Sequence[Example | str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (tokens [P, max_prompt_tokens] int32, valid [P, max_prompt_tokens] bool), left-padded."""
    ids = self.token_ids(examples)
    width = self.max_prompt_tokens
    too_long = [(i, len(x)) for i, x in enumerate(ids) if len(x) > width]
    if too_long:
      i, n = max(too_long, key=lambda t: t[1])
      raise ValueError(f"{len(too_long)} of {len(ids)} prompts exceed data.max_prompt_tokens={width} (longest: "
                       f"{n} tokens, example {_name(examples[i])}); raise data.max_prompt_tokens or drop long "
                       "problems up front with PromptFormatter.fits (prompts are never truncated)")
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
      raise ValueError(f"{len(empty)} prompts encode to zero tokens (first: example {_name(examples[empty[0]])})")
    tokens = np.full((len(ids), width), self.pad_id, np.int32)
    valid = np.zeros((len(ids), width), bool)
    for i, x in enumerate(ids):
      tokens[i, width - len(x):] = x
      valid[i, width - len(x):] = True
    return tokens, valid


def _name(example) -> str:
  if isinstance(example, Example):
    return repr(example.uid) if example.uid else repr(example.problem[:60])
  return repr(str(example)[:60])
