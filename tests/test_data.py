"""Data pipeline: sources (reasoning-gym, files, hub), held-out splits, prompt encoding and the prompt iterator."""

import json

import numpy as np
import pytest

from dashjax.data import (Example, PromptFormatter, PromptIterator, file_examples, gym_examples, hub_examples,
                          load_examples, stream_seed)

ARITH = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)  # a small question space: collisions are likely


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
  import datasets

  # Keep the arrow caches that load_dataset writes for local files out of the user's home.
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def _config(**data):
  from ml_collections import ConfigDict

  return ConfigDict({"data": data})


# ---------------------------------------------------------------------------------------------------------------------
# reasoning-gym


def test_gym_examples_are_deterministic_per_seed_and_scorable():
  import reasoning_gym

  a = gym_examples("basic_arithmetic", 20, seed=5, **ARITH)
  assert a == gym_examples("basic_arithmetic", 20, seed=5, **ARITH)
  assert [e.problem for e in a] != [e.problem for e in gym_examples("basic_arithmetic", 20, seed=1000, **ARITH)]
  ex = a[0]
  assert ex.task == "basic_arithmetic" and ex.uid == "basic_arithmetic/5/0" and ex.problem.startswith("Calculate")
  assert ex.meta["question"] == ex.problem and ex.meta["answer"] == ex.answer
  # meta is plain JSON and still carries everything the gym scorer needs (as it will in a worker process).
  meta = json.loads(json.dumps(ex.meta))
  score = reasoning_gym.get_score_answer_fn("basic_arithmetic")
  assert score(ex.answer, meta) == 1.0 and score("not a number", meta) == 0.0


def test_gym_unknown_task_and_bad_kwargs_name_the_task():
  with pytest.raises(ValueError, match=r"'basic_arithmetc'.*basic_arithmetic"):
    gym_examples("basic_arithmetc", 4, seed=0)
  with pytest.raises(ValueError, match="basic_arithmetic.*no_such_option"):
    gym_examples("basic_arithmetic", 4, seed=0, no_such_option=3)


def test_load_examples_gym_heldout_is_disjoint_and_reproducible():
  cfg = _config(source="gym", task="basic_arithmetic", task_kwargs=ARITH, train_size=300, heldout_size=60, seed=3)
  train, heldout = load_examples(cfg)  # a whole config (with .data) is accepted, as is cfg.data
  assert len(train) == 300 and len(heldout) == 60
  train_q = {e.problem for e in train}
  assert len(train_q) < len(train)  # the space is small enough that train repeats itself ...
  assert not train_q & {e.problem for e in heldout}  # ... yet no held-out question appears in train
  # Held-out is a plain draw from the task's distribution (not thinned to the questions training missed).
  plain = gym_examples("basic_arithmetic", 60, stream_seed(3, "heldout"), **ARITH)
  assert [e.problem for e in heldout] == [e.problem for e in plain]
  again_train, again_heldout = load_examples(cfg.data)
  assert again_train == train and again_heldout == heldout
  cfg.data.seed = 4
  assert [e.problem for e in load_examples(cfg)[0]] != [e.problem for e in train]


def test_load_examples_config_errors():
  with pytest.raises(ValueError, match="data.task"):
    load_examples(_config(source="gym", train_size=4))
  with pytest.raises(ValueError, match="unknown data.source"):
    load_examples(_config(source="ftp", train_size=4))
  with pytest.raises(ValueError, match="data.path"):
    load_examples(_config(source="file"))


# ---------------------------------------------------------------------------------------------------------------------
# Files and hub


def _rows(n):
  return [{"unique_id": f"id{i}", "question": f"What is {i} + 1?", "final": i + 1, "level": i % 3} for i in range(n)]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _write_parquet(path, rows):
  import pandas as pd

  pd.DataFrame(rows).to_parquet(path)
  return str(path)


@pytest.mark.parametrize("writer,suffix", [(_write_jsonl, "jsonl"), (_write_parquet, "parquet")])
def test_file_examples_map_fields(tmp_path, writer, suffix):
  path = writer(tmp_path / f"data.{suffix}", _rows(5))
  got = file_examples(path, problem_field="question", answer_field="final", task="math")
  assert [e.problem for e in got] == [f"What is {i} + 1?" for i in range(5)]
  assert [e.answer for e in got] == [str(i + 1) for i in range(5)]  # non-string gold answers become text
  assert [e.uid for e in got] == [f"id{i}" for i in range(5)]
  assert got[2].task == "math" and got[2].meta["level"] == 2
  json.dumps([e.meta for e in got])


