"""A GPU check that fits in 5 minutes: stages 1 and 2 built on the device, then a ~100 M-parameter
Llama's few bf16 PPO, GRPO and RRHF steps: tokens/s, step time, peak memory and model FLOPs
utilisation (MFU).

On a fresh GPU machine (README, "Your hardware"):

    make install
    .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126
    .venv/bin/python benchmarks/gpu_smoke.py            # --device cuda --precision bf16

    python benchmarks/gpu_smoke.py --device cpu --smoke  # tiny models on the CPU: does it run?
    python benchmarks/gpu_smoke.py --smoke               # the same on device=auto (CI)

Stages first: stage 1 (SFT, a few steps of a model of the same size as the algorithms' policy on
the ``facts`` task's demonstrations) and stage 2 (a reward model from simulated rankings of a
handful of groups) through the pipeline's own stage functions (``sft_stage``,
``reward_model_stage``) with ``device=`` and ``precision=`` of the command line, into a fresh
temporary cache; their time and FLOPs are printed, and the script fails unless both cached
weight files are fp32 and finite and both stage records name the device and precision
(``--skip-stages`` leaves them out).

The models are built from config (random init, no download): policy, reference (or, with
``--lora R``, the policy's base with adapters off), critic and a separate reward network of the
same size, on the built-in ``facts`` task's prompts, through the algorithms' own hooks with the
core's autocast. MFU = FLOPs charged by alignbench's counter (2N per token forward, 4N backward)
per second / the GPU's dense bf16 peak (``--peak-tflops``, else looked up by GPU name; n/a when
unknown). Exactly ``--new-tokens`` tokens are generated per response, so every step has the same
shape. Medians over the steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import hydra
import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from alignbench import Reward, Run, SamplingConfig, SamplingParams, Task
from alignbench.config import CONF_PACKAGE, LoraConfig, ModelConfig, to_object
from alignbench.hardware import PRECISIONS, check_precision, resolve_device, stage_record
from alignbench.job import Job
from alignbench.lora import apply_lora
from alignbench.models import (
    ScalarHeadModel,
    build_model,
    build_tokenizer,
    count_parameters,
    save_pretrained,
)
from alignbench.registry import build_registry
from alignbench.rm.stage import reward_model_stage
from alignbench.stages import sft_stage

VOCAB_WORDS = 1021  # 1024 with pad, eos, unk
#: ~100 M parameters: 12 layers x (4 x 768^2 attention + 3 x 768 x 2560 MLP) + embeddings.
FULL = ModelConfig(
    hidden_size=768,
    intermediate_size=2560,
    num_layers=12,
    num_heads=12,
    max_position_embeddings=256,
)
SMOKE = ModelConfig(
    hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, max_position_embeddings=64
)
#: Dense bf16 peak FLOP/s by GPU name (vendor data sheets, no sparsity).
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


class RewardNetwork(Reward):
    """A separate reward network: a scalar head read at each sequence's last token."""

    def __init__(self, model: ScalarHeadModel) -> None:
        self.model = model

    @torch.no_grad()
    def score_batch(self, batch: Any) -> torch.Tensor:
        """The head's scalar at each sequence's last real token."""
        values = self.model(batch.input_ids, batch.attention_mask)
        mask = batch.attention_mask
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
        return values[torch.arange(len(last), device=values.device), last].float()


#: Stages 1 and 2 on a small config: one SFT epoch over the task's demonstrations and a handful
#: of ranked groups, a fixed number of reward-model epochs (no early stopping).
STAGES = [
    "stage.sft.epochs=1",
    "stage.sft.batch_size=32",
    "stage.sft.lr=3e-4",  # the tiny model's 3e-3 is a lot for ~100 M parameters
    "feedback.labels=16",
    "feedback.k=4",
    "stage.rm.epochs=2",
    "stage.rm.patience=0",
]
#: The same on tiny models and a small world, for the CPU (CI): seconds.
STAGES_SMOKE = [
    "task.num_entities=40",
    "task.eval_size=20",
    "stage.sft.epochs=1",
    "stage.sft.batch_size=32",
    "feedback.labels=6",
    "feedback.k=2",
    "feedback.sampling.max_new_tokens=4",
    "stage.rm.epochs=1",
    "stage.rm.patience=0",
]


