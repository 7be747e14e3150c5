"""The plugin guide stays true: every hook has a section, every hookspec is typed, examples run."""

from __future__ import annotations

import ast
import copy
import inspect
import json
import math
import re
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pluggy
import pytest
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf

import alignbench
from alignbench import (
    CORRECT,
    WRONG,
    AlgorithmConfig,
    Batch,
    ConfigError,
    Run,
    hookimpl,
    hookspecs,
    load_pretrained,
    turn_rewards,
)
from alignbench.app import _check_run_hooks, run_job
from alignbench.budget import Budget, FlopCounter
from alignbench.config import ModelConfig
from alignbench.defaults import DefaultScore
from alignbench.models import build_model, build_tokenizer
from alignbench.registry import build_registry
from alignbench_plugins.facts import FactsConfig, FactsTask
from alignbench_plugins.rewards import AbstentionConfig, AbstentionReward
from tests.conftest import TINY, compose

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HOOKSPECS = {
    name: function
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("alignbench_")
}


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def documented_hooks() -> set[str]:
    """Hook names that have a section headed exactly "### `<name>`"."""
    return set(re.findall(r"^### `(alignbench_\w+)`[ \t]*$", guide(), flags=re.MULTILINE))


def examples() -> list[str]:
    """The names of every ``<!-- example: <name> -->`` in the guide."""
    return re.findall(r"^<!-- example: ([\w-]+) -->$", guide(), flags=re.MULTILINE)


def prose() -> str:
    """The guide without its fenced code blocks (a name used only in an example is not
    documented)."""
    return re.sub(r"^[ \t]*```.*?^[ \t]*```", "", guide(), flags=re.MULTILINE | re.DOTALL)


def hook_section(name: str) -> str:
    """The text of the guide's "### `<name>`" section, up to the next heading."""
    match = re.search(
        rf"^### `{re.escape(name)}`[ \t]*\n(.*?)(?=^#)", guide(), flags=re.MULTILINE | re.DOTALL
    )
    assert match, f'docs/plugins.md lacks a "### `{name}`" section'
    return match.group(1)


def example(name: str) -> str:
    """The ```python block right after ``<!-- example: <name> -->`` in the guide."""
    match = re.search(
        rf"^<!-- example: {re.escape(name)} -->\n```python\n(.*?)^```$",
        guide(),
        flags=re.MULTILINE | re.DOTALL,
    )
    assert match, f"docs/plugins.md has no ```python block right after <!-- example: {name} -->"
    return match.group(1)


@pytest.fixture
def isolated_plugins() -> Iterator[None]:
    """Undo what loading a plugin folder does to the process: ConfigStore nodes, sys.modules."""
    # Hydra stores its own configs (hydra/sweeper/basic, ...) once per process, the first time it
    # looks for its plugins: store them now, so that undoing a test's nodes never removes them.
    Plugins.instance()
    store = ConfigStore.instance()
    saved_repo = copy.deepcopy(store.repo)
    saved_modules = set(sys.modules)
    try:
        yield
    finally:
        store.repo = saved_repo
        for name in set(sys.modules) - saved_modules:
            if name.startswith("alignbench.local_plugins."):
                del sys.modules[name]


