"""The task's prompts as the policy's tokenizer writes them, checked before stage 1
(``alignbench.model_folders.check_policy_prompts``): a chat template that refuses a prompt (a
system role, here) and a prompt too long for the model's positions are one line, with no job
folder or cache made; prompts that fit pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from alignbench.app import run_job
from alignbench.cli import main
from alignbench.errors import ConfigError
from alignbench.registry import build_registry
from tests.conftest import compose
from tests.test_dataset_conversations import chat_tokenizer, conversation_rows, write_jsonl
from tests.test_hf_models import TEMPLATE, tiny_causal_lm

#: A template that refuses a system message, as Gemma's and older Mistral's do.
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}" + TEMPLATE
)


def model_folder(tmp_path: Path, template: str = TEMPLATE, positions: int = 128) -> Path:
    """A tiny Llama with the conversations' tokenizer and ``template``, saved to a folder."""
    folder = tmp_path / "model"
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = template
    network = tiny_causal_lm("llama", len(tokenizer), tokenizer.eos_token_id)
    network.config.max_position_embeddings = positions
    network.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    """A task=dataset job on the conversations, its cache under ``tmp_path``."""
    data = write_jsonl(tmp_path / "data" / "chat.jsonl", conversation_rows())
    return [
        "task=dataset",
        f"task.path={data}",
        "task.dev_size=0",
        f"cache_dir={tmp_path / 'cache'}",
        "logger=none",
        *extra,
    ]


def refused(tmp_path: Path, *extra: str) -> str:
    """The one-line refusal of a job, after checking that nothing was made."""
    registry = build_registry()
    cfg = compose(overrides(tmp_path, *extra), registry)
    with pytest.raises(ConfigError) as info:
        run_job(cfg, tmp_path / "job", registry=registry)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "job").exists() and not (tmp_path / "cache").exists()
    return str(info.value)


def test_a_template_that_refuses_the_system_prompt_is_one_line_before_stage_1(
    tmp_path: Path,
) -> None:
    folder = model_folder(tmp_path, NO_SYSTEM)
    message = refused(tmp_path, f"model.name_or_path={folder}", "task.system_prompt=be brief")
    assert "its chat template refuses the prompt" in message
    assert "System role not supported" in message and "model.chat_template=none" in message


def test_the_same_template_without_a_system_prompt_passes(tmp_path: Path) -> None:
    """No false refusal: the check renders only what the job will render."""
    from alignbench.model_folders import check_policy_prompts

    folder = model_folder(tmp_path, NO_SYSTEM)
    registry = build_registry()
    cfg = compose(overrides(tmp_path, f"model.name_or_path={folder}"), registry)
    check_policy_prompts(cfg, lambda: registry.get("task", "dataset").cls(_task_config(cfg)))
    plain = compose(
        overrides(tmp_path, f"model.name_or_path={folder}", "task.system_prompt=be brief"),
        registry,
    )
    # The template is not used at all with model.chat_template=none: nothing to refuse.
    plain.model.chat_template = "none"
    check_policy_prompts(plain, lambda: registry.get("task", "dataset").cls(_task_config(plain)))


def _task_config(cfg: Any) -> Any:
    from alignbench.config import to_object

    return to_object(cfg.task)


def test_a_prompt_longer_than_the_models_positions_is_one_line(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, positions=16)
    message = refused(tmp_path, f"model.name_or_path={folder}", "algo.sampling.max_new_tokens=4")
    assert "more than the model's 16 positions" in message and "new tokens" in message


def test_the_built_in_model_names_its_own_setting(tmp_path: Path) -> None:
    message = refused(tmp_path, "model.max_position_embeddings=8")
    assert "more than the model's 8 positions" in message
    assert "model.max_position_embeddings=" in message


def test_the_command_stops_before_any_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    folder = model_folder(tmp_path, NO_SYSTEM)
    monkeypatch.chdir(tmp_path)
    args = overrides(tmp_path, f"model.name_or_path={folder}", "task.system_prompt=be brief")
    before = set(tmp_path.iterdir())
    capsys.readouterr()  # the folder's saving progress bars
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its chat template refuses the prompt" in err[0]
    assert set(tmp_path.iterdir()) == before


def test_a_reward_models_template_that_refuses_the_system_prompt_is_one_line(
    tmp_path: Path,
) -> None:
    """reward.path with its own tokenizer reads the policy's text through its chat template:
    one that refuses the system prompt is refused at start-up, not at the first score."""
    from tests.test_model_folders import save_classifier

    tokenizer = chat_tokenizer()
    tokenizer.chat_template = NO_SYSTEM
    folder = save_classifier(tmp_path / "rm", tokenizer)
    reward = ["reward=rm", f"reward.path={folder}", "algo=ppo"]
    message = refused(tmp_path, *reward, "task.system_prompt=be brief")
    assert message.startswith(f"reward.path='{folder}': its chat template refuses the prompt")
    # Without the system prompt the same reward model is accepted.
    from alignbench.model_folders import check_policy_prompts

    registry = build_registry()
    cfg = compose(overrides(tmp_path, *reward), registry)
    check_policy_prompts(cfg, lambda: registry.get("task", "dataset").cls(_task_config(cfg)))
