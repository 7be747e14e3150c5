"""Data parallelism on the CPU (issue 14 item 4): two gloo processes train like one process on
the same global batch (PPO, also on the learned reward model, RRHF, GRPO, RLOO, REINFORCE++,
DPO and online DPO: losses and weights within 1e-5), best-of-N answers as one process does,
only rank 0 writes, and a two-process job resumes exactly. One spawn of two workers does every
two-process part."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from alignbench import distributed
from alignbench import hookimpl as alignbench_hookimpl
from alignbench.batch import Batch
from alignbench.job import Job, run_job
from alignbench.registry import build_registry
from tests.conftest import TINY, compose

#: Four prompts a step (two per rank), two steps; PPO's one mini-batch sees each rank's half.
PROMPTS = 4
ALGOS = {
    "ppo": ["algo=ppo", "algo.num_minibatches=1", "algo.ppo_epochs=2", "algo.ptx_batch_size=4"],
    "rrhf": ["algo=rrhf"],
    # One demonstration a mini-batch for two ranks: rank 1's PPO-ptx shard is empty.
    "ppo_one_demo": [
        "algo=ppo",
        "algo.num_minibatches=1",
        "algo.ppo_epochs=2",
        "algo.ptx_batch_size=1",
    ],
    # Each loss normaliser of GRPO (responses, tokens, Dr. GRPO's constant) and the batch-wide
    # reward scale; RLOO's batch-normalised advantages; REINFORCE++'s whitening over every
    # rank's tokens, and ReMax's greedy baseline with the batch std.
    "grpo": ["algo=grpo", "algo.ppo_epochs=2"],
    "grpo_token_mean": ["algo=grpo", "algo.loss_type=token_mean", "algo.scale_rewards=batch"],
    "grpo_dr": ["algo=grpo", "algo.loss_type=dr_grpo", "algo.scale_rewards=none", "algo.beta=0"],
    "rloo": ["algo=rloo", "algo.ppo_epochs=2", "algo.normalize_advantages=true"],
    "reinforce_pp": ["algo=reinforce_pp", "algo.ppo_epochs=2"],
    "reinforce_pp_greedy": ["algo=reinforce_pp", "algo.baseline=greedy"],
    # Offline DPO draws the step's pairs itself (each rank its shard; the reference's values
    # shared); online DPO's pairs from the rewards, where at step 1 every prompt of rank 1 ties.
    "dpo": ["algo=dpo"],
    "online_dpo": ["algo=online_dpo"],
    # The learned reward model (stage 2 once, loaded by both ranks) scoring PPO's batch.
    "ppo_rm": ["algo=ppo", "algo.num_minibatches=1", "reward=rm", "feedback.rounds=0"],
    # Mini-batches of the global batch (one process's shuffle): 2 rows of 16 each, so some
    # hold rows of one rank only and the other takes its part with a stand-in row.
    "ppo_minibatches": ["algo=ppo", "algo.num_minibatches=8", "algo.ppo_epochs=2"],
    "grpo_minibatches": ["algo=grpo", "algo.num_minibatches=8", "algo.ppo_epochs=2"],
    "rloo_minibatches": ["algo=rloo", "algo.num_minibatches=8", "algo.ppo_epochs=2"],
    "reinforce_pp_minibatches": [
        "algo=reinforce_pp",
        "algo.num_minibatches=8",
        "algo.ppo_epochs=2",
    ],
}
#: The algorithms trained on seeded synthetic rewards (the same on every rank): RRHF's and
#: online DPO's distinct (ties are broken with each rank's own stream), the others' on three
#: levels, so that some groups have no signal and most do. DPO's reward is its labels.
SYNTHETIC_REWARDS = {name for name in ALGOS if not name.startswith(("ppo", "dpo"))}
DISTINCT_REWARDS = {"rrhf", "online_dpo"}
#: Those whose rollout keeps its own shard (DPO's data are its pairs, not the loop's prompts).
SHARDS_ITSELF = {"dpo"}
#: The loss each algorithm must have moved (a test that compares zeros proves nothing).
LOSS = {"rrhf": "loss/total", "dpo": "loss/dpo", "online_dpo": "loss/dpo"}
#: Whole two-process jobs (one step) of the algorithms and rewards that rank 0 alone must write
#: for, beside RRHF's: best-of-N decodes with top_k=1, so its answers do not depend on a rank's
#: sampling stream and must equal one process's.
JOBS = {
    "dpo": ["algo=dpo", "budget.amount=1"],
    "online_dpo": ["algo=online_dpo", "budget.amount=1"],
    "best_of_n": ["algo=best_of_n", "algo.n=2", "algo.sampling.top_k=1"],
    "ppo_rm": ["algo=ppo", "reward=rm", "feedback.rounds=0", "budget.amount=1"],
    # Online rounds: rank 0 asks for feedback and retrains; every rank then holds its weights.
    "ppo_rm_rounds": ["algo=ppo", "reward=rm", "feedback.rounds=2", "budget.amount=3"],
}
#: A job with online rounds at steps 3 and 4 (of 4), a checkpoint every step: run straight, and
#: stopped at step 4 (its checkpoint is step 3's, after the first round) then resumed.
ROUNDS_JOB = ["algo=ppo", "reward=rm", "feedback.rounds=2", "budget.amount=4"]
ROUNDS_JOB += ["checkpoint_every=1"]
TOLERANCE = 1e-5


def _rows(batch: Batch, first: int, count: int) -> Batch:
    """The sequences of prompts ``first .. first + count`` of ``batch`` (what one rank holds)."""
    n, k = batch.num_sequences, batch.group_size
    rows = slice(first * k, (first + count) * k)

    def cut(value: Any) -> Any:
        return (
            value[rows]
            if isinstance(value, torch.Tensor) and value.dim() and len(value) == n
            else value
        )

    return replace(
        batch,
        prompts=batch.prompts[first : first + count],
        input_ids=batch.input_ids[rows],
        attention_mask=batch.attention_mask[rows],
        response_mask=batch.response_mask[rows],
        responses=batch.responses[rows],
        sources=batch.sources[rows],
        logprobs=cut(batch.logprobs),
        rewards=cut(batch.rewards),
        extras={key: cut(value) for key, value in batch.extras.items()},
    )


def train_on_the_global_batch(algo: str, cache_dir: Path, out: Path) -> dict[str, Any]:
    """Two update steps of ``algo`` on the same global batches, whatever the world size: every
    rank rolls out all the prompts from one seeded stream and updates on its own shard. Returns
    the steps' statistics and the policy's final weights."""
    registry = build_registry()
    cfg = compose([*TINY, f"cache_dir={cache_dir}", *ALGOS[algo]], registry)
    job = Job(cfg, out / f"{algo}-rank{distributed.rank()}", registry)
    run = job.build()
    job.start()
    prompts = run.task.splits["rl"].to_list()[:PROMPTS]
    hook, steps = run.pm.hook, []
    try:
        for step in range(2):
            run.generator.manual_seed(100 + step)  # the same global batch on every rank
            batch = hook.alignbench_rollout(run=run, prompts=prompts)
            batch = hook.alignbench_score(run=run, batch=batch)
            if algo in SYNTHETIC_REWARDS:
                order, n = torch.Generator().manual_seed(step), batch.num_sequences
                batch.rewards = (
                    torch.randperm(n, generator=order).float()
                    if algo in DISTINCT_REWARDS
                    else torch.randint(0, 3, (n,), generator=order).float()
                )
                if algo == "online_dpo" and step == 0:
                    batch.rewards[n // 2 :] = 0.0  # rank 1's prompts: no pair there
            share = PROMPTS // distributed.world_size()
            mine = (
                batch if algo in SHARDS_ITSELF else _rows(batch, distributed.rank() * share, share)
            )
            run.generator.manual_seed(200 + step + distributed.rank())
            steps.append(hook.alignbench_update(run=run, batch=mine))
    finally:
        job.close()
    weights = {k: v.detach().clone() for k, v in run.policy.state_dict().items()}
    if algo == "dpo":  # every rank holds every pair's reference values (NaN: not seen yet)
        weights["reference_cache"] = job.algorithm.reference_cache.values.nan_to_num(-1.0)
    return {"steps": steps, "weights": weights}


class RewardWeights:
    """An observer that records a checksum of the learned reward model's weights at each step."""

    def __init__(self) -> None:
        self.sums: list[float] = []
        self.flops: list[float] = []

    @alignbench_hookimpl
    def alignbench_on_step_end(self, run: Any) -> None:
        """Sum the reward network's parameters (they change only at online rounds), and note
        the reward model's FLOPs this rank spent so far."""
        network = run.reward.model
        self.sums.append(float(sum(p.double().sum() for p in network.parameters())))
        self.flops.append(float(run.flops.by_model.get("reward_model", 0.0)))


