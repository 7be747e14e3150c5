"""Seconds per PPO step: alignbench vs a plain-PyTorch lower bound and TRL 1.12, from one run.

Two recipes, each beside its own lower bound:

* the default recipe, PPO-ptx (``ptx_coef=0.5``): every update also takes the NLL of a batch of
  16 SFT demonstrations of the built-in ``facts`` task;
* plain PPO (``algo.ptx_coef=0``);

each as it runs by default and with every opt-in speed switch (``fast`` rows):
``algo.lean_forward=true algo.fused_adamw=true`` (the scoring and training forwards through
:mod:`alignbench.lean_forward`, AdamW's fused kernel; equal within rounding, not bit for bit:
``tests/test_lean_forward.py``), ``algo.sampling.draw=inverse_cdf`` (one uniform draw per token
instead of ``torch.multinomial``'s one per vocabulary entry: the same distribution, other tokens,
``tests/test_sampling_eos.py``), the sampler's prompt pass through
:func:`alignbench.lean_forward.prefill` (``SamplingParams(lean_prefill=True)``, set on PPO's
sampling parameters here), and the reward network read at each
sequence's last token alone (:func:`alignbench.lean_forward.last_values`, as a user's own
``Reward`` can; within 1e-5: ``tests/test_lean_forward.py``).

Settings (issue #4): Llama with vocab 1024 (the facts vocabulary padded with filler words),
hidden 128, intermediate 512, 4 layers, 4 heads, untied output layer (1.31 M parameters);
prompts of 16 tokens; exactly 32 new tokens; 16 sequences per step; 1 PPO epoch, 1 mini-batch;
separate policy, reference, value and reward networks; fp32; 2 threads.

The lower bound does the work PPO cannot avoid, on the same models and shapes, with nothing
else (the fast rows' lower bound does it with every ``nn.Linear`` through
:func:`alignbench.lean_forward.linear`, oneDNN's kernels, as the fast path's lean forwards take
them; ``benchmarks/matmul.py`` times those kernels alone): one KV-cache generation through
alignbench's static-cache decoder, the reference and reward forwards, and one
forward+backward+AdamW step of the policy and of the critic (whose forward also gives the
rollout's values: with one mini-batch nothing else can); for PPO-ptx, the policy's
forward on the same pre-tokenised demonstration batch joins that one backward.

TRL 1.12's ``PPOTrainer`` (``trl.experimental.ppo``) runs the same shapes (policy, reference,
value and reward Llamas of the same size, ``LlamaForSequenceClassification`` heads) in two
subprocesses: as shipped, and with ``gc.collect`` made a no-op (it calls it twice per step).
TRL has no ptx term, so the PPO-ptx rows compare alignbench's larger step with TRL's plain one.
TRL is not a dependency of alignbench: install it into a folder of its own and name the folder,

    pip install --target /tmp/trl112 --no-deps trl==1.12.0 accelerate
    python benchmarks/ppo_step.py --trl-path /tmp/trl112

(the ``bench`` extra installs a newer TRL, without ``PPOTrainer``, for ``trl_parity.py``).
Without TRL 1.12 the TRL columns are skipped and the reason printed. Every process takes its
steps in turn (one step each, round after round), so all of them see the same machine; medians
after warm-up.

    python benchmarks/ppo_step.py [--steps 15] [--warmup 3] [--threads 2] [--trl-path DIR]
    python benchmarks/ppo_step.py --smoke   # 2 steps of tiny models: does it still run?

Run it on a quiet machine: with other processes on the cores, 2 threads of small ops wait on
each other and every number (the ratios too) is noise.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from _common import FULL_MODEL, SMOKE_MODEL, TRLProcess, checked_median, cpu_name
from omegaconf import OmegaConf

from alignbench import PromptStream, Reward, Run, SamplingConfig, SamplingParams, Task, lean_forward
from alignbench.batch import encode_responses
from alignbench.config import ModelConfig
from alignbench.decoding import decoder
from alignbench.job import Job
from alignbench.models import (
    ScalarHeadModel,
    build_model,
    build_tokenizer,
    count_parameters,
    save_pretrained,
)
from alignbench.registry import build_registry
from alignbench_plugins.ppo import PPOConfig

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
    model=FULL_MODEL,
)
SMOKE = Settings(
    prompt_tokens=4,
    new_tokens=4,
    sequences=4,
    ptx_batch_size=4,
    model=SMOKE_MODEL,
)


class RewardNetwork(Reward):
    """A separate reward network: a scalar head read at each sequence's last token (``lean``:
    through :func:`alignbench.lean_forward.last_values`, which computes only that position)."""

    def __init__(self, model: ScalarHeadModel, lean: bool = False) -> None:
        self.model = model
        self.lean = lean

    @torch.no_grad()
    def score_batch(self, batch) -> torch.Tensor:
        if self.lean:
            return lean_forward.last_values(self.model, batch.input_ids, batch.attention_mask)
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


def build(
    tmp: Path,
    task: Task,
    ptx_coef: float,
    s: Settings,
    fast: bool = False,
    draw: str | None = None,
) -> Setup:
    """PPO with ``ptx_coef`` (``fast``: lean forwards and reward readout, fused AdamW,
    inverse-CDF draws unless ``draw`` says otherwise) on the Run of a :class:`Job` with the
    benchmark's four networks."""
    draw = draw or ("inverse_cdf" if fast else "multinomial")
    torch.manual_seed(0)
    words = task.vocabulary()
    words += [f"w{i}" for i in range(VOCAB_WORDS - len(words))]
    tokenizer = build_tokenizer(words)
    policy = build_model(s.model, tokenizer).eval()
    save_pretrained(policy, tokenizer, tmp / "sft")
    reward_model = ScalarHeadModel(build_model(s.model, tokenizer)).eval().requires_grad_(False)
    config = PPOConfig(
        name="ppo",
        prompts_per_step=s.sequences,
        samples_per_prompt=1,
        ppo_epochs=1,
        num_minibatches=1,
        sampling=SamplingConfig(max_new_tokens=s.new_tokens, draw=draw),
        ptx_coef=ptx_coef,
        ptx_batch_size=s.ptx_batch_size,
        lean_forward=fast,
        fused_adamw=fast,
    )
    job = Job(OmegaConf.create({"seed": 0, "model": OmegaConf.structured(s.model)}), tmp)
    run = job.make_run(
        config=config,
        task=task,
        reward=RewardNetwork(reward_model, lean=fast),
        tokenizer=tokenizer,
        policy=policy,
        sft_path=tmp / "sft",
    )
    run.track(reward_model, "reward")
    ppo = job.start("ppo")
    ppo.params = SamplingParams(
        max_new_tokens=s.new_tokens,
        min_new_tokens=s.new_tokens,
        draw=config.sampling.draw,
        lean_prefill=fast,
    )
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


