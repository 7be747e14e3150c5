"""Seconds per PPO step through alignbench's hooks vs a plain-PyTorch lower bound, same process.

Settings (issue #4): Llama with vocab 1024, hidden 128, intermediate 512, 4 layers, 4 heads,
untied output layer (1.31 M parameters); prompts of 16 tokens; exactly 32 new tokens; 16
sequences per step; 1 PPO epoch, 1 mini-batch; separate policy, reference, value and reward
networks; fp32; 2 threads.

The lower bound does the work PPO cannot avoid, on the same models and shapes, with nothing
else: one KV-cache generation, the reference / value / reward forwards, and one
forward+backward+AdamW step of the policy and of the critic. Both are timed interleaved, median
after warm-up.

    python benchmarks/ppo_step.py [--steps 15] [--warmup 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from alignbench import Reward
from alignbench.budget import Budget, FlopCounter
from alignbench.config import BudgetConfig, ModelConfig
from alignbench.models import (
    ScalarHeadModel,
    build_model,
    build_tokenizer,
    count_parameters,
    save_pretrained,
)
from alignbench.registry import build_registry
from alignbench.run import Run
from alignbench.sampling import SamplingParams
from alignbench_plugins.ppo import PPO, PPOConfig

PROMPT_TOKENS, NEW_TOKENS, SEQUENCES = 16, 32, 16
MODEL = ModelConfig(
    hidden_size=128,
    intermediate_size=512,
    num_layers=4,
    num_heads=4,
    max_position_embeddings=64,
    tie_word_embeddings=False,
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


def build(tmp: Path) -> tuple[Run, PPO, list[dict], dict[str, torch.nn.Module]]:
    """The PPO algorithm on a hand-built Run with the benchmark's four networks."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer([f"w{i}" for i in range(1021)])  # 1024 with pad, eos, unk
    policy = build_model(MODEL, tokenizer).eval()
    save_pretrained(policy, tokenizer, tmp / "sft")
    reward_model = ScalarHeadModel(build_model(MODEL, tokenizer)).eval().requires_grad_(False)
    flops = FlopCounter()
    flops.track(policy, "policy")
    flops.track(reward_model, "reward")
    registry = build_registry()
    run = Run(
        cfg=OmegaConf.create({}),
        config=None,
        task=None,
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
    config = PPOConfig(
        name="ppo",
        prompts_per_step=SEQUENCES,
        samples_per_prompt=1,
        ppo_epochs=1,
        num_minibatches=1,
        max_new_tokens=NEW_TOKENS,
    )
    run.config = config
    ppo = PPO(run, config)
    ppo.params = SamplingParams(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    registry.pm.register(ppo, name="algorithm:ppo")
    from alignbench.defaults import DefaultScore

    registry.pm.register(DefaultScore(), name="core:default-score")
    g = torch.Generator().manual_seed(1)
    words = torch.randint(0, 1021, (SEQUENCES, PROMPT_TOKENS), generator=g)
    prompts = [{"prompt": " ".join(f"w{int(w)}" for w in row)} for row in words]
    networks = {
        "policy": policy,
        "reference": ppo.reference,
        "critic": ppo.critic,
        "reward": reward_model,
    }
    return run, ppo, prompts, networks


def alignbench_step(run: Run, prompts: list[dict]) -> dict[str, float]:
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
    hook.alignbench_update(run=run, batch=batch)
    t3 = time.perf_counter()
    run.sample = sample
    assert batch.response_ids.shape == (SEQUENCES, NEW_TOKENS)
    return {
        "generation": spent["generation"],
        "scoring": (t1 - t0 - spent["generation"]) + (t2 - t1),
        "update": t3 - t2,
        "total": t3 - t0,
    }


class LowerBound:
    """The same work in plain PyTorch: no masks, no bookkeeping, no hooks."""

    def __init__(self, networks: dict[str, torch.nn.Module], prompt_ids: torch.Tensor) -> None:
        self.net = networks
        self.prompt_ids = prompt_ids
        self.policy_opt = torch.optim.AdamW(networks["policy"].parameters(), lr=1e-6)
        self.critic_opt = torch.optim.AdamW(networks["critic"].parameters(), lr=1e-6)
        self.generator = torch.Generator().manual_seed(2)

    def step(self) -> dict[str, float]:
        policy, critic = self.net["policy"], self.net["critic"]
        t0 = time.perf_counter()
        with torch.no_grad():
            out = policy(input_ids=self.prompt_ids, use_cache=True)
            cache, tokens = out.cache, []
            for _ in range(NEW_TOKENS):
                probs = torch.softmax(out.logits[:, -1], -1)
                token = torch.multinomial(probs, 1, generator=self.generator)
                tokens.append(token)
                out = policy(input_ids=token, cache=cache, use_cache=True)
                cache = out.cache
            sequences = torch.cat([self.prompt_ids, *tokens], dim=1)
        t1 = time.perf_counter()
        with torch.no_grad():
            self.net["reference"](input_ids=sequences, logits_to_keep=NEW_TOKENS + 1)
            critic(sequences, torch.ones_like(sequences), positions_to_keep=NEW_TOKENS + 1)
            self.net["reward"](sequences, torch.ones_like(sequences))
        t2 = time.perf_counter()
        logits = policy(input_ids=sequences, logits_to_keep=NEW_TOKENS + 1).logits[:, :-1]
        logprobs = torch.log_softmax(logits, -1).gather(-1, sequences[:, -NEW_TOKENS:, None])
        values = critic(sequences, torch.ones_like(sequences), positions_to_keep=NEW_TOKENS + 1)
        loss = -logprobs.mean() + values.pow(2).mean()
        self.policy_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.policy_opt.step()
        self.critic_opt.step()
        t3 = time.perf_counter()
        return {"generation": t1 - t0, "scoring": t2 - t1, "update": t3 - t2, "total": t3 - t0}


def main() -> None:
    """Print the median seconds per step of both, their split, and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        run, ppo, prompts, networks = build(Path(tmp))
        prompt_ids = run.collate(prompts, [[]] * SEQUENCES, 1, ["p"] * SEQUENCES).input_ids
        prompt_ids = prompt_ids[:, :PROMPT_TOKENS]
        bound = LowerBound(networks, prompt_ids)
        ours, base = [], []
        for i in range(args.warmup + args.steps):
            a, b = alignbench_step(run, prompts), bound.step()
            if i >= args.warmup:
                ours.append(a)
                base.append(b)
    n_policy = count_parameters(networks["policy"])
    print(f"policy parameters: {n_policy / 1e6:.2f} M; threads: {torch.get_num_threads()}")
    print(f"median of {args.steps} steps after {args.warmup} warm-up steps\n")
    print(f"| {'part':<10} | {'alignbench (s)':>14} | {'lower bound (s)':>15} | {'ratio':>5} |")
    print(f"|{'-' * 12}|{'-' * 16}|{'-' * 17}|{'-' * 7}|")
    for part in ("generation", "scoring", "update", "total"):
        a = statistics.median(x[part] for x in ours)
        b = statistics.median(x[part] for x in base)
        print(f"| {part:<10} | {a:>14.4f} | {b:>15.4f} | {a / b:>5.2f} |")
    total = statistics.median(x["total"] for x in ours) / statistics.median(
        x["total"] for x in base
    )
    print(f"\nPPO step / lower bound = {total:.2f} (target <= 1.20)")


if __name__ == "__main__":
    main()
