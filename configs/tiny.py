"""A seconds-long configuration for tests and smoke runs: a 2-layer random model and a lenient reward."""

import os

from dashjax.config import base_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny_letters.jsonl")


def get_config():
  c = base_config()
  c.model.source = "tiny-random"
  # "Write words containing the letter k": random text contains such letters about half the time.
  c.data.source = "file"
  c.data.path = DATA
  c.data.task = "letters"
  c.data.train_size = 64
  c.data.heldout_size = 8
  c.data.template = "chat"
  c.data.max_prompt_tokens = 48
  c.reward.fn = "contains"  # mixed rewards even for a random model: real advantages and filtering
  c.reward.workers = 0
  c.rl.prompts_per_step = 4
  c.rl.samples_per_prompt = 4
  c.sampling.batch_size = 16
  c.sampling.max_new_tokens = 12
  c.sampling.temperature = 1.0
  c.train.micro_batch_size = 4
  c.train.num_steps = 3
  c.train.learning_rate = 1e-3
  c.train.checkpoint_every = 0
  c.eval.num_prompts = 8
  c.eval.batch_size = 8
  c.eval.before = False
  c.eval.after = False
  return c