@contextmanager
def onednn_linears() -> Iterator[None]:
    """Every ``torch.nn.functional.linear`` call (each ``nn.Linear``'s) through
    :func:`alignbench.lean_forward.linear`: oneDNN's kernels where they apply, as the fast path's
    lean forwards take them."""
    original = torch.nn.functional.linear
    torch.nn.functional.linear = lean_forward.linear
    try:
        yield
    finally:
        torch.nn.functional.linear = original


#: The fast path with multinomial draws and torch's own linear kernels (no oneDNN).
TORCH_KERNELS = "plain fast multinomial torch"


@contextmanager
def torch_kernels() -> Iterator[None]:
    """The lean forwards' linear layers through ``torch.nn.functional.linear`` (torch's BLAS),
    not oneDNN."""
    kernel = lean_forward.CPU_KERNEL
    lean_forward.CPU_KERNEL = "torch"
    try:
        yield
    finally:
        lean_forward.CPU_KERNEL = kernel


class LowerBound:
    """The same work in plain PyTorch: no bookkeeping, no hooks, masks only where padding is
    (``onednn``: every linear layer through oneDNN, the fast path's kernels)."""

    def __init__(self, setup: Setup, s: Settings, demos: list | None, onednn: bool = False) -> None:
        self.onednn = onednn
        self.net = setup.networks
        prompt_ids = setup.run.collate(
            setup.prompts, [[]] * s.sequences, 1, ["p"] * s.sequences
        ).input_ids
        self.prompt_ids = prompt_ids[:, : s.prompt_tokens]
        self.new_tokens = s.new_tokens
        self.demos = demos
        self.policy_opt = torch.optim.AdamW(self.net["policy"].parameters(), lr=1e-6, foreach=True)
        self.critic_opt = torch.optim.AdamW(self.net["critic"].parameters(), lr=1e-6, foreach=True)
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
        """One step, split into generation, scoring and update (oneDNN linears if asked)."""
        with onednn_linears() if self.onednn else nullcontext():
            return self._step()

    def _step(self) -> dict[str, float]:
        policy, critic, n = self.net["policy"], self.net["critic"], self.new_tokens
        t0 = time.perf_counter()
        with torch.no_grad():
            prompt = self.prompt_ids
            out = policy(input_ids=prompt, use_cache=True, logits_to_keep=1)
            steps = decoder(policy, out.cache, torch.ones_like(prompt), n - 1)
            position = torch.full((len(prompt), 1), prompt.shape[1])
            logits, tokens = out.logits[:, -1], []
            for t in range(n):
                probs = torch.softmax(logits, -1)
                token = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
                tokens.append(token)
                if t < n - 1:
                    logits = steps.step(token, position + t, t)
            sequences = torch.cat([prompt, torch.stack(tokens, 1)], dim=1)
        t1 = time.perf_counter()
        with torch.no_grad():
            self.net["reference"](input_ids=sequences, logits_to_keep=n + 1)
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


