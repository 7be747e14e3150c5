"""Runs that survive: checkpoints, exact resume after kill -9, skip finished, clean failures."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignbench import Interrupted, NonFiniteError
from alignbench.checkpoint import latest
from tests.conftest import TINY

ALGOS = {
    "sft": ["algo=sft"],
    "rrhf": ["algo=rrhf"],
    "ppo": ["algo=ppo", "algo.samples_per_prompt=2", "algo.num_minibatches=2"],
}


def _numbers(summary: dict) -> dict:
    # Timings, paths and provenance (the commit moves on between two runs of a test) aside.
    skip = (
        "budget/seconds",
        "wall_time",
        "output_dir",
        "model_dir",
        "stage/sft",
        "skipped",
        "git_commit",
    )
    return {k: v for k, v in summary.items() if k not in skip}


def _cli(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "alignbench", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "rrhf"])
def test_kill_9_and_resume_gives_the_same_summary(tmp_path: Path, algo: str) -> None:
    """A job killed with SIGKILL mid-run and re-run with the same command ends with the same
    summary.json numbers as an uninterrupted run. (SFT, RRHF's special case with the same
    checkpoint code, was dropped here to keep make test under 12 minutes: the resume matrix
    resumes it exactly; other files call this test for their own algorithms.)"""
    args = [
        *TINY,
        *ALGOS[algo],
        "budget.amount=40",
        "checkpoint_every=3",
        "eval.points=2",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    straight = _cli([*args, "hydra.run.dir=straight"], tmp_path)
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]
    expected = json.loads((tmp_path / "straight" / "summary.json").read_text())

    job = tmp_path / "killed"
    kill_at = random.Random(algo).randint(7, 20)  # a step past the 2nd checkpoint, not on one
    victim = _cli([*args, "hydra.run.dir=killed"], tmp_path)
    metrics = job / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= kill_at:
            break
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the job ended before it could be killed"
    assert latest(job) is not None and not (job / "summary.json").exists()
    resumed = _cli([*args, "hydra.run.dir=killed"], tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert _numbers(summary) == _numbers(expected)
    lines = (job / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines if json.loads(x)["kind"] == "step"]
    assert steps == list(range(1, 41))  # no step lost, none written twice


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_rerun_resumes(tmp_path: Path) -> None:
    """SIGTERM stops the job after the current step with a checkpoint and a non-zero exit."""
    args = [
        *TINY,
        "algo=rrhf",
        "budget.amount=400",
        "checkpoint_every=0",
        f"cache_dir={tmp_path / 'cache'}",
        "hydra.run.dir=job",
    ]
    job = _cli(args, tmp_path)
    deadline = time.time() + 300
    metrics = tmp_path / "job" / "metrics.jsonl"
    while time.time() < deadline and (
        not metrics.exists() or metrics.read_text().count('"step"') < 3
    ):
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) != 0
    assert "checkpoint saved" in job.stderr.read()
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert latest(tmp_path / "job") is not None


@pytest.mark.slow
def test_sigterm_stops_the_whole_sweep(tmp_path: Path) -> None:
    """SIGTERM during the first job of a multirun stops the sweep: the second job never starts."""
    args = [
        *TINY,
        "algo=rrhf,sft",
        "budget.amount=400",
        "checkpoint_every=0",
        "--multirun",
        f"cache_dir={tmp_path / 'cache'}",
        "hydra.sweep.dir=sweep",
    ]
    job = _cli(args, tmp_path)
    deadline = time.time() + 300
    found = lambda: next((tmp_path / "sweep").glob("rrhf_facts_seed0_*/metrics.jsonl"), None)  # noqa: E731
    while time.time() < deadline and (found() is None or found().read_text().count('"step"') < 2):
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 143  # 128 + SIGTERM, as a shell reports it
    assert not list((tmp_path / "sweep").glob("sft_*"))


def test_checkpoint_writes_are_atomic_and_pickle_free(tiny_job, tmp_path: Path) -> None:
    """A checkpoint holds safetensors weights and a weights_only state; only the latest stays."""
    tiny_job("algo=ppo", "algo.samples_per_prompt=2", "budget.amount=4", "checkpoint_every=2")
    folder = latest(tmp_path / "out")
    assert folder is not None and folder.name == "step-4"
    names = {p.name for p in folder.iterdir()}
    assert {"policy.safetensors", "algorithm.critic.safetensors", "state.pt"} <= names
    state = torch.load(folder / "state.pt", weights_only=True)  # raises if anything needs pickle
    assert {"optimizer", "critic_optimizer"} <= set(state["optimizers"])
    assert "kl" in state["states"] and state["step"] == 4
    assert [p.name for p in (tmp_path / "out" / "checkpoints").glob("step-*")] == ["step-4"]


def test_finished_job_is_skipped_and_rerun_moves_it_aside(tiny_job, tmp_path: Path) -> None:
    """The same job again is skipped; rerun=true runs it and keeps the old results."""
    first = tiny_job("algo=sft")
    again = tiny_job("algo=sft")
    assert again.get("skipped") is True and again["test/reward"] == first["test/reward"]
    forced = tiny_job("algo=sft", "rerun=true")
    assert not forced.get("skipped")
    previous = list((tmp_path / "out").glob("previous-*/summary.json"))
    assert len(previous) == 1


def test_nonfinite_loss_stops_before_the_weights_change(
    tiny_job, tmp_path: Path, cache_dir: Path
) -> None:
    """A NaN reward stops the job (status failed, quantity and step named); skip mode goes on."""
    from alignbench_plugins.rewards import ExactMatchReward

    original = ExactMatchReward.score

    def poisoned(self, rows, responses):
        return [float("nan")] + original(self, rows, responses)[1:]

    from alignbench import hookimpl
    from alignbench.models import load_pretrained
    from alignbench.registry import build_registry

    class Watch:
        """Counts the updates that start (none must) and keeps the policy's final weights."""

        updates = 0

        @hookimpl(wrapper=True)
        def alignbench_update(self, run, batch):
            Watch.updates += 1
            return (yield)

        @hookimpl
        def alignbench_on_run_end(self, run, summary):
            Watch.final = {k: v.clone() for k, v in run.policy.state_dict().items()}

    ExactMatchReward.score = poisoned
    try:
        registry = build_registry()
        registry.pm.register(Watch(), name="watch")
        with pytest.raises(NonFiniteError, match="step 1: objective/reward is not finite"):
            tiny_job("algo=rrhf", "reward=exact_match", out="stop", registry=registry)
        summary = json.loads((tmp_path / "stop" / "summary.json").read_text())
        assert summary["status"] == "failed" and "objective/reward" in summary["error"]
        # Stopped before any update ran: the policy is still the SFT model, weight for weight.
        assert Watch.updates == 0
        sft, _ = load_pretrained(cache_dir / "sft" / summary["stage/sft"]["key"])
        for name, value in sft.state_dict().items():
            assert torch.equal(Watch.final[name], value), name
        skipped = tiny_job("algo=rrhf", "reward=exact_match", "on_nonfinite=skip", out="skip")
    finally:
        ExactMatchReward.score = original
    assert skipped["status"] == "finished"
    lines = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert not [x for x in lines if x["kind"] == "step"]  # every batch was skipped
    assert skipped["budget/steps"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_one_failing_job_does_not_stop_the_sweep(tmp_path: Path, launcher: list[str]) -> None:
    """In a multirun, a failing job is recorded and reported; the others finish; exit code 1 —
    with the basic launcher and with joblib, whose workers are other processes."""
    args = [
        *TINY,
        *launcher,
        "algo=rrhf,sft",
        "algo.policy_samples=0",
        "--multirun",
        f"cache_dir={tmp_path / 'cache'}",
        "hydra.sweep.dir=sweep",
    ]
    done = _cli(args, tmp_path)
    assert done.wait(timeout=600) == 1
    err = done.stderr.read()
    assert "K >= 2" in err and "1 job(s) failed" in err
    failed = json.loads(next((tmp_path / "sweep").glob("rrhf_*/summary.json")).read_text())
    assert failed["status"] == "failed" and "ConfigError" in failed["error"]
    ok = json.loads(next((tmp_path / "sweep").glob("sft_*/summary.json")).read_text())
    assert ok["status"] == "finished"


def test_same_command_lands_in_the_same_folder(tmp_path: Path, monkeypatch) -> None:
    """Without hydra.run.dir, the output folder is named after the command line, stably."""
    from alignbench.app import _default_dirs

    monkeypatch.chdir(tmp_path)
    a = _default_dirs(["algo=ppo,rrhf", "seed=0,1"])
    b = _default_dirs(["seed=0,1", "algo=ppo,rrhf"])
    c = _default_dirs(["algo=ppo"])
    assert a == b and a != c
    assert a[1].startswith("hydra.sweep.dir=results/sweeps/algo-ppo+rrhf_seed-0+1_")
    assert _default_dirs(["hydra.run.dir=x", "hydra.sweep.dir=y"]) == []


def test_a_reward_that_stays_nan_ends_the_run_instead_of_hanging(tiny_job, monkeypatch) -> None:
    """on_nonfinite=skip with a token budget (which skipped batches never spend) stops after
    MAX_SKIPPED_IN_A_ROW skipped batches with one clear error, instead of looping forever."""
    from alignbench import loop
    from alignbench_plugins.rewards import ExactMatchReward

    monkeypatch.setattr(loop, "MAX_SKIPPED_IN_A_ROW", 5)
    monkeypatch.setattr(
        ExactMatchReward, "score", lambda self, rows, responses: [float("nan")] * len(rows)
    )
    with pytest.raises(NonFiniteError, match="5 batches in a row were skipped"):
        tiny_job(
            "algo=rrhf",
            "reward=exact_match",
            "on_nonfinite=skip",
            "budget.kind=tokens",
            "budget.amount=1000",
        )


def test_a_skipped_batch_still_honours_sigterm(tiny_job, tmp_path: Path, monkeypatch) -> None:
    """A signal that arrives while batches are being skipped stops the run with a checkpoint."""
    import os

    from alignbench_plugins.rewards import ExactMatchReward

    batches = []

    def nan_then_signal(self, rows, responses):
        if len(rows) == 4 * 5:  # a training batch (4 prompts x 5 candidates), not an eval set
            batches.append(1)
            if len(batches) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        return [float("nan")] * len(rows)

    monkeypatch.setattr(ExactMatchReward, "score", nan_then_signal)
    with pytest.raises(Interrupted, match="stopped by signal"):
        tiny_job("algo=rrhf", "reward=exact_match", "on_nonfinite=skip", "budget.amount=50")
    assert latest(tmp_path / "out") is not None and len(batches) == 2


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        (lambda n: [0.0] * (n + 1), r"rewards of shape \[(\d+)\] for \d+ responses"),
        (lambda n: [[0.0]] * n, r"rewards of shape \[(\d+), 1\] for \1 responses"),
    ],
)
def test_a_reward_of_the_wrong_shape_is_one_line(tiny_job, monkeypatch, rewards, message) -> None:
    """N+1 rewards, or [[x]] * N, name the reward and the expected shape (every algorithm)."""
    from alignbench import PluginError
    from alignbench_plugins.rewards import ExactMatchReward

    monkeypatch.setattr(ExactMatchReward, "score", lambda self, rows, rs: rewards(len(rows)))
    for algo in ("rrhf", "ppo"):
        extra = ["algo.samples_per_prompt=5"] if algo == "ppo" else []
        with pytest.raises(PluginError, match=f"reward 'exact_match' gave {message}") as info:
            tiny_job(f"algo={algo}", "reward=exact_match", *extra, out=algo)
        assert "\n" not in str(info.value) and "one float per response" in str(info.value)


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        (None, "PluginError", "alignbench_update returned NoneType"),
        ("done", "PluginError", "alignbench_update returned str"),
        ({"loss": "x"}, "PluginError", "'loss': 'x' — every metric must be a number"),
        ({"loss": float("nan")}, "NonFiniteError", "update statistic loss is not finite"),
    ],
)
def test_an_update_must_return_finite_numbers(tiny_job, returned, error, message) -> None:
    """A wrong return of the update hook is one line, not silently lost metrics."""
    from alignbench import hookimpl
    from alignbench.registry import build_registry

    class Wrong:
        @hookimpl(wrapper=True)
        def alignbench_update(self):
            yield
            return returned

    registry = build_registry()
    registry.pm.register(Wrong(), name="wrong")
    with pytest.raises(Exception, match=message) as info:
        tiny_job("algo=sft", registry=registry)
    assert type(info.value).__name__ == error


