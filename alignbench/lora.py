"""LoRA through PEFT: ``model.lora.r > 0`` trains low-rank adapters on the policy instead of it.

Stage 1 (SFT) stays full fine-tuning; the core wraps the SFT policy with adapters after loading
it (:func:`apply_lora`), so only the adapter weights are trainable. The reference is then the
same network with its adapters switched off (:class:`SharedBaseReference`, what
``run.load_sft_model()`` returns under LoRA): PPO, GRPO, DPO… hold one backbone for policy and
reference instead of two, without a line of their own changed.

FLOPs: PEFT's adapters are modules inside the policy, so their parameters count in the policy's
``2N`` per token forward and ``4N`` backward (the dense convention; it charges the frozen base
weights' backward as if they had weight gradients, as for any model). The reference is charged
for the base weights only.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignbench.config import LoraConfig
from alignbench.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def check_lora(config: Any) -> None:
    """ConfigError (one line, before anything trains) for LoRA settings out of range or LoRA
    asked for without ``peft`` installed."""
    if config.r < 0:
        raise ConfigError(f"model.lora.r={config.r} — must be >= 0 (0 = no LoRA)")
    if config.r == 0:
        return
    if not config.alpha > 0:
        raise ConfigError(f"model.lora.alpha={config.alpha} — must be > 0 (e.g. 2 * r)")
    if not 0 <= config.dropout < 1:
        raise ConfigError(f"model.lora.dropout={config.dropout} — must be in [0, 1)")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"model.lora.r={config.r} needs the peft package — pip install 'alignbench[lora]' "
            "(or model.lora.r=0 for full fine-tuning)"
        ) from None


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a PEFT model whose adapters can be switched off."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def apply_lora(model: PreTrainedModel, config: LoraConfig) -> PreTrainedModel:
    """``model`` wrapped with fresh LoRA adapters (only they are trainable); unchanged if r=0."""
    if config.r <= 0:
        return model
    check_lora(config)
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        # Empty: PEFT's default modules for the architecture (q_proj/v_proj for Llama).
        target_modules=list(config.target_modules) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:  # a target module the architecture does not have
        raise ConfigError(
            f"model.lora.target_modules={list(config.target_modules)}: "
            f"{str(exc).splitlines()[0]} — name linear layers of the model (e.g. q_proj,v_proj)"
        ) from None


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The base network of a LoRA ``model`` with its adapters off and dropout off, without
    gradients; yields the inner Hugging Face model (not the PEFT wrapper, whose forward hook
    charges the policy's FLOPs)."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter(), torch.no_grad():
            yield model.base_model.model
    finally:
        model.train(was_training)


class SharedBaseReference(torch.nn.Module):
    """The frozen SFT model as a view of a LoRA policy: its base with adapters off.

    It holds no parameters of its own (the policy is kept outside the module tree, so moving,
    freezing or switching this view to train mode never touches the policy), and is charged for
    the base weights' FLOPs under its own name when tracked.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        if not is_lora(policy):
            raise TypeError("SharedBaseReference needs a PEFT (LoRA) policy")
        self.__dict__["policy"] = policy  # not a submodule: see the class docstring
        self.config = policy.config

    @property
    def device(self) -> torch.device:
        """The policy's device (the view has no parameters of its own)."""
        return next(self.policy.parameters()).device

    def matmul_parameters(self) -> tuple[int, int]:
        """(body, head) parameters that multiply in a forward: the base's, adapters excluded."""
        from alignbench.budget import _matmul_parameters

        base = self.policy.base_model.model
        body, head = _matmul_parameters(base)
        adapters = sum(p.numel() for name, p in base.named_parameters() if "lora_" in name)
        return body - adapters, head

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's forward with the adapters off (same arguments as the policy's)."""
        with adapters_off(self.policy) as base:
            return base(*args, **kwargs)


def export_lora(
    policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path, merge: bool
) -> None:
    """Write a LoRA policy into ``folder``: the adapter and tokenizer; with ``merge``, the merged
    model (loadable without peft) in ``folder`` and the adapter in ``folder/adapter``."""
    if not merge:
        policy.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return
    # A copy: merging in place would fold the adapters into the base the run still holds.
    merged = copy.deepcopy(policy).merge_and_unload()
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    policy.save_pretrained(folder / "adapter")
