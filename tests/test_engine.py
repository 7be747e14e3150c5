"""The seam for an external inference engine (``alignbench_generate``): same tokens -> the same
Batch and the same FLOPs as the built-in sampler, a wrong answer refused in one line, the
default path untouched, and the vLLM example importable without vLLM."""

from __future__ import annotations

import copy
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
import torch
from omegaconf import OmegaConf

import alignbench
from alignbench import PluginError, Run, hookimpl
from alignbench.budget import Budget, FlopCounter
from alignbench.config import ModelConfig
from alignbench.errors import ConfigError
from alignbench.job import check_engine
from alignbench.models import build_model, build_tokenizer
from alignbench.registry import Registry, build_registry, implementers
from alignbench.sampling import SamplingParams, eos_ids, generate, sample, sampler_forwards
from alignbench_plugins.facts import FactsConfig, FactsTask
from alignbench_plugins.rewards import AbstentionConfig, AbstentionReward

ROOT = Path(__file__).resolve().parents[1]
WORDS = "a b c d e f g h i j k l m n o p end".split()
PROMPTS = [{"prompt": "a b c"}, {"prompt": "d"}, {"prompt": "e f g h i"}]


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[Any, Any]:
    """A tiny untrained Llama that ends at ``<eos>`` and at the word ``end`` (two eos ids), with
    an output bias that makes both likely, so responses end at different steps."""
    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4), tokenizer
    )
    end = tokenizer.convert_tokens_to_ids("end")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end]
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[end] = 1.0
        head.bias[tokenizer.eos_token_id] = 0.8
    model.lm_head = head
    return model.eval(), tokenizer


def make_run(model: Any, tokenizer: Any, registry: Registry, seed: int = 0) -> Run:
    """A hand-built Run sampling ``model`` (a copy, tracked as the policy), FLOPs counted."""
    policy = copy.deepcopy(model)
    flops = FlopCounter()
    flops.track(policy, "policy")
    task = FactsTask(FactsConfig(name="facts", num_entities=10))
    return Run(
        cfg=OmegaConf.create({"seed": seed}),
        config=None,
        task=task,
        reward=AbstentionReward(AbstentionConfig(name="abstention"), task),
        tokenizer=tokenizer,
        policy=policy,
        sft_path=Path("."),
        budget=Budget(kind="steps", amount=1),
        flops=flops,
        generator=torch.Generator().manual_seed(seed),
        output_dir=Path("."),
        pm=registry.pm,
    )


