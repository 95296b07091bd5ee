"""`dashjax-generate`: load a model (offline default: SmolLM2-135M-Instruct) and complete a few prompts."""

from __future__ import annotations

import argparse
import time


DEFAULT_PROMPTS = (
    "What is 17 + 25? Answer with the number only.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write one sentence about the ocean.",
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
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
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
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
  main()
