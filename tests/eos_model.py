"""A tiny random model whose EOS is likely, so that sampled rows end early inside trainer tests (uneven lengths,
refilled slots, compaction), where the plain tiny-random model emits EOS with probability ~2e-5 per token."""

from dashjax.models.loading import tiny_random_model

EOS_DELTA = 1.15  # measured on random prompts: EOS probability 0.06-0.13 per token (0.04 at 1.0, 0.15 at 1.2)


def eos_likely_tiny(delta: float = EOS_DELTA):
  """(model, tokenizer): configs/tiny.py's model with EOS favoured at every position.

  Dimension 0 of every token embedding is set to 1, so the residual stream carries a large constant there and the
  final norm's output h[0] is large and positive everywhere; EOS's tied output row gets `delta` more in that
  dimension, so logit(EOS) - logit(other) ~ h[0] * delta at every position whatever the context."""
  model, tokenizer = tiny_random_model()
  eos = tokenizer.eos_token_id
  model.embed[...] = model.embed[...].at[:, 0].set(1.0).at[eos, 0].add(delta)
  return model, tokenizer
