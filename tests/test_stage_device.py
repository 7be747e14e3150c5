"""Stages 1 and 2 (and the online rounds) on the job's device and in its precision: bf16 / fp16
autocast really runs inside them, fp16 steps through a loss scaler, the FLOPs are those of fp32,
the weights are cached as fp32, and the cache key says where a stage was built, only when that
is not the CPU in fp32 (every default key stays what it was)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import alignbench.rm.selection as selection
import alignbench.rm.stage as rm_stage
import alignbench.rm.training as training
import alignbench.stages as stages
from alignbench.config import ModelConfig, RMStageConfig, to_object
from alignbench.errors import ConfigError
from alignbench.hardware import (
    _mps_available,
    check_precision,
    grad_scaler,
    scaled_step,
    stage_key,
    stage_record,
)
from alignbench.models import ScalarHeadModel, build_model, build_tokenizer
from alignbench.registry import build_registry
from alignbench.rm.feedback import Group
from alignbench.rm.model import RewardModel
from alignbench.sampling import SamplingParams
from alignbench_plugins.facts import FactsTask
from tests.conftest import TINY, compose

#: One SFT epoch and a handful of reward-model groups: stages to observe, not good models.
STAGE = [*TINY, "stage.sft.epochs=1"]
RM = [
    "reward=rm",
    "feedback.labels=8",
    "feedback.k=3",
    "stage.rm.epochs=2",
    "stage.rm.patience=0",  # a fixed number of epochs: the same passes in every precision
]


def _cfg(cache: Path, *overrides: str) -> Any:
    return compose([*STAGE, f"cache_dir={cache}", *overrides], build_registry())


def _task(cfg: Any) -> FactsTask:
    return FactsTask(to_object(cfg.task))


def _key(monkeypatch: pytest.MonkeyPatch, module: Any, call: Any) -> str:
    """The cache key a stage function computes (nothing is built)."""
    seen = []
    monkeypatch.setattr(module, "cached_stage", lambda _dir, _stage, key, *a, **k: seen.append(key))
    call()
    return seen[0]


def _autocast_state() -> tuple[bool, torch.dtype | None]:
    enabled = torch.is_autocast_enabled("cpu")
    return enabled, torch.get_autocast_dtype("cpu") if enabled else None


# -- the pieces -----------------------------------------------------------------------------------


def test_stage_key_is_empty_on_the_cpu_in_fp32() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 1)
    assert stage_key(cpu, "fp32") == [] and stage_record(cpu, "fp32") == {}
    assert stage_key(cpu, "bf16") == [{"hardware": {"device": "cpu", "precision": "bf16"}}]
    # The device's type, not its index: every rank of a job computes the same key.
    assert stage_key(cuda, "fp32") == stage_key(torch.device("cuda"), "fp32")
    assert stage_record(cuda, "fp16") == {"device": "cuda", "precision": "fp16"}


def test_scaled_step_without_a_scaler_is_backward_clip_step() -> None:
    """fp32 / bf16: bit-identical to the step the stages took before."""

    def model() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
        torch.manual_seed(0)
        layer = torch.nn.Linear(4, 3)
        return layer, torch.optim.AdamW(layer.parameters(), lr=0.1)

    seam, optimizer = model()
    assert scaled_step(
        seam(torch.ones(2, 4)).pow(2).sum(), optimizer, list(seam.parameters()), 0.5, None
    )
    plain, optimizer = model()
    plain(torch.ones(2, 4)).pow(2).sum().backward()
    torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.5)
    optimizer.step()
    for a, b in zip(seam.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_scaled_step_skips_an_overflow() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in layer.parameters()]
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    scaler = grad_scaler(torch.device("cpu"), "fp16")
    # 1e35 x the scale (65536) is past fp32's largest number: the scaled gradients are inf.
    loss = layer(torch.ones(2, 4)).pow(2).sum() * 1e35
    assert not scaled_step(loss, optimizer, list(layer.parameters()), 1.0, scaler)
    assert scaler.get_scale() == 32768.0
    assert all(torch.equal(a, b) for a, b in zip(layer.parameters(), before, strict=True))


def test_bf16_on_a_gpu_without_bf16_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A T4 (compute capability 7.5) is refused even though torch's is_bf16_supported() says
    True there (it counts emulation); an A100 (8.0) is accepted."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    with pytest.raises(ConfigError, match="precision=bf16 on Tesla T4: this GPU has no bf16"):
        check_precision("bf16", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    check_precision("bf16", torch.device("cuda"))


def test_a_stage_refuses_fp16_on_mps_before_any_folder(tmp_path: Path) -> None:
    """A library caller (no check_hardware before it) gets the job's one line, and no cache."""
    cfg = _cfg(tmp_path / "cache", "precision=fp16")
    with pytest.raises(ConfigError, match="precision=fp16 on device=mps"):
        stages.sft_stage(cfg, _task(cfg), torch.device("mps"))
    assert not (tmp_path / "cache").exists()


