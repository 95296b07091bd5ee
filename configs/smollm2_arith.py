"""The default main job: DASH on SmolLM2-135M-Instruct, reasoning-gym arithmetic, sized for a 2-core CPU.

SmolLM2 starts weak but not hopeless on sums of two 1-2 digit numbers: about 33% correct greedy and 17% at
temperature 1, with 45% of groups of 4 mixing right and wrong answers (measured on 64 prompts), so the advantage
signal is dense enough to learn from in a few minutes.
"""

from dashjax.config import base_config


def get_config():
  c = base_config()
  c.model.source = "smollm2-135m-instruct"
  c.data.source = "gym"
  c.data.task = "basic_arithmetic"
  c.data.task_kwargs = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+",),
                            allow_negation=False, allow_parentheses=False)
  c.data.train_size = 2000
  c.data.heldout_size = 200
  c.data.template = "chat"
  c.data.instruction = "Give the answer as a single number."
  c.data.max_prompt_tokens = 56
  c.reward.fn = "gym"
  c.rl.algo = "dash"
  c.rl.prompts_per_step = 8
  c.rl.samples_per_prompt = 4
  c.rl.filter_threshold = 0.1
  c.rl.loss_aggregation = "constant_length"
  c.sampling.batch_size = 32
  c.sampling.max_new_tokens = 32
  # Static sampler: with at most 32 new tokens (most rows run to the limit early in training) there is little to
  # compact, and continuous batching's extra compiled batch sizes cost more compile time than they save here.
  c.sampling.continuous = False
  c.sampling.temperature = 1.0
  c.train.micro_batch_size = 4
  c.train.num_steps = 24
  c.train.learning_rate = 3e-5
  c.train.checkpoint_every = 10
  c.eval.num_prompts = 200
  c.eval.samples = 1
  c.eval.temperature = 0.0
  c.eval.batch_size = 200
  c.eval.every = 8  # held-out accuracy during training too (about 40 s each)
  return c
