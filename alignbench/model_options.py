"""Gradient checkpointing and ``torch.compile`` of a job's models: ``model.gradient_checkpointing``
and ``model.compile`` (both off by default).

Gradient checkpointing (transformers' activation checkpointing, non-reentrant) applies to the
models that train, the policy and a separate critic: each transformer layer keeps only its input
and runs its forward again in the backward pass. That recomputation is arithmetic the run really
does, so the FLOP counter charges it (:mod:`alignbench.budget`): a run with checkpointing on
spends its budget faster, and a comparison stays one of equal compute.

``model.compile`` compiles each transformer layer (regional compilation: the layers are the same
code, compiled once; the FLOP-counting hooks stay on the whole model, outside the compiled code),
for the policy and every other model of the job. It changes speed, not what is counted.
"""

from __future__ import annotations

from typing import Any

import torch

from alignbench.errors import ConfigError


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer layers of ``model`` (transformers' checkpointable layers)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def enable_gradient_checkpointing(model: torch.nn.Module, name: str) -> None:
    """Activation checkpointing on every layer of ``model`` (through the transformers model inside
    it: the policy itself, a critic's trunk); ConfigError naming ``name`` if it has none."""
    for module in model.modules():
        enable = getattr(module, "activation_checkpointing_enable", None) or getattr(
            module, "gradient_checkpointing_enable", None
        )
        if callable(enable) and _layers(module):
            # Non-reentrant: the recompute works with frozen inputs (LoRA) and keeps RNG state.
            enable({"use_reentrant": False})
            return
    raise ConfigError(
        f"model.gradient_checkpointing=true but the {name} ({type(model).__name__}) has no "
        "transformers layers to checkpoint — drop model.gradient_checkpointing"
    )


def compile_layers(model: torch.nn.Module) -> int:
    """``torch.compile`` each transformer layer of ``model`` in place (a layer compiled already,
    e.g. the policy's seen through a LoRA reference, is left as it is); how many were compiled."""
    fresh = [m for m in _layers(model) if getattr(m, "_compiled_call_impl", None) is None]
    for layer in fresh:
        layer.compile()
    return len(fresh)


def check_model_options(cfg: Any) -> None:
    """Refuse ``model.gradient_checkpointing`` with ``model.compile`` (one line, before stage 1):
    the recomputed products would run inside compiled code, where the FLOP counter's hooks do not
    fire, so the budget would silently under-charge them."""
    if cfg.get("gradient_checkpointing", False) and cfg.get("compile", False):
        raise ConfigError(
            "model.gradient_checkpointing=true with model.compile=true: the recompute runs inside "
            "compiled code, where the FLOP counter cannot charge it — switch one of them off"
        )


def apply_model_options(models: dict[str, Any], cfg: Any, trained: tuple[str, ...]) -> None:
    """``model.gradient_checkpointing`` on the ``trained`` ones of ``models`` (by name) and
    ``model.compile`` on all of them; None entries (a model the job does not have) are skipped."""
    check_model_options(cfg)
    for name, model in models.items():
        if not isinstance(model, torch.nn.Module):
            continue
        if cfg.get("gradient_checkpointing", False) and name in trained:
            enable_gradient_checkpointing(model, name)
        if cfg.get("compile", False):
            compile_layers(model)
