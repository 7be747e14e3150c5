"""Active selection is charged: the uncertainty probe's training and scoring and diversity's
embeddings cost FLOPs (an online round's in the job's budget, stage 2's in its record), counted
here independently from parameter and token counts (2N per token forward, 4N backward)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import alignbench.rm.selection as selection
from alignbench.budget import FlopCounter
from alignbench.config import ModelConfig, RMStageConfig, SamplingConfig, Selection
from alignbench.models import ScalarHeadModel, build_model, build_tokenizer, freeze
from alignbench.registry import build_registry
from alignbench.rm.groups import group_batch
from alignbench.rm.selection import candidate_groups, label_groups
from alignbench.rm.stage import flops_key, request_feedback
from alignbench_plugins.facts import FactsConfig, FactsTask
from alignbench_plugins.feedback import SimulatedAnnotators, SimulatedConfig
from tests.conftest import compose

LABELS = 8
RM_CFG = RMStageConfig(epochs=2, batch_size=16)  # one batch per epoch: its padding is known


@pytest.fixture(scope="module")
def world():
    """A facts task, a tiny policy and a frozen reward network made from it."""
    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    tokenizer = build_tokenizer(task.vocabulary())
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    policy = build_model(config, tokenizer)
    network = freeze(ScalarHeadModel(copy.deepcopy(policy)))
    return task, tokenizer, policy, network


def _feedback(selection_name: str) -> SimulatedConfig:
    # pool_factor=1: every selection samples the same pool, so only the selection's passes differ.
    return SimulatedConfig(
        name="simulated",
        k=3,
        labels=LABELS,
        selection=Selection(selection_name),
        pool_factor=1,
        sampling=SamplingConfig(max_new_tokens=3),
    )


def _matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that multiply: all but the token embedding (a lookup)."""
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


def _tokens(tokenizer, groups) -> int:
    """Positions of the groups collated as one padded batch (what a forward processes)."""
    return group_batch(tokenizer, groups)[0].input_ids.numel()


def _online_round(world, selection_name: str) -> tuple[FlopCounter, list]:
    """One online round's request with the job's counter (policy and network tracked)."""
    task, tokenizer, policy, network = world
    flops = FlopCounter()
    flops.track(policy, "policy")
    flops.track(network, "reward_model")
    fresh = request_feedback(
        network,
        policy,
        tokenizer,
        task,
        SimulatedAnnotators(_feedback(selection_name), task),
        _feedback(selection_name),
        RM_CFG,
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
        flops,
    )
    flops.close()
    return flops, fresh


def _pool(world) -> list:
    """The candidate pool every selection sees (the same streams as the round's)."""
    task, tokenizer, policy, _ = world
    fb = _feedback("random")
    return candidate_groups(
        policy, tokenizer, task, fb, np.random.default_rng(0), torch.Generator().manual_seed(0)
    )


