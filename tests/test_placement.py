"""placement.reference / reward / critic: a placed model gets its inputs on its own device and
gives its outputs back on the job's; a device that is not there, a model the job does not have,
or a LoRA reference is one line; placed on the job's own device, a run is unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from alignbench.app import main, run_job
from alignbench.config import to_object
from alignbench.errors import ConfigError, PluginError
from alignbench.job import Job, check_placed_models
from alignbench.placement import (
    ALGORITHM_ROLES,
    REWARD_ROLES,
    check_placed_roles,
    check_placement,
    declared_roles,
    move,
    place_model,
    placed_models,
)
from alignbench.registry import Registry, build_registry
from alignbench.reward import Reward
from tests.conftest import TINY, compose


class Spy(torch.nn.Module):
    """A linear layer that records the device of what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.seen: list[torch.device] = []

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        self.seen += [x.device] + ([mask.device] if mask is not None else [])
        return CausalLMOutputWithPast(logits=self.linear(x), hidden_states=(x, x))


def test_move_reaches_every_tensor_of_an_output() -> None:
    out = CausalLMOutputWithPast(logits=torch.ones(2), hidden_states=(torch.ones(1),))
    moved = move({"a": [torch.ones(1), 3], "out": out, "none": None}, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1] == 3
    assert moved["out"].logits.device.type == "meta"
    assert moved["out"]["logits"].device.type == "meta"  # attribute and key agree
    assert moved["out"].hidden_states[0].device.type == "meta"
    assert moved["none"] is None


def test_placed_model_gets_its_inputs_on_its_device() -> None:
    """The meta device stands in for an accelerator: the weights and every input go there."""
    spy = Spy()
    place_model(spy, torch.device("meta"), home=torch.device("meta"))
    assert spy.linear.weight.device.type == "meta"
    spy(torch.ones(4, 3), mask=torch.ones(4, 3))  # given on the CPU, positional and keyword
    assert [d.type for d in spy.seen] == ["meta", "meta"]


def test_placed_model_gives_its_outputs_back_home() -> None:
    spy = Spy()
    place_model(spy, torch.device("cpu"), home=torch.device("meta"))
    out = spy(torch.ones(4, 3))
    assert spy.seen[0].type == "cpu"  # computed on its own device
    assert out.logits.device.type == "meta" and out.hidden_states[1].device.type == "meta"


def test_gradients_flow_back_through_the_boundary() -> None:
    """A placed critic trains: the move is differentiable (here cpu -> cpu, the same path)."""
    spy = Spy()
    place_model(spy, torch.device("cpu"), home=torch.device("cpu"))
    spy(torch.ones(4, 3)).logits.sum().backward()
    assert spy.linear.weight.grad is not None and spy.linear.weight.grad.abs().sum() > 0


def test_bad_placements_are_one_line() -> None:
    assert check_placement({"reference": "", "reward": "", "critic": ""}) == {}
    assert check_placement({"reference": "cpu"}) == {"reference": torch.device("cpu")}
    with pytest.raises(ConfigError, match=r"placement.reference='tpu' is not a device"):
        check_placement({"reference": "tpu"})
    with pytest.raises(ConfigError, match=r"placement.critic='cuda:7': this machine has"):
        check_placement({"critic": "cuda:7"})
    with pytest.raises(ConfigError, match=r"placement.policy is not a model"):
        check_placement({"policy": "cpu"})
    with pytest.raises(ConfigError, match=r"placement.reference with model.lora.r > 0"):
        check_placement({"reference": "cpu"}, lora=True)


