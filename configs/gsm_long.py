"""The long-completion regime of the paper, at SmolLM2 scale: grade-school word problems with chain of thought.

Completions are long and uneven (a few dozen tokens to the 256 limit), as in the paper, so a sampler call waits
for its longest row. Used by `benchmarks/dash_vs_grpo.py --workload long` to time updates by phase; the point is
the sampling cost per update, not accuracy (SmolLM2-135M rarely solves these).
"""

from dashjax.config import base_config


def get_config():
  c = base_config()
  c.model.source = "smollm2-135m-instruct"
  c.data.source = "gym"
  c.data.task = "gsm_symbolic"
  c.data.train_size = 200
  c.data.heldout_size = 64
  c.data.template = "chat"
  c.data.instruction = "Think step by step, then give the final answer as a single number on the last line."
  c.data.max_prompt_tokens = 208  # the longest of the 200 training prompts is 203 tokens
  c.reward.fn = "gym"
  c.rl.algo = "dash"
  c.rl.prompts_per_step = 8
  c.rl.samples_per_prompt = 4
  c.rl.filter_threshold = 0.1
  c.rl.loss_aggregation = "constant_length"
  c.sampling.batch_size = 32
  c.sampling.max_new_tokens = 256
  c.sampling.continuous = True  # long, uneven rows: ended rows free their slots
  c.sampling.temperature = 1.0
  c.train.micro_batch_size = 4
  c.train.num_steps = 3
  c.train.learning_rate = 3e-6
  c.train.checkpoint_every = 0
  c.eval.num_prompts = 64
  c.eval.batch_size = 64
  c.eval.every = 0
  return c