class StopAtStep:
    """An observer that fails the job at ``step`` on every rank (a crash after a checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @alignbench_hookimpl
    def alignbench_on_step_end(self, step: int) -> None:
        """Raise at the chosen step."""
        if step == self.step:
            raise RuntimeError(f"stopped at step {step} by the test")


RRHF_JOB = ["algo=rrhf", "budget.amount=4", "checkpoint_every=2"]


def whole_job(
    cache_dir: Path, folder: Path, overrides: list[str] = RRHF_JOB, stop_at: int = 0
) -> dict[str, Any]:
    """A tiny job through run_job, by default RRHF's of 4 steps (checkpoints every 2); rank 1 is
    given its own folder, which must stay empty (rank 0 writes everything)."""
    registry = build_registry()
    if stop_at:
        registry.pm.register(StopAtStep(stop_at), name="test:stop")
    weights = RewardWeights()
    if "reward=rm" in overrides:
        registry.pm.register(weights, name="test:reward_weights")
    cfg = compose([*TINY, f"cache_dir={cache_dir}", *overrides], registry)
    where = folder if distributed.is_main_process() else folder.with_name(folder.name + "-rank1")
    try:
        result = run_job(cfg, where, registry=registry)
    except RuntimeError as exc:
        result = {"status": "failed", "error": str(exc)}
    return {**result, "reward_weights": weights.sums, "reward_flops": weights.flops}


def _worker(rank: int, world: int, port: int, cache_dir: Path, out: Path) -> None:
    """One rank of the two-process run: the equality steps, then a straight, a stopped and a
    resumed job; its results go to ``out/rank<r>.pt``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    distributed.setup()
    results: dict[str, Any] = {"main_process_first": _rank_0_fails_first()}
    for algo in ALGOS:
        results[algo] = train_on_the_global_batch(algo, cache_dir, out / "steps")
    results["straight"] = whole_job(cache_dir, out / "straight")
    results["stopped"] = whole_job(cache_dir, out / "resumed", stop_at=3)
    results["resumed"] = whole_job(cache_dir, out / "resumed")
    for name, overrides in JOBS.items():
        results[f"job_{name}"] = whole_job(cache_dir, out / f"job_{name}", overrides)
    results["rounds_straight"] = whole_job(cache_dir, out / "rounds_straight", ROUNDS_JOB)
    results["rounds_stopped"] = whole_job(cache_dir, out / "rounds_resumed", ROUNDS_JOB, 4)
    results["rounds_resumed"] = whole_job(cache_dir, out / "rounds_resumed", ROUNDS_JOB)
    torch.save(results, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Any]:
    """The one-process reference (here, after it the stage cache holds stage 1) and the two
    ranks' results."""
    out = tmp_path_factory.mktemp("distributed")
    single = {algo: train_on_the_global_batch(algo, cache_dir, out / "single") for algo in ALGOS}
    single["job_best_of_n"] = whole_job(cache_dir, out / "single_best_of_n", JOBS["best_of_n"])
    mp.start_processes(
        _worker, args=(2, _free_port(), cache_dir, out), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"single": single, "ranks": ranks, "out": out}


