"""Tables -> lists of `Example`: local data files (jsonl/json/parquet/csv/arrow) and Hugging Face hub datasets.

Every data error names its file and row: "FILE line N" for JSON files (the 1-based line in the file, which is where the
row starts for a JSON array) and "FILE row N" for other formats and hub splits (1-based data row, a CSV header not
counted). Unusable rows (invalid JSON, a value that is not an object, a missing, null or empty problem or answer) are
either skipped and counted in one warning (bad_rows="skip") or stop the load at the first (bad_rows="error"). A file
with no usable row is always an error.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import json
import lzma
import math
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any, Iterable

from dashjax.data.examples import DataError, Example, MissingFieldError, jsonable

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet",
                ".csv": "csv", ".arrow": "arrow"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")
_OPENERS = {"": open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # JSON we can decompress and read here
BAD_ROWS = ("skip", "error")
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}
_SPACE = re.compile(r"\s*")


class _BadRows:
  """Unusable rows of one load: mode "error" raises at the first, "skip" counts them by reason."""

  def __init__(self, mode: str):
    self.mode, self.counts, self.first = mode, {}, {}

  def add(self, loc: str, reason: str, detail: str = ""):
    where = f"{loc}: {detail}" if detail else loc
    if self.mode == "error":
      raise DataError(f"{loc}: {reason}{': ' + detail if detail else ''} (data.bad_rows='error'; 'skip' drops "
                       "unusable rows with one warning)")
    self.counts[reason] = self.counts.get(reason, 0) + 1
    self.first.setdefault(reason, where)

  def merge(self, other: "_BadRows"):
    for reason, n in other.counts.items():
      self.counts[reason] = self.counts.get(reason, 0) + n
      self.first.setdefault(reason, other.first[reason])

  def total(self) -> int:
    return sum(self.counts.values())

  def summary(self) -> str:
    return "; ".join(f"{reason}: {n} (first: {self.first[reason]})" for reason, n in self.counts.items())


def _check_mode(bad_rows: str):
  if bad_rows not in BAD_ROWS:
    raise ValueError(f"bad_rows={bad_rows!r} must be one of {BAD_ROWS}")


def _is_null(v) -> bool:
  return v is None or (isinstance(v, float) and math.isnan(v))  # pandas/csv give NaN for empty numeric cells


def _unusable(row, fields, null: str) -> tuple[str, str] | None:
  """(reason, detail) when `row` cannot become an Example, else None; `null` names a null value."""
  if not isinstance(row, Mapping):
    return "not a JSON object", _JSON_KINDS.get(type(row), type(row).__name__)
  for role, field in fields:
    if field not in row:
      state = "missing"
    elif _is_null(row[field]):
      state = null
    elif (isinstance(row[field], (list, dict)) and not row[field]) or not str(row[field]).strip():
      state = "empty"
    else:
      continue
    return f"field {field!r} (data.{role}_field) is {state}", ""
  return None


def _examples(rows: Iterable[tuple[str, Any, str | None]], columns: list[str], fields, task: str, uid_prefix: str,
              start: int, where: str, bad: _BadRows, null: str = "null") -> tuple[list[Example], int]:
  """Examples from (location, row, JSON error or None) triples, and how many rows there were (usable or not)."""
  for role, field in fields:
    # A field absent from every row is a config mistake, not bad rows: say which columns there are.
    if columns and field not in columns:
      raise MissingFieldError(f"{where} has no {role} field {field!r} (set data.{role}_field); available columns: "
                              f"{columns}")
  (_, problem_field), (_, answer_field) = fields
  out, count = [], 0
  for i, (loc, row, error) in enumerate(rows, start):
    count += 1
    why = ("invalid JSON", error) if error is not None else _unusable(row, fields, null)
    if why:
      bad.add(loc, *why)
      continue
    uid = next((str(row[k]) for k in ("unique_id", "uid", "id") if k in row and row[k] is not None),
               f"{uid_prefix}/{i}")
    # Every column in meta, None where a JSON row lacks it, as `datasets` tables give.
    out.append(Example(problem=str(row[problem_field]), answer=str(row[answer_field]), task=task,
                       meta=jsonable({**dict.fromkeys(columns), **row}), uid=uid))
  return out, count


def _short(e: BaseException) -> str:
  """One line for an exception: its innermost cause (library wrappers add nothing), first line, capped."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  lines = str(e).strip().splitlines()
  text = lines[0][:200] + ("..." if len(lines[0]) > 200 or len(lines) > 1 else "") if lines else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---------------------------------------------------------------------------------------------------------------------
# Reading files


def _split_compression(path: str) -> tuple[str, str]:
  name = os.fspath(path).lower()
  comp = next((c for c in _COMPRESSION if name.endswith(c)), "")
  return name[:len(name) - len(comp)], comp


