"""The continuous-batching sampler returns the static sampler's rows, compiles once per bucket, and its decode
attention over the filled part of the cache matches plain attention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dashjax.models.attention import Segment, attend
from dashjax.models.loading import tiny_random_model
from dashjax.models.ragged import ragged_decode_attention
from dashjax.sampling import ContinuousSampler, Sampler, SamplingConfig, make_sampler
from dashjax.sampling.sampler import stats_from
from dashjax.sampling.slots import bucket_sizes

N_NEW, G, SLOTS = 24, 3, 6


@functools.lru_cache(maxsize=1)
def _tiny():
  model, tokenizer = tiny_random_model()
  graphdef, state = nnx.split(model)
  # Larger weights than the init so that distributions are peaked and chosen EOS ids fire at varied steps.
  state = jax.tree.map(lambda x: x * 6.0 if x.ndim == 2 else x, state)
  return graphdef, state


def _prompts(P=4, T=12, seed=0):
  """Left-padded prompts of different lengths (T, T-3, T-6, ...)."""
  rng = np.random.RandomState(seed)
  tokens = rng.randint(3, 1000, (P, T)).astype(np.int32)
  valid = np.arange(T)[None, :] >= (3 * np.arange(P) % T)[:, None]
  return np.where(valid, tokens, 0).astype(np.int32), valid


def _cfg(temperature, top_k=0, top_p=1.0, **kw):
  return SamplingConfig(**{**dict(max_new_tokens=N_NEW, temperature=temperature, top_k=top_k, top_p=top_p,
                                  samples_per_prompt=G, pad_id=1, slots=SLOTS, min_slots=3), **kw})


@functools.lru_cache(maxsize=4)
def _static_free_run(temperature, top_k=0, top_p=1.0):
  """The static sampler without EOS ids. With EOS ids it returns these rows cut after their first EOS (its own
  tests check that; the per-row draws do not depend on when other rows end), which is the reference here: one
  static compilation per setting instead of one per EOS set."""
  graphdef, state = _tiny()
  tokens, valid = _prompts()
  out = Sampler(graphdef, _cfg(temperature, top_k, top_p))(state, tokens, valid, jax.random.key(1))
  return jax.tree.map(np.asarray, out)


def _static_with_eos(free, eos, pad_id=1):
  tokens, logprobs = free.tokens_BxN.copy(), free.logprobs_BxN.copy()
  B, N = tokens.shape
  hit = np.isin(tokens, eos)
  lengths = np.where(hit.any(1), hit.argmax(1) + 1, N)
  after = np.arange(N)[None] >= lengths[:, None]
  tokens[after], logprobs[after] = pad_id, 0.0
  steps = int(lengths.max()) - 1
  return tokens, logprobs, lengths, ~hit.any(1), steps


def _assert_same(expected, out):
  tokens, logprobs, lengths, truncated, _ = expected
  np.testing.assert_array_equal(np.asarray(out.tokens_BxN), tokens)
  np.testing.assert_array_equal(np.asarray(out.lengths_B), lengths)
  np.testing.assert_array_equal(np.asarray(out.truncated_B), truncated)
  np.testing.assert_allclose(np.asarray(out.logprobs_BxN), logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_k,top_p,slots,min_slots", [
    (0.0, 0, 1.0, 0, 6),  # greedy; every row in its own slot (grouped prompt reads), then compacted to 8
    (1.0, 0, 1.0, SLOTS, 3),  # full vocabulary; 6 slots: refills, then compacted to 4 (top-k/top-p: all truncated)
])
def test_matches_static_sampler(temperature, top_k, top_p, slots, min_slots):
  """12 rows, prompts of 12, 9, 6 and 3 tokens, EOS ids chosen so that one row ends at its first token, one sample
  of prompt 0 at its second, others mid-way."""
  graphdef, state = _tiny()
  tokens, valid = _prompts()
  free = _static_free_run(temperature, top_k, top_p)
  picks = [(5, 0), (0, 1), (10, 5), (7, 15)]
  eos = tuple(sorted({int(free.tokens_BxN[r, t]) for r, t in picks}))
  expected = _static_with_eos(free, eos)
  sampler = ContinuousSampler(graphdef, _cfg(temperature, top_k, top_p, eos_ids=eos, slots=slots, min_slots=min_slots))
  assert sampler.buckets(12) == ((12, 8) if slots == 0 else (6, 4))
  if temperature == 1.0:  # compile everything up front: the calls below must not compile again
    sampler.warmup(state, tokens, valid, jax.random.key(0))
    assert dict(sampler.traces) == {"start[6]": 1, "chunk[6]": 1, "chunk[4]": 1, "compact[6->4]": 1}
  out = sampler(state, tokens, valid, jax.random.key(1))
  _assert_same(expected, out)
  lengths = expected[2]
  assert lengths[5] == 1 and lengths[0] <= 2 and len(set(lengths.tolist())) >= 4
  st, ct = stats_from(lengths, expected[4], 12 * expected[4]), sampler.last_stats
  assert ct.compactions == 1 and ct.chunks == 2  # one chunk per bucket
  assert ct.slot_steps - ct.wasted_slot_steps == st.slot_steps - st.wasted_slot_steps == int((lengths - 1).sum())
  assert ct.wasted_slot_steps < st.wasted_slot_steps
  print(f"\nT={temperature} top_k={top_k} top_p={top_p}: lengths {lengths.tolist()}; static slot-steps "
        f"{st.slot_steps} (wasted {st.wasted_slot_steps}), continuous {ct}")
  if temperature == 1.0:
    mixes = {tuple(lengths.tolist())}
    for p in (1, 2, 3):  # prompt p (one of whose rows ended early) replaced: other length mixes, the same shapes
      t = tokens.copy()
      t[p] = np.where(valid[p], np.random.RandomState(p).randint(3, 1000, t.shape[1]), 0)
      mixes.add(tuple(np.asarray(sampler(state, t, valid, jax.random.key(1)).lengths_B).tolist()))
    assert len(mixes) >= 3
    assert dict(sampler.traces) == {"start[6]": 1, "chunk[6]": 1, "chunk[4]": 1, "compact[6->4]": 1}


def test_matches_static_sampler_run_with_eos_top_k_top_p():
  """Both samplers run with the same EOS ids at T=0.8 with top-k 40 and top-p 0.9 (no derived reference): equal
  tokens, lengths, truncation and log-probs, while rows end at their 1st, 2nd, ... token, queued rows refill 6
  slots and live rows are compacted."""
  graphdef, state = _tiny()
  tokens, valid = _prompts()
  free = _static_free_run(0.8, 40, 0.9)
  eos = tuple(sorted({int(free.tokens_BxN[r, t]) for r, t in [(5, 0), (0, 1), (10, 5), (7, 15)]}))
  key = jax.random.key(1)
  static = jax.tree.map(np.asarray, Sampler(graphdef, _cfg(0.8, 40, 0.9, eos_ids=eos))(state, tokens, valid, key))
  sampler = ContinuousSampler(graphdef, _cfg(0.8, 40, 0.9, eos_ids=eos))
  out = jax.tree.map(np.asarray, sampler(state, tokens, valid, key))
  np.testing.assert_array_equal(out.tokens_BxN, static.tokens_BxN)
  np.testing.assert_array_equal(out.lengths_B, static.lengths_B)
  np.testing.assert_array_equal(out.truncated_B, static.truncated_B)
  np.testing.assert_allclose(out.logprobs_BxN, static.logprobs_BxN, atol=1e-5, rtol=1e-5)
  lengths = static.lengths_B
  assert lengths[5] == 1 and lengths.min() < lengths.max() == N_NEW and len(set(lengths.tolist())) >= 4, lengths
  assert sampler.last_stats.compactions >= 1 and sampler.last_stats.slot_steps < 12 * int(static.decode_steps)


def test_all_rows_truncated():
  """No EOS ids: each of the 6 slots decodes two rows back to back; with temperature, top-k and top-p."""
  graphdef, state = _tiny()
  tokens, valid = _prompts()
  free = _static_free_run(0.8, 40, 0.9)
  sampler = ContinuousSampler(graphdef, _cfg(0.8, 40, 0.9, chunk_steps=5))  # short chunks change nothing either
  out = sampler(state, tokens, valid, jax.random.key(1))
  _assert_same(_static_with_eos(free, ()), out)
  assert np.asarray(out.truncated_B).all() and (np.asarray(out.lengths_B) == N_NEW).all()
  st = sampler.last_stats
  assert st.wasted_slot_steps == 0 and st.slot_steps == 12 * (N_NEW - 1) and st.chunks >= 2 * (N_NEW - 1) // 5


def test_every_row_ends_at_its_first_token():
  """EOS ids = every row's first token: nothing is queued, no decode step runs, rows are [first, pad, ...]."""
  graphdef, state = _tiny()
  tokens, valid = _prompts()
  free = _static_free_run(1.0)
  eos = tuple(sorted(set(free.tokens_BxN[:, 0].tolist())))
  sampler = ContinuousSampler(graphdef, _cfg(1.0, eos_ids=eos))
  out = sampler(state, tokens, valid, jax.random.key(1))
  _assert_same(_static_with_eos(free, eos), out)
  assert (np.asarray(out.lengths_B) == 1).all() and not np.asarray(out.truncated_B).any()
  st = sampler.last_stats
  assert st.decode_steps == 0 and st.slot_steps == 0 and st.chunks == 1