def test_hookspecs_are_found() -> None:
    """The module scan sees exactly the hooks pluggy sees (so the tests below are not vacuous)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    hooks = {name for name in dir(pm.hook) if name.startswith("alignbench_")}
    assert HOOKSPECS
    assert set(HOOKSPECS) == hooks


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_every_hook_has_a_section_in_the_guide(name: str) -> None:
    assert name in documented_hooks(), f'docs/plugins.md lacks a "### `{name}`" section'


def test_guide_documents_no_hook_that_does_not_exist() -> None:
    stale = documented_hooks() - set(HOOKSPECS)
    assert not stale, f"docs/plugins.md documents hooks that hookspecs.py lacks: {sorted(stale)}"


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_every_hook_section_says_what_a_wrong_return_does(name: str) -> None:
    """The contract includes the failure: what the core does when the hook returns the wrong
    thing (a one-line error, a fallback, or nothing because the value is ignored)."""
    assert "- **Wrong return:**" in hook_section(name), (
        f'the "### `{name}`" section of docs/plugins.md has no "- **Wrong return:**" line'
    )


def test_every_public_name_is_in_the_guide() -> None:
    """Every name of ``alignbench.__all__`` appears in backticks in the guide's prose (not only
    inside an example), as itself or as ``alignbench.<name>``: the guide is the API."""
    spans = re.findall(r"`([^`]+)`", prose())

    def documented(name: str) -> bool:
        # `name`, `name(...)`, `alignbench.name`, but not `run.name` (another thing).
        pattern = re.compile(rf"(?:^|(?<=[^\w.])|(?<=\balignbench\.)){re.escape(name)}(?!\w)")
        return any(pattern.search(span) for span in spans)

    assert alignbench.__all__
    missing = [name for name in alignbench.__all__ if not documented(name)]
    assert not missing, f"docs/plugins.md does not document these public names: {missing}"


@pytest.mark.parametrize("name", examples())
def test_examples_use_only_the_public_api(name: str) -> None:
    """A guide example imports nothing from ``alignbench.<module>`` and only names of
    ``alignbench.__all__``, as the built-in plugins must (tests/test_plugins.py)."""
    public = set(alignbench.__all__)
    used = []
    for node in ast.walk(ast.parse(example(name))):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith("alignbench."), f"imports {node.module}"
            if node.module == "alignbench":
                used += [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            assert not [n for n in names if n.startswith("alignbench.")], f"imports {names}"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "alignbench"
        ):
            used.append(node.attr)
    assert used, "the example uses nothing from alignbench (is the parse right?)"
    assert set(used) <= public, f"not in alignbench.__all__: {sorted(set(used) - public)}"


@pytest.mark.parametrize("name", sorted(HOOKSPECS))
def test_every_hookspec_is_documented_and_typed(name: str) -> None:
    function = HOOKSPECS[name]
    assert hasattr(function, f"{hookspecs.PROJECT}_spec"), f"{name} is not marked @hookspec"
    assert (inspect.getdoc(function) or "").strip(), f"{name} has no docstring"
    signature = inspect.signature(function)
    assert signature.parameters, f"{name} takes no arguments"
    untyped = [p.name for p in signature.parameters.values() if p.annotation is p.empty]
    assert not untyped, f"{name}: parameters without a type annotation: {untyped}"
    assert signature.return_annotation is not signature.empty, f"{name} has no return annotation"
    # The annotations must also resolve (names imported only for type checkers included).
    from alignbench.sampling import SamplingParams

    names = {"Batch": Batch, "Run": Run, "SamplingParams": SamplingParams, "torch": torch}
    hints = typing.get_type_hints(function, localns=names)
    assert set(hints) == {*signature.parameters, "return"}


def test_example_algorithm_registers_best_of_k(tmp_path: Path, isolated_plugins: None) -> None:
    (tmp_path / "best_of_k.py").write_text(example("best_of_k"), encoding="utf-8")
    registry = build_registry([str(tmp_path)])
    assert not registry.failed
    assert "best_of_k" in registry.names("algo")
    assert issubclass(registry.get("algo", "best_of_k").config_cls, AlgorithmConfig)


def test_example_reward_task_and_observer_register(tmp_path: Path, isolated_plugins: None) -> None:
    for name in ("concise", "addition", "observer"):
        (tmp_path / f"{name}.py").write_text(example(name), encoding="utf-8")
    registry = build_registry([str(tmp_path)])
    assert not registry.failed
    assert "concise" in registry.names("reward")
    assert "addition" in registry.names("task")
    assert registry.pm.has_plugin(f"file:{(tmp_path / 'observer.py').resolve()}")


def test_example_algorithm_takes_a_step(tmp_path: Path, isolated_plugins: None) -> None:
    """The documented best_of_k, run through the hooks on a tiny untrained model."""
    (tmp_path / "best_of_k.py").write_text(example("best_of_k"), encoding="utf-8")
    registry = build_registry([str(tmp_path)])
    entry = registry.get("algo", "best_of_k")
    task = FactsTask(FactsConfig(name="facts", num_entities=10))
    tokenizer = build_tokenizer(task.vocabulary())
    small = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    policy = build_model(small, tokenizer)
    policy.eval()
    flops = FlopCounter()
    flops.track(policy, "policy")
    config = entry.config_cls(name="best_of_k", k=2)
    run = Run(
        cfg=OmegaConf.create({}),
        config=config,
        task=task,
        reward=AbstentionReward(AbstentionConfig(name="abstention"), task),
        tokenizer=tokenizer,
        policy=policy,
        sft_path=tmp_path,
        budget=Budget(kind="steps", amount=1),
        flops=flops,
        generator=torch.Generator().manual_seed(0),
        output_dir=tmp_path,
        pm=registry.pm,
    )
    before = [p.detach().clone() for p in policy.parameters()]
    plugins = {"algorithm:best_of_k": entry.cls(run, config), "core:default-score": DefaultScore()}
    for name, plugin in plugins.items():
        registry.pm.register(plugin, name=name)
    try:
        _check_run_hooks(run.pm, "algorithm:best_of_k")
        prompts = task.splits["rl"].to_list()[:3]
        batch = registry.pm.hook.alignbench_rollout(run=run, prompts=prompts)
        batch = registry.pm.hook.alignbench_score(run=run, batch=batch)
        stats = registry.pm.hook.alignbench_update(run=run, batch=batch)
    finally:
        for name in plugins:
            registry.pm.unregister(name=name)
        flops.close()
    assert batch.num_sequences == 6 and batch.rewards is not None
    assert stats and all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    assert flops.by_model["policy"] > 0


# ------------------------------------------------------------------ the multi-turn example

#: A job on the guide's multi-turn example small enough to take seconds (``TINY``'s task keys
#: belong to the facts task).
MULTI_TURN_TINY = [
    "task=counting",
    "reward=count_turns",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=2",
    "model.num_heads=2",
    "stage.sft.epochs=4",
    "algo.prompts_per_step=4",
    "algo.sampling.max_new_tokens=4",
    "eval.max_new_tokens=4",
    "budget.kind=steps",
    "budget.amount=2",
    "eval.points=0",
    "logger=none",
]


def _dialogue(*texts: str) -> list[dict[str, str]]:
    """Messages alternating user, assistant, user, ..."""
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def multi_turn_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's multi-turn example as a plugin file, in one folder for the whole module: the
    plugin's module name (its path) is part of the stage-1 cache key, so the jobs share a model."""
    folder = tmp_path_factory.mktemp("multi_turn_plugins")
    (folder / "counting.py").write_text(example("multi-turn-task"), encoding="utf-8")
    return folder


