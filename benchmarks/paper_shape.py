"""A real run at the paper's model shape, reduced to fit a CPU: DASH updates of a random Qwen2.5-0.5B.

  python benchmarks/paper_shape.py [--quick] [--new-tokens 512] [--prompts 2] [--updates 1] [--json PATH]

Writes a Qwen2.5-0.5B config.json (no download), builds the model with random weights from it (float32 storage,
`--dtype` compute), and runs `--updates` DASH updates with the shipped `configs/qwen25_math.py` memory settings:
one sampler call over P x 4 rows forced to run to `--new-tokens` (no EOS), random binary rewards, filtering, packed
micro-steps, one optimizer step. Reports sampler and learner seconds, compile times, tokens/s, and the process's
peak resident memory next to `dashjax-fit`'s prediction for this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import RESULTS, environment, load_config, log, write_json  # noqa: E402
from dashjax.config import validate  # noqa: E402
from dashjax.models import ModelConfig, Transformer  # noqa: E402
from dashjax.models.config import resolve_dtype  # noqa: E402
from dashjax.train.fit import GiB, check  # noqa: E402
from dashjax.parallel.mesh import LEARNER_RULES, SAMPLER_RULES, batch_sharding, make_mesh, param_shardings  # noqa
from dashjax.rl.advantages import group_advantages  # noqa: E402
from dashjax.rl.algorithms import Sampled, algorithm  # noqa: E402
from dashjax.rl.batching import rollout_batch  # noqa: E402
from dashjax.train import programs  # noqa: E402
from dashjax.train.update import TrainState, Updater, UpdateResult  # noqa: E402

QWEN25_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
              "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
              "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
              "max_position_embeddings": 32768, "hidden_act": "silu", "use_sliding_window": False,
              "bos_token_id": 151643, "eos_token_id": 151643}


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="128 new tokens, 1 prompt x 4 samples")
  p.add_argument("--new-tokens", type=int, default=512)
  p.add_argument("--prompt-tokens", type=int, default=256)
  p.add_argument("--prompts", type=int, default=2)
  p.add_argument("--updates", type=int, default=1)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--json", default=os.path.join(RESULTS, "paper_shape.json"))
  args = p.parse_args()
  if args.quick:
    args.new_tokens, args.prompts = 128, 1
  G = 4
  c = load_config("configs/qwen25_math.py:0.5b")
  c.model.dtype = args.dtype
  c.data.max_prompt_tokens = args.prompt_tokens
  c.sampling.max_new_tokens = args.new_tokens
  c.rl.prompts_per_step = args.prompts
  c.sampling.batch_size = args.prompts * G
  c.train.micro_batch_size = G
  c.eval.batch_size = G
  c.mesh.fsdp, c.mesh.data = 1, -1
  plan = validate(c, num_devices=1, check_model_source=False)
  mesh = make_mesh(plan.mesh_shape, jax.devices()[:1])

  folder = tempfile.mkdtemp(prefix="qwen25-0.5b-shape-")
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(QWEN25_05B, f)
  from transformers import AutoConfig

  cfg = ModelConfig.from_hf(AutoConfig.from_pretrained(folder))
  log(f"predicting memory with dashjax-fit for {jax.devices()[0]} ...")
  t0 = time.perf_counter()
  fit = check(c, devices=jax.devices()[:1], programs_wanted=("sampler", "micro_step", "apply", "sampler_cast"),
              model_cfg=cfg)
  fit_s = time.perf_counter() - t0
  predicted = max(p["total_bytes"] for p in fit["programs"].values())

  t0 = time.perf_counter()
  model = Transformer(cfg, dtype=resolve_dtype(args.dtype), param_dtype=resolve_dtype("float32"), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  del model
  learner_sh, sampler_sh = param_shardings(state, mesh, LEARNER_RULES), param_shardings(state, mesh, SAMPLER_RULES)
  params = jax.device_put(state, learner_sh)
  del state
  init_s = time.perf_counter() - t0
  # no EOS: every row runs to the limit
  progs = programs.build(c, plan, graphdef, mesh, learner_sh, sampler_sh, eos_ids=(), pad_id=0)
  opt_state = jax.jit(progs.optimizer.init)(params)
  learner = progs.learner
  state = TrainState(params, opt_state)
  del params, opt_state
  updater = Updater.from_config(c, plan, learner, mesh)  # the trainer's update recipe
  algo = algorithm(c)  # dash (configs/qwen25_math.py): filtering, one update per sampled batch
  sampler, cast = progs.sampler, progs.cast
  rng = np.random.RandomState(0)
  P, T, N = args.prompts, args.prompt_tokens, args.new_tokens

  class RandomPrompts:
    """The algorithm's collect step here: random prompts through the run's sampler, random binary rewards."""

    def sample(self, examples, fold=None):
      t0 = time.perf_counter()
      prompts = rng.randint(100, cfg.vocab_size - 100, size=(len(examples), T)).astype(np.int32)
      valid = np.ones(prompts.shape, bool)
      valid[:, : T // 4] = False  # left padding, as real prompts have
      sp = cast(state.params) if cast is not None else state.params
      put = lambda x: jax.device_put(x, batch_sharding(mesh, 2))  # noqa: E731
      out = sampler(sp, put(prompts), put(valid), jax.random.key(u if fold is None else u * 1000 + fold))
      self.out = jax.tree.map(np.asarray, out)
      del sp
      self.sample_s = time.perf_counter() - t0
      rewards = rng.binomial(1, 0.5, size=len(examples) * G).astype(np.float32)
      rewards[:G] = [1, 0, 1, 0]  # at least one group with signal
      o = self.out
      return Sampled(rollout_batch(prompts, valid, G, o.tokens_BxN, o.logprobs_BxN, o.lengths_B),
                     group_advantages(rewards, G, c.rl.advantage), rewards)

  def kept(parts, counts):
    for part in parts:
      counts.append(len(part.rows))
      yield part

  records = []
  for u in range(args.updates):
    source, result, counts = RandomPrompts(), UpdateResult(), []
    for parts in algo.updates(list(range(P)), source):
      state = updater.update(state, kept(parts, counts), result)
    out, sample_s, update_s = source.out, source.sample_s, result.seconds
    rec = {"update": u + 1, "sample_s": round(sample_s, 2), "update_s": round(update_s, 2),
           "generated_tokens": int(out.lengths_B.sum()), "rows": P * G, "kept_rows": int(sum(counts)),
           "micro_steps": result.micro_steps, "grad_norm": result.grad_norm,
           "sampler_tokens_per_s": round(float(out.lengths_B.sum()) / sample_s, 1),
           "learner_tokens_per_s": round(result.micro_steps * plan.micro_batch_size * (T + N) / update_s, 1)}
    records.append(rec)
    log(json.dumps(rec))
  peak = peak_rss_bytes()
  summary = {"model": "Qwen2.5-0.5B shape, random weights", "compute_dtype": args.dtype, "param_dtype": "float32",
             "prompt_tokens": T, "new_tokens": N, "rows": P * G, "micro_batch_size": plan.micro_batch_size,
             "remat": c.train.remat, "logprob_chunk": c.train.logprob_chunk, "attention": c.train.attention,
             "init_s": round(init_s, 1), "fit_check_s": round(fit_s, 1),
             "first_update_includes_compile": records[0], "later_updates": records[1:],
             "peak_rss_gib": round(peak / GiB, 2), "fit_predicted_peak_gib": round(predicted / GiB, 2),
             "fit_programs": {k: {"total_gib": round(v["total_bytes"] / GiB, 2), "compile_s": v["compile_s"]}
                              for k, v in fit["programs"].items()},
             "environment": environment()}
  log(f"\npeak resident memory {summary['peak_rss_gib']} GiB (process, all buffers and the runtime), "
      f"dashjax-fit's largest program {summary['fit_predicted_peak_gib']} GiB")
  log("| program | predicted GiB | compile s |\n|---|---|---|")
  for k, v in summary["fit_programs"].items():
    log(f"| {k} | {v['total_gib']} | {v['compile_s']} |")
  write_json(args.json, summary)
  log(f"wrote {args.json}")


if __name__ == "__main__":
  main()