def test_samples_of_one_prompt_end_far_apart():
  """Prompt 1's three samples end at their 2nd token, mid-way and never (truncated), while they share one prefilled
  prompt KV from different slots (6 slots for 12 rows: refills, then compaction)."""
  graphdef, state = _tiny()
  tokens, valid = _prompts()
  free = _static_free_run(1.0)
  eos = (int(free.tokens_BxN[3, 1]), int(free.tokens_BxN[4, 12]))
  expected = _static_with_eos(free, eos)
  lengths = expected[2]
  assert lengths[3] == 2 and lengths[4] <= 13 and lengths[5] == N_NEW, lengths[3:6]
  sampler = ContinuousSampler(graphdef, _cfg(1.0, eos_ids=eos))
  _assert_same(expected, sampler(state, tokens, valid, jax.random.key(1)))
  assert sampler.last_stats.compactions >= 1


def test_ragged_attention_matches_plain():
  rng = np.random.RandomState(0)
  S, P, K, R, T, N, D = 5, 2, 2, 3, 7, 10, 8
  q = jnp.asarray(rng.randn(S, K, R, D), jnp.float32)
  pk, pv = (jnp.asarray(rng.randn(P, K, T, D), jnp.float32) for _ in range(2))
  pvalid = jnp.asarray(np.arange(T)[None] >= np.array([[0], [3]]))
  ck, cv = (jnp.asarray(rng.randn(S, K, N, D), jnp.float32) for _ in range(2))
  idx = jnp.asarray([1, 0, 1, 1, 0])
  limit = jnp.asarray([0, 3, 10, 7, 1])
  own = Segment(ck, cv, jnp.arange(N)[None] < limit[:, None])  # generated keys [0, limit) of each row
  ref = attend(q[:, :, :, None], [Segment(pk[idx], pv[idx], pvalid[idx]), own], D ** -0.5, "plain")[:, :, :, 0]
  for block in (3, 4, 16):  # blocks that do not divide N (the last one overlaps the previous), one block
    fn = jax.jit(functools.partial(ragged_decode_attention, scale=D ** -0.5, block=block))
    out = fn(q, pk, pv, pvalid, idx, ck, cv, limit)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
  # Grouped rows (no index): rows 0-1 read prompt 0, rows 2-3 prompt 1.
  grouped = jnp.asarray([0, 0, 1, 1])
  own = Segment(ck[:4], cv[:4], jnp.arange(N)[None] < limit[:4, None])
  ref = attend(q[:4, :, :, None], [Segment(pk, pv, pvalid, group=2), own], D ** -0.5, "plain")[:, :, :, 0]
  out = ragged_decode_attention(q[:4], pk, pv, pvalid, None, ck[:4], cv[:4], limit[:4], D ** -0.5, 4)
  np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
  np.testing.assert_allclose(out, ragged_decode_attention(q[:4], pk, pv, pvalid, grouped, ck[:4], cv[:4], limit[:4],
                                                          D ** -0.5, 4), atol=2e-6, rtol=1e-5)


