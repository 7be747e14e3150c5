"""Range checks of every numeric config value, before any folder is created or model trained.

The typed config (``alignbench/config.py`` and each plugin's dataclass) already refuses unknown
keys and wrong types; this module refuses values of the right type that make no sense
(``algo.lr=nan``, ``algo.ppo_epochs=0``, ``budget.amount=inf``, a negative seed). The rules go by
the *name* of a key, wherever it sits, so a plugin's ``lr`` or ``batch_size`` is checked like a
built-in one without any code of its own; a plugin config may add its own checks with a
``validate(self) -> None`` method that raises :class:`alignbench.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignbench.errors import ConfigError

#: The largest seed every RNG here accepts (numpy takes < 2**32 through `seed % 2**32`, torch
#: < 2**63): refuse what would overflow instead of failing deep inside a generator.
MAX_SEED = 2**63 - 1


def _positive(v: float) -> bool:
    return v > 0


def _at_least_one(v: float) -> bool:
    return v >= 1


def _non_negative(v: float) -> bool:
    return v >= 0


def _share(v: float) -> bool:
    return 0 <= v <= 1


def _share_below_one(v: float) -> bool:
    return 0 <= v < 1


#: (test on the key's last part, test on the value, what the value must be)
RULES: list[tuple[Callable[[str], bool], Callable[[float], bool], str]] = [
    (
        lambda k: k in ("seed", "world") or k.endswith("_seed"),
        lambda v: 0 <= v <= MAX_SEED,
        f"an integer in [0, {MAX_SEED}]",
    ),
    (lambda k: k in ("gamma", "lam", "top_p"), _share, "in [0, 1]"),
    (lambda k: k in ("target_kl", "clip_range"), _positive, "> 0"),
    (lambda k: k == "amount", _positive, "> 0"),
    (lambda k: k == "lr" or k.endswith("_lr"), _positive, "a learning rate > 0"),
    (lambda k: k == "temperature", _positive, "> 0 (use greedy decoding for 0)"),
    (lambda k: k == "heldout_share", _share_below_one, "in [0, 1) (some groups must train)"),
    (lambda k: k.endswith("_share"), _share, "a share in [0, 1]"),
    (
        lambda k: (
            k
            in (
                "max_new_tokens",
                "prompts_per_step",
                "epochs",
                "ppo_epochs",
                "num_minibatches",
                "samples_per_prompt",
                "eval_size",
                "num_entities",
                "labels",
                "pool_factor",
                "kl_horizon",
                "hidden_size",
                "intermediate_size",
                "num_layers",
                "num_heads",
                "max_position_embeddings",
            )
            or k.endswith("batch_size")
        ),
        _at_least_one,
        ">= 1",
    ),
    (lambda k: k == "k", lambda v: v >= 2, ">= 2 (a ranking needs two responses)"),
    (
        lambda k: (
            k
            in (
                "checkpoint_every",
                "points",
                "rounds",
                "delay",
                "threads",
                "patience",
                "top_k",
                "early_stop_kl",
            )
            or k.endswith(("_coef", "_samples", "_every", "_clip", "weight_decay", "_norm"))
        ),
        _non_negative,
        ">= 0",
    ),
]


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            out += _leaves(value, f"{prefix}{key}.")
        return out
    return [(prefix[:-1], node)]


def check_ranges(cfg: DictConfig) -> None:
    """Raise ConfigError (one line naming the key, the value and what it must be) on the first
    numeric value out of range; every float must be finite."""
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    plain.pop("hydra", None)
    # Shallow keys first: `world=-3` is reported as `world`, not as the task.seed it sets.
    for key, value in sorted(_leaves(plain), key=lambda kv: kv[0].count(".")):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        name = key.rsplit(".", 1)[-1]
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} — must be a finite number; set {key} to a real value")
        for applies, ok, must in RULES:
            if applies(name):
                if not ok(value):
                    raise ConfigError(f"{key}={value} — must be {must}; set {key} accordingly")
                break


def check_known_keys(obj: Any, prefix: str = "") -> None:
    """Refuse keys a dataclass does not declare: a typo behind ``+`` (``+algo.lrr=0.1``) is added
    to a typed node by OmegaConf without complaint, and then silently ignored."""
    if not dataclasses.is_dataclass(obj):
        return
    declared = {f.name for f in dataclasses.fields(obj)}
    for key, value in vars(obj).items():
        if key not in declared:
            raise ConfigError(
                f"unknown config key '{prefix}{key}' — check its spelling; "
                "`python -m alignbench --cfg job` lists every key"
            )
        check_known_keys(value, f"{prefix}{key}.")


def check_choices(obj: Any, prefix: str = "") -> None:
    """Refuse a value outside a field's ``choices`` (``field(metadata={"choices": (...)})``), for
    every dataclass in the config, a plugin's included: a typo such as ``algo.critic=sepparate``
    is one line at start-up, not an error after stage 1 has trained."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name, None)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{prefix}{f.name}={value!r} is not a choice — use one of: "
                + ", ".join(str(c) for c in choices)
            )
        check_choices(value, f"{prefix}{f.name}.")


def check_plugin_configs(objects: list[Any]) -> None:
    """Call ``validate()`` of every config object that has one (a plugin's own range checks)."""
    for obj in objects:
        method = getattr(obj, "validate", None)
        if callable(method):
            method()