def test_a_skipped_batch_leaves_the_weights_as_they_were(tiny_job, monkeypatch) -> None:
    """PPO steps once per mini-batch; a non-finite loss in a later one must not leave the
    earlier steps applied while the batch is reported as skipped."""
    from alignbench import Run, hookimpl
    from alignbench.registry import build_registry

    seen = {}
    original = Run.check_finite
    calls = []

    def failing_late(self, **values):
        if "loss/total" in values or "loss/policy" in values:
            calls.append(1)
            if len(calls) == 1:
                seen["before"] = {k: v.clone() for k, v in self.policy.state_dict().items()}
            if len(calls) == 3:  # the third mini-batch of the first step: two already stepped
                raise NonFiniteError("step 1: loss/policy is not finite (nan)")
        return original(self, **values)

    monkeypatch.setattr(Run, "check_finite", failing_late)
    captured = {}

    class Capture:
        @hookimpl(wrapper=True)
        def alignbench_update(self, run):
            captured.setdefault("run", run)
            return (yield)

    registry = build_registry()
    registry.pm.register(Capture(), name="capture")
    summary = tiny_job(
        "algo=ppo",
        "algo.samples_per_prompt=2",
        "algo.num_minibatches=4",
        "algo.ptx_coef=0",
        "on_nonfinite=skip",
        "budget.amount=1",
        registry=registry,
    )
    assert summary["status"] == "finished" and summary["steps"] == 1
    after = captured["run"].policy.state_dict()
    assert all(torch.equal(seen["before"][k], after[k]) for k in after)


