"""Data sources -> lists of `Example`: reasoning-gym tasks, local files, Hugging Face hub datasets.

`load_examples(cfg.data)` builds the (train, held-out) pair for a run from its config.
"""

from __future__ import annotations

import difflib
import hashlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from dashjax.data.examples import DataError, Example, jsonable
from dashjax.data.tables import FILE_FORMATS, file_examples, hub_examples  # noqa: F401 (re-exported)

SOURCES = ("gym", "file", "hub")  # data.source

# reasoning-gym seeds item i with Random(seed + i) and some tasks use np.random.seed(seed + i) (< 2**32).
_GYM_SEED_RANGE = 2**31


# ---------------------------------------------------------------------------------------------------------------------
# reasoning-gym


def _gym_dataset(task: str, size: int, seed: int, task_kwargs: dict):
  import reasoning_gym

  names = sorted(reasoning_gym.factory.DATASETS)
  if task not in names:
    close = difflib.get_close_matches(task, names, n=5)
    hint = f"did you mean {close}? " if close else ""
    raise DataError(f"unknown reasoning-gym task {task!r}; {hint}valid names include {names[:8]} ... "
                     f"({len(names)} in all, see reasoning_gym.factory.DATASETS)")
  try:
    return reasoning_gym.create_dataset(task, size=size, seed=seed, **task_kwargs)
  except (TypeError, ValueError, AssertionError) as e:
    raise DataError(f"reasoning-gym task {task!r} rejected its settings {task_kwargs}: {e}") from e


def _gym_example(task: str, seed: int, idx: int, entry: dict) -> Example:
  answer = entry.get("answer")
  # Some tasks (graph_color, rush_hour, ...) have no single gold string: their scorer verifies from the metadata.
  return Example(problem=str(entry["question"]), answer="" if answer is None else str(answer), task=task,
                 meta=jsonable(entry), uid=f"{task}/{seed}/{idx}")


def gym_examples(task: str, size: int, seed: int, **task_kwargs) -> list[Example]:
  """`size` examples of a reasoning-gym task, as `reasoning_gym.create_dataset(task, size=, seed=, **task_kwargs)`.

  Note reasoning-gym draws item i from Random(seed + i), so seeds s and s + 1 give shifted copies of nearly the same
  items; `load_examples` therefore hashes the run seed into far-apart gym seeds.
  """
  if size < 0:
    raise DataError(f"size must be >= 0, got {size}")
  ds = _gym_dataset(task, size, seed, task_kwargs)
  return [_gym_example(task, seed, i, ds[i]) for i in range(size)]


def _gym_draw_excluding(task: str, size: int, seed: int, task_kwargs: dict, exclude: set[str]) -> list[Example]:
  """`size` gym items in stream order, skipping questions in `exclude` (the held-out questions)."""
  # Small task spaces (e.g. 1-digit sums) collide often; scan past collisions, but give up rather than loop forever.
  budget = 8 * size + 1000
  ds = _gym_dataset(task, budget, seed, task_kwargs)
  out = []
  for i in range(budget):
    ex = _gym_example(task, seed, i, ds[i])
    if ex.problem in exclude:
      continue
    out.append(ex)
    if len(out) == size:
      return out
  raise DataError(f"reasoning-gym task {task!r} with {task_kwargs} gave only {len(out)} training questions that "
                   f"are not held out, out of {budget} drawn (wanted data.train_size={size}); the task's question "
                   "space is too small: lower data.heldout_size or widen data.task_kwargs")


# ---------------------------------------------------------------------------------------------------------------------
# Config-driven loading


def _get(cfg, name: str, default: Any = None) -> Any:
  # Works for ml_collections.ConfigDict, plain dicts and simple namespaces; None means "unset".
  value = cfg.get(name, default) if isinstance(cfg, Mapping) else getattr(cfg, name, default)
  return default if value is None else value


def _as_dict(x) -> dict:
  if x is None:
    return {}
  return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def stream_seed(seed: int, stream: str) -> int:
  """A seed for one named data stream ("train", "heldout", ...) of run seed `seed`, far from other streams' seeds."""
  digest = hashlib.sha256(f"dashjax/{stream}/{int(seed)}".encode()).digest()
  return int.from_bytes(digest[:8], "little") % _GYM_SEED_RANGE


def _subset(examples: list[Example], n: int, rng: np.random.Generator) -> list[Example]:
  """A random subset of size n that keeps the original order (file order is often meaningful, e.g. by subject)."""
  if n >= len(examples):
    return examples
  keep = np.sort(rng.choice(len(examples), size=n, replace=False))
  return [examples[i] for i in keep]


