"""Advantages, losses and micro-batching: numbers against formulas and against the full-batch computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dashjax.models import ModelConfig, Transformer
from dashjax.rl.advantages import group_advantages
from dashjax.rl.batching import MicroBatches, RolloutBatch, keep_mask, pack_micro_batches, rollout_batch, token_weights
from dashjax.rl.losses import kl_penalty, policy_loss, token_logprobs
from dashjax.train.learner import Learner, LossConfig, make_optimizer

jax.config.update("jax_default_matmul_precision", "highest")


def test_advantage_estimators():
  r = np.array([1, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1], np.float32)
  g = r.reshape(3, 4)
  mean = g.mean(1, keepdims=True)
  grpo = group_advantages(r, 4, "grpo").reshape(3, 4)
  np.testing.assert_allclose(grpo[0], (g[0] - 0.25) / (np.std(g[0], ddof=1) + 1e-4), rtol=1e-6)
  np.testing.assert_array_equal(grpo[1], 0.0)  # all-correct group: no signal
  np.testing.assert_allclose(group_advantages(r, 4, "mean"), (g - mean).ravel(), rtol=1e-6)
  loo = np.array([[ri - np.delete(row, j).mean() for j, ri in enumerate(row)] for row in g])
  np.testing.assert_allclose(group_advantages(r, 4, "rloo"), loo.ravel(), rtol=1e-6)
  with pytest.raises(ValueError, match="samples_per_prompt"):
    group_advantages(r, 5)


def test_reinforce_gradient_on_tabular_policy():
  """On a one-step softmax policy, d loss / d theta = -sum_i A_i w_i (onehot(a_i) - pi): REINFORCE."""
  V = 6
  theta = jnp.asarray(np.random.RandomState(0).randn(V), jnp.float32)
  actions = jnp.array([[1], [4], [4], [0]])
  adv = jnp.array([0.5, -1.0, 2.0, 0.0])
  w = jnp.array([[0.25], [0.25], [0.25], [0.25]])

  def loss(theta):
    logits = jnp.broadcast_to(theta, (4, 1, V))
    lp = token_logprobs(logits, actions, temperature=1.0)
    per_token, _ = policy_loss(lp, jnp.zeros_like(lp), adv, clip_eps=0.2, on_policy=True)
    return jnp.sum(per_token * w)

  pi = np.asarray(jax.nn.softmax(theta))
  expected = -sum(float(adv[i] * w[i, 0]) * (np.eye(V)[int(actions[i, 0])] - pi) for i in range(4))
  np.testing.assert_allclose(jax.grad(loss)(theta), expected, atol=1e-6)
  # The loss value itself is -sum A w (the ratio is exactly 1 on-policy).
  np.testing.assert_allclose(loss(theta), -float(jnp.sum(adv * w[:, 0])), atol=1e-7)


def test_ppo_ratio_is_one_on_policy_and_clips_off_policy():
  lp = jnp.log(jnp.array([[0.2, 0.5], [0.7, 0.1]]))
  adv = jnp.array([1.0, -1.0])
  on, clipped_on = policy_loss(lp, lp, adv, clip_eps=0.2, on_policy=True)
  off_same, clipped_same = policy_loss(lp, lp, adv, clip_eps=0.2, on_policy=False)
  np.testing.assert_array_equal(on, -adv[:, None] * jnp.ones((2, 2)))  # ratio exactly 1
  np.testing.assert_allclose(off_same, on)
  assert float(clipped_on.sum()) == float(clipped_same.sum()) == 0.0
  g_on = jax.grad(lambda x: policy_loss(x, lp, adv, clip_eps=0.2, on_policy=True)[0].sum())(lp)
  g_off = jax.grad(lambda x: policy_loss(x, lp, adv, clip_eps=0.2, on_policy=False)[0].sum())(lp)
  np.testing.assert_allclose(g_on, g_off, atol=1e-7)
  # ratio 2 with positive advantage: clipped at 1.2, no gradient through the clipped branch.
  new = lp.at[0, 0].add(jnp.log(2.0))
  val, clipped = policy_loss(new, lp, adv, clip_eps=0.2, on_policy=False)
  np.testing.assert_allclose(val[0, 0], -1.2, rtol=1e-6)
  assert float(clipped[0, 0]) == 1.0


def test_kl_estimators_match_formulas():
  lp = jnp.array([-1.0, -2.0, -0.1])
  ref = jnp.array([-1.5, -1.0, -0.1])
  d = np.asarray(ref - lp)
  np.testing.assert_allclose(kl_penalty(lp, ref, "k3"), np.exp(d) - d - 1, rtol=1e-6)
  np.testing.assert_allclose(kl_penalty(lp, ref, "k1"), -d, rtol=1e-6)
  assert float(kl_penalty(lp, lp, "k3").sum()) == 0.0
  # Unbiased: E_pi[k3] = KL(pi || ref) for a categorical pi.
  p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.5, 0.3])
  k3 = kl_penalty(jnp.log(p), jnp.log(q), "k3")
  np.testing.assert_allclose(np.sum(p * np.asarray(k3)), np.sum(p * np.log(p / q)), rtol=1e-5)


# --- learner: accumulation and filtering against the full batch ------------------------------------------------

TP, N, R, G = 5, 6, 8, 4


def _toy_setup(seed=0):
  cfg = ModelConfig("llama", 61, 32, 64, 2, 4, 2, 8, tie_word_embeddings=False)
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  rng = np.random.RandomState(seed)
  prompt_valid = np.ones((R, TP), bool)
  prompt_valid[1, :2] = False
  lengths = rng.randint(1, N + 1, size=R)
  mask = (np.arange(N)[None] < lengths[:, None])
  tokens = rng.randint(0, 61, size=(R, TP + N)).astype(np.int32)
  batch = RolloutBatch(tokens, np.concatenate([prompt_valid, mask], 1), mask.astype(np.float32),
                       np.where(mask, -rng.rand(R, N), 0).astype(np.float32), TP)
  return graphdef, params, batch


def _accumulate(learner, params, batch, adv, weights, rows, micro):
  mbs = pack_micro_batches(batch, adv, weights, rows, micro)
  acc = learner.zero_grads(params)
  for i in range(mbs.num_micro):
    acc, _ = learner.micro_step(params, acc, None, mbs[i])
  return acc, mbs.num_micro


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant_length"])
def test_micro_batched_gradient_equals_full_batch(aggregation):
  graphdef, params, batch = _toy_setup()
  adv = np.random.RandomState(1).randn(R).astype(np.float32)
  weights = token_weights(batch.completion_mask_RxN, np.ones(R), aggregation)
  learner_full = Learner(graphdef, optax.sgd(1.0), LossConfig(temperature=0.9), TP)
  learner_micro = Learner(graphdef, optax.sgd(1.0), LossConfig(temperature=0.9), TP)
  full, n_full = _accumulate(learner_full, params, batch, adv, weights, np.arange(R), R)
  micro, n_micro = _accumulate(learner_micro, params, batch, adv, weights, np.arange(R), 2)
  assert (n_full, n_micro) == (1, 4)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(micro)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(full)) > 1e-4  # a real, non-zero gradient


def test_filtered_update_equals_unfiltered_with_fewer_micro_steps():
  """With zero-advantage rows dropped, normalization by rows sampled and no KL, dash's accumulated gradient equals
  pg's, value for value, in half the micro-steps; so does a plain SGD step (an AdamW step is about -lr * sign(g)
  and would hide a wrong scale)."""
  graphdef, params, batch = _toy_setup(3)
  rewards = np.array([1, 1, 1, 1, 0, 1, 0, 0], np.float32)  # first group all equal -> advantage 0
  adv = group_advantages(rewards, G)
  keep = keep_mask(adv, 0.1)
  assert keep.sum() == 4
  weights = token_weights(batch.completion_mask_RxN, np.ones(R), "token_mean")  # normalized by rows sampled
  learner = Learner(graphdef, optax.sgd(0.5), LossConfig(temperature=1.0), TP)
  results = {}
  for name, rows in (("pg", np.arange(R)), ("dash", np.flatnonzero(keep))):
    grads, n = _accumulate(learner, params, batch, adv, weights, rows, 2)
    p = jax.tree.map(jnp.array, params)
    new_params, _, norm = learner.apply(p, learner.optimizer.init(p), grads)
    results[name] = (grads, new_params, n, float(norm))
  assert (results["pg"][2], results["dash"][2]) == (4, 2)
  assert results["pg"][3] > 1e-3
  np.testing.assert_allclose(results["pg"][3], results["dash"][3], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results["pg"][0]), jax.tree.leaves(results["dash"][0])):  # the gradients
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()) + 1e-9)
  for a, b, p0 in zip(jax.tree.leaves(results["pg"][1]), jax.tree.leaves(results["dash"][1]), jax.tree.leaves(params)):
    np.testing.assert_allclose(b - p0, a - p0, rtol=1e-5, atol=1e-6 * float(np.abs(a - p0).max()) + 1e-9)  # SGD
  # Same compiled micro-step for 4 and 2 micro-steps: one compilation.
  assert learner.micro_step._cache_size() == 1


def _grouped_batch(seed):
  """The toy batch with each group's G rows sharing one prompt (as sampled rows do); one prompt is left-padded."""
  graphdef, params, batch = _toy_setup(seed)
  first = (np.arange(R) // G) * G
  batch.tokens_RxS[:, :TP] = batch.tokens_RxS[first, :TP]
  batch.valid_RxS[:, :TP] = batch.valid_RxS[first, :TP]
  batch.valid_RxS[4:8, :3] = False  # the second prompt has 3 pad columns
  return graphdef, params, batch


@pytest.mark.parametrize("rows,kl_beta", [(np.arange(R), 0.0), (np.array([0, 2, 5]), 0.0), (np.arange(R), 0.5)])
def test_shared_prompt_backprop_equals_per_row(rows, kl_beta):
  """Running each prompt once per group (prompt_group=G) gives the per-row gradient; with rows [0, 2, 5] the
  groups are packed whole and the rows not given weigh nothing."""
  graphdef, params, batch = _grouped_batch(7)
  adv = np.random.RandomState(3).randn(R).astype(np.float32)
  weights = token_weights(batch.completion_mask_RxN, np.ones(R), "seq_mean")
  cfg = LossConfig(temperature=0.9, kl_beta=kl_beta)
  ref_params = jax.tree.map(lambda x: x * 1.01, params) if kl_beta else None

  def run(group):
    learner = Learner(graphdef, optax.sgd(1.0), cfg, TP, prompt_group=group)
    mbs = pack_micro_batches(batch, adv, weights, rows, 4, group)
    acc, total = learner.zero_grads(params), 0.0
    for i in range(mbs.num_micro):
      acc, stats = learner.micro_step(params, acc, ref_params, mbs[i])
      total += float(stats["loss"])
    return acc, total, mbs.num_micro

  per_row, loss_row, n_row = run(1)
  shared, loss_shared, n_shared = run(G)
  assert (n_row, n_shared) == ((2, 2) if len(rows) == R else (1, 2))  # [0, 2, 5]: 2 groups packed, 5 rows masked
  np.testing.assert_allclose(loss_shared, loss_row, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(per_row), jax.tree.leaves(shared)):
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-7)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(shared)) > 1e-4