def test_online_uncertainty_probe_is_charged_exactly(world) -> None:
    """The probe (a copy of the network) trains on a quarter of the labels and scores the rest:
    the round charges that much more than random selection, to ``reward_model``. Before the
    fix the copy's passes went uncharged (the same FLOPs as random)."""
    _, tokenizer, _, network = world
    random, _ = _online_round(world, "random")
    uncertainty, fresh = _online_round(world, "uncertainty")
    assert len(fresh) == LABELS
    pool = _pool(world)
    seed_count = max(2, LABELS // 4)
    n = _matmul_parameters(network)
    epochs = max(1, RM_CFG.epochs // 2)  # the probe's epochs
    probe = epochs * 6 * n * _tokens(tokenizer, pool[:seed_count])  # forward 2N + backward 4N
    probe += 2 * n * _tokens(tokenizer, pool[seed_count:])  # scoring the rest: forward only
    assert uncertainty.total - random.total == probe
    assert uncertainty.by_model["policy"] == random.by_model["policy"]  # the same sampling
    assert uncertainty.by_model["reward_model"] - random.by_model["reward_model"] == probe


def test_online_diversity_embeddings_are_charged_exactly(world) -> None:
    """Diversity embeds every pool group with the trunk alone (one group per forward): 2N per
    position, N the trunk's multiplying parameters (no head)."""
    _, tokenizer, _, network = world
    random, _ = _online_round(world, "random")
    diversity, _ = _online_round(world, "diversity")
    n = _matmul_parameters(network.trunk)
    expected = sum(2 * n * _tokens(tokenizer, [g]) for g in _pool(world))
    assert diversity.total - random.total == expected
    assert diversity.by_model["reward_model"] - random.by_model["reward_model"] == expected


def test_random_selection_runs_no_model_and_without_a_counter_nothing_changes(world) -> None:
    """Random selection charges sampling alone; the groups chosen do not depend on whether a
    counter is given (charging changes FLOPs, never what is labelled)."""
    task, tokenizer, policy, network = world
    random, fresh = _online_round(world, "random")
    assert random.by_model["reward_model"] == 0.0
    for name in ("random", "uncertainty", "diversity"):
        charged = _online_round(world, name)[1]
        uncharged = request_feedback(
            network,
            policy,
            tokenizer,
            task,
            SimulatedAnnotators(_feedback(name), task),
            _feedback(name),
            RM_CFG,
            np.random.default_rng(0),
            torch.Generator().manual_seed(0),
        )
        assert [g.responses for g in charged] == [g.responses for g in uncharged]
        assert [g.preference for g in charged] == [g.preference for g in uncharged]


def test_stage_two_diversity_embeddings_are_charged(world) -> None:
    """Stage 2's own selection: a fresh model's trunk embeds the pool, charged to the stage's
    counter (its recorded ``flops``), which is why a diversity stage's key changed."""
    task, tokenizer, _, network = world
    pool = _pool(world)
    flops = FlopCounter()
    fb = _feedback("diversity")
    label_groups(
        pool,
        SimulatedAnnotators(fb, task),
        fb,
        RM_CFG,
        lambda: copy.deepcopy(network),
        tokenizer,
        np.random.default_rng(0),
        flops,
    )
    n = _matmul_parameters(network.trunk)
    assert flops.total == sum(2 * n * _tokens(tokenizer, [g]) for g in pool)
    # Only a diversity stage's record changed: only its key gains a part (read from the
    # feedback config as reward_model_stage reads it).
    for name, extra in (("random", False), ("uncertainty", False), ("diversity", True)):
        cfg = compose(["reward=rm", f"feedback.selection={name}"], build_registry())
        feedback = OmegaConf.to_container(cfg.feedback, resolve=True, enum_to_str=True)
        assert bool(flops_key(feedback)) is extra


RM = ["reward=rm", "feedback.labels=40", "stage.rm.epochs=3", "feedback.k=3", "stage.sft.epochs=15"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["uncertainty", "diversity"])
def test_a_jobs_online_round_charges_its_selection(
    tiny_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """In a job, the online round's selection runs under the run's counter and what it runs
    is part of the step's charge: budget/flops is the sum of the per-model FLOPs."""
    calls: list[tuple[bool, float]] = []
    label = selection.label_groups

    def recording(*args, **kwargs):
        flops = args[7] if len(args) > 7 else kwargs.get("flops")
        before = flops.total if flops is not None else 0.0
        out = label(*args, **kwargs)
        calls.append((flops is not None, (flops.total if flops is not None else 0.0) - before))
        return out

    monkeypatch.setattr(selection, "label_groups", recording)
    summary = tiny_job(
        *RM,
        f"feedback.selection={name}",
        "feedback.pool_factor=2",
        "feedback.rounds=1",
        "budget.amount=3",
        f"cache_dir={tmp_path / 'cache'}",
    )
    # Stage 2's selection, then the online round's: both charged to a counter.
    assert len(calls) == 2 and all(tracked and spent > 0 for tracked, spent in calls)
    assert summary["budget/flops"] == pytest.approx(sum(summary["flops_by_model"].values()))