def _max_gap(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, str]:
    """The largest absolute difference between the matching numbers (statistics of each step,
    then weights) of two runs, and where it is."""
    gaps = [
        (abs(x[key] - y[key]), f"step {i + 1} {key}")
        for i, (x, y) in enumerate(zip(a["steps"], b["steps"], strict=True))
        for key in x
    ]
    gaps += [(float((a["weights"][k] - b["weights"][k]).abs().max()), k) for k in a["weights"]]
    return max(gaps)


@pytest.mark.slow
@pytest.mark.parametrize("algo", list(ALGOS))
def test_two_processes_train_like_one_on_the_same_global_batch(
    two_processes: dict[str, Any], algo: str
) -> None:
    """Every statistic of two update steps (losses, KL, grad norm, ...) and every weight of the
    policy afterwards: 2 gloo ranks on 2 prompts each == 1 process on all 4, within 1e-5; and
    both ranks hold the same weights. GRPO's, RLOO's and REINFORCE++'s groups stay on a rank."""
    single, (rank0, rank1) = two_processes["single"][algo], two_processes["ranks"]
    assert set(single["steps"][0]) == set(rank0[algo]["steps"][0])
    gap, where = _max_gap(single, rank0[algo])
    print(f"{algo}: largest |1 process - 2 processes| = {gap:.2e} ({where})")  # README quotes it
    assert gap < TOLERANCE
    assert _max_gap(rank0[algo], rank1[algo])[0] < TOLERANCE
    assert single["steps"][-1][LOSS.get(algo, "loss/policy")] != 0.0
    if algo == "online_dpo":  # rank 1 had no pair at step 1 and still took its part
        assert single["steps"][0]["online_dpo/tied_share"] == 0.5


