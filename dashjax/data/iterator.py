"""`PromptIterator`: the single source of truth for which prompts each training step uses."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dashjax.data.examples import Example


class PromptIterator:
  """Endless, resumable stream of fixed-size prompt batches, reshuffled every epoch.

  The order within epoch e is a permutation that depends only on (seed, e), so a run is reproducible and a restored
  iterator continues exactly where the interrupted one stopped. Batches always hold exactly `batch_size` examples:
  when an epoch runs out mid-batch, the batch is completed from the start of the next epoch's order (the tail is
  never dropped, unlike the reference code, which never trained on the last len % batch_size problems). Every
  example is therefore visited exactly once per epoch. A batch larger than the dataset spans several epochs.
  """

  def __init__(self, examples: Sequence[Example], batch_size: int, seed: int):
    if int(batch_size) < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(examples) < 1:
      raise ValueError("PromptIterator needs at least one example, got an empty dataset")
    self.examples = list(examples)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self._epoch = 0
    self._position = 0  # index into the current epoch's order of the next example to serve; always < len(examples)
    self._order_epoch, self._order = -1, None

  def __len__(self) -> int:
    return len(self.examples)

  @property
  def epoch(self) -> int:
    """The epoch the next example comes from (0-based); equals the number of completed passes."""
    return self._epoch

  @property
  def position(self) -> int:
    return self._position

  def order(self, epoch: int) -> np.ndarray:
    """The example indices of `epoch`, in visiting order."""
    if epoch != self._order_epoch:
      rng = np.random.default_rng([self.seed % 2**64, epoch])  # SeedSequence entropy must be >= 0
      self._order = rng.permutation(len(self.examples))
      self._order_epoch = epoch
    return self._order

  def next_batch(self) -> list[Example]:
    batch = []
    while len(batch) < self.batch_size:
      order = self.order(self._epoch)
      take = order[self._position:self._position + self.batch_size - len(batch)]
      batch.extend(self.examples[i] for i in take)
      self._position += len(take)
      if self._position == len(order):
        self._epoch, self._position = self._epoch + 1, 0
    return batch

  def __iter__(self):
    return self

  def __next__(self) -> list[Example]:
    return self.next_batch()

  def state(self) -> dict:
    """JSON-serializable position, for checkpoints."""
    return {"epoch": self._epoch, "position": self._position, "num_examples": len(self.examples), "seed": self.seed}

  def restore(self, state: dict) -> None:
    n = state.get("num_examples", len(self.examples))
    if n != len(self.examples) or state.get("seed", self.seed) != self.seed:
      raise ValueError(f"iterator state is for {n} examples with seed {state.get('seed')}, but this iterator has "
                       f"{len(self.examples)} examples with seed {self.seed}: the data or seed changed since the "
                       "checkpoint, so the saved position would not mean the same prompts")
    epoch, position = int(state["epoch"]), int(state["position"])
    if epoch < 0 or not 0 <= position < len(self.examples):
      raise ValueError(f"invalid iterator state {state}")
    self._epoch, self._position = epoch, position
