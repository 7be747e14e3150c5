"""Seconds per PPO step through alignbench's hooks vs a plain-PyTorch lower bound, same process.

Two recipes, each beside its own lower bound, all four interleaved:

* the default recipe, PPO-ptx (``ptx_coef=0.5``): every update also takes the NLL of a batch of
  16 SFT demonstrations of the built-in ``facts`` task;
* plain PPO (``algo.ptx_coef=0``).

Settings (issue #4): Llama with vocab 1024 (the facts vocabulary padded with filler words),
hidden 128, intermediate 512, 4 layers, 4 heads, untied output layer (1.31 M parameters);
prompts of 16 tokens; exactly 32 new tokens; 16 sequences per step; 1 PPO epoch, 1 mini-batch;
separate policy, reference, value and reward networks; fp32; 2 threads.

The lower bound does the work PPO cannot avoid, on the same models and shapes, with nothing
else: one KV-cache generation, the reference / value / reward forwards, and one
forward+backward+AdamW step of the policy and of the critic; for PPO-ptx, the policy's forward
on the same pre-tokenised demonstration batch joins that one backward. Median after warm-up.

    python benchmarks/ppo_step.py [--steps 15] [--warmup 3] [--threads 2]
    python benchmarks/ppo_step.py --smoke   # 2 steps of tiny models: does it still run?

Run it on a quiet machine: with other processes on the cores, 2 threads of small ops wait on
each other and every number (the ratios too) is noise.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf

from alignbench import PromptStream, Reward, Run, SamplingParams, Task
from alignbench.batch import encode_responses
from alignbench.budget import Budget, FlopCounter
from alignbench.config import BudgetConfig, ModelConfig
from alignbench.defaults import DefaultScore
from alignbench.models import (
    ScalarHeadModel,
    build_model,
    build_tokenizer,
    count_parameters,
    save_pretrained,
)
from alignbench.registry import build_registry
from alignbench_plugins.ppo import PPO, PPOConfig

VOCAB_WORDS = 1021  # 1024 with pad, eos, unk
PARTS = ("generation", "scoring", "update", "total")


@dataclass(frozen=True)
class Settings:
    """The shapes of one benchmark run."""

    prompt_tokens: int
    new_tokens: int
    sequences: int
    ptx_batch_size: int
    model: ModelConfig


FULL = Settings(
    prompt_tokens=16,
    new_tokens=32,
    sequences=16,
    ptx_batch_size=16,
    model=ModelConfig(
        hidden_size=128,
        intermediate_size=512,
        num_layers=4,
        num_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    ),
)
SMOKE = Settings(
    prompt_tokens=4,
    new_tokens=4,
    sequences=4,
    ptx_batch_size=4,
    model=ModelConfig(
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    ),
)


class RewardNetwork(Reward):
    """A separate reward network: a scalar head read at each sequence's last token."""

    def __init__(self, model: ScalarHeadModel) -> None:
        self.model = model

    @torch.no_grad()
    def score_batch(self, batch) -> torch.Tensor:
        values = self.model(batch.input_ids, batch.attention_mask)
        last = batch.attention_mask.shape[1] - 1 - batch.attention_mask.flip(1).argmax(1)
        return values[torch.arange(len(last)), last]


def facts_task() -> Task:
    """The built-in ``facts`` task with its default config, built through the plugin registry."""
    entry = build_registry().get("task", "facts")
    return entry.cls(entry.config_cls(name="facts"))


@dataclass
class Setup:
    """One recipe: its Run with PPO registered, the prompts, and the four networks."""

    run: Run
    prompts: list[dict]
    networks: dict[str, torch.nn.Module]