@pytest.mark.slow
def test_only_rank_0_writes(two_processes: dict[str, Any]) -> None:
    """Rank 0 writes the job folder (results, checkpoints, exported model); rank 1, given its own
    folder, leaves nothing there, and its summary reports the same finished job."""
    out = two_processes["out"]
    folder = out / "straight"
    assert (folder / "summary.json").is_file() and (folder / "model").is_dir()
    assert (folder / "checkpoints" / "latest").is_file()
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 4 + 2  # 4 steps, 2 evals
    assert not (out / "straight-rank1").exists()
    assert not (out / "resumed-rank1").exists()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["budget/samples"] == 4 * 4 * 5
    rank1 = two_processes["ranks"][1]["straight"]
    assert rank1["status"] == "finished" and rank1["budget/samples"] == summary["budget/samples"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(JOBS))
def test_only_rank_0_writes_for_every_data_parallel_algorithm(
    two_processes: dict[str, Any], name: str
) -> None:
    """DPO, online DPO, best-of-N, and PPO on the learned reward model (stage 2 built once,
    loaded by both ranks, each scoring its shard): a whole two-process job finishes, rank 0
    writes its folder, rank 1 writes nothing and reports the same finished job."""
    out, (rank0, rank1) = two_processes["out"], two_processes["ranks"]
    folder = out / f"job_{name}"
    assert rank0[f"job_{name}"]["status"] == "finished", rank0[f"job_{name}"].get("error")
    assert (folder / "summary.json").is_file() and (folder / "model").is_dir()
    assert not folder.with_name(folder.name + "-rank1").exists()
    summary = json.loads((folder / "summary.json").read_text())
    assert rank1[f"job_{name}"]["status"] == "finished"
    assert rank1[f"job_{name}"]["steps"] == summary["steps"]


@pytest.mark.slow
def test_online_rounds_on_two_processes_keep_one_reward_model(
    two_processes: dict[str, Any],
) -> None:
    """reward=rm with online rounds on two processes: rank 0 asks for the feedback and retrains
    (its metrics show both rounds, charged once), and after every step both ranks hold the same
    reward model, which the rounds changed."""
    out, (rank0, rank1) = two_processes["out"], two_processes["ranks"]
    sums0, sums1 = (
        rank0["job_ppo_rm_rounds"]["reward_weights"],
        rank1["job_ppo_rm_rounds"]["reward_weights"],
    )
    assert len(sums0) == 3 and sums0 == sums1
    assert sums0[0] != sums0[-1]  # a round retrained it
    # Rank 1 only scores its shard (as rank 0 does), so it spends less on the reward model once
    # rank 0 has sampled and retrained for a round: the round is done, and charged, once.
    flops0, flops1 = (r["job_ppo_rm_rounds"]["reward_flops"] for r in (rank0, rank1))
    assert flops1[-1] > 0 and flops0[-1] > flops1[-1]
    lines = (out / "job_ppo_rm_rounds" / "metrics.jsonl").read_text().splitlines()
    retrained = [m for m in map(json.loads, lines) if "feedback/rm_loss" in m]
    assert len(retrained) == 2, [sorted(m) for m in map(json.loads, lines)]


