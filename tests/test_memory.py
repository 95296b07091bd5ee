"""Training memory and precision: each memory-saving path against the plain path, and mixed precision.

Remat, chunked log-probs and blockwise attention must compute the same log-probs and gradients as the plain path
(float32, rtol 1e-5), alone and together, with prompt sharing and with the k3 KL term. bfloat16 compute with float32
storage must keep the small updates that bfloat16 storage rounds away.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dashjax.models import ModelConfig, Transformer
from dashjax.models import attention as attn
from dashjax.models.compute import ComputeOptions
from dashjax.rl.batching import RolloutBatch, pack_micro_batches, token_weights
from dashjax.train.learner import Learner, LossConfig, micro_loss
from dashjax.train.logprobs import completion_logprobs

jax.config.update("jax_default_matmul_precision", "highest")

TP, N, R, G, V = 7, 13, 8, 4, 97
CFG = ModelConfig("qwen2", V, 32, 64, 2, 4, 2, 8, qkv_bias=True, tie_word_embeddings=True, rope_theta=1e4)


def _model(dtype=jnp.float32, param_dtype=jnp.float32, seed=0):
  return Transformer(CFG, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))


def _batch(seed=0):
  """R rows in groups of G sharing a left-padded prompt, completions of mixed lengths."""
  rng = np.random.RandomState(seed)
  prompts = rng.randint(0, V, size=(R // G, TP))
  pvalid = np.ones((R // G, TP), bool)
  pvalid[1, :3] = False
  lengths = rng.randint(1, N + 1, size=R)
  lengths[0] = N
  mask = np.arange(N)[None] < lengths[:, None]
  tokens = np.concatenate([np.repeat(prompts, G, 0), rng.randint(0, V, size=(R, N))], 1).astype(np.int32)
  valid = np.concatenate([np.repeat(pvalid, G, 0), mask], 1)
  return RolloutBatch(tokens, valid, mask.astype(np.float32), np.where(mask, -rng.rand(R, N), 0).astype(np.float32),
                      TP)


def _micro_batch(batch, adv, weights):
  return pack_micro_batches(batch, adv, weights, np.arange(R), R, G)[0]


OPTIONS = {
    "remat_full": (ComputeOptions(remat="full"), 0),
    "remat_save_dots": (ComputeOptions(remat="save_dots"), 0),
    "logprob_chunk": (ComputeOptions(), 5),
    "blockwise": (ComputeOptions(attention="blockwise", attention_block=4), 0),
    "scan_layers": (ComputeOptions(scan_layers=True), 0),
    "all": (ComputeOptions(remat="full", attention="blockwise", attention_block=4, scan_layers=True), 5),
}


@pytest.mark.parametrize("group,names", [(G, tuple(OPTIONS)), (1, ("all",))])
def test_memory_paths_give_the_plain_logprobs_and_gradients(group, names):
  model = _model()
  graphdef, params = nnx.split(model)
  ref_params = jax.tree.map(lambda x: x * 1.02, params)
  batch = _batch(1)
  adv = np.random.RandomState(2).randn(R).astype(np.float32)
  mb = _micro_batch(batch, adv, token_weights(batch.completion_mask_RxN, np.ones(R), "seq_mean"))
  loss_cfg = LossConfig(temperature=0.9, kl_beta=0.3, kl_estimator="k3")

  @jax.jit
  def run(params, opts_key):
    opts, chunk = OPTIONS[opts_key] if opts_key else (ComputeOptions(), 0)
    lp = completion_logprobs(nnx.merge(graphdef, params), mb["tokens"], mb["valid"], TP, 0.9, group, opts, chunk)
    grads, stats = jax.grad(micro_loss, has_aux=True)(params, graphdef, ref_params, mb, TP, loss_cfg, group, opts,
                                                      chunk)
    return lp, grads, stats

  run = jax.jit(run.__wrapped__, static_argnums=1)
  lp0, g0, s0 = run(params, None)
  assert float(s0["kl"]) > 0 and max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g0)) > 1e-3
  for name in names:
    lp, g, s = run(params, name)
    np.testing.assert_allclose(lp, lp0, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(s["loss"], s0["loss"], rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)


def _segments(rng, B=4, group=2, K=2, S1=6, S2=9, D=8, dtype=jnp.float32):
  q = jnp.asarray(rng.randn(B, K, 2, S2, D), dtype)
  pk, pv = (jnp.asarray(rng.randn(B // group, K, S1, D), dtype) for _ in range(2))
  gk, gv = (jnp.asarray(rng.randn(B, K, S2, D), dtype) for _ in range(2))
  pvalid = jnp.asarray(np.arange(S1)[None] >= np.array([[0], [2]]))
  return q, [attn.Segment(pk, pv, pvalid, group, None), attn.Segment(gk, gv, None, 1, 0)]


def test_blockwise_and_fused_layouts_match_plain_attention():
  """Blockwise (several block sizes, padded last block) and the fused path's layout (through XLA's reference
  implementation of jax.nn.dot_product_attention) against plain attention over a shared prefix and causal keys."""
  q, segs = _segments(np.random.RandomState(0))
  ref = attn.attend(q, segs, 0.35, "plain")
  for block in (1, 4, 5, 64):
    np.testing.assert_allclose(attn.attend(q, segs, 0.35, "blockwise", block), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attn._fused(q, segs, 0.35, implementation="xla"), ref, rtol=1e-5, atol=1e-6)
  assert attn.resolve("fused", segs, jnp.float32) == "blockwise"  # no GPU here: the reference path serves


def test_bfloat16_compute_with_float32_storage_keeps_small_updates():
  """One AdamW step at lr 3e-6: float32 storage changes (almost) every decoder weight; bfloat16 storage rounds
  nearly all of them away. The model computes in bfloat16 in both cases."""
  batch = _batch(3)
  adv = np.random.RandomState(4).randn(R).astype(np.float32)
  mb = _micro_batch(batch, adv, token_weights(batch.completion_mask_RxN, np.ones(R), "seq_mean"))
  changed = {}
  for storage in (jnp.float32, jnp.bfloat16):
    graphdef, params = nnx.split(_model(jnp.bfloat16, storage))
    opt = optax.adamw(3e-6)
    learner = Learner(graphdef, opt, LossConfig(temperature=1.0), TP, prompt_group=G)
    grads, _ = learner.micro_step(params, learner.zero_grads(params), None, mb)
    assert all(g.dtype == storage for g in jax.tree.leaves(grads))
    new, opt_state, _ = learner.apply(jax.tree.map(jnp.copy, params), opt.init(params), grads)
    assert all(m.dtype == storage for m in jax.tree.leaves(opt_state) if m.ndim)
    frac = [np.mean(np.asarray(a) != np.asarray(b)) for a, b in zip(jax.tree.leaves(new.layers),
                                                                    jax.tree.leaves(params.layers))]
    changed[jnp.dtype(storage).name] = float(np.mean(frac))
  print(f"decoder weights changed by one update at lr 3e-6: {changed}")
  assert changed["float32"] >= 0.99
  assert changed["bfloat16"] < 0.5


def test_bfloat16_gradient_against_float32():
  """The same float32 parameters, computed in bfloat16 and in float32: the gradient's relative error."""
  batch = _batch(5)
  adv = np.random.RandomState(6).randn(R).astype(np.float32)
  mb = _micro_batch(batch, adv, token_weights(batch.completion_mask_RxN, np.ones(R), "seq_mean"))
  params = nnx.split(_model(jnp.float32))[1]
  grads = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    graphdef = nnx.split(_model(dtype))[0]
    learner = Learner(graphdef, optax.sgd(1.0), LossConfig(temperature=1.0), TP, prompt_group=G)
    grads[dtype], _ = learner.micro_step(params, learner.zero_grads(params), None, mb)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])  # noqa: E731
  g32, g16 = flat(grads[jnp.float32]), flat(grads[jnp.bfloat16])
  rel = float(np.linalg.norm(g16 - g32) / np.linalg.norm(g32))
  cos = float(g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32))
  print(f"bfloat16-compute gradient vs float32: relative error {rel:.4f}, cosine {cos:.5f}")
  assert g16.dtype == np.float32
  # Measured here: 0.0053 and 0.99999 (deterministic on XLA:CPU); the bound is 1.3x that. RMSNorm computed in
  # bfloat16 instead of float32 measured 0.0083, so a lost float32 island fails this.
  assert rel < 1.3 * 0.0053 and cos > 0.9999


