"""The sampler draws from the right distribution, shares prompt caches exactly, and stops rows at EOS."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from dashjax.models import ModelConfig, Transformer
from dashjax.sampling import Sampler, SamplingConfig, draw_tokens
from dashjax.sampling.draw import target_probs


def _chi2_pvalue(counts, probs, n):
  expected = probs * n
  big = expected >= 5  # pool the sparse tail into one bin so the chi-square approximation holds
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  if exp[-1] < 5:
    obs, exp = obs[:-1], exp[:-1]
  assert len(obs) >= 5, "test distribution too peaked for a chi-square test"
  return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


DRAWS = 40_000


@pytest.mark.parametrize("vocab,scale,temperature,top_k,top_p", [
    (700, 2.0, 1.0, 0, 1.0),  # full vocabulary, two-level search over several blocks
    (700, 2.0, 0.7, 0, 1.0),  # temperature
    (300, 2.0, 1.0, 20, 1.0),  # top-k
    (300, 1.0, 0.9, 0, 0.8),  # top-p, nucleus inside the top-256 candidates
    (700, 0.2, 1.0, 0, 0.6),  # top-p over a flat distribution: bisection over the full vocabulary
    (300, 1.0, 0.9, 30, 0.7),  # top-k then top-p
])
def test_draw_matches_target_distribution(vocab, scale, temperature, top_k, top_p):
  logits = np.random.RandomState(vocab + top_k).randn(vocab).astype(np.float32) * scale
  target = target_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  u = jax.random.uniform(jax.random.key(7), (DRAWS, 2))
  fn = jax.jit(lambda l, u: draw_tokens(jnp.broadcast_to(l, (DRAWS, vocab)), u, temperature=temperature,
                                        top_k=top_k, top_p=top_p))
  ids, logprobs = map(np.asarray, fn(jnp.asarray(logits), u))
  counts = np.bincount(ids, minlength=vocab)
  assert counts[target == 0].sum() == 0, "drew a token that top-k/top-p excludes"
  assert _chi2_pvalue(counts, target, DRAWS) > 1e-3
  # The reported log-prob is that of the distribution actually sampled from.
  np.testing.assert_allclose(logprobs, np.log(target[ids]), atol=2e-4)


def test_top_p_fallback_path_is_taken_and_exact():
  """A flat distribution puts most mass outside the 256 candidates, forcing the bisection path."""
  from dashjax.sampling import draw as draw_mod

  logits = np.random.RandomState(0).randn(700).astype(np.float32) * 0.2
  p = target_probs(logits, temperature=1.0)
  assert np.sort(p)[::-1][:draw_mod.TOP_P_CANDIDATES].sum() < 0.6  # so the fallback really runs
  kept = target_probs(logits, temperature=1.0, top_p=0.6) > 0
  assert 256 < kept.sum() < 700


def test_greedy_is_argmax_and_zero_logprob():
  logits = jax.random.normal(jax.random.key(0), (5, 50))
  ids, lp = draw_tokens(logits, jnp.zeros((5, 2)), temperature=0.0)
  np.testing.assert_array_equal(ids, jnp.argmax(logits, -1))
  np.testing.assert_array_equal(lp, 0.0)


def _tiny_model():
  cfg = ModelConfig("llama", 97, 32, 64, 2, 4, 2, 8, tie_word_embeddings=True)
  model = Transformer(cfg, rngs=nnx.Rngs(3))
  # Larger weights than the default init so that samples actually vary and EOS shows up.
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: x * 8.0 if x.ndim == 2 else x, state)
  return graphdef, state


PROMPTS = np.array([[0, 0, 0, 5, 9, 11], [4, 8, 15, 16, 23, 42], [0, 7, 7, 7, 7, 1]], np.int32)
VALID = np.array([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], bool)


def test_shared_prefix_equals_separate_prefill():
  """G rows reading one prompt cache give the same samples and log-probs as G separately prefilled copies."""
  graphdef, state = _tiny_model()
  outs = []
  for share in (True, False):
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, samples_per_prompt=4, share_prefix=share)
    outs.append(Sampler(graphdef, cfg)(state, PROMPTS, VALID, jax.random.key(1)))
  shared, separate = outs
  np.testing.assert_array_equal(shared.tokens_BxN, separate.tokens_BxN)
  np.testing.assert_allclose(shared.logprobs_BxN, separate.logprobs_BxN, atol=1e-5)
  # The G samples of one prompt differ from each other (they get their own randomness).
  assert len({tuple(r) for r in np.asarray(shared.tokens_BxN)[:4]}) > 1


def test_first_token_logprobs_come_from_prompt_logits():
  graphdef, state = _tiny_model()
  model = nnx.merge(graphdef, state)
  cfg = SamplingConfig(max_new_tokens=1, temperature=1.0, samples_per_prompt=3)
  out = Sampler(graphdef, cfg)(state, PROMPTS, VALID, jax.random.key(2))
  last = np.asarray(jax.nn.log_softmax(model(jnp.asarray(PROMPTS), jnp.asarray(VALID))[:, -1]))
  rows = np.repeat(np.arange(3), 3)
  expected = last[rows, np.asarray(out.tokens_BxN)[:, 0]]
  np.testing.assert_allclose(out.logprobs_BxN[:, 0], expected, atol=1e-5)


def test_eos_ends_rows_and_loop_stops_early():
  graphdef, state = _tiny_model()
  free = Sampler(graphdef, SamplingConfig(max_new_tokens=10, temperature=0.0))(state, PROMPTS, VALID, jax.random.key(0))
  greedy = np.asarray(free.tokens_BxN)
  eos = int(greedy[0, 2])  # row 0 emits this token at step 2 (maybe earlier too)
  cfg = SamplingConfig(max_new_tokens=10, temperature=0.0, eos_ids=(eos,), pad_id=96)
  out = Sampler(graphdef, cfg)(state, PROMPTS, VALID, jax.random.key(0))
  tokens, lengths = np.asarray(out.tokens_BxN), np.asarray(out.lengths_B)
  for row in range(3):
    hits = np.flatnonzero(greedy[row] == eos)
    want = hits[0] + 1 if len(hits) else 10
    assert lengths[row] == want
    np.testing.assert_array_equal(tokens[row, :want], greedy[row, :want])
    assert (tokens[row, want:] == 96).all()
    assert bool(out.truncated_B[row]) == (len(hits) == 0)
    assert (np.asarray(out.logprobs_BxN)[row, want:] == 0).all()
  if not np.asarray(out.truncated_B).any():
    assert int(out.decode_steps) == lengths.max() - 1 < 9  # stopped as soon as every row was done


def test_bad_sampling_config_names_the_field():
  with pytest.raises(ValueError, match="top_p"):
    SamplingConfig(max_new_tokens=4, top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    SamplingConfig(max_new_tokens=4, temperature=-1.0)
  with pytest.raises(ValueError, match="max_new_tokens"):
    SamplingConfig(max_new_tokens=0)
