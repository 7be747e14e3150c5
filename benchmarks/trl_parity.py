"""Seconds per optimizer step, alignbench vs TRL 1.16: GRPO, RLOO, DPO and reward-model training.

Settings (issue #13): Llama with vocab 1024, hidden 128, intermediate 512, 4 layers, 4 heads,
untied output layer (1.31 M parameters); fp32; 2 threads; prompts of 16 tokens; exactly 32 new
tokens; 16 sequences per step: 4 prompts x 4 samples (GRPO, RLOO), 16 pairs (DPO, reward model);
one epoch over each rollout; GRPO ``beta=0.04``, RLOO ``beta=0.05``, DPO ``beta=0.1`` with a
separate reference model; the same cheap rule reward (share of even token ids) on both sides.

A step is the whole optimizer step as each framework performs it. alignbench: the rollout,
score and update hooks of the plugin (GRPO/RLOO: sampling, the reference forward, the update;
DPO: collating the next 16 pairs, the reference forward, the update); the reward model: one call
of ``train_reward_model`` on 16 groups of 2 (so alignbench also pays, every step, for building
its AdamW: conservative). TRL: one iteration of ``Trainer.train``'s loop (data loading, TRL's
generation and scoring for GRPO/RLOO, forwards, backward, clipping, AdamW, callbacks), timed
from one ``on_step_end`` to the next in a worker subprocess.

The same work on both sides (same sequences, tokens and models), except where noted:

* TRL RLOO runs one more no-grad policy forward per step than alignbench (it recomputes the
  "old" log-probs; alignbench keeps the sampler's): TRL's design, not removable by an option.
* TRL GRPO/RLOO compute the entropy of every position in the training forward; alignbench's GRPO
  does too (for its log), RLOO does not.
* DPO: alignbench caches the reference's log-probs of a pair once seen; here every step brings
  16 new pairs, so both run the reference forward every step, as TRL does by default.
* TRL's ``pad_to_multiple_of`` is set to None (its "auto" may pad); no padding on either side.

TRL options set so that its definitions are alignbench's (both the timing and the parity use
them): GRPO ``loss_type="grpo"`` is alignbench's ``loss_type=seq_mean`` (TRL's default
``"dapo"`` is ``token_mean``, its ``"dr_grpo"`` is ``dr_grpo``), ``scale_rewards="group"`` is
``scale_rewards=group``, ``use_bias_correction_kl=False`` (TRL 1.16 multiplies the KL term by the
importance ratio by default; alignbench does not: the values agree at ratio 1, the gradients
do not), ``beta=0.04`` (TRL's default is 0). RLOO: TRL's defaults are alignbench's (``beta=0.05``,
k1 sequence KL folded into the reward, no advantage normalisation). DPO: ``loss_type=["sigmoid"]``.
Reward model: no ``center_rewards_coefficient``.

Every process takes its steps in turn (one alignbench step of a method, then one TRL step of it,
method after method, round after round), so all see the same machine; medians after warm-up.
The parity check then computes each loss both ways on the same batch and weights
(``loss_parity``; also ``tests/test_trl_parity.py``).

TRL is not a dependency of alignbench: ``pip install -e '.[bench]'`` (or put TRL 1.16 in a
folder of its own and pass ``--trl-path DIR``); without it the TRL side is skipped and the reason
printed.

    python benchmarks/trl_parity.py [--steps 30] [--warmup 3] [--threads 2] [--trl-path DIR]
    python benchmarks/trl_parity.py --smoke   # 2 steps of tiny models: does it still run?
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from _common import FULL_MODEL, SMOKE_MODEL, TRLProcess, checked_median
from omegaconf import OmegaConf

from alignbench import Reward, Run, SamplingConfig, SamplingParams, ops
from alignbench.config import ModelConfig, RMStageConfig
from alignbench.feedback import Group
from alignbench.job import Job
from alignbench.models import (
    ScalarHeadModel,
    build_model,
    build_tokenizer,
    count_parameters,
    save_pretrained,
)
from alignbench.reward_model import group_batch, sequence_rewards, train_reward_model
from alignbench_plugins.dpo import DPOConfig
from alignbench_plugins.grpo import GRPOConfig
from alignbench_plugins.rloo import RLOOConfig

METHODS = ("grpo", "rloo", "dpo", "reward")
TITLES = {"grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO", "reward": "reward model"}
TARGET = 0.8
WORDS = [f"w{i}" for i in range(1021)]  # 1024 tokens with pad, eos, unk
BETA = {"grpo": 0.04, "rloo": 0.05, "dpo": 0.1}
LR = 1e-5
# transformers 5 warns that TRL passes its deprecated gradient_checkpointing names: not ours.
warnings.filterwarnings("ignore", category=FutureWarning)


@dataclass(frozen=True)
class Settings:
    """The shapes of one benchmark run."""

    prompt_tokens: int
    new_tokens: int
    prompts: int  # GRPO/RLOO prompts per step (x samples = sequences)
    samples: int
    pairs: int  # DPO and reward-model pairs per step
    model: ModelConfig


FULL = Settings(
    prompt_tokens=16,
    new_tokens=32,
    prompts=4,
    samples=4,
    pairs=16,
    model=FULL_MODEL,
)
SMOKE = Settings(
    prompt_tokens=4,
    new_tokens=4,
    prompts=2,
    samples=2,
    pairs=2,
    model=SMOKE_MODEL,
)


# -- data and models, identical on both sides ----------------------------------------------------


def even_share(ids: list[list[int]]) -> list[float]:
    """The rule reward: the share of even token ids in each response (nearly free to compute)."""
    return [sum(i % 2 == 0 for i in row) / max(1, len(row)) for row in ids]


class EvenShare(Reward):
    """alignbench's side of the rule reward."""

    def __init__(self) -> None:
        pass

    def score_batch(self, batch) -> torch.Tensor:
        rows = [
            r[m.bool()].tolist()
            for r, m in zip(batch.response_ids, batch.response_mask, strict=True)
        ]
        return torch.tensor(even_share(rows))


