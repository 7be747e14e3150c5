"""Cached stages record what built them and are reused only while that still holds."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig

import alignbench.rm.stage as rm_stage
import alignbench.stages as stages
from alignbench import ConfigError
from alignbench.checkpoint import config_fingerprint
from alignbench.config import to_object
from alignbench.provenance import STAGE_THREADS, sha256_file
from alignbench.registry import build_registry
from alignbench_plugins.facts import FactsConfig, FactsTask
from alignbench_plugins.feedback import FileConfig, FileFeedback
from tests.conftest import TINY, compose

#: The tiny world of the other tests, with one SFT epoch: a stage to check, not a good model.
ONE_EPOCH = [*TINY, "stage.sft.epochs=1"]


def _cfg(cache: Path, *overrides: str):
    return compose([*ONE_EPOCH, f"cache_dir={cache}", *overrides], build_registry())


def _task(cfg) -> FactsTask:
    return FactsTask(to_object(cfg.task))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding one tiny stage-1 model, trained once for this module."""
    cache = tmp_path_factory.mktemp("provenance_cache")
    cfg = _cfg(cache)
    stages.sft_stage(cfg, _task(cfg))
    return cache


@pytest.fixture
def cache(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built cache, free to tamper with."""
    return Path(shutil.copytree(built, tmp_path / "cache"))


def _entry(cache: Path) -> Path:
    [folder] = [p for p in (cache / "sft").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return folder


def _refusal(cache: Path, *overrides: str) -> str:
    cfg = _cfg(cache, *overrides)
    with pytest.raises(ConfigError) as info:
        stages.sft_stage(cfg, _task(cfg))
    message = str(info.value)
    assert "\n" not in message
    assert str(_entry(cache)) in message and "cache_rebuild=true" in message
    return message


def _edit_stage_json(folder: Path, change) -> None:
    info = json.loads((folder / "stage.json").read_text())
    change(info["provenance"])
    (folder / "stage.json").write_text(json.dumps(info))


def test_stage_json_records_provenance(cache: Path) -> None:
    """Code version, library versions, threads and a checksum of every file written."""
    cfg = _cfg(cache)
    path, info = stages.sft_stage(cfg, _task(cfg))
    assert info["cache_hit"] is True
    record = json.loads((path / "stage.json").read_text())["provenance"]
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    assert len(record["code_sha256"]) == len(record["core_sha256"]) == 64
    assert {"models.py", "stages.py", "batch.py", "ops.py", "budget.py"} <= set(
        record["core_files"]
    )
    assert record["plugins"]["task"]["class"] == "alignbench_plugins.facts.FactsTask"
    assert record["plugins"]["task"]["file"].endswith("facts.py")
    assert record["plugins"]["task"]["sha256"] == sha256_file(
        Path(record["plugins"]["task"]["file"])
    )
    assert record["torch"] == torch.__version__
    assert record["transformers"]
    assert record["threads"] == STAGE_THREADS
    assert record["files"]["model.safetensors"] == sha256_file(path / "model.safetensors")
    assert "stage.json" not in record["files"]


def test_tampered_weights_are_refused(cache: Path) -> None:
    """A weights file that no longer matches its checksum is refused, naming folder and fix."""
    weights = _entry(cache) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert "model.safetensors does not match the sha256" in _refusal(cache)


def test_missing_weights_or_stage_json_are_refused(cache: Path) -> None:
    """A missing weights file, or a stage.json that is not JSON, is refused naming the file."""
    folder = _entry(cache)
    (folder / "model.safetensors").unlink()
    assert "model.safetensors is missing" in _refusal(cache)
    (folder / "stage.json").write_text("{not json")
    assert "stage.json is unreadable" in _refusal(cache)


def test_other_core_code_or_torch_is_refused(cache: Path) -> None:
    """A recorded core-code hash or torch version that differs from today's is refused."""
    folder = _entry(cache)
    _edit_stage_json(folder, lambda p: p["core_files"].update({"models.py": "0" * 64}))
    assert "other alignbench code (models.py changed)" in _refusal(cache)
    _edit_stage_json(folder, lambda p: p.update(torch="1.0.0"))
    assert "built with torch 1.0.0" in _refusal(cache)


def test_cache_rebuild_moves_the_old_entry_aside(cache: Path) -> None:
    """cache_rebuild=true rebuilds a refused entry and keeps the old one as <key>.old-<time>."""
    folder = _entry(cache)
    _edit_stage_json(folder, lambda p: p.update(transformers="0.0.1"))
    cfg = _cfg(cache, "cache_rebuild=true")
    path, info = stages.sft_stage(cfg, _task(cfg))
    assert path == folder and info["cache_hit"] is False
    [old] = (cache / "sft").glob(f"{folder.name}.old-*")
    assert json.loads((old / "stage.json").read_text())["provenance"]["transformers"] == "0.0.1"
    _, again = stages.sft_stage(cfg, _task(cfg))  # a sound entry is reused, even so
    assert again["cache_hit"] is True


def test_cache_rebuild_is_not_part_of_the_job_fingerprint(tmp_path: Path) -> None:
    """cache_rebuild changes no number of the job, so a checkpoint still resumes with it."""
    assert config_fingerprint(_cfg(tmp_path)) == config_fingerprint(
        _cfg(tmp_path, "cache_rebuild=true")
    )


def _key(monkeypatch: pytest.MonkeyPatch, module, call) -> str:
    """The cache key a stage function computes (nothing is built)."""
    seen = []
    monkeypatch.setattr(module, "cached_stage", lambda _dir, _stage, key, *a, **k: seen.append(key))
    call()
    return seen[0]


def test_rankings_file_content_is_keyed_and_read_from_the_start_folder(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another rankings file behind the same relative path gives another stage-2 key."""
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # no Hydra job: start = cwd
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(built, "reward=rm", "feedback=file", "feedback.path=rankings.jsonl")
    task = _task(cfg)
    sft_path, sft_info = stages.sft_stage(cfg, task)
    line = {"prompt": "q ?", "responses": ["a", "b"], "ranking": [0, 1]}

    def key() -> str:
        source = FileFeedback(to_object(cfg.feedback), task)
        assert source.path == tmp_path / "rankings.jsonl"
        return _key(
            monkeypatch,
            rm_stage,
            lambda: rm_stage.reward_model_stage(cfg, task, source, sft_path, sft_info["key"]),
        )

    (tmp_path / "rankings.jsonl").write_text(json.dumps(line) + "\n")
    first = key()
    (tmp_path / "rankings.jsonl").write_text(json.dumps({**line, "ranking": [1, 0]}) + "\n")
    assert key() != first
    (tmp_path / "rankings.jsonl").write_text(json.dumps(line) + "\n")
    assert key() == first
    assert FileFeedback(FileConfig(name="file", path="rankings.jsonl"), task).load_groups()


def _task_from_file(path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> FactsTask:
    """Import a plugin file as module ``name`` (kept in sys.modules: inspect finds it there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module.EditedTask(FactsConfig(name="facts", num_entities=40))


def test_task_plugin_source_is_keyed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Editing the task plugin's source file gives another stage-1 key; the same file, the same."""
    cfg = _cfg(tmp_path / "cache")
    plugin = tmp_path / "edited_task.py"
    source = "from alignbench_plugins.facts import FactsTask\n\n\nclass EditedTask(FactsTask):\n"

    def key(task: FactsTask) -> str:
        return _key(monkeypatch, stages, lambda: stages.sft_stage(cfg, task))

    plugin.write_text(source + "    '''Version 1.'''\n")
    first = key(_task_from_file(plugin, "edited_task", monkeypatch))
    assert key(_task_from_file(plugin, "edited_task", monkeypatch)) == first
    plugin.write_text(source + "    '''Version 2.'''\n")
    assert key(_task_from_file(plugin, "edited_task", monkeypatch)) != first


def test_stages_are_built_on_fixed_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage trains on STAGE_THREADS threads whatever the job's count, which is then restored."""
    seen = []

    def build(folder: Path) -> dict:
        seen.append(torch.get_num_threads())
        (folder / "weights.bin").write_bytes(b"w")
        return {}

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, info = stages.cached_stage(str(tmp_path), "toy", "k", build)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [STAGE_THREADS] == [info["provenance"]["threads"]]
    assert info["provenance"]["files"] == {
        "weights.bin": sha256_file(tmp_path / "toy/k/weights.bin")
    }


def test_reward_model_key_follows_the_sft_weights(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage-1 model rebuilt under the same key (other weights) gives another stage-2 key."""
    cfg = _cfg(built, "reward=rm")
    task = _task(cfg)
    sft_path, sft_info = stages.sft_stage(cfg, task)
    source = build_registry().get("feedback", cfg.feedback.name).cls(to_object(cfg.feedback), task)

    def key(folder: Path) -> str:
        return _key(
            monkeypatch,
            rm_stage,
            lambda: rm_stage.reward_model_stage(cfg, task, source, folder, sft_info["key"]),
        )

    rebuilt = Path(shutil.copytree(sft_path, tmp_path / "rebuilt"))
    assert key(rebuilt) == key(sft_path)
    _edit_stage_json(rebuilt, lambda p: p["files"].update({"model.safetensors": "1" * 64}))
    assert key(rebuilt) != key(sft_path)


def test_sft_model_does_not_depend_on_the_callers_rng(built: Path, tmp_path: Path) -> None:
    """Stage 1 seeds its own initialisation: another global RNG state, the same weights."""
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    cfg = _cfg(tmp_path / "cache")
    path, _ = stages.sft_stage(cfg, _task(cfg))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is left alone
    assert sha256_file(path / "model.safetensors") == sha256_file(
        _entry(built) / "model.safetensors"
    )


def test_core_code_is_hashed_once_per_process(monkeypatch) -> None:
    """A running sweep is judged by the code it imported, not by files edited since."""
    from alignbench import provenance

    provenance._hashes_at_start.cache_clear()
    calls = []
    real = provenance.sha256_file
    monkeypatch.setattr(provenance, "sha256_file", lambda p: calls.append(p) or real(p))
    first = provenance.core_hashes(provenance.SFT_SOURCES)
    again = provenance.core_hashes(provenance.SFT_SOURCES)
    assert first == again and len(calls) == len(provenance.SFT_SOURCES)
    assert "config.py" not in first  # config values are in the key; its code builds nothing
    provenance._hashes_at_start.cache_clear()
