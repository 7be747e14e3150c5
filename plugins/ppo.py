"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022; Huang et al. 2024).

Four models: the policy (trained, from the SFT model), the reference (frozen SFT copy, the KL
anchor), the critic (trained: its own network, or a value head on the policy's trunk) and the
reward (whatever ``reward=`` names). One iteration, through the hooks:

* rollout: sample responses; keep the sampler's log-probs, the reference's and the critic's values;
* score: the sequence reward sits on the last response token, and every token pays ``-beta * KL``;
* update: GAE advantages (whitened), then ``ppo_epochs`` passes of clipped policy and value losses
  over shuffled mini-batches.

Every switch is documented in :class:`PPOConfig`, the recipe card.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch

import alignbench
from alignbench import (
    AlgorithmConfig,
    Batch,
    ConfigError,
    PromptStream,
    Run,
    SamplingParams,
    ScalarHeadModel,
    apply_lora_to_scalar,
    distributed,
    load_pretrained,
    ops,
    position_ids,
    response_logits,
    response_logprobs,
    response_values,
    token_logprobs,
)


@dataclass
class PPOConfig(AlgorithmConfig):
    """PPO recipe card: what each key does and where its default comes from.

    [Z19] Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences"; [O22] Ouyang et al. 2022
    (InstructGPT); [H24] Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO";
    [A21] Andrychowicz et al. 2021, "What Matters in On-Policy RL"; [TRL] Hugging Face TRL's PPO
    defaults. ``choices`` are checked at start-up (alignbench/validation.py), before stage 1.
    """

    # Responses sampled per prompt: 64 sequences per step with prompts_per_step=16.
    samples_per_prompt: int = 4
    # separate = own network from the SFT model + scalar head [Z19, H24]; shared = value head on
    # the policy trunk (one network fewer).
    critic: str = field(default="separate", metadata={"choices": ("separate", "shared")})
    # The separate critic starts from: sft (trunk + zero head) or reward_model (the stage-2 RM,
    # needs reward=rm) [Z19, O22].
    critic_init: str = field(default="sft", metadata={"choices": ("sft", "reward_model")})
    # Or the separate critic from its own local folder (empty: critic_init decides): a sequence
    # classifier with num_labels=1 keeps its score head, alignbench's scalar-head export its
    # head, a causal LM gets a zero head; its tokenizer's vocabulary must be the policy's
    # [TRL value_model_path, OpenRLHF --critic_pretrain].
    critic_path: str = field(default="", metadata={"model_folder": "critic"})
    # Policy AdamW lr; tuned on facts (1e-4..6e-4 tried, README); large models use 1e-5..3e-6
    # [Z19, TRL].
    lr: float = 3e-4
    # Critic AdamW lr; the critic starts from scratch on its head, so it may move faster.
    critic_lr: float = 1e-4
    # Passes over each rollout; [Z19, TRL] use 4, 2 did better at equal FLOPs here (README).
    ppo_epochs: int = 2
    # Shuffled mini-batches per pass [TRL].
    num_minibatches: int = 4
    # Policy ratio clip epsilon [Schulman 2017, TRL].
    clip_range: float = 0.2
    # Value clipping around the rollout's values [Z19, TRL]; [A21] finds it rarely helps.
    clip_range_value: float = 0.2
    # Weight of the value loss [TRL].
    vf_coef: float = 0.1
    # No discounting within a response [Z19, H24].
    gamma: float = 1.0
    # GAE lambda [Z19, TRL].
    lam: float = 0.95
    # Conversations: turn = each turn's reward on that turn's last token (GAE carries it back
    # across turns, discounted by the reward's turn_gamma); terminal = the dialogue's return on
    # its last token only. No effect on single-turn tasks.
    credit: str = field(default="turn", metadata={"choices": ("turn", "terminal")})
    # Normalise advantages per batch [Z19, H24].
    whiten_advantages: bool = True
    # beta, the per-token KL penalty weight [TRL 0.05; Z19 init 0.1..0.15].
    kl_coef: float = 0.05
    # k1 = logp - ref (unbiased, may be negative per sample); k3 = never negative [Schulman 2020
    # blog].
    kl_estimator: str = field(default="k1", metadata={"choices": ops.KL_KINDS})
    # true = Ziegler's proportional controller towards target_kl [Z19].
    adaptive_kl: bool = False
    # Target sequence KL (nats) for the adaptive controller; [Z19] used 6 for 24-token stories,
    # our answers are ~2 tokens.
    target_kl: float = 0.5
    # Controller horizon in sequences [Z19].
    kl_horizon: int = 10000
    # Scale sequence rewards to unit variance, mean kept [H24: helps with learned RMs].
    whiten_rewards: bool = False
    # Clip sequence rewards to +-value; 0 = off.
    reward_clip: float = 0.0
    # Subtract this from responses that hit max_new_tokens without eos [H24 "EOS trick"]; 0 = off.
    missing_eos_penalty: float = 0.0
    # Entropy bonus; 0 as in [Z19, TRL] (the KL penalty already keeps entropy up).
    entropy_coef: float = 0.0
    # Global gradient-norm clip [TRL, A21].
    max_grad_norm: float = 1.0
    # Stop the epochs of a step when approx-KL passes this; 0 = off [Schulman's baselines
    # target_kl].
    early_stop_kl: float = 0.0
    # PPO-ptx: weight of an SFT loss on the task's demonstrations in every update, against
    # forgetting (the "alignment tax") [O22]; 0 = plain PPO (algo=ppo_plain), which here lost
    # 5-10 points of known accuracy.
    ptx_coef: float = 0.5
    # Demonstrations per PPO mini-batch when ptx_coef > 0.
    ptx_batch_size: int = 16
    # true = the scoring and training forwards (reference, policy, critic, ptx) of Llama-shaped
    # models run alignbench.lean_forward: the response's outputs only, the final token not fed,
    # the last layer only where its output is read; so does the rollout's prompt pass. On the
    # CPU in float32 their big linear layers run oneDNN's kernels (about 2x MKL's on AMD). Equal
    # within rounding (1e-5 on logits and values, tests/test_lean_forward.py), not bit for bit,
    # so off by default; other models (and hooked, checkpointed or autocast ones) take the
    # ordinary forward.
    lean_forward: bool = False
    # true = AdamW's fused kernel (one pass over the parameters) instead of foreach: equal within
    # rounding (about 1e-8 on the weights after 30 steps), not bit for bit, so off by default.
    fused_adamw: bool = False
    # `sampling` (AlgorithmConfig): temperature 1 from the full distribution, no top-k / top-p;
    # log-probs are recomputed from logits / temperature [H24].

    def validate(self) -> None:
        """``critic_path``: a usable folder, for a separate critic, not beside ``critic_init=
        reward_model`` (one line each, before stage 1)."""
        if not self.critic_path:
            return
        if self.critic != "separate":
            raise ConfigError(
                f"algo.critic_path={self.critic_path!r} with algo.critic={self.critic}: a shared "
                "critic is a value head on the policy — use algo.critic=separate"
            )
        if self.critic_init != "sft":
            raise ConfigError(
                f"algo.critic_path={self.critic_path!r} with algo.critic_init={self.critic_init}: "
                "the critic starts from one of them — drop one"
            )
        path = alignbench.input_path(self.critic_path)
        alignbench.check_model_folder(path, "algo.critic_path", "critic")


class KLController:
    """The KL coefficient beta: fixed, or adapted to a target KL (Ziegler et al. 2019, sec. 2.2).

    Adaptive: ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta *= 1 + e * n / horizon`` after each
    step of ``n`` sequences, so beta rises when the policy drifts past the target and falls below.
    """

    def __init__(self, config: PPOConfig) -> None:
        self.value = config.kl_coef
        self.adaptive = config.adaptive_kl
        self.target = config.target_kl
        self.horizon = config.kl_horizon

    def state_dict(self) -> dict[str, float]:
        """The current beta (all a resumed run needs)."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue with a saved beta."""
        self.value = state["value"]

    def update(self, kl: float, n: int) -> None:
        """Adapt beta after a step whose mean sequence KL was ``kl`` over ``n`` sequences."""
        if self.adaptive:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n / self.horizon


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the categorical distribution given by ``logits`` ``[N, R, V]``."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over valid tokens (1 = perfect, 0 if flat)."""
    var_returns = distributed.masked_var(returns, mask)
    if var_returns <= 0:
        return 0.0
    return float(1.0 - distributed.masked_var(returns - values, mask) / var_returns)


class Targets(NamedTuple):
    """What the update fits: the rollout's values ``[N, R]`` and the GAE advantages and returns."""

    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPO:
    """The PPO algorithm as a run-hook implementer (rollout, score with KL shaping, update)."""

    #: Runs on multi-turn tasks: every loss and advantage goes through ``response_mask`` (user
    #: turns are context) and the reward sits where the batch says a dialogue ends.
    multi_turn = True
    #: Runs on several processes (``accelerate launch``): advantages are whitened, losses
    #: normalised and metrics averaged over the global batch (alignbench.distributed).
    data_parallel = True

    @classmethod
    def model_roles(cls, config: PPOConfig) -> frozenset[str]:
        """What ``placement.*`` may move: the reference (KL anchor), and the critic when it is its
        own network (``critic=separate``; a shared one is a head on the policy)."""
        return frozenset({"reference", "critic"} if config.critic == "separate" else {"reference"})

    def __init__(self, run: Run, config: PPOConfig) -> None:
        if config.critic not in ("separate", "shared"):
            raise ConfigError(f"algo.critic={config.critic!r} — use separate or shared")
        if config.kl_estimator not in ops.KL_KINDS:
            raise ConfigError(
                f"algo.kl_estimator={config.kl_estimator!r} — use one of {', '.join(ops.KL_KINDS)}"
            )
        self.config = config
        self.reference = run.load_sft_model("reference")
        if config.critic_init not in ("sft", "reward_model"):
            raise ConfigError(f"algo.critic_init={config.critic_init!r} — use sft or reward_model")
        if config.critic == "separate":
            self.critic = run.track(self._initial_critic(run), "critic")
            self.value_head = None
        else:
            self.critic = None
            self.value_head = torch.nn.Linear(run.policy.config.hidden_size, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        self.kl = KLController(config)
        # PPO-ptx (Ouyang et al. 2022): demonstrations mixed into every update against forgetting.
        self.demos = (
            PromptStream(run.task.splits["sft"], config.ptx_batch_size, run.seed + 1)
            if config.ptx_coef
            else None
        )
        self.params = SamplingParams.from_config(config.sampling)
        if config.lean_forward:  # the rollout's prompt pass too (lean_forward.prefill)
            self.params = replace(self.params, lean_prefill=True)
        policy_params = list(run.policy.parameters())
        if self.value_head is not None:
            policy_params += list(self.value_head.parameters())
        # foreach: one kernel per step for all parameters, same numbers as the per-tensor loop;
        # fused: one pass, fewer numbers in memory, rounded differently.
        kernel = {"fused": True} if config.fused_adamw else {"foreach": True}
        self.optimizer = torch.optim.AdamW(policy_params, lr=config.lr, eps=1e-5, **kernel)
        self.critic_optimizer = (
            torch.optim.AdamW(self.critic.parameters(), lr=config.critic_lr, eps=1e-5, **kernel)
            if self.critic is not None
            else None
        )
        # One mini-batch: the update's first forward covers the whole rollout before any step.
        self._values_from_update = config.num_minibatches == 1

    def _initial_critic(self, run: Run) -> ScalarHeadModel:
        """A trainable critic from its own folder (``critic_path``), the SFT model (zero head) or
        the learned reward model; with ``model.lora.targets`` naming ``critic``, LoRA adapters on
        its trunk + its head."""
        if self.config.critic_path:
            self.config.validate()  # a library caller may not have run the command line's checks
            critic, tokenizer = alignbench.load_scalar_model(
                alignbench.input_path(self.config.critic_path), "algo.critic_path", "critic"
            )
            if not alignbench.same_vocabulary(tokenizer, run.tokenizer):
                raise ConfigError(
                    f"algo.critic_path={self.config.critic_path!r}: its tokenizer's vocabulary is "
                    "not the policy's (a critic reads the policy's token ids) — give a critic "
                    "built on the policy's tokenizer"
                )
            critic.requires_grad_(True)
        elif self.config.critic_init == "reward_model":
            reward_model = getattr(run.reward, "model", None)
            if not isinstance(reward_model, ScalarHeadModel):
                raise ConfigError(
                    "algo.critic_init=reward_model needs a learned reward model — use reward=rm"
                )
            critic = copy.deepcopy(reward_model).requires_grad_(True)
        else:
            backbone, _ = load_pretrained(run.sft_path)
            critic = ScalarHeadModel(backbone)
        # model.lora.targets=[…,critic]: adapters on the trunk train, and the whole value head.
        return apply_lora_to_scalar(critic, run.lora, "critic")

    # -- forward passes ---------------------------------------------------------------------------

    def _policy_forward(self, run: Run, batch: Batch, rows: Any) -> tuple[torch.Tensor, ...]:
        """Policy logits ``[n, R, V]`` and shared-head values ``[n, R]`` (None if separate)."""
        ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
        lean = self.config.lean_forward
        if self.value_head is None:
            return response_logits(run.policy, ids, mask, batch.prompt_length, lean), None
        if lean and alignbench.lean_forward.supports(run.policy):
            logits, hidden = alignbench.lean_forward.lean_logits(
                run.policy, ids, mask, batch.prompt_length, with_hidden=True
            )
            return logits, self.value_head(hidden).squeeze(-1)
        r = ids.shape[1] - batch.prompt_length
        out = run.policy(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            logits_to_keep=r + 1,
            output_hidden_states=True,
            use_cache=False,
        )
        hidden = out.hidden_states[-1][:, -(r + 1) : -1]
        return out.logits[:, :-1], self.value_head(hidden).squeeze(-1)

    def _values(self, run: Run, batch: Batch, rows: Any) -> torch.Tensor:
        """Critic values ``[n, R]`` of the separate critic."""
        ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
        return response_values(
            self.critic, ids, mask, batch.prompt_length, self.config.lean_forward
        )

    def _advantages(
        self, token_rewards: torch.Tensor, values: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages (whitened if configured) and returns ``[N, R]`` from the old values;
        across a conversation's turns (user tokens skipped, ``turn_gamma`` between turns)."""
        c, mask, turns = self.config, batch.response_mask, batch.turns
        advantages, returns = ops.gae(
            token_rewards,
            values,
            mask,
            c.gamma,
            c.lam,
            turn_index=turns.index if turns is not None else None,
            turn_gamma=turns.gamma if turns is not None else 1.0,
        )
        if c.whiten_advantages:  # over every rank's tokens (ops.masked_whiten in one process)
            advantages = distributed.masked_whiten(advantages, mask)
        return advantages, returns

    def _ptx_loss(self, run: Run) -> tuple[torch.Tensor, float]:
        """NLL of a batch of the task's SFT demonstrations under the policy (PPO-ptx), and this
        rank's share of the batch's tokens (each rank takes its shard of the same batch)."""
        rows = distributed.shard(self.demos.next())
        if not rows:  # fewer demonstrations than processes: none on this rank this time
            return torch.zeros((), device=run.device), distributed.share(0)
        demos = run.demonstrations(rows)
        logprobs = response_logprobs(
            run.policy,
            demos.input_ids,
            demos.attention_mask,
            demos.prompt_length,
            lean=self.config.lean_forward,
        )
        share = distributed.share(demos.response_mask.sum())
        return ops.demonstration_nll(logprobs, demos.response_mask), share

    # -- hooks ------------------------------------------------------------------------------------

    @alignbench.hookimpl
    def alignbench_rollout(self, run: Run, prompts: list[dict[str, Any]]) -> Batch:
        """Sample; keep sampler log-probs, reference log-probs and values (all without gradient)."""
        c = self.config
        batch = run.sample(run.policy, prompts, c.samples_per_prompt, self.params)
        everything = slice(None)
        with torch.no_grad():
            batch.extras["ref_logprobs"] = response_logprobs(
                self.reference,
                batch.input_ids,
                batch.attention_mask,
                batch.prompt_length,
                c.sampling.temperature,
                c.lean_forward,
            )
            # With one mini-batch, the update's first forward sees every sequence before any
            # optimiser step: its values are these, so the update takes them from there.
            if self._values_from_update:
                return batch
            if self.critic is not None:
                batch.extras["values"] = self._values(run, batch, everything)
            else:
                logits, values = self._policy_forward(run, batch, everything)
                batch.extras["values"] = values
        return batch

    @alignbench.hookimpl
    def alignbench_score(self, run: Run, batch: Batch) -> Batch:
        """Sequence reward on the last response token (in a conversation with ``credit=turn``:
        each turn's reward on that turn's last token), ``-beta * KL`` on every token."""
        c = self.config
        mask = batch.response_mask.float()
        returns = run.rewards(batch).float()
        batch.rewards = returns.clone()
        last = batch.last_positions
        # A response ended at any of the policy's end ids (a chat model may list several).
        stops = torch.tensor(alignbench.eos_ids(run.policy, run.tokenizer), device=last.device)
        ended = torch.isin(ops.gather_last(batch.response_ids, batch.response_mask), stops)
        turns = batch.turns
        # One row of scores per sequence: the turns' rewards, or one score on the last token.
        per_turn = turns is not None and c.credit == "turn"
        scores = turns.rewards.float().clone() if per_turn else returns[:, None].clone()
        present = (
            torch.arange(scores.shape[1], device=scores.device)[None] < turns.count[:, None]
            if per_turn
            else torch.ones_like(scores, dtype=torch.bool)
        )
        if c.missing_eos_penalty:
            final = present.long().cumsum(-1).argmax(-1)  # each row's last present turn
            scores[torch.arange(len(final)), final] -= c.missing_eos_penalty * (~ended).float()
        if c.reward_clip:
            scores = scores.clamp(-c.reward_clip, c.reward_clip)
        if c.whiten_rewards:
            scores = distributed.masked_whiten(scores, present.float(), shift_mean=False)
        scores = scores * present
        # The KL that is logged is exactly the KL in the reward: one function, one set of tensors.
        kl = ops.kl_penalty(batch.logprobs, batch.extras["ref_logprobs"], c.kl_estimator) * mask
        token_rewards = -self.kl.value * kl
        if per_turn:
            token_rewards = token_rewards + ops.place_turn_rewards(scores, turns.index)
        else:
            token_rewards[torch.arange(len(last)), last] += scores[:, 0]
        scores = scores.sum(-1)
        batch.extras.update(
            kl=kl,
            scores=scores,
            token_rewards=token_rewards * mask,
            ended=ended,
            beta=self.kl.value,
        )
        return batch

    @alignbench.hookimpl
    def alignbench_update(self, run: Run, batch: Batch) -> dict[str, float]:
        """GAE, then PPO epochs of clipped policy/value losses over shuffled mini-batches."""
        c = self.config
        # GAE from the rollout's values; with one mini-batch they come from the first forward.
        values = batch.extras.get("values")
        targets = self._targets(batch, values) if values is not None else None
        stats: dict[str, list[float]] = {}
        run.policy.train()
        if self.critic is not None:
            # The critic trains too (as in TRL): transformers checkpoints a model in training.
            self.critic.train()
        for i, (epoch, rows, present) in enumerate(self._minibatches(run, batch.num_sequences)):
            epochs_run = epoch + 1
            targets, step = self._minibatch_step(
                run, batch, rows, targets, first=i == 0, present=present
            )
            for key, value in step.items():
                stats.setdefault(key, []).append(value)
            if c.early_stop_kl and step["approxkl"] > c.early_stop_kl:
                break
        run.policy.eval()
        if self.critic is not None:
            self.critic.eval()
        out = self._statistics(batch, stats, targets, epochs_run)
        self.kl.update(out["objective/kl"], int(distributed.total(batch.num_sequences)))
        return out

    def _minibatches(self, run: Run, n: int) -> Iterator[tuple[int, torch.Tensor, bool]]:
        """``(epoch, rows, present)`` of every mini-batch: each epoch a new shuffle of the global
        batch (``distributed.minibatches``: one process's mini-batches, this rank's rows)."""
        c = self.config
        for epoch in range(c.ppo_epochs):
            for rows, present in distributed.minibatches(n, c.num_minibatches, run.generator):
                yield epoch, rows, present

    def _targets(self, batch: Batch, old_values: torch.Tensor) -> Targets:
        """The rollout's values with the GAE advantages and returns computed from them, in fp32.

        Under fp16 autocast the critic's values come out of its head in fp16, and GAE and the
        whitening would run in fp16 too: a small spread of advantages (a zero-init critic, a
        reward that barely varies) squares to 0 there, ``var + 1e-8`` stays 0 (1e-8 is below
        fp16's smallest number) and whitening divides by 0 (inf advantages, a NaN policy loss).
        The CPU's autocast runs ``pow`` and ``rsqrt`` in fp16, CUDA's in fp32, but advantages and
        returns are fp16 on both (and several processes whiten in x's dtype on either), so the
        targets are fp32 everywhere (a no-op in fp32 and the same tensors)."""
        old_values = old_values.float()
        return Targets(
            old_values, *self._advantages(batch.extras["token_rewards"], old_values, batch)
        )

    def _minibatch_step(
        self,
        run: Run,
        batch: Batch,
        rows: torch.Tensor,
        targets: Targets | None,
        first: bool,
        present: bool = True,
    ) -> tuple[Targets, dict[str, float]]:
        """One optimiser step of the clipped policy and value losses (+ PPO-ptx, entropy bonus)
        on ``rows``; the targets (made here when the rollout left the values to this forward)
        and the step's statistics. A stand-in row (``present=False``: this rank has none in the
        mini-batch) is masked out, so the rank takes its part in the step with no weight."""
        c, temperature = self.config, self.config.sampling.temperature
        m, old_logprobs = batch.response_mask[rows], batch.logprobs[rows]
        if not present:
            m = torch.zeros_like(m)
        logits, shared_values = self._policy_forward(run, batch, rows)
        logprobs = token_logprobs(logits, batch.response_ids[rows], temperature)
        values = shared_values if shared_values is not None else self._values(run, batch, rows)
        if targets is None:  # one mini-batch: this forward sees every row before any step
            targets = self._targets(
                batch, torch.empty_like(values).index_copy_(0, rows, values.detach())
            )
        pg_loss, clipfrac = ops.policy_loss(
            logprobs, old_logprobs, targets.advantages[rows], m, c.clip_range
        )
        vf_loss = ops.value_loss(
            values, targets.values[rows], targets.returns[rows], m, c.clip_range_value
        )
        scaled = logits if temperature == 1.0 else logits / temperature
        entropy = ops.masked_mean(_entropy(scaled.detach()), m)
        # Token means of the global mini-batch: this rank's mean times its share of the tokens
        # (1.0 in one process), the gradients then summed over ranks.
        share = distributed.share(m.sum())
        loss = pg_loss * share + c.vf_coef * vf_loss * share
        stats: dict[str, float] = {}
        if self.demos is not None:
            ptx, ptx_share = self._ptx_loss(run)
            stats.update(distributed.weighted_sum({"ptx": ptx.item()}, ptx_share))
            loss = loss + c.ptx_coef * ptx * ptx_share
        if c.entropy_coef:
            bonus = ops.masked_mean(_entropy(logits / temperature), m) * share
            loss = loss - c.entropy_coef * bonus
        run.check_finite(**{"loss/policy": pg_loss, "loss/value": vf_loss})
        grad_norm = self._optimiser_step(run, loss)
        with torch.no_grad():
            delta = logprobs - old_logprobs
            approxkl = 0.5 * ops.masked_mean(delta**2, m)
            ratio = ops.masked_mean(torch.exp(delta), m)
        means = dict(
            pg=pg_loss.item(),
            vf=vf_loss.item(),
            clipfrac=clipfrac.item(),
            approxkl=approxkl.item(),
            entropy=entropy.item(),
            ratio=ratio.item(),
        )
        if first:  # how far the sampler's log-probs are from the training forward's
            means["logprob_gap"] = ops.masked_mean(delta.abs(), m).item()
        # The global mini-batch's token means (the same on every rank: early stopping agrees).
        stats.update(distributed.weighted_sum(means, share), grad_norm=grad_norm.item())
        if first:
            stats.update(first_ratio=stats["ratio"], first_clipfrac=stats["clipfrac"])
        return targets, stats

    def _optimiser_step(self, run: Run, loss: torch.Tensor) -> torch.Tensor:
        """Backward, clip the policy's and the critic's gradients, step both (through the Run:
        fp16's loss scaler); the policy's norm."""
        c = self.config
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        run.backward(loss)  # scaled under fp16
        trained = [p for g in self.optimizer.param_groups for p in g["params"]]
        # Several processes: the global batch's gradient, before clipping (one all-reduce).
        critic_params = list(self.critic.parameters()) if self.critic is not None else []
        distributed.sum_gradients(trained + critic_params)
        steps = {"policy/grad_norm": (self.optimizer, trained)}
        if self.critic_optimizer is not None:
            steps["val/grad_norm"] = (self.critic_optimizer, critic_params)
        return run.clip_and_step(steps, c.max_grad_norm)["policy/grad_norm"]

    def _statistics(
        self, batch: Batch, stats: dict[str, list[float]], targets: Targets, epochs_run: int
    ) -> dict[str, float]:
        """The step's metrics: the rollout's KL and scores, and the mini-batches' means."""
        x, mask = batch.extras, batch.response_mask

        def mean(key: str) -> float:
            return sum(stats[key]) / len(stats[key])

        def sequence_mean(per_token: torch.Tensor) -> float:
            return per_token.sum(-1).mean().item()

        kl_k1 = ops.kl_penalty(batch.logprobs, x["ref_logprobs"], "k1") * mask
        kl_k3 = ops.kl_penalty(batch.logprobs, x["ref_logprobs"], "k3") * mask
        extra = {"loss/ptx": mean("ptx")} if "ptx" in stats else {}
        # Means over the sequences (and tokens) of every rank's batch.
        per_sequence = distributed.weighted_sum(
            {
                "objective/kl": sequence_mean(x["kl"]),
                "objective/kl_k1": sequence_mean(kl_k1),
                "objective/kl_k3": sequence_mean(kl_k3),
                "objective/scores": x["scores"].mean().item(),
                "objective/non_score_reward": sequence_mean(-x["beta"] * x["kl"]),
                "policy/truncated_share": 1.0 - x["ended"].float().mean().item(),
            },
            distributed.share(batch.num_sequences),
        )
        per_token = distributed.weighted_sum(
            {"val/mean": ops.masked_mean(targets.values, mask).item()},
            distributed.share(mask.sum()),
        )
        return {
            **extra,
            "objective/kl": per_sequence["objective/kl"],
            "objective/kl_k1": per_sequence["objective/kl_k1"],
            "objective/kl_k3": per_sequence["objective/kl_k3"],
            "objective/kl_coef": x["beta"],
            "objective/scores": per_sequence["objective/scores"],
            "objective/non_score_reward": per_sequence["objective/non_score_reward"],
            "objective/entropy": mean("entropy"),
            "policy/approxkl": mean("approxkl"),
            "policy/clipfrac": mean("clipfrac"),
            "policy/ratio": mean("ratio"),
            "policy/grad_norm": mean("grad_norm"),
            "policy/truncated_share": per_sequence["policy/truncated_share"],
            "loss/policy": mean("pg"),
            "loss/value": mean("vf"),
            "val/mean": per_token["val/mean"],
            "val/explained_variance": _explained_variance(targets.values, targets.returns, mask),
            "ppo/logprob_gap": stats["logprob_gap"][0],
            "ppo/first_ratio": stats["first_ratio"][0],
            "ppo/first_clipfrac": stats["first_clipfrac"][0],
            "ppo/epochs_run": float(epochs_run),
        }


@alignbench.hookimpl
def alignbench_register_algorithms(register: alignbench.Register) -> None:
    """Register ``ppo``."""
    register("ppo", PPO, PPOConfig)
