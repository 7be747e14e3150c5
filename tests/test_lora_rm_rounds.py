"""A LoRA reward model with online feedback rounds: stage 2 trains it as adapters and caches it
merged; the job gives the merged model fresh adapters (the same r, alpha, dropout and target
modules) and every round retrains those and the head, never the trunk's base weights. FLOPs count
the adapters, checkpoints carry them (a resumed job equals a straight one), and on two processes
rank 0's retrained adapters reach the other rank."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

pytest.importorskip("peft")

from alignbench import Interrupted, distributed, hookimpl  # noqa: E402
from alignbench.budget import FlopCounter, _matmul_parameters  # noqa: E402
from alignbench.config import LoraConfig, ModelConfig, RMStageConfig  # noqa: E402
from alignbench.hardware import check_hardware  # noqa: E402
from alignbench.job import run_job  # noqa: E402
from alignbench.lora import (  # noqa: E402
    check_lora,
    has_adapters,
    make_trainable,
    online_adapters,
    plain_copy,
)
from alignbench.model_folders import load_scalar_model  # noqa: E402
from alignbench.models import ScalarHeadModel, build_model, build_tokenizer, freeze  # noqa: E402
from alignbench.registry import build_registry  # noqa: E402
from alignbench.rm.feedback import Group  # noqa: E402
from alignbench.rm.model import RewardModel  # noqa: E402
from tests.conftest import TINY, compose  # noqa: E402

LORA_RM = ["model.lora.r=4", "model.lora.targets=[policy,reward_model]"]
#: The brief's job: a tiny PPO on the learned reward model, two online rounds (at a third and two
#: thirds of 6 steps: steps 3 and 5), a checkpoint every step.
JOB = [
    "algo=ppo",
    "algo.samples_per_prompt=2",
    "algo.num_minibatches=2",
    *LORA_RM,
    "reward=rm",
    "feedback.rounds=2",
    "feedback.labels=12",
    "feedback.k=2",
    "stage.rm.epochs=2",
    "budget.amount=6",
    "checkpoint_every=1",
]
HEAD = {"head.weight", "head.bias"}


def _tiny() -> tuple[ScalarHeadModel, Any]:
    words = [f"w{i}" for i in range(20)]
    tokenizer = build_tokenizer(words)
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2)
    return freeze(ScalarHeadModel(build_model(config, tokenizer))), tokenizer


def _groups() -> list[Group]:
    return [
        Group({"prompt": f"w{i} w{i + 1}"}, [f"w{i + 2}", f"w{i + 3} w4"], preference=[1.0, 0.0])
        for i in range(6)
    ]


def _base(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's base weights under a plain model's names (adapters and head left out)."""
    return {
        k.replace(".base_layer.", "."): v
        for k, v in state.items()
        if "lora_" not in k and k not in HEAD
    }


def _retrained(network: ScalarHeadModel, tokenizer: Any) -> tuple[dict[str, float], float]:
    """One online arrival of six groups (4 epochs): its statistics and the FLOPs charged."""
    flops = FlopCounter()
    flops.track(network, "reward_model")
    model = RewardModel(network, tokenizer, RMStageConfig(epochs=4, batch_size=2))
    model.pending = [(0, _groups())]
    stats = model.arrive(0)
    flops.close()
    return stats, flops.total


def test_a_lora_reward_model_with_rounds_is_accepted_and_reward_path_stays_refused() -> None:
    """The refusal is gone (check_lora, check_hardware); model.lora's own checks remain."""
    check_lora(LoraConfig(r=4, targets=["reward_model"]))
    cfg = compose(["reward=rm", "feedback.rounds=2", *LORA_RM])
    assert check_hardware(cfg).type == "cpu"
    from alignbench.errors import ConfigError

    with pytest.raises(ConfigError, match="model.lora.alpha=0"):
        check_lora(LoraConfig(r=4, alpha=0.0, targets=["reward_model"]))


