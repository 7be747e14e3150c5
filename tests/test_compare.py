"""The comparison command: grouping by overrides minus seed, intervals, failed jobs shown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignbench.report.cli import main
from alignbench.report.plots import seed_band
from alignbench.report.stats import (
    bootstrap_ci,
    interquartile_mean,
    permutation_test,
    smallest_permutation_p,
)


def _job(sweep: Path, name: str, overrides: list[str], summary: dict | None) -> None:
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def _summary(algo: str, hallucination: float, status: str = "finished") -> dict:
    return {
        "status": status,
        "algorithm": algo,
        "test/hallucination_unknown": hallucination,
        "initial": {"test/hallucination_unknown": 0.8},
        "stage/sft": {"key": "abcdef0123456789"},
    }


def test_bootstrap_interval_contains_the_mean_and_shrinks_to_a_point() -> None:
    """The 95% interval brackets the mean; one value gives a point; equal values a point."""
    low, high = bootstrap_ci([0.1, 0.5, 0.3, 0.2])
    assert low <= 0.275 <= high and low < high
    assert bootstrap_ci([0.4]) == (0.4, 0.4)
    assert bootstrap_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2))


def test_table_groups_seeds_and_shows_failures(tmp_path: Path, capsys) -> None:
    """Seeds of one algorithm form one row; failed and unfinished jobs are counted, not hidden."""
    sweep = tmp_path / "sweep"
    _job(sweep, "0", ["algo=ppo", "seed=0"], _summary("ppo", 0.4))
    _job(sweep, "1", ["algo=ppo", "seed=1"], _summary("ppo", 0.6))
    _job(sweep, "2", ["algo=ppo", "seed=2"], _summary("ppo", 0.9, status="failed"))
    _job(sweep, "3", ["algo=rrhf", "seed=0"], _summary("rrhf", 0.3))
    _job(sweep, "4", ["algo=rrhf", "seed=1"], None)  # never finished
    assert main([str(sweep), "--metric", "test/hallucination_unknown"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:5]}
    assert "| 2/3 | 0.500 [0.400, 0.600] |" in rows["`algo=ppo` (baseline)"]
    assert "| 1/2 | 0.300 |" in rows["`algo=rrhf`"]  # one seed: no interval to show
    assert "| — | 0.800 |" in rows["stage-1 SFT model `abcdef01`"]
    assert (sweep / "comparison.md").read_text().strip() == table.strip()


def test_several_sweeps_make_one_table(tmp_path: Path, capsys) -> None:
    """Two sweep folders compare in one table written where --out says."""
    _job(tmp_path / "a", "0", ["algo=ppo", "seed=0"], _summary("ppo", 0.4))
    _job(tmp_path / "b", "0", ["algo=ppo", "algo.ptx_coef=0", "seed=0"], _summary("ppo", 0.5))
    out = tmp_path / "report.md"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "`algo=ppo`" in text and "`algo=ppo algo.ptx_coef=0`" in text


def test_not_a_sweep_is_one_line(tmp_path: Path, capsys) -> None:
    """A folder without jobs is a one-line error and exit code 2."""
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no jobs" in err and "\n" not in err


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {name} "))


def test_interquartile_mean_by_hand() -> None:
    """IQM cuts int(n/4) values at each end (rliable / scipy.stats.trim_mean(x, 0.25))."""
    assert interquartile_mean([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # mean of 2, 3, 4
    assert interquartile_mean([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # of 3, 4, 5, 6
    assert interquartile_mean([1, 2, 3]) == pytest.approx(2.0)  # n < 4: nothing is cut


def test_permutation_test_by_hand() -> None:
    """3 vs 3 cannot reach p < 0.05 (20 relabellings); 4 vs 4 can (70 relabellings)."""
    assert permutation_test([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert smallest_permutation_p(3, 3) == pytest.approx(0.1)
    assert permutation_test([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert smallest_permutation_p(4, 4) == pytest.approx(2 / 70)
    assert smallest_permutation_p(5, 3) == pytest.approx(1 / 56)
    assert permutation_test([0.5, 0.5], [0.5, 0.5]) == 1.0
    # |mean difference| >= 1 <=> the first group's sum is <= 9 or >= 12: 7 + 7 of 20 splits.
    assert permutation_test([1, 3, 5], [2, 4, 6]) == pytest.approx(14 / 20)
    # 10 vs 10 is Monte Carlo ((hits + 1) / (10000 + 1), never 0); exact p would be 2/184756.
    far = permutation_test(list(range(10)), [x + 100.0 for x in range(10)])
    assert 1 / 10_001 <= far < 0.001


def test_markers_are_honest_about_the_number_of_seeds(tmp_path: Path, capsys) -> None:
    """4 vs 4 separated seeds earn `*`; 3 vs 3 earn only `†`, and the note says why."""
    sweep = tmp_path / "sweep"
    for seed, (ppo, rrhf, sft) in enumerate(
        [(0.60, 0.40, 0.61), (0.62, 0.41, 0.59), (0.61, 0.42, 0.60), (0.63, 0.43, None)]
    ):
        _job(sweep, f"a{seed}", ["algo=ppo", f"seed={seed}"], _summary("ppo", ppo))
        _job(sweep, f"b{seed}", ["algo=rrhf", f"seed={seed}"], _summary("rrhf", rrhf))
        if sft is not None:
            _job(sweep, f"c{seed}", ["algo=sft", f"seed={seed}"], _summary("sft", sft))
    assert main([str(sweep), "--metric", "test/hallucination_unknown", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| `algo=ppo` (baseline) | 4/4 | 0.615 [" in out
    assert _row(out, "`algo=rrhf`").endswith("] * |")  # p = 2/70
    assert _row(out, "`algo=sft`").endswith("0.600 [0.590, 0.610] |")  # overlaps: no marker
    assert "`*` p < 0.05 in a two-sided permutation test" in out
    assert "| `algo=rrhf` | 0.029 * |" in out  # the p-value table
    # sft's sum of 3 of the 7 pooled values must be <= 1.80 (5 ways) or >= 1.8514 (2 ways).
    assert "| `algo=sft` | 0.200 |" in out
    assert "†" not in out  # nothing underpowered was separated

    sweep3 = tmp_path / "sweep3"
    for seed, (ppo, rrhf) in enumerate([(0.60, 0.40), (0.62, 0.41), (0.61, 0.42)]):
        _job(sweep3, f"a{seed}", ["algo=ppo", f"seed={seed}"], _summary("ppo", ppo))
        _job(sweep3, f"b{seed}", ["algo=rrhf", f"seed={seed}"], _summary("rrhf", rrhf))
    assert main([str(sweep3), "--metric", "test/hallucination_unknown", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert _row(out, "`algo=rrhf`").endswith(" † |")
    assert "*" not in _row(out, "`algo=rrhf`")
    assert "With 3 vs 3 seeds no permutation test can reach p < 0.05" in out
    assert "smallest possible p is 0.10" in out
    assert "| `algo=rrhf` | 0.100 † |" in out


def test_baseline_option_and_unknown_baseline(tmp_path: Path, capsys) -> None:
    """--baseline picks the reference group; an unknown one is a one-line error listing groups."""
    sweep = tmp_path / "sweep"
    for seed in range(2):
        _job(sweep, f"a{seed}", ["algo=ppo", f"seed={seed}"], _summary("ppo", 0.5 + seed / 10))
        _job(sweep, f"b{seed}", ["algo=rrhf", f"seed={seed}"], _summary("rrhf", 0.3 + seed / 10))
    args = [str(sweep), "--metric", "test/hallucination_unknown", "--no-plots"]
    assert main([*args, "--baseline", "`algo=rrhf`"]) == 0
    out = capsys.readouterr().out
    assert "| `algo=rrhf` (baseline) |" in out and "baseline `algo=rrhf`" in out
    assert main([*args, "--baseline", "algo=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'algo=ppo', 'algo=rrhf'" in err and "\n" not in err


def test_iqm_row_needs_five_seeds(tmp_path: Path, capsys) -> None:
    """Five seeds add an IQM row (hand value: mean of the middle three); three seeds do not."""
    sweep = tmp_path / "sweep"
    for seed, value in enumerate([0.1, 0.2, 0.3, 0.4, 1.0]):
        _job(sweep, f"a{seed}", ["algo=ppo", f"seed={seed}"], _summary("ppo", value))
    for seed in range(3):
        _job(sweep, f"b{seed}", ["algo=rrhf", f"seed={seed}"], _summary("rrhf", 0.2))
    metrics = ["--metric", "test/hallucination_unknown", "--metric", "budget/flops"]
    assert main([str(sweep), *metrics, "--no-plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ppo = lines.index(next(line for line in lines if line.startswith("| `algo=ppo`")))
    assert lines[ppo].startswith("| `algo=ppo` (baseline) | 5/5 | 0.400 [")
    assert lines[ppo + 1].startswith("| ↳ IQM | — | 0.300 [")  # (0.2 + 0.3 + 0.4) / 3
    assert lines[ppo + 1].endswith("| — |")  # no IQM of a cost such as budget/flops
    assert not lines[ppo + 2].startswith("| ↳ IQM")  # rrhf: only 3 seeds
    assert any(line.startswith("`↳ IQM`: interquartile mean") for line in lines)


def test_failed_jobs_are_listed_with_their_error(tmp_path: Path, capsys) -> None:
    """Failed and unfinished jobs are named under the table, with the error a failure recorded."""
    sweep = tmp_path / "sweep"
    _job(sweep, "0_ppo_facts_seed0", ["algo=ppo", "seed=0"], _summary("ppo", 0.4))
    failed = {**_summary("ppo", 0.9, status="failed"), "error": "RuntimeError: loss is nan"}
    _job(sweep, "1_ppo_facts_seed1", ["algo=ppo", "seed=1"], failed)
    _job(sweep, "2_ppo_facts_seed2", ["algo=ppo", "seed=2"], None)
    _job(sweep, "3_ppo_facts_seed3", ["algo=ppo", "seed=3"], _summary("ppo", 0.9, "running"))
    assert main([str(sweep), "--metric", "test/hallucination_unknown", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| 1/4 | 0.400 |" in out
    assert "- `sweep/1_ppo_facts_seed1` — failed: RuntimeError: loss is nan" in out
    assert "- `sweep/2_ppo_facts_seed2` — unfinished: no summary.json" in out
    assert "- `sweep/3_ppo_facts_seed3` — unfinished: status 'running'" in out
    assert "0_ppo_facts_seed0`" not in out


def test_group_by_keys(tmp_path: Path, capsys) -> None:
    """--group-by algo pools other overrides; a key not overridden is read from the summary."""
    sweep = tmp_path / "sweep"
    _job(sweep, "0", ["algo=ppo", "algo.lr=1", "seed=0"], _summary("ppo", 0.4))
    _job(sweep, "1", ["algo=ppo", "algo.lr=2", "seed=0"], _summary("ppo", 0.6))
    _job(sweep, "2", ["reward.wrong=-4", "seed=0"], _summary("rrhf", 0.3))
    args = [str(sweep), "--metric", "test/hallucination_unknown", "--no-plots"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "`algo=ppo algo.lr=1`" in out and "`algo=rrhf reward.wrong=-4`" in out
    assert main([*args, "--group-by", "algo"]) == 0
    out = capsys.readouterr().out
    assert "| `algo=ppo` (baseline) | 2/2 | 0.500 [0.400, 0.600] |" in out
    assert "| `algo=rrhf` | 1/1 | 0.300 |" in out
    assert main([*args, "--group-by", "algo", "--group-by", "reward.wrong"]) == 0
    out = capsys.readouterr().out
    assert "`algo=ppo reward.wrong=?`" in out and "`algo=rrhf reward.wrong=-4`" in out


def test_bad_options_are_one_line(tmp_path: Path, capsys) -> None:
    """A wrong --x is exit code 2 with one line, like a folder without jobs."""
    _job(tmp_path / "sweep", "0", ["algo=ppo", "seed=0"], _summary("ppo", 0.4))
    assert main([str(tmp_path / "sweep"), "--x", "hours"]) == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice: 'hours'" in err and "\n" not in err


def _curve(folder: Path, hallucination: list[float], flops_per_eval: float) -> None:
    lines = [
        {
            "kind": "eval",
            "step": 10 * i,
            "budget/flops": flops_per_eval * i,
            "budget/steps": 10.0 * i,
            "test/hallucination_unknown": h,
            "test/accuracy_known": 0.9 - h / 10,
        }
        for i, h in enumerate(hallucination)
    ]
    lines.insert(1, {"kind": "step", "step": 1, "budget/flops": 1.0, "objective/reward": 0.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_plots_are_written_and_linked(tmp_path: Path, capsys) -> None:
    """One PNG per eval metric (curves from metrics.jsonl) and the trade-off scatter, linked."""
    sweep = tmp_path / "sweep"
    for seed in range(2):
        for algo, curve in (("ppo", [0.8, 0.7, 0.6]), ("rrhf", [0.8, 0.5, 0.4 + seed / 10])):
            name = f"{algo}{seed}"
            summary = {**_summary(algo, curve[-1]), "test/accuracy_known": 0.9 - curve[-1] / 10}
            summary["initial"]["test/accuracy_known"] = 0.92
            _job(sweep, name, [f"algo={algo}", f"seed={seed}"], summary)
            _curve(sweep / name, curve, 1e9 * (1 + seed / 100))
    metrics = ["--metric", "test/hallucination_unknown", "--metric", "test/accuracy_known"]
    assert main([str(sweep), *metrics, "--metric", "eval_rl/reward"]) == 0
    names = {
        "comparison_test_hallucination_unknown.png",
        "comparison_test_accuracy_known.png",
        "comparison_tradeoff.png",
    }
    assert {
        p.name for p in sweep.glob("*.png")
    } == names  # eval_rl/ is not drawn (not a dev/ or test/ metric)
    for name in names:
        data = (sweep / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
        assert f"]({name})" in (sweep / "comparison.md").read_text()
    capsys.readouterr()
    out = tmp_path / "reports" / "steps.md"  # --out: the PNGs go next to it, named after it
    assert main([str(sweep), *metrics, "--x", "steps", "--out", str(out)]) == 0
    assert (out.parent / "steps_test_accuracy_known.png").stat().st_size > 10_000
    assert "![test/accuracy_known against budget/steps](steps_test_accuracy_known.png)" in (
        out.read_text()
    )
    assert main([str(sweep), *metrics, "--no-plots", "--out", str(tmp_path / "t.md")]) == 0
    assert not list(tmp_path.glob("t_*.png")) and "![" not in (tmp_path / "t.md").read_text()


def test_seed_band_interpolates_onto_the_shared_range() -> None:
    """Seeds evaluated at different budgets are compared on the x range they all cover."""
    a = (np.array([0.0, 10.0]), np.array([0.0, 1.0]))
    b = (np.array([0.0, 5.0, 8.0]), np.array([1.0, 1.0, 0.0]))
    grid, mean, low, high = seed_band([a, b], points=5)
    assert grid.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert low[0] == 0.0 and high[0] == 1.0 and mean[0] == 0.5
    assert mean[-1] == pytest.approx((0.8 + 0.0) / 2)


def test_hierarchical_interval_counts_world_to_world_variation() -> None:
    """Seeds that agree within worlds but worlds that disagree give a wide interval."""
    from alignbench.report.stats import hierarchical_ci

    worlds = [[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5], [0.9, 0.9, 0.9, 0.9]]
    low, high = hierarchical_ci(worlds)
    assert low < 0.3 and high > 0.7  # the worlds' spread, not the (zero) seed spread
    flat_low, flat_high = bootstrap_ci([v for w in worlds for v in w])
    assert high - low > flat_high - flat_low  # 12 "independent" jobs would understate it
    assert hierarchical_ci([[0.2, 0.4]]) == bootstrap_ci([0.2, 0.4])  # one world: seeds only
    assert hierarchical_ci([[0.3]]) == (0.3, 0.3)


def test_paired_difference_is_paired_by_world() -> None:
    """A constant +0.1 in every world is certain, however much the worlds differ."""
    from alignbench.report.stats import paired_difference_ci

    base = {"w0": [0.1, 0.1], "w1": [0.5, 0.5], "w2": [0.9, 0.9]}
    better = {w: [v + 0.1 for v in values] for w, values in base.items()}
    point, low, high = paired_difference_ci(better, base)
    assert point == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    assert paired_difference_ci(better, {"other": [0.0]}) is None


def test_area_and_compute_to_threshold_by_hand() -> None:
    """AUC = trapezoid mean; the threshold is crossed by linear interpolation; inf if never."""
    from alignbench.report.curves import area_under_curve, compute_to_threshold

    xs, ys = np.asarray([0.0, 1.0, 2.0]), np.asarray([0.0, 1.0, 1.0])
    assert area_under_curve(xs, ys) == pytest.approx((0.5 + 1.0) / 2)
    assert compute_to_threshold(xs, ys, 0.25) == pytest.approx(0.25)
    assert compute_to_threshold(xs, ys, 1.5) == float("inf")
    assert compute_to_threshold(xs, 1 - ys, 0.5, higher=False) == pytest.approx(0.5)


def _world_sweep(sweep: Path) -> None:
    """Two algorithms x 3 worlds x 2 seeds; `fast` gets all its gain by half the budget."""
    for world, start in enumerate((0.0, 0.2, -0.2)):
        for seed in range(2):
            for algo, curve in (
                ("slow", [0.0, 0.25, 0.5, 0.75, 1.0]),
                ("fast", [0.0, 0.8, 1.0, 1.0, 1.0]),
            ):
                name = f"{algo}_w{world}_s{seed}"
                ys = [start + c + seed / 100 for c in curve]
                summary = {
                    "status": "finished",
                    "algorithm": algo,
                    "test/reward": ys[-1],
                    "initial": {"test/reward": start},
                    "stage/sft": {"key": f"world{world}"},
                }
                _job(sweep, name, [f"algo={algo}", f"seed={seed}", f"world={world}"], summary)
                lines = [
                    {"kind": "eval", "step": i, "budget/flops": 1e9 * i, "test/reward": y}
                    for i, y in enumerate(ys)
                ]
                (sweep / name / "metrics.jsonl").write_text(
                    "".join(json.dumps(r) + "\n" for r in lines)
                )


def test_worlds_aggregate_and_the_reach_question_is_answered(tmp_path: Path, capsys) -> None:
    """Groups span worlds (not split by them); the report answers the reach question."""
    sweep = tmp_path / "sweep"
    _world_sweep(sweep)
    args = [str(sweep), "--metric", "test/reward", "--no-plots", "--baseline", "algo=slow"]
    assert main([*args, "--reach", "algo=fast", "algo=slow"]) == 0
    out = capsys.readouterr().out
    assert "| `algo=fast` | 6/6 (3 worlds) |" in out and "world=" not in out.split("\n")[2]
    assert "difference from `algo=slow`" in out and "world-to-world spread" in out
    assert "Does `algo=fast` reach ≥ 90% of `algo=slow`'s gain" in out
    assert "**Yes**" in out
    assert main([*args, "--reach", "algo=slow", "algo=fast"]) == 0
    assert "**No**" in capsys.readouterr().out  # at half budget slow has 0.5 of fast's 1.0


def test_overrides_shared_by_every_job_are_shown_once(tmp_path: Path, capsys) -> None:
    """`+experiment=x` on every job is stated once, not repeated in every group name."""
    sweep = tmp_path / "sweep"
    for seed in range(2):
        for algo in ("ppo", "rrhf"):
            overrides = [f"algo={algo}", f"seed={seed}", "+experiment=x", "threads=1"]
            _job(sweep, f"{algo}{seed}", overrides, _summary(algo, 0.5))
    assert main([str(sweep), "--metric", "test/hallucination_unknown", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| `algo=ppo` (baseline) | 2/2 |" in out and "| `algo=rrhf` | 2/2 |" in out
    assert "Every job shares: `+experiment=x`." in out and "threads" not in out


def test_report_states_command_commit_and_versions(tmp_path: Path, capsys) -> None:
    """The report says which command, code commit and libraries made its numbers."""
    sweep = tmp_path / "sweep"
    summary = {**_summary("ppo", 0.5), "git_commit": "0123456789abcdef", "versions": {}}
    summary["versions"] = {"torch": "2.13.0", "transformers": "5.0"}
    _job(sweep, "0", ["algo=ppo", "seed=0"], summary)
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [algo=ppo, 'seed=0,1']\n"
        "    hydra: [hydra.sweep.dir=sweep, hydra.mode=MULTIRUN]\n"
    )
    assert main([str(sweep), "--metric", "test/hallucination_unknown", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "`python -m alignbench --multirun algo=ppo seed=0,1 hydra.sweep.dir=sweep`" in out
    assert "commit 0123456789ab" in out and "torch 2.13.0, transformers 5.0" in out


def test_every_command_into_one_sweep_folder_is_named(tmp_path: Path) -> None:
    """Two multiruns into one folder: the start callback appends each command to
    commands.jsonl (Hydra's multirun.yaml keeps the last only) and the report names both."""
    from omegaconf import OmegaConf

    from alignbench.cli import FailedJobs
    from alignbench.report.jobs import provenance_note

    sweep = tmp_path / "sweep"
    for seed in ("seed=0", "seed=1", "seed=1"):  # the same command twice is named once
        config = OmegaConf.create(
            {
                "hydra": {
                    "sweep": {"dir": str(sweep)},
                    "overrides": {
                        "task": ["algo=ppo", seed],
                        "hydra": [f"hydra.sweep.dir={sweep}", "hydra.mode=MULTIRUN"],
                    },
                }
            }
        )
        FailedJobs().on_multirun_start(config)
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: [algo=ppo, seed=1]\n")
    note = provenance_note([sweep], [])
    assert note.count("`python -m alignbench --multirun algo=ppo seed=") == 2, note
    assert f"algo=ppo seed=0 hydra.sweep.dir={sweep}`" in note and "MULTIRUN" not in note


def test_where_keeps_only_matching_jobs(tmp_path: Path, capsys) -> None:
    """`--where reward=x` keeps the jobs with that override; an unmatched one is one line."""
    sweep = tmp_path / "sweep"
    _job(sweep, "0", ["algo=ppo", "reward=a", "seed=0"], _summary("ppo", 0.5))
    _job(sweep, "1", ["algo=ppo", "reward=b", "seed=0"], _summary("ppo", 0.7))
    args = [str(sweep), "--metric", "test/hallucination_unknown", "--no-plots"]
    assert main([*args, "--where", "reward=b"]) == 0
    out = capsys.readouterr().out
    assert "0.700" in out and "0.500" not in out
    assert main([*args, "--where", "reward=c"]) == 2
    assert "no job has this override" in capsys.readouterr().err


def test_a_duplicate_config_is_counted_once(tmp_path: Path, capsys) -> None:
    """Two folders holding the same config (same fingerprint) are one measurement, not 2 seeds."""
    sweep = tmp_path / "sweep"
    _job(sweep, "0_ppo", ["algo=ppo", "seed=0"], {**_summary("ppo", 0.4), "fingerprint": "f0"})
    _job(sweep, "1_ppo", ["algo=ppo", "seed=1"], {**_summary("ppo", 0.2), "fingerprint": "f1"})
    _job(sweep, "2_ppo", ["algo=ppo", "seed=0"], {**_summary("ppo", 0.4), "fingerprint": "f0"})
    assert main([str(sweep), "--metric", "test/hallucination_unknown", "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "| 2/2 |" in captured.out  # two jobs, not three
    assert "`sweep/2_ppo` has the same config as `sweep/0_ppo`: counted once" in captured.out
    assert "1 duplicate job(s) counted once" in captured.err


def test_a_method_that_trains_nothing_is_named_not_plotted(tmp_path: Path, capsys) -> None:
    """best-of-N ends at 0 training FLOPs: it is left out of the curves (which would otherwise
    have a common budget of 0) and named under the table."""
    sweep = tmp_path / "sweep"
    _world_sweep(sweep)
    for seed in range(2):
        name = f"bon_s{seed}"
        summary = {
            "status": "finished",
            "algorithm": "best_of_n",
            "test/reward": 0.7,
            "initial": {"test/reward": 0.0},
            "stage/sft": {"key": "world0"},
        }
        _job(sweep, name, ["algo=best_of_n", f"seed={seed}", "world=0"], summary)
        lines = [
            {"kind": "eval", "step": 0, "budget/flops": 0.0, "test/reward": y} for y in (0, 0.7)
        ]
        (sweep / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main([str(sweep), "--metric", "test/reward", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "Left out of the curves: `algo=best_of_n` — no training compute" in out
    assert "| `algo=fast` | 1.000 [" not in out  # the curves still have their real budget
    assert "at 1/4 of the budget" in out and "| `algo=best_of_n` (baseline) | 2/2" in out


def test_the_old_module_names_still_work() -> None:
    """``alignbench.compare`` and ``alignbench.curves`` re-export the report package's names."""
    from alignbench import compare, curves
    from alignbench.report import curves as report_curves
    from alignbench.report import jobs, metrics

    assert all(hasattr(compare, name) for name in compare.__all__)
    assert compare.main is main and compare.bootstrap_ci is bootstrap_ci
    assert compare.IGNORED_KEYS is jobs.IGNORED_KEYS and compare.TRADEOFF is metrics.TRADEOFF
    assert all(getattr(curves, n) is getattr(report_curves, n) for n in curves.__all__)