def texts(count: int, length: int, seed: int) -> list[str]:
    """``count`` random texts of ``length`` words (one token each)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(WORDS), (count, length), generator=g)
    return [" ".join(WORDS[int(i)] for i in row) for row in ids]


def pair_groups(count: int, s: Settings) -> list[Group]:
    """``count`` groups of 2 ranked responses: prompt_tokens + (new_tokens - 1 words + eos)."""
    prompts = texts(count, s.prompt_tokens, 1)
    chosen, rejected = texts(count, s.new_tokens - 1, 2), texts(count, s.new_tokens - 1, 3)
    return [
        Group(row={"prompt": p}, responses=[c, r], preference=[1.0, 0.0])
        for p, c, r in zip(prompts, chosen, rejected, strict=True)
    ]


def policy_model(s: Settings, tokenizer) -> transformers.LlamaForCausalLM:
    """The policy every method starts from (seeded: the same weights in every process)."""
    torch.manual_seed(0)
    return build_model(s.model, tokenizer)


def reward_network(s: Settings, tokenizer) -> ScalarHeadModel:
    """alignbench's reward model with a random (not zero) head, so its loss is not just log 2."""
    model = ScalarHeadModel(policy_model(s, tokenizer))
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model


def algorithm(method: str, tmp: Path, s: Settings, groups: list[Group] | None) -> tuple[Run, Any]:
    """The alignbench plugin of ``method`` registered on the Run of a :class:`Job`: the
    benchmark's policy, the rule reward and stage-2 ``groups``."""
    if method == "dpo":
        config = DPOConfig(name="dpo", prompts_per_step=s.pairs, beta=BETA["dpo"], lr=LR)
    else:
        config = (GRPOConfig if method == "grpo" else RLOOConfig)(
            name=method,
            prompts_per_step=s.prompts,
            samples_per_prompt=s.samples,
            beta=BETA[method],
            sampling=SamplingConfig(max_new_tokens=s.new_tokens),
            lr=LR,
        )
    tokenizer = build_tokenizer(WORDS)
    policy = policy_model(s, tokenizer).eval()
    save_pretrained(policy, tokenizer, tmp / "sft")
    job = Job(OmegaConf.create({"seed": 0}), tmp)
    run = job.make_run(
        config=config,
        task=None,  # no plugin here reads the task: prompts come from the benchmark
        reward=EvenShare(),
        tokenizer=tokenizer,
        policy=policy,
        sft_path=tmp / "sft",
        groups_loader=lambda split: groups or [],
    )
    algo = job.start(method)
    if method != "dpo":
        # Exactly new_tokens tokens, as TRL's min_new_tokens below.
        algo.params = SamplingParams(max_new_tokens=s.new_tokens, min_new_tokens=s.new_tokens)
    return run, algo


