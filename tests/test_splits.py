"""Tune on dev, report on test: neither ever serves as an RL or reward-model prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alignbench.config import FeedbackConfig, ModelConfig, RMStageConfig
from alignbench.models import build_model, build_tokenizer
from alignbench.reward_model import collect_feedback
from alignbench_plugins.facts import FactsConfig, FactsTask
from alignbench_plugins.feedback import SimulatedAnnotators, SimulatedConfig


def test_reward_model_prompts_come_from_rl_never_dev_or_test(tmp_path: Path) -> None:
    """Every group collected for the reward model asks an RL prompt, none a dev/test question."""
    task = FactsTask(FactsConfig(name="facts", num_entities=40))
    tokenizer = build_tokenizer(task.vocabulary())
    model = build_model(
        ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), tokenizer
    )
    source = SimulatedAnnotators(SimulatedConfig(name="simulated"), task)
    # labels=1000 > the 80 RL prompts of this world: every RL prompt is asked, so a dev/test
    # prompt in the pool would be caught.
    groups = collect_feedback(
        model,
        tokenizer,
        task,
        source,
        FeedbackConfig(name="simulated", labels=1000, k=2),
        RMStageConfig(),
        None,
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
    )
    asked = {g.row["prompt"] for g in groups}
    rl = set(task.splits["rl"]["prompt"])
    held = set(task.splits["dev"]["prompt"]) | set(task.splits["test"]["prompt"])
    assert asked and asked <= rl and not asked & held
