"""Checkpoints a job can resume from: atomic, safetensors for weights, no pickle ever loaded.

A checkpoint is a folder ``checkpoints/step-<n>/`` holding every trained model as safetensors
and ``state.pt`` with everything else: optimisers, the algorithm's other state (KL controller,
data streams), the reward's (``Reward.state_dict``), the budget spent, the FLOP counters, the
RNG states of Python, NumPy and torch (global and the run's sampling generator), the prompt
stream's position, the initial evaluation, and how many lines of ``metrics.jsonl`` were written.
It is written under a temporary name and renamed, then ``checkpoints/latest`` is replaced
atomically, so a job killed while saving leaves the previous checkpoint intact. ``state.pt`` is
read with ``torch.load(weights_only=True)``.

What of an algorithm is saved is found, not declared: its attributes that are modules with
trainable parameters, optimisers, and objects with ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, load_model, save_model

from alignbench import distributed
from alignbench.config import omit_off_switches
from alignbench.errors import DataError, PluginError
from alignbench.model_folders import folder_fingerprints
from alignbench.run import Run

CHECKPOINTS = "checkpoints"
#: The way out of a damaged checkpoint (only the latest is kept, so there is none to fall back on).
_FIX = (
    "the checkpoint is damaged: pass rerun=true to start the job over (its results are moved aside)"
)
#: Keys that do not change what a job computes (so changing them does not block a resume).
NEUTRAL_KEYS = (
    "rerun",
    "logger",
    "threads",
    "checkpoint_every",
    "cache_rebuild",
    "optimized_metric",
    # Where it runs, like `threads`: a checkpoint made on a GPU resumes on the CPU and back.
    "device",
    # Where each model runs (placement.reference=cpu, ...): the same, model by model.
    "placement",
)


def config_fingerprint(cfg: DictConfig) -> str:
    """A hash of everything in the job's config that determines its numbers."""
    plain = omit_off_switches(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    for key in NEUTRAL_KEYS:
        plain.pop(key, None)
    folders = folder_fingerprints(cfg)
    if folders:  # a critic or reward model read from a folder: its files, not only its name
        plain["model_folders"] = folders
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stateful_parts(obj: Any) -> dict[str, tuple[str, Any]]:
    """An algorithm's trainable modules, optimisers and objects with ``state_dict`` (what a
    checkpoint saves and a skipped batch restores)."""
    return _parts(obj)


def _parts(obj: Any) -> dict[str, tuple[str, Any]]:
    """Attributes of ``obj`` holding state: trainable modules, optimisers, stateful objects."""
    found: dict[str, tuple[str, Any]] = {}
    for name, value in sorted(vars(obj).items()):
        if isinstance(value, torch.nn.Module):
            if any(p.requires_grad for p in value.parameters()):
                found[name] = ("module", value)
        elif isinstance(value, torch.optim.Optimizer):
            found[name] = ("optimizer", value)
        elif hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
            found[name] = ("state", value)
    return found


def rng_state(run: Run) -> dict[str, Any]:
    """Every random state a step consumes."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "generator": run.generator.get_state(),
    }


def set_rng_state(run: Run, state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    run.generator.set_state(state["generator"])


def latest(output_dir: Path) -> Path | None:
    """The newest complete checkpoint of a job folder, or None if it has never saved one.

    A ``latest`` pointer that names no complete checkpoint is damage (saves are atomic, so a
    crash cannot cause it): it is reported, not taken for "no checkpoint" (which would silently
    restart the job from step 0).
    """
    pointer = output_dir / CHECKPOINTS / "latest"
    if not pointer.exists():
        return None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{pointer} is unreadable ({type(exc).__name__}) — {_FIX}") from None
    folder = output_dir / CHECKPOINTS / name
    if not name or "/" in name or not (folder / "state.pt").is_file():
        raise DataError(
            f"{pointer} names {name!r}, which is not a complete checkpoint (no state.pt) — {_FIX}"
        )
    return folder


def read_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``state.pt`` (weights_only), or a DataError naming the file and the fix."""
    path = folder / "state.pt"
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: zip, pickle or EOF errors alike
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is damaged ({reason}) — {_FIX}") from None
    missing = {"step", "fingerprint", "metrics_lines", "rng", "loop"} - set(state)
    if not isinstance(state, dict) or missing:
        raise DataError(f"{path} lacks {sorted(missing)} — {_FIX}")
    return state


def verify(folder: Path) -> dict[str, Any]:
    """Check a checkpoint before anything is resumed from it; returns its state.

    Every weights file must load and be finite, and ``state.pt`` must be readable, so that a
    damaged checkpoint is refused before the job changes anything in its folder.
    """
    state = read_state(folder)
    if not (folder / "policy.safetensors").is_file():
        raise DataError(f"{folder / 'policy.safetensors'} is missing — {_FIX}")
    for path in sorted(folder.glob("*.safetensors")):
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors' own error types for truncated headers
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise DataError(f"{path} is damaged ({reason}) — {_FIX}") from None
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not tensor.isfinite().all():
                # Training never saves non-finite weights (updates are checked first).
                raise DataError(f"{path} holds non-finite weights ({name}) — {_FIX}")
    return state


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load safetensors into ``module``; refuse a missing, damaged or non-finite file."""
    if not path.is_file():
        raise DataError(f"{path} is missing — {_FIX}")
    try:
        load_model(module, str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated headers
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is damaged ({reason}) — {_FIX}") from None
    bad = [
        n
        for n, t in module.state_dict().items()
        if t.is_floating_point() and not t.isfinite().all()
    ]
    if bad:
        # Training never saves non-finite weights (updates are checked first): this is damage.
        raise DataError(f"{path} holds non-finite weights ({bad[0]}) — {_FIX}")


def _check_restorable(state: dict[str, Any], tmp: Path) -> None:
    """Read ``state.pt`` back as a resume will (weights_only): a plugin's state_dict holding
    something else (a numpy array, an object) would otherwise be saved without a word and
    refused at resume as a damaged checkpoint. One line naming the part that cannot be read."""
    try:
        torch.load(tmp / "state.pt", weights_only=True)
        return
    except Exception as exc:  # noqa: BLE001 — any reason the reader would refuse it
        reason = str(exc).strip().splitlines()[0][:160]
    shutil.rmtree(tmp, ignore_errors=True)
    parts = [("the reward's", state.get("reward")), ("the loop's", state.get("loop"))]
    parts += [(f"the algorithm's {key!r}", value) for key, value in state["states"].items()]
    for name, part in parts:
        buffer = io.BytesIO()
        torch.save(part, buffer)
        buffer.seek(0)
        try:
            torch.load(buffer, weights_only=True)
        except Exception:  # noqa: BLE001
            raise PluginError(
                f"{name} state_dict() holds something a checkpoint cannot restore ({reason}) — "
                "keep it to tensors, numbers, strings, and lists / dicts of them"
            ) from None
    raise PluginError(f"a checkpoint could not be read back ({reason})")


def save(run: Run, algorithm: Any, loop_state: dict[str, Any]) -> Path:
    """Write a checkpoint of the run at its current step; returns its folder.

    With several processes every rank calls it: the weights, optimisers and loop state are the
    same on every rank, the random states and FLOP counters are not, so rank 0 gathers those of
    every rank (``ranks``) and is the only one that writes.
    """
    ranks = None
    if distributed.world_size() > 1:
        ranks = distributed.gather(
            {"rng": rng_state(run), "flops": [run.flops.total, dict(run.flops.by_model)]}
        )
    # Rank 0 writes while the others wait for it on the waiting group (writing may outlast
    # NCCL's watchdog, which the next step's all-reduce would meet); its error reaches all.
    return Path(distributed.decided_on_main(lambda: str(_write(run, algorithm, loop_state, ranks))))


def _write(run: Run, algorithm: Any, loop_state: dict[str, Any], ranks: list[Any] | None) -> Path:
    """Rank 0's (or the one process's) part of :func:`save`: write the checkpoint folder."""
    root = run.output_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{run.step}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(run.policy, str(tmp / "policy.safetensors"))
    state: dict[str, Any] = {"optimizers": {}, "states": {}}
    for attr, (kind, value) in _parts(algorithm).items():
        if kind == "module":
            save_model(value, str(tmp / f"algorithm.{attr}.safetensors"))
        elif kind == "optimizer":
            state["optimizers"][attr] = value.state_dict()
        else:
            state["states"][attr] = value.state_dict()
    state["reward"] = run.reward.state_dict()  # every reward's own (a rule reward's is empty)
    if run.scaler is not None:  # fp16: the loss scale reached, and the steps it skipped
        state["scaler"] = {**run.scaler.state_dict(), "skipped_steps": run.skipped_steps}
    metrics = run.output_dir / "metrics.jsonl"
    state.update(
        step=run.step,
        budget=dict(run.budget.spent),
        flops={"total": run.flops.total, "by_model": dict(run.flops.by_model)},
        rng=rng_state(run),
        loop=loop_state,
        metrics_lines=len(metrics.read_text().splitlines()) if metrics.exists() else 0,
        # The fingerprint the job started with (a Run built outside a job: the config's now).
        fingerprint=run.fingerprint or config_fingerprint(run.cfg),
        inputs=dict(run.inputs),
        code=dict(run.code),
    )
    if ranks is not None:
        state["ranks"] = ranks
    torch.save(state, tmp / "state.pt")
    _check_restorable(state, tmp)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / ".latest.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / "latest")
    for old in root.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(run: Run, algorithm: Any, folder: Path) -> dict[str, Any]:
    """Restore the run and the algorithm from a checkpoint; returns the loop's saved state.

    A checkpoint of N processes resumes on N processes only (each rank takes its own random
    state and FLOP counters from ``ranks``), one of one process on one process.
    """
    state = read_state(folder)
    saved_world = len(state.get("ranks") or [None])
    if saved_world != distributed.world_size():
        raise DataError(
            f"{folder} was saved by {saved_world} process(es) and this job runs on "
            f"{distributed.world_size()} — resume with the same number of processes, or pass "
            "rerun=true to start over"
        )
    if "ranks" in state:
        mine = state["ranks"][distributed.rank()]
        state["rng"] = mine["rng"]
        state["flops"] = {"total": mine["flops"][0], "by_model": mine["flops"][1]}
    _load_weights(run.policy, folder / "policy.safetensors")
    for attr, (kind, value) in _parts(algorithm).items():
        if kind == "module":
            _load_weights(value, folder / f"algorithm.{attr}.safetensors")
            continue
        try:
            value.load_state_dict(state["optimizers" if kind == "optimizer" else "states"][attr])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise DataError(
                f"{folder / 'state.pt'} has no usable state for {attr!r} "
                f"({type(exc).__name__}) — {_FIX}"
            ) from None
    run.reward.load_state_dict(state.get("reward", {}))
    if run.scaler is not None and "scaler" in state:
        scaler = dict(state["scaler"])
        run.skipped_steps = int(scaler.pop("skipped_steps"))
        run.scaler.load_state_dict(scaler)
    run.step = state["step"]
    run.budget.spent.update(state["budget"])
    run.flops.total = state["flops"]["total"]
    run.flops.by_model.update(state["flops"]["by_model"])
    set_rng_state(run, state["rng"])
    return {**state["loop"], "metrics_lines": state["metrics_lines"]}