class AlignbenchSide:
    """One method's alignbench steps."""

    def __init__(self, method: str, tmp: Path, s: Settings, rounds: int) -> None:
        self.method, self.s, self.steps = method, s, 0
        self.groups = pair_groups(s.pairs * rounds, s)
        if method == "reward":
            self.tokenizer = build_tokenizer(WORDS)
            self.model = reward_network(s, self.tokenizer)
            self.config = RMStageConfig(batch_size=s.pairs, lr=LR, weight_decay=0.0, patience=0)
            return
        self.run, _ = algorithm(method, tmp, s, self.groups if method == "dpo" else None)
        self.prompts = [{"prompt": p} for p in texts(s.prompts * rounds, s.prompt_tokens, 1)]

    def step(self) -> float:
        """Seconds of one optimizer step."""
        i, s = self.steps, self.s
        self.steps += 1
        start = time.perf_counter()
        if self.method == "reward":
            chunk = self.groups[i * s.pairs : (i + 1) * s.pairs]
            train_reward_model(self.model, self.tokenizer, chunk, self.config, epochs=1)
            return time.perf_counter() - start
        hook, run = self.run.pm.hook, self.run
        batch = hook.alignbench_rollout(
            run=run, prompts=self.prompts[i * s.prompts : (i + 1) * s.prompts]
        )
        batch = hook.alignbench_score(run=run, batch=batch)
        hook.alignbench_update(run=run, batch=batch)
        seconds = time.perf_counter() - start
        run.step += 1
        assert batch.num_sequences == (
            2 * s.pairs if self.method == "dpo" else s.prompts * s.samples
        )
        assert batch.input_ids.shape[1] == s.prompt_tokens + s.new_tokens
        return seconds


# -- TRL 1.16 ------------------------------------------------------------------------------------


