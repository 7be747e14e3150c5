"""The :class:`Run`: everything a plugin's hooks receive about the job in progress."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import torch
from omegaconf import DictConfig, OmegaConf

from alignbench import distributed
from alignbench.batch import Batch, collate, demonstration_batch, join
from alignbench.budget import Budget, FlopCounter
from alignbench.config import LoraConfig
from alignbench.errors import NonFiniteError, PluginError
from alignbench.feedback import Group
from alignbench.hardware import autocast, model_device
from alignbench.lora import SharedBaseReference, is_lora
from alignbench.reward import Reward, checked_rewards, turn_rewards
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from alignbench.sampling import SamplingParams


@dataclass
class Run:
    """One job: its config, data, models, reward, budget and random state.

    ``policy`` is the model being trained (initialised from the stage-1 SFT model at
    ``sft_path``); ``config`` is the algorithm's own config dataclass instance; ``generator``
    drives all sampling, so the same seed gives the same rollouts.
    """

    cfg: DictConfig
    config: Any
    task: Task
    reward: Reward
    tokenizer: PreTrainedTokenizerBase
    policy: PreTrainedModel
    sft_path: Path
    budget: Budget
    flops: FlopCounter
    generator: torch.Generator
    output_dir: Path
    pm: pluggy.PluginManager
    step: int = 0
    #: The source hashes of the job's plugins (recorded in checkpoints and the summary).
    code: dict[str, str] = field(default_factory=dict)
    #: The job's fingerprint, taken when it started (its input files hashed then): what its
    #: checkpoints record, so a file edited mid-run cannot pass as the one it started on.
    fingerprint: str = ""
    #: ``{key: contents hash}`` of the files it reads (``model.name_or_path``, ``task.path``, ...)
    #: as the job started; checkpoints record them, so a refusal can name what changed.
    inputs: dict[str, str] = field(default_factory=dict)
    #: Loads stage 2's ranked groups by split (set by the core; see :meth:`ranked_groups`).
    groups_loader: Callable[[str], list[Group]] | None = None
    #: ``precision=``: fp32, or the autocast dtype of :meth:`autocast` (bf16, fp16).
    precision: str = "fp32"
    #: fp16's loss scaler (None otherwise): :meth:`backward` and :meth:`clip_and_step` use it.
    scaler: torch.amp.GradScaler | None = None
    #: Optimiser steps the loss scaler skipped because their gradients overflowed (fp16).
    skipped_steps: int = 0

    @property
    def seed(self) -> int:
        """The job's seed (``seed=``): what a plugin seeds its own random streams from (a plugin
        reads the typed values it needs from the Run, not the whole config ``cfg``)."""
        return int(self.cfg["seed"])

    @property
    def eval_batch_size(self) -> int:
        """How many evaluation questions are answered per batch (``eval.batch_size``)."""
        return int(self.cfg["eval"]["batch_size"])

    @property
    def lora(self) -> LoraConfig | None:
        """``model.lora``: the LoRA settings and which models train as adapters (``targets``);
        None in a config without it (a hand-built Run)."""
        node = (self.cfg.get("model") or {}).get("lora")
        return None if node is None else LoraConfig(**OmegaConf.to_container(node, resolve=True))

    @property
    def device(self) -> torch.device:
        """The device the policy runs on (``device=``); the core puts every model there."""
        return model_device(self.policy)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``precision=`` on the policy's device (fp32: a no-op); the core wraps the
        rollout, score and update hooks and evaluation in it, so a hook never needs to."""
        return autocast(self.device, self.precision)

    def ranked_groups(self, split: str = "train") -> list[Group]:
        """Stage 2's ranked groups from the ``feedback=`` source: ``train`` (what the reward
        model trains on) or ``heldout``; built (and cached) on first use, for any reward."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split={split!r} — use train or heldout")
        if self.groups_loader is None:
            raise PluginError("this run has no stage-2 feedback (it was not started by run_job)")
        return self.groups_loader(split)

    def check_finite(self, **values: torch.Tensor | None) -> None:
        """Raise NonFiniteError naming the first quantity holding a NaN or inf (call it before
        ``optimizer.step()``, so a bad batch never reaches the weights). With several processes
        every rank raises when any rank finds one, so none waits for the others forever."""
        names = list(values)
        bad = [
            i
            for i, value in enumerate(values.values())
            if value is not None and not bool(torch.isfinite(value).all())
        ]
        first = distributed.first_index(bad[0] if bad else len(names))
        if first < len(names):
            value = values[names[first]]
            shown = value.float().mean().item() if first in bad else "on another process"
            raise NonFiniteError(f"step {self.step + 1}: {names[first]} is not finite ({shown})")

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``; under fp16 the loss is scaled first, so that small gradients do
        not underflow (:meth:`clip_and_step` unscales them)."""
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def clip_and_step(
        self,
        steps: Mapping[str, tuple[torch.optim.Optimizer, Iterable[torch.Tensor]]],
        max_norm: float,
    ) -> dict[str, torch.Tensor]:
        """Clip each named ``(optimizer, parameters)``'s gradients to ``max_norm``, check the norms
        are finite (:meth:`check_finite`, the names are the metrics'), then step every optimiser;
        returns the norms (before clipping) by name.

        Under fp16 the gradients are unscaled before clipping, and an overflow (an inf or NaN
        norm) is no error: the scaler skips that optimiser's step and lowers its scale, the norm
        reads 0 (no gradient was applied), and ``skipped_steps`` counts it (reported as
        ``precision/skipped_steps``)."""
        scaler = self.scaler
        norms = {}
        for name, (optimizer, parameters) in steps.items():
            if scaler is not None:
                scaler.unscale_(optimizer)
            norms[name] = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        if scaler is None:
            self.check_finite(**norms)
            for optimizer, _ in steps.values():
                optimizer.step()
            return norms
        finite = {name: bool(torch.isfinite(norm)) for name, norm in norms.items()}
        if not all(finite.values()):
            self.skipped_steps += 1
        for optimizer, _ in steps.values():
            scaler.step(optimizer)  # skipped when its gradients held an inf or NaN
        scaler.update()
        # A skipped step applied no gradient: its norm reads 0 (an inf would poison the step's
        # means); precision/skipped_steps says how often.
        return {
            name: norm if finite[name] else torch.zeros_like(norm) for name, norm in norms.items()
        }

    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor], max_norm: float
    ) -> torch.Tensor:
        """:meth:`clip_and_step` of the policy's optimiser alone: its gradient norm
        (``policy/grad_norm``)."""
        return self.clip_and_step({"policy/grad_norm": (optimizer, parameters)}, max_norm)[
            "policy/grad_norm"
        ]

    def precision_metrics(self) -> dict[str, float]:
        """fp16's ``precision/loss_scale`` and ``precision/skipped_steps`` (nothing otherwise)."""
        if self.scaler is None:
            return {}
        return {
            "precision/loss_scale": float(self.scaler.get_scale()),
            "precision/skipped_steps": float(self.skipped_steps),
        }

    def rewards(self, batch: Batch) -> torch.Tensor:
        """The configured reward of every sequence of ``batch``, checked to be shape ``[N]``, on
        the batch's device (a rule reward computes on the CPU).

        For conversations it is each dialogue's return ``sum_t turn_gamma**t * r_t``; the
        per-turn rewards ``r_t`` go to ``batch.turns.rewards`` (``[N, T]``) and the discount
        to ``batch.turns.gamma``, for an algorithm that credits each turn (PPO).
        """
        device = batch.input_ids.device
        if batch.turns is not None:
            per_turn, returns = turn_rewards(self.reward, batch.rows, batch.turns.dialogues)
            batch.turns.rewards = per_turn.to(device)
            batch.turns.gamma = self.reward.turn_gamma
            return returns.to(device)
        config = getattr(self.reward, "config", None)
        name = str(getattr(config, "name", type(self.reward).__name__))
        rewards = checked_rewards(self.reward.score_batch(batch), batch.num_sequences, name)
        return rewards.to(device)

    def track(self, model: PreTrainedModel, name: str) -> PreTrainedModel:
        """Charge ``model``'s forward and backward passes to the budget under ``name``."""
        return self.flops.track(model, name)

    def load_sft_model(self, name: str = "reference") -> PreTrainedModel:
        """The frozen stage-1 SFT model on the policy's device, tracked for FLOPs (reference,
        sampler): a fresh copy, or with LoRA (``model.lora.r > 0``) the policy's own base with
        its adapters off (:class:`~alignbench.lora.SharedBaseReference`: no second backbone)."""
        from alignbench.models import freeze, load_pretrained  # model loading: only when used

        if is_lora(self.policy):
            return self.track(SharedBaseReference(self.policy), name)
        model, _ = load_pretrained(self.sft_path)
        return self.track(freeze(model).to(self.device), name)

    def sample(
        self,
        model: PreTrainedModel,
        prompts: list[dict[str, Any]],
        num_samples: int,
        params: SamplingParams,
        source: str = "policy",
    ) -> Batch:
        """Sample ``num_samples`` responses per prompt from ``model`` with the run's generator:
        on a multi-turn task, whole conversations with the task's user (:func:`converse`);
        through an external inference engine where a plugin implements ``alignbench_generate``
        (:meth:`_engine`)."""
        # The sampler imports transformers' modelling code (seconds): only when sampling.
        from alignbench.sampling import converse, sample

        engine = self._engine(model, prompts, num_samples, params, source)
        # A hand-built Run (benchmarks) may have no task: single-turn.
        if getattr(self.task, "multi_turn", False):
            if engine is not None:
                from alignbench.registry import engine_plugins

                raise PluginError(
                    f"alignbench_generate of {', '.join(engine_plugins(self.pm))} (an external "
                    "inference engine) answers single turns; this task is multi-turn — remove "
                    "the engine plugin or use a single-turn task"
                )
            return converse(
                model,
                self.tokenizer,
                self.task,
                prompts,
                num_samples,
                params,
                self.generator,
                source=source,
            )
        return sample(
            model,
            self.tokenizer,
            prompts,
            num_samples,
            params,
            self.generator,
            source=source,
            engine=engine,
        )

    def _engine(
        self,
        model: PreTrainedModel,
        prompts: list[dict[str, Any]],
        num_samples: int,
        params: SamplingParams,
        source: str,
    ) -> Callable[[list[list[int]]], Batch | None] | None:
        """The sampler's ``engine`` when a plugin implements ``alignbench_generate`` (None: the
        built-in sampler alone, as if the hook did not exist). Its Batch is charged to the
        budget as the built-in sampler's passes over the same tokens, whatever the engine ran."""
        from alignbench.registry import engine_plugins

        hook = getattr(self.pm.hook, "alignbench_generate", None)
        names = engine_plugins(self.pm)
        if not names:
            return None
        from alignbench.sampling import engine_batch, sampler_forwards

        def engine(prompt_ids: list[list[int]]) -> Batch | None:
            # Paused: an engine that runs a tracked model itself is not charged for its passes.
            with self.flops.paused():
                responses = hook(
                    run=self,
                    model=model,
                    prompt_ids=[list(ids) for ids in prompt_ids],
                    num_samples=num_samples,
                    params=params,
                    source=source,
                )
                if responses is None:
                    return None
                batch = engine_batch(
                    model,
                    self.tokenizer,
                    prompts,
                    prompt_ids,
                    responses,
                    num_samples,
                    params,
                    source,
                    engine=", ".join(names),
                )
            shape = batch.num_sequences, batch.prompt_length, batch.response_mask.shape[1]
            for tokens, projected in sampler_forwards(*shape):
                self.flops.charge_forward(model, tokens, projected)
            return batch

        return engine

    def join(self, prompts: list[dict[str, Any]], parts: list[Batch]) -> Batch:
        """One prompt-major Batch of the candidates of several Batches over the same prompts
        (:func:`~alignbench.batch.join`), on the policy's device."""
        return join(self.tokenizer, prompts, [part.to("cpu") for part in parts]).to(self.device)

    def demonstrations(self, rows: list[dict[str, Any]], source: str = "demonstration") -> Batch:
        """The task's demonstrations of ``rows`` (K=1) on the policy's device: each row's
        ``response``, or its whole conversation (``messages``) on a multi-turn task."""
        return demonstration_batch(self.tokenizer, rows, source).to(self.device)

    def collate(
        self,
        prompts: list[dict[str, Any]],
        response_ids: list[list[int]],
        group_size: int,
        sources: list[str],
        **turns: Any,
    ) -> Batch:
        """A Batch from prompt rows and K response-token lists per prompt (prompt-major), on the
        policy's device; conversations add :func:`~alignbench.batch.collate`'s
        ``response_masks``, ``turn_index``, ``dialogues`` (and ``logprobs``)."""
        batch = collate(self.tokenizer, prompts, response_ids, group_size, sources, **turns)
        return batch.to(self.device)
