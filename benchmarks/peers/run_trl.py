"""TRL GRPOTrainer (PyTorch, CPU): seconds per optimizer update.  Run with benchmarks/peers/.venv-trl/bin/python.

  python run_trl.py SPEC.json        (spec fields: peers_common.py)

Modes (one optimizer update = P*G completions, backprop in micro-batches of `micro_batch` rows in both):
  standard  the paper's standard GRPO: generation_batch_size = micro_batch, so TRL generates one micro-batch,
            backprops it, generates the next, ... (steps_per_generation = 1)
  best      generation_batch_size = P*G: all completions of the update in one generate() call (TRL 1.16's default),
            gradient checkpointing off
  default   TRL out of the box: as `best` but with gradient checkpointing on (GRPOConfig turns it on by default)
Both `standard` and `best` turn gradient checkpointing off, so they differ only in generation batching.
All modes: float32 (GRPOConfig defaults to bf16), beta = 0 (no reference model, as in dashjax), num_iterations = 1,
loss_type = dr_grpo (the paper's recipe; per-token cost is the same for every loss type).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers_common import Clock, contains_gold, finish, load_spec, read_prompts, run_driver  # noqa: E402

MODES = ("standard", "best", "default")


def main():
  spec = load_spec(MODES)
  mode = spec["mode"]
  clock = Clock()
  import datasets
  import torch
  import transformers
  import trl
  from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
  from trl import GRPOConfig, GRPOTrainer

  torch.manual_seed(spec["seed"])
  G, mb, R = spec["G"], spec["micro_batch"], spec["rows_per_update"]
  rows = read_prompts(spec["prompts"])
  # A plain-string "prompt" column is used verbatim (no chat template applied again, no special tokens added).
  dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

  def reward(completions, answer, **_):
    return [contains_gold(c, a) for c, a in zip(completions, answer)]

  tokenizer = AutoTokenizer.from_pretrained(spec["model"])
  model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
  total = spec["warmup_updates"] + spec["updates"]
  args = GRPOConfig(
      output_dir=tempfile.mkdtemp(prefix="trl-bench-"), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
      logging_steps=1, max_steps=total, seed=spec["seed"], dataloader_num_workers=0,
      per_device_train_batch_size=mb, gradient_accumulation_steps=R // mb, num_generations=G,
      generation_batch_size=mb if mode == "standard" else R,
      gradient_checkpointing=(mode == "default"),
      max_completion_length=spec["max_new_tokens"], temperature=spec["temperature"], top_p=1.0, top_k=0,
      learning_rate=spec["learning_rate"], lr_scheduler_type="constant", beta=0.0, num_iterations=1,
      loss_type="dr_grpo",
  )

  marks, logs = [], []

  class Timer(TrainerCallback):
    # on_step_end fires once per optimizer update; the interval between two of them is one whole update
    # (generation + scoring + forward/backward + optimizer step + TRL's own logging).
    def on_train_begin(self, *a, **k):
      clock.lap()

    def on_step_end(self, *a, **k):
      marks.append(clock.lap())

    def on_log(self, args, state, control, logs_=None, **k):
      logs.append(dict(k.get("logs") or logs_ or {}))

  trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                        processing_class=tokenizer, callbacks=[Timer()])
  setup_s = clock.lap()
  trainer.train()
  lengths = [l["completions/mean_length"] for l in logs if "completions/mean_length" in l]
  rewards = [l["reward"] for l in logs if "reward" in l]
  finish(spec, "trl", mode, marks, setup_s,
         {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
          "torch_threads": torch.get_num_threads()},
         {"generation_batch_size": args.generation_batch_size, "steps_per_generation": args.steps_per_generation,
          "gradient_checkpointing": args.gradient_checkpointing, "completion_mean_length": lengths,
          "reward_mean": rewards})
  shutil.rmtree(args.output_dir, ignore_errors=True)


if __name__ == "__main__":
  run_driver(main)