def model_overrides(model_cfg: ModelConfig) -> list[str]:
    """``model.*`` overrides that build ``model_cfg``'s shape (the algorithms' policy size)."""
    keys = ("hidden_size", "intermediate_size", "num_layers", "num_heads")
    keys += ("max_position_embeddings",)
    return [f"model.{key}={getattr(model_cfg, key)}" for key in keys]


def stage_config(overrides: list[str]) -> DictConfig:
    """The job config as ``python -m alignbench`` composes it (plugins registered first)."""
    build_registry()
    with hydra.initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return hydra.compose(config_name="config", overrides=overrides)


def check_stage(
    name: str, folder: Path, info: dict[str, Any], device: torch.device, precision: str
) -> None:
    """Fail unless the stage was built here (no cache hit), its cached weights are fp32 and
    finite, and its record names ``device`` and ``precision`` (nothing added on the CPU in
    fp32, where the record stays the default one)."""
    assert not info.get("cache_hit"), f"{name}: found in a fresh cache"
    weights = load_file(folder / "model.safetensors")
    dtypes = {str(w.dtype) for w in weights.values()}
    assert dtypes == {"torch.float32"}, f"{name}: cached weights are {dtypes}, not fp32"
    bad = [k for k, w in weights.items() if not torch.isfinite(w).all()]
    assert not bad, f"{name}: non-finite cached weights in {bad[:3]}"
    where = (info.get("device", "cpu"), info.get("precision", "fp32"))
    assert where == (device.type, precision), (
        f"{name}: built on {where}, not {device.type, precision}"
    )
    expected = stage_record(device, precision)
    assert {k: info.get(k) for k in expected} == expected, f"{name}: record {info}"
    assert info["flops"] > 0 and math.isfinite(info["flops"]), f"{name}: FLOPs {info['flops']}"