# -- cache keys -----------------------------------------------------------------------------------


@pytest.mark.skipif(
    torch.cuda.is_available() or _mps_available(), reason="device=auto is the CPU only here"
)
def test_keys_follow_the_resolved_device_and_the_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """device=auto on a CPU machine keys like device=cpu (the default key: nothing is added);
    bf16 and fp16 each key another stage 1 and another stage 2."""

    def keys(*overrides: str) -> tuple[str, str]:
        cfg = _cfg(tmp_path / "cache", *RM, *overrides)
        task = _task(cfg)
        sft = _key(monkeypatch, stages, lambda: stages.sft_stage(cfg, task))
        source = (
            build_registry().get("feedback", cfg.feedback.name).cls(to_object(cfg.feedback), task)
        )
        sft_path = tmp_path / "sft"
        sft_path.mkdir(exist_ok=True)
        (sft_path / "stage.json").write_text('{"provenance": {"files": {}}}')
        rm = _key(
            monkeypatch,
            rm_stage,
            lambda: rm_stage.reward_model_stage(cfg, task, source, sft_path, "sft-key"),
        )
        return sft, rm

    default = keys()
    assert keys("device=auto") == default
    assert keys("device=cpu", "precision=fp32") == default
    # Nothing is added on the CPU in fp32: the keys of the code before stages had a device.
    monkeypatch.setattr(stages, "stage_key", lambda *a: [])
    monkeypatch.setattr(rm_stage, "stage_key", lambda *a: [])
    assert keys() == default
    monkeypatch.undo()
    bf16, fp16 = keys("precision=bf16"), keys("precision=fp16")
    assert len({default[0], bf16[0], fp16[0]}) == 3
    assert len({default[1], bf16[1], fp16[1]}) == 3


# -- stage 1 --------------------------------------------------------------------------------------


def _sft(cache: Path, monkeypatch: pytest.MonkeyPatch, precision: str) -> dict[str, Any]:
    """Build stage 1 in ``precision`` on the CPU, recording inside every SFT loss: the autocast
    state, the dtype of a linear layer's output, and the loss scaler of every step."""
    seen: dict[str, list] = {"autocast": [], "linear": [], "scalers": []}
    original_loss, original_step = stages.sft_loss, stages.scaled_step

    def loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        if not seen["autocast"]:  # the first call: watch one of the model's matrix products
            linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
            linear.register_forward_hook(lambda m, a, out: seen["linear"].append(out.dtype))
        seen["autocast"].append(_autocast_state())
        return original_loss(model, batch)

    def step(*args: Any) -> bool:
        seen["scalers"].append(args[-1])
        return original_step(*args)

    monkeypatch.setattr(stages, "sft_loss", loss)
    monkeypatch.setattr(stages, "scaled_step", step)
    cfg = _cfg(cache, f"precision={precision}")
    folder, info = stages.sft_stage(cfg, _task(cfg))
    monkeypatch.undo()
    weights = load_file(folder / "model.safetensors")
    return {"folder": folder, "info": info, "weights": weights, **seen}


def test_sft_stage_in_bf16_and_fp16_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32 = _sft(tmp_path / "cache", monkeypatch, "fp32")
    bf16 = _sft(tmp_path / "cache", monkeypatch, "bf16")
    fp16 = _sft(tmp_path / "cache", monkeypatch, "fp16")
    assert set(fp32["autocast"]) == {(False, None)} and set(fp32["linear"]) == {torch.float32}
    assert set(fp32["scalers"]) == {None}
    # bf16: every loss under autocast, its matrix products in bf16; no scaler.
    assert set(bf16["autocast"]) == {(True, torch.bfloat16)}
    assert set(bf16["linear"]) == {torch.bfloat16}
    assert set(bf16["scalers"]) == {None}
    # fp16: autocast to fp16, and every step through one loss scaler.
    assert set(fp16["autocast"]) == {(True, torch.float16)}
    assert set(fp16["linear"]) == {torch.float16}
    [scaler] = set(fp16["scalers"])
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert "skipped_steps" in fp16["info"] and "skipped_steps" not in fp32["info"]
    # Three artefacts, three keys; only the non-default ones say where they were built.
    keys = {run["info"]["key"] for run in (fp32, bf16, fp16)}
    assert len(keys) == 3
    assert "precision" not in fp32["info"] and "device" not in fp32["info"]
    assert (bf16["info"]["device"], bf16["info"]["precision"]) == ("cpu", "bf16")
    # The same passes over the same demonstrations: the same FLOPs, counted exactly.
    assert fp32["info"]["flops"] > 0
    assert bf16["info"]["flops"] == fp32["info"]["flops"] == fp16["info"]["flops"]
    # Master weights: cached as fp32, finite, and trained (bf16 is not fp32's model).
    for run in (bf16, fp16):
        assert {w.dtype for w in run["weights"].values()} == {torch.float32}
        assert all(torch.isfinite(w).all() for w in run["weights"].values())
    assert any(not torch.equal(fp32["weights"][name], w) for name, w in bf16["weights"].items())


