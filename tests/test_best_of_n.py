"""Best-of-N and the evaluation seam it uses (``alignbench_respond``, ``trains = False``): no
training, the step-0 evaluation is the common greedy start, answering FLOPs are measured against
a hand count, and best-of-N's reward is above the plain policy's on a task whose answer is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignbench import PluginError, hookimpl
from alignbench.app import run_job
from alignbench.models import load_pretrained
from alignbench.registry import build_registry
from alignbench.run import Run
from tests.conftest import TINY, compose
from tests.test_dpo import SMALL_FEEDBACK
from tests.test_flops import forward, generation, sizes


def _run(tmp_path: Path, cache_dir: Path, *overrides: str, registry=None, out="out") -> dict:
    registry = registry or build_registry()
    cfg = compose([*TINY, f"cache_dir={cache_dir}", *overrides], registry)
    return run_job(cfg, tmp_path / out, registry=registry)


@pytest.mark.slow
def test_answering_flops_match_the_hand_count(tmp_path, cache_dir, monkeypatch) -> None:
    """With the learned reward model: per question, N generations of the policy plus N reward
    model forwards; nothing of it is charged to the (empty) training budget."""
    calls, runs = [], []
    original = Run.sample

    def recording(self, model, prompts, num_samples, params, source="policy"):
        batch = original(self, model, prompts, num_samples, params, source)
        calls.append((len(prompts), batch))
        runs.append(self)
        return batch

    monkeypatch.setattr(Run, "sample", recording)
    summary = _run(tmp_path, cache_dir, "algo=best_of_n", "algo.n=3", "reward=rm", *SMALL_FEEDBACK)
    policy = load_pretrained(cache_dir / "sft" / summary["stage/sft"]["key"])[0]
    n_body, n_head = sizes(policy)
    rm_head = policy.config.hidden_size + 1  # the scalar head: weight and bias
    spent = 0.0
    for rows, batch in calls:
        n, width = batch.input_ids.shape
        assert n == 3 * rows
        new = width - batch.prompt_length
        spent += generation(n_body, n_head, n, batch.prompt_length, new)
        spent += forward(n_body, rm_head, n * width, n * width)  # a scalar at every position
    # The final evaluation answered every question of every eval set once, through run.sample.
    task = runs[0].task
    questions = {prefix: len(task.splits[split]) for prefix, split in task.eval_sets.items()}
    assert sum(rows for rows, _ in calls) == sum(questions.values())
    measured = sum(summary[f"{p}/flops_per_question"] * q for p, q in questions.items())
    assert measured == pytest.approx(spent, rel=1e-12)
    assert summary["budget/flops"] == 0.0 and summary["steps"] == 0
    assert summary["flops_by_model"] == {"policy": 0.0, "reward_model": 0.0}


@pytest.mark.slow
def test_step_0_is_the_common_greedy_start(tmp_path, cache_dir) -> None:
    """The initial evaluation of best-of-N is the SFT model's greedy one, as every algorithm's;
    its final one is best-of-N's, and the exported policy is the SFT model itself."""
    best = _run(tmp_path, cache_dir, "algo=best_of_n", "algo.n=4", out="best")
    sft = _run(tmp_path, cache_dir, "algo=sft", "budget.amount=1", out="sft")
    assert best["initial"] == {
        **sft["initial"],
        **{k: v for k, v in best["initial"].items() if k.startswith("budget/")},
    }
    assert best["steps"] == 0
    trained, _ = load_pretrained(best["model_dir"])
    start, _ = load_pretrained(Path(cache_dir) / "sft" / best["stage/sft"]["key"])
    for (name, a), (_, b) in zip(
        trained.state_dict().items(), start.state_dict().items(), strict=True
    ):
        assert (a == b).all(), name


@pytest.mark.slow
def test_best_of_n_beats_the_plain_policy(tmp_path, cache_dir) -> None:
    """Abstention reward on the facts task (right 1, abstain 0, wrong -2): the best of 16
    samples by that reward scores well above the same model's greedy answer (measured on test:
    -0.48 -> 0.12). At temperature 0.5: this tiny SFT model's T=1 distribution is so flat that
    its samples are mostly word salad (then best-of-16 is below greedy: -1.16)."""
    summary = _run(
        tmp_path,
        cache_dir,
        "algo=best_of_n",
        "algo.sampling.temperature=0.5",
        "stage.sft.epochs=15",
    )
    for prefix in ("test", "dev", "eval_rl"):
        greedy, best = summary["initial"][f"{prefix}/reward"], summary[f"{prefix}/reward"]
        assert best > greedy + 0.2, (prefix, greedy, best)
        # 16 answers per question against one: the answering cost shows it.
        cost = summary[f"{prefix}/flops_per_question"]
        assert cost > 4 * summary["initial"][f"{prefix}/flops_per_question"]


RESPONDERS = """
from dataclasses import dataclass

import alignbench
from alignbench import AlgorithmConfig


@dataclass
class SilentConfig(AlgorithmConfig):
    pass


class Silent:
    trains = False

    def __init__(self, run, config):
        pass

    @alignbench.hookimpl
    def alignbench_respond(self, run, rows):
        return ["i do not know"] * (len(rows) - 1)


@alignbench.hookimpl
def alignbench_register_algorithms(register):
    register("silent", Silent, SilentConfig)
"""


def test_a_respond_of_the_wrong_length_is_one_line(tmp_path, cache_dir) -> None:
    """An algorithm answering 25 of 26 questions is stopped with one line, not misaligned rows."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "silent.py").write_text(RESPONDERS)
    registry = build_registry([str(folder)])
    with pytest.raises(PluginError, match=r"respond gave \d+ responses for \d+ questions — it"):
        _run(tmp_path, cache_dir, "algo=silent", registry=registry)


def test_respond_belongs_to_the_algorithm(tmp_path, cache_dir) -> None:
    """Another plugin answering evaluations would change every algorithm's results: refused."""

    class Intruder:
        @hookimpl
        def alignbench_respond(self, run, rows):
            raise AssertionError("must never be called")

    registry = build_registry()
    registry.pm.register(Intruder(), name="intruder")
    with pytest.raises(PluginError, match="alignbench_respond.*intruder"):
        _run(tmp_path, cache_dir, "algo=sft", registry=registry)