def timed(device: torch.device, call: Any) -> tuple[Any, float]:
    """``call()`` and its wall-clock seconds (the device synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def build_stages(
    cache: Path, model_cfg: ModelConfig, device: torch.device, precision: str, smoke: bool
) -> dict[str, dict[str, Any]]:
    """Stage 1 (SFT) and stage 2 (the reward model from simulated rankings) through the
    pipeline's stage functions on ``device`` in ``precision``, into the fresh cache ``cache``,
    each checked (:func:`check_stage`); one row per stage: seconds, FLOPs, its record."""
    cfg = stage_config(
        [
            *(STAGES_SMOKE if smoke else STAGES),
            *model_overrides(model_cfg),
            f"device={device.type}",
            f"precision={precision}",
            f"cache_dir={cache}",
        ]
    )
    registry = build_registry()
    task = registry.get("task", cfg.task.name).cls(to_object(cfg.task))
    (sft_path, sft), sft_seconds = timed(device, lambda: sft_stage(cfg, task, device))
    check_stage("stage 1 (SFT)", sft_path, sft, device, precision)
    source = registry.get("feedback", cfg.feedback.name).cls(to_object(cfg.feedback), task)
    (rm_path, rm), rm_seconds = timed(
        device, lambda: reward_model_stage(cfg, task, source, sft_path, sft["key"], device)
    )
    check_stage("stage 2 (reward model)", rm_path, rm, device, precision)
    return {
        "stage 1 (SFT)": {"seconds": sft_seconds, "work": f"{sft['steps']:.0f} steps", **sft},
        "stage 2 (reward model)": {
            "seconds": rm_seconds,
            "work": f"{rm['groups']} groups, {rm['epochs_run']} epochs",
            **rm,
        },
    }


def facts_task() -> Task:
    """The built-in ``facts`` task with its default config, built through the plugin registry."""
    entry = build_registry().get("task", "facts")
    return entry.cls(entry.config_cls(name="facts"))


@dataclass
class Setup:
    """One algorithm ready to step: its Run, prompts and the settings it was built with."""

    run: Run
    prompts: list[dict]
    algorithm: Any


def build(
    tmp: Path,
    algo: str,
    model_cfg: ModelConfig,
    device: torch.device,
    precision: str = "fp32",
    sequences: int = 16,
    new_tokens: int = 32,
    lora: LoraConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> Setup:
    """``algo`` on the Run of a :class:`Job`: a policy built from ``model_cfg`` (the SFT model),
    a reward network of the same size, all on ``device``; LoRA on the policy (and PPO's critic)
    if ``lora.r`` and its targets name them."""
    torch.manual_seed(0)
    task = facts_task()
    words = task.vocabulary()
    words += [f"w{i}" for i in range(VOCAB_WORDS - len(words))]
    tokenizer = build_tokenizer(words)
    policy = build_model(model_cfg, tokenizer).eval()
    save_pretrained(policy, tokenizer, tmp / "sft")
    policy = apply_lora(policy.to(device), lora or LoraConfig())
    reward_model = ScalarHeadModel(build_model(model_cfg, tokenizer)).eval().requires_grad_(False)
    reward_model.to(device)
    # The job's config holds the model's keys: the core reads model.gradient_checkpointing /
    # compile there, and PPO's critic reads model.lora.targets.
    model_node = OmegaConf.structured(replace(model_cfg, lora=lora or LoraConfig()))
    job = Job(OmegaConf.create({"seed": 0, "model": model_node}), tmp)
    entry = job.registry.get("algo", algo)
    names = {f.name for f in fields(entry.config_cls)}
    values = {"samples_per_prompt": 2, "policy_samples": 2}
    values.update({"ppo_epochs": 1, "num_minibatches": 1, "ptx_coef": 0.0} if algo == "ppo" else {})
    values.update(overrides or {})
    group = values.get("samples_per_prompt" if algo != "rrhf" else "policy_samples", 1)
    config = entry.config_cls(
        name=algo,
        prompts_per_step=max(1, sequences // group),
        sampling=SamplingConfig(max_new_tokens=new_tokens),
        **{k: v for k, v in values.items() if k in names},
    )
    run = job.make_run(
        config=config,
        task=task,
        reward=RewardNetwork(reward_model),
        tokenizer=tokenizer,
        policy=policy,
        sft_path=tmp / "sft",
        precision=precision,
    )
    run.track(reward_model, "reward")
    algorithm = job.start(algo)  # on the policy's device
    # Fixed-length responses: every step has the same shape (and the same FLOPs).
    for attribute in ("params", "sampling"):
        params = getattr(algorithm, attribute, None)
        if isinstance(params, SamplingParams):
            params.min_new_tokens = params.max_new_tokens = new_tokens
    prompts = task.splits["rl"].to_list()[: config.prompts_per_step]
    return Setup(run, prompts, algorithm)


def step(setup: Setup) -> dict[str, float]:
    """One training step through the hooks under the core's autocast: seconds, tokens, FLOPs."""
    run, hook = setup.run, setup.run.pm.hook
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    flops_before = run.flops.total
    start = time.perf_counter()
    with run.autocast():
        batch = hook.alignbench_rollout(run=run, prompts=setup.prompts)
        batch = hook.alignbench_score(run=run, batch=batch)
        stats = hook.alignbench_update(run=run, batch=batch)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert all(torch.isfinite(torch.tensor(float(v))) for v in stats.values()), stats
    return {
        "seconds": seconds,
        "tokens": float(batch.num_response_tokens),
        "flops": run.flops.total - flops_before,
    }


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far: CUDA's allocator peak, else the process's maximum resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def peak_flops(device: torch.device, given: float) -> float | None:
    """The device's dense peak FLOP/s: ``--peak-tflops``, else by GPU name, else None."""
    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAKS.items() if key in name), None)


