"""Stage 1 (SFT) of the pipeline, cached on disk (:mod:`alignbench.cache`) by a hash of everything
that determines it."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alignbench import ops, provenance, signals
from alignbench.batch import demonstration_batch
from alignbench.budget import FlopCounter
from alignbench.cache import _move_aside as _move_aside  # re-exported: they lived here
from alignbench.cache import cached_stage, config_hash
from alignbench.cache import file_lock as file_lock
from alignbench.cache import torch_threads as torch_threads
from alignbench.config import SFTStageConfig, omit_unset_task_keys, to_object
from alignbench.errors import DataError
from alignbench.hardware import (
    autocast,
    grad_scaler,
    model_device,
    scaled_step,
    stage_hardware,
    stage_key,
    stage_record,
)
from alignbench.models import (
    build_model,
    build_tokenizer,
    load_pretrained,
    response_logprobs,
    save_pretrained,
)
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

#: Bump when the stage's training code changes what it produces, so old caches are not reused.
SFT_STAGE_VERSION = 2


def sft_loss(model: PreTrainedModel, batch: Any) -> torch.Tensor:
    """Token-mean negative log-likelihood of the batch's responses (the SFT objective)."""
    logprobs = response_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_length)
    return ops.demonstration_nll(logprobs, batch.response_mask)


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
    precision: str = "fp32",
) -> dict[str, float]:
    """Fine-tune ``model`` on demonstration rows (``prompt``, ``response``); returns stats.

    Runs on the model's device, under autocast to ``precision`` (weights stay fp32); fp16 adds
    a loss scaler, and the stats then count the overflow steps it skipped (``skipped_steps``)."""
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
    device = model_device(model)
    scaler = grad_scaler(device, precision)
    parameters = list(model.parameters())
    skipped = 0
    model.train()
    losses: list[float] = []
    for _ in range(cfg.epochs):
        order = rng.permutation(len(rows))
        for start in range(0, len(rows), cfg.batch_size):
            chunk = [rows[i] for i in order[start : start + cfg.batch_size]]
            # A row's response, or its whole conversation (loss on the assistant turns only).
            batch = demonstration_batch(tokenizer, chunk).to(device)  # a no-op on the CPU
            # Ctrl-C / SIGTERM: stop between batches; the stage's folder appears only when
            # complete, so nothing half-trained is ever cached.
            signals.check("during stage 1 (SFT): nothing was cached — run the command again")
            with autocast(device, precision):
                loss = sft_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            if scaled_step(loss, optimizer, parameters, 1.0, scaler):
                schedule.step()
            else:  # fp16 overflow: no step taken, so the schedule waits too
                skipped += 1
            losses.append(loss.item())
    model.eval()
    tail = losses[-steps_per_epoch:]
    stats = {"final_loss": sum(tail) / len(tail), "steps": float(total)}
    if scaler is not None:
        stats["skipped_steps"] = float(skipped)
    return stats


def model_files(name_or_path: str) -> dict[str, str]:
    """Contents (sha256 per file) of a local model folder; empty for a hub id or no model."""
    if not name_or_path:
        return {}
    local = provenance.input_path(name_or_path)
    return provenance.folder_digest(local) if local.is_dir() else {}


def _fork_rng(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Fork the CPU generator and, on an accelerator, the device's own (training there draws
    from it); only this process's GPU, so several ranks on one node do not fork each other's."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index], device_type="cuda")
    return torch.random.fork_rng(device_type=device.type)


def sft_stage(
    cfg: DictConfig, task: Task, device: torch.device | None = None
) -> tuple[Path, dict[str, Any]]:
    """Return the folder of the stage-1 SFT model, training it unless the cache already holds it.

    It trains on ``device`` (the job's, as :func:`~alignbench.hardware.check_hardware` resolved
    it; else ``cfg.device``'s) in ``cfg.precision``, and is cached as fp32 on the CPU."""
    device, precision = stage_hardware(cfg, device)
    plugins = {"task": task}
    key = config_hash(
        # LoRA starts after stage 1 (full fine-tuning), and gradient checkpointing and compiling
        # apply to RL's models: none of them changes the SFT model.
        {
            k: v
            for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
            if k not in ("lora", "gradient_checkpointing", "compile")
        },
        # New task keys while unset leave the key of an SFT model trained before they existed.
        omit_unset_task_keys(OmegaConf.to_container(cfg.task, resolve=True, enum_to_str=True)),
        cfg.stage.sft,
        SFT_STAGE_VERSION,
        model_files(cfg.model.name_or_path),
        provenance.key_parts(plugins),
        provenance.STAGE_THREADS,
        # Built on a GPU or in bf16/fp16 it is another model (nothing added on the CPU in fp32).
        *stage_key(device, precision),
    )

    def build(folder: Path) -> dict[str, Any]:
        # The initial weights come from stage.sft.seed, not from the state the caller left the
        # global RNG in (the job seed of whichever job built the stage first; random in a
        # process that never seeded torch); the caller's RNG state is left as it was.
        with _fork_rng(device):
            torch.manual_seed(cfg.stage.sft.seed)
            model, tokenizer = base_model(cfg, task)
            # Initialised on the CPU (the same weights on every device), trained on the device.
            model.to(device)
            flops = FlopCounter()
            flops.track(model, "sft")
            rows = task.splits["sft"].to_list()
            stats = train_sft(model, tokenizer, rows, to_object(cfg.stage.sft), precision)
            flops.close()
        # fp32 master weights, saved from the CPU: the cache entry loads on any machine.
        save_pretrained(model.to("cpu"), tokenizer, folder)
        parameters = sum(p.numel() for p in model.parameters())
        return {
            "flops": flops.total,
            "parameters": parameters,
            **stats,
            **stage_record(device, precision),
        }

    return cached_stage(
        cfg.cache_dir, "sft", key, build, plugins=plugins, rebuild=cfg.cache_rebuild
    )