def _file_format(path) -> str:
  first = path[0] if isinstance(path, (list, tuple)) else path
  fmt = FILE_FORMATS.get(os.path.splitext(_split_compression(first)[0])[1])
  if fmt is None:
    raise DataError(f"cannot tell the format of {os.fspath(first)!r} from its extension; "
                     f"supported: {sorted(FILE_FORMATS)} (optionally compressed)")
  return fmt


def _json_error(e: ValueError) -> str:
  return f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)


def _json_array_rows(f: str, text: str) -> list:
  """Rows of a JSON array of objects, each located at the line where it starts."""
  decoder, rows = json.JSONDecoder(), []
  pos = _SPACE.match(text, _SPACE.match(text).end() + 1).end()  # past "["
  line, seen = 1, 0
  while not text.startswith("]", pos):
    try:
      value, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      # Past a broken element the array cannot be resynchronized, so this is never a skippable row.
      raise DataError(f"{f} line {e.lineno}: invalid JSON in the array of rows: {_json_error(e)}") from None
    line, seen = line + text.count("\n", seen, pos), pos
    rows.append((f"{f} line {line}", value, None))
    pos = _SPACE.match(text, end).end()
    if text.startswith(",", pos):
      pos = _SPACE.match(text, pos + 1).end()
    elif not text.startswith("]", pos):
      at = text.count("\n", 0, pos) + 1
      raise DataError(f"{f} line {at}: invalid JSON in the array of rows: expected ',' or ']' after an element")
  if text[pos + 1:].strip():
    at = text.count("\n", 0, pos) + 1
    raise DataError(f"{f} line {at}: extra data after the JSON array of rows")
  return rows


def _is_json_lines(lines: list[str]) -> bool:
  """Several non-blank lines, the first a whole JSON value (e.g. a JSON Lines file whose first row is an array)."""
  nonblank = (line for line in lines if line.strip())
  first = next(nonblank, None)
  if first is None or next(nonblank, None) is None:
    return False
  try:
    json.loads(first)
  except ValueError:
    return False
  return True