def test_unknown_device_stops_the_command_before_anything(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["placement.reference=tpu0", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "placement.reference='tpu0' is not a device" in err[0]
    assert list(tmp_path.iterdir()) == []  # no folder, no cache, nothing trained


def _steps(folder: Path) -> list[str]:
    """The step and evaluation lines of a job, without its wall-clock measurements."""
    lines = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        timeless = {
            k: v
            for k, v in record.items()
            if not k.startswith(("time/", "throughput/")) and "seconds" not in k
        }
        lines.append(json.dumps(timeless, sort_keys=True))
    return lines


@pytest.mark.slow
def test_placement_on_the_jobs_device_changes_nothing(tiny_job, tmp_path: Path) -> None:
    """PPO with its reference, critic and reward model placed on the CPU (the job's device: the
    hooks run, nothing moves) gives the same numbers as without placement."""
    common = ("algo=ppo", "algo.samples_per_prompt=2", "reward=rm", "feedback.labels=16")
    tiny_job(*common, out="plain")
    placed = (f"placement.{role}=cpu" for role in ("reference", "critic", "reward"))
    tiny_job(*common, *placed, out="placed")
    assert _steps(tmp_path / "placed") == _steps(tmp_path / "plain")


#: A third-party algorithm that declares no ``model_roles``: its placements are checked when it is
#: built (after stage 1), never refused up front.
UNDECLARED = """
from dataclasses import dataclass

import alignbench
from alignbench import AlgorithmConfig


@dataclass
class UndeclaredConfig(AlgorithmConfig):
    pass


class Undeclared:
    def __init__(self, run, config):
        pass

    @alignbench.hookimpl
    def alignbench_rollout(self, run, prompts):
        raise AssertionError("never reached: the placement is refused first")

    @alignbench.hookimpl
    def alignbench_update(self, run, batch):
        raise AssertionError("never reached: the placement is refused first")


@alignbench.hookimpl
def alignbench_register_algorithms(register):
    register("undeclared", Undeclared, UndeclaredConfig)
"""


def _undeclared_registry(tmp_path: Path) -> Registry:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "undeclared.py").write_text(UNDECLARED)
    return build_registry([str(folder)])


@pytest.mark.slow
def test_placing_a_model_an_undeclared_plugin_lacks_is_one_line_once_built(
    tiny_job, tmp_path: Path
) -> None:
    """The backstop: an algorithm that declares no model_roles is checked when it is built."""
    registry = _undeclared_registry(tmp_path)
    with pytest.raises(ConfigError, match=r"placement.critic=cpu but this job \(algo=undeclared\)"):
        tiny_job("algo=undeclared", "placement.critic=cpu", registry=registry)


#: Placements of models the job's plugins declare it will not have, and the line that refuses each.
LACKING = [
    (["algo=rrhf", "placement.critic=cpu"], "placement.critic=cpu but this job (algo=rrhf)"),
    (["algo=sft", "placement.reference=cpu"], "placement.reference=cpu but this job (algo=sft)"),
    (
        ["algo=ppo", "algo.critic=shared", "placement.critic=cpu"],
        "placement.critic=cpu but this job (algo=ppo) has no critic model — drop placement.critic",
    ),
    (["algo=grpo", "algo.beta=0", "placement.reference=cpu"], "(algo=grpo) has no reference"),
    (["algo=rloo", "algo.beta=0", "placement.reference=cpu"], "(algo=rloo) has no reference"),
    (["algo=best_of_n", "placement.critic=cpu"], "(algo=best_of_n) has no critic"),
    (
        ["reward=exact_match", "placement.reward=cpu"],
        "placement.reward=cpu but this job (reward=exact_match) has no reward model — drop "
        "placement.reward",
    ),
    (["algo=ppo", "placement.reward=cpu"], "(reward=abstention) has no reward model"),
]


@pytest.mark.parametrize(("overrides", "message"), LACKING)
def test_placing_a_model_the_job_lacks_stops_it_before_stage_1(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    """Refused in one line by the job's first step: no job folder, no stage cache, nothing
    trained (it used to be refused when the algorithm was built, after stages 1 and 2)."""
    cache = tmp_path / "cache"
    cfg = compose([*TINY, f"cache_dir={cache}", *overrides])
    with pytest.raises(ConfigError) as refused:
        run_job(cfg, tmp_path / "job", registry=build_registry())
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # no job folder, no cache


def test_placing_a_model_the_job_lacks_stops_the_command(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["algo=rrhf", "placement.critic=cpu", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: placement.critic=cpu but this job (algo=rrhf) has no critic model — drop "
        "placement.critic"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_placed_model_the_job_has_passes_the_check(registry: Registry) -> None:
    for overrides in (
        ["algo=ppo", "placement.reference=cpu", "placement.critic=cpu"],
        ["algo=grpo", "placement.reference=cpu"],
        ["algo=dpo", "placement.reference=cpu"],
        ["reward=rm", "placement.reward=cpu"],
    ):
        check_placed_models(registry, compose([*TINY, *overrides], registry))


def test_undeclared_plugins_are_never_refused_up_front(tmp_path: Path) -> None:
    """No false refusals: a plugin without model_roles (or answering None) is left to the late
    check; a declaration that is not a set of its roles is a PluginError naming the class."""

    class Undeclared:
        pass

    class NoneDeclared:
        @classmethod
        def model_roles(cls, config: object) -> None:
            return None

    class Wrong:
        @classmethod
        def model_roles(cls, config: object) -> str:
            return "critic"

    algo, reward = SimpleNamespace(name="mine"), SimpleNamespace(name="judge")
    everything = {role: torch.device("cpu") for role in ("reference", "critic", "reward")}
    for owner in (Undeclared, NoneDeclared, Reward):  # Reward: the base class declares nothing
        check_placed_roles(everything, owner, algo, owner, reward)
        assert declared_roles(owner, algo, ("reward",)) is None
    with pytest.raises(PluginError, match=r"Wrong.model_roles returned 'critic' — return a set"):
        check_placed_roles(everything, Wrong, algo, Reward, reward)
    registry = _undeclared_registry(tmp_path)
    cfg = compose([*TINY, "algo=undeclared", "placement.critic=cpu"], registry)
    check_placed_models(registry, cfg)  # left to the check once built


#: Each built-in algorithm in the configs that change which models it builds (a new built-in
#: algorithm fails test_every_algorithm_and_reward_has_its_variants until it is added here).
ALGORITHM_VARIANTS = {
    "ppo": [[], ["algo.critic=shared"]],
    "grpo": [[], ["algo.beta=0"]],
    "rloo": [[], ["algo.beta=0"]],
    "reinforce_pp": [[], ["algo.beta=0"]],
    "dpo": [["feedback.labels=12", "feedback.k=2"]],
    "online_dpo": [[]],
    "rrhf": [[], ["algo.sft_model_samples=1"]],
    "sft": [[]],
    "rft": [[]],
    "best_of_n": [[]],
}
#: Each built-in reward and a task it scores.
REWARD_TASKS = {
    "abstention": "facts",
    "exact_match": "facts",
    "length": "facts",
    "rm": "facts",
    "turn": "dialogue",
    "dialogue": "dialogue",
    "mixed": "dialogue",
}


def test_every_algorithm_and_reward_has_its_variants(registry: Registry) -> None:
    """Every built-in algorithm and reward declares model_roles and is checked below."""
    assert sorted(ALGORITHM_VARIANTS) == registry.names("algo")
    assert sorted(REWARD_TASKS) == registry.names("reward")
    for name in registry.names("algo"):
        assert callable(getattr(registry.get("algo", name).cls, "model_roles", None)), name
    for name in registry.names("reward"):
        assert (
            registry.get("reward", name).cls.model_roles.__func__ is not Reward.model_roles.__func__
        ), name


def _had(models: dict[str, torch.nn.Module | None]) -> frozenset[str]:
    return frozenset(role for role, model in models.items() if model is not None)


def test_a_model_roles_that_is_not_a_classmethod_is_one_line() -> None:
    """An instance method (called on the class it misses its config) and a plain attribute are
    refused naming the fix, not a raw TypeError nor silently taken as undeclared."""

    class Method:
        def model_roles(self, config: object) -> set[str]:
            return {"critic"}

    class Attribute:
        model_roles = frozenset({"critic"})

    algo = SimpleNamespace(name="mine")
    for owner, why in ((Method, "failed"), (Attribute, "not callable")):
        with pytest.raises(PluginError, match=rf"{owner.__name__}.model_roles.*{why}") as info:
            declared_roles(owner, algo, ("reference", "critic"))
        assert "@classmethod" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [[f"algo={name}", *v] for name, variants in ALGORITHM_VARIANTS.items() for v in variants],
    ids=lambda o: " ".join(o),
)
def test_declared_roles_are_the_models_an_algorithm_builds(
    tmp_path: Path, cache_dir: Path, registry: Registry, overrides: list[str]
) -> None:
    """The declaration cannot drift from the code: each variant built, its models by role
    (placed_models) are exactly what its class declares for its config."""
    cfg = compose([*TINY, f"cache_dir={cache_dir}", *overrides], registry)
    job = Job(cfg, tmp_path / "job", registry)
    job.build()
    algorithm = job.start()
    try:
        built = _had(placed_models(job.run, algorithm)) - {"reward"}
        declared = declared_roles(type(algorithm), job.run.config, ALGORITHM_ROLES)
    finally:
        job.close()
    assert declared == built


@pytest.mark.parametrize("name", sorted(REWARD_TASKS))
def test_declared_roles_are_the_models_a_reward_holds(
    tmp_path: Path, cache_dir: Path, registry: Registry, name: str
) -> None:
    """A reward that declares a model holds one once prepared (stage 2 built: a job); one that
    declares none holds none and prepares nothing where it could load one."""
    overrides = [*TINY, f"cache_dir={cache_dir}", f"reward={name}", f"task={REWARD_TASKS[name]}"]
    cfg = compose([*overrides, "feedback.labels=12", "feedback.k=2"], registry)
    entry = registry.get("reward", name)
    declared = declared_roles(entry.cls, to_object(cfg.reward), REWARD_ROLES)
    if declared:
        job = Job(cfg, tmp_path / "job", registry)
        job.build()
        reward = job.reward
    else:
        task = registry.get("task", cfg.task.name).cls(to_object(cfg.task))
        reward = entry.cls(to_object(cfg.reward), task)
        assert entry.cls.prepare is Reward.prepare and entry.cls.setup is Reward.setup
    assert _had(placed_models(SimpleNamespace(reward=reward), None)) == declared
