"""LoRA through PEFT: ``model.lora.r > 0`` trains low-rank adapters instead of whole models, on
the models ``model.lora.targets`` names (``policy`` by default; ``critic``, ``reward_model``).

Stage 1 (SFT) stays full fine-tuning; the core wraps the SFT policy with adapters after loading
it (:func:`apply_lora`), so only the adapter weights are trainable. The reference is then the
same network with its adapters switched off (:class:`SharedBaseReference`, what
``run.load_sft_model()`` returns under LoRA): PPO, GRPO, DPO… hold one backbone for policy and
reference instead of two, without a line of their own changed.

A scalar-head model (PPO's critic, stage 2's reward model) gets adapters on its trunk and keeps
its head whole and trainable (:func:`apply_lora_to_scalar`): a fresh head must learn its scale,
which a low-rank update of a zero matrix cannot. Stage 2 folds the trained adapters into the
trunk before caching the reward model (:func:`merge_adapters`), so the frozen reward of RL is a
plain model, whatever trained it. With online feedback rounds (``feedback.rounds`` > 0) the job
gives that merged model fresh adapters when it loads it (:func:`online_adapters`: the same r,
alpha, dropout and target modules; B = 0, so it scores exactly as the merged model until a
round), and each round retrains those adapters and the head, never the trunk's base weights
(:func:`make_trainable`); they are in the network's ``state_dict``, so checkpoints and the
weights rank 0 sends the other processes carry them.

FLOPs: PEFT's adapters are modules inside the model, so their parameters count in the model's
``2N`` per token forward and ``4N`` backward (the dense convention; it charges the frozen base
weights' backward as if they had weight gradients, as for any model). The reference is charged
for the base weights only, and so is a merged reward model; one given online adapters is
charged for its base weights and its adapters in every pass (scoring included: they run), and a
round's retraining 2N forward + 4N backward over both, like a LoRA critic.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignbench.config import LORA_TARGETS, LoraConfig
from alignbench.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from alignbench.models import ScalarHeadModel


def check_lora(config: Any) -> None:
    """ConfigError (one line, before anything trains) for LoRA settings out of range, targets
    that are not models, or LoRA asked for without ``peft`` installed."""
    if config.r < 0:
        raise ConfigError(f"model.lora.r={config.r} — must be >= 0 (0 = no LoRA)")
    targets = list(config.targets)
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown or not targets or len(set(targets)) < len(targets):
        raise ConfigError(
            f"model.lora.targets=[{','.join(targets)}] — list each of {', '.join(LORA_TARGETS)} "
            "at most once, at least one (e.g. model.lora.targets=[policy,critic])"
        )
    if config.r == 0:
        if targets != ["policy"]:
            raise ConfigError(
                f"model.lora.targets=[{','.join(targets)}] with model.lora.r=0 trains no "
                "adapters — set model.lora.r (e.g. 8)"
            )
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


def _peft_config(config: LoraConfig, task_type: str | None) -> Any:
    """PEFT's LoRA config for ``model.lora``."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        # Empty: PEFT's default modules for the architecture (q_proj/v_proj for Llama).
        target_modules=list(config.target_modules) or None,
        bias="none",
        task_type=task_type,
    )


def _bad_target_modules(config: LoraConfig, exc: ValueError) -> ConfigError:
    """The one-line error for a target module the architecture does not have."""
    return ConfigError(
        f"model.lora.target_modules={list(config.target_modules)}: "
        f"{str(exc).splitlines()[0]} — name linear layers of the model (e.g. q_proj,v_proj)"
    )


def apply_lora(model: PreTrainedModel, config: LoraConfig) -> PreTrainedModel:
    """``model`` (the policy) wrapped with fresh LoRA adapters (only they are trainable);
    unchanged if r=0 or ``policy`` is not among ``model.lora.targets``."""
    if config.r <= 0 or "policy" not in config.targets:
        return model
    check_lora(config)
    from peft import get_peft_model

    try:
        return get_peft_model(model, _peft_config(config, "CAUSAL_LM"))
    except ValueError as exc:  # a target module the architecture does not have
        raise _bad_target_modules(config, exc) from None


def apply_lora_to_scalar(model: ScalarHeadModel, config: Any, role: str) -> ScalarHeadModel:
    """``model`` (a critic or reward model) with fresh LoRA adapters injected into its trunk, only
    they and the whole head trainable, when ``role`` is among the targets of ``config``
    (``model.lora``: a :class:`LoraConfig` or its config node) and r > 0; unchanged otherwise
    (also when ``config`` is None: a job config without ``model.lora``)."""
    if role not in LORA_TARGETS:
        raise ValueError(f"role {role!r} — use one of {', '.join(LORA_TARGETS)}")
    if config is None or config.r <= 0 or role not in config.targets:
        return model
    check_lora(config)
    from peft import inject_adapter_in_model

    # Injected in place, no PEFT wrapper: the model keeps its type, forward and head, so the
    # code that scores, places, checkpoints or counts it is the same as for a full model.
    try:
        inject_adapter_in_model(_peft_config(config, None), model.trunk)
    except ValueError as exc:
        raise _bad_target_modules(config, exc) from None
    return train_adapters_and_head(model)


def has_adapters(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds LoRA adapters (found by their parameters' names: peft unneeded)."""
    return any("lora_" in name for name, _ in model.named_parameters())


def train_adapters_and_head(model: ScalarHeadModel) -> ScalarHeadModel:
    """``model`` (a scalar-head model with adapters on its trunk) with its adapters and its whole
    head trainable, nothing else (the trunk's base weights stay as they are)."""
    model.requires_grad_(False)
    for name, parameter in model.trunk.named_parameters():
        parameter.requires_grad_("lora_" in name)
    model.head.requires_grad_(True)
    return model


def make_trainable(model: ScalarHeadModel) -> ScalarHeadModel:
    """A frozen reward model made trainable again for an online round (or its uncertainty probe):
    its adapters and head when it has adapters (:func:`online_adapters`), else all of it."""
    if has_adapters(model):
        return train_adapters_and_head(model)
    return model.requires_grad_(True)


def online_adapters(model: ScalarHeadModel, config: Any, seed: int) -> ScalarHeadModel:
    """``model`` (stage 2's merged reward model, on the CPU) with fresh LoRA adapters on its trunk
    for the online rounds to train (``config``: ``model.lora``), frozen until a round does.

    B starts at zero, so it scores exactly as the merged model; A is drawn from the CPU generator
    seeded with ``seed`` inside a fork, so every process (and a resumed job) builds the same
    adapters and the job's own random streams are left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        apply_lora_to_scalar(model, config, "reward_model")
    model.eval()
    return model.requires_grad_(False)


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` with any adapters folded in (:func:`merge_adapters`): a plain
    model with the keys of one never adapted (a critic or an export made from a reward model
    that online rounds train as adapters); a plain ``model`` is copied as it is."""
    copied = copy.deepcopy(model)
    return merge_adapters(copied) if has_adapters(copied) else copied


def merge_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every LoRA layer folded into its base layer (``W + B A alpha / r``) and
    replaced by it: a plain model again, the same state-dict keys as one never adapted."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model


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