def test_trainer_computes_in_bfloat16_and_stores_float32(tmp_path):
  """The whole loop with bfloat16 compute and every memory switch on, on CPU: parameters and moments stay float32,
  the samplers read a bfloat16 copy, the updates are finite and the micro-step compiles once."""
  import os
  import sys

  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
  import tiny

  from dashjax.train.trainer import Trainer

  c = tiny.get_config()
  c.model.dtype = "bfloat16"
  c.train.update(remat="full", scan_layers=True, logprob_chunk=5, attention="blockwise", attention_block=8)
  t = Trainer(c, str(tmp_path))
  try:
    assert {x.dtype for x in jax.tree.leaves(t.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(t.sampler_params())} == {jnp.dtype(jnp.bfloat16)}
    before = jax.tree.map(np.asarray, t.params)
    metrics = [t.train_step() for _ in range(2)]
    assert all(np.isfinite(m["grad_norm"]) and m["grad_norm"] > 0 for m in metrics)
    assert t.learner.micro_step._cache_size() == 1
    assert {x.dtype for x in jax.tree.leaves(t.opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
    changed = np.mean([np.mean(a != np.asarray(b)) for a, b in zip(jax.tree.leaves(before["layers"]),
                                                                     jax.tree.leaves(t.params.layers))])
    assert changed > 0.99
  finally:
    t.close()