def test_decode_slots_matches_full_forward():
  """Rows at different steps, decoded one token at a time with decode_slots, give the logits of a full forward."""
  graphdef, state = _tiny()
  model = nnx.merge(graphdef, state)
  tokens, valid = _prompts(P=3, T=8)
  _, prefix = model.prefill(jnp.asarray(tokens), jnp.asarray(valid))
  rng = np.random.RandomState(1)
  S, N = 4, 9
  prompt_S = np.array([2, 0, 2, 1])
  start_S = np.array([0, 2, 5, 3])  # slot s joins at step start_S[s]
  gen = rng.randint(3, 1000, (S, N)).astype(np.int32)
  cache = model.init_decode_cache(S, N)
  plen = valid.sum(1)
  step_fn = jax.jit(lambda tok, pos, idx, cache, t, lim: model.decode_slots(tok, pos, prefix, idx, cache, t, lim, 4))
  L = tokens.shape[1] + N
  full = jax.jit(lambda seq, ok: model(seq, ok)[:, -1])  # left-padded to one width: one compilation
  for step in range(N + 5):
    t = np.clip(step - start_S, 0, N - 1)
    live = (step >= start_S) & (step - start_S < N)
    logits, cache = step_fn(jnp.asarray(gen[np.arange(S), t]), jnp.asarray(plen[prompt_S] + t),
                            jnp.asarray(prompt_S), cache, jnp.asarray(t), jnp.asarray(np.where(live, t + 1, 0)))
    for s in np.flatnonzero(live & (t % 3 == 1)):  # compare a few steps against a full forward
      seq = np.concatenate([tokens[prompt_S[s]], gen[s, :t[s] + 1]])
      ok = np.concatenate([valid[prompt_S[s]], np.ones(t[s] + 1, bool)])
      seq, ok = np.pad(seq, (L - len(seq), 0)), np.pad(ok, (L - len(ok), 0))
      np.testing.assert_allclose(logits[s], full(seq[None], ok[None])[0], atol=2e-4, rtol=1e-4)