# -- stage 2 --------------------------------------------------------------------------------------


def _fixed_groups(task: FactsTask, rows: list[dict[str, Any]]) -> list[Group]:
    """Groups whose texts do not depend on what the sampler drew (so the reward model's passes
    are the same in every precision)."""
    groups = []
    for row in rows:
        words = row["prompt"].split()
        responses = [row["response"], " ".join(words[:2]), words[-1]]
        gold = [task.gold_utility(row, r) for r in responses]
        groups.append(Group(row, responses, gold, extras={"sources": ["policy"] * 3}))
    return groups


@pytest.fixture(scope="module")
def sft_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A cache holding one fp32 stage-1 model: (cache, its folder, its key)."""
    cache = tmp_path_factory.mktemp("stage_device_cache")
    cfg = _cfg(cache)
    folder, info = stages.sft_stage(cfg, _task(cfg))
    return cache, folder, info["key"]


def _rm(
    sft_built: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch, *overrides: str
) -> dict[str, Any]:
    """Build stage 2 with ``overrides`` on the CPU, recording the autocast state where groups
    are sampled and wherever the reward model scores (training, held-out, probe), and the
    dtype it scored in. Sampling always runs max_new_tokens (fixed-length sampler passes) and
    the groups are fixed texts."""
    cache, sft_path, sft_key = sft_built
    seen: dict[str, list] = {"sampling": [], "scoring": [], "scores": []}
    cfg = _cfg(cache, *RM, *overrides)
    task = _task(cfg)
    original_generate, original_rewards = selection.generate_groups, training.sequence_rewards
    fixed = SamplingParams.from_config.__func__

    def generate(model, tokenizer, task_, rows, fb, generator) -> list[Group]:
        seen["sampling"].append(_autocast_state())
        original_generate(model, tokenizer, task_, rows, fb, generator)  # charged, then replaced
        return _fixed_groups(task, rows)

    def rewards(model, input_ids, mask) -> torch.Tensor:
        seen["scoring"].append(_autocast_state())
        out = original_rewards(model, input_ids, mask)
        seen["scores"].append(out.dtype)
        return out

    def from_config(cls, sampling):  # no early eos: every sampler pass has the same length
        params = fixed(cls, sampling)
        return dataclasses.replace(params, min_new_tokens=params.max_new_tokens)

    monkeypatch.setattr(selection, "generate_groups", generate)
    monkeypatch.setattr(training, "sequence_rewards", rewards)
    monkeypatch.setattr(SamplingParams, "from_config", classmethod(from_config))
    source = build_registry().get("feedback", cfg.feedback.name).cls(to_object(cfg.feedback), task)
    folder, info = rm_stage.reward_model_stage(cfg, task, source, sft_path, sft_key)
    monkeypatch.undo()
    weights = load_file(folder / "model.safetensors")
    return {"info": info, "weights": weights, **seen}


def test_reward_model_stage_in_bf16_on_the_cpu(
    sft_built: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampling, training, held-out scoring and the probe under bf16 autocast (diversity
    selection embeds the pool under it too); the same FLOPs as fp32; fp32 weights."""
    fp32 = _rm(sft_built, monkeypatch, "feedback.selection=diversity", "feedback.pool_factor=2")
    bf16 = _rm(
        sft_built,
        monkeypatch,
        "feedback.selection=diversity",
        "feedback.pool_factor=2",
        "precision=bf16",
    )
    assert set(fp32["sampling"]) == set(fp32["scoring"]) == {(False, None)}
    assert set(fp32["scores"]) == {torch.float32}
    assert set(bf16["sampling"]) == set(bf16["scoring"]) == {(True, torch.bfloat16)}
    assert set(bf16["scores"]) == {torch.bfloat16}
    assert bf16["info"]["probe/prompts"] > 0  # the probe ran (and scored under autocast)
    assert bf16["info"]["key"] != fp32["info"]["key"]
    assert (bf16["info"]["device"], bf16["info"]["precision"]) == ("cpu", "bf16")
    assert "precision" not in fp32["info"] and "skipped_steps" not in bf16["info"]
    assert fp32["info"]["flops"] > 0 and bf16["info"]["flops"] == fp32["info"]["flops"]
    assert {w.dtype for w in bf16["weights"].values()} == {torch.float32}