def _split_tables(train: list[Example], heldout: list[Example] | None, train_size: int, heldout_size: int,
                  seed: int) -> tuple[list[Example], list[Example]]:
  rng = np.random.default_rng(stream_seed(seed, "split"))
  if heldout is None:  # no held-out file/split given: carve one off the training data
    if heldout_size >= len(train):
      raise DataError(f"data.heldout_size={heldout_size} leaves no training data ({len(train)} examples)")
    is_heldout = np.zeros(len(train), bool)
    is_heldout[rng.choice(len(train), size=heldout_size, replace=False)] = True
    heldout = [ex for ex, h in zip(train, is_heldout) if h]
    train = [ex for ex, h in zip(train, is_heldout) if not h]
  elif heldout_size:
    heldout = _subset(heldout, heldout_size, rng)
  # Duplicated problems (within a file or across train/test files) would leak held-out questions into training.
  held = {ex.problem for ex in heldout}
  clean = [ex for ex in train if ex.problem not in held]
  if len(clean) < len(train):
    warnings.warn(f"dropped {len(train) - len(clean)} training examples whose problem text is also held out")
  if not clean:
    raise DataError("no training examples left after removing held-out problems")
  if train_size:
    clean = _subset(clean, train_size, rng)
  return clean, heldout


def load_examples(data_cfg) -> tuple[list[Example], list[Example]]:
  """(train, held-out) examples for a run, from the `data` config section (a whole config with `.data` also works).

  Fields: source ("gym" | "file" | "hub"), seed, train_size, heldout_size;
    gym: task, task_kwargs. Held-out and train come from different (hashed) gym seeds; held-out is a plain sample of
      the task's distribution and training skips its questions, so the two never share a question text.
    file: path, heldout_path; hub: name, config, split (default "train"), heldout_split;
      both: problem_field, answer_field, task (the reward checker, default "math"), bad_rows ("skip": unusable rows
      are dropped and counted in one warning; "error": the first one raises; see `dashjax.data.tables`). Without a
      held-out file/split, a seeded random heldout_size subset of the training data is held out. train_size /
      heldout_size of 0 or None mean "all" for tables (train_size is required for gym). Training problems equal to a
      held-out problem are dropped with a warning.
  """
  d = data_cfg.data if _get(data_cfg, "source") is None and _get(data_cfg, "data") is not None else data_cfg
  source = _get(d, "source", "gym")
  seed = int(_get(d, "seed", 0))
  train_size = int(_get(d, "train_size", 0))
  heldout_size = int(_get(d, "heldout_size", 0))
  if train_size < 0 or heldout_size < 0:
    raise DataError(f"data.train_size ({train_size}) and data.heldout_size ({heldout_size}) must be >= 0")

  if source == "gym":
    task = _get(d, "task")
    if not task:
      raise DataError("data.source='gym' needs data.task (a reasoning-gym task name, e.g. 'basic_arithmetic')")
    if train_size < 1:
      raise DataError(f"data.source='gym' needs data.train_size >= 1, got {train_size}")
    kwargs = _as_dict(_get(d, "task_kwargs"))
    # Held-out first, as plain draws from the task's distribution; training then skips those questions. (Removing
    # training questions from the held-out set instead would bias it: with 2000 training draws nearly every small
    # question, e.g. every 1-digit sum, is in training, leaving only the hard ones held out.)
    heldout = gym_examples(task, heldout_size, stream_seed(seed, "heldout"), **kwargs) if heldout_size else []
    train = _gym_draw_excluding(task, train_size, stream_seed(seed, "train"), kwargs, {ex.problem for ex in heldout})
    return train, heldout

  fields = dict(problem_field=_get(d, "problem_field", "problem"), answer_field=_get(d, "answer_field", "answer"),
                task=_get(d, "task", "math"), bad_rows=_get(d, "bad_rows", "skip"))
  if source == "file":
    path = _get(d, "path")
    if not path:
      raise DataError("data.source='file' needs data.path (a local jsonl/json/parquet/csv file)")
    train = file_examples(path, **fields)
    hpath = _get(d, "heldout_path")
    heldout = file_examples(hpath, **fields) if hpath else None
  elif source == "hub":
    name = _get(d, "name")
    if not name:
      raise DataError("data.source='hub' needs data.name (a Hugging Face dataset id)")
    config = _get(d, "config_name") or _get(d, "config") or None  # base_config names it config_name
    train = hub_examples(name, _get(d, "split", "train"), config=config, **fields)
    hsplit = _get(d, "heldout_split")
    heldout = hub_examples(name, hsplit, config=config, **fields) if hsplit else None
  else:
    raise DataError(f"unknown data.source {source!r}; use one of {SOURCES}")
  return _split_tables(train, heldout, train_size, heldout_size, seed)
