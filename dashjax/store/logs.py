"""Append-only JSON-lines logs (metrics.jsonl, eval.jsonl) that cost the same per line at step 10 and step 100,000.

Locally a log is one file, appended to. An object in a bucket cannot be appended to (an append rewrites the whole
object), so on an object store the lines go to numbered parts, `NAME.parts/000001.jsonl`, ..., of at most
`PART_LINES` lines: each step rewrites only the open part. `close()` joins everything into one `NAME` object, so a
finished run reads like a local one; a run that was killed is joined when it resumes. `read_jsonl` reads either form.
"""

from __future__ import annotations

import json

from dashjax.store import paths

PART_LINES = 100


def _parts_dir(path: str) -> str:
  return f"{path}.parts"


def _part_names(path: str) -> list[str]:
  return [n for n in paths.listdir(_parts_dir(path)) if n.endswith(".jsonl") and n[:-6].isdigit()]


def _lines(text: str) -> list[str]:
  return [line + "\n" for line in text.splitlines() if line.strip()]


def read_lines(path: str) -> list[str]:
  """Every line of the log at `path`: the joined object, then any parts in order."""
  out = _lines(paths.read_text(path)) if paths.exists(path) else []
  for name in _part_names(path):
    out += _lines(paths.read_text(paths.join(_parts_dir(path), name)))
  return out


def read_jsonl(path: str) -> list[dict]:
  return [json.loads(line) for line in read_lines(path)]


class JsonlLog:
  """`keep` decides, when the log is opened, which earlier lines stay (None: all of them; a resumed run drops what
  it will write again). `fresh=True` starts an empty log."""

  def __init__(self, path: str, *, fresh: bool = False, keep=None):
    self.path, self.remote = path, paths.is_remote(path)
    if fresh:
      self._clear()
    elif keep is not None or (self.remote and _part_names(path)):
      lines = [line for line in read_lines(path) if keep is None or keep(json.loads(line))]
      self._clear()
      if lines:
        paths.write_text(path, "".join(lines))
    self._part: list[str] = []
    self._part_no = 0

  def _clear(self):
    for name in _part_names(self.path):
      paths.remove(paths.join(_parts_dir(self.path), name))
    if paths.exists(self.path):
      paths.remove(self.path)

  def append(self, record: dict) -> None:
    line = json.dumps(record) + "\n"
    if not self.remote:
      with open(self.path, "a") as f:
        f.write(line)
      return
    if not self._part or len(self._part) >= PART_LINES:
      self._part, self._part_no = [], self._part_no + 1
    self._part.append(line)
    paths.write_text(paths.join(_parts_dir(self.path), f"{self._part_no:06d}.jsonl"), "".join(self._part))

  def close(self) -> None:
    """Joins the parts into one object (object stores); nothing to do locally."""
    if self.remote and _part_names(self.path):
      lines = read_lines(self.path)
      paths.write_text(self.path, "".join(lines))
      for name in _part_names(self.path):
        paths.remove(paths.join(_parts_dir(self.path), name))
    self._part = []