def test_online_adapters_score_as_the_merged_model_and_are_seeded() -> None:
    """Fresh adapters (B = 0): the same scores bit for bit, all frozen; the same seed gives the
    same adapters, and the caller's random stream is left as it was."""
    plain, _ = _tiny()
    ids = torch.randint(3, 20, (3, 7))
    mask = torch.ones_like(ids)
    before = torch.get_rng_state()
    adapted = online_adapters(copy.deepcopy(plain), LoraConfig(r=4, targets=["reward_model"]), 5)
    assert torch.equal(torch.get_rng_state(), before)
    assert has_adapters(adapted) and not has_adapters(plain)
    assert not any(p.requires_grad for p in adapted.parameters()) and not adapted.training
    with torch.no_grad():
        assert torch.equal(adapted(ids, mask), plain(ids, mask))
    again = online_adapters(copy.deepcopy(plain), LoraConfig(r=4, targets=["reward_model"]), 5)
    other = online_adapters(copy.deepcopy(plain), LoraConfig(r=4, targets=["reward_model"]), 6)
    lora_a = [k for k in adapted.state_dict() if "lora_A" in k]
    assert lora_a and all(
        torch.equal(adapted.state_dict()[k], again.state_dict()[k]) for k in lora_a
    )
    assert not all(torch.equal(adapted.state_dict()[k], other.state_dict()[k]) for k in lora_a)
    # The adapters follow model.lora (target modules, rank).
    modules = LoraConfig(r=2, target_modules=["k_proj"], targets=["reward_model"])
    only_k = online_adapters(copy.deepcopy(plain), modules, 0)
    names = [k for k in only_k.state_dict() if "lora_A" in k]
    assert names and all("k_proj" in k for k in names)
    assert {tuple(only_k.state_dict()[k].shape)[0] for k in names} == {2}


def test_a_round_retrains_only_adapters_and_head_charged_with_the_adapters() -> None:
    """After an arrival the trunk's base weights are bit-identical, the adapters and the head
    changed, everything is frozen again; FLOPs are those of the dense count over base +
    adapters (the same passes as a plain model's retraining, scaled by the parameters)."""
    plain, tokenizer = _tiny()
    network = online_adapters(copy.deepcopy(plain), LoraConfig(r=4, targets=["reward_model"]), 0)
    start = {k: v.clone() for k, v in network.state_dict().items()}
    stats, flops = _retrained(network, tokenizer)
    assert stats["feedback/groups"] == 6.0
    after = network.state_dict()
    assert after.keys() == start.keys()
    base = _base(after)
    assert base.keys() == _base(plain.state_dict()).keys()
    assert all(torch.equal(v, _base(start)[k]) for k, v in base.items())
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in base.items())
    assert not torch.equal(after["head.weight"], start["head.weight"])
    changed = {k for k in after if not torch.equal(after[k], start[k])}
    assert changed - HEAD and all("lora_" in k for k in changed - HEAD)
    assert any(after[k].abs().sum() > 0 for k in after if "lora_B" in k)
    assert not any(p.requires_grad for p in network.parameters())
    # The same arrival on the plain model: the same passes, so FLOPs scale with parameters.
    full = copy.deepcopy(plain)
    _, flops_full = _retrained(full, tokenizer)
    n_lora, n_full = sum(_matmul_parameters(network)), sum(_matmul_parameters(plain))
    adapters = sum(v.numel() for k, v in start.items() if "lora_" in k)
    assert n_lora == n_full + adapters
    assert flops > 0 and flops * n_full == flops_full * n_lora
    # The plain reward model still retrains whole (the path without LoRA is unchanged).
    assert all(
        not torch.equal(v, plain.state_dict()[k])
        for k, v in _base(full.state_dict()).items()
        if "embed" not in k
    )


def test_make_trainable_and_the_export_of_a_reward_model_with_online_adapters(
    tmp_path: Path,
) -> None:
    """A plain model becomes trainable whole; one with adapters, its adapters and head. The
    export folds the adapters in (a copy: the network keeps them) and scores as the network."""
    plain, tokenizer = _tiny()
    assert all(p.requires_grad for p in make_trainable(copy.deepcopy(plain)).parameters())
    network = online_adapters(copy.deepcopy(plain), LoraConfig(r=4, targets=["reward_model"]), 0)
    trainable = {n for n, p in make_trainable(network).named_parameters() if p.requires_grad}
    assert HEAD <= trainable and all("lora_" in n for n in trainable - HEAD)
    freeze(network)
    _retrained(network, tokenizer)  # adapters no longer zero
    merged = plain_copy(network)
    assert set(merged.state_dict()) == set(plain.state_dict()) and has_adapters(network)
    model = RewardModel(network, tokenizer)
    loaded, _ = load_scalar_model(model.export(tmp_path / "rm"), "reward.path", "reward")
    ids = torch.randint(3, 20, (3, 7))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), network(ids, mask), rtol=1e-5, atol=1e-6)