@pytest.mark.slow
def test_online_feedback_rounds_resume_exactly(tiny_job, tmp_path: Path) -> None:
    """feedback.rounds=2 (the reward model and its groups change during RL): a run stopped by a
    signal after the first refresh and resumed ends with the same numbers as a straight run."""
    import os

    from alignbench import hookimpl
    from alignbench.registry import build_registry

    rm = ["reward=rm", "feedback.labels=12", "stage.rm.epochs=2", "feedback.k=2"]
    args = [*rm, "algo=rrhf", "feedback.rounds=2", "budget.amount=6", "checkpoint_every=1"]
    straight = tiny_job(*args, out="straight")

    class StopAtStep4:
        @hookimpl(wrapper=True)
        def alignbench_update(self, run):
            stats = yield
            if run.step == 3:  # the 4th update, after the first refresh (at a third of the budget)
                os.kill(os.getpid(), signal.SIGTERM)
            return stats

    registry = build_registry()
    registry.pm.register(StopAtStep4(), name="stop")
    with pytest.raises(Interrupted):
        tiny_job(*args, out="resumed", registry=registry)
    resumed = tiny_job(*args, out="resumed")
    stage = ("stage/rm",)  # cache_hit and build time differ; the reward model is the same
    assert {k: v for k, v in _numbers(resumed).items() if k not in stage} == {
        k: v for k, v in _numbers(straight).items() if k not in stage
    }