def build(tmp: Path, task: Task, ptx_coef: float, s: Settings) -> Setup:
    """PPO with ``ptx_coef`` on a hand-built Run with the benchmark's four networks."""
    torch.manual_seed(0)
    words = task.vocabulary()
    words += [f"w{i}" for i in range(VOCAB_WORDS - len(words))]
    tokenizer = build_tokenizer(words)
    policy = build_model(s.model, tokenizer).eval()
    save_pretrained(policy, tokenizer, tmp / "sft")
    reward_model = ScalarHeadModel(build_model(s.model, tokenizer)).eval().requires_grad_(False)
    flops = FlopCounter()
    flops.track(policy, "policy")
    flops.track(reward_model, "reward")
    registry = build_registry()
    config = PPOConfig(
        name="ppo",
        prompts_per_step=s.sequences,
        samples_per_prompt=1,
        ppo_epochs=1,
        num_minibatches=1,
        max_new_tokens=s.new_tokens,
        ptx_coef=ptx_coef,
        ptx_batch_size=s.ptx_batch_size,
    )
    run = Run(
        cfg=OmegaConf.create({"seed": 0}),
        config=config,
        task=task,
        reward=RewardNetwork(reward_model),
        tokenizer=tokenizer,
        policy=policy,
        sft_path=tmp / "sft",
        budget=Budget.from_config(BudgetConfig()),
        flops=flops,
        generator=torch.Generator().manual_seed(0),
        output_dir=tmp,
        pm=registry.pm,
    )
    ppo = PPO(run, config)
    ppo.params = SamplingParams(max_new_tokens=s.new_tokens, min_new_tokens=s.new_tokens)
    registry.pm.register(ppo, name="algorithm:ppo")
    registry.pm.register(DefaultScore(), name="core:default-score")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, len(words), (s.sequences, s.prompt_tokens), generator=g)
    prompts = [{"prompt": " ".join(words[int(i)] for i in row)} for row in ids]
    networks = {
        "policy": policy,
        "reference": ppo.reference,
        "critic": ppo.critic,
        "reward": reward_model,
    }
    return Setup(run, prompts, networks)


def alignbench_step(run: Run, prompts: list[dict], s: Settings) -> dict[str, float]:
    """One PPO step through the hooks, split into generation, scoring and update."""
    hook = run.pm.hook
    sample, spent = run.sample, {"generation": 0.0}

    def timed_sample(*args, **kwargs):
        start = time.perf_counter()
        out = sample(*args, **kwargs)
        spent["generation"] += time.perf_counter() - start
        return out

    run.sample = timed_sample
    t0 = time.perf_counter()
    batch = hook.alignbench_rollout(run=run, prompts=prompts)
    t1 = time.perf_counter()
    batch = hook.alignbench_score(run=run, batch=batch)
    t2 = time.perf_counter()
    stats = hook.alignbench_update(run=run, batch=batch)
    t3 = time.perf_counter()
    run.sample = sample
    assert batch.response_ids.shape == (s.sequences, s.new_tokens)
    assert ("loss/ptx" in stats) == bool(run.config.ptx_coef), "ptx term ran iff ptx_coef > 0"
    return {
        "generation": spent["generation"],
        "scoring": (t1 - t0 - spent["generation"]) + (t2 - t1),
        "update": t3 - t2,
        "total": t3 - t0,
    }


def demo_batches(run: Run, count: int, size: int) -> list[tuple[torch.Tensor, ...]]:
    """``count`` pre-tokenised batches of SFT demonstrations: ids, mask, response mask, start."""
    stream = PromptStream(run.task.splits["sft"], size, seed=1)
    out = []
    for _ in range(count):
        rows = stream.next()
        ids = encode_responses(run.tokenizer, [r["response"] for r in rows])
        b = run.collate(rows, ids, 1, ["demonstration"] * size)
        out.append((b.input_ids, b.attention_mask, b.response_mask, b.prompt_length))
    return out


class LowerBound:
    """The same work in plain PyTorch: no bookkeeping, no hooks, masks only where padding is."""

    def __init__(self, setup: Setup, s: Settings, demos: list | None) -> None:
        self.net = setup.networks
        prompt_ids = setup.run.collate(
            setup.prompts, [[]] * s.sequences, 1, ["p"] * s.sequences
        ).input_ids
        self.prompt_ids = prompt_ids[:, : s.prompt_tokens]
        self.new_tokens = s.new_tokens
        self.demos = demos
        self.policy_opt = torch.optim.AdamW(self.net["policy"].parameters(), lr=1e-6)
        self.critic_opt = torch.optim.AdamW(self.net["critic"].parameters(), lr=1e-6)
        self.generator = torch.Generator().manual_seed(2)
        self.steps = 0

    def ptx_nll(self) -> torch.Tensor:
        """NLL of the next demonstration batch under the policy (left-padded prompts)."""
        ids, mask, response_mask, start = self.demos[self.steps % len(self.demos)]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.net["policy"](
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=ids.shape[1] - start + 1,
        ).logits[:, :-1]
        logprobs = torch.log_softmax(logits, -1).gather(-1, ids[:, start:, None])[..., 0]
        return -(logprobs * response_mask).sum() / response_mask.sum()

    def step(self) -> dict[str, float]:
        policy, critic, n = self.net["policy"], self.net["critic"], self.new_tokens
        t0 = time.perf_counter()
        with torch.no_grad():
            out = policy(input_ids=self.prompt_ids, use_cache=True)
            cache, tokens = out.cache, []
            for _ in range(n):
                probs = torch.softmax(out.logits[:, -1], -1)
                token = torch.multinomial(probs, 1, generator=self.generator)
                tokens.append(token)
                out = policy(input_ids=token, cache=cache, use_cache=True)
                cache = out.cache
            sequences = torch.cat([self.prompt_ids, *tokens], dim=1)
        t1 = time.perf_counter()
        with torch.no_grad():
            self.net["reference"](input_ids=sequences, logits_to_keep=n + 1)
            critic(sequences, torch.ones_like(sequences), positions_to_keep=n + 1)
            self.net["reward"](sequences, torch.ones_like(sequences))
        t2 = time.perf_counter()
        logits = policy(input_ids=sequences, logits_to_keep=n + 1).logits[:, :-1]
        logprobs = torch.log_softmax(logits, -1).gather(-1, sequences[:, -n:, None])
        values = critic(sequences, torch.ones_like(sequences), positions_to_keep=n + 1)
        loss = -logprobs.mean() + values.pow(2).mean()
        if self.demos is not None:
            loss = loss + 0.5 * self.ptx_nll()
        self.policy_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.policy_opt.step()
        self.critic_opt.step()
        t3 = time.perf_counter()
        self.steps += 1
        return {"generation": t1 - t0, "scoring": t2 - t1, "update": t3 - t2, "total": t3 - t0}