@pytest.mark.slow
def test_a_two_process_job_with_online_rounds_resumes_exactly(
    two_processes: dict[str, Any],
) -> None:
    """Stopped at step 4 (resumed from step 3's checkpoint, after the first round) and run
    again on two processes: the second round and every metric are those of the straight run,
    and both ranks' reward models match it step by step."""
    out, (rank0, rank1) = two_processes["out"], two_processes["ranks"]
    assert rank0["rounds_stopped"]["status"] == "failed"

    def steps(folder: Path) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in m.items() if "seconds" not in k} for m in lines]

    assert steps(out / "rounds_resumed") == steps(out / "rounds_straight")
    straight = rank0["rounds_straight"]["reward_weights"]
    assert rank0["rounds_resumed"]["reward_weights"] == straight[3:]
    assert rank1["rounds_resumed"]["reward_weights"] == straight[3:]


@pytest.mark.slow
def test_best_of_n_answers_on_two_processes_as_on_one(two_processes: dict[str, Any]) -> None:
    """Each rank answers its half of the questions (N samples each, top_k=1: the same samples
    on any rank) and rank 0 gathers them: the final evaluation's metrics, FLOPs per question
    included (every rank's generations), equal one process's."""
    single = two_processes["single"]["job_best_of_n"]
    both = two_processes["ranks"][0]["job_best_of_n"]
    keys = [k for k, v in single.items() if isinstance(v, float) and "/" in k]
    keys = [k for k in keys if "seconds" not in k and "time" not in k]
    assert any(k.endswith("/flops_per_question") for k in keys)
    assert single["test/flops_per_question"] > single["initial"]["test/flops_per_question"]
    for key in keys:
        assert abs(single[key] - both[key]) < TOLERANCE, key


@pytest.mark.slow
def test_a_two_process_job_resumes_exactly(two_processes: dict[str, Any]) -> None:
    """Stopped at step 3 (after the step-2 checkpoint) on both ranks and run again on two
    processes: the same metrics line for line and the same summary numbers as a straight run."""
    out = two_processes["out"]
    assert two_processes["ranks"][0]["stopped"]["status"] == "failed"

    def steps(folder: Path) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in m.items() if "seconds" not in k} for m in lines]

    assert steps(out / "resumed") == steps(out / "straight")
    straight = json.loads((out / "straight" / "summary.json").read_text())
    resumed = json.loads((out / "resumed" / "summary.json").read_text())
    numbers = [k for k, v in straight.items() if isinstance(v, float) and "time" not in k]
    numbers = [k for k in numbers if "seconds" not in k]
    assert numbers and {k: resumed[k] for k in numbers} == {k: straight[k] for k in numbers}


