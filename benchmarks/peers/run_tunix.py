"""tunix GRPOLearner (JAX, CPU): seconds per optimizer update.  Run with benchmarks/peers/.venv-tunix/bin/python.

  python run_tunix.py SPEC.json                          (spec fields: peers_common.py)
  python run_tunix.py --check-logits MODEL_DIR REF.npz KEY   max |logits - transformers logits| as JSON

Modes (one optimizer update = P prompts * G samples; backprop in micro-batches of `micro_batch` rows in both):
  standard  tunix's default: rollout_micro_batch_size = train_micro_batch_size, i.e. generation in micro-batch-sized
            calls (the paper's standard GRPO)
  best      rollout_micro_batch_size = P: all completions of the update in one sampler call
tunix counts batch sizes in prompts (each expands to G rows), so train_micro_batch_size = micro_batch / G.
All modes: model tunix.models.qwen2 (float32), vanilla rollout engine, actor and rollout colocated on one
Auto-typed ("fsdp", "tp") mesh (shared weights, no sync), beta = 0 (no reference model), num_iterations = 1
(no old-logp pass), optimizer = clip-by-global-norm(1.0) + AdamW, as in dashjax and TRL.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers_common import Clock, contains_gold, dist_version, finish, load_spec, read_prompts, run_driver  # noqa: E402

MODES = ("standard", "best")


def model_config(folder: str):
  """tunix's Qwen2 ModelConfig from the HF config.json (tunix only ships presets for real checkpoints)."""
  from tunix.models.qwen2 import model as qwen2

  with open(os.path.join(folder, "config.json")) as f:
    hf = json.load(f)
  if hf["model_type"] != "qwen2":
    raise ValueError(f"run_tunix.py drives tunix's Qwen2 model; {folder} holds a {hf['model_type']!r} model")
  rope = hf.get("rope_parameters") or {}
  theta = rope.get("rope_theta", hf.get("rope_theta", 1e6))
  heads = hf["num_attention_heads"]
  return qwen2.ModelConfig(
      num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
      hidden_dim=hf["intermediate_size"], num_heads=heads, head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      num_kv_heads=hf["num_key_value_heads"], rope_theta=theta, norm_eps=hf["rms_norm_eps"],
      use_tied_embedding=hf.get("tie_word_embeddings", False))


def make_mesh():
  import jax

  # tunix's sampler needs Auto axes: with jax 0.10's default Explicit axis types it fails with ShardingTypeError.
  return jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def load_model(folder: str, mesh):
  from tunix.models.qwen2 import params as qwen2_params

  return qwen2_params.create_model_from_safe_tensors(folder, model_config(folder), mesh)