def trl_config(method: str, tmp: str, s: Settings, **extra: Any) -> Any:
    """TRL's config of ``method`` with the benchmark's settings (and the parity options)."""
    import trl

    common = dict(
        output_dir=tmp,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        max_grad_norm=1.0,
        weight_decay=0.0,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        max_steps=10**6,
        seed=0,
        bf16=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    if method in ("grpo", "rloo"):
        cls = trl.GRPOConfig if method == "grpo" else trl.RLOOConfig
        options = dict(
            per_device_train_batch_size=s.prompts * s.samples,
            num_generations=s.samples,
            steps_per_generation=1,
            num_iterations=1,
            max_completion_length=s.new_tokens,
            # exactly new_tokens tokens (eos forbidden before), as alignbench's min_new_tokens
            generation_kwargs={"min_new_tokens": s.new_tokens},
            beta=BETA[method],
            epsilon=0.2,
            temperature=1.0,
            pad_to_multiple_of=None,
        )
        if method == "grpo":
            # alignbench GRPO's defaults: loss_type=seq_mean is TRL's "grpo" (TRL's default
            # "dapo" is alignbench's token_mean); scale_rewards=group on both; TRL's KL
            # importance correction (use_bias_correction_kl) has no alignbench counterpart.
            options.update(loss_type="grpo", scale_rewards="group", use_bias_correction_kl=False)
        return cls(**common, **options, **extra)
    if method == "dpo":
        return trl.DPOConfig(
            **common,
            per_device_train_batch_size=s.pairs,
            beta=BETA["dpo"],
            loss_type=["sigmoid"],
            pad_to_multiple_of=None,
            max_length=None,
            precompute_ref_log_probs=False,
            **extra,
        )
    return trl.RewardConfig(
        **common, per_device_train_batch_size=s.pairs, pad_to_multiple_of=None, max_length=None
    )


def trl_reward_model(s: Settings, tokenizer, source: ScalarHeadModel | None = None):
    """TRL's reward model: a Llama with a 1-output score head (weights of ``source`` if given)."""
    source = source or reward_network(s, tokenizer)
    config = copy.deepcopy(source.config)
    config.num_labels = 1
    model = transformers.LlamaForSequenceClassification(config)
    model.model.load_state_dict(source.trunk.state_dict())
    # TRL's head has no bias: it cancels in the pairwise loss, so the losses still agree.
    model.score.weight.data.copy_(source.head.weight.data)
    return model


def trl_trainer(
    method: str, tmp: str, s: Settings, rounds: int, callbacks: list, **extra: Any
) -> Any:
    """TRL's trainer of ``method`` on the benchmark's data and models."""
    import trl
    from datasets import Dataset

    tokenizer = build_tokenizer(WORDS)
    args = trl_config(method, tmp, s, **extra)
    if method in ("grpo", "rloo"):

        def reward(completions, completion_ids, **kwargs) -> list[float]:
            return even_share(completion_ids)

        prompts = texts(s.prompts * rounds, s.prompt_tokens, 1)
        # A folder, not a model object: TRL builds its reference model from the policy's path.
        folder = Path(tmp) / "policy"
        policy_model(s, tokenizer).save_pretrained(folder)
        cls = trl.GRPOTrainer if method == "grpo" else trl.RLOOTrainer
        return cls(
            model=str(folder),
            reward_funcs=reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    groups = pair_groups(s.pairs * rounds, s)
    if method == "dpo":
        data = Dataset.from_dict(
            {
                "prompt": [g.row["prompt"] for g in groups],
                # TRL appends eos, as alignbench's encode_responses does
                "chosen": [" " + g.responses[0] for g in groups],
                "rejected": [" " + g.responses[1] for g in groups],
            }
        )
        return trl.DPOTrainer(
            model=policy_model(s, tokenizer),
            ref_model=policy_model(s, tokenizer),
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    chosen, rejected = rm_ids(tokenizer, groups)
    data = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    return trl.RewardTrainer(
        model=trl_reward_model(s, tokenizer),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def rm_ids(tokenizer, groups: list[Group]) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt + response + eos token ids of each group's chosen and rejected response."""
    batch, _ = group_batch(tokenizer, groups)
    ids = batch.input_ids.tolist()
    return ids[0::2], ids[1::2]


def trl_worker(method: str, s: Settings, threads: int, rounds: int) -> None:
    """Run TRL's trainer, one step per "go" line on stdin, answering "step <seconds>"."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # TRL prints; only protocol lines go to the parent
    try:
        import trl
        from transformers import TrainerCallback
    except ImportError as exc:
        protocol.write(f"unavailable {exc}\n")
        return
    torch.set_num_threads(threads)
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    clock = {"start": 0.0}

    class Lockstep(TrainerCallback):
        """Report each step's seconds and wait for the parent's next "go"."""

        def on_step_end(self, args, state, control, **kwargs):
            protocol.write(f"step {time.perf_counter() - clock['start']}\n")
            if sys.stdin.readline().strip() != "go":
                protocol.close()
                os._exit(0)
            clock["start"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(method, tmp, s, rounds, [Lockstep()])
        protocol.write(f"ready {trl.__version__}\n")
        if sys.stdin.readline().strip() != "go":
            return
        clock["start"] = time.perf_counter()
        trainer.train()


# -- loss parity ---------------------------------------------------------------------------------


def _perturbed_old(batch, generator: torch.Generator) -> torch.Tensor:
    """Sampler log-probs moved by noise, so the ratio is not 1 and the clip bites somewhere."""
    noise = 0.3 * torch.randn(batch.logprobs.shape, generator=generator)
    return batch.logprobs + noise * batch.response_mask


def _rollout(method: str, tmp: Path, s: Settings) -> tuple[Run, Any, Any]:
    """One scored alignbench batch of ``method`` with perturbed "old" log-probs."""
    run, algo = algorithm(method, tmp, s, None)
    prompts = [{"prompt": p} for p in texts(s.prompts, s.prompt_tokens, 1)]
    batch = run.pm.hook.alignbench_rollout(run=run, prompts=prompts)
    batch = run.pm.hook.alignbench_score(run=run, batch=batch)
    batch.logprobs = _perturbed_old(batch, torch.Generator().manual_seed(5))
    return run, algo, batch


def _pg_inputs(batch) -> dict[str, torch.Tensor]:
    """The batch in TRL's GRPO/RLOO input layout."""
    p = batch.prompt_length
    return {
        "prompt_ids": batch.input_ids[:, :p],
        "prompt_mask": batch.attention_mask[:, :p],
        "completion_ids": batch.response_ids,
        "completion_mask": batch.response_mask,
        "ref_per_token_logps": batch.extras["ref_logprobs"],
        "num_items_in_batch": batch.response_mask.sum(),
    }


def _trl_loss(trainer: Any, run: Run, call: Callable[[Any], torch.Tensor]) -> float:
    """TRL's loss with ``run``'s current policy weights, before alignbench updates them."""
    trainer.model.load_state_dict(run.policy.state_dict())
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train; one batch here
    with torch.no_grad():
        return float(call(trainer.model))


def grpo_parity(tmp: Path, s: Settings) -> tuple[float, float]:
    """alignbench GRPO's loss and TRL GRPOTrainer's, on the same batch and weights."""
    from trl.trainer.utils import nanstd

    run, algo, batch = _rollout("grpo", tmp, s)
    trainer = trl_trainer("grpo", str(tmp / "trl"), s, 1, [])
    rewards = batch.rewards.float().view(-1, s.samples)
    # TRL's advantage: (r - group mean) / (group std + 1e-4), its own nanstd.
    std = nanstd(rewards, dim=1).repeat_interleave(s.samples)
    mean = rewards.mean(dim=1).repeat_interleave(s.samples)
    inputs = _pg_inputs(batch) | {
        "advantages": (batch.rewards.float() - mean) / (std + 1e-4),
        "old_per_token_logps": batch.logprobs,
    }
    theirs = _trl_loss(trainer, run, lambda model: trainer._compute_loss(model, inputs))
    ours = algo.alignbench_update(run=run, batch=batch)["loss/total"]
    return ours, theirs


def rloo_parity(tmp: Path, s: Settings) -> tuple[float, float]:
    """alignbench RLOO's loss and TRL RLOOTrainer's, on the same batch and weights."""
    run, algo, batch = _rollout("rloo", tmp, s)
    trainer = trl_trainer("rloo", str(tmp / "trl"), s, 1, [])
    mask = batch.response_mask
    # TRL's advantage: r - beta * sum(old - ref), minus the mean of the other K - 1.
    kl = ((batch.logprobs - batch.extras["ref_logprobs"]) * mask).sum(-1)
    shaped = (batch.rewards.float() - BETA["rloo"] * kl).view(-1, s.samples)
    baseline = (shaped.sum(1, keepdim=True) - shaped) / (s.samples - 1)
    inputs = _pg_inputs(batch) | {
        "advantages": (shaped - baseline).view(-1),
        "old_logps": (batch.logprobs * mask).sum(-1),
    }
    theirs = _trl_loss(trainer, run, lambda model: trainer._compute_loss(model, inputs))
    ours = algo.alignbench_update(run=run, batch=batch)["loss/policy"]
    return ours, theirs


def dpo_parity(tmp: Path, s: Settings) -> tuple[float, float]:
    """alignbench DPO's sigmoid loss and TRL DPOTrainer's, on the same pairs and weights."""
    groups = pair_groups(s.pairs, s)
    run, algo = algorithm("dpo", tmp, s, groups)
    batch = run.pm.hook.alignbench_rollout(run=run, prompts=[])
    batch = run.pm.hook.alignbench_score(run=run, batch=batch)
    trainer = trl_trainer("dpo", str(tmp / "trl"), s, 1, [])
    # The policy moves away from the reference first, so that the loss is not log 2.
    with torch.no_grad():
        for p in run.policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(6)))
    trainer.ref_model.load_state_dict(algo.reference.state_dict())
    tokenizer, p = run.tokenizer, batch.prompt_length
    examples = []
    for i in batch.extras["pair_index"].tolist():
        ids = [batch.input_ids[2 * len(examples) + k] for k in range(2)]
        assert ids[0][:p].tolist() == tokenizer.encode(groups[i].row["prompt"])
        examples.append(
            {
                "prompt_ids": ids[0][:p].tolist(),
                "chosen_ids": ids[0][p:].tolist(),
                "rejected_ids": ids[1][p:].tolist(),
            }
        )
    inputs = trainer.data_collator(examples)
    theirs = _trl_loss(trainer, run, lambda model: trainer.compute_loss(model, inputs))
    ours = algo.alignbench_update(run=run, batch=batch)["loss/dpo"]
    return ours, theirs


def reward_parity(tmp: Path, s: Settings) -> tuple[float, float]:
    """alignbench's pairwise reward-model loss and TRL RewardTrainer's, same pairs and weights."""
    tokenizer = build_tokenizer(WORDS)
    groups = pair_groups(s.pairs, s)
    model = reward_network(s, tokenizer)
    torch.nn.init.normal_(model.head.bias, std=0.5)  # a bias cancels in pairs: check it does
    batch, preference = group_batch(tokenizer, groups)
    with torch.no_grad():
        scores = sequence_rewards(model, batch.input_ids, batch.attention_mask)
        ours = ops.ranking_rm_loss(batch.grouped(scores), preference).item()
    trainer = trl_trainer("reward", str(tmp / "trl"), s, 1, [])
    trainer.model.load_state_dict(trl_reward_model(s, tokenizer, model).state_dict())
    chosen, rejected = rm_ids(tokenizer, groups)
    inputs = trainer.data_collator(
        [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(chosen, rejected, strict=True)]
    )
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, inputs).item()
    return ours, theirs


PARITY = {"grpo": grpo_parity, "rloo": rloo_parity, "dpo": dpo_parity, "reward": reward_parity}


def loss_parity(s: Settings) -> dict[str, tuple[float, float]]:
    """Each method's loss, alignbench's and TRL's, on the same batch and weights (needs TRL)."""
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method, check in PARITY.items():
            out[method] = check(Path(tmp) / method, s)
    return out


# -- the benchmark -------------------------------------------------------------------------------


def main() -> None:
    """Print the median seconds per step of alignbench and TRL per method, their ratio, parity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (issue #13: 2)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument(
        "--smoke", action="store_true", help="2 steps of tiny models on 1 thread: does it run?"
    )
    parser.add_argument(
        "--trl-path",
        default=os.environ.get("ALIGNBENCH_TRL116_PATH"),
        help="folder holding TRL 1.16 (pip install --target DIR trl==1.16.0 ...), prepended to "
        "the path of the TRL side (default: $ALIGNBENCH_TRL116_PATH, else the environment's)",
    )
    parser.add_argument("--trl-worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    s = SMOKE if args.smoke else FULL
    steps, warmup = (2, 1) if args.smoke else (args.steps, args.warmup)
    rounds = args.rounds or warmup + steps
    # One thread in smoke mode: on a busy CI machine, 2 threads of tiny ops wait on each other.
    threads = 1 if args.smoke else args.threads
    if args.trl_worker:
        if args.trl_path:
            sys.path.insert(0, args.trl_path)
        trl_worker(args.trl_worker, s, threads, rounds)
        return
    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    methods = [m for m in args.methods.split(",") if m]
    ours: dict[str, list[float]] = {m: [] for m in methods}
    theirs: dict[str, list[float]] = {m: [] for m in methods}
    workers: dict[str, TRLProcess] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sides = {m: AlignbenchSide(m, Path(tmp) / m, s, rounds) for m in methods}
            for m in methods:
                command = [sys.executable, __file__, "--trl-worker", m, "--threads", str(threads)]
                command += ["--rounds", str(rounds)] + (["--smoke"] if args.smoke else [])
                workers[m] = TRLProcess(command, args.trl_path)
            for i in range(warmup + steps):
                for m in methods:
                    a = sides[m].step()
                    b = workers[m].step() if workers[m].version else None
                    if i >= warmup:
                        ours[m].append(a)
                        if b is not None:
                            theirs[m].append(b)
                    # progress on stderr: on a busy machine a full run takes many minutes
                    print(f"round {i + 1}: {m} {a:.3f} s vs {b or 0:.3f} s", file=sys.stderr)
    finally:
        for worker in workers.values():
            worker.close()
    n = count_parameters(policy_model(s, build_tokenizer(WORDS)))
    smoke = " (smoke: tiny models, timings meaningless)" if args.smoke else ""
    print(f"policy parameters: {n / 1e6:.2f} M; threads: {torch.get_num_threads()}{smoke}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"median of {steps} steps after {warmup} warm-up, alternating; load average {load:.1f}\n")
    version = next((w.version for w in workers.values() if w.version), None)
    trl_head = f"TRL {version} (s)" if version else "TRL (s)"
    print(f"| {'method':<12} | {'alignbench (s)':>14} | {trl_head:>16} | {'ratio':>5} |")
    print(f"|{'-' * 14}|{'-' * 16}|{'-' * 18}|{'-' * 7}|")
    for m in methods:
        a = checked_median(ours[m], m)
        b = f"{checked_median(theirs[m], m):>16.4f}" if theirs[m] else f"{'skipped':>16}"
        r = f"{a / checked_median(theirs[m], m):>5.2f}" if theirs[m] else f"{'-':>5}"
        print(f"| {TITLES[m]:<12} | {a:>14.4f} | {b} | {r} |")
    print()
    for m in methods:
        if theirs[m]:
            ratio = checked_median(ours[m], m) / checked_median(theirs[m], m)
            title = f"alignbench {TITLES[m]} step / TRL {workers[m].version} step"
            print(f"{title} = {ratio:.2f} (target <= {TARGET:.2f})")
        else:
            print(f"TRL {TITLES[m]} skipped: {workers[m].reason}")
            print(f"alignbench {TITLES[m]} step / itself = 1.00 (TRL skipped)")
    if any(w.version for w in workers.values()):
        if args.trl_path:
            sys.path.insert(0, args.trl_path)
        print("\nloss parity on the same batch and weights (|alignbench - TRL| <= 1e-5):")
        for m, (a, b) in loss_parity(s).items():
            verdict = "ok" if abs(a - b) <= 1e-5 else "MISMATCH"
            diff = f"diff {abs(a - b):.1e} {verdict}"
            print(f"  {TITLES[m]:<12} alignbench {a:.8f}  TRL {b:.8f}  {diff}")


if __name__ == "__main__":
    main()