def test_file_missing_field_names_it_and_lists_columns(tmp_path):
  path = _write_jsonl(tmp_path / "data.jsonl", _rows(3))
  with pytest.raises(KeyError) as err:
    file_examples(path, problem_field="problem", answer_field="final")
  msg = str(err.value)
  assert "'problem'" in msg and "data.problem_field" in msg
  assert all(c in msg for c in ("unique_id", "question", "final", "level"))
  with pytest.raises(ValueError, match="extension"):
    file_examples(str(tmp_path / "data.txt"))
  with pytest.raises(FileNotFoundError):
    file_examples(str(tmp_path / "missing.jsonl"))


def test_file_empty_problems_are_skipped_with_a_count(tmp_path):
  rows = _rows(4)
  rows[1]["question"], rows[3]["question"] = "", "   "
  path = _write_jsonl(tmp_path / "data.jsonl", rows)
  with pytest.warns(UserWarning, match="skipped 2 of 4"):
    got = file_examples(path, problem_field="question", answer_field="final")
  assert [e.uid for e in got] == ["id0", "id2"]


def test_load_examples_file_splits(tmp_path):
  train_path = _write_jsonl(tmp_path / "train.jsonl", _rows(40))
  fields = dict(source="file", path=train_path, problem_field="question", answer_field="final", seed=0)
  train, heldout = load_examples(_config(**fields, heldout_size=10))  # seeded split off the training file
  assert len(train) == 30 and len(heldout) == 10
  assert not {e.uid for e in train} & {e.uid for e in heldout}
  assert {e.uid for e in train} | {e.uid for e in heldout} == {f"id{i}" for i in range(40)}
  assert (train, heldout) == load_examples(_config(**fields, heldout_size=10))
  assert heldout != load_examples(_config(**{**fields, "seed": 1}, heldout_size=10))[1]

  # A given held-out file; a training problem repeated in it is dropped from train.
  test_path = _write_jsonl(tmp_path / "test.jsonl", [{**r, "unique_id": "t" + r["unique_id"]} for r in _rows(3)])
  with pytest.warns(UserWarning, match="dropped 3 training"):
    train, heldout = load_examples(_config(**fields, heldout_path=test_path, train_size=20))
  assert [e.uid for e in heldout] == ["tid0", "tid1", "tid2"] and len(train) == 20
  assert not {e.problem for e in train} & {e.problem for e in heldout}


def test_hub_offline_error_suggests_local_files():
  with pytest.raises(RuntimeError, match="data.source='file'"):
    hub_examples("no-such-org/no-such-dataset", "train")


# ---------------------------------------------------------------------------------------------------------------------
# Prompts

PROBLEMS = ["What is 2 + 3?", "Compute the sum of the first ten positive integers and explain each step.", "1+1"]


def test_raw_prompts_encode_left_padded_to_a_fixed_width(tokenizer):
  fmt = PromptFormatter(tokenizer, template="raw", max_prompt_tokens=32)
  examples = [Example(problem=p, answer="", task="math") for p in PROBLEMS]
  assert fmt.format(examples[0]) == PROBLEMS[0]  # the paper's prompt: the problem text, nothing else
  tokens, valid = fmt.encode(examples)
  assert tokens.shape == valid.shape == (3, 32) and tokens.dtype == np.int32 and valid.dtype == bool
  for i, p in enumerate(PROBLEMS):
    ids = tokenizer(p, add_special_tokens=False)["input_ids"]
    assert valid[i].sum() == len(ids) and valid[i, 32 - len(ids):].all()  # padding is on the left only
    np.testing.assert_array_equal(tokens[i, 32 - len(ids):], ids)
    assert (tokens[i, :32 - len(ids)] == fmt.pad_id).all()
  assert len(set(valid.sum(1))) == 3
  # One width for every batch, whatever its longest prompt: the sampler never recompiles.
  assert fmt.encode(examples[2:])[0].shape == (1, 32)


def test_instruction_and_chat_template(tokenizer):
  fmt = PromptFormatter(tokenizer, template="raw", instruction="Answer with a number.", max_prompt_tokens=64)
  assert fmt.format(PROBLEMS[0]) == PROBLEMS[0] + "\n\nAnswer with a number."
  chat = PromptFormatter(tokenizer, template="chat", max_prompt_tokens=64)
  text = chat.format(PROBLEMS[0])
  assert PROBLEMS[0] in text and text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
  tokens, valid = chat.encode([PROBLEMS[0]])
  ref = tokenizer.apply_chat_template([{"role": "user", "content": PROBLEMS[0]}], add_generation_prompt=True,
                                      tokenize=True)
  ref = list(ref["input_ids"]) if hasattr(ref, "keys") else list(ref)
  np.testing.assert_array_equal(tokens[0, valid[0]], ref)


