"""LoRA through PEFT (model.lora.*): only adapters train, the reference is the shared base, the
FLOP counter charges adapters, resume is exact, and the exported folder holds the adapter."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("peft")

from alignbench import SharedBaseReference, hookimpl  # noqa: E402
from alignbench.budget import FlopCounter  # noqa: E402
from alignbench.config import LoraConfig  # noqa: E402
from alignbench.errors import ConfigError, Interrupted  # noqa: E402
from alignbench.lora import apply_lora, check_lora  # noqa: E402
from alignbench.models import build_model, build_tokenizer, load_pretrained  # noqa: E402
from alignbench.registry import build_registry  # noqa: E402
from tests.conftest import compose  # noqa: E402

PPO = ["algo=ppo", "algo.samples_per_prompt=2", "algo.num_minibatches=2", "model.lora.r=4"]


class Capture:
    """Keeps the run and the algorithm at the end of a job."""

    @hookimpl
    def alignbench_on_run_end(self, run: Any, summary: dict) -> None:
        self.run = run
        self.algorithm = run.pm.get_plugin(f"algorithm:{run.cfg.algo.name}")


def _base_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base weights of a LoRA policy under the plain model's names (adapters left out)."""
    state = policy.base_model.model.state_dict()
    return {k.replace(".base_layer.", "."): v.clone() for k, v in state.items() if "lora_" not in k}


def _tiny_model() -> torch.nn.Module:
    from alignbench.config import ModelConfig

    tokenizer = build_tokenizer([f"w{i}" for i in range(20)])
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    return build_model(config, tokenizer), tokenizer


