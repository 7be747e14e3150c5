"""Config composition and the one-line errors of the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignbench import ConfigError, UnknownAlgorithm, UnknownFeedback, UnknownReward, UnknownTask
from alignbench.app import main, validate
from alignbench.config import to_object
from tests.conftest import compose

#: The built-in algorithms, as an unknown name's error lists them.
#: The registered algorithms and the shipped YAML variants of them (conf/algo/*.yaml), sorted.
ALGOS = ", ".join(
    sorted(
        {"best_of_n", "dpo", "grpo", "online_dpo", "ppo", "reinforce_pp", "rft", "rloo", "rrhf"}
        | {"sft", "ppo_plain", "ppo_terminal"}
        | {p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "algo").glob("*.yaml")}
    )
)


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo=rrhf"],
        ["algo=sft"],
        ["reward=exact_match"],
        ["reward=abstention", "reward.wrong=-4"],
        ["task=facts"],
        ["logger=none"],
        ["logger=wandb", "logger.wandb.mode=online"],
        ["budget.kind=flops", "budget.amount=1e12"],
    ],
)
def test_group_options_compose(registry, overrides: list[str]) -> None:
    """Group options with values compose into a fully typed config."""
    cfg = compose(overrides, registry)
    to_object(cfg)
    assert cfg.algo.name in registry.names("algo")


def _every_choice() -> list[str]:
    """``group=name`` for every choice of every config group: what the plugins registered and
    every YAML file shipped under conf/ (variants such as algo=ppo_plain included)."""
    from pathlib import Path

    import conf
    from alignbench.registry import build_registry

    registry = build_registry()
    choices = {
        f"{g}={n}" for g in ("algo", "task", "reward", "feedback") for n in registry.names(g)
    }
    root = Path(conf.__file__).parent
    for group in ("algo", "task", "reward", "feedback", "model", "budget", "logger"):
        choices |= {f"{group}={p.stem}" for p in (root / group).glob("*.yaml")}
    return sorted(choices)


@pytest.mark.parametrize("choice", _every_choice())
def test_every_choice_of_every_group_composes(registry, choice: str) -> None:
    """Each choice alone composes into a fully typed config that names that choice."""
    cfg = compose([choice], registry)
    typed = to_object(cfg)
    group, name = choice.split("=")
    node = getattr(typed, group)
    if group in ("algo", "task", "reward", "feedback"):
        # A YAML variant runs a registered plugin under its own file name (ppo_plain → ppo).
        assert node.name in registry.names(group)
        assert node.name == name or name not in registry.names(group)


def test_sft_is_rrhf_configured_as_its_special_case(registry) -> None:
    """`algo=sft` is the RRHF class with demonstrations only and no ranking term."""
    sft, rrhf = compose(["algo=sft"], registry), compose(["algo=rrhf"], registry)
    assert registry.get("algo", "sft").cls is registry.get("algo", "rrhf").cls
    assert sft.algo.rank_weight == 0 and sft.algo.policy_samples == 0
    assert rrhf.algo.rank_weight > 0 and rrhf.algo.policy_samples > 0


@pytest.mark.parametrize(
    ("overrides", "error", "fragment"),
    [
        (
            ["algo=pp0"],
            UnknownAlgorithm,
            "'pp0' — known: " + ALGOS,
        ),
        (
            ["algo=sft,pp0"],
            UnknownAlgorithm,
            "known: " + ALGOS,
        ),
        (
            ["reward=nope"],
            UnknownReward,
            "known: abstention, dialogue, exact_match, length, mixed, rm, turn",
        ),
        (["feedback=nope"], UnknownFeedback, "known: dataset, file, page, simulated"),
        (["task=nope"], UnknownTask, "known: dataset, dialogue, facts, rubric"),
        (["algo.lrr=0.1"], ConfigError, "unknown config key 'algo.lrr'"),
        (["seeed=1"], ConfigError, "unknown config key 'seeed'"),
        (["algo.lr=fast"], ConfigError, "algo.lr"),
        (["budget.kind=hours"], ConfigError, "budget.kind"),
        (["algo=rrhf,sft", "algo.policy_samples=two"], ConfigError, "algo.policy_samples"),
    ],
)
def test_bad_overrides_are_one_line_errors(registry, overrides, error, fragment) -> None:
    """Unknown names, keys and wrong types fail before any job starts, naming the problem."""
    with pytest.raises(error) as info:
        validate(registry, overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_cli_prints_one_line_and_exits_nonzero(capsys, tmp_path, monkeypatch) -> None:
    """`python -m alignbench algo=pp0` prints one line naming the known algorithms and exits 2."""
    monkeypatch.chdir(tmp_path)
    assert main(["algo=pp0", "--multirun"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: UnknownAlgorithm: 'pp0' — known: " + ALGOS
    assert not (tmp_path / "results").exists()  # nothing written


#: Issue 11's out-of-range values: each refused in one exact line before anything is written.
BAD_VALUES = [
    (["seed=-1"], "seed=-1 — must be an integer in [0, 9223372036854775807]"),
    (["seed=99999999999999999999"], "seed="),  # overflow: refused as a wrong type or range
    (["world=-3"], "world=-3 — must be an integer in [0, 9223372036854775807]"),
    (["algo.lr=nan"], "algo.lr=nan — must be a finite number"),
    (["algo.sampling.max_new_tokens=0"], "algo.sampling.max_new_tokens=0 — must be >= 1"),
    (["algo.prompts_per_step=0"], "algo.prompts_per_step=0 — must be >= 1"),
    (["algo.sampling.temperature=0"], "algo.sampling.temperature=0.0 — must be > 0"),
    (["stage.sft.batch_size=0"], "stage.sft.batch_size=0 — must be >= 1"),
    (["eval.batch_size=0"], "eval.batch_size=0 — must be >= 1"),
    (["algo.epochs=0"], "algo.epochs=0 — must be >= 1"),
    (["algo=ppo", "algo.ppo_epochs=0"], "algo.ppo_epochs=0 — must be >= 1"),
    (["algo=ppo", "algo.num_minibatches=0"], "algo.num_minibatches=0 — must be >= 1"),
    (["algo=ppo", "algo.samples_per_prompt=0"], "algo.samples_per_prompt=0 — must be >= 1"),
    (["stage.rm.heldout_share=1"], "stage.rm.heldout_share=1.0 — must be in [0, 1)"),
    (["budget.amount=inf"], "budget.amount=inf — must be a finite number"),
    (["checkpoint_every=-1"], "checkpoint_every=-1 — must be >= 0"),
    (["eval.points=-1"], "eval.points=-1 — must be >= 0"),
    (["task.eval_size=0"], "task.eval_size=0 — must be >= 1"),
    (["feedback.k=1"], "feedback.k=1 — must be >= 2"),
    (["feedback.k=0"], "feedback.k=0 — must be >= 2"),
    (["+algo.lrr=0.1"], "unknown config key 'algo.lrr'"),
    (["+model.foo=1"], "unknown config key 'model.foo'"),
]


@pytest.mark.parametrize(("overrides", "fragment"), BAD_VALUES)
def test_out_of_range_values_fail_in_one_line_before_anything_runs(
    capsys, tmp_path, monkeypatch, overrides, fragment
) -> None:
    """Every row of the README's bad-input catalogue: exit 2, one line, no results folder."""
    monkeypatch.chdir(tmp_path)
    assert main([*overrides, "logger=none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert not (tmp_path / "results").exists()


def test_cli_rejects_non_positive_budget(capsys, tmp_path, monkeypatch) -> None:
    """A zero budget is refused with one line, before anything is trained."""
    monkeypatch.chdir(tmp_path)
    assert main(["budget.amount=0", "logger=none"]) == 2
    assert "budget.amount" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_world_sets_task_and_sft_seeds(registry) -> None:
    """`world=N` is the task's data seed and the stage-1 SFT seed unless each is set itself."""
    cfg = compose(["world=2"], registry)
    assert cfg.task.seed == 2 and cfg.stage.sft.seed == 2 and cfg.seed == 0
    own = compose(["world=2", "task.seed=5"], registry)
    assert own.task.seed == 5 and own.stage.sft.seed == 2


def test_yaml_variant_of_a_registered_algorithm_is_a_choice(registry) -> None:
    """`algo=ppo_plain` is PPO without the ptx term; its summary names the plugin `ppo`."""
    from alignbench.app import validate

    validate(registry, ["algo=ppo,ppo_plain"])
    cfg = compose(["algo=ppo_plain"], registry)
    assert cfg.algo.name == "ppo" and cfg.algo.ptx_coef == 0
    assert compose(["algo=ppo"], registry).algo.ptx_coef > 0
