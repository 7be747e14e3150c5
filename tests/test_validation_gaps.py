"""Issue 18's validation gaps: each one line, exit 2, before stage 1 and before any folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alignbench import ConfigError
from alignbench.app import main, validate
from alignbench.errors import UnknownAlgorithm
from alignbench.validation import check_choices

CONF = Path(__file__).resolve().parents[1] / "conf"

GAPS = [
    (
        ["algo=ppo", "algo.critic=sepparate"],
        "error: algo.critic='sepparate' is not a choice — use one of: separate, shared",
    ),
    (
        ["algo=ppo", "algo.kl_estimator=k4"],
        "error: algo.kl_estimator='k4' is not a choice — use one of: k1, k2, k3",
    ),
    (
        ["algo=ppo", "algo.critic_init=rm"],
        "error: algo.critic_init='rm' is not a choice — use one of: sft, reward_model",
    ),
    (
        ["logger.wandb.mode=ofline"],
        "error: logger.wandb.mode='ofline' is not a choice — use one of: offline, online,",
    ),
    (
        ["algo=ppo", "algo.samples_per_prompt=0"],
        "error: algo.samples_per_prompt=0 — must be >= 1; set algo.samples_per_prompt accordingly",
    ),
    (
        ["model.name_or_path=no/such-model-here"],
        "error: model.name_or_path='no/such-model-here' cannot be loaded (",
    ),
    (
        ["algo.lr=interval(0.1,0.2)"],
        "error: algo.lr=interval(...) needs a sweeper that samples it (e.g. hydra/sweeper=optuna)",
    ),
    (
        ["algo.lr=glob(*)"],
        "error: algo.lr=glob(...) selects options of a config group (e.g. algo=glob(*))",
    ),
    (["algo=glob(zz*)"], "error: algo=glob(zz*) matches no option"),
]


@pytest.mark.parametrize(("overrides", "start"), GAPS)
def test_gap_is_one_line_before_anything_is_written(
    capsys, tmp_path, monkeypatch, overrides, start
) -> None:
    """`python -m alignbench <bad> --multirun`: exit 2, one line, no results folder."""
    monkeypatch.chdir(tmp_path)
    assert main([*overrides, "logger=none", "--multirun"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(start), err
    assert not (tmp_path / "results").exists()


def test_local_model_folder_without_a_config_is_refused(capsys, tmp_path, monkeypatch) -> None:
    """A folder that is not a saved model fails at start-up, naming the folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty-model").mkdir()
    assert main(["model.name_or_path=empty-model", "logger=none"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "empty-model" in err and "cannot be loaded" in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo.lr=range(0.1,0.3,0.1)"],
        ["seed=range(3)"],
        ["algo.lr=choice(0.1,0.2)"],
        ["algo=glob(*,exclude=[rf*,ppo_plain])"],
        ["hydra/sweeper=optuna", "algo.lr=interval(0.0001,0.001)"],
    ],
)
def test_hydra_sweep_syntax_passes_validation(registry, overrides) -> None:
    """range/choice/glob are enumerated; interval with a sampling sweeper checks its bounds."""
    validate(registry, overrides)


def test_interval_bounds_are_range_checked(registry) -> None:
    """With a sampling sweeper the bounds of interval(...) still go through the range checks."""
    with pytest.raises(ConfigError, match=r"algo.lr=-0.1 — must be a learning rate > 0"):
        validate(registry, ["hydra/sweeper=optuna", "algo.lr=interval(-0.1,0.1)"])


def test_choices_metadata_is_checked_for_any_dataclass() -> None:
    """A plugin declares `choices` in field metadata and gets the same check, no code of its own."""

    @dataclass
    class Inner:
        mode: str = field(default="a", metadata={"choices": ("a", "b")})

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)

    check_choices(Outer())
    with pytest.raises(ConfigError, match=r"^inner.mode='c' is not a choice — use one of: a, b$"):
        check_choices(Outer(Inner("c")), "")


def test_interval_on_an_integer_key_passes_validation(registry) -> None:
    """interval(1,3) on an int key: Hydra reads the bounds as floats; validation must not
    refuse them as a wrong type (the sampler gives integers for an int key)."""
    validate(registry, ["hydra/sweeper=optuna", "algo.epochs=interval(1,3)"])
    with pytest.raises(ConfigError, match="algo.epochs=0"):
        validate(registry, ["hydra/sweeper=optuna", "algo.epochs=interval(0,3)"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        *(["+experiment=" + p.stem] for p in sorted(CONF.glob("experiment/*.yaml"))),
        *(["hparams_search=" + p.stem] for p in sorted(CONF.glob("hparams_search/*.yaml"))),
    ],
)
def test_every_shipped_experiment_and_search_validates(registry, overrides) -> None:
    """The experiment and search files of conf/ compose with every value their sweeps list."""
    validate(registry, overrides)


def test_a_file_sweep_is_checked_before_anything_runs(registry, monkeypatch) -> None:
    """An experiment file's own hydra.sweeper.params (not the command line's) are validated
    too: a misspelt algorithm there is one line up front, not one failed job per combination."""
    import alignbench.cli as cli

    compose = cli.hydra.compose

    def with_file_sweep(*args, **kwargs):
        cfg = compose(*args, **kwargs)
        if kwargs.get("return_hydra_config"):
            cfg.hydra.sweeper.params = {"algo": "ppo,rrhf_tunned", "seed": "0,1"}
        return cfg

    monkeypatch.setattr(cli.hydra, "compose", with_file_sweep)
    with pytest.raises(UnknownAlgorithm, match="'rrhf_tunned' — known:"):
        validate(registry, ["reward=exact_match"])
    # The command line's own sweep of the key wins over the file's, as in Hydra.
    validate(registry, ["algo=ppo,rrhf"])


def test_a_capped_validation_still_sees_every_value() -> None:
    """The combinations composed hold every value of every swept key, and every combination
    of the group choices; seeds are not multiplied out."""
    from alignbench.cli import _covering

    choices = [["algo=a", "algo=b", "algo=c"], ["seed=0", "seed=1"], ["reward=x", "reward=y"]]
    combos = list(_covering(choices))
    assert {v for combo in combos[:3] for v in combo} == {v for c in choices for v in c}
    pairs = {(a, r) for a, _, r in combos}
    assert pairs == {(a, r) for a in choices[0] for r in choices[2]}
    assert len(combos) == len(set(combos)) == 7  # 3 diagonal + the 6 group pairs, 2 shared
