"""Peak memory of PPO with four full models vs LoRA with the reference shared with the policy.

Each variant runs in a subprocess of its own (a fresh process: its maximum resident set is its
own), on a Llama built from config (~20 M parameters: hidden 512, intermediate 1408, 6 layers,
8 heads, vocabulary 1024), fp32 on the CPU, PPO with one epoch and one mini-batch, 16 sequences
x 32 new tokens, a separate reward network of the same size:

* ``full``: policy, reference (a second copy of the SFT model), critic, reward; AdamW state for
  the policy and the critic;
* ``lora``: ``model.lora.r=8`` on q/k/v/o: the reference is the policy's base with adapters off
  (no second backbone) and AdamW state exists for the adapters only; the critic is still full;
* ``lora_critic``: the same with ``model.lora.targets=[policy,critic]``: the critic is its own
  network still, but trains adapters + its value head (no AdamW state for its trunk);
* ``lora_shared_critic``: the same as ``lora`` with ``algo.critic=shared`` (a value head on the
  policy).

Peak memory = the process's maximum RSS after the steps minus its RSS after the imports (what
the models, optimisers and activations took). The ratio lines are ``<variant> / full``.

    python benchmarks/lora_memory.py [--steps 2]
    python benchmarks/lora_memory.py --smoke   # tiny models: does it still run?
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_smoke import SMOKE, build, step  # noqa: E402

from alignbench.config import LoraConfig, ModelConfig  # noqa: E402

MODEL = ModelConfig(
    hidden_size=512, intermediate_size=1408, num_layers=6, num_heads=8, max_position_embeddings=64
)
ADAPTERS = LoraConfig(r=8, alpha=16.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
CRITIC_ADAPTERS = replace(ADAPTERS, targets=["policy", "critic"])
VARIANTS = {
    "full": (None, {}),
    "lora": (ADAPTERS, {}),
    "lora_critic": (CRITIC_ADAPTERS, {}),
    "lora_shared_critic": (ADAPTERS, {"critic": "shared"}),
}
LABELS = {
    "full": "four full models",
    "lora": "LoRA + shared reference",
    "lora_critic": "LoRA + shared reference + LoRA critic",
    "lora_shared_critic": "LoRA + shared reference + shared critic",
}


def rss_mib() -> float:
    """Maximum resident set of this process so far, in MiB (Linux: KiB, macOS: bytes)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def held_parameters(setup) -> tuple[int, int]:
    """(distinct parameter elements held by every model of the run, trainable elements)."""
    run, ppo = setup.run, setup.algorithm
    modules = [run.policy, ppo.reference, ppo.critic, ppo.value_head, run.reward.model]
    seen: dict[int, int] = {}
    trainable = 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters():
            if p.data_ptr() not in seen:
                seen[p.data_ptr()] = p.numel()
                trainable += p.numel() if p.requires_grad else 0
    return sum(seen.values()), trainable


def worker(variant: str, smoke: bool, steps: int) -> None:
    """Build one variant, take its steps, print one JSON line."""
    print(json.dumps(measure(variant, smoke, steps)))


def measure(variant: str, smoke: bool, steps: int) -> dict[str, float]:
    """Build one variant and take its steps: peak RSS above the start, parameters held and
    trainable."""
    torch.set_num_threads(1)
    baseline = rss_mib()
    lora, overrides = VARIANTS[variant]
    with tempfile.TemporaryDirectory() as tmp:
        setup = build(
            Path(tmp),
            "ppo",
            SMOKE if smoke else MODEL,
            torch.device("cpu"),
            sequences=4 if smoke else 16,
            new_tokens=4 if smoke else 32,
            lora=lora,
            overrides=overrides,
        )
        for _ in range(steps):
            step(setup)
        held, trainable = held_parameters(setup)
    return {"peak": rss_mib() - baseline, "held": held, "trainable": trainable}


def main() -> None:
    """Run every variant in its own process (in smoke mode, all in this one) and print the
    table and the ratio lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny models, 1 step (CI)")
    parser.add_argument("--worker", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = 1 if args.smoke else args.steps
    if args.worker:
        worker(args.worker, args.smoke, steps)
        return
    results = {}
    for variant in VARIANTS:
        if args.smoke:  # does every variant still run: one process (peaks meaningless anyway)
            results[variant] = measure(variant, True, steps)
            continue
        command = [sys.executable, __file__, "--worker", variant, "--steps", str(steps)]
        done = subprocess.run(
            command + (["--smoke"] if args.smoke else []),
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if done.returncode:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    smoke = " (smoke: tiny models, numbers meaningless)" if args.smoke else ""
    size = "tiny" if args.smoke else f"{MODEL.hidden_size}x{MODEL.num_layers} Llama"
    print(f"PPO, {size}, fp32 on the CPU, {steps} step(s), peak RSS above imports{smoke}\n")
    print("| variant | parameters held (M) | trainable (M) | peak memory (MiB) |")
    print("|---|---:|---:|---:|")
    for variant, r in results.items():
        print(
            f"| {LABELS[variant]} | {r['held'] / 1e6:.1f} | {r['trainable'] / 1e6:.2f} | "
            f"{r['peak']:.0f} |"
        )
    print()
    full = max(results["full"]["peak"], 1e-9)  # in smoke mode a later variant may add none
    for variant in ("lora", "lora_critic", "lora_shared_critic"):
        print(f"{LABELS[variant]} / {LABELS['full']} = {results[variant]['peak'] / full:.2f}")


if __name__ == "__main__":
    main()