def _damage(folder: Path, how: str) -> str:
    """Damage a saved checkpoint in one of the ways a disk, a copy or a user can; returns the
    file the error must name."""
    step = latest(folder)
    assert step is not None
    weights = step / "policy.safetensors"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
        return "policy.safetensors is damaged"
    if how == "0xFF weights":
        data = bytearray(weights.read_bytes())
        header = 8 + int.from_bytes(data[:8], "little")
        data[header:] = b"\xff" * (len(data) - header)  # every float becomes NaN
        weights.write_bytes(bytes(data))
        return "policy.safetensors holds non-finite weights"
    if how == "missing weights":
        weights.unlink()
        return "policy.safetensors is missing"
    if how == "truncated state":
        state = step / "state.pt"
        state.write_bytes(state.read_bytes()[:50])
        return "state.pt is damaged"
    if how == "broken latest":
        (folder / "checkpoints" / "latest").write_text("step-999")
        return "names 'step-999', which is not a complete checkpoint"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["truncated weights", "0xFF weights", "missing weights", "truncated state", "broken latest"],
)
def test_a_damaged_checkpoint_is_reported_not_silently_restarted(
    tiny_job, tmp_path: Path, how: str
) -> None:
    """Every kind of damage names the file and the fix; nothing restarts from step 0 quietly."""
    from alignbench import DataError

    tiny_job("algo=sft", "budget.amount=2", "checkpoint_every=1")
    folder = tmp_path / "out"
    (folder / "summary.json").unlink()  # unfinished: the next run resumes from the checkpoint
    expected = _damage(folder, how)
    metrics = (folder / "metrics.jsonl").read_bytes()
    with pytest.raises(DataError, match="rerun=true") as error:
        tiny_job("algo=sft", "budget.amount=2", "checkpoint_every=1")
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert (folder / "metrics.jsonl").read_bytes() == metrics  # nothing was run or appended
    summary = tiny_job("algo=sft", "budget.amount=2", "checkpoint_every=1", "rerun=true")
    assert summary["status"] == "finished"  # the way out the message names works


