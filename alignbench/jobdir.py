"""A job folder: claimed (locked) by one process, never overwritten by a different config.

Hydra would write ``.hydra/`` (the composed config and the overrides) into the job folder before
the job function runs, so a refused re-run would still relabel an old result under new
overrides. alignbench therefore turns Hydra's own writing off (``hydra.output_subdir: null``)
and :func:`claim` writes ``.hydra/`` itself, only after checking that the folder is free:

* another live process holds the folder's lock → refuse (two writers interleave records);
* the folder holds results (a summary, step records, a checkpoint) of a different config →
  refuse, naming the keys that differ, unless ``rerun=true`` (then they are moved aside);
* otherwise write ``.hydra/`` and keep the lock until the job ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignbench.checkpoint import NEUTRAL_KEYS, config_fingerprint
from alignbench.config import omit_off_switches
from alignbench.errors import ConfigError
from alignbench.model_folders import folder_fingerprints

HYDRA = ".hydra"
LOCK = ".lock"
#: What a job writes into its folder (moved aside together by ``rerun=true``).
RESULTS = ("metrics.jsonl", "summary.json", "checkpoints", "model", "wandb", "wandb_run_id", HYDRA)


#: Overrides already in a job folder's name (``<algo>_<task>_seed<seed>_…``), left out of its slug.
_NAMED = ("algo", "task", "seed")
_UNNAMED = (*NEUTRAL_KEYS, "cache_dir")


def job_name(overrides: Any) -> str:
    """A sweep job's folder name from its overrides: stable when the sweep is extended.

    Hydra numbers job folders in launch order, so adding a value to a sweep renumbers them and
    the same config lands in a new folder (run twice, counted as two seeds). The name is a
    readable slug of the overrides that change the numbers plus a hash of them, so the same
    config always finds its folder (and is skipped once finished), whatever else the sweep holds.
    """
    items = sorted(str(o).lstrip("+") for o in (overrides or []))
    # cache_dir only says where stage caches live (keyed by content): not part of the config.
    kept = [o for o in items if o.split("=", 1)[0].split(".", 1)[0] not in _UNNAMED]
    digest = hashlib.sha1("\x00".join(kept).encode()).hexdigest()[:8]
    shown = [o for o in kept if o.split("=", 1)[0] not in _NAMED]
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "+".join(shown))[:60].strip("-_+")
    return f"{slug}_{digest}" if slug else digest


# `hydra.sweep.subdir` in conf/config.yaml names each job folder with it (registered on import,
# also in a parallel launcher's worker processes, which import this module to run a job).
OmegaConf.register_new_resolver("alignbench.job_name", job_name, replace=True)


def flat_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"algo.lr": 0.001, ...}`` of a config (DictConfig or plain dict), neutral keys left out."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if not prefix and isinstance(cfg, dict):
        cfg = omit_off_switches(cfg)  # records made before precision / model.lora existed
    out: dict[str, Any] = {}
    for key, value in (cfg or {}).items():
        name = f"{prefix}{key}"
        if not prefix and key in NEUTRAL_KEYS + ("hydra",):
            continue
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ (or exist on one side only)."""
    return sorted(k for k in set(old) | set(new) if old.get(k, "∅") != new.get(k, "∅"))


def _has_results(folder: Path) -> bool:
    """Step records, a checkpoint or a finished summary (a job that failed before its first
    step left only its error, which a new run may replace)."""
    if (folder / "metrics.jsonl").exists() or (folder / "checkpoints").exists():
        return True
    return (summary_status(folder) or {}).get("status") == "finished"


def saved_config(folder: Path) -> dict[str, Any] | None:
    """The flat config a folder's results were produced with, or None if it records none."""
    path = folder / HYDRA / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
        # A record written by Hydra itself keeps interpolations (`${world}`): resolve them.
        return flat_config(OmegaConf.to_container(OmegaConf.create(data), resolve=True))
    except (yaml.YAMLError, ValueError, OmegaConfBaseException):
        return None


def changed_inputs(folder: Path, now: dict[str, str]) -> list[str]:
    """The input keys (``model.name_or_path``, ``task.path``, ...) whose files' contents
    (``now``: :func:`alignbench.model_folders.folder_fingerprints`) differ from those the
    folder's results recorded (none when they recorded none: older results)."""
    recorded = (summary_status(folder) or {}).get("inputs")
    if not isinstance(recorded, dict):
        return []
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))


def check_free(cfg: DictConfig, folder: Path) -> None:
    """Refuse (ConfigError, one line) a folder holding results of a different config."""
    if cfg.get("rerun") or not _has_results(folder):
        return
    old = saved_config(folder)
    new = flat_config(cfg)
    if old is None:
        if (summary_status(folder) or {}).get("fingerprint") == config_fingerprint(cfg):
            return  # no .hydra/ record, but the summary says it is this very config
        raise ConfigError(
            f"{folder} holds results but no record of their config (.hydra/config.yaml) — pass "
            "rerun=true to move them aside, or choose another output folder"
        )
    changed = differing_keys(old, new)
    if not changed:
        other = changed_inputs(folder, folder_fingerprints(cfg))
        if other:
            raise ConfigError(
                f"{folder} holds results made from other contents of {', '.join(other)}"
                " (the same names, other files) — pass rerun=true to move them aside, or choose "
                "another hydra.sweep.dir / hydra.run.dir"
            )
    if changed:
        shown = ", ".join(changed[:6]) + (
            f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""
        )
        raise ConfigError(
            f"{folder} holds results of a different config (differs in: {shown}) — pass "
            "rerun=true to move them aside, or choose another hydra.sweep.dir / hydra.run.dir"
        )


def move_aside(folder: Path) -> Path | None:
    """``rerun=true``: move the folder's results (``.hydra/`` included) to ``previous-<time>/``."""
    old = [folder / name for name in RESULTS if (folder / name).exists()]
    log = folder / "app.log"
    if not old:
        return None
    aside = folder / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    for path in old + ([log] if log.exists() else []):
        os.replace(path, aside / path.name)
    return aside


def write_yaml_atomic(path: Path, data: Any) -> None:
    """Write YAML via a temporary file and a rename (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def write_hydra_record(
    folder: Path, cfg: DictConfig, hydra_cfg: Any, overrides: list[str] | None
) -> None:
    """What Hydra would have written into ``.hydra/``: config, hydra config and overrides
    (the latter two only when known: a job run from Python has neither)."""
    target = folder / HYDRA
    target.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    write_yaml_atomic(target / "config.yaml", resolved)
    if hydra_cfg is not None:
        write_yaml_atomic(
            target / "hydra.yaml",
            {"hydra": OmegaConf.to_container(hydra_cfg, resolve=False, enum_to_str=True)},
        )
    if overrides is not None:
        write_yaml_atomic(target / "overrides.yaml", list(overrides))


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the folder's exclusive lock for the job's duration; refuse if another process has it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK, "a+")  # noqa: SIM115 (held open for the whole job)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"{folder} is being written by {holder} — wait for it to end (or stop it), "
            "or choose another output folder"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def summary_status(folder: Path) -> dict[str, Any] | None:
    """The folder's summary.json, or None (missing or unreadable)."""
    try:
        return json.loads((folder / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