def median(times: list[dict[str, float]], part: str) -> float:
    """Median seconds of ``part``; a benchmark that measured nothing is an error."""
    value = statistics.median(t[part] for t in times)
    if not (math.isfinite(value) and value > 0):
        raise RuntimeError(f"{part}: median time {value} — nothing was measured")
    return value


def print_table(title: str, ours: list[dict], base: list[dict]) -> float:
    """One recipe's table; returns its total ratio."""
    print(f"{title}\n")
    print(f"| {'part':<10} | {'alignbench (s)':>14} | {'lower bound (s)':>15} | {'ratio':>5} |")
    print(f"|{'-' * 12}|{'-' * 16}|{'-' * 17}|{'-' * 7}|")
    for part in PARTS:
        a, b = median(ours, part), median(base, part)
        print(f"| {part:<10} | {a:>14.4f} | {b:>15.4f} | {a / b:>5.2f} |")
    print()
    return median(ours, "total") / median(base, "total")


def main() -> None:
    """Print, for PPO-ptx and plain PPO, the median seconds per step, their split and ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (issue #4: 2)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2 steps of tiny models on 1 thread (what make test runs: does it still work?)",
    )
    args = parser.parse_args()
    s = SMOKE if args.smoke else FULL
    steps, warmup = (2, 1) if args.smoke else (args.steps, args.warmup)
    # One thread in smoke mode: on a busy CI machine, 2 threads of tiny ops wait on each other.
    torch.set_num_threads(1 if args.smoke else args.threads)
    transformers.utils.logging.disable_progress_bar()
    task = facts_task()
    recipes = {"ptx": 0.5, "plain": 0.0}
    times: dict[str, tuple[list, list]] = {name: ([], []) for name in recipes}
    with tempfile.TemporaryDirectory() as tmp:
        setups, bounds = {}, {}
        for name, ptx_coef in recipes.items():
            setups[name] = build(Path(tmp) / name, task, ptx_coef, s)
            demos = demo_batches(setups[name].run, 8, s.ptx_batch_size) if ptx_coef else None
            bounds[name] = LowerBound(setups[name], s, demos)
        for i in range(warmup + steps):
            for name in recipes:
                a = alignbench_step(setups[name].run, setups[name].prompts, s)
                b = bounds[name].step()
                if i >= warmup:
                    times[name][0].append(a)
                    times[name][1].append(b)
        n_policy = count_parameters(setups["ptx"].networks["policy"])
    smoke = " (smoke: tiny models, timings meaningless)" if args.smoke else ""
    print(f"policy parameters: {n_policy / 1e6:.2f} M; threads: {torch.get_num_threads()}{smoke}")
    print(f"median of {steps} steps after {warmup} warm-up steps, recipes interleaved\n")
    ptx = print_table(
        "PPO-ptx, the default recipe (ptx_coef=0.5; the lower bound includes the ptx NLL)",
        *times["ptx"],
    )
    plain = print_table("plain PPO (ptx_coef=0)", *times["plain"])
    ptx_cost = median(times["ptx"][0], "total") / median(times["plain"][0], "total")
    print(f"PPO-ptx step / lower bound = {ptx:.2f} (target <= 1.20)")
    print(f"plain PPO step / lower bound = {plain:.2f} (target <= 1.20)")
    print(f"PPO-ptx step / plain PPO step = {ptx_cost:.2f} (the cost of the ptx term)")


if __name__ == "__main__":
    main()