def test_a_slurm_task_joins_its_ranks_before_it_claims_the_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Under hydra/launcher=slurm_ddp the command's own process starts no process group: each
    task's job function must join its ranks (distributed.setup) before it asks whether it is
    rank 0, or every task locks, checks and writes the folder as if it were."""
    from types import SimpleNamespace

    from alignbench import cli

    joined: list[bool] = []
    monkeypatch.setattr(distributed, "setup", lambda: joined.append(True))
    monkeypatch.setattr(distributed, "rank", lambda: 1 if joined else 0)
    hydra_cfg = SimpleNamespace(
        runtime=SimpleNamespace(output_dir=str(tmp_path / "job")),
        sweep=SimpleNamespace(dir=str(tmp_path)),
        mode=None,
        overrides=SimpleNamespace(task=[]),
    )
    monkeypatch.setattr(cli.HydraConfig, "get", staticmethod(lambda: hydra_cfg))
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "run_job", lambda *args, **kwargs: calls.append(kwargs) or {})

    def locked(folder: Path) -> Any:
        raise AssertionError(f"rank 1 locked {folder}")

    monkeypatch.setattr(cli.jobdir, "locked", locked)
    assert cli._job(compose([*TINY], build_registry())) is None
    assert joined and calls and calls[0]["claimed"] is True
    assert not (tmp_path / "job").exists()


def _rank_0_fails_first() -> str:
    """What this rank sees when rank 0 fails inside ``main_process_first`` (building a stage)."""
    try:
        with distributed.main_process_first():
            if distributed.is_main_process():
                raise ValueError("stage 1 failed on rank 0")
    except ValueError as exc:
        return f"raised: {exc}"
    return "ran the block"


@pytest.mark.slow
def test_when_rank_0_fails_to_build_a_stage_the_others_raise_its_error(
    two_processes: dict[str, Any],
) -> None:
    """main_process_first: rank 0 fails while building the cached stage, so the other ranks must
    not go on to build it themselves (writing the cache): they raise rank 0's error."""
    for rank in two_processes["ranks"]:
        assert rank["main_process_first"] == "raised: stage 1 failed on rank 0"


def test_mini_batches_of_two_ranks_are_those_of_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """distributed.minibatches: the rows each of two ranks (8 each) keeps of each mini-batch,
    moved to the global batch's numbering, are exactly one process's mini-batch of the 16 rows
    from the same generator (rank 0's); a rank with none there gets one stand-in row."""
    one = distributed.minibatches(16, 8, torch.Generator().manual_seed(3))
    assert all(present for _, present in one) and len(one) == 8
    order = torch.cat([rows for rows, _ in one])
    assert sorted(order.tolist()) == list(range(16))  # a shuffle of every row, cut in 8
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "gather", lambda value: [value, value])
    sent: dict[str, Any] = {}  # rank 0's broadcast, received by rank 1 (run after it)
    monkeypatch.setattr(distributed, "broadcast", lambda value: sent.setdefault("v", value))
    ranks = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "is_main_process", lambda r=r: r == 0)
        # Rank 1's generator is another stream: rank 0's permutation decides.
        ranks.append(distributed.minibatches(8, 8, torch.Generator().manual_seed(3 + 7 * r)))
    stand_ins = 0
    for (rows, _), (zero, present0), (first, present1) in zip(one, *ranks, strict=True):
        kept = (zero.tolist() if present0 else []) + ((8 + first).tolist() if present1 else [])
        assert sorted(kept) == sorted(rows.tolist())
        stand_ins += (not present0) + (not present1)
        for local, present in ((zero, present0), (first, present1)):
            assert len(local) >= 1 and (present or local.tolist() == [0])
    assert stand_ins > 0  # the stand-in path is taken with this seed


def test_the_learned_reward_is_data_parallel_with_and_without_online_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On two processes reward=rm passes the start-up check with and without online rounds
    (rank 0 does them and hands its weights on), as does a rule reward; a reward with its own
    before_step that does not say it keeps the ranks alike is refused in one line."""
    from alignbench import Reward
    from alignbench.errors import ConfigError
    from alignbench.job import check_data_parallel

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    registry = build_registry()

    def check(*overrides: str) -> None:
        check_data_parallel(registry, compose([*TINY, "algo=ppo", *overrides], registry))

    check("reward=rm", "feedback.rounds=0")
    check("reward=rm", "feedback.rounds=2")
    check("reward=abstention")

    class Drifting(registry.get("reward", "abstention").cls):  # type: ignore[misc,name-defined]
        def before_step(self, run: Any) -> dict[str, float]:
            return {}

    assert Drifting.changes_during_training(None) and not Reward.changes_during_training(None)
    entry, get = registry.get("reward", "abstention"), registry.get
    monkeypatch.setattr(
        registry,
        "get",
        lambda group, name: (
            replace(entry, cls=Drifting) if name == "abstention" else get(group, name)
        ),
    )
    with pytest.raises(ConfigError, match=r"^reward=abstention cannot run on 2 processes") as e:
        check("reward=abstention")
    assert "\n" not in str(e.value)
