"""GRPO, RLOO and REINFORCE++ as whole algorithms: FLOPs per model against a hand count, exact
resume, their options, and a reward that rises on a toy task whose answer is known."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

import tests.test_resume as resume_tests
from alignbench import ConfigError, Interrupted, hookimpl
from alignbench.app import run_job, validate
from alignbench.models import load_pretrained
from alignbench.registry import build_registry
from alignbench.run import Run
from tests.conftest import TINY, compose
from tests.test_flops import _one_step, forward, generation, sizes
from tests.test_ppo import TOY_REWARD

ALGOS = ("grpo", "rloo", "reinforce_pp")
ROOT = Path(__file__).resolve().parents[1]


def _policy_sizes(tmp_path: Path, summary: dict) -> tuple[int, int]:
    return sizes(load_pretrained(tmp_path / "cache" / "sft" / summary["stage/sft"]["key"])[0])


# ---------------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize(
    ("algo", "extra"),
    [
        ("grpo", ["algo.ppo_epochs=1"]),
        ("grpo", ["algo.ppo_epochs=2", "algo.num_minibatches=2", "algo.loss_type=dr_grpo"]),
        ("rloo", ["algo.ppo_epochs=2", "algo.num_minibatches=2"]),
        ("reinforce_pp", []),
    ],
)
def test_flops_per_model_match_the_hand_count(tmp_path, monkeypatch, algo, extra) -> None:
    """Policy: generation, then per epoch a forward+backward over every sequence (mini-batches
    split the rows, not the cost); reference: one forward; the rule reward costs nothing."""
    summary, rec, samples, _ = _one_step(
        tmp_path, monkeypatch, f"algo={algo}", "algo.samples_per_prompt=3", *extra
    )
    n_body, n_head = _policy_sizes(tmp_path, summary)
    epochs = 2 if "algo.ppo_epochs=2" in extra else 1
    [(source, n, prompt, new)] = samples
    assert source == "policy" and n == 4 * 3
    width = rec.rollouts[0].input_ids.shape[1]
    full = forward(n_body, n_head, n * width, n * (new + 1))  # logits on R response positions + 1
    expected = {
        "policy": generation(n_body, n_head, n, prompt, new) + epochs * 3 * full,
        "reference": full,
    }
    assert summary["flops_by_model"] == pytest.approx(expected, rel=1e-12)
    assert summary["budget/flops"] == pytest.approx(sum(expected.values()), rel=1e-12)


@pytest.mark.parametrize("algo", ALGOS)
def test_beta_zero_builds_no_reference(tmp_path, monkeypatch, algo) -> None:
    """With beta = 0 no reference model is loaded, run or charged: the policy is the only model."""
    loaded = []
    original = Run.load_sft_model

    def counting(self, name="reference"):
        loaded.append(name)
        return original(self, name)

    monkeypatch.setattr(Run, "load_sft_model", counting)
    summary, rec, samples, _ = _one_step(tmp_path, monkeypatch, f"algo={algo}", "algo.beta=0")
    assert loaded == []
    assert set(summary["flops_by_model"]) == {"policy"}
    n_body, n_head = _policy_sizes(tmp_path, summary)
    [(_, n, prompt, new)] = samples
    width = rec.rollouts[0].input_ids.shape[1]
    full = forward(n_body, n_head, n * width, n * (new + 1))
    expected = generation(n_body, n_head, n, prompt, new) + 3 * full
    assert summary["budget/flops"] == pytest.approx(expected, rel=1e-12)
    assert "ref_logprobs" not in rec.rollouts[0].extras


def test_remax_greedy_baseline_is_charged(tmp_path, monkeypatch) -> None:
    """baseline=greedy decodes one greedy answer per prompt with the policy: charged on top."""
    summary, rec, samples, _ = _one_step(
        tmp_path, monkeypatch, "algo=reinforce_pp", "algo.baseline=greedy"
    )
    n_body, n_head = _policy_sizes(tmp_path, summary)
    [(s1, n, prompt, new), (s2, b, prompt2, greedy_new)] = samples
    assert (s1, s2) == ("policy", "greedy") and b == 4 and prompt2 == prompt
    width = rec.rollouts[0].input_ids.shape[1]
    full = forward(n_body, n_head, n * width, n * (new + 1))
    policy = (
        generation(n_body, n_head, n, prompt, new)
        + generation(n_body, n_head, b, prompt, greedy_new)
        + 3 * full
    )
    expected = {"policy": policy, "reference": full}
    assert summary["flops_by_model"] == pytest.approx(expected, rel=1e-12)
    assert rec.rollouts[0].extras["baseline"].shape == (n,)


# --------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo=grpo", "algo.loss_type=dapo"], "algo.loss_type='dapo' — use one of seq_mean"),
        (["algo=grpo", "algo.scale_rewards=std"], "algo.scale_rewards='std' — use one of group"),
        (["algo=grpo", "algo.samples_per_prompt=1"], "need K >= 2"),
        (["algo=rloo", "algo.samples_per_prompt=1"], "needs K >= 2"),
        (["algo=rloo", "algo.beta=-1"], "beta >= 0"),
        (["algo=reinforce_pp", "algo.baseline=critic"], "algo.baseline='critic' — use one of"),
        (["algo=reinforce_pp", "algo.kl_estimator=k9"], "use one of k1, k2, k3"),
    ],
)
def test_bad_options_are_one_line_before_anything_runs(registry, overrides, message) -> None:
    """A value the algorithm cannot run with is a ConfigError at validation, naming the key."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        validate(registry, overrides)
    assert "\n" not in str(info.value)


