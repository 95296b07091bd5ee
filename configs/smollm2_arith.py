"""The default main job: DASH on SmolLM2-135M-Instruct, reasoning-gym arithmetic, sized for a 2-core CPU.

SmolLM2 starts weak but not hopeless on 2-term sums of small numbers (about 10% correct), so many groups of 4 have
mixed rewards and the advantage signal is dense enough to learn from in a few minutes.
"""

from dashjax.config import base_config


def get_config():
  c = base_config()
  c.model.source = "smollm2-135m-instruct"
  c.data.source = "gym"
  c.data.task = "basic_arithmetic"
  c.data.task_kwargs = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)
  c.data.train_size = 2000
  c.data.heldout_size = 200
  c.data.template = "chat"
  c.data.instruction = ""
  c.data.max_prompt_tokens = 64
  c.reward.fn = "gym"
  c.rl.algo = "dash"
  c.rl.prompts_per_step = 8
  c.rl.samples_per_prompt = 4
  c.rl.filter_threshold = 0.1
  c.rl.loss_aggregation = "constant_length"
  c.sampling.batch_size = 32
  c.sampling.max_new_tokens = 32
  c.sampling.temperature = 1.0
  c.train.micro_batch_size = 4
  c.train.num_steps = 30
  c.train.learning_rate = 1e-5
  c.train.checkpoint_every = 10
  c.eval.num_prompts = 200
  c.eval.samples = 1
  c.eval.temperature = 0.0
  c.eval.batch_size = 100
  return c