@pytest.mark.slow
def test_lora_ppo_trains_only_adapters_and_shares_the_base(tiny_job) -> None:
    registry = build_registry()
    capture = Capture()
    registry.pm.register(capture, name="capture")
    summary = tiny_job(*PPO, registry=registry)
    run, ppo = capture.run, capture.algorithm
    sft, _ = load_pretrained(run.sft_path)
    # Base weights bit-identical to the SFT model; adapters moved (lora_B starts at zero).
    base = _base_state(run.policy)
    assert base.keys() == sft.state_dict().keys()
    assert all(torch.equal(base[k], v) for k, v in sft.state_dict().items())
    trainable = [n for n, p in run.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(p.abs().sum() > 0 for n, p in run.policy.named_parameters() if "lora_B" in n), (
        "the adapters did not train"
    )
    # The reference is the policy's own base: no parameters of its own, SFT logits exactly.
    assert isinstance(ppo.reference, SharedBaseReference)
    assert ppo.reference.policy is run.policy
    assert list(ppo.reference.parameters()) == []
    ids = torch.tensor([[3, 4, 5, 6]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = sft(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(ppo.reference(input_ids=ids, attention_mask=mask).logits, expected)
        adapted = run.policy(input_ids=ids, attention_mask=mask).logits
    assert not torch.equal(adapted, expected), "adapters on must differ from the base"
    # The reference was charged (base weights), and the export is the adapter.
    assert summary["flops_by_model"]["reference"] > 0
    exported = Path(summary["model_dir"])
    assert (exported / "adapter_config.json").is_file()
    assert (exported / "adapter_model.safetensors").is_file()


def test_flops_count_adapters_and_the_reference_counts_the_base_only() -> None:
    model, _ = _tiny_model()
    body_before = sum(
        p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n
    )
    head = model.lm_head.weight.numel()
    policy = apply_lora(model, LoraConfig(r=2, alpha=4.0))
    adapters = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n)
    assert adapters > 0
    flops = FlopCounter()
    flops.track(policy, "policy")
    reference = flops.track(SharedBaseReference(policy), "reference")
    ids = torch.tensor([[1, 2, 3]])
    policy(input_ids=ids).logits.sum().backward()
    with torch.no_grad():
        reference(input_ids=ids)
    tokens = ids.numel()
    forward = 2.0 * ((body_before + adapters) * tokens + head * tokens)
    assert flops.by_model["policy"] == pytest.approx(3 * forward)  # forward + backward (2x)
    assert flops.by_model["reference"] == pytest.approx(2.0 * (body_before + head) * tokens)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"r": -1}, "model.lora.r=-1"),
        ({"r": 4, "alpha": 0.0}, "model.lora.alpha=0.0"),
        ({"r": 4, "dropout": 1.0}, "model.lora.dropout=1.0"),
    ],
)
def test_bad_lora_settings_are_one_line(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        check_lora(LoraConfig(**values))


def test_an_unknown_target_module_is_one_line() -> None:
    model, _ = _tiny_model()
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        apply_lora(model, LoraConfig(r=2, target_modules=["no_such_proj"]))


def test_lora_off_keeps_the_fingerprint_of_older_configs() -> None:
    from alignbench.checkpoint import config_fingerprint
    from alignbench.jobdir import flat_config

    default = compose(["algo=ppo"])
    assert "precision" not in flat_config(default)
    assert not any(k.startswith("model.lora") for k in flat_config(default))
    assert config_fingerprint(default) != config_fingerprint(compose(["algo=ppo", *PPO[-1:]]))
    assert config_fingerprint(default) == config_fingerprint(compose(["algo=ppo", "device=auto"]))


@pytest.mark.slow
@pytest.mark.parametrize("targets", ["policy", "policy,critic"])
def test_lora_resume_is_exact_and_merge_on_export(tiny_job, targets: str) -> None:
    from tests.test_resume import _numbers

    args = [*PPO, "budget.amount=3", "checkpoint_every=1", "model.lora.merge_on_export=true"]
    args.append(f"model.lora.targets=[{targets}]")
    straight = tiny_job(*args, out="straight")

    class StopAtStep2:
        @hookimpl(wrapper=True)
        def alignbench_update(self, run):
            stats = yield
            if run.step == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return stats

    registry = build_registry()
    registry.pm.register(StopAtStep2(), name="stop")
    with pytest.raises(Interrupted):
        tiny_job(*args, out="resumed", registry=registry)
    resumed = tiny_job(*args, out="resumed")
    assert _numbers(resumed) == _numbers(straight)
    # Merged: a plain model folder (no peft needed to load it), the adapter beside it.
    exported = Path(resumed["model_dir"])
    assert (exported / "adapter" / "adapter_config.json").is_file()
    merged, _ = load_pretrained(exported)
    assert not any("lora_" in n for n, _ in merged.named_parameters())


# -- LoRA on the critic and the reward model (model.lora.targets) --------------------------------


def _tiny_scalar_model(seed: int = 0) -> torch.nn.Module:
    from alignbench.models import ScalarHeadModel

    model, _ = _tiny_model()
    torch.manual_seed(seed)
    scalar = ScalarHeadModel(model)
    torch.nn.init.normal_(scalar.head.weight)  # a head that is not zero: values that can differ
    return scalar


def _trunk_base_state(trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A LoRA trunk's base weights under the plain trunk's names (adapters left out)."""
    state = trunk.state_dict()
    return {k.replace(".base_layer.", "."): v.clone() for k, v in state.items() if "lora_" not in k}


@pytest.mark.parametrize("role", ["critic", "reward_model"])
def test_a_lora_scalar_model_trains_only_adapters_and_its_whole_head(role: str) -> None:
    from alignbench import apply_lora_to_scalar

    model = _tiny_scalar_model()
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    config = LoraConfig(r=2, alpha=4.0, targets=["policy", role])
    adapted = apply_lora_to_scalar(model, config, role)
    assert adapted is model and type(model.trunk.layers[0].self_attn.q_proj).__name__ == "Linear"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert trainable - {"head.weight", "head.bias"}, "no adapter is trainable"
    assert all("lora_" in n for n in trainable - {"head.weight", "head.bias"})
    # Adapters start as the identity (lora_B = 0): the same values as the model before.
    assert _trunk_base_state(model.trunk).keys() == {
        k.removeprefix("trunk.") for k in plain if k.startswith("trunk.")
    }
    ids, mask = torch.tensor([[1, 2, 3, 4]]), torch.ones(1, 4, dtype=torch.long)
    before = _tiny_scalar_model()(ids, mask)
    assert torch.equal(model(ids, mask), before)
    # A role not among the targets (or r=0) leaves a model whole and trainable.
    other = "reward_model" if role == "critic" else "critic"
    untouched = apply_lora_to_scalar(_tiny_scalar_model(), config, other)
    assert all(p.requires_grad and "lora_" not in n for n, p in untouched.named_parameters())
    off = apply_lora_to_scalar(_tiny_scalar_model(), LoraConfig(r=0), role)
    assert all(p.requires_grad and "lora_" not in n for n, p in off.named_parameters())


def test_a_lora_scalar_model_is_charged_for_its_adapters_and_merged_for_its_base() -> None:
    from alignbench import apply_lora_to_scalar
    from alignbench.lora import merge_adapters

    model = _tiny_scalar_model()
    body_before = sum(
        p.numel() for n, p in model.named_parameters() if "embed" not in n and "head" not in n
    )
    head = model.head.weight.numel() + model.head.bias.numel()
    apply_lora_to_scalar(model, LoraConfig(r=2, alpha=4.0, targets=["critic"]), "critic")
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert adapters == 2 * 2 * (16 + 16) * 1  # r x (in + out) for q_proj and v_proj, one layer
    with torch.no_grad():  # trained adapters: lora_B away from zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    flops = FlopCounter()
    flops.track(model, "critic")
    ids, mask = torch.tensor([[1, 2, 3, 4, 5]]), torch.ones(1, 5, dtype=torch.long)
    values = model(ids, mask, positions_to_keep=3)
    values.sum().backward()
    tokens, projected = ids.numel(), 3
    forward = 2.0 * ((body_before + adapters) * tokens + head * projected)
    assert flops.by_model["critic"] == 3 * forward  # forward + backward (2x), exactly
    flops.close()
    # Merged: a plain model (the keys of one never adapted), the same values within rounding,
    # charged for the base weights only.
    plain_keys = set(_tiny_scalar_model().state_dict())
    with torch.no_grad():
        adapted = model(ids, mask)
    merge_adapters(model)
    assert set(model.state_dict()) == plain_keys
    assert not torch.equal(model.trunk.layers[0].self_attn.q_proj.weight, _q_proj_before())
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), adapted, rtol=1e-5, atol=1e-6)
    flops = FlopCounter()
    flops.track(model, "reward_model")
    with torch.no_grad():
        model(ids, mask)
    assert flops.by_model["reward_model"] == 2.0 * (body_before * tokens + head * tokens)


def _q_proj_before() -> torch.Tensor:
    return _tiny_scalar_model().trunk.layers[0].self_attn.q_proj.weight


@pytest.mark.parametrize(
    "values, message",
    [
        ({"r": 4, "targets": ["critc"]}, r"model\.lora\.targets=\[critc\] — list each of"),
        ({"r": 4, "targets": []}, r"model\.lora\.targets=\[\] — list each of"),
        ({"r": 4, "targets": ["critic", "critic"]}, r"targets=\[critic,critic\]"),
        ({"r": 0, "targets": ["critic"]}, r"model\.lora\.r=0 trains no adapters"),
    ],
)
def test_bad_lora_targets_are_one_line(values: dict, message: str) -> None:
    # A LoRA reward model with online rounds is no longer refused: tests/test_lora_rm_rounds.py.
    with pytest.raises(ConfigError, match=message) as error:
        check_lora(LoraConfig(**values))
    assert "\n" not in str(error.value)


def test_lora_targets_from_the_command_line_are_checked_before_anything_runs() -> None:
    from alignbench.hardware import check_hardware

    with pytest.raises(ConfigError, match=r"model\.lora\.targets=\[value\]"):
        check_hardware(compose(["algo=ppo", "model.lora.r=4", "model.lora.targets=[value]"]))
    # Online rounds retrain a LoRA reward model's adapters (tests/test_lora_rm_rounds.py).
    rounds = ["reward=rm", "feedback.rounds=1", "model.lora.r=4"]
    assert check_hardware(compose([*rounds, "model.lora.targets=[policy,reward_model]"]))
    # A full policy keeps its own reference copy, which placement may move; a LoRA one does not.
    placed = ["algo=ppo", "model.lora.r=4", "placement.reference=cpu"]
    assert check_hardware(compose([*placed, "model.lora.targets=[critic]"])).type == "cpu"
    with pytest.raises(ConfigError, match="placement.reference with model.lora.r > 0"):
        check_hardware(compose([*placed, "model.lora.targets=[policy,critic]"]))


def test_default_targets_keep_older_fingerprints_and_the_rm_key_only_moves_for_the_rm() -> None:
    from alignbench.checkpoint import config_fingerprint
    from alignbench.jobdir import flat_config
    from alignbench.rm.stage import lora_key

    policy = compose(["algo=ppo", "model.lora.r=4"])
    critic = compose(["algo=ppo", "model.lora.r=4", "model.lora.targets=[policy,critic]"])
    rm = compose(["algo=ppo", "model.lora.r=4", "model.lora.targets=[policy,reward_model]"])
    # targets=[policy], the default, is not recorded: LoRA results made before it keep theirs.
    assert "model.lora.targets" not in flat_config(policy)
    assert flat_config(critic)["model.lora.targets"] == ["policy", "critic"]
    assert len({config_fingerprint(c) for c in (policy, critic, rm)}) == 3
    # The reward model's cache key gains a part only when the reward model trains as adapters.
    assert lora_key(compose(["algo=ppo"])) == [] and lora_key(policy) == []
    assert lora_key(critic) == []
    assert lora_key(rm) == [{"lora": {"r": 4, "alpha": 16.0, "dropout": 0.0, "target_modules": []}}]


@pytest.mark.slow
def test_ppo_with_a_lora_critic_keeps_the_critic_base_and_trains_adapters_and_head(
    tiny_job,
) -> None:
    registry = build_registry()
    capture = Capture()
    registry.pm.register(capture, name="capture")
    targets = "model.lora.targets=[policy,critic]"
    summary = tiny_job(*PPO, targets, "algo.ptx_coef=0", registry=registry)
    critic = capture.algorithm.critic
    sft, _ = load_pretrained(capture.run.sft_path)
    # The critic's trunk base is the SFT trunk, bit for bit, after training.
    base = _trunk_base_state(critic.trunk)
    assert base.keys() == sft.base_model.state_dict().keys()
    assert all(torch.equal(base[k], v) for k, v in sft.base_model.state_dict().items())
    trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all("lora_" in n for n in trainable - {"head.weight", "head.bias"})
    lora_b = [p for n, p in critic.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "the critic's adapters did not train"
    assert critic.head.weight.abs().sum() > 0, "the value head did not train"
    assert summary["flops_by_model"]["critic"] > 0 and math.isfinite(summary["test/reward"])


@pytest.mark.slow
def test_a_lora_reward_model_trains_is_merged_and_never_shares_the_full_cache(tiny_job) -> None:
    rm = ["reward=rm", "feedback.labels=24", "stage.rm.epochs=3", "feedback.k=3", "algo=rrhf"]
    jobs = {"full": [], "lora": ["model.lora.r=4", "model.lora.targets=[reward_model]"]}
    summaries, captured = {}, {}
    for name, extra in jobs.items():
        registry = build_registry()
        captured[name] = Capture()
        registry.pm.register(captured[name], name="capture")
        summaries[name] = tiny_job(*rm, *extra, registry=registry, out=name)
    full, stage = summaries["full"]["stage/rm"], summaries["lora"]["stage/rm"]
    assert stage["key"] != full["key"] and stage["cache_hit"] is False
    assert stage["heldout_groups"] > 0 and stage["heldout_accuracy_labels"] is not None
    assert 0.0 <= stage["heldout_accuracy_labels"] <= 1.0
    # Adapters (q/v of 2 layers, r=4, hidden 32) and the whole head (32 + 1) were what trained.
    assert stage["lora_trainable_parameters"] == 2 * 2 * 4 * (32 + 32) + 33
    assert "lora_trainable_parameters" not in full
    # The cached reward model is a plain one (adapters folded in): the full one's keys, other
    # weights; the policy trained whole (targets without policy).
    full_rm = captured["full"].run.reward.model.state_dict()
    lora_rm = captured["lora"].run.reward.model.state_dict()
    assert full_rm.keys() == lora_rm.keys()
    assert not torch.equal(full_rm["head.weight"], lora_rm["head.weight"])
    assert not any("lora_" in n for n, _ in captured["lora"].run.policy.named_parameters())
    # Stage 2 changed the trunk only through the adapters: its embedding is the SFT model's.
    sft, _ = load_pretrained(captured["lora"].run.sft_path)
    embedding = sft.get_input_embeddings().weight
    assert torch.equal(lora_rm["trunk.embed_tokens.weight"], embedding)
    assert not torch.equal(full_rm["trunk.embed_tokens.weight"], embedding)
    again = tiny_job(*rm, *jobs["lora"], out="again")
    assert again["stage/rm"]["cache_hit"] is True and again["stage/rm"]["key"] == stage["key"]