def test_example_multi_turn_task_is_a_consistent_environment(
    multi_turn_folder: Path, isolated_plugins: None
) -> None:
    """The documented counting task and its reward, loaded as a plugin: disjoint splits, right
    demonstration dialogues in its own vocabulary, a user seeded by ``rng`` alone, follow-ups
    judged in the conversation's context, and one reward per turn discounted by turn_gamma."""
    registry = build_registry([str(multi_turn_folder)])
    assert not registry.failed
    task_entry, reward_entry = (
        registry.get("task", "counting"),
        registry.get("reward", "count_turns"),
    )
    assert task_entry.cls.multi_turn and reward_entry.cls.multi_turn
    task = task_entry.cls(task_entry.config_cls(name="counting"))
    assert task.max_turns == 3
    splits = task.splits
    assert set(splits) == {"sft", "rl", "dev", "test"}
    starts = [set(split["start"]) for split in splits.values()]
    assert sum(map(len, starts)) == len(set().union(*starts))
    vocabulary = set(task.vocabulary())
    demos = splits["sft"].to_list()
    for row in demos:
        messages, turns = row["messages"], len(row["messages"]) // 2
        assert messages == _dialogue(*(m["content"] for m in messages))
        assert messages[0]["content"] == row["prompt"] and len(messages) == 2 * turns
        assert 1 <= turns <= task.max_turns
        assert task.turn_verdicts(row, messages) == [CORRECT] * turns
        assert {w for m in messages for w in m["content"].split()} <= vocabulary
    assert max(len(row["messages"]) for row in demos) > 2

    row = {"prompt": "count from 3", "start": 3}
    opening = _dialogue("count from 3", "3")

    def replies(seed: int) -> list[str | None]:
        rng = np.random.default_rng(seed)
        return [task.user_reply(row, opening, rng) for _ in range(20)]

    assert replies(0) == replies(0) != replies(1)
    assert set(replies(0)) == {None, "next ?", "skip one ?"}
    # A follow-up counts on from the conversation, not from the model's wrong answer.
    assert task.turn_verdicts(row, _dialogue("count from 3", "4", "next ?", "4")) == [
        WRONG,
        CORRECT,
    ]

    config = reward_entry.config_cls(name="count_turns", wrong=-1.0, bonus=0.5, turn_gamma=0.5)
    reward = reward_entry.cls(config, task)
    flawless = _dialogue("count from 3", "3", "skip one ?", "5")
    flawed = _dialogue("count from 3", "3", "next ?", "5")
    per_turn, returns = turn_rewards(reward, [row, row], [flawless, flawed])
    assert per_turn.tolist() == [[1.0, 1.5], [1.0, -1.0]]
    assert returns.tolist() == [1.0 + 0.5 * 1.5, 1.0 - 0.5 * 1.0]


