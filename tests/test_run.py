"""End-to-end behaviour of a job: results files, budgets, determinism, caching, training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignbench.budget import UNITS
from alignbench.models import load_pretrained

SUMMARY_KEYS = {
    "test/accuracy_known",
    "test/hallucination_unknown",
    "test/abstain_unknown",
    "test/abstain_known",
    "test/reward",
    "eval_rl/accuracy_known",
    "eval_rl/hallucination_unknown",
    "budget/steps",
    "budget/samples",
    "budget/tokens",
    "budget/flops",
    "budget/seconds",
    "wall_time",
    "algorithm",
    "seed",
    "status",
}


def _numbers(summary: dict) -> dict:
    """Everything in a summary that must be reproducible (not timings, not paths)."""
    skip = ("budget/seconds", "wall_time", "output_dir", "model_dir", "stage/sft", "git_commit")
    return {k: v for k, v in summary.items() if k not in skip and k != "initial"}


@pytest.mark.parametrize("algo", ["sft", "rrhf"])
def test_job_writes_summary_and_metrics(tiny_job, tmp_path: Path, algo: str) -> None:
    """A job writes summary.json with the promised keys and one metrics line per step and eval."""
    summary = tiny_job(f"algo={algo}", "eval.points=3", "budget.amount=3")
    assert summary["status"] == "finished"
    assert SUMMARY_KEYS <= set(summary)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["test/accuracy_known"] == summary["test/accuracy_known"]
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["kind"] == "step"]
    evals = [x for x in lines if x["kind"] == "eval"]
    assert [x["step"] for x in steps] == [1, 2, 3]
    assert [x["step"] for x in evals] == [0, 1, 2, 3]
    for record in lines:
        assert {f"budget/{u}" for u in UNITS} <= set(record)
    assert steps[-1]["budget/steps"] == 3
    assert steps[0]["budget/flops"] > 0
    assert evals[0]["budget/flops"] == 0  # evaluation is not charged to the budget


def test_same_seed_same_numbers(tiny_job) -> None:
    """Same config and seed give identical summary numbers on CPU; another seed does not."""
    first = tiny_job("algo=rrhf", "budget.amount=3", out="a")
    second = tiny_job("algo=rrhf", "budget.amount=3", out="b")
    other = tiny_job("algo=rrhf", "budget.amount=3", "seed=1", out="c")
    assert _numbers(first) == _numbers(second)
    assert first["stage/sft"]["key"] == other["stage/sft"]["key"]  # same SFT model for all seeds
    assert _numbers(first) != _numbers(other)


def test_sft_stage_is_cached(tiny_job) -> None:
    """The second job with the same model/task/SFT config reuses the cached SFT model."""
    first = tiny_job("algo=sft", "stage.sft.lr=0.002", out="a")
    second = tiny_job("algo=rrhf", "stage.sft.lr=0.002", out="b")
    changed = tiny_job("algo=sft", "stage.sft.lr=0.001", out="c")
    assert first["stage/sft"]["cache_hit"] is False
    assert second["stage/sft"]["cache_hit"] is True
    assert second["stage/sft"]["key"] == first["stage/sft"]["key"]
    assert changed["stage/sft"]["cache_hit"] is False
    assert changed["stage/sft"]["key"] != first["stage/sft"]["key"]


@pytest.mark.parametrize(
    ("kind", "amount"), [("samples", 30), ("tokens", 60), ("flops", 2e9), ("steps", 4)]
)
def test_budget_kinds_stop_the_run(tiny_job, kind: str, amount: float) -> None:
    """Each budget unit stops the run at the first step that reaches its amount."""
    summary = tiny_job("algo=rrhf", f"budget.kind={kind}", f"budget.amount={amount}")
    spent = summary[f"budget/{kind}"]
    assert spent >= amount
    per_step = spent / summary["budget/steps"]
    assert spent - per_step < amount  # one step fewer would not have reached it


def test_rrhf_step_changes_every_parameter(tiny_job, tmp_path: Path) -> None:
    """Two RRHF steps move every trainable parameter of the policy away from the SFT model."""
    from alignbench.app import run_job
    from alignbench.registry import build_registry
    from tests.conftest import TINY, compose

    registry = build_registry()
    cfg = compose([*TINY, f"cache_dir={tmp_path / 'cache'}", "algo=rrhf"], registry)
    captured = {}

    class Capture:
        from alignbench import hookimpl

        @hookimpl
        def alignbench_on_run_end(self, run) -> None:
            captured["policy"] = {k: v.clone() for k, v in run.policy.state_dict().items()}
            captured["sft_path"] = run.sft_path

    registry.pm.register(Capture(), name="capture")
    try:
        run_job(cfg, tmp_path / "out", registry=registry)
    finally:
        registry.pm.unregister(name="capture")
    sft, _ = load_pretrained(captured["sft_path"])
    for name, before in sft.state_dict().items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        assert not torch.equal(before, captured["policy"][name]), f"{name} did not change"


def test_flops_are_charged_to_the_models_that_ran(tiny_job) -> None:
    """RRHF with SFT-model samples charges both the policy and the frozen SFT sampler."""
    summary = tiny_job("algo=rrhf", "algo.sft_model_samples=2")
    assert summary["flops_by_model"]["policy"] > 0
    assert summary["flops_by_model"]["sft_sampler"] > 0
    total = sum(summary["flops_by_model"].values())
    assert summary["budget/flops"] == pytest.approx(total)


def test_evaluations_happen_at_even_flop_points(tiny_job, tmp_path: Path) -> None:
    """With a FLOP budget, evaluations fall at the first step past each k/points of it."""
    summary = tiny_job("algo=sft", "budget.kind=flops", "budget.amount=2e8", "eval.points=4")
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [x["budget/flops"] for x in lines if x["kind"] == "eval"]
    steps = [x["budget/flops"] for x in lines if x["kind"] == "step"]
    assert len(evals) == 5 and evals[0] == 0 and evals[-1] == summary["budget/flops"]
    for k, flops in enumerate(evals[1:-1], start=1):
        point = k * 2e8 / 4
        assert flops >= point  # past the point ...
        assert steps[steps.index(flops) - 1] < point  # ... at the first step that got there
    assert summary["world"] == 0


def test_results_files_are_strict_json(tmp_path: Path) -> None:
    """A NaN metric is written as null: summary.json and metrics.jsonl never hold bare NaN."""
    from alignbench.observers import json_safe, write_json_atomic

    write_json_atomic(tmp_path / "s.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": 2})
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 2}
    assert json_safe({"x": {"y": float("-inf")}}) == {"x": {"y": None}}


def test_a_finished_job_exports_a_loadable_model(tiny_job, tmp_path: Path, cache_dir) -> None:
    """Every finished job leaves its trained policy as a Hugging Face folder that loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = tiny_job("algo=rrhf")
    folder = Path(summary["model_dir"])
    assert folder == tmp_path / "out" / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (folder / "generation_config.json").is_file()
    ids = tokenizer("what is the colour of", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == len(tokenizer)
    # The trained policy, not the SFT model it started from.
    start = load_pretrained(cache_dir / "sft" / summary["stage/sft"]["key"])[0].state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())
