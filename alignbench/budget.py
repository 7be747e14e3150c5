"""Compute budgets: what a job has spent, in every unit, and the FLOP counter behind it.

FLOPs follow the usual dense-transformer count (Kaplan et al. 2020): a forward pass costs
``2 * N`` per token processed and a backward pass ``4 * N``, where N counts the parameters that do
matrix multiplies (the input embedding is a lookup and is left out). The output projection is
charged only on the positions whose logits are computed, so a prompt processed for its KV cache
pays no vocabulary projection. Attention's own ``O(T^2)`` term is ignored, as in that count.
Every model an algorithm runs is tracked, generation included, so PPO's four models are charged
against RRHF's one.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from alignbench.config import BudgetConfig, BudgetKind
from alignbench.errors import ConfigError

UNITS = tuple(kind.value for kind in BudgetKind)


def _matmul_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(body parameters, output-head parameters), both excluding the embedding lookups."""
    if hasattr(model, "matmul_parameters"):  # a view of another model's weights (LoRA reference)
        return model.matmul_parameters()
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(p) for p in embedding.parameters()} if embedding is not None else set()
    # Other embedding tables (GPT-2's learned positions) are lookups too: no multiplies.
    skip |= {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding) and m is not head
        for p in m.parameters()
    }
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    body = sum(p.numel() for p in model.parameters() if id(p) not in skip | head_ids)
    # A tied head shares the embedding matrix; it still multiplies, so count it for the head.
    head_n = sum(p.numel() for p in head.parameters()) if head is not None else 0
    return body, head_n


def checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers of ``model`` that gradient checkpointing recomputes in its backward pass (on,
    in training mode); none otherwise."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    if not flagged:
        return []
    # Only the repeated layers are checkpointed (a model-level flag only switches them).
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in flagged if isinstance(m, GradientCheckpointingLayer) and m.training]