@pytest.mark.parametrize(
    "overrides",
    [
        # Per-turn credit (PPO's default), a discount between turns and a whole-dialogue bonus.
        ["algo=ppo", "algo.ppo_epochs=1", "algo.num_minibatches=1"]
        + ["reward.turn_gamma=0.9", "reward.bonus=1"],
        ["algo=rrhf"],
    ],
    ids=["ppo", "rrhf"],
)
def test_example_multi_turn_task_runs_a_job(
    overrides: list[str],
    multi_turn_folder: Path,
    tmp_path: Path,
    cache_dir: Path,
    isolated_plugins: None,
) -> None:
    """A whole job on the documented multi-turn task with its reward: stage 1 on the
    demonstration dialogues, two steps of conversations, greedy dialogues evaluated by the
    task's dialogue metrics."""
    registry = build_registry([str(multi_turn_folder)])
    cfg = compose([*MULTI_TURN_TINY, f"cache_dir={cache_dir}", *overrides], registry)
    summary = run_job(cfg, tmp_path / "out", registry=registry)
    assert summary["status"] == "finished", summary.get("error")
    assert (summary["task"], summary["reward"]) == ("counting", "count_turns")
    assert summary["headline_metrics"] == ["test/accuracy_turn", "test/dialogue_success"]
    for prefix in ("dev", "test"):
        for name in ("accuracy_turn", "dialogue_success", "turns", "reward", "gold_reward"):
            assert math.isfinite(summary[f"{prefix}/{name}"]), f"{prefix}/{name}"
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    steps = [record for record in map(json.loads, lines) if record["kind"] == "step"]
    assert len(steps) == 2
    assert all(step["policy/turns"] > 1 for step in steps)  # the user did follow up
    completions = tmp_path / "out" / "completions" / f"test_step{summary['steps']}.jsonl"
    records = [json.loads(line) for line in completions.read_text().splitlines()]
    turns = [sum(m["role"] == "assistant" for m in r["dialogue"]) for r in records]
    assert 1 < max(turns) <= 3
    assert [len(r["verdicts"]) for r in records] == turns


# ------------------------------------------------------------------ the AI-judge example

#: The words the guide's AI judge is asked for on the facts world (two tokens, both known to the
#: stage-1 model: the sum over the verdict's tokens is exercised).
VERDICT = "not know"


def judged(model: torch.nn.Module, tokenizer: typing.Any, question: str) -> float:
    """``log p(VERDICT | question)`` by hand: one unpadded forward, no alignbench helper."""
    asked = tokenizer.encode(question, add_special_tokens=False)
    verdict = tokenizer.encode(" " + VERDICT, add_special_tokens=False)
    assert len(verdict) == 2 and tokenizer.unk_token_id not in verdict
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([asked + verdict])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[len(asked) - 1 + i, token].item() for i, token in enumerate(verdict))


