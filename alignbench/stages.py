"""Stage 1 (SFT) of the pipeline, cached on disk by a hash of everything that determines it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignbench import ops, provenance, signals
from alignbench.batch import demonstration_batch
from alignbench.budget import FlopCounter
from alignbench.config import SFTStageConfig, to_object
from alignbench.errors import ConfigError, DataError
from alignbench.models import (
    build_model,
    build_tokenizer,
    load_pretrained,
    response_logprobs,
    save_pretrained,
)
from alignbench.task import Task

log = logging.getLogger(__name__)

#: Bump when the stage's training code changes what it produces, so old caches are not reused.
SFT_STAGE_VERSION = 2


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


def sft_loss(model: PreTrainedModel, batch: Any) -> torch.Tensor:
    """Token-mean negative log-likelihood of the batch's responses (the SFT objective)."""
    logprobs = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    return -ops.masked_mean(logprobs, batch.response_mask)


def model_source(name_or_path: str) -> str:
    """Where ``model.name_or_path`` is read from: a local folder (see input_path) or a hub id."""
    local = provenance.input_path(name_or_path)
    return str(local) if local.is_dir() else name_or_path


def base_model(cfg: DictConfig, task: Task) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The untrained stage-1 model: built from ``cfg.model`` or loaded from ``name_or_path``."""
    if cfg.model.name_or_path:
        return load_pretrained(model_source(cfg.model.name_or_path), cfg.model.chat_template)
    # A conversation task gets role tokens and a chat template (alignbench.models.CHAT_TEMPLATE).
    tokenizer = build_tokenizer(task.vocabulary(), chat=task.multi_turn)
    return build_model(to_object(cfg.model), tokenizer), tokenizer


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    cfg: SFTStageConfig,
) -> dict[str, float]:
    """Fine-tune ``model`` on demonstration rows (``prompt``, ``response``); returns stats."""
    if not rows:
        raise DataError("the task's sft split is empty — nothing to fine-tune on")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    model.train()
    losses: list[float] = []
    for _ in range(cfg.epochs):
        order = rng.permutation(len(rows))
        for start in range(0, len(rows), cfg.batch_size):
            chunk = [rows[i] for i in order[start : start + cfg.batch_size]]
            # A row's response, or its whole conversation (loss on the assistant turns only).
            batch = demonstration_batch(tokenizer, chunk)
            # Ctrl-C / SIGTERM: stop between batches; the stage's folder appears only when
            # complete, so nothing half-trained is ever cached.
            signals.check("during stage 1 (SFT): nothing was cached — run the command again")
            loss = sft_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    model.eval()
    tail = losses[-steps_per_epoch:]
    return {"final_loss": sum(tail) / len(tail), "steps": float(total)}


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


def model_files(name_or_path: str) -> dict[str, str]:
    """Contents (sha256 per file) of a local model folder; empty for a hub id or no model."""
    if not name_or_path:
        return {}
    local = provenance.input_path(name_or_path)
    return provenance.folder_digest(local) if local.is_dir() else {}


def sft_stage(cfg: DictConfig, task: Task) -> tuple[Path, dict[str, Any]]:
    """Return the folder of the stage-1 SFT model, training it unless the cache already holds it."""
    plugins = {"task": task}
    key = config_hash(
        # LoRA starts after stage 1 (full fine-tuning): it does not change the SFT model.
        {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "lora"},
        cfg.task,
        cfg.stage.sft,
        SFT_STAGE_VERSION,
        model_files(cfg.model.name_or_path),
        provenance.key_parts(plugins),
        provenance.STAGE_THREADS,
    )

    def build(folder: Path) -> dict[str, Any]:
        # The initial weights come from stage.sft.seed, not from the state the caller left the
        # global RNG in (the job seed of whichever job built the stage first; random in a
        # process that never seeded torch); the caller's RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.stage.sft.seed)
            model, tokenizer = base_model(cfg, task)
            flops = FlopCounter()
            flops.track(model, "sft")
            rows = task.splits["sft"].to_list()
            stats = train_sft(model, tokenizer, rows, to_object(cfg.stage.sft))
            flops.close()
        save_pretrained(model, tokenizer, folder)
        parameters = sum(p.numel() for p in model.parameters())
        return {"flops": flops.total, "parameters": parameters, **stats}

    return cached_stage(
        cfg.cache_dir, "sft", key, build, plugins=plugins, rebuild=cfg.cache_rebuild
    )
