"""Answer normalization and equivalence for math answers, and the binary math reward.

`answers_match(pred, gold)` decides in three steps, cheapest first:

1. the normalized strings are equal (Hendrycks-MATH-style normalization, see `normalize_answer`);
2. both are plain numbers (integers, decimals, `a/b`, `\\frac{a}{b}`, `1,234`): equal within 1e-6 relative
   (whole numbers exactly), and that decides it: two different numbers never reach sympy, which keeps wrong
   numeric answers (most samples early in training) at microseconds instead of ~5 ms;
3. otherwise `math_verify.verify(parse(gold), parse(pred))` (symbolic equality: `\\sqrt{8}` = `2\\sqrt{2}`,
   `\\frac{1}{2}` = `0.5`, sets, intervals, equations). Both sides are wrapped in `$...$` first: math_verify's
   LaTeX extractor only looks inside math delimiters or `\\boxed{}`, so a bare `\\sqrt{2}` or `x+1` parses to
   nothing, while bare numbers happen to work through its plain-expression extractor. Before verify, plain
   expressions are compared by value at a fixed point: clearly different -> False, equal constants -> True,
   without simplify.

math_verify guards its own sympy calls with `signal.alarm` (whole seconds, main thread only). We keep that as an
inner timeout where it is allowed and pass None elsewhere (a non-main thread would make it raise); the outer,
hard timeout is `RewardPool`'s, which kills a worker stuck inside C code where no signal handler can run.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from fractions import Fraction

from dashjax.rewards.extract import extract_answer, last_boxed

MV_TIMEOUT_S = 2  # math_verify's per-call alarm (int seconds); keep it under RewardPool's timeout
MAX_SYMBOLIC_CHARS = 500  # longer answers are compared as strings only

_TEXT_CMDS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[!,;: ]|\\(?:left|right|big|Big|bigg|Bigg|displaystyle)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?")  # unambiguous: no backtracking
_FRACTION = re.compile(r"[+-]?\d+/[+-]?\d+")
_LATEX_FRACTION = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# "5 apples", "18 \text{ dollars}" (after unwrapping), "12 cm^2": a numeric head, then words.
_TRAILING_UNITS = re.compile(r"(.*?\d\}?)\s+[A-Za-z]{2,}[A-Za-z\s.]*(?:\^\{?\d\}?)?")


def _clean(s: str) -> str:
  """Normalization that keeps the string valid LaTeX (spaces kept), used before math_verify."""
  s = str(s).strip().replace("\u2212", "-")
  if "\\boxed" in s or "\\fbox" in s:
    s = last_boxed(s) or s
  s = s.removeprefix("####").strip()
  s = s.replace("\\$", "").replace("$", "")
  for delim in ("\\(", "\\)", "\\[", "\\]"):
    s = s.replace(delim, "")
  s = _SPACING.sub("", s)
  s = _DEGREES.sub("", s)
  s = s.replace("\\%", "").replace("%", "")
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  for _ in range(3):  # nested: \text{\textbf{5}}
    s = _TEXT_CMDS.sub(r"\1", s)
  s = s.replace("{,}", ",").strip()
  m = _TRAILING_UNITS.fullmatch(s) if len(s) <= 100 else None  # the regex backtracks on long inputs
  if m and not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", m.group(1))):
    s = m.group(1)
  # TeX shorthands: \frac12 -> \frac{1}{2}, \frac1{x} -> \frac{1}{x}, \sqrt3 -> \sqrt{3}
  s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac(\d)(?=\{)", r"\\frac{\1}", s)
  s = re.sub(r"\\frac(\{[^{}]*\})(\d)", r"\\frac\1{\2}", s)
  s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
  return s.strip().rstrip(".").strip()


def normalize_answer(s: str) -> str:
  """Canonical string for exact comparison: `_clean`, then no spaces, no thousands commas, no short `x=` prefix.

  Examples: "$1,234$" -> "1234"; "\\dfrac{1}{2}" -> "\\frac{1}{2}"; "x = 5" -> "5"; "18 \\text{ dollars}" -> "18";
  "\\left( 1, 2 \\right)" -> "(1,2)"; "(B)" -> "B"; "50\\%" -> "50"; ".5" -> "0.5"; "#### 72" -> "72".
  """
  s = re.sub(r"\s+", "", _clean(s))
  if _THOUSANDS.fullmatch(s):
    s = s.replace(",", "")
  lhs, eq, rhs = s.partition("=")
  if eq and 0 < len(lhs) <= 2 and lhs.isalpha() and rhs and "=" not in rhs:  # "x=5", "k=3" (Hendrycks' rule)
    s = rhs
  if s.startswith("."):
    s = "0" + s
  elif s.startswith("-."):
    s = "-0" + s[1:]
  m = re.fullmatch(r"\(([A-Za-z])\)", s)  # multiple choice "(B)" -> "B"
  return m.group(1) if m else s


def to_number(s: str) -> Fraction | None:
  """Exact value of a normalized plain number ("12", "-0.5", "1e-3", "3/4", "\\frac{-3}{4}"), else None."""
  try:
    if _PLAIN_NUMBER.fullmatch(s):
      return Fraction(s)
    if _FRACTION.fullmatch(s):
      return Fraction(s.replace("+", ""))
    m = _LATEX_FRACTION.fullmatch(s)
    if m:
      value = Fraction(int(m.group(2)), int(m.group(3)))
      return -value if m.group(1) == "-" else value
  except (ValueError, ZeroDivisionError):  # 1/0, or more digits than int() accepts
    return None
  return None


def numbers_close(a: Fraction, b: Fraction, rel: float = 1e-6) -> bool:
  """Equal within `rel` relative (1e-12 absolute near 0), except that two whole numbers must be equal exactly:
  a relative tolerance would accept -131073013 for -131073014. Exact arithmetic, so huge values cannot overflow."""
  if a.denominator == 1 and b.denominator == 1:
    return a == b
  return abs(a - b) <= max(Fraction(rel) * max(abs(a), abs(b)), Fraction(1, 10**12))


def _mv_timeout() -> int | None:
  # signal.alarm only works in the main thread; elsewhere math_verify would raise instead of comparing.
  return MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=8192)
def _mv_parse(latex: str, timeout: int | None) -> tuple:
  from math_verify import parse

  return tuple(parse(f"${latex}$", parsing_timeout=timeout))


# Evaluation point for `_compare_at_a_point`: distinct, non-special rationals (no 0, 1 or integers that could
# make different expressions coincide by accident).
_PROBE = (13, 7), (17, 11), (23, 19), (29, 5), (31, 17), (37, 13)


def _compare_at_a_point(gold, pred) -> bool | None:
  """Cheap numeric decision for two plain sympy expressions, or None to leave it to math_verify.

  False when, in the same variables, their values clearly differ (1e-4 relative) at one fixed point: then they
  cannot be equal, and math_verify's `simplify` (~30 ms, most of a wrong symbolic answer's cost) is skipped.
  True when both are constants equal to 1e-12 at 20 digits (`2\\sqrt{2}` vs `\\sqrt{8}`). Equations, sets,
  intervals, other variables, near misses and agreeing non-constants go to math_verify.
  """
  import sympy

  if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
    return None
  symbols = sorted(gold.free_symbols, key=str)
  if pred.free_symbols != set(symbols) or len(symbols) > len(_PROBE):
    return None
  point = {x: sympy.Rational(*q) for x, q in zip(symbols, _PROBE)}
  try:
    a, b = complex(gold.evalf(20, subs=point)), complex(pred.evalf(20, subs=point))
  except Exception:  # still symbolic (unknown functions), overflow, ...
    return None
  if not all(map(math.isfinite, (a.real, a.imag, b.real, b.imag))):
    return None
  gap = abs(a - b) / max(1.0, abs(a), abs(b))
  if gap > 1e-4:
    return False
  if not symbols and gap < 1e-12:
    return True
  return None


def _mv_equal(pred: str, gold: str) -> bool:
  from math_verify import verify

  timeout = _mv_timeout()
  gold_parsed, pred_parsed = _mv_parse(gold, timeout), _mv_parse(pred, timeout)
  if not gold_parsed or not pred_parsed:
    return False
  quick = _compare_at_a_point(gold_parsed[0], pred_parsed[0])
  if quick is not None:
    return quick
  try:
    return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout))
  except Exception:  # verify swallows most errors itself; anything else is "not shown equal"
    return False


@functools.lru_cache(maxsize=16384)
def answers_match(pred: str | None, gold: str) -> bool:
  """True if the predicted answer equals the gold answer (string, numeric, or symbolic equality)."""
  if pred is None:
    return False
  npred, ngold = normalize_answer(pred), normalize_answer(gold)
  if not npred or not ngold:
    return False
  if npred == ngold:
    return True
  if npred.isalpha() and ngold.isalpha():  # words or choice letters: case-insensitive, never symbolic
    return npred.lower() == ngold.lower()
  vpred, vgold = to_number(npred), to_number(ngold)
  if vpred is not None and vgold is not None:
    return numbers_close(vpred, vgold)
  if len(npred) > MAX_SYMBOLIC_CHARS or len(ngold) > MAX_SYMBOLIC_CHARS:
    return False  # not a final answer but a paragraph; LaTeX-parsing it takes seconds
  return _mv_equal(_clean(pred), _clean(gold))


def math_reward(completion: str, gold: str) -> float:
  """1.0 if the completion's extracted final answer matches gold, else 0.0."""
  return 1.0 if answers_match(extract_answer(completion), str(gold)) else 0.0
