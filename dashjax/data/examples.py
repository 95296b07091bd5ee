"""`Example`: one problem with its gold answer, the unit every data source produces."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


class DataError(ValueError):
  """Data that cannot be used as given: the message names the file (or dataset), the row and the field."""


class MissingFieldError(DataError, KeyError):
  """A configured field (data.problem_field, ...) that no row has: the user's input, reported as such; still a
  KeyError for callers that catch one."""

  __str__ = ValueError.__str__  # KeyError's would quote the whole message


@dataclasses.dataclass(frozen=True)
class Example:
  """A training or evaluation problem.

  problem: the text shown to the model (before any prompt formatting).
  answer: the gold answer as text ("" when the task has no single gold string, e.g. some reasoning-gym puzzles that
    are verified from `meta`).
  task: selects the reward checker: a reasoning-gym task name (e.g. "basic_arithmetic") or "math".
  meta: JSON-serializable extra data; for reasoning-gym the full gym entry (question, answer, metadata), which is
    what the gym scorer needs, so it can be shipped to a worker process and scored there.
  uid: a stable identifier (for logs, dedup checks and eval tables).
  """

  problem: str
  answer: str
  task: str
  meta: dict = dataclasses.field(default_factory=dict)
  uid: str = ""

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Example":
    return cls(**d)


def _json_default(x: Any):
  # numpy scalars/arrays (from parquet rows), sets and anything else: keep meta JSON-serializable.
  if hasattr(x, "tolist"):
    return x.tolist()
  if isinstance(x, (set, frozenset)):
    return sorted(x, key=repr)
  if isinstance(x, bytes):
    return x.decode("utf-8", "replace")
  return str(x)


def jsonable(d: dict) -> dict:
  """A deep copy of `d` that survives json.dumps (tuples become lists, numpy values Python values)."""
  return json.loads(json.dumps(d, default=_json_default))