def _json_rows(f: str, comp: str) -> list | None:
  """Rows of a JSON Lines file or JSON array, or None for other JSON shapes (e.g. a dict of columns)."""
  try:
    with _OPENERS[comp](f, "rb") as fh:
      data = fh.read()
  except (OSError, EOFError, lzma.LZMAError) as e:
    raise DataError(f"{f}: cannot read as {comp[1:]}-compressed json: {_short(e)}") from None
  data = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    at = data.count(b"\n", 0, e.start) + 1
    raise DataError(f"{f} line {at}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  if not text.strip():
    raise DataError(f"{f}: the file has no rows, only blank lines")
  lines = text.split("\n")
  if text.lstrip()[0] == "[" and not _is_json_lines(lines):
    return _json_array_rows(f, text)
  try:  # fails fast on JSON Lines ("Extra data" after the first row)
    whole = json.loads(text)
  except ValueError:
    whole = None
  if isinstance(whole, dict):
    columns = list(whole.values())
    if columns and all(isinstance(c, list) for c in columns) and len({len(c) for c in columns}) == 1:
      # A dict of columns ({"problem": [...], "answer": [...]}): row N is the N-th entry of each.
      return [(f"{f} row {n}", dict(zip(whole, values)), None) for n, values in enumerate(zip(*columns), 1)]
    if "\n" in text.strip():  # some other multi-line object: not JSON Lines, leave it to `datasets`
      return None
  rows = []
  for n, line in enumerate(lines, 1):
    if line.strip():
      try:
        rows.append((f"{f} line {n}", json.loads(line), None))
      except ValueError as e:
        rows.append((f"{f} line {n}", None, _json_error(e)))
  return rows


def _dataset_rows(f: str, fmt: str):
  """(rows, columns) of one file read by `datasets` (parquet, csv, arrow, other compression, other JSON shapes)."""
  import datasets

  verbosity = datasets.logging.get_verbosity()
  datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its error log would only repeat the reason below
  try:
    ds = datasets.load_dataset(fmt, data_files=[f], split="train")
  except Exception as e:  # datasets wraps parser errors in long chains: keep one line, the innermost reason
    if fmt == "csv" and not _split_compression(f)[1]:
      with open(f, "rb") as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
      if len(lines) <= 1:
        raise DataError(f"{f}: the file has no rows, only {'a header line' if lines else 'blank lines'}") from None
    raise DataError(f"{f}: cannot read as {fmt}: {_short(e)}") from None
  finally:
    datasets.logging.set_verbosity(verbosity)
  if not len(ds):
    raise DataError(f"{f}: the file has no rows (columns {ds.column_names})")
  return ((f"{f} row {n}", row, None) for n, row in enumerate(ds, 1)), ds.column_names


def _read_file(f: str):
  """(rows, columns) of one file: rows are (location, row, JSON error or None)."""
  if os.path.isdir(f):
    raise DataError(f"{f} is a directory; give data files or a glob such as {os.path.join(f, '*.jsonl')}")
  if os.path.getsize(f) == 0:
    raise DataError(f"{f}: the file is empty (0 bytes)")
  fmt = _file_format(f)
  comp = _split_compression(f)[1]
  rows = _json_rows(f, comp) if fmt == "json" and comp in _OPENERS else None
  if rows is None:
    return _dataset_rows(f, fmt)
  if not rows:
    raise DataError(f"{f}: the file has no rows (an empty JSON array or columns)")
  columns = list(dict.fromkeys(k for _, row, _ in rows if isinstance(row, Mapping) for k in row))
  return rows, columns


def _as_files(p) -> list[str]:
  return [os.fspath(x) for x in p] if isinstance(p, (list, tuple)) else [os.fspath(p)]


def _expand(specs: list[str]) -> list[str]:
  files = []
  for s in specs:
    if any(c in s for c in "*?["):
      found = sorted(glob.glob(s, recursive=True))
      if not found:
        raise FileNotFoundError(f"no data files match {s}")
      files += found
    elif not os.path.exists(s):
      raise FileNotFoundError(f"data file not found: {s}")
    else:
      files.append(s)
  return files


def _warn_skipped(source: str, bad: _BadRows, rows: int):
  if bad.counts:
    warnings.warn(f"{source}: skipped {bad.total()} of {rows} rows (data.bad_rows='skip'): {bad.summary()}",
                  stacklevel=3)


def file_examples(path, problem_field: str = "problem", answer_field: str = "answer", split: str = "train",
                  task: str = "math", bad_rows: str = "skip") -> list[Example]:
  """Examples from local jsonl/json/parquet/csv/arrow files (optionally compressed).

  `path` is a file, a glob or a list of them (all one split), or a dict {split: files} from which `split` is taken.
  JSON Lines and JSON arrays (plain, .gz, .bz2 or .xz) are read here, line by line; other formats and JSON shapes via
  `datasets.load_dataset(<format>, ...)`. Unusable rows are skipped and counted in one warning (bad_rows="skip") or
  raise a one-line ValueError at the first (bad_rows="error"); see the module docstring. A `unique_id`/`uid`/`id`
  column, if present, becomes the example uid.
  """
  _check_mode(bad_rows)
  files = {k: _as_files(v) for k, v in path.items()} if isinstance(path, Mapping) else {split: _as_files(path)}
  if split not in files:
    raise KeyError(f"split {split!r} not in the files given ({sorted(files)})")
  specs = files[split]
  _file_format(specs)  # an unknown extension fails before looking for the file
  fields = (("problem", problem_field), ("answer", answer_field))
  uid_prefix = f"{os.path.basename(specs[0]).split('.')[0]}/{split}"
  out, bad, count = [], _BadRows(bad_rows), 0
  for f in _expand(specs):
    rows, columns = _read_file(f)
    file_bad = _BadRows(bad_rows)
    # CSV has no null: an empty cell reads as one.
    null = "empty" if _file_format(f) == "csv" else "null"
    got, n = _examples(rows, columns, fields, task, uid_prefix, count, f"file {f!r}", file_bad, null)
    if not got:
      raise DataError(f"{f}: no usable rows, {n} unusable: {file_bad.summary()}")
    out += got
    count += n
    bad.merge(file_bad)
  _warn_skipped(specs[0] if len(specs) == 1 else ", ".join(specs), bad, count)
  return out


def hub_examples(name: str, split: str, problem_field: str = "problem", answer_field: str = "answer",
                 config: str | None = None, task: str = "math", bad_rows: str = "skip") -> list[Example]:
  """Examples from a Hugging Face hub dataset (needs network, or a dataset already in the local `datasets` cache).

  Rows are named "hub dataset NAME split SPLIT row N" (1-based); unusable rows are handled as in `file_examples`.
  """
  import datasets

  _check_mode(bad_rows)
  try:
    ds = datasets.load_dataset(name, config, split=split)
  except (ConnectionError, OSError) as e:  # OfflineModeIsEnabled / DatasetNotFoundError land here
    raise RuntimeError(
        f"could not load hub dataset {name!r} (config {config!r}, split {split!r}): {e}. Without network access, "
        "save the data as local jsonl/parquet files and use data.source='file' with data.path "
        "(and data.heldout_path)") from e
  where = f"hub dataset {name!r} split {split!r}"
  if not len(ds):
    raise DataError(f"{where}: no rows")
  bad = _BadRows(bad_rows)
  rows = ((f"{where} row {n}", row, None) for n, row in enumerate(ds, 1))
  out, count = _examples(rows, ds.column_names, (("problem", problem_field), ("answer", answer_field)), task,
                         f"{name.rsplit('/', 1)[-1]}/{split}", 0, where, bad)
  if not out:
    raise DataError(f"{where}: no usable rows, {count} unusable: {bad.summary()}")
  _warn_skipped(where, bad, count)
  return out
