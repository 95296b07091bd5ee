"""Data file errors: every unusable row is named by file, line (JSON) or row (CSV, parquet, hub) and field, then either
skipped and counted in one warning (data.bad_rows="skip") or raised at once as a one-line ValueError ("error")."""

import json
import os
import sys
import warnings

import pytest

from dashjax.data import file_examples, hub_examples, load_examples

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
  import datasets

  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))


def _good(i):
  return json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1)})


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def _load(path, **kw):
  """(examples, the one skip warning's message or None); fails on any other or any further warning."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = file_examples(path, **kw)
  messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
  assert len(messages) <= 1, messages
  if messages:
    assert "\n" not in messages[0]
  return got, (messages[0] if messages else None)


def _error(path, **kw) -> str:
  with pytest.raises(ValueError) as err:
    file_examples(path, **kw)
  msg = str(err.value)
  assert "\n" not in msg and err.value.__cause__ is None, msg
  return msg


def test_broken_json_line_is_skipped_with_its_line_or_stops_the_load(tmp_path):
  path = _write(tmp_path / "train.jsonl", [_good(0), '{"problem": "What is 1 + 1?", "answer": ', _good(2), _good(3)])
  got, msg = _load(path)
  assert [e.answer for e in got] == ["1", "3", "4"]
  assert msg.startswith(f"{path}: skipped 1 of 4 rows")
  assert f"invalid JSON: 1 (first: {path} line 2: Expecting value at column" in msg
  # Row indices (and so fallback uids) count the broken line, as they would once it is fixed.
  assert [e.uid for e in got] == ["train/train/0", "train/train/2", "train/train/3"]

  msg = _error(path, bad_rows="error")
  assert msg.startswith(f"{path} line 2: invalid JSON: Expecting value at column") and "data.bad_rows='error'" in msg


def test_empty_and_blank_files_name_the_file(tmp_path):
  (tmp_path / "empty.jsonl").write_text("")
  path = str(tmp_path / "empty.jsonl")
  assert _error(path) == f"{path}: the file is empty (0 bytes)"
  path = _write(tmp_path / "blank.jsonl", ["", "   ", "\t"])
  assert _error(path) == f"{path}: the file has no rows, only blank lines"
  path = _write(tmp_path / "empty.json", ["[ ]"])
  assert _error(path).startswith(f"{path}: the file has no rows")
  path = _write(tmp_path / "header.csv", ["problem,answer"])
  assert _error(path) == f"{path}: the file has no rows, only a header line"


# Line 2 of each file is the bad row; its reason as the messages give it.
BAD_ROWS = {
    "missing_answer": ('{"problem": "p"}', "field 'answer' (data.answer_field) is missing"),
    "null_answer": ('{"problem": "p", "answer": null}', "field 'answer' (data.answer_field) is null"),
    "empty_answer": ('{"problem": "p", "answer": "  "}', "field 'answer' (data.answer_field) is empty"),
    "empty_problem": ('{"problem": "", "answer": "1"}', "field 'problem' (data.problem_field) is empty"),
    "null_problem": ('{"problem": null, "answer": "1"}', "field 'problem' (data.problem_field) is null"),
    "not_object": ('["p", "1"]', "not a JSON object: an array"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_error_mode_names_file_line_and_field(tmp_path, kind):
  row, reason = BAD_ROWS[kind]
  path = _write(tmp_path / "data.jsonl", [_good(0), row, _good(2)])
  assert _error(path, bad_rows="error").startswith(f"{path} line 2: {reason} (data.bad_rows='error'")


def test_skip_counts_each_reason_once_with_its_first_row(tmp_path):
  lines = [_good(0), '{"problem": "p"}', '{"problem": "p", "answer": null}', _good(3),
           '{"problem": " ", "answer": "1"}', '{"problem": "q"}', '"just text"', "", '{"problem": "r", "answer": ""}',
           _good(9)]
  path = _write(tmp_path / "data.jsonl", lines)
  got, msg = _load(path)
  assert [e.problem for e in got] == ["What is 0 + 1?", "What is 3 + 1?", "What is 9 + 1?"]
  assert msg.startswith(f"{path}: skipped 6 of 9 rows (data.bad_rows='skip'): ")  # the blank line is not a row
  assert f"field 'answer' (data.answer_field) is missing: 2 (first: {path} line 2)" in msg
  assert f"field 'answer' (data.answer_field) is null: 1 (first: {path} line 3)" in msg
  assert f"field 'problem' (data.problem_field) is empty: 1 (first: {path} line 5)" in msg
  assert f"not a JSON object: 1 (first: {path} line 7: a string)" in msg
  assert f"field 'answer' (data.answer_field) is empty: 1 (first: {path} line 9)" in msg


def test_a_file_with_no_usable_row_is_an_error_in_either_mode(tmp_path):
  path = _write(tmp_path / "data.jsonl", ['{"problem": "p", "answer": ""}', "{oops", '{"problem": "q", "answer": ""}'])
  msg = _error(path)
  assert msg.startswith(f"{path}: no usable rows, 3 unusable: ")
  assert f"field 'answer' (data.answer_field) is empty: 2 (first: {path} line 1)" in msg
  assert f"invalid JSON: 1 (first: {path} line 2: Expecting property name" in msg
  assert _error(path, bad_rows="error").startswith(f"{path} line 1: field 'answer' (data.answer_field) is empty")


def test_a_column_missing_from_every_row_is_still_a_config_error(tmp_path):
  path = _write(tmp_path / "data.jsonl", ['{"question": "p", "final": 1}', "{oops", '{"question": "q"}'])
  with pytest.raises(KeyError) as err:
    file_examples(path, problem_field="question", answer_field="answer")
  msg = str(err.value)
  assert "answer field 'answer'" in msg and "data.answer_field" in msg and "['question', 'final']" in msg


def test_csv_empty_answer_cell_names_the_data_row(tmp_path):
  path = _write(tmp_path / "data.csv", ["problem,answer", "What is 1 + 1?,two", "What is 2 + 2?,",
                                        "What is 3 + 3?,six"])
  got, msg = _load(path)
  assert [e.answer for e in got] == ["two", "six"]
  assert msg == (f"{path}: skipped 1 of 3 rows (data.bad_rows='skip'): field 'answer' (data.answer_field) is empty: 1 "
                 f"(first: {path} row 2)")
  assert _error(path, bad_rows="error").startswith(f"{path} row 2: field 'answer' (data.answer_field) is empty")


def test_unreadable_table_files_are_one_line(tmp_path):
  (tmp_path / "data.parquet").write_text("not a parquet file")
  path = str(tmp_path / "data.parquet")
  msg = _error(path)
  assert msg.startswith(f"{path}: cannot read as parquet: ArrowInvalid: ") and "magic bytes" in msg
  path = _write(tmp_path / "ragged.csv", ["problem,answer", "a,1", "b,2,3"])
  assert _error(path).startswith(f"{path}: cannot read as csv: ParserError: ")


def test_json_array_rows_are_named_by_the_line_they_start_on(tmp_path):
  rows = ['[', '  {"problem": "p0", "answer": "1"},', '  {"problem": "p1",', '   "answer": ""},',
          '  {"problem": "p2", "answer": 3}', ']']
  path = _write(tmp_path / "data.json", rows)
  got, msg = _load(path)
  assert [(e.problem, e.answer) for e in got] == [("p0", "1"), ("p2", "3")]
  assert msg.endswith(f"field 'answer' (data.answer_field) is empty: 1 (first: {path} line 3)")
  assert _error(path, bad_rows="error").startswith(f"{path} line 3: field 'answer'")
  # A broken array cannot be resynchronized: always an error, at the line JSON reports.
  rows[4] = '  {"problem": "p2" "answer": 3}'
  path = _write(tmp_path / "broken.json", rows)
  assert _error(path).startswith(f"{path} line 5: invalid JSON in the array of rows: Expecting ',' delimiter")
  # One line of objects, and a dict of columns, load too.
  path = _write(tmp_path / "flat.json", [json.dumps([{"problem": "a", "answer": "1"}, {"problem": "b", "answer": 2}])])
  assert [e.answer for e in _load(path)[0]] == ["1", "2"]
  path = _write(tmp_path / "cols.json", [json.dumps({"problem": ["a", "b"], "answer": ["1", None]}, indent=1)])
  got, msg = _load(path)
  assert [e.problem for e in got] == ["a"] and msg.endswith(f"is null: 1 (first: {path} row 2)")


def test_hub_rows_are_named_by_dataset_split_and_row(monkeypatch):
  import datasets

  ds = datasets.Dataset.from_list([{"problem": "p0", "answer": "1"}, {"problem": "p1", "answer": None}])
  monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: ds)
  with pytest.warns(UserWarning) as caught:
    got = hub_examples("org/set", "train")
  assert [e.problem for e in got] == ["p0"]
  assert str(caught[0].message).endswith("is null: 1 (first: hub dataset 'org/set' split 'train' row 2)")
  with pytest.raises(ValueError, match=r"^hub dataset 'org/set' split 'train' row 2: field 'answer'"):
    hub_examples("org/set", "train", bad_rows="error")
  with pytest.raises(ValueError, match="bad_rows='ignore'"):
    hub_examples("org/set", "train", bad_rows="ignore")


def _config(name, *args):
  sys.path.insert(0, CONFIGS)
  try:
    module = __import__(name)
  finally:
    sys.path.remove(CONFIGS)
  return module.get_config(*args)


def test_load_examples_follows_data_bad_rows(tmp_path):
  lines = [_good(i) for i in range(20)]
  lines[6] = '{"problem": "What is 6 + 1?"}'
  c = _config("tiny")
  c.data.path = _write(tmp_path / "letters.jsonl", lines)
  c.data.bad_rows = "error"
  with pytest.raises(ValueError) as err:
    load_examples(c.data)
  assert str(err.value).startswith(f"{c.data.path} line 7: field 'answer' (data.answer_field) is missing")
  c.data.bad_rows = "skip"
  with pytest.warns(UserWarning) as caught:
    train, heldout = load_examples(c.data)
  assert [str(w.message) for w in caught] == [
      f"{c.data.path}: skipped 1 of 20 rows (data.bad_rows='skip'): field 'answer' (data.answer_field) is missing: 1 "
      f"(first: {c.data.path} line 7)"]
  assert len(train) == 11 and len(heldout) == 8


def test_shipped_configs_data_loads_without_warnings(tmp_path):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    train, heldout = load_examples(_config("tiny").data)
    assert len(train) == 64 and len(heldout) == 8
    # qwen25_math reads MATH as jsonl (not in the repository): LaTeX, unicode, numeric answers, some unique_ids.
    rows = [{"problem": f"Find $\\frac{{{i}}}{{2}}$ — ✓", "solution": f"$\\boxed{{{i}}}$\n",
             "answer": i if i % 2 else f"\\frac{{{i}}}{{2}}", "level": f"Level {i % 5}",
             **({"unique_id": f"test/{i}.json"} if i % 3 else {})} for i in range(30)]
    c = _config("qwen25_math", "0.5b")
    c.data.path = _write(tmp_path / "train.jsonl", [json.dumps(r) for r in rows[:20]])
    c.data.heldout_path = _write(tmp_path / "test.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows[20:]])
    train, heldout = load_examples(c.data)
  assert len(train) == 20 and len(heldout) == 10
  assert heldout[0].answer == "\\frac{20}{2}" and heldout[0].uid == "test/20.json"
  assert heldout[1].answer == "21" and heldout[1].uid == "test/train/1"
  assert heldout[1].meta["unique_id"] is None  # an absent key reads as null, as in `datasets` tables