def test_group_packing_masks_rows_not_given_and_checks_prompts():
  _, _, batch = _grouped_batch(8)
  adv = np.arange(1, R + 1, dtype=np.float32)
  weights = np.ones((R, N), np.float32)
  mbs = pack_micro_batches(batch, adv, weights, [5], 4, G)  # one row of the second group
  assert mbs.num_micro == 1
  np.testing.assert_array_equal(mbs.tokens[0], batch.tokens_RxS[4:8])
  np.testing.assert_array_equal(mbs.row_mask[0], [False, True, False, False])
  np.testing.assert_array_equal(mbs.adv[0], [0, 6, 0, 0])
  assert mbs.weights[0].sum() == N
  _, _, mixed = _toy_setup(8)  # rows with different prompts inside a group
  with pytest.raises(ValueError, match="share their prompt"):
    pack_micro_batches(mixed, adv, weights, [0, 1], 4, G)


def test_filler_rows_weigh_nothing():
  """A micro-batch padded with filler rows gives the same gradient as the real rows alone."""
  graphdef, params, batch = _toy_setup(5)
  adv = np.random.RandomState(2).randn(R).astype(np.float32)
  weights = token_weights(batch.completion_mask_RxN, np.ones(R), "seq_mean")
  learner = Learner(graphdef, optax.sgd(1.0), LossConfig(), TP)
  three, n3 = _accumulate(learner, params, batch, adv, weights, [0, 2, 5], 4)  # one filler row
  ref, _ = _accumulate(Learner(graphdef, optax.sgd(1.0), LossConfig(), TP), params, batch.take([0, 2, 5]),
                       adv[[0, 2, 5]], weights[[0, 2, 5]], [0, 1, 2], 3)
  assert n3 == 1
  for a, b in zip(jax.tree.leaves(three), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


def test_micro_batch_spec_is_what_packing_makes():
  """The fit check compiles the micro-step for `MicroBatches.spec`; a packed micro-batch from real rollouts (host
  arrays of other dtypes, as a sampler returns them) must have exactly those shapes and dtypes, or the checked
  program is not the one that runs."""
  rng = np.random.RandomState(0)
  P, T, n = 3, 7, 5
  batch = rollout_batch(rng.randint(0, 50, (P, T)), np.ones((P, T), np.int64), 2, rng.randint(0, 50, (2 * P, n)),
                        -rng.rand(2 * P, n), rng.randint(1, n + 1, 2 * P))
  weights = token_weights(batch.completion_mask_RxN, np.ones(2 * P), "token_mean")
  mbs = pack_micro_batches(batch, rng.randn(2 * P), weights, [0, 3, 4], 4)
  got = {k: (v.shape, v.dtype) for k, v in mbs[0].items()}
  want = {k: (shape, np.dtype(dt)) for k, (shape, dt) in MicroBatches.spec(4, T, n).items()}
  assert got == want
