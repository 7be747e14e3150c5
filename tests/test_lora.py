"""LoRA through PEFT (model.lora.*): only adapters train, the reference is the shared base, the
FLOP counter charges adapters, resume is exact, and the exported folder holds the adapter."""

from __future__ import annotations

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
def test_lora_resume_is_exact_and_merge_on_export(tiny_job) -> None:
    from tests.test_resume import _numbers

    args = [*PPO, "budget.amount=3", "checkpoint_every=1", "model.lora.merge_on_export=true"]
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