def main() -> None:
    """Run a few steps of each algorithm and print one row per algorithm."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default=None, help="cuda (default), cpu, mps or auto (default with --smoke)"
    )
    parser.add_argument("--precision", default="bf16", choices=tuple(PRECISIONS))
    parser.add_argument("--algos", default="ppo,grpo,rrhf")
    parser.add_argument("--steps", type=int, default=3, help="measured steps after 1 warm-up")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank on the policy (0 = off)")
    parser.add_argument("--peak-tflops", type=float, default=0.0)
    parser.add_argument("--smoke", action="store_true", help="tiny models, 2 steps (CI)")
    parser.add_argument(
        "--skip-stages", action="store_true", help="leave out stages 1 and 2 (SFT, reward model)"
    )
    args = parser.parse_args()
    device = resolve_device(args.device or ("auto" if args.smoke else "cuda"))
    check_precision(args.precision, device)
    transformers.utils.logging.disable_progress_bar()
    model_cfg = SMOKE if args.smoke else FULL
    steps = 1 if args.smoke else args.steps
    sequences, new_tokens = (4, 4) if args.smoke else (args.sequences, args.new_tokens)
    lora = LoraConfig(r=args.lora, alpha=2.0 * args.lora) if args.lora else None
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    rows, stages = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_stages:
            # A fresh cache: both stages are built here, never found.
            cache = Path(tmp) / "cache"
            stages = build_stages(cache, model_cfg, device, args.precision, args.smoke)
        for algo in args.algos.split(","):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            folder = Path(tmp) / algo
            setup = build(
                folder, algo, model_cfg, device, args.precision, sequences, new_tokens, lora
            )
            parameters = count_parameters(setup.run.policy)
            measured = [step(setup) for _ in range(1 + steps)][1:]  # the first one warms up
            seconds = statistics.median(m["seconds"] for m in measured)
            tokens = statistics.median(m["tokens"] for m in measured)
            flops = statistics.median(m["flops"] for m in measured)
            rows[algo] = {
                "seconds": seconds,
                "tokens/s": tokens / seconds,
                "memory": peak_memory_mib(device),
                "mfu": (flops / seconds / peak) if peak else None,
            }
            setup.run.flops.close()
            del setup
    smoke = " (smoke: tiny models, numbers meaningless)" if args.smoke else ""
    print(
        f"{name}, precision={args.precision}, policy {parameters / 1e6:.2f} M parameters, "
        f"{sequences} sequences x {new_tokens} new tokens per step, median of {steps}{smoke}\n"
    )
    if stages:
        print("| stage | time (s) | FLOPs | work | device | precision | cached weights |")
        print("|---|---:|---:|---|---|---|---|")
        for stage, row in stages.items():
            print(
                f"| {stage} | {row['seconds']:.2f} | {row['flops']:.3g} | {row['work']} | "
                f"{row.get('device', 'cpu')} | {row.get('precision', 'fp32')} | fp32, finite |"
            )
        print()
    print("| algorithm | step (s) | response tokens/s | peak memory (MiB) | MFU |")
    print("|---|---:|---:|---:|---:|")
    for algo, row in rows.items():
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        print(
            f"| {algo} | {row['seconds']:.3f} | {row['tokens/s']:.0f} | "
            f"{row['memory']:.0f} | {mfu} |"
        )
    base = next(iter(rows))
    print()
    for algo, row in rows.items():
        if algo != base:
            print(f"{algo} step / {base} step = {row['seconds'] / rows[base]['seconds']:.2f}")
    if device.type != "cuda":
        print("(not a GPU: peak memory is the process's max RSS; MFU needs --peak-tflops)")


if __name__ == "__main__":
    main()
