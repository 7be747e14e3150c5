"""Switches that are off keep the fingerprints of older results: a job folder made before a key
existed is still recognised as the same config (resumed, or left alone when finished)."""

from __future__ import annotations

import pytest

from alignbench.checkpoint import config_fingerprint
from alignbench.jobdir import flat_config
from alignbench.registry import build_registry
from tests.conftest import compose

#: Default fingerprints, as of 353c824 (before that session's new keys: prune, placement,
#: model.gradient_checkpointing / compile, algo.lean_forward / fused_adamw). A new key that is
#: off by default must leave these alone (config.omit_off_switches); a deliberate change of a
#: default value changes them: update the pin and say so in the commit.
PINNED = {
    ("algo=best_of_n",): "0f81ab1f887a6bb2",
    ("algo=dpo",): "2070b44f93c425df",
    ("algo=grpo",): "287de60bdf93ea2d",
    ("algo=online_dpo",): "19d0121664e7e9b3",
    ("algo=ppo",): "4defd0cc56fa51fc",
    ("algo=reinforce_pp",): "44b167df50b9b479",
    ("algo=rft",): "a49b629649c8b4a2",
    ("algo=rloo",): "74045e46dd78bde1",
    ("algo=rrhf",): "d5f79c6acae67967",
    ("algo=sft",): "c49c878cc78c204a",
    ("algo=ppo", "reward=rm"): "2d306950b98cfc0a",
    ("algo=ppo", "precision=bf16"): "7a6c5a3c2743a836",
    ("algo=ppo", "model.lora.r=4"): "acc96c26a8cb01ec",
}


@pytest.mark.parametrize("overrides", list(PINNED), ids=" ".join)
def test_default_fingerprints_are_those_of_older_results(overrides: tuple[str, ...]) -> None:
    assert config_fingerprint(compose(list(overrides), build_registry())) == PINNED[overrides]


def test_ppo_speed_switches_are_recorded_only_when_on() -> None:
    """algo.lean_forward / algo.fused_adamw: off, not in the record; on, in the fingerprint."""
    registry = build_registry()
    default = compose(["algo=ppo"], registry)
    assert not {"algo.lean_forward", "algo.fused_adamw"} & set(flat_config(default))
    for switch in ("algo.lean_forward=true", "algo.fused_adamw=true"):
        on = compose(["algo=ppo", switch], registry)
        assert flat_config(on)[switch.split("=")[0]] is True
        assert config_fingerprint(on) != config_fingerprint(default)


def test_the_samplers_draw_is_recorded_only_when_not_the_default() -> None:
    """algo.sampling.draw / feedback.sampling.draw: multinomial (the default), not in the record;
    inverse_cdf (other tokens for a seed), in the record and the fingerprint."""
    registry = build_registry()
    default = compose(["algo=ppo", "reward=rm"], registry)
    assert not {"algo.sampling.draw", "feedback.sampling.draw"} & set(flat_config(default))
    for key in ("algo.sampling.draw", "feedback.sampling.draw"):
        on = compose(["algo=ppo", "reward=rm", f"{key}=inverse_cdf"], registry)
        assert flat_config(on)[key] == "inverse_cdf"
        assert config_fingerprint(on) != config_fingerprint(default)


def test_only_the_dataset_tasks_new_keys_are_left_out_while_unset() -> None:
    """task=dataset's conversation keys are left out of fingerprints and stage keys while unset;
    another task's fields of the same names (a plugin's) were always keyed and still are."""
    from alignbench.config import omit_unset_task_keys

    dataset = {"name": "dataset", "system_prompt": "", "columns": {"messages": None, "x": 1}}
    assert omit_unset_task_keys(dataset) == {"name": "dataset", "columns": {"x": 1}}
    other = {"name": "my_task", "system_prompt": "", "columns": {"messages": None}}
    assert omit_unset_task_keys(other) == other