class FlopCounter:
    """Counts forward and backward FLOPs of every model it tracks, through module hooks."""

    def __init__(self) -> None:
        self.total = 0.0
        self.by_model: dict[str, float] = {}
        self._paused = 0
        self._handles: list[Any] = []
        # What each tracked model is charged as ``(name, body, head)``: for charge_forward.
        self._tracked: weakref.WeakKeyDictionary[torch.nn.Module, list[tuple[str, int, int]]] = (
            weakref.WeakKeyDictionary()
        )
        self._tallies: list[dict[str, float]] = []
        # Models whose checkpointed layers' recomputation is being counted.
        self._recounted: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()

    def track(self, model: torch.nn.Module, name: str) -> torch.nn.Module:
        """Charge every forward (and the backward through its output) of ``model`` to ``name``."""
        body, head = _matmul_parameters(model)
        self.by_model.setdefault(name, 0.0)
        self._tracked.setdefault(model, []).append((name, body, head))
        tracked = weakref.ref(model)

        def on_forward(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            # copy.deepcopy(model) copies this hook too; the copy is charged only where it is
            # tracked itself (else a critic copied from the reward model is charged twice).
            if self._paused or module is not tracked():
                return
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            tokens = int(input_ids.numel()) if input_ids is not None else 0
            # The head runs on the positions whose output exists: LM logits or a scalar head's.
            out = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
            projected = int(out.shape[0] * out.shape[1]) if out is not None else tokens
            forward = 2.0 * (body * tokens + head * projected)
            self._charge(name, forward)
            if out is not None and out.requires_grad:
                # Charged when the gradient reaches the output: only backward passes that happen.
                out.register_hook(lambda grad: self._charge(name, 2.0 * forward) or grad)
                if module not in self._recounted and checkpointed_layers(module):
                    self._count_recomputation(module, name)

        self._handles.append(model.register_forward_hook(on_forward, with_kwargs=True))
        return model

    def _count_recomputation(self, model: torch.nn.Module, name: str) -> None:
        """Charge to ``name`` the matrix products that gradient checkpointing runs again in the
        backward pass: ``2 x in x out`` per token for each linear map of a checkpointed layer that
        is recomputed (torch stops recomputing once the activations the backward needs are back,
        so a layer's last projection is not run again, and not charged)."""
        self._recounted.add(model)

        def on_linear(linear: torch.nn.Module, args: Any, output: Any) -> None:
            # Inside a backward pass a layer's forward runs only as checkpointing's recompute.
            if self._paused or torch._C._current_graph_task_id() == -1:
                return
            rows = output.numel() // linear.out_features
            self._charge(name, 2.0 * linear.weight.numel() * rows)

        for layer in checkpointed_layers(model):
            for linear in layer.modules():
                if isinstance(linear, torch.nn.Linear):
                    self._handles.append(linear.register_forward_hook(on_linear))

    def charge(self, name: str, flops: float) -> None:
        """Charge ``flops`` to ``name`` as if a tracked model had run them (e.g. what another
        process spent on this job's behalf); into the innermost :meth:`measured` tally if any."""
        if not self._paused:
            self._charge(name, flops)

    def charge_forward(self, model: torch.nn.Module, tokens: int, projected: int) -> None:
        """Charge a forward of ``model`` over ``tokens`` positions, ``projected`` of them through
        the output head, exactly as its forward hook would (to every name it is tracked under;
        nothing if untracked): what an external engine ran on the model's behalf."""
        for name, body, head in self._tracked.get(model, ()):
            self.charge(name, 2.0 * (body * tokens + head * projected))

    def _charge(self, name: str, flops: float) -> None:
        if self._tallies:  # measured, not spent: see measured()
            self._tallies[-1][name] = self._tallies[-1].get(name, 0.0) + flops
            return
        self.total += flops
        self.by_model[name] = self.by_model.get(name, 0.0) + flops

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Do not charge what runs inside (evaluation is not part of the training budget)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    @contextlib.contextmanager
    def measured(self) -> Iterator[dict[str, float]]:
        """Count what runs inside into the yielded ``{model: flops}`` instead of the budget (the
        inference cost of answering an evaluation: reported, never spent; paused still wins)."""
        tally: dict[str, float] = {}
        self._tallies.append(tally)
        try:
            yield tally
        finally:
            self._tallies.pop()

    def close(self) -> None:
        """Remove the hooks from every tracked model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._tracked.clear()


@dataclass
class Budget:
    """What a job may spend (``kind``, ``amount``) and what it has spent so far, in every unit."""

    kind: str
    amount: float
    spent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(UNITS, 0.0))

    @classmethod
    def from_config(cls, cfg: BudgetConfig) -> Budget:
        """A budget from ``budget.kind`` / ``budget.amount``, refusing a non-positive amount."""
        kind = cfg.kind.value if isinstance(cfg.kind, BudgetKind) else str(cfg.kind)
        if kind not in UNITS:
            raise ConfigError(f"budget.kind={kind!r} — use one of {', '.join(UNITS)}")
        if not cfg.amount > 0:
            raise ConfigError(f"budget.amount={cfg.amount} — a budget must be positive")
        return cls(kind=kind, amount=float(cfg.amount))

    def charge(self, **units: float) -> None:
        """Add what a step spent (``steps=1, samples=..., tokens=..., flops=..., seconds=...``)."""
        for unit, value in units.items():
            self.spent[unit] += float(value)

    @property
    def exhausted(self) -> bool:
        """Whether the budget's own unit has reached its amount."""
        return self.spent[self.kind] >= self.amount

    @property
    def fraction(self) -> float:
        """Share of the budget spent, in [0, 1]."""
        return min(1.0, self.spent[self.kind] / self.amount)

    def metrics(self) -> dict[str, float]:
        """The ``budget/<unit>`` counters every logged record carries."""
        return {f"budget/{unit}": value for unit, value in self.spent.items()}


class StepTimer:
    """Wall-clock seconds of the training work only (evaluation and logging excluded)."""

    def __init__(self) -> None:
        self._start = 0.0

    def __enter__(self) -> StepTimer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads when asked (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