def check_logits(folder: str, ref_npz: str, key: str):
  """Full-sequence logits of tunix's Qwen2 vs transformers' (computed by compare.py with torch) on the same ids."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  ref = np.load(ref_npz)
  ids, want = ref["ids"], ref[key]
  mesh = make_mesh()
  with jax.set_mesh(mesh):
    model = load_model(folder, mesh)
    B, L = ids.shape
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((L, L), bool)), (B, L, L))
    got, _ = model(jnp.asarray(ids), positions, None, causal)
  got = np.asarray(got, np.float64)
  err = np.abs(got - want)
  out = {"model": folder, "key": key, "max_abs_err": float(err.max()), "max_abs_logit": float(np.abs(want).max()),
         "argmax_agree": float((got.argmax(-1) == want.argmax(-1)).mean()),
         "rope_theta": model_config(folder).rope_theta}
  print("CHECK " + json.dumps(out), flush=True)


def main():
  spec = load_spec(MODES)
  mode = spec["mode"]
  clock = Clock()
  import jax
  import optax
  import transformers
  from flax import nnx
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout
  from tunix.sft import metrics_logger

  G, mb, P = spec["G"], spec["micro_batch"], spec["prompts_per_update"]
  if mb % G:
    sys.exit(f"tunix micro-batches hold whole groups: micro_batch={mb} must be a multiple of G={G}")
  train_micro = mb // G  # in prompts
  tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model"])
  mesh = make_mesh()
  model = load_model(spec["model"], mesh)
  total = spec["warmup_updates"] + spec["updates"]

  rows = read_prompts(spec["prompts"])
  # One element per optimizer update: P prompts, with the gold answers as an extra column for the reward.
  batches = []
  for u in range(total):
    chunk = [rows[(u * P + i) % len(rows)] for i in range(P)]
    batches.append({"prompts": [r["prompt"] for r in chunk], "answer": [r["answer"] for r in chunk]})

  def reward(prompts, completions, answer, **_):
    return [contains_gold(c, a) for c, a in zip(completions, answer)]

  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(spec["learning_rate"], weight_decay=0.0))
  log_dir = tempfile.mkdtemp(prefix="tunix-bench-")
  training = rl_cluster_lib.RLTrainingConfig(
      actor_optimizer=optimizer, eval_every_n_steps=10**9, max_steps=total,
      mini_batch_size=P, train_micro_batch_size=train_micro,
      rollout_micro_batch_size=train_micro if mode == "standard" else P,
      compute_logps_micro_batch_size=train_micro,  # unused: no reference model and no old-logp pass
      metrics_logging_options=metrics_logger.MetricsLoggerOptions(log_dir=log_dir, flush_every_n_steps=10**6),
  )
  rollout = base_rollout.RolloutConfig(
      max_tokens_to_generate=spec["max_new_tokens"], max_prompt_length=spec["max_prompt_tokens"],
      kv_cache_size=spec["max_prompt_tokens"] + spec["max_new_tokens"], temperature=spec["temperature"],
      top_p=1.0, top_k=None,  # top_p=1 and no top_k: plain categorical sampling (tunix skips the sort)
      eos_tokens=[tokenizer.eos_token_id], seed=None)
  roles = rl_cluster_lib.Role
  cluster = rl_cluster_lib.RLCluster(
      actor=model, reference=None, tokenizer=tokenizer,
      cluster_config=rl_cluster_lib.ClusterConfig(
          role_to_mesh={roles.ACTOR: mesh, roles.REFERENCE: mesh, roles.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False, training_config=training, rollout_config=rollout))
  algo = grpo_learner.GRPOConfig(num_generations=G, num_iterations=1, beta=0.0, epsilon=0.2,
                                 loss_agg_mode="sequence-mean-token-scale")  # Dr. GRPO's constant-length agg
  learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=[reward])

  # One global step = one optimizer update here (mini_batch_size = the whole batch). Time each by wrapping the
  # instance's method; block on the parameters so that an update's asynchronously dispatched work is charged to it.
  marks = []
  inner = learner._run_global_step

  def timed_global_step(*a, **k):
    out = inner(*a, **k)
    jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
    marks.append(clock.lap())
    return out

  learner._run_global_step = timed_global_step
  # Completion lengths, to confirm every framework generates the same number of tokens.
  lengths = []
  generate = cluster.generate

  def generate_and_measure(*a, **k):
    out = generate(*a, **k)
    lengths.append(sum(len(t) for t in out.tokens) / max(len(out.tokens), 1))
    return out

  cluster.generate = generate_and_measure
  setup_s = clock.lap()
  # The legacy `with mesh:` (not jax.set_mesh): tunix's trainer reads the physical mesh from thread resources.
  with mesh:
    learner.train(batches)
  finish(spec, "tunix", mode, marks, setup_s,
         {"google-tunix": dist_version("google-tunix"), "jax": jax.__version__, "flax": dist_version("flax"),
          "transformers": transformers.__version__},
         {"rollout_micro_batch_size_prompts": training.rollout_micro_batch_size,
          "train_micro_batch_size_prompts": train_micro, "mini_batch_size_prompts": P,
          "train_steps": cluster.actor_trainer.train_steps, "completion_mean_length": lengths})
  shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
  run_driver(main, check_logits)