def test_changed_plugin_code_never_reuses_a_result(tiny_job, tmp_path: Path) -> None:
    """A finished job, or a checkpoint, made by other plugin code is refused in one line (fixed
    code must not reuse stale numbers, nor silently replace them); rerun=true is the way out."""
    from alignbench import ConfigError

    first = tiny_job("algo=sft", "budget.amount=2", "checkpoint_every=1")
    assert set(first["code"]) == {"algo", "task", "reward"}
    summary_path = tmp_path / "out" / "summary.json"
    edited = {**first, "code": {**first["code"], "algo": "rrhf.py:0123456789abcdef"}}
    summary_path.write_text(json.dumps(edited))
    with pytest.raises(
        ConfigError, match=r"other code \(plugin code changed since: algo rrhf.py\)"
    ):
        tiny_job("algo=sft", "budget.amount=2", "checkpoint_every=1")
    summary_path.unlink()  # unfinished: the checkpoint is checked the same way
    step = latest(tmp_path / "out")
    state = torch.load(step / "state.pt", weights_only=True)
    torch.save({**state, "code": {**state["code"], "task": "facts.py:0"}}, step / "state.pt")
    with pytest.raises(ConfigError, match=r"checkpoint made by other code .*task facts.py"):
        tiny_job("algo=sft", "budget.amount=2", "checkpoint_every=1")
    again = tiny_job("algo=sft", "budget.amount=2", "checkpoint_every=1", "rerun=true")
    assert again["status"] == "finished" and again["code"] == first["code"]


