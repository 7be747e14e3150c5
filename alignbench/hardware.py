"""Where a job's models run and in which precision: ``device=`` and ``precision=``.

``device=auto`` picks CUDA when torch sees a GPU, else Apple's MPS, else the CPU; naming a device
that is not there is one line before anything trains. ``precision=bf16|fp16`` is autocast, applied
by the core around the rollout, score and update hooks and the evaluation (so no algorithm needs
to know); the weights, the optimiser state and the checkpoints stay fp32 (master weights). FLOPs
are counted from tokens and parameters, never from dtypes, so the budget is the same under every
setting.

fp16 adds a loss scaler (``torch.amp.GradScaler``, on the Run: :meth:`Run.backward` and
:meth:`Run.clip_and_step`, the seam every built-in algorithm steps through): the loss is scaled
before ``backward`` so small gradients do not underflow, unscaled before clipping, and a step
whose gradients overflowed is skipped while the scale drops (``precision/skipped_steps``). fp16
autocast runs on CUDA and on the CPU; bf16 has fp32's range and needs no scaler.

Stages 1 and 2 (SFT, the reward model) and the online rounds build on the same device and in the
same precision (:func:`stage_hardware`, :func:`scaled_step`); a stage built anywhere but the CPU
in fp32 is another artefact, so its cache key says where (:func:`stage_key`), and its weights are
cached as fp32 on the CPU, so a cache entry loads anywhere.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from alignbench.errors import ConfigError

#: ``device=`` choices.
DEVICES = ("auto", "cpu", "cuda", "mps")
#: ``precision=`` choices and their autocast dtypes (fp32: no autocast at all).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    """Whether torch sees Apple's Metal backend."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """The torch device ``device=<name>`` stands for; ConfigError if it is not on this machine."""
    if name not in DEVICES:
        raise ConfigError(f"device={name!r} is not a choice — use one of: {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda but torch.cuda.is_available() is False — install the CUDA build of "
            "torch (README: Your hardware) or use device=cpu / device=auto"
        )
    if name == "mps" and not _mps_available():
        raise ConfigError(
            "device=mps but torch.backends.mps.is_available() is False — use device=cpu or "
            "device=auto"
        )
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` computes in bf16 natively (compute capability 8.0 or more:
    Ampere on). torch's ``is_bf16_supported()`` also says True where bf16 is only emulated (a T4
    or V100, since torch 2.3), and asks about the current device rather than the job's."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError for a precision the device cannot run (one line, before anything trains)."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision={precision!r} is not a choice — use one of: {', '.join(PRECISIONS)}"
        )
    if precision == "bf16" and device.type == "cuda" and not native_bf16(device):
        # Pre-Ampere GPUs emulate bf16 slowly or not at all: refuse it rather than crawl.
        raise ConfigError(
            f"precision=bf16 on {torch.cuda.get_device_name(device)}: this GPU has no bf16 "
            "support — use precision=fp16 (with its loss scaler) or fp32"
        )
    if precision == "fp16" and device.type not in ("cuda", "cpu"):
        # Autocast and the loss scaler are tested on CUDA and the CPU only.
        raise ConfigError(
            f"precision=fp16 on device={device.type}: fp16 (autocast + loss scaler) runs on cuda "
            "and cpu here — use precision=bf16 (same memory, fp32's range) or fp32"
        )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` on ``device``; fp32 is a no-op (the default run is untouched)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16's loss scaler on ``device`` (fp32 and bf16 need none: None, and nothing changes)."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def active_precision(device: torch.device) -> str:
    """The precision of the autocast around the caller on ``device`` (``fp32`` without one)."""
    if not torch.is_autocast_enabled(device.type):
        return "fp32"
    dtype = torch.get_autocast_dtype(device.type)
    return next((name for name, d in PRECISIONS.items() if d == dtype), "fp32")


def scaled_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    parameters: list[torch.nn.Parameter],
    max_norm: float,
    scaler: torch.amp.GradScaler | None,
) -> bool:
    """Backward, clip to ``max_norm``, step; False when fp16's ``scaler`` skipped an overflow.

    Without a scaler (fp32, bf16) this is ``loss.backward()``, ``clip_grad_norm_``,
    ``optimizer.step()``, exactly what the stages ran before. With one the loss is scaled before
    ``backward``, the gradients unscaled before clipping, and a step whose gradients overflowed
    is skipped while the scale drops (the same seam as :meth:`Run.clip_and_step`)."""
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        optimizer.step()
        return True
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    scaler.step(optimizer)  # skipped when its gradients held an inf or NaN
    scaler.update()
    return bool(torch.isfinite(norm))


def stage_hardware(cfg: Any, device: torch.device | None = None) -> tuple[torch.device, str]:
    """The device (``device`` as the job resolved it, else ``cfg.device``) and precision a stage
    of ``cfg`` is built in, checked (ConfigError, one line, before the stage's folder)."""
    if device is None:
        device = resolve_device(str(cfg.get("device") or "cpu"))
    precision = str(cfg.get("precision") or "fp32")
    check_precision(precision, device)
    return device, precision


def stage_key(device: torch.device, precision: str) -> list[dict[str, dict[str, str]]]:
    """Where a stage was built, as extra parts of its cache key: none on the CPU in fp32, so the
    default keys stay what they always were (``device=auto`` on a CPU machine included: the key
    follows the resolved device's type, not the config's string)."""
    if device.type == "cpu" and precision == "fp32":
        return []
    return [{"hardware": {"device": device.type, "precision": precision}}]


def stage_record(device: torch.device, precision: str) -> dict[str, str]:
    """The device type and precision for a stage's record, only when not the CPU in fp32 (the
    default record is unchanged)."""
    return {k: v for part in stage_key(device, precision) for k, v in part["hardware"].items()}


def model_device(model: torch.nn.Module) -> torch.device:
    """The device ``model`` runs on: its ``device`` attribute, else its first parameter's."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def place(obj: Any, device: torch.device) -> None:
    """Move every module among ``obj``'s attributes to ``device`` (an algorithm's reference,
    critic, value head…). ``Module.to`` swaps the tensors inside the same Parameter objects, so
    optimisers built before the move keep pointing at them."""
    for value in vars(obj).values():
        if isinstance(value, torch.nn.Module):
            value.to(device)


def check_hardware(cfg: Any) -> torch.device:
    """Check ``device=``, ``precision=``, ``placement.*`` and ``model.lora.*`` of a job's config
    (ConfigError, one line, before any folder or model); returns the device the job runs on."""
    from alignbench.lora import check_lora
    from alignbench.placement import check_placement

    device = resolve_device(str(cfg.device))
    check_precision(str(cfg.precision), device)
    lora = cfg.model.lora
    check_lora(lora)
    # Only a LoRA policy makes the reference its own base (which cannot move on its own).
    check_placement(cfg.get("placement") or {}, lora=bool(lora.r) and "policy" in lora.targets)
    return device
