"""placement.reference / reward / critic: a placed model gets its inputs on its own device and
gives its outputs back on the job's; a device that is not there, a model the job does not have,
or a LoRA reference is one line; placed on the job's own device, a run is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from alignbench.app import main
from alignbench.errors import ConfigError
from alignbench.placement import check_placement, move, place_model


class Spy(torch.nn.Module):
    """A linear layer that records the device of what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.seen: list[torch.device] = []

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        self.seen += [x.device] + ([mask.device] if mask is not None else [])
        return CausalLMOutputWithPast(logits=self.linear(x), hidden_states=(x, x))


def test_move_reaches_every_tensor_of_an_output() -> None:
    out = CausalLMOutputWithPast(logits=torch.ones(2), hidden_states=(torch.ones(1),))
    moved = move({"a": [torch.ones(1), 3], "out": out, "none": None}, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1] == 3
    assert moved["out"].logits.device.type == "meta"
    assert moved["out"]["logits"].device.type == "meta"  # attribute and key agree
    assert moved["out"].hidden_states[0].device.type == "meta"
    assert moved["none"] is None


def test_placed_model_gets_its_inputs_on_its_device() -> None:
    """The meta device stands in for an accelerator: the weights and every input go there."""
    spy = Spy()
    place_model(spy, torch.device("meta"), home=torch.device("meta"))
    assert spy.linear.weight.device.type == "meta"
    spy(torch.ones(4, 3), mask=torch.ones(4, 3))  # given on the CPU, positional and keyword
    assert [d.type for d in spy.seen] == ["meta", "meta"]


def test_placed_model_gives_its_outputs_back_home() -> None:
    spy = Spy()
    place_model(spy, torch.device("cpu"), home=torch.device("meta"))
    out = spy(torch.ones(4, 3))
    assert spy.seen[0].type == "cpu"  # computed on its own device
    assert out.logits.device.type == "meta" and out.hidden_states[1].device.type == "meta"


def test_gradients_flow_back_through_the_boundary() -> None:
    """A placed critic trains: the move is differentiable (here cpu -> cpu, the same path)."""
    spy = Spy()
    place_model(spy, torch.device("cpu"), home=torch.device("cpu"))
    spy(torch.ones(4, 3)).logits.sum().backward()
    assert spy.linear.weight.grad is not None and spy.linear.weight.grad.abs().sum() > 0


def test_bad_placements_are_one_line() -> None:
    assert check_placement({"reference": "", "reward": "", "critic": ""}) == {}
    assert check_placement({"reference": "cpu"}) == {"reference": torch.device("cpu")}
    with pytest.raises(ConfigError, match=r"placement.reference='tpu' is not a device"):
        check_placement({"reference": "tpu"})
    with pytest.raises(ConfigError, match=r"placement.critic='cuda:7': this machine has"):
        check_placement({"critic": "cuda:7"})
    with pytest.raises(ConfigError, match=r"placement.policy is not a model"):
        check_placement({"policy": "cpu"})
    with pytest.raises(ConfigError, match=r"placement.reference with model.lora.r > 0"):
        check_placement({"reference": "cpu"}, lora=True)


def test_unknown_device_stops_the_command_before_anything(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["placement.reference=tpu0", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "placement.reference='tpu0' is not a device" in err[0]
    assert list(tmp_path.iterdir()) == []  # no folder, no cache, nothing trained


def _steps(folder: Path) -> list[str]:
    """The step and evaluation lines of a job, without its wall-clock measurements."""
    lines = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        timeless = {
            k: v
            for k, v in record.items()
            if not k.startswith(("time/", "throughput/")) and "seconds" not in k
        }
        lines.append(json.dumps(timeless, sort_keys=True))
    return lines


@pytest.mark.slow
def test_placement_on_the_jobs_device_changes_nothing(tiny_job, tmp_path: Path) -> None:
    """PPO with its reference, critic and reward model placed on the CPU (the job's device: the
    hooks run, nothing moves) gives the same numbers as without placement."""
    common = ("algo=ppo", "algo.samples_per_prompt=2", "reward=rm", "feedback.labels=16")
    tiny_job(*common, out="plain")
    placed = (f"placement.{role}=cpu" for role in ("reference", "critic", "reward"))
    tiny_job(*common, *placed, out="placed")
    assert _steps(tmp_path / "placed") == _steps(tmp_path / "plain")


@pytest.mark.slow
def test_placing_a_model_the_job_lacks_is_one_line(tiny_job) -> None:
    with pytest.raises(ConfigError, match=r"placement.critic=cpu but this job \(algo=rrhf\)"):
        tiny_job("algo=rrhf", "placement.critic=cpu")
