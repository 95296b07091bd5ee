"""The paper's MATH setting for Qwen2.5 base models, for accelerators (TPU/GPU).

Choose the size with `--config=configs/qwen25_math.py:1.5b` (0.5b, 1.5b or 3b). Data: MATH train problems from a local
jsonl/parquet (`--config.data.path=...`, fields problem/answer) or a hub dataset where there is network. The paper
feeds the raw problem text (no chat template, no instruction) and grades the last \\boxed{} answer.
"""

from dashjax.config import base_config

HAND_SET = {"sampling.batch_size": 256, "train.micro_batch_size": 8}
MODELS = {"0.5b": "Qwen/Qwen2.5-0.5B", "1.5b": "Qwen/Qwen2.5-1.5B", "3b": "Qwen/Qwen2.5-3B"}


def get_config(size: str = "0.5b"):
  if size not in MODELS:
    raise ValueError(f"unknown size {size!r}; use one of {sorted(MODELS)} as configs/qwen25_math.py:SIZE")
  c = base_config()
  c.model.source = MODELS[size]
  c.model.dtype = "bfloat16"  # compute; parameters, gradients and Adam moments stay float32 (model.param_dtype)
  c.data.source = "file"
  c.data.task = "math"
  c.data.path = "data/MATH/train.jsonl"
  c.data.heldout_path = "data/MATH/test.jsonl"
  c.data.train_size = 0  # all
  c.data.heldout_size = 500
  c.data.template = "raw"
  c.data.max_prompt_tokens = 256
  c.reward.fn = "math"
  c.reward.workers = 8
  c.rl.algo = "dash"
  c.rl.prompts_per_step = 64  # 256 completions per update
  c.rl.samples_per_prompt = 4
  c.rl.filter_threshold = 0.1
  c.rl.kl_beta = 0.0  # the paper's best variant (No-KL); 0.04 reproduces its "DASH with KL"
  c.rl.loss_aggregation = "constant_length"
  # Rows per sampler call and per micro-step: chosen at start-up by the planner for the chips the run has (a
  # resumed run keeps its own); `dashjax-plan --config configs/qwen25_math.py:0.5b --topology v5e:2x4` shows the
  # table without a TPU. HAND_SET are the sizes used before the planner (on v5e:2x4 the planner chooses them for 0.5b).
  c.sampling.batch_size = "auto"
  c.sampling.max_new_tokens = 2048
  c.sampling.temperature = 0.9
  c.train.micro_batch_size = "auto"
  # Memory for 2304-token rows (see docs/paper_scale.md): recompute each layer in backprop, project the 151936-id
  # vocabulary 256 positions at a time, blockwise attention on TPU (cuDNN on GPU).
  c.train.remat = "full"
  c.train.logprob_chunk = 256
  c.train.attention = "auto"
  c.train.scan_layers = True  # one compiled layer: the 3B micro-step compiles in a fraction of the unrolled time
  # Parameters, gradients and Adam moments sharded over every chip (FSDP); rows still split one or more per chip.
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.train.num_steps = 561  # 3 epochs of 12k problems at 64 per step
  c.train.learning_rate = 3e-6
  c.train.lr_schedule = "linear"
  c.train.checkpoint_every = 50
  c.eval.num_prompts = 500
  c.eval.samples = 4
  c.eval.temperature = 0.7
  c.eval.batch_size = 256
  return c