def test_decode_slots_column_write_matches_per_row_scatter():
  """Slots all at one step (what a call with a slot per row has): writing the new keys as one column at that step
  gives the logits and caches of the per-row scatter it replaces, step after step."""
  graphdef, state = _tiny()
  model = nnx.merge(graphdef, state)
  tokens, valid = _prompts(P=2, T=8)
  _, prefix = model.prefill(jnp.asarray(tokens), jnp.asarray(valid))
  S, N = 4, 6
  gen = np.random.RandomState(2).randint(3, 1000, (S, N)).astype(np.int32)
  plen = jnp.asarray(valid.sum(1)).repeat(2)
  live = jnp.asarray([True, False, True, True])  # slot 1 has ended: its output does not count

  def run(shared):
    cache = model.init_decode_cache(S, N)
    out = []
    for t in range(N):
      t_S = jnp.full((S,), t, jnp.int32)
      logits, cache = model.decode_slots(jnp.asarray(gen[:, t]), plen + t, prefix, None, cache, t_S,
                                         jnp.where(live, t + 1, 0), 4, jnp.int32(t) if shared else None)
      out.append(logits[np.asarray(live)])
    return jnp.stack(out), cache

  (a, cache_a), (b, cache_b) = run(False), run(True)
  np.testing.assert_array_equal(a, b)
  for la, lb in zip(cache_a.layers, cache_b.layers):
    np.testing.assert_array_equal(la.k, lb.k)
    np.testing.assert_array_equal(la.v, lb.v)