# -- TRL 1.12, in subprocesses ------------------------------------------------------------------


def trl_worker(settings: Settings, collect: bool, threads: int) -> None:
    """Run TRL's PPOTrainer, one step per "go" line on stdin, answering "step <seconds>".

    A step is timed from its "go" to the next ``on_step_end``: that is one whole iteration of
    TRL's loop, including the clean-up (and ``gc.collect``) after the previous ``on_step_end``.
    """
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # TRL prints; only protocol lines go to the parent
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    try:
        import trl
        from datasets import Dataset
        from transformers import LlamaForSequenceClassification, TrainerCallback
        from trl.experimental.ppo import PPOConfig as TRLConfig
        from trl.experimental.ppo import PPOTrainer
    except ImportError as exc:
        protocol.write(f"unavailable {exc}\n")
        return
    if not trl.__version__.startswith("1.12."):
        protocol.write(f"unavailable TRL {trl.__version__} found, the columns are TRL 1.12's\n")
        return
    torch.set_num_threads(threads)
    transformers.utils.logging.set_verbosity_error()
    if not collect:
        gc.collect = lambda generation=2: 0  # TRL-without-gc: its two calls per step do nothing
    task = facts_task()
    words = task.vocabulary()
    words += [f"w{i}" for i in range(VOCAB_WORDS - len(words))]
    tokenizer = build_tokenizer(words)
    torch.manual_seed(0)
    policy, reference = (
        build_model(settings.model, tokenizer),
        build_model(settings.model, tokenizer),
    )

    def scalar_model() -> torch.nn.Module:
        config = copy.deepcopy(policy.config)
        config.num_labels = 1
        return LlamaForSequenceClassification(config)

    g = torch.Generator().manual_seed(1)
    n, p = settings.sequences, settings.prompt_tokens
    ids = torch.randint(3, len(tokenizer), (n, p), generator=g)
    dataset = Dataset.from_dict({"input_ids": ids.tolist()})
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
        config = TRLConfig(
            output_dir=tmp,
            per_device_train_batch_size=n,
            gradient_accumulation_steps=1,
            num_mini_batches=1,
            num_ppo_epochs=1,
            local_rollout_forward_batch_size=n,
            response_length=settings.new_tokens,
            total_episodes=n * 10_000,
            stop_token=None,  # no eos: exactly response_length new tokens, as alignbench's
            missing_eos_penalty=None,
            num_sample_generations=0,
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            learning_rate=3e-4,
            kl_coef=0.05,
            seed=0,
            bf16=False,
            use_cpu=True,
        )
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=reference,
            reward_model=scalar_model(),
            train_dataset=dataset,
            value_model=scalar_model(),
            callbacks=[Lockstep()],
        )
        protocol.write(f"ready {trl.__version__}\n")
        if sys.stdin.readline().strip() != "go":
            return
        clock["start"] = time.perf_counter()
        trainer.train()


def trl_command(mode: str, smoke: bool, threads: int) -> list[str]:
    """This script as a TRL worker (``mode``: ``gc`` or ``nogc``)."""
    command = [sys.executable, __file__, "--trl-worker", mode, "--threads", str(threads)]
    return command + (["--smoke"] if smoke else [])


def median(times: list[dict[str, float]], part: str) -> float:
    """Median seconds of ``part``; a benchmark that measured nothing is an error."""
    return checked_median([t[part] for t in times], part)


def paired_quartiles(ours: list[dict[str, float]], theirs: list[float]) -> tuple[float, float]:
    """Lower and upper quartile of the per-round ratios ours / theirs (the spread of a ratio)."""
    # Steps of one round ran back to back, so their ratio cancels most of a shared machine's
    # load swings; the quartiles of those paired ratios say how far one run's median can be trusted.
    ratios = [a["total"] / b for a, b in zip(ours, theirs, strict=True)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4)
    return q[0], q[2]


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