class StepStats:
    """Records each update's statistics."""

    def __init__(self) -> None:
        self.stats: list[dict[str, float]] = []

    @hookimpl(wrapper=True)
    def alignbench_update(self):
        stats = yield
        self.stats.append(stats)
        return stats


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo=grpo", "algo.loss_type=token_mean", "algo.scale_rewards=none"],
        [
            "algo=grpo",
            "algo.loss_type=dr_grpo",
            "algo.scale_rewards=batch",
            "algo.clip_eps_high=0.28",
        ],
        ["algo=rloo", "algo.normalize_advantages=true"],
        ["algo=reinforce_pp", "algo.baseline=greedy", "algo.kl_estimator=k3"],
    ],
)
def test_options_run_and_log_finite_metrics(tiny_job, registry, overrides) -> None:
    """Every aggregation / scaling / baseline choice trains, first ratio 1 (sampler = trainer)."""
    recorder = StepStats()
    registry.pm.register(recorder, name="recorder")
    try:
        summary = tiny_job(*overrides, "reward=exact_match", registry=registry, out="o")
    finally:
        registry.pm.unregister(name="recorder")
    assert summary["status"] == "finished" and len(recorder.stats) == 2
    for stats in recorder.stats:
        assert stats["policy/ratio"] == pytest.approx(1.0, abs=1e-5)
        assert stats["policy/clipfrac"] == 0.0
        assert "objective/kl" in stats


# ---------------------------------------------------------------------------------- resume


class StopAfter:
    """Sends SIGTERM to this process after the update of step ``step`` (the loop then saves)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl(wrapper=True)
    def alignbench_update(self, run):
        stats = yield
        if run.step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return stats


RESUME = {
    "grpo": ["algo=grpo", "algo.ppo_epochs=2", "algo.num_minibatches=2"],
    "rloo": ["algo=rloo", "algo.ppo_epochs=2", "algo.num_minibatches=2"],
    "reinforce_pp": ["algo=reinforce_pp", "algo.num_minibatches=2"],
    "remax": ["algo=reinforce_pp", "algo.baseline=greedy"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RESUME))
def test_stop_and_resume_gives_the_same_numbers(tiny_job, name) -> None:
    """Stopped by a signal after step 3 (optimiser moments, shuffles and sampler state mid-run)
    and resumed, a job ends with the same numbers as a straight run."""
    args = [*RESUME[name], "reward=exact_match", "budget.amount=6", "checkpoint_every=0"]
    straight = tiny_job(*args, out="straight")
    registry = build_registry()
    registry.pm.register(StopAfter(3), name="stop")
    with pytest.raises(Interrupted):
        tiny_job(*args, out="resumed", registry=registry)
    resumed = tiny_job(*args, out="resumed")
    assert resume_tests._numbers(resumed) == resume_tests._numbers(straight)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo"])
def test_kill_9_and_resume(tmp_path, monkeypatch, algo) -> None:
    """The kill -9 test of tests/test_resume.py, for one group algorithm: what a kill -9 can
    break (a half-written checkpoint, the atomic replace) is the same code for all of them, and
    tests/test_resume_matrix.py resumes every registered algorithm exactly (RLOO's and
    REINFORCE++'s own kill -9 runs, 27 s each, were dropped to keep make test under 12 min)."""
    monkeypatch.setitem(resume_tests.ALGOS, algo, RESUME[algo])
    resume_tests.test_kill_9_and_resume_gives_the_same_summary(tmp_path, algo)


# ------------------------------------------------------------------------ reward rises (toy)


@pytest.fixture
def toy(tmp_path: Path, cache_dir: Path):
    """Run jobs on the tiny task with the `says_colour` toy reward (+1 for a colour word)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY_REWARD)
    registry = build_registry([str(folder)])

    def run(*overrides: str) -> list[dict]:
        cfg = compose([*TINY, f"cache_dir={cache_dir}", *overrides], registry)
        run_job(cfg, tmp_path / "out", registry=registry)
        lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        return [x for x in map(json.loads, lines) if x["kind"] == "step"]

    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["algo=grpo"],
        ["algo=rloo"],
        ["algo=reinforce_pp"],
        ["algo=reinforce_pp", "algo.baseline=greedy"],
    ],
)
def test_reward_rises_on_a_toy_task(toy, overrides) -> None:
    """+1 for naming a colour (the right answer to 1 question in 4): the reward climbs."""
    steps = toy(
        *overrides,
        "reward=says_colour",
        "algo.prompts_per_step=8",
        "algo.lr=1e-3",
        "stage.sft.epochs=15",
        "budget.amount=25",
    )
    start = sum(s["objective/reward"] for s in steps[:3]) / 3
    end = sum(s["objective/reward"] for s in steps[-3:]) / 3
    assert end > start + 0.3, (start, end)


# ------------------------------------------------------------------------------------ docs


def test_worked_example_quotes_grpo_py_verbatim() -> None:
    """Every code block of the guide's GRPO walk-through is a verbatim excerpt of grpo.py."""
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = guide.split("## Worked example: GRPO in one afternoon\n")[1].split("\n## ")[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    source = (ROOT / "plugins" / "grpo.py").read_text(encoding="utf-8")
    assert len(blocks) >= 4
    for block in blocks:
        assert block in source, block
