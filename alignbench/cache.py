"""The stage cache shared by stage 1 (SFT, :mod:`alignbench.stages`) and stage 2 (the reward model,
:mod:`alignbench.rm.stage`): a folder per key, built once under a lock, reused only after its
provenance checks out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from alignbench import provenance
from alignbench.errors import ConfigError

# The stage cache's log lines ("sft stage: cache hit ...") keep the logger name they were
# always written under, so a log filter or a reader of app.log still finds them.
log = logging.getLogger("alignbench.stages")


def config_hash(*parts: Any) -> str:
    """A short stable hash of config nodes / plain values (what a cached artefact depends on)."""
    plain = [
        OmegaConf.to_container(p, resolve=True, enum_to_str=True)
        if isinstance(p, DictConfig)
        else p
        for p in parts
    ]
    blob = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (parallel jobs of a sweep train a stage only once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _move_aside(path: Path) -> Path:
    """Rename a cached folder to ``<key>.old-<time>`` (kept, not deleted); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.old-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.old-{stamp}-{number}")
    os.replace(path, aside)
    return aside


def cached_stage(
    cache_dir: str,
    stage: str,
    key: str,
    build: Callable[[Path], dict[str, Any]],
    *,
    sources: tuple[str, ...] = provenance.SFT_SOURCES,
    plugins: dict[str, object] | None = None,
    rebuild: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """The folder ``<cache_dir>/<stage>/<key>``, built by ``build(tmp_folder)`` unless cached.

    ``build`` writes the artefacts into the folder it is given and returns the stage's info. A
    file lock makes parallel jobs build a stage once; the folder appears only when complete
    (written under a temporary name, then renamed), with its provenance in ``stage.json``; it
    is built on ``provenance.STAGE_THREADS`` torch threads whatever the job's ``threads``. A
    cached folder is reused only if it passes :func:`provenance.check` (files, core code and
    library versions as recorded); otherwise it is refused in one line or, with ``rebuild``,
    moved aside to ``<key>.old-<time>`` and built again.
    """
    root = Path(cache_dir) / stage
    path = root / key

    def hit(info: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        log.info("%s stage: cache hit %s", stage, path)
        return path, {**info, "cache_hit": True}

    if path.exists():
        info, problem = provenance.check(path, key, sources)
        if problem is None:
            return hit(info)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cache_dir={cache_dir!r} is not writable ({exc.strerror}) — choose another cache_dir"
        ) from None
    with file_lock(root / f"{key}.lock"):
        if path.exists():  # checked again: another job may have (re)built it meanwhile
            info, problem = provenance.check(path, key, sources)
            if problem is None:
                return hit(info)
            if not rebuild:
                raise ConfigError(provenance.refusal(path, problem))
            aside = _move_aside(path)
            log.warning("%s stage: %s — moved aside to %s, rebuilding", stage, problem, aside)
        log.info("%s stage: building %s", stage, path)
        tmp = root / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        start = time.perf_counter()
        try:
            with torch_threads(provenance.STAGE_THREADS):
                info = {"key": key, **build(tmp)}
                info["seconds"] = time.perf_counter() - start
                info["provenance"] = provenance.record(tmp, sources, plugins or {})
            (tmp / "stage.json").write_text(json.dumps(info, indent=2))
            os.replace(tmp, path)
        except BaseException:
            # Stopped or failed half-way (a signal, a full disk): leave no partial folder.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path, {**info, "cache_hit": False}