def test_too_long_prompt_is_an_error_not_a_truncation(tokenizer):
  fmt = PromptFormatter(tokenizer, template="raw", max_prompt_tokens=8)
  n = len(tokenizer(PROBLEMS[1], add_special_tokens=False)["input_ids"])
  ex = Example(problem=PROBLEMS[1], answer="55", task="math", uid="long-one")
  with pytest.raises(ValueError, match=rf"1 of 2 prompts exceed data.max_prompt_tokens=8 \(longest: {n} tokens.*long-one"):
    fmt.encode([PROBLEMS[0], ex])
  assert fmt.fits([PROBLEMS[0], ex]) == [True, False]


class _BareTokenizer:
  """No chat template, no pad token: exercises the fallbacks."""
  chat_template = None
  pad_token_id = None
  eos_token_id = 7

  def __call__(self, texts, add_special_tokens=False):
    return {"input_ids": [[ord(c) % 50 + 10 for c in t] for t in texts]}


def test_formatter_fallbacks_and_validation():
  with pytest.raises(ValueError, match="no chat template"):
    PromptFormatter(_BareTokenizer(), template="chat", max_prompt_tokens=8)
  with pytest.raises(ValueError, match="unknown prompt template"):
    PromptFormatter(_BareTokenizer(), template="alpaca", max_prompt_tokens=8)
  fmt = PromptFormatter(_BareTokenizer(), max_prompt_tokens=8)
  assert fmt.pad_id == 7
  tokens, valid = fmt.encode(["abc"])
  assert tokens[0, :5].tolist() == [7] * 5 and valid[0].tolist() == [False] * 5 + [True] * 3


# ---------------------------------------------------------------------------------------------------------------------
# Iterator


def _examples(n):
  return [Example(problem=f"p{i}", answer=str(i), task="t", uid=str(i)) for i in range(n)]


def _uids(batches):
  return [int(e.uid) for b in batches for e in b]


def test_iterator_covers_each_epoch_once_and_reshuffles():
  it = PromptIterator(_examples(10), batch_size=5, seed=0)
  seen = _uids(it.next_batch() for _ in range(6))
  epochs = [seen[i:i + 10] for i in range(0, 30, 10)]
  assert all(sorted(e) == list(range(10)) for e in epochs)
  assert len({tuple(e) for e in epochs}) == 3  # a fresh order every epoch
  assert it.epoch == 3
  same = PromptIterator(_examples(10), batch_size=5, seed=0)
  assert _uids(same.next_batch() for _ in range(6)) == seen  # order depends only on (seed, epoch)
  assert _uids([PromptIterator(_examples(10), batch_size=10, seed=1).next_batch()]) != epochs[0]


def test_iterator_wraps_the_tail_into_the_next_epoch():
  it = PromptIterator(_examples(10), batch_size=4, seed=0)
  batches = [it.next_batch() for _ in range(5)]  # 20 examples: 2 full epochs, no batch shorter than 4
  assert all(len(b) == 4 for b in batches)
  flat = _uids(batches)
  assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10))
  assert flat[8:12] == _uids([batches[2]])  # batch 3 = the last 2 of epoch 0 + the first 2 of epoch 1
  assert it.order(1)[:2].tolist() == flat[10:12]
  big = PromptIterator(_examples(3), batch_size=7, seed=0)  # a batch larger than the data spans epochs
  assert len(big.next_batch()) == 7 and big.epoch == 2 and big.state()["position"] == 1


def test_iterator_state_restore_continues_the_same_sequence():
  data = _examples(13)
  whole = PromptIterator(data, batch_size=5, seed=9)
  reference = _uids(whole.next_batch() for _ in range(12))
  for cut in (0, 1, 2, 5, 11):
    it = PromptIterator(data, batch_size=5, seed=9)
    first = [it.next_batch() for _ in range(cut)]
    state = json.loads(json.dumps(it.state()))  # as stored in a checkpoint
    assert set(state) >= {"epoch", "position"} and all(isinstance(v, int) for v in state.values())
    resumed = PromptIterator(data, batch_size=5, seed=9)
    resumed.restore(state)
    assert resumed.epoch == it.epoch
    assert _uids(first) + _uids(resumed.next_batch() for _ in range(12 - cut)) == reference
  with pytest.raises(ValueError, match="13 examples"):
    PromptIterator(_examples(12), batch_size=5, seed=9).restore(state)


def test_iterator_validates_arguments():
  with pytest.raises(ValueError, match="batch_size"):
    PromptIterator(_examples(3), batch_size=0, seed=0)
  with pytest.raises(ValueError, match="at least one example"):
    PromptIterator([], batch_size=2, seed=0)
