"""device= and precision=: bf16 autocast on the CPU runs end to end and charges the same FLOPs,
a missing accelerator is one line before anything trains, tensors follow the model's device."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignbench.app import main, run_job
from alignbench.batch import collate
from alignbench.budget import FlopCounter
from alignbench.config import ModelConfig
from alignbench.errors import ConfigError
from alignbench.hardware import autocast, check_precision, model_device, resolve_device
from alignbench.models import build_model, build_tokenizer, response_logprobs
from alignbench.registry import build_registry
from alignbench.run import Run
from alignbench.sampling import SamplingParams, sample
from tests.conftest import TINY, compose

WORDS = [f"w{i}" for i in range(30)]


def _model() -> tuple[torch.nn.Module, object]:
    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
    return build_model(config, tokenizer), tokenizer


def _flops_of_a_step(precision: str) -> dict[str, float]:
    """FLOPs charged for a fixed-length sampling pass plus a forward/backward under autocast."""
    model, tokenizer = _model()
    flops = FlopCounter()
    flops.track(model, "policy")
    prompts = [{"prompt": "w3 w4 w5"}, {"prompt": "w7"}]
    params = SamplingParams(max_new_tokens=5, min_new_tokens=5)
    with autocast(torch.device("cpu"), precision):
        batch = sample(model, tokenizer, prompts, 2, params, torch.Generator().manual_seed(0))
        logprobs = response_logprobs(
            model, batch.input_ids, batch.attention_mask, batch.prompt_length
        )
        logprobs.sum().backward()
    assert torch.isfinite(logprobs).all()
    return dict(flops.by_model)


def test_bf16_autocast_charges_the_same_flops_as_fp32() -> None:
    fp32, bf16 = _flops_of_a_step("fp32"), _flops_of_a_step("bf16")
    assert fp32["policy"] > 0
    assert bf16 == fp32


def test_autocast_is_a_no_op_in_fp32_and_bf16_on_cpu_otherwise() -> None:
    model, _ = _model()
    ids = torch.tensor([[3, 4, 5]])
    with autocast(torch.device("cpu"), "fp32"):
        assert model(input_ids=ids).logits.dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert model(input_ids=ids).logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_device_choices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="device='tpu' is not a choice"):
        resolve_device("tpu")
    check_precision("fp16", torch.device("cpu"))  # autocast + loss scaler (test_precision.py)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line_before_anything(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["device=cuda", "logger=none"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: device=cuda but torch.cuda.is_available() is False — install the CUDA build of "
        "torch (README: Your hardware) or use device=cpu / device=auto"
    ]
    assert list(tmp_path.iterdir()) == []  # no folder, no cache, nothing trained
    # A library caller gets the same line from run_job, before its folder exists.
    registry = build_registry()
    cfg = compose([*TINY, f"cache_dir={tmp_path}/cache", "device=cuda"], registry)
    with pytest.raises(ConfigError, match="device=cuda but torch.cuda.is_available"):
        run_job(cfg, tmp_path / "out", registry=registry)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_batches_and_samples_follow_the_model_device() -> None:
    model, tokenizer = _model()
    prompts = [{"prompt": "w1 w2"}, {"prompt": "w3"}]
    batch = sample(model, tokenizer, prompts, 2, SamplingParams(max_new_tokens=3))
    assert batch.input_ids.device == model_device(model)
    assert batch.logprobs.device == model_device(model)
    # Run.collate puts its batch on the policy's device (the meta device stands in for a GPU).
    fake = SimpleNamespace(tokenizer=tokenizer, device=torch.device("meta"))
    built = Run.collate(fake, prompts, [[4, 1], [5, 1]], 1, ["policy", "policy"])
    assert built.input_ids.device.type == "meta"
    assert built.attention_mask.device.type == "meta" and built.response_mask.device.type == "meta"
    moved = collate(tokenizer, prompts, [[4, 1], [5, 1]], 1, ["a", "b"])
    moved.extras["ref_logprobs"] = torch.zeros(2, 2)
    on_meta = moved.to("meta")
    assert on_meta.extras["ref_logprobs"].device.type == "meta"
    assert moved.to("cpu") is moved  # already there: no copy


def _finite(summary: dict) -> bool:
    numbers = [v for k, v in summary.items() if k.startswith(("test/", "budget/"))]
    return bool(numbers) and all(math.isfinite(v) for v in numbers)


@pytest.mark.slow
@pytest.mark.parametrize(
    "algo", [["algo=ppo", "algo.samples_per_prompt=2"], ["algo=rrhf"]], ids=["ppo", "rrhf"]
)
def test_bf16_jobs_run_end_to_end_on_cpu(tiny_job, algo: list[str]) -> None:
    bf16 = tiny_job(*algo, "device=cpu", "precision=bf16", out="bf16")
    assert bf16["status"] == "finished" and _finite(bf16)
    assert bf16["budget/flops"] > 0
    # (FLOPs under bf16 equal fp32's for the same sequences: the test above; sampled
    # sequences differ between precisions, so two whole runs need not charge alike.)