def test_make_sampler_and_config():
  assert bucket_sizes(64) == (64, 32, 16, 8, 4, 2, 1) and bucket_sizes(48, min_slots=8) == (48, 32, 16, 8)
  assert bucket_sizes(64, step=8) == (64, 56, 48, 40, 32, 24, 16, 8, 4, 2, 1)
  assert bucket_sizes(12, 3, 5) == (12, 10, 5, 4)
  assert bucket_sizes(1) == (1,) and bucket_sizes(5, min_slots=8) == (5,)
  graphdef, _ = _tiny()
  assert isinstance(make_sampler(graphdef, SamplingConfig(max_new_tokens=4)), ContinuousSampler)
  assert isinstance(make_sampler(graphdef, SamplingConfig(max_new_tokens=4, continuous=False)), Sampler)
  with pytest.raises(ValueError, match="min_slots"):
    SamplingConfig(max_new_tokens=4, min_slots=0)
  with pytest.raises(ValueError, match="slots"):
    SamplingConfig(max_new_tokens=4, slots=-1)


def test_smollm2_matches_static_up_to_near_ties():
  """SmolLM2-135M-Instruct, 4 prompts x 2 samples, 32 tokens at T=0.9 in 4 slots (rows refilled mid-call). Batch
  composition changes float rounding by ~1e-5 in the log-probs; no row may change a token because of it (measured:
  0 of 8 rows differ, max |logprob diff| 2.6e-5). A differing row fails the test, with its first index and the
  logit margin there in the message."""
  import dashjax
  from dashjax.sampling.generate import encode_prompts, eos_ids_for

  model, tokenizer = dashjax.load_model("smollm2-135m-instruct")
  graphdef, params = nnx.split(model)
  questions = ["What is 17 + 25?", "Name three colors.", "Write a haiku about rain.", "Is 91 prime? Explain briefly."]
  tokens, valid = encode_prompts(tokenizer, questions, chat=True)
  cfg = SamplingConfig(max_new_tokens=32, temperature=0.9, samples_per_prompt=2, eos_ids=eos_ids_for(model, tokenizer),
                       pad_id=tokenizer.pad_token_id, slots=4, min_slots=4)
  key = jax.random.key(3)
  a = jax.tree.map(np.asarray, Sampler(graphdef, cfg)(params, tokens, valid, key))
  cont = ContinuousSampler(graphdef, cfg)
  b = jax.tree.map(np.asarray, cont(params, tokens, valid, key))
  assert cont.last_stats.chunks >= 1 and cont.traces["chunk[4]"] == 1
  differ = np.flatnonzero((a.tokens_BxN != b.tokens_BxN).any(1))
  report = []
  for r in differ:
    t = int(np.argmax(a.tokens_BxN[r] != b.tokens_BxN[r]))
    np.testing.assert_array_equal(a.tokens_BxN[r, :t], b.tokens_BxN[r, :t])
    np.testing.assert_allclose(a.logprobs_BxN[r, :t], b.logprobs_BxN[r, :t], atol=1e-3)
    seq = np.concatenate([tokens[r // 2], a.tokens_BxN[r, :t]])[None]
    ok = np.concatenate([valid[r // 2], np.ones(t, bool)])[None]
    logits = np.asarray(model(jnp.asarray(seq), jnp.asarray(ok))[0, -1])
    report.append((int(r), t, float(logits[a.tokens_BxN[r, t]] - logits[b.tokens_BxN[r, t]])))
  same = np.setdiff1d(np.arange(8), differ)
  np.testing.assert_array_equal(a.lengths_B[same], b.lengths_B[same])
  np.testing.assert_allclose(a.logprobs_BxN[same], b.logprobs_BxN[same], atol=1e-3)
  print(f"\nSmolLM2: lengths {a.lengths_B.tolist()}; rows differing {len(differ)} of 8 (row, first index, logit margin "
        f"static - continuous token): {report}; max |logprob diff| on identical rows "
        f"{np.abs(a.logprobs_BxN[same] - b.logprobs_BxN[same]).max():.2e}")
  assert len(differ) == 0, f"rows differing (row, first index, logit margin): {report}"
