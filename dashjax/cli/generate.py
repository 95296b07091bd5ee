"""`dashjax-generate`: load a model (offline default: SmolLM2-135M-Instruct) and complete a few prompts."""

from __future__ import annotations

import argparse
import math
import sys
import time

PROG = "dashjax-generate"


DEFAULT_PROMPTS = (
    "What is 17 + 25? Answer with the number only.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write one sentence about the ocean.",
)


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not argparse's usage block
    print(f"{PROG}: error: {message} (see --help)", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_args(argv=None):
  p = _Parser(prog=PROG, description=__doc__)
  p.add_argument("--model", default="smollm2-135m-instruct",
                 help="HF folder, hub name, .gguf file, or alias (default works offline)")
  p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: three built-in prompts")
  p.add_argument("--max-new-tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-k", type=int, default=0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--samples", type=int, default=1, help="samples per prompt")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--no-chat", action="store_true", help="feed raw text instead of the chat template")
  p.add_argument("--verbose", action="store_true", help="print the full traceback of an error")
  args = p.parse_args(argv)
  problem = check_args(args)
  if problem:
    p.error(problem)  # "dashjax-generate: error: ..." and exit status 2, before the model loads
  return args


def check_args(args) -> str | None:
  """The first problem with the numeric arguments, named as on the command line (None: all fine)."""
  if args.max_new_tokens < 1:
    return f"--max-new-tokens={args.max_new_tokens} must be >= 1"
  if not math.isfinite(args.temperature) or args.temperature < 0:
    return f"--temperature={args.temperature} must be >= 0 (0 = greedy)"
  if args.top_k < 0:
    return f"--top-k={args.top_k} must be >= 0 (0 disables top-k)"
  if not 0.0 < args.top_p <= 1.0:
    return f"--top-p={args.top_p} must be in (0, 1] (1 disables nucleus sampling)"
  if args.samples < 1:
    return f"--samples={args.samples} must be >= 1"
  if args.samples > 1 and args.temperature == 0:
    return (f"--samples={args.samples} with --temperature=0 (greedy) would print {args.samples} identical "
            f"completions; add --temperature 0.8 (for example) or drop --samples")
  if args.prompt is not None and not all(p.strip() for p in args.prompt):
    return "--prompt is empty"
  from dashjax.models.loading import source_problem

  problem = source_problem(args.model)
  return problem.replace("model.source=", "--model=") if problem else None


def main(argv=None):
  args = parse_args(argv)
  try:
    return _generate(args)
  except Exception as e:  # one line; the traceback goes to a log file (and to stderr with --verbose)
    from dashjax.cli.errors import report

    return report(PROG, e, args.verbose)


def _generate(args):
  import dashjax

  t0 = time.perf_counter()
  model, tokenizer = dashjax.load_model(args.model, dtype=args.dtype, param_dtype=args.dtype)  # inference only
  cfg = model.cfg
  print(f"loaded {args.model}: {cfg.model_type}, {cfg.num_layers} layers, d={cfg.hidden_size}, "
        f"vocab={cfg.vocab_size} in {time.perf_counter() - t0:.1f}s")
  prompts = args.prompt or list(DEFAULT_PROMPTS)
  kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            samples_per_prompt=args.samples, chat=False if args.no_chat else None)
  t0 = time.perf_counter()
  outs = dashjax.generate(model, tokenizer, prompts, seed=args.seed, **kw)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  outs = dashjax.generate(model, tokenizer, prompts, seed=args.seed, **kw)
  steady = time.perf_counter() - t0
  for prompt, out in zip(prompts, outs):
    print(f"\n>>> {prompt}")
    for text in (out if isinstance(out, list) else [out]):
      print(f"<<< {text.strip()}")
  rows = len(prompts) * args.samples
  print(f"\n{rows} completions of up to {args.max_new_tokens} tokens: first call {first:.1f}s (includes "
        f"compilation), second call {steady:.1f}s (~{rows * args.max_new_tokens / steady:.0f} tokens/s upper bound)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
