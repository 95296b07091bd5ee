"""Final-answer extraction from a model completion.

`extract_answer(text)` looks for the answer in this order and returns the first kind it finds:

1. the content of the last complete `\\boxed{...}` / `\\fbox{...}` / `\\framebox{...}` (braces matched, so
   `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`; `\\boxed 5` without braces gives `5`). A trailing `\\boxed{` that the
   generation cut off, or an empty `\\boxed{}`, does not count, and the one before it is used;
2. the content of the last `<answer>...</answer>` (the reasoning-gym / R1 tag format);
3. the rest of the line after the last GSM8K-style `####`;
4. the rest of the line after the last "answer is" / "answer:" ("The final answer is: 7", "**Answer:** 7");
5. fallback: in "math" mode the last number in the text (integers, decimals, signs, `3/4`, `\\frac{3}{4}`,
   thousands separators `1,234`); in "text" mode the last non-empty line.

In "math" mode the free-text markers (2-4) are reduced to their number when they read like prose: "42 apples" ->
`42`, "5 - 3 = 2" -> `2` (after the last `=`), "Tom has 5 apples" -> `5`; a bare expression such as `\\frac{1}{2}`
or `x^2+1` is kept whole. Boxed content is never reduced: the model typeset it as the answer. In "text" mode
(answers that are words, lists, ...) marker contents are returned as written, minus `$`, `**` and a final period.

Differences from the DASH paper's extractor (spec section 5): it only looks at the last 4 lines and requires a
boxed answer; this one is more lenient because the small models we train rarely box anything early on.
"""

from __future__ import annotations

import re

_BOX_MARKERS = ("\\boxed", "\\fbox", "\\framebox")

# A number as people write it: optional sign, thousands groups or plain digits, optional decimals, optional
# integer denominator; or a leading-dot decimal; or an integer LaTeX fraction. The sign only counts when it is
# not a binary minus ("5-3" is two numbers, 5 and 3).
_NUMBER = re.compile(
    r"(?<![\w)\]}.])(?:-\s?)?\\[dt]?frac\{-?\d+\}\{\d+\}"
    r"|(?:(?<![\w)\]}.])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+(?![\d.]))?"
    r"|(?:(?<![\w)\]}])-)?(?<!\d)\.\d+")
_TAG_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_TAG_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_ANSWER_PHRASE = re.compile(r"\banswer\b[*_\s]*(?:is\b|:|=)[*_\s:]*", re.IGNORECASE)
_LATEX_CMD = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")
_WORD = re.compile(r"[A-Za-z]{2,}")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def _matching_braces(text: str) -> dict[int, int]:
  """Position of each '{' -> position of its '}', for the groups that close. One pass, so a completion full of
  unclosed `\\boxed{` costs O(n), not O(n^2)."""
  match, stack = {}, []
  for i, c in enumerate(text):
    if c == "{":
      stack.append(i)
    elif c == "}" and stack:
      match[stack.pop()] = i
  return match


def last_boxed(text: str) -> str | None:
  """Content of the last complete, non-empty `\\boxed{}`/`\\fbox{}`/`\\framebox{}` in text, else None."""
  end = len(text)
  braces = None
  while True:
    # Rightmost marker that starts before `end`; `\fbox` inside `\framebox` cannot clash (different letters).
    pos, marker = max((text.rfind(m, 0, end), m) for m in _BOX_MARKERS)
    if pos < 0:
      return None
    end = pos  # if this one does not count, look further left
    i = pos + len(marker)
    if i < len(text) and text[i].isalpha():  # `\boxedx` is another command, not a box
      continue
    while i < len(text) and text[i] == " ":
      i += 1
    content = None
    if i < len(text) and text[i] == "{":
      braces = _matching_braces(text) if braces is None else braces
      if i in braces:
        content = text[i + 1:braces[i]]
    elif i < len(text):
      # `\boxed 5`: TeX takes the next token; we take the run up to a space or `$`.
      m = re.match(r"[^\s$]+", text[i:i + 100])
      content = m.group(0) if m else None
    if content is not None and content.strip():
      return content.strip()