class Replay:
    """A stand-in engine: the built-in sampler's own tokens (drawn from a copy of the run's
    generator state, on an untracked copy of the model), returned as plain id lists."""

    def __init__(self, extra: list[int] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.extra = extra or []

    @hookimpl
    def alignbench_generate(
        self,
        run: Run,
        model: Any,
        prompt_ids: list[list[int]],
        num_samples: int,
        params: SamplingParams,
        source: str,
    ) -> list[list[int]]:
        self.calls.append({"model": model, "prompt_ids": prompt_ids, "num_samples": num_samples})
        generator = torch.Generator().set_state(run.generator.get_state())
        rows = [ids for ids in prompt_ids for _ in range(num_samples)]
        eos, pad = eos_ids(model, run.tokenizer), run.tokenizer.pad_token_id
        _, _, ids, mask, _ = generate(copy.deepcopy(model), rows, params, generator, eos, pad)
        return [row[keep.bool()].tolist() + self.extra for row, keep in zip(ids, mask, strict=True)]


def registered(registry: Registry, plugin: Any, name: str = "engine") -> Registry:
    registry.pm.register(plugin, name=name)
    return registry


SETTINGS = {
    "sampled": SamplingParams(max_new_tokens=7),
    "temperature_top_k": SamplingParams(max_new_tokens=7, temperature=0.7, top_k=5, top_p=0.9),
    "greedy": SamplingParams(max_new_tokens=7, greedy=True),
    "min_new_tokens": SamplingParams(max_new_tokens=7, min_new_tokens=3, temperature=1.3),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_same_tokens_give_the_same_batch_and_flops(model_and_tokenizer, setting: str) -> None:
    """An engine that returns the built-in sampler's tokens gives the Batch the sampler gives
    (ids, masks, texts; log-probs from the policy's forward within 1e-6) and charges exactly
    the FLOPs the sampler's passes are charged."""
    model, tokenizer = model_and_tokenizer
    params = SETTINGS[setting]
    builtin_run = make_run(model, tokenizer, build_registry())
    builtin = builtin_run.sample(builtin_run.policy, PROMPTS, 3, params)
    engine = Replay()
    engine_run = make_run(model, tokenizer, registered(build_registry(), engine))
    batch = engine_run.sample(engine_run.policy, PROMPTS, 3, params)
    assert len(engine.calls) == 1 and engine.calls[0]["model"] is engine_run.policy
    assert engine.calls[0]["num_samples"] == 3 and len(engine.calls[0]["prompt_ids"]) == 3
    assert torch.equal(batch.input_ids, builtin.input_ids)
    assert torch.equal(batch.attention_mask, builtin.attention_mask)
    assert torch.equal(batch.response_mask, builtin.response_mask)
    assert batch.prompt_length == builtin.prompt_length
    assert batch.responses == builtin.responses and batch.sources == builtin.sources
    assert batch.group_size == 3 and batch.prompts == PROMPTS
    torch.testing.assert_close(batch.logprobs, builtin.logprobs, atol=1e-6, rtol=0)
    assert batch.logprobs[builtin.response_mask == 0].eq(0).all()
    assert not batch.logprobs.is_inference()  # usable as a training forward's old log-probs
    if not params.greedy:  # responses ended at different steps: the comparison saw padding
        assert builtin.response_mask.eq(0).any()
    assert engine_run.flops.by_model == builtin_run.flops.by_model
    assert engine_run.flops.total == builtin_run.flops.total > 0


def test_flops_are_the_sampler_passes(model_and_tokenizer) -> None:
    """The charge is the prompt pass plus one decode step per token but the last, whatever the
    engine ran on the model itself (the replay's own sampling is not charged)."""
    model, tokenizer = model_and_tokenizer
    run = make_run(model, tokenizer, registered(build_registry(), Replay()))
    batch = run.sample(run.policy, PROMPTS, 2, SamplingParams(max_new_tokens=5))
    n, p, r = batch.num_sequences, batch.prompt_length, batch.response_mask.shape[1]
    assert sampler_forwards(n, p, r) == [(n * p, n)] + [(n, n)] * (r - 1)
    reference = FlopCounter()
    reference.track(run.policy, "policy")
    for tokens, projected in sampler_forwards(n, p, r):
        reference.charge_forward(run.policy, tokens, projected)
    reference.close()
    assert run.flops.by_model == reference.by_model


def test_hugging_face_generate_as_an_engine(model_and_tokenizer) -> None:
    """A genuinely external decoder (Hugging Face ``generate``, greedy): its tokens equal the
    built-in greedy sampler's, and so do the Batch and the FLOPs charged."""
    model, tokenizer = model_and_tokenizer

    class HFGenerate:
        @hookimpl
        def alignbench_generate(self, run, model, prompt_ids, num_samples, params):
            eos = alignbench.eos_ids(model, run.tokenizer)
            out = []
            for ids in prompt_ids:
                generated = model.generate(
                    torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=params.max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=run.tokenizer.pad_token_id,
                )[0, len(ids) :].tolist()
                out += [generated] * num_samples
            return out

    params = SamplingParams(max_new_tokens=6, greedy=True)
    builtin_run = make_run(model, tokenizer, build_registry())
    builtin = builtin_run.sample(builtin_run.policy, PROMPTS, 2, params)
    engine_run = make_run(model, tokenizer, registered(build_registry(), HFGenerate()))
    batch = engine_run.sample(engine_run.policy, PROMPTS, 2, params)
    assert torch.equal(batch.input_ids, builtin.input_ids)
    assert torch.equal(batch.response_mask, builtin.response_mask)
    torch.testing.assert_close(batch.logprobs, builtin.logprobs, atol=1e-6, rtol=0)
    assert engine_run.flops.by_model == builtin_run.flops.by_model


def test_no_engine_is_the_built_in_sampler(model_and_tokenizer) -> None:
    """Without an implementation ``run.sample`` is ``sample`` itself: the same bits, the same
    generator state after, no engine built."""
    model, tokenizer = model_and_tokenizer
    run = make_run(model, tokenizer, build_registry())
    assert run._engine(run.policy, PROMPTS, 2, SamplingParams(), "policy") is None
    batch = run.sample(run.policy, PROMPTS, 2, SamplingParams(max_new_tokens=6))
    generator = torch.Generator().manual_seed(0)
    direct = sample(run.policy, tokenizer, PROMPTS, 2, SamplingParams(max_new_tokens=6), generator)
    assert torch.equal(batch.input_ids, direct.input_ids)
    assert torch.equal(batch.logprobs, direct.logprobs)
    assert torch.equal(run.generator.get_state(), generator.get_state())


def test_an_engine_answering_none_leaves_the_built_in_sampler(model_and_tokenizer) -> None:
    """None means "decode here": the built-in sampler runs as if no engine existed (its bits,
    its charge)."""
    model, tokenizer = model_and_tokenizer

    class Declines:
        calls = 0

        @hookimpl
        def alignbench_generate(self, model):
            Declines.calls += 1

    params = SamplingParams(max_new_tokens=6)
    builtin_run = make_run(model, tokenizer, build_registry())
    builtin = builtin_run.sample(builtin_run.policy, PROMPTS, 2, params)
    run = make_run(model, tokenizer, registered(build_registry(), Declines()))
    batch = run.sample(run.policy, PROMPTS, 2, params)
    assert Declines.calls == 1
    assert torch.equal(batch.input_ids, builtin.input_ids)
    assert torch.equal(batch.logprobs, builtin.logprobs)
    assert run.flops.by_model == builtin_run.flops.by_model


def test_tokens_after_the_first_eos_are_cut(model_and_tokenizer) -> None:
    """An engine that keeps going after an eos: the response ends at it, as the sampler's."""
    model, tokenizer = model_and_tokenizer
    params = SamplingParams(max_new_tokens=7)
    end = tokenizer.convert_tokens_to_ids("end")

    class Talkative:
        @hookimpl
        def alignbench_generate(self, prompt_ids, num_samples):
            return [[3, end, 4, 5]] * (len(prompt_ids) * num_samples)

    run = make_run(model, tokenizer, registered(build_registry(), Talkative()))
    batch = run.sample(run.policy, PROMPTS, 1, params)
    assert batch.response_ids.tolist() == [[3, end]] * 3
    assert batch.response_mask.eq(1).all()


def _wrong(tokenizer: Any) -> dict[str, tuple[Any, str]]:
    """Wrong answers for 3 prompts x 2 samples (max_new_tokens=4, min_new_tokens=1), and what
    the one-line error must say."""
    eos = tokenizer.eos_token_id
    ok = [[3, 4, 5, 6]] * 6  # at max_new_tokens without an eos: cut off by the limit
    return {
        "not_a_list": ({"ids": ok}, "returned dict, not a list of token-id lists"),
        "a_flat_list": ([3, 4, 5, 6, 7, 8], "returned int as response #0, not a list of ints"),
        "an_array": ([*ok[:2], np.array([3, 4, 5, 6]), *ok[3:]], "returned ndarray as response #2"),
        "stopped_early": ([*ok[:1], [3, 4], *ok[2:]], "stopped response #1 after 2 tokens"),
        "a_tensor": (torch.ones(6, 2, dtype=torch.long), "returned Tensor, not a list"),
        "too_few": (ok[:5], "returned 5 responses for 6"),
        "empty": ([*ok[:5], []], "empty response (#5)"),
        "too_long": ([*ok[:2], [3] * 5, *ok[3:]], "5 tokens in response #2, over max_new_tokens=4"),
        "not_ints": ([*ok[:1], [3, 4.0], *ok[2:]], "returned 4.0 in response #1"),
        "outside_vocabulary": ([*ok[:3], [3, 10_000], *ok[4:]], "token id 10000 in response #3"),
        "negative": ([*ok[:3], [-1], *ok[4:]], "token id -1 in response #3"),
        "early_eos": ([[eos, 3], *ok[1:]], "before min_new_tokens=1"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not_a_list",
        "a_flat_list",
        "an_array",
        "stopped_early",
        "a_tensor",
        "too_few",
        "empty",
        "too_long",
        "not_ints",
        "outside_vocabulary",
        "negative",
        "early_eos",
    ],
)
def test_a_wrong_answer_is_one_line_naming_the_plugin(model_and_tokenizer, case: str) -> None:
    """Every wrong answer is a PluginError of one line naming the engine plugin and the
    problem, raised before a Batch exists (nothing can train on it)."""
    model, tokenizer = model_and_tokenizer
    answer, expected = _wrong(tokenizer)[case]

    class Wrong:
        @hookimpl
        def alignbench_generate(self):
            return answer

    run = make_run(model, tokenizer, registered(build_registry(), Wrong(), name="my-engine"))
    before = run.flops.total
    with pytest.raises(PluginError) as info:
        run.sample(run.policy, PROMPTS, 2, SamplingParams(max_new_tokens=4, min_new_tokens=1))
    message = str(info.value)
    assert "\n" not in message and message.startswith("alignbench_generate of my-engine ")
    assert expected in message, message
    assert run.flops.total == before  # nothing charged for a refused answer


def test_one_engine_at_a_time_and_single_turn_only(model_and_tokenizer) -> None:
    """Two engines, or an engine on a multi-turn task, are refused at start-up in one line; a
    hand-built multi-turn Run refuses when it samples."""
    registry = registered(build_registry(), Replay())
    check_engine(registry, "facts")  # one engine, single-turn: fine
    check_engine(build_registry(), "dialogue")  # no engine: any task
    with pytest.raises(ConfigError, match=r"task=dialogue is multi-turn and engine"):
        check_engine(registry, "dialogue")
    registered(registry, Replay(), name="second")
    with pytest.raises(PluginError, match=r"implemented by engine, second — one external"):
        check_engine(registry, "facts")
    model, tokenizer = model_and_tokenizer
    run = make_run(model, tokenizer, registered(build_registry(), Replay()))
    run.task = type("MultiTurn", (), {"multi_turn": True})()
    with pytest.raises(PluginError, match="answers single turns; this task is multi-turn"):
        run.sample(run.policy, PROMPTS, 1, SamplingParams())


# -- end to end: an engine plugin file through plugin_dirs ---------------------------------------

ENGINE_PLUGIN = '''
"""A stand-in engine: Hugging Face generate (sampling) on the live policy."""
import torch

import alignbench

CALLS = []


@alignbench.hookimpl
def alignbench_generate(run, model, prompt_ids, num_samples, params):
    CALLS.append(run.step)
    torch.manual_seed(run.seed * 1000 + run.step)  # the engine's own random state
    out = []
    for ids in prompt_ids:
        generated = model.generate(
            torch.tensor([ids] * num_samples, device=model.device),
            max_new_tokens=params.max_new_tokens,
            do_sample=True,
            top_k=0,
            eos_token_id=alignbench.eos_ids(model, run.tokenizer),
            pad_token_id=run.tokenizer.pad_token_id,
        )[:, len(ids):]
        eos = set(alignbench.eos_ids(model, run.tokenizer))
        for row in generated.tolist():
            ends = [i for i, t in enumerate(row) if t in eos]
            out.append(row[: ends[0] + 1] if ends else row)
    (run.output_dir / "engine_calls.txt").write_text(str(len(CALLS)))
    return out
'''


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_a_run_samples_through_an_engine_plugin(tiny_job, tmp_path: Path, algo: str) -> None:
    """GRPO and PPO train two steps end to end on an engine plugin's samples (one call per
    step), and the job charges a FLOP count in the same range as the built-in sampler's."""
    plugins = tmp_path / "engine_plugins"
    plugins.mkdir()
    (plugins / "hf_engine.py").write_text(ENGINE_PLUGIN, encoding="utf-8")
    summary = tiny_job(f"algo={algo}", f"plugin_dirs=[{plugins}]", out="engine")
    assert summary["status"] == "finished"
    assert (tmp_path / "engine" / "engine_calls.txt").read_text() == "2"
    builtin = tiny_job(f"algo={algo}", out="builtin")
    assert summary["budget/steps"] == builtin["budget/steps"] == 2
    ratio = summary["budget/flops"] / builtin["budget/flops"]
    assert 0.5 < ratio < 2.0, ratio  # other tokens, the same kind of charge


# -- the vLLM example and the optional extra ------------------------------------------------------

EXAMPLE = ROOT / "examples" / "vllm_engine.py"


def test_the_vllm_example_imports_without_vllm_and_refuses_cleanly(
    model_and_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example loads as a plugin file without vLLM (nothing optional imported at import
    time) and, asked to generate, refuses in one line naming the extra to install."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, even where it is
    registry = build_registry([str(EXAMPLE.parent)])
    name = f"file:{EXAMPLE.resolve()}"
    assert name in implementers(registry.pm, "alignbench_generate")
    assert not registry.failed
    model, tokenizer = model_and_tokenizer
    run = make_run(model, tokenizer, registry)
    with pytest.raises(PluginError) as info:
        run.sample(run.policy, PROMPTS, 1, SamplingParams())
    message = str(info.value)
    assert "\n" not in message and "pip install alignbench[vllm]" in message
    # The same refusal at start-up, before any stage (alignbench_engine_check).
    from alignbench.job import check_engine

    with pytest.raises(PluginError, match="pip install alignbench\\[vllm\\]"):
        check_engine(registry, "facts", "cuda")
    # With vLLM present (a stand-in module), a job on the CPU: refused for want of a GPU.
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    with pytest.raises(PluginError) as info:
        check_engine(registry, "facts", "cpu")
    assert str(info.value).startswith(
        "examples/vllm_engine.py decodes on a CUDA GPU, but the job runs with device=cpu"
    )
    source = EXAMPLE.read_text(encoding="utf-8")
    assert not re.search(r"^(import|from) vllm", source, flags=re.MULTILINE)


def test_the_vllm_extra_is_optional_and_never_installed_by_default() -> None:
    """``pip install alignbench[vllm]`` exists; no default, dev or CI install line asks for it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    assert any(req.startswith("vllm") for req in extras["vllm"])
    assert not any("vllm" in req for req in project["dependencies"])
    for name, requirements in extras.items():
        if name != "vllm":
            assert not any("vllm" in req for req in requirements), name
    installs = [ROOT / "Makefile", *sorted((ROOT / ".ci").rglob("*"))]
    for path in installs:
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            assert "vllm" not in text.lower(), f"{path} mentions vllm"


def test_eos_ids_is_what_the_engine_is_told_to_stop_at(model_and_tokenizer) -> None:
    """The public ``alignbench.eos_ids`` the hook's contract names lists both ids."""
    model, tokenizer = model_and_tokenizer
    assert alignbench.eos_ids(model, tokenizer) == eos_ids(model, tokenizer)
    assert len(eos_ids(model, tokenizer)) == 2


def test_an_engine_on_a_multi_turn_task_is_one_line_before_anything_is_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m alignbench task=dialogue plugin_dirs=[<engine>]`: exit 2, one line naming
    the engine plugin and the fix, no results folder (no stage 1 trained)."""
    from alignbench.cli import main

    plugins = tmp_path / "engine_plugins"
    plugins.mkdir()
    (plugins / "hf_engine.py").write_text(ENGINE_PLUGIN, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    overrides = ["task=dialogue", "reward=turn", "algo=ppo", f"plugin_dirs=[{plugins}]"]
    assert main([*overrides, "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task=dialogue is multi-turn and file:" in err[0], err
    assert "remove the engine plugin or use a single-turn task" in err[0]
    assert not (tmp_path / "results").exists()


def test_scoring_an_engines_tokens_in_chunks_gives_the_same_batch(
    model_and_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's tokens are scored a few rows at a time (the fp32 logits of a whole rollout
    are [N, R, V]): one row per chunk gives the log-probs of one chunk for all."""
    import alignbench.sampling as sampling

    model, tokenizer = model_and_tokenizer
    params = SETTINGS[sorted(SETTINGS)[0]]
    out = {}
    for name, elements in (("whole", sampling.ENGINE_LOGITS_ELEMENTS), ("row_by_row", 1)):
        monkeypatch.setattr(sampling, "ENGINE_LOGITS_ELEMENTS", elements)
        run = make_run(model, tokenizer, registered(build_registry(), Replay()))
        out[name] = run.sample(run.policy, PROMPTS, 3, params)
    assert torch.equal(out["whole"].input_ids, out["row_by_row"].input_ids)
    torch.testing.assert_close(out["whole"].logprobs, out["row_by_row"].logprobs, atol=1e-6, rtol=0)


def test_an_engine_is_part_of_the_jobs_plugin_code() -> None:
    """A job sampled through an engine records the engine's file among its plugin code, so a
    result or checkpoint made with the built-in sampler is not taken for it (nor the reverse);
    without an engine the record is what it was."""
    from alignbench.job import plugin_code
    from tests.conftest import compose

    cfg = compose(["algo=grpo"])
    plain = plugin_code(build_registry(), cfg)
    assert not any(role.startswith("engine") for role in plain)
    with_engine = plugin_code(registered(build_registry(), Replay(), name="my-engine"), cfg)
    assert with_engine["engine:my-engine"].startswith("test_engine.py:")
    assert {k: v for k, v in with_engine.items() if k != "engine:my-engine"} == plain
