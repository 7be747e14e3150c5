"""Generation throughput: alignbench's sampler vs Hugging Face ``model.generate``, same process.

Same model, prompts and settings for both (issue #14 item 6): the built-in tiny Llama of
``benchmarks/ppo_step.py`` (vocab 1024, hidden 128, 4 layers, 1.31 M parameters), 16 sequences
of 16 prompt tokens, exactly 32 new tokens (eos forbidden, so both do the same number of steps),
fp32, 2 threads. Three decoders, interleaved call by call:

* ``alignbench``: :func:`alignbench.sampling.sample`, which takes the static-cache decoder;
* ``alignbench (model() loop)``: the same sampler forced onto its generic path (every step a
  ``model(...)`` call with Hugging Face's dynamic cache), which is what it did before;
* ``HF generate``: ``model.generate`` with the same settings.

Greedy decoding must give identical tokens in all three (checked, or the script fails);
sampling (temperature 1, no top-k / top-p) is timed too. Tokens/s counts new tokens.

    python benchmarks/generate.py [--repeats 20] [--threads 2]
    python benchmarks/generate.py --smoke   # tiny model, 2 repeats: does it still run?
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import transformers
from _common import FULL_MODEL, SMOKE_MODEL

from alignbench.decoding import StaticCacheDecoder
from alignbench.models import build_model, build_tokenizer
from alignbench.sampling import SamplingParams, sample

FULL = dict(
    sequences=16,
    prompt_tokens=16,
    new_tokens=32,
    model=FULL_MODEL,
)
SMOKE = dict(
    sequences=4,
    prompt_tokens=4,
    new_tokens=4,
    model=SMOKE_MODEL,
)


@contextmanager
def generic_path():
    """Force the sampler onto its generic decoder (each step through ``model(...)``)."""
    original = StaticCacheDecoder.supports
    StaticCacheDecoder.supports = staticmethod(lambda model: False)
    try:
        yield
    finally:
        StaticCacheDecoder.supports = original


def main() -> None:
    """Print tokens/s of each decoder, greedy and sampled, and the ratios to HF generate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 repeats")
    args = parser.parse_args()
    s = SMOKE if args.smoke else FULL
    repeats, warmup = (2, 1) if args.smoke else (args.repeats, args.warmup)
    torch.set_num_threads(1 if args.smoke else args.threads)
    transformers.utils.logging.set_verbosity_error()
    words = [f"w{i}" for i in range(1021)]
    tokenizer = build_tokenizer(words)
    torch.manual_seed(0)
    model = build_model(s["model"], tokenizer).eval()
    n, new = s["sequences"], s["new_tokens"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, len(tokenizer), (n, s["prompt_tokens"]), generator=g)
    prompts = [{"prompt": tokenizer.decode(row)} for row in ids]
    assert tokenizer(prompts[0]["prompt"]).input_ids == ids[0].tolist()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def ours(greedy: bool) -> torch.Tensor:
        params = SamplingParams(max_new_tokens=new, min_new_tokens=new, greedy=greedy)
        batch = sample(model, tokenizer, prompts, 1, params, torch.Generator().manual_seed(0))
        return batch.response_ids

    def ours_generic(greedy: bool) -> torch.Tensor:
        with generic_path():
            return ours(greedy)

    def hf(greedy: bool) -> torch.Tensor:
        torch.manual_seed(0)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=not greedy,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        return out[:, ids.shape[1] :]

    decoders: dict[str, Callable[[bool], torch.Tensor]] = {
        "alignbench": ours,
        "alignbench (model() loop)": ours_generic,
        "HF generate": hf,
    }
    with torch.no_grad():
        greedy = {name: f(True) for name, f in decoders.items()}
    for name, tokens in greedy.items():
        if not torch.equal(tokens, greedy["HF generate"]):
            raise SystemExit(f"greedy tokens of {name} differ from HF generate's")
    seconds: dict[tuple[str, str], list[float]] = {}
    for i in range(warmup + repeats):
        for mode in ("greedy", "sampled"):
            for name, f in decoders.items():
                start = time.perf_counter()
                tokens = f(mode == "greedy")
                elapsed = time.perf_counter() - start
                assert tokens.shape == (n, new)
                if i >= warmup:
                    seconds.setdefault((name, mode), []).append(elapsed)
    smoke = " (smoke: tiny model, timings meaningless)" if args.smoke else ""
    print(f"{n} sequences x {new} new tokens after {s['prompt_tokens']} prompt tokens; ", end="")
    print(f"threads: {torch.get_num_threads()}{smoke}")
    print(f"median of {repeats} calls after {warmup} warm-up calls, decoders interleaved")
    print("greedy tokens: identical in all three decoders\n")
    print(f"| {'decoder':<26} | {'mode':<7} | {'tokens/s':>9} | {'vs HF generate':>14} |")
    print(f"|{'-' * 28}|{'-' * 9}|{'-' * 11}|{'-' * 16}|")
    rate = {key: n * new / statistics.median(value) for key, value in seconds.items()}
    for mode in ("greedy", "sampled"):
        for name in decoders:
            r = rate[(name, mode)] / rate[("HF generate", mode)]
            print(f"| {name:<26} | {mode:<7} | {rate[(name, mode)]:>9.0f} | {r:>14.2f} |")
    print()
    for mode in ("greedy", "sampled"):
        r = rate[("alignbench", mode)] / rate[("HF generate", mode)]
        print(f"alignbench {mode} tokens/s / HF generate tokens/s = {r:.2f} (target >= 1.50)")


if __name__ == "__main__":
    main()