def _unwrap(phrase: str) -> str:
  """Strips markdown emphasis, math delimiters and a final period around a free-text answer."""
  s = phrase.strip()
  for _ in range(3):  # nested wrappers such as "**$7$**"
    before = s
    s = s.strip("*_ \t")
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
      if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right) - 1:
        s = s[len(left):len(s) - len(right)].strip()
    s = s.rstrip(".").strip()
    if s == before:
      break
  return s


def _reduce_to_number(phrase: str) -> str:
  """Math-mode reduction of a free-text answer: prose -> its number, an equation chain -> its last side."""
  plain = _LATEX_CMD.sub(" ", phrase)
  if _WORD.search(plain):
    m = _NUMBER.match(phrase.lstrip("$ "))
    if m:  # "42 apples", "2 because ..." -> the number it starts with
      return m.group(0).replace(" ", "")
    nums = _numbers(phrase)
    return nums[-1] if nums else phrase  # "Tom has 5 apples" -> 5; "yes" stays "yes"
  if "=" in phrase:
    return _unwrap(phrase.rsplit("=", 1)[1]) or phrase
  return phrase


def _rest_of_line(text: str, start: int) -> str:
  """From start to the end of the line; when that is empty, the next non-empty line ("Answer:\\n 42")."""
  line, _, rest = text[start:].partition("\n")
  if line.strip():
    return line
  for nxt in rest.split("\n"):
    if nxt.strip():
      return nxt
  return ""


def _last_match(pattern: re.Pattern, text: str, end: int) -> re.Match | None:
  # One forward scan (a non-greedy `<answer>(.*?)</answer>` would rescan the tail once per opening tag).
  last = None
  for last in pattern.finditer(text, 0, end):
    pass
  return last


def _numbers(text: str) -> list[str]:
  return [m.replace(" ", "") for m in _NUMBER.findall(text)]


def _cut_sentence(phrase: str) -> str:
  # "is 2. So ..." -> "2"; "3.5" survives because its dot is not followed by a space.
  m = _SENTENCE_END.search(phrase)
  return phrase[:m.start()] if m else phrase


def last_number(text: str) -> str | None:
  """The last number in text as written ("1,234", "-3", "0.5", "3/4", "\\frac{3}{4}"), else None."""
  nums = _numbers(text)
  return nums[-1] if nums else None


def extract_answer(text: str, mode: str = "math") -> str | None:
  """The completion's final answer as a string, or None when it has none. See the module docstring.

  mode: "math" (numbers and expressions; falls back to the last number) or "text" (words, lists; markers kept
  verbatim, falls back to the last non-empty line).
  """
  if mode not in ("math", "text"):
    raise ValueError(f"mode={mode!r} must be 'math' or 'text'")
  if not text:
    return None
  text = text.replace("\u2212", "-")  # models and tokenizers emit the Unicode minus sign

  boxed = last_boxed(text)
  if boxed is not None:
    return boxed

  phrase = None
  close = _last_match(_TAG_CLOSE, text, len(text))
  opening = _last_match(_TAG_OPEN, text, close.start()) if close else None
  if opening and text[opening.end():close.start()].strip():
    phrase = text[opening.end():close.start()]
  if phrase is None:
    pos = text.rfind("####")
    if pos >= 0:
      phrase = _rest_of_line(text, pos + 4)
  if phrase is None:
    hits = list(_ANSWER_PHRASE.finditer(text))
    if hits:
      phrase = _cut_sentence(_rest_of_line(text, hits[-1].end()))
  if phrase is not None:
    phrase = _unwrap(phrase)
    if phrase:
      return _reduce_to_number(phrase) if mode == "math" else phrase

  if mode == "math":
    return last_number(text)
  lines = [ln for ln in text.split("\n") if ln.strip()]
  return (_unwrap(lines[-1]) or None) if lines else None