def print_comparison(times: dict, trl: dict[str, list[float]], labels: dict[str, str]) -> None:
    """Total seconds per step of every contender, per recipe, and alignbench's ratios to them."""
    columns = ["alignbench", "lower bound", *labels.values()]
    head = "".join(f" {name + ' (s)':>22} |" for name in columns)
    print(f"| {'recipe':<10} |{head}")
    print(f"|{'-' * 12}|" + f"{'-' * 24}|" * len(columns))
    for recipe in times:
        ours, base = median(times[recipe][0], "total"), median(times[recipe][1], "total")
        cells = [ours, base, *(statistics.median(trl[k]) for k in labels)]
        print(f"| {recipe:<10} |" + "".join(f" {c:>22.4f} |" for c in cells))
    print()


def main() -> None:
    """Print, for PPO-ptx and plain PPO, the median seconds per step against every baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (issue #4: 2)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="2 steps of tiny models on 1 thread (what make test runs: does it still work?)",
    )
    parser.add_argument(
        "--trl-path",
        default=os.environ.get("ALIGNBENCH_TRL_PATH", "/tmp/trl112"),
        help="folder holding TRL 1.12 (pip install --target DIR --no-deps trl==1.12.0 "
        "accelerate); prepended to the TRL workers' path (default $ALIGNBENCH_TRL_PATH or "
        "/tmp/trl112)",
    )
    parser.add_argument("--trl-worker", choices=["gc", "nogc"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    s = SMOKE if args.smoke else FULL
    steps, warmup = (2, 1) if args.smoke else (args.steps, args.warmup)
    # One thread in smoke mode: on a busy CI machine, 2 threads of tiny ops wait on each other.
    threads = 1 if args.smoke else args.threads
    if args.trl_worker:
        trl_worker(s, args.trl_worker == "gc", threads)
        return
    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    task = facts_task()
    # name: (ptx_coef, fast, draw); a fast recipe is timed against its default's lower bound.
    # "plain fast multinomial": every switch but the draw, whose tokens differ from the
    # default's for a seed (the others are within a tested tolerance of it); "... torch
    # kernels": the same with lean_forward.CPU_KERNEL="torch" (torch's BLAS, as TRL takes it).
    recipes = {"ptx": (0.5, False, None), "plain": (0.0, False, None)}
    recipes["ptx fast"] = (0.5, True, None)
    recipes["plain fast"] = (0.0, True, None)
    recipes["plain fast multinomial"] = (0.0, True, "multinomial")
    recipes[TORCH_KERNELS] = (0.0, True, "multinomial")
    times: dict[str, tuple[list, list]] = {name: ([], []) for name in recipes}
    trl_path = args.trl_path if Path(args.trl_path).is_dir() else None
    workers = {
        "TRL": TRLProcess(trl_command("gc", args.smoke, threads), trl_path),
        "TRL no gc": TRLProcess(trl_command("nogc", args.smoke, threads), trl_path),
    }
    trl: dict[str, list[float]] = {name: [] for name in workers}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            setups, bounds = {}, {}
            for name, (ptx_coef, fast, draw) in recipes.items():
                folder = Path(tmp) / name.replace(" ", "_")
                setups[name] = build(folder, task, ptx_coef, s, fast, draw)
                if draw is None:  # a lower bound per recipe; a fast one takes oneDNN's kernels
                    size = s.ptx_batch_size
                    demos = demo_batches(setups[name].run, 8, size) if ptx_coef else None
                    bounds[name] = LowerBound(setups[name], s, demos, onednn=fast)
            for i in range(warmup + steps):
                for name in recipes:
                    with torch_kernels() if name == TORCH_KERNELS else nullcontext():
                        a = alignbench_step(setups[name].run, setups[name].prompts, s)
                    if i >= warmup:
                        times[name][0].append(a)
                    if name in bounds:
                        b = bounds[name].step()
                        if i >= warmup:
                            times[name][1].append(b)
                for name, worker in workers.items():
                    if worker.version:
                        seconds = worker.step()
                        if i >= warmup:
                            trl[name].append(seconds)
            plain_bounds = {name: times[name][1] for name in bounds}
            for name in recipes:  # "plain fast multinomial" beside plain fast's lower bound
                bound = "plain" if name == TORCH_KERNELS else " ".join(name.split()[:2])
                times[name] = (times[name][0], plain_bounds[bound])
            n_policy = count_parameters(setups["ptx"].networks["policy"])
    finally:
        for worker in workers.values():
            worker.close()
    smoke = " (smoke: tiny models, timings meaningless)" if args.smoke else ""
    print(f"{cpu_name()}; torch {torch.__version__}")
    print(f"policy parameters: {n_policy / 1e6:.2f} M; threads: {torch.get_num_threads()}{smoke}")
    print(f"median of {steps} steps after {warmup} warm-up steps, every contender in turn\n")
    ptx = print_table(
        "PPO-ptx, the default recipe (ptx_coef=0.5; the lower bound includes the ptx NLL)",
        *times["ptx"],
    )
    plain = print_table("plain PPO (ptx_coef=0)", *times["plain"])
    flags = (
        "algo.lean_forward=true algo.fused_adamw=true algo.sampling.draw=inverse_cdf, "
        "lean prefill and reward"
    )
    beside = "; beside the lower bound with oneDNN linears"
    fast = {
        "ptx fast": print_table(f"PPO-ptx, {flags}{beside}", *times["ptx fast"]),
        "plain fast": print_table(f"plain PPO, {flags}{beside}", *times["plain fast"]),
        "plain fast multinomial": print_table(
            "plain PPO, the same but algo.sampling.draw=multinomial (tokens as the default's)"
            + beside,
            *times["plain fast multinomial"],
        ),
        TORCH_KERNELS: print_table(
            "plain PPO, the same (multinomial draws) with torch's linear kernels, not oneDNN "
            "(lean_forward.CPU_KERNEL='torch'); beside the plain-torch lower bound",
            *times[TORCH_KERNELS],
        ),
    }
    labels = {}
    for name, worker in workers.items():
        if worker.version:
            labels[name] = f"{name.replace('TRL', f'TRL {worker.version}')}"
        else:
            print(f"{name} skipped: {worker.reason}")
    print("Total seconds per step (TRL has no ptx term: its step is plain PPO in both rows)\n")
    print_comparison(times, trl, {name: labels[name] for name in labels})
    ptx_cost = median(times["ptx"][0], "total") / median(times["plain"][0], "total")
    print(f"PPO-ptx step / lower bound = {ptx:.2f} (target <= 1.20)")
    print(f"plain PPO step / lower bound = {plain:.2f} (target <= 1.20)")
    print(f"PPO-ptx fast step / its lower bound (oneDNN linears) = {fast['ptx fast']:.2f}")
    print(f"plain PPO fast step / its lower bound (oneDNN linears) = {fast['plain fast']:.2f}")
    print(
        "plain PPO fast, multinomial draws, torch kernels, step / plain-torch lower bound = "
        f"{fast[TORCH_KERNELS]:.2f}"
    )
    for recipe, title in (("plain", "plain PPO"), ("ptx", "PPO-ptx")):
        kernel = median(plain_bounds[f"{recipe} fast"], "total") / median(
            plain_bounds[recipe], "total"
        )
        print(
            f"{title} lower bound with oneDNN linears / plain-torch lower bound = {kernel:.2f} "
            "(what the kernels alone save)"
        )
        r = median(times[f"{recipe} fast"][0], "total") / median(plain_bounds[recipe], "total")
        print(f"{title} fast step / plain-torch lower bound = {r:.2f}")
    for recipe, title in (("plain", "plain PPO"), ("ptx", "PPO-ptx")):
        ours, default = times[f"{recipe} fast"][0], times[recipe][0]
        r = median(ours, "total") / median(default, "total")
        low, high = paired_quartiles(ours, [t["total"] for t in default])
        print(
            f"{title} fast step / {title} step = {r:.2f} (what {flags} saves; "
            f"per-round ratios, quartiles: {low:.2f}-{high:.2f})"
        )
    print(f"PPO-ptx step / plain PPO step = {ptx_cost:.2f} (the cost of the ptx term)")
    targets = {"TRL": 0.40, "TRL no gc": 0.75}
    for name, label in labels.items():
        for recipe, title in (
            ("plain", "plain PPO"),
            ("ptx", "PPO-ptx"),
            ("plain fast", "plain PPO fast"),
            ("ptx fast", "PPO-ptx fast"),
            ("plain fast multinomial", "plain PPO fast, multinomial draws,"),
            (TORCH_KERNELS, "plain PPO fast, multinomial draws, torch kernels,"),
        ):
            r = median(times[recipe][0], "total") / statistics.median(trl[name])
            low, high = paired_quartiles(times[recipe][0], trl[name])
            print(
                f"{title} step / {label} step = {r:.2f} (target <= {targets[name]:.2f}; "
                f"per-round ratios, quartiles: {low:.2f}-{high:.2f})"
            )


if __name__ == "__main__":
    main()
