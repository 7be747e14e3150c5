"""model.gradient_checkpointing and model.compile: the same numbers, and the FLOP counter charges
what runs: the recomputed layer forwards of checkpointing (measured against torch's own counter),
the same count with the layers compiled."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from alignbench.budget import FlopCounter, checkpointed_layers
from alignbench.config import ModelConfig
from alignbench.errors import ConfigError
from alignbench.model_options import compile_layers, enable_gradient_checkpointing
from alignbench.models import ScalarHeadModel, build_model, build_tokenizer, response_logprobs

WORDS = [f"w{i}" for i in range(30)]


def _model(checkpointing: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
    model = build_model(config, build_tokenizer(WORDS))
    if checkpointing:
        enable_gradient_checkpointing(model, "policy")
    return model.train()


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    return ids, torch.ones_like(ids)


def _step(model: torch.nn.Module, measure: bool = True) -> tuple[torch.Tensor, list, float, int]:
    """Loss, gradients, FLOPs charged by our counter, and mm FLOPs by torch's counter (0 when not
    ``measure``: under torch's counter, a dispatch mode, torch.compile falls back to eager)."""
    counter = FlopCounter()
    counter.track(model, "policy")
    ids, mask = _ids()
    measured = FlopCounterMode(display=False) if measure else None
    with measured or contextlib.nullcontext():
        loss = -response_logprobs(model, ids, mask, prompt_length=2).mean()
        loss.backward()
    counter.close()
    grads = [p.grad.clone() for p in model.parameters()]
    if measured is None:
        return loss.detach(), grads, counter.total, 0
    matmuls = sum(
        n for op, n in measured.get_flop_counts()["Global"].items() if "mm" in str(op).split(".")
    )
    return loss.detach(), grads, counter.total, matmuls


def test_checkpointing_changes_no_number_and_charges_the_recompute() -> None:
    plain, checkpointed = _model(False), _model(True)
    loss, grads, flops, matmuls = _step(plain)
    loss_c, grads_c, flops_c, matmuls_c = _step(checkpointed)
    assert torch.allclose(loss, loss_c, atol=1e-6, rtol=0)
    for g, g_c in zip(grads, grads_c, strict=True):
        assert torch.allclose(g, g_c, atol=1e-6, rtol=0)
    # Charged: the recomputed matrix products, exactly what torch's own counter sees them cost.
    assert flops_c - flops == matmuls_c - matmuls > 0
    # That is each layer's linear maps but its last (down_proj: torch stops recomputing once
    # the activations the backward needs are back), 2 x in x out per token, 12 tokens.
    layers = checkpointed_layers(checkpointed)
    assert len(layers) == 2
    recomputed = sum(
        m.weight.numel()
        for layer in layers
        for m in layer.modules()
        if isinstance(m, torch.nn.Linear) and m is not layer.mlp.down_proj
    )
    assert flops_c - flops == 2 * recomputed * 12
    assert checkpointed_layers(plain) == []
    assert checkpointed_layers(checkpointed.eval()) == []  # no recompute outside training


def test_checkpointing_reaches_a_critics_trunk_and_refuses_a_model_without_layers() -> None:
    critic = ScalarHeadModel(_model(False)).train()
    enable_gradient_checkpointing(critic, "critic")
    assert checkpointed_layers(critic) == list(critic.trunk.layers)
    with pytest.raises(ConfigError, match="the critic \\(Linear\\) has no transformers layers"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), "critic")


def _steps(folder: Path) -> list[dict[str, float]]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["kind"] == "step"]


@pytest.mark.slow
def test_ppo_with_checkpointing_has_the_same_losses_and_charges_more(tiny_job, tmp_path) -> None:
    """Two PPO steps (policy and separate critic checkpointed): every loss within 1e-6 of the
    plain run's; the policy and critic are charged more, the reference exactly the same."""
    common = ("algo=ppo", "algo.samples_per_prompt=2")
    tiny_job(*common, out="plain")
    tiny_job(*common, "model.gradient_checkpointing=true", out="checkpointed")
    plain, checkpointed = _steps(tmp_path / "plain"), _steps(tmp_path / "checkpointed")
    assert len(plain) == len(checkpointed) == 2
    for a, b in zip(plain, checkpointed, strict=True):
        losses = [k for k in a if k.startswith(("loss/", "objective/", "val/", "policy/"))]
        assert "loss/policy" in losses and "loss/value" in losses
        for key in losses:
            assert math.isclose(a[key], b[key], rel_tol=0, abs_tol=1e-6), key
        assert b["flops/policy"] > a["flops/policy"] and b["flops/critic"] > a["flops/critic"]
        assert b["flops/reference"] == a["flops/reference"]


def _inductor_available() -> bool:
    try:
        import torch._inductor  # noqa: F401
    except ImportError:
        return False
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not _inductor_available(), reason="torch.compile needs inductor and a C compiler"
)
def test_compiled_layers_give_the_same_numbers_and_flops() -> None:
    """Compiling takes a minute or more on a busy CPU."""
    torch._dynamo.reset()
    plain, compiled = _model(False), _model(False)
    assert compile_layers(compiled) == 2
    assert compile_layers(compiled) == 0  # compiled already: left as it is
    loss, grads, flops, _ = _step(plain, measure=False)
    loss_c, grads_c, flops_c, _ = _step(compiled, measure=False)
    # It did compile: one graph, shared by both layers (the same code).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert torch.allclose(loss, loss_c, atol=1e-5, rtol=1e-5)
    for g, g_c in zip(grads, grads_c, strict=True):
        assert torch.allclose(g, g_c, atol=1e-5, rtol=1e-4)
    assert flops_c == flops  # the counting hooks sit outside the compiled layers


def test_checkpointing_with_compile_is_refused_up_front() -> None:
    """The recompute would run inside compiled layers, where the FLOP counter's hooks do not fire
    (measured: a checkpointed and compiled model was charged as a plain one): refused in one line
    by the command line's validation, before stage 1, and by the Job's own check."""
    from alignbench.app import validate
    from alignbench.model_options import apply_model_options
    from alignbench.registry import build_registry

    both = ["model.gradient_checkpointing=true", "model.compile=true"]
    with pytest.raises(ConfigError, match="cannot charge it — switch one of them off"):
        validate(build_registry(), both)
    validate(build_registry(), both[:1])  # either alone is fine
    with pytest.raises(ConfigError, match="model.compile=true"):
        apply_model_options({}, {"gradient_checkpointing": True, "compile": True}, ())