class ScoredBatches:
    """A wrapper around the score hook (allowed beside the algorithm's): records what each step
    was scored on and the rewards it got."""

    def __init__(self) -> None:
        self.scored: list[tuple[list[dict[str, typing.Any]], list[str], list[float]]] = []

    @hookimpl(wrapper=True)
    def alignbench_score(self, run: Run, batch: Batch) -> typing.Generator[None, Batch, Batch]:
        scored = yield
        self.scored.append((scored.rows, list(scored.responses), scored.rewards.tolist()))
        return scored


def test_example_ai_judge_reward_runs_a_job(
    tmp_path: Path, cache_dir: Path, isolated_plugins: None
) -> None:
    """The documented AI-judge reward, loaded as a plugin, in a whole tiny job: the judge's
    forward passes are charged to the budget under its own name, and every reward, in training
    and in evaluation, is the judge's log-probability of the verdict."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "ai_judge.py").write_text(example("ai-judge-reward"), encoding="utf-8")
    registry = build_registry([str(folder)])
    assert not registry.failed
    assert not registry.get("reward", "ai_judge").cls.uses_feedback
    recorder = ScoredBatches()
    registry.pm.register(recorder, name="test:scored-batches")
    overrides = ["algo=rrhf", "reward=ai_judge", f"reward.verdict='{VERDICT}'"]
    cfg = compose([*TINY, f"cache_dir={cache_dir}", *overrides], registry)
    summary = run_job(cfg, tmp_path / "out", registry=registry)
    assert summary["status"] == "finished", summary.get("error")
    assert summary["stage/judge"]["verdict"] == VERDICT

    # Charged: every step pays for its judgements, and the budget counts them.
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    steps = [record for record in map(json.loads, lines) if record["kind"] == "step"]
    assert len(steps) == 2
    assert 0 < steps[0]["flops/judge"] < steps[1]["flops/judge"]
    by_model = summary["flops_by_model"]
    assert by_model["judge"] == steps[-1]["flops/judge"]  # evaluation's judging is not charged
    assert summary["budget/flops"] == pytest.approx(sum(by_model.values()))

    # The rewards are what the judge says, by hand.
    judge, tokenizer = load_pretrained(summary["stage/judge"]["model"])
    judge.eval()

    def expected(row: dict[str, typing.Any], response: str) -> float:
        return judged(
            judge, tokenizer, cfg.reward.question.format(prompt=row["prompt"], response=response)
        )

    assert len(recorder.scored) == 2
    for rows, responses, rewards in recorder.scored:
        by_hand = [expected(row, r) for row, r in zip(rows, responses, strict=True)]
        assert rewards == pytest.approx(by_hand, abs=1e-4)
    completions = tmp_path / "out" / "completions" / f"test_step{summary['steps']}.jsonl"
    records = [json.loads(line) for line in completions.read_text().splitlines()]
    rewards = [record["reward"] for record in records]
    assert rewards == pytest.approx([expected(r, r["response"]) for r in records], abs=1e-4)
    assert len({round(value, 4) for value in rewards}) > 1  # it judges: not one constant
    assert summary["test/reward"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-5)


def test_example_ai_judge_refuses_a_verdict_it_cannot_spell(
    tmp_path: Path, cache_dir: Path, isolated_plugins: None
) -> None:
    """`facts` has no word "yes": the default verdict is refused in one ConfigError line, before
    any RL step."""
    (tmp_path / "ai_judge.py").write_text(example("ai-judge-reward"), encoding="utf-8")
    registry = build_registry([str(tmp_path)])
    cfg = compose([*TINY, f"cache_dir={cache_dir}", "algo=rrhf", "reward=ai_judge"], registry)
    with pytest.raises(ConfigError, match="reward.verdict='yes' is not in the judge's vocabulary"):
        run_job(cfg, tmp_path / "out", registry=registry)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