def test_a_score_hook_that_forgets_to_return_the_batch_is_one_line(tiny_job, monkeypatch):
    """pluggy moves on past a None to the core's default score: that would silently replace the
    algorithm's rewards by the configured reward; it is refused, naming the plugin."""
    from alignbench import PluginError, hookimpl
    from alignbench_plugins.rrhf import RRHF

    def forgets(self, run, batch):
        batch.rewards = run.rewards(batch) * 2  # and no `return batch`

    monkeypatch.setattr(RRHF, "alignbench_score", hookimpl(forgets), raising=False)
    with pytest.raises(PluginError, match="algorithm:sft: alignbench_score returned None") as info:
        tiny_job("algo=sft")
    assert "\n" not in str(info.value)


def test_a_rollout_that_returns_no_batch_is_one_line(tiny_job) -> None:
    """A rollout returning something else fails at once, naming what came back."""
    from alignbench import PluginError, hookimpl
    from alignbench.registry import build_registry

    class Wrong:
        @hookimpl(wrapper=True)
        def alignbench_rollout(self):
            yield
            return ["a", "b"]

    registry = build_registry()
    registry.pm.register(Wrong(), name="wrong")
    with pytest.raises(PluginError, match="alignbench_rollout returned list, not a Batch"):
        tiny_job("algo=sft", registry=registry)


def test_a_config_class_without_its_own_dataclass_decorator_is_refused() -> None:
    """Subclassing a dataclass without @dataclass leaves its new keys out of the config: the
    plugin is refused when it registers, before anything composes or trains."""
    import pluggy

    from alignbench import AlgorithmConfig, PluginError
    from alignbench.registry import Registry, _registrar

    class NoDecorator(AlgorithmConfig):
        lr: float = 0.1

    register = _registrar(Registry(pm=pluggy.PluginManager("alignbench")), "algo", "mine")
    with pytest.raises(PluginError, match="not decorated with @dataclass"):
        register("mine", object, NoDecorator)


def test_a_reward_state_a_checkpoint_cannot_restore_is_one_line(tiny_job, monkeypatch) -> None:
    """A reward whose state_dict holds a numpy array would be saved silently and refused at
    resume as "damaged": the checkpoint is read back when written, naming the reward's part."""
    import numpy as np

    from alignbench import PluginError
    from alignbench_plugins.rewards import ExactMatchReward

    monkeypatch.setattr(ExactMatchReward, "state_dict", lambda self: {"seen": np.zeros(3)})
    with pytest.raises(PluginError, match="the reward's state_dict\\(\\) holds something"):
        tiny_job("algo=sft", "reward=exact_match", "checkpoint_every=1")


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, "reward exact_match: before_step returned NoneType"),
        ({"late": "x"}, "before_step returned 'late': 'x'"),
    ],
)
def test_a_reward_before_step_must_return_numbers(tiny_job, monkeypatch, returned, message):
    """before_step's statistics are checked like an update's: one line naming the reward."""
    from alignbench import PluginError
    from alignbench_plugins.rewards import ExactMatchReward

    monkeypatch.setattr(ExactMatchReward, "before_step", lambda self, run: returned)
    with pytest.raises(PluginError, match=message):
        tiny_job("algo=sft", "reward=exact_match")


def test_an_algorithm_class_with_the_wrong_constructor_is_refused_at_registration() -> None:
    """The core builds an algorithm as cls(run, config): a class that takes something else is
    refused when it registers, naming the signature, not after stage 1 has trained."""
    import pluggy

    from alignbench import AlgorithmConfig, PluginError
    from alignbench.registry import Registry, _registrar

    class TakesOnlyConfig:
        def __init__(self, config):
            self.config = config

    register = _registrar(Registry(pm=pluggy.PluginManager("alignbench")), "algo", "mine")
    with pytest.raises(PluginError, match=r"builds it as TakesOnlyConfig\(run, config\)"):
        register("mine", TakesOnlyConfig, AlgorithmConfig)
