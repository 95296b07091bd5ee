"""Rewards for reasoning-gym tasks, scored by each task's own `score_answer` on the extracted answer.

`gym_reward(completion, entry)` takes a reasoning-gym item (`{"question", "answer", "metadata"}` with
`metadata["source_dataset"]` naming the task, also for items drawn from composite datasets). Any other target
raises ValueError (a configuration error, e.g. reward.fn="gym" on file data, which RewardPool counts in `errors`),
while a task scorer that raises on a malformed answer scores 0 and is no error.

The completion is reduced to its final answer first: gym scorers compare against the bare answer, and a model that
writes "5 - 3 = 2" or a sentence gets ~0 (the base scorer's substring credit, len(gold)/len(text)) on its raw text.

Decision on who is authoritative:
- gold is a plain number (integer, decimal, fraction): the reward is binary, 1.0 if `answers_match` accepts the
  extracted number ("2.0", "1,234", "\\frac{1}{2}" all count) or the task's scorer gives full credit (it may have
  its own tolerance), else 0.0. The scorer's partial credit is dropped on purpose: for numbers it is the substring
  rule, which pays 0.5 for "13" against gold "3", i.e. it rewards a wrong answer for containing the right digit.
- otherwise (words, lists, expressions, puzzles with several valid answers): the task's scorer is authoritative and
  its float (partial credit included) is the reward. The answer is extracted in "text" mode: marker contents as
  written, else the last non-empty line.
"""

from __future__ import annotations

import functools

from dashjax.rewards.extract import extract_answer
from dashjax.rewards.math import answers_match, normalize_answer, to_number


@functools.lru_cache(maxsize=None)
def _scorer(task: str):
  # One default-config dataset object per task and process: score_answer needs an instance.
  import reasoning_gym

  return reasoning_gym.get_score_answer_fn(task)


def _task(entry) -> str:
  """The entry's reasoning-gym task name; ValueError if it is not a reasoning-gym item."""
  meta = entry.get("metadata") if isinstance(entry, dict) else None
  if isinstance(meta, dict) and isinstance(meta.get("source_dataset"), str):
    return meta["source_dataset"]
  what = f"keys {sorted(map(str, entry))[:8]}" if isinstance(entry, dict) else f"type {type(entry).__name__}"
  raise ValueError(f"reward.fn='gym' needs reasoning-gym items (with metadata.source_dataset); this target has "
                   f"{what}: use reward.fn='math' for file data")


def gym_score(answer: str | None, entry: dict) -> float:
  """The task's own score for an already extracted answer, clipped to [0, 1]; 0.0 if the task's scorer raises.
  ValueError if entry is not a reasoning-gym item; an unknown task raises reasoning-gym's error."""
  fn = _scorer(_task(entry))
  if answer is None:
    return 0.0
  try:
    score = float(fn(answer, entry))
  except Exception:  # scorers may choke on malformed answers; that is a wrong answer, not a crash
    return 0.0
  return min(max(score, 0.0), 1.0)


def gym_reward(completion: str, entry: dict) -> float:
  """Reward in [0, 1] for a completion of the reasoning-gym item `entry` (see the module docstring)."""
  _task(entry)  # every sample of a misconfigured run errors, not only those that reach the task's scorer
  gold = entry.get("answer")
  numeric = gold is not None and to_number(normalize_answer(str(gold))) is not None
  pred = extract_answer(completion, mode="math" if numeric else "text")
  if pred is None:
    return 0.0
  if numeric:
    return 1.0 if answers_match(pred, str(gold)) or gym_score(pred, entry) >= 1.0 else 0.0
  return gym_score(pred, entry)