class Capture:
    """Keeps the run at the end of a job."""

    @hookimpl
    def alignbench_on_run_end(self, run: Any, summary: dict) -> None:
        self.run = run


class StopAtStep4:
    """SIGTERM after the 4th update (after the first round, at step 3)."""

    @hookimpl(wrapper=True)
    def alignbench_update(self, run: Any) -> Any:
        stats = yield
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return stats


def _numbers(summary: dict) -> dict:
    skip = ("budget/seconds", "wall_time", "output_dir", "model_dir", "stage/sft", "stage/rm")
    skip += ("skipped", "git_commit")
    return {k: v for k, v in summary.items() if k not in skip}


@pytest.mark.slow
def test_a_ppo_job_with_a_lora_reward_model_and_rounds_resumes_exactly(
    tiny_job, tmp_path: Path
) -> None:
    """The brief's job finishes; its two rounds changed only the adapters and the head (the
    trunk's base is stage 2's cached, merged model bit for bit); stopped by a signal after the
    first round and resumed, it ends with the straight run's numbers and reward model."""
    registry = build_registry()
    straight_run = Capture()
    registry.pm.register(straight_run, name="capture")
    straight = tiny_job(*JOB, registry=registry, out="straight")
    assert straight["status"] == "finished" and straight["steps"] == 6
    lines = [
        json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    rounds = [x for x in lines if "feedback/groups" in x]
    assert len(rounds) == 2 and rounds[0]["feedback/groups"] < rounds[1]["feedback/groups"]
    reward = straight_run.run.reward.reward_model
    cached = load_file(reward.folder / "model.safetensors")
    state = reward.network.state_dict()
    assert _base(state).keys() == {k for k in cached if k not in HEAD}
    assert all(torch.equal(v, cached[k]) for k, v in _base(state).items())
    assert not torch.equal(state["head.weight"], cached["head.weight"])
    assert any(state[k].abs().sum() > 0 for k in state if "lora_B" in k)
    assert straight["flops_by_model"]["reward_model"] > 0

    stopping = build_registry()
    stopping.pm.register(StopAtStep4(), name="stop")
    with pytest.raises(Interrupted):
        tiny_job(*JOB, registry=stopping, out="resumed")
    registry = build_registry()
    resumed_run = Capture()
    registry.pm.register(resumed_run, name="capture")
    resumed = tiny_job(*JOB, registry=registry, out="resumed")
    assert _numbers(resumed) == _numbers(straight)
    again = resumed_run.run.reward.reward_model.network.state_dict()
    assert again.keys() == state.keys()
    assert all(torch.equal(again[k], v) for k, v in state.items())


# -- two processes --------------------------------------------------------------------------------


class RewardStates:
    """Records the reward network's whole state (adapters included) after every step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    @hookimpl
    def alignbench_on_step_end(self, run: Any) -> None:
        network = run.reward.model
        self.states.append({k: v.detach().clone() for k, v in network.state_dict().items()})


def _worker(rank: int, world: int, port: int, cache_dir: Path, out: Path) -> None:
    """One rank of a two-process job with a LoRA reward model and two online rounds."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    distributed.setup()
    registry = build_registry()
    states = RewardStates()
    registry.pm.register(states, name="test:states")
    job = [*JOB[:-1], "budget.amount=4"]  # rounds at steps 3 and 4, no checkpoints needed
    cfg = compose([*TINY, f"cache_dir={cache_dir}", *job], registry)
    folder = out / ("job" if rank == 0 else "job-rank1")
    summary = run_job(cfg, folder, registry=registry)
    torch.save({"summary": summary, "states": states.states}, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_hold_the_same_adapters_after_every_round(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Rank 0 retrains the adapters and head; after every step rank 1 holds exactly rank 0's
    reward network, adapters included (broadcast_module walks the state_dict), and the rounds
    changed its adapters and head, never its trunk's base."""
    mp.start_processes(
        _worker, args=(2, _free_port(), cache_dir, tmp_path), nprocs=2, start_method="spawn"
    )
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert rank0["summary"]["status"] == rank1["summary"]["status"] == "finished"
    assert len(rank0["states"]) == len(rank1["states"]) == 4
    for a, b in zip(rank0["states"], rank1["states"], strict=True):
        assert a.keys() == b.keys() and any("lora_B" in k for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a)
    first, last = rank0["states"][0], rank0["states"][-1]
    changed = {k for k in first if not torch.equal(first[k], last[k])}
    assert HEAD <= changed and all("lora_" in k for k in changed - HEAD)