def test_reward_model_stage_in_fp16_uses_the_loss_scaler(
    sft_built: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16: the reward model and the uncertainty probe train through a loss scaler; the skips
    are counted in the stage's record; the weights are cached as finite fp32."""
    scalers = []
    original = training.grad_scaler

    def recording(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
        scalers.append(original(device, precision))
        return scalers[-1]

    monkeypatch.setattr(training, "grad_scaler", recording)
    fp16 = _rm(
        sft_built,
        monkeypatch,
        "feedback.selection=uncertainty",
        "feedback.pool_factor=2",
        "precision=fp16",
    )
    # The probe (selection) and the reward model: two trainings, each with its own scaler.
    assert len(scalers) == 2 and all(isinstance(s, torch.amp.GradScaler) for s in scalers)
    assert set(fp16["scoring"]) == {(True, torch.float16)}
    assert fp16["info"]["skipped_steps"] >= 0 and fp16["info"]["precision"] == "fp16"
    assert {w.dtype for w in fp16["weights"].values()} == {torch.float32}
    assert all(torch.isfinite(w).all() for w in fp16["weights"].values())


# -- online rounds --------------------------------------------------------------------------------


def test_online_retraining_runs_in_the_jobs_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round's retraining of the reward model runs under the job's autocast; fp16 through a
    loss scaler, its skips reported as feedback/skipped_steps."""
    words = [f"w{i}" for i in range(20)]
    tokenizer = build_tokenizer(words)
    torch.manual_seed(0)
    tiny = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    groups = [
        Group({"prompt": f"w{i} w{i + 1}"}, [f"w{i + 2}", f"w{i + 3} w4"], preference=[1.0, 0.0])
        for i in range(4)
    ]
    seen = []
    original = training.sequence_rewards

    def rewards(model, input_ids, mask) -> torch.Tensor:
        seen.append(_autocast_state())
        return original(model, input_ids, mask)

    monkeypatch.setattr(training, "sequence_rewards", rewards)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        seen.clear()
        network = ScalarHeadModel(build_model(tiny, tokenizer))
        reward_model = RewardModel(
            network, tokenizer, RMStageConfig(epochs=4, batch_size=2), precision=precision
        )
        reward_model.pending = [(0, groups)]
        stats = reward_model.arrive(0)
        assert stats["feedback/groups"] == 4.0
        assert seen and set(seen) == {(True, dtype)}
        assert ("feedback/skipped_steps" in stats) == (precision == "fp16")
        assert all(p.dtype == torch.float32 and not p.requires_grad for p in network.parameters())


def test_the_default_draw_leaves_the_reward_model_key_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """feedback.sampling.draw=multinomial (the default) keys stage 2 as the config did before the
    key existed, so caches made then are still found; inverse_cdf samples other groups: another
    key."""
    cfg = _cfg(tmp_path / "cache", *RM)
    task = _task(cfg)
    source = build_registry().get("feedback", cfg.feedback.name).cls(to_object(cfg.feedback), task)
    sft_path = tmp_path / "sft"
    sft_path.mkdir()
    (sft_path / "stage.json").write_text('{"provenance": {"files": {}}}')

    def key(config: Any) -> str:
        return _key(
            monkeypatch,
            rm_stage,
            lambda: rm_stage.reward_model_stage(config, task, source, sft_path, "sft-key"),
        )

    default = key(cfg)
    # The config as it was before `draw` existed (untyped: a schema node keeps its keys).
    before = OmegaConf.create(OmegaConf.to_container(cfg))
    del before.feedback.sampling["draw"]
    assert "draw" in cfg.feedback.sampling and key(before) == default
    other = copy.deepcopy(cfg)
    other.feedback.sampling.draw = "inverse_cdf"
    assert key(other) != default
