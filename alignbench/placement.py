"""Per-model placement: ``placement.reference=cpu`` (and ``placement.reward``, ``placement.critic``)
runs that model on another device than the job's, e.g. a frozen reference offloaded to the CPU
while the policy trains on the GPU.

A placed model lives on its device; its inputs are moved there and its outputs back to the job's
device at its boundary (forward hooks), so no algorithm needs to know. Gradients flow back through
the move, so a placed critic still trains. FLOPs are counted from tokens and parameters, so the
budget does not depend on where a model runs. Empty (the default) is the job's device: nothing is
moved, nothing hooked.

Which models a job will have is declared by its plugins (``model_roles(config)`` on the algorithm
and the reward class), so that placing one it lacks is refused from the config alone, before
stage 1 trains; a plugin that declares nothing is checked when the algorithm is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from alignbench.errors import ConfigError, PluginError

#: The models that can be placed: the frozen reference, the learned reward model, the critic.
ROLES = ("reference", "reward", "critic")
#: The roles an algorithm's ``model_roles`` may name (its ``reference`` and ``critic``), and a
#: reward's (its ``model``).
ALGORITHM_ROLES = ("reference", "critic")
REWARD_ROLES = ("reward",)


def resolve_placement_device(role: str, name: str) -> torch.device:
    """The device ``placement.<role>=<name>`` stands for; ConfigError (one line) if it is not a
    device, or not on this machine."""
    key = f"placement.{role}={name!r}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"{key} is not a device — use cpu, cuda, cuda:<index> or mps (or leave it empty: "
            "the job's device)"
        )
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"{key}: this machine has {count} CUDA device(s) — use cpu")
    if device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ConfigError(f"{key}: torch.backends.mps.is_available() is False — use cpu")
    return device


def check_placement(placement: Mapping[str, Any], lora: bool = False) -> dict[str, torch.device]:
    """The device of every placed role (empty ones left out: the job's device), checked before
    anything trains; ``lora``: the reference is the policy's own base, so it cannot move."""
    unknown = sorted(set(placement) - set(ROLES))
    if unknown:
        raise ConfigError(f"placement.{unknown[0]} is not a model — use one of: {', '.join(ROLES)}")
    devices = {
        role: resolve_placement_device(role, str(name))
        for role, name in placement.items()
        if name not in (None, "")
    }
    if lora and "reference" in devices:
        raise ConfigError(
            "placement.reference with model.lora.r > 0: the reference is the policy's own base "
            "weights (adapters off), it cannot live elsewhere — drop placement.reference"
        )
    return devices


def declared_roles(owner: type, config: Any, roles: tuple[str, ...]) -> frozenset[str] | None:
    """The models ``owner`` (an algorithm or reward class) declares it has for ``config``: its
    classmethod ``model_roles(config)``; None where it declares nothing (checked once built)."""
    declare = getattr(owner, "model_roles", None)
    if declare is None:
        return None
    fix = "make it a @classmethod model_roles(cls, config) returning a set of roles, or None"
    if not callable(declare):
        # An attribute is not a declaration the core calls: silently ignoring it would leave
        # the plugin's author believing the check runs.
        raise PluginError(f"{owner.__qualname__}.model_roles is {declare!r}, not callable — {fix}")
    try:
        declared = declare(config)
    except TypeError as exc:  # an instance method called on the class, say
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PluginError(
            f"{owner.__qualname__}.model_roles(config) failed ({why}) — {fix}"
        ) from None
    if declared is None:
        return None
    if not isinstance(declared, set | frozenset | list | tuple) or set(declared) - set(roles):
        raise PluginError(
            f"{owner.__qualname__}.model_roles returned {declared!r} — return a set of "
            f"{', '.join(roles)} (the models it has), or None (not declared)"
        )
    return frozenset(declared)


def missing_model(role: str, device: Any, algo: str, reward: str) -> ConfigError:
    """The one-line refusal of ``placement.<role>=<device>`` when the job has no such model."""
    owner = f"reward={reward}" if role in REWARD_ROLES else f"algo={algo}"
    return ConfigError(
        f"placement.{role}={device} but this job ({owner}) has no {role} model — "
        f"drop placement.{role}"
    )


def check_placed_roles(
    placement: Mapping[str, torch.device],
    algorithm: type,
    algo_config: Any,
    reward: type,
    reward_config: Any,
) -> None:
    """Refuse (one line, before stage 1) a placed model that the job's algorithm or reward
    declares it will not have; a role whose plugin declares nothing is left to
    :func:`apply_placement`."""
    has: dict[str, bool | None] = {}  # None: not declared
    for owner, config, owned in (
        (algorithm, algo_config, ALGORITHM_ROLES),
        (reward, reward_config, REWARD_ROLES),
    ):
        roles = declared_roles(owner, config, owned)
        has.update({role: None if roles is None else role in roles for role in owned})
    for role, device in placement.items():
        if has[role] is False:
            raise missing_model(role, device, algo_config.name, reward_config.name)


def move(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (nested tuples, lists, dicts, model outputs) on ``device``;
    anything else (a KV cache, numbers) as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(move(x, device) for x in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(move(x, device) for x in obj)
    if hasattr(obj, "to_tuple") and isinstance(obj, Mapping):  # transformers' ModelOutput
        for key in list(obj.keys()):
            obj[key] = move(obj[key], device)
        return obj
    if isinstance(obj, dict):
        return {key: move(value, device) for key, value in obj.items()}
    return obj


def place_model(model: torch.nn.Module, device: torch.device, home: torch.device) -> None:
    """Put ``model`` on ``device``: its inputs are moved there before each forward, its outputs
    back to ``home`` (the job's device) after it. Hooks the model tracks for FLOPs registered
    before this one see the output where it was computed; the count is the same."""
    model.to(device)

    def inputs_there(module: torch.nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any]:
        return move(args, device), move(kwargs, device)

    def outputs_home(module: torch.nn.Module, args: Any, output: Any) -> Any:
        return move(output, home)

    model.register_forward_pre_hook(inputs_there, with_kwargs=True)
    model.register_forward_hook(outputs_home)


def placed_models(run: Any, algorithm: Any) -> dict[str, torch.nn.Module | None]:
    """The job's models by role: the algorithm's ``reference`` and ``critic``, the reward's
    ``model`` (None where there is none: a rule reward, a shared critic, no KL term)."""
    found = {
        "reference": getattr(algorithm, "reference", None),
        "critic": getattr(algorithm, "critic", None),
        "reward": getattr(run.reward, "model", None),
    }
    return {k: v if isinstance(v, torch.nn.Module) else None for k, v in found.items()}


def apply_placement(run: Any, algorithm: Any, placement: Mapping[str, torch.device]) -> None:
    """Place each role's model (:func:`place_model`) on its ``placement`` device; ConfigError
    naming the key when the job has no such model."""
    if not placement:
        return
    models = placed_models(run, algorithm)
    algo = getattr(getattr(run, "config", None), "name", type(algorithm).__name__)
    reward = getattr(getattr(run.reward, "config", None), "name", type(run.reward).__name__)
    for role, device in placement.items():
        model = models[role]
        if model is None:  # a plugin that declares no model_roles: refused only now
            raise missing_model(role, device, algo, reward)
        place_model(model, device, run.device)
