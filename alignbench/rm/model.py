"""The :class:`RewardModel`: stage 2's one public object (train or load, score, keep learning)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alignbench import lean_forward, provenance
from alignbench.batch import Batch, collate, encode_responses, prompt_messages, prompt_text
from alignbench.budget import FlopCounter
from alignbench.config import FeedbackConfig, RMStageConfig, to_object
from alignbench.errors import DataError
from alignbench.hardware import autocast, model_device
from alignbench.lora import has_adapters, online_adapters, plain_copy
from alignbench.model_folders import (
    contents_hash,
    load_scalar_model,
    positions_of,
    same_tokenizer,
    save_scalar_model,
)
from alignbench.models import ScalarHeadModel, count_parameters, freeze, load_pretrained
from alignbench.rm.evaluation import policy_ranking_accuracy
from alignbench.rm.feedback import FeedbackSource, Group
from alignbench.rm.groups import group_dict, load_groups
from alignbench.rm.selection import checked_preferences
from alignbench.rm.stage import context_stage, load_reward_model, lora_key, request_feedback
from alignbench.rm.training import retrain_reward_model, sequence_rewards
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from alignbench.reward import PrepareContext
    from alignbench.run import Run


class RewardModel:
    """A scalar-head network trained to respect ranked groups of responses, with those groups.

    :meth:`train` builds it for a job — stage 2 from the ``feedback=`` source, cached by
    everything that determines it — :meth:`load` reads one from a stage folder, and
    :meth:`from_folder` one from its own folder (``reward.path``: no stage 2), which may use
    another tokenizer than the policy's (``reward_tokenizer``: then it scores the text).
    :meth:`score` scores a batch's sequences (token ids), :meth:`score_texts` responses as text.
    During RL it can keep learning from feedback on the current policy: :meth:`request` asks the
    source to rank fresh groups, which arrive ``feedback.delay`` steps later (:meth:`arrive`:
    training goes on over every group so far); :meth:`refresh` does both at once. What of it
    changes that way is :meth:`state_dict`. A deferred source (a person on the ranking page) is
    told the job's folder by :meth:`open_feedback`, is handed the requested groups unlabelled
    and labels them by their due step (``FeedbackSource.submit`` / ``collect``).
    """

    def __init__(
        self,
        network: ScalarHeadModel,
        tokenizer: PreTrainedTokenizerBase,
        config: RMStageConfig | None = None,
        groups: Sequence[Group] = (),
        *,
        folder: Path | None = None,
        info: dict[str, Any] | None = None,
        task: Task | None = None,
        source: FeedbackSource | None = None,
        feedback: FeedbackConfig | None = None,
        seed: int = 0,
        precision: str = "fp32",
    ) -> None:
        self.network = network
        self.tokenizer = tokenizer
        self.config = config or RMStageConfig()
        #: The groups trained on so far (the stage's train split, then every online arrival).
        self.groups = list(groups)
        #: The stage folder it came from, and the stage's record (``stage/rm`` in a summary).
        self.folder, self.info = folder, dict(info or {})
        # What online feedback needs: whom to ask, about what, and its own random streams (the
        # prompts and labels drawn, and the policy's samples).
        self.task, self.source, self.feedback = task, source, feedback
        self.rng = np.random.default_rng((feedback.seed if feedback else 0) + 1)
        self.generator = torch.Generator().manual_seed(seed + 17)
        #: Requested, not yet arrived: (step they arrive, groups), oldest first.
        self.pending: list[tuple[int, list[Group]]] = []
        #: The network's own tokenizer when it is not the policy's (a model read from a folder):
        #: sequences are then decoded and written again in its tokens. None: the policy's ids.
        self.reward_tokenizer: PreTrainedTokenizerBase | None = None
        #: ``precision=`` of online rounds (sampling and retraining), as the stage was built.
        self.precision = precision
        #: The token ids that end a policy's response (``alignbench.eos_ids``: the tokenizer's
        #: eos and the model's generation_config list), set when the run starts; None: the
        #: tokenizer's eos alone. Read when responses are written again in another tokenizer.
        self.stops: tuple[int, ...] | None = None
        #: ``reward.lean_forward``: score at the last token alone where the network allows it.
        self.lean = False
        #: The job's FLOP counter (set when the run starts): what an online round's selection
        #: runs on a copy of the network (uncertainty's probe, diversity's embeddings) is
        #: charged to it as ``reward_model``, like the network's own passes. None: not charged.
        self.flops: FlopCounter | None = None

    @classmethod
    def train(cls, context: PrepareContext) -> RewardModel:
        """The job's reward model: stage 2 trained from the ``feedback=`` source on the stage-1
        model's groups (or taken from the cache), frozen, on the job's device."""
        folder, info, source = context_stage(context)
        network = load_reward_model(folder, context.sft_path)
        if context.cfg.feedback.rounds and lora_key(context.cfg):
            # Trained as adapters in stage 2 (cached merged): the online rounds train fresh
            # adapters on it and the head, never the whole trunk. Seeded, so every rank and a
            # resumed job start from the same ones (a checkpoint then restores them).
            seed = int(context.cfg.stage.rm.seed)
            network = online_adapters(network, context.cfg.model.lora, seed)
        network = network.to(context.device)
        return cls(
            network,
            context.tokenizer,
            to_object(context.cfg.stage.rm),
            load_groups(folder / "train.jsonl"),
            folder=folder,
            info=info,
            task=context.task,
            source=source,
            feedback=to_object(context.cfg.feedback),
            seed=int(context.cfg.seed),
            precision=str(context.cfg.get("precision") or "fp32"),
        )

    @classmethod
    def load(
        cls,
        folder: Path,
        sft_path: Path,
        config: RMStageConfig | None = None,
        device: torch.device | str = "cpu",
    ) -> RewardModel:
        """A trained reward model from a stage-2 folder (frozen; scoring only: no source to ask)."""
        _, tokenizer = load_pretrained(sft_path)
        network = load_reward_model(folder, sft_path).to(device)
        groups = load_groups(folder / "train.jsonl")
        return cls(network, tokenizer, config, groups, folder=folder)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        policy_tokenizer: PreTrainedTokenizerBase,
        device: torch.device | str = "cpu",
    ) -> RewardModel:
        """A trained reward model from its own folder (``reward.path``: a sequence classifier
        with one label, or alignbench's export), frozen, on ``device``; no stage 2, no groups.
        Its tokenizer equal to the policy's (:func:`same_tokenizer`): it scores the policy's ids;
        else the decoded text, written again in its own tokens."""
        folder = provenance.input_path(str(path))
        network, tokenizer = load_scalar_model(folder, "reward.path", "reward")
        network = freeze(network).to(device)
        same = same_tokenizer(tokenizer, policy_tokenizer)
        model = cls(network, policy_tokenizer)
        model.reward_tokenizer = None if same else tokenizer
        model.info = {
            "path": str(folder),
            "files_sha256": contents_hash(folder),
            "parameters": count_parameters(network),
            # How the policy's sequences reach it: as token ids, or as text.
            "scores": "token_ids" if same else "text",
        }
        return model

    def export(self, folder: Path) -> Path:
        """Write the network and its tokenizer as a self-contained folder that ``reward.path``
        (or ``algo.critic_path``) reads back (alignbench's scalar-head format); online adapters
        folded in (a copy: the job's network keeps them)."""
        network = plain_copy(self.network) if has_adapters(self.network) else self.network
        return save_scalar_model(network, self.reward_tokenizer or self.tokenizer, folder)

    @property
    def rounds(self) -> int:
        """Online feedback rounds asked for (``feedback.rounds``; 0 without a source)."""
        return self.feedback.rounds if self.feedback else 0

    @property
    def delay(self) -> int:
        """Steps between requesting online labels and their arrival (``feedback.delay``)."""
        return self.feedback.delay if self.feedback else 0

    # -- scoring ---------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, batch: Batch) -> torch.Tensor:
        """Rewards ``[N]`` of a batch's sequences: the network's scalar at each last token
        (of the sequence written in the network's own tokens when they are not the policy's)."""
        if self.reward_tokenizer is None:
            if self.lean and lean_forward.supports(self.network):
                # As sequence_rewards: texts scored at evaluation are collated on the CPU.
                device = model_device(self.network)
                ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
                return lean_forward.last_values(self.network, ids, mask)
            return sequence_rewards(self.network, batch.input_ids, batch.attention_mask)
        ids, mask = retokenized(batch, self.tokenizer, self.reward_tokenizer, self.stops)
        # A sequence longer than the network's positions fails deep inside the model: one line.
        limit = _max_positions(self.network)
        if limit is not None and ids.shape[1] > limit:
            raise DataError(
                f"reward.path={str(self.folder)!r}: a prompt and response written in the reward "
                f"model's tokens take {ids.shape[1]} tokens, more than its {limit} positions — "
                "lower algo.sampling.max_new_tokens or use shorter prompts (task data), or a "
                "reward model with a longer context"
            )
        return sequence_rewards(self.network, ids, mask).to(batch.input_ids.device)

    def score_texts(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """One reward per (row, response), tokenised as the policy would."""
        ids = encode_responses(self.tokenizer, responses)
        batch = collate(self.tokenizer, rows, ids, 1, ["eval"] * len(rows))
        return self.score(batch).tolist()

    def heldout(self) -> list[Group]:
        """The stage's held-out groups (none for a model not built from a stage folder)."""
        path = self.folder / "heldout.jsonl" if self.folder else None
        return load_groups(path) if path and path.is_file() else []

    def policy_metrics(self, run: Run) -> dict[str, float]:
        """Held-out ranking accuracy of the run's policy used as a reward model (RRHF's view:
        length-normalised log-probability), ``rm/policy_as_rm_accuracy_{labels,gold}``."""
        groups = [g for g in self.heldout() if g.gold is not None]
        if not groups:
            return {}
        accuracy = policy_ranking_accuracy(run, groups)
        return {f"rm/policy_as_rm_{k}": v for k, v in accuracy.items()}

    # -- online feedback -------------------------------------------------------------------------

    @property
    def deferred(self) -> bool:
        """Whether online labels come later from outside the run (``FeedbackSource.deferred``)."""
        return self.source is not None and self.source.deferred

    def open_feedback(self, folder: Path) -> None:
        """Tell a deferred source the job's folder (where groups and labels are exchanged),
        before any online round; nothing for other sources or without rounds."""
        if self.deferred and self.rounds:
            self.source.open(folder)

    def request(self, policy: PreTrainedModel, step: int) -> list[Group]:
        """Ask the source to rank fresh groups of ``policy``'s responses, at ``step``; they
        arrive at ``step + delay`` (each group records ``requested_at``)."""
        if self.source is None or self.task is None or self.feedback is None:
            raise TypeError("this reward model has no feedback source (use RewardModel.train)")
        # Sampled on the policy's device in the job's precision (an uncertainty probe too).
        with autocast(model_device(policy), self.precision):
            fresh = request_feedback(
                self.network,
                policy,
                self.tokenizer,
                self.task,
                self.source,
                self.feedback,
                self.config,
                self.rng,
                self.generator,
                self.flops,
            )
        for group in fresh:
            group.extras["requested_at"] = step
        if self.source.deferred:  # handed over unlabelled; collected at the due step
            self.source.submit(fresh, step, step + self.delay)
        self.pending.append((step + self.delay, fresh))
        return fresh

    def arrive(self, step: int) -> dict[str, float]:
        """The requested groups due by ``step`` join the others and the network is trained on all
        of them; nothing happens (``{}``) while none is due. Returns the training statistics."""
        arrived = [g for due, groups in self.pending if due <= step for g in groups]
        if not arrived:
            return {}
        self.pending = [(due, groups) for due, groups in self.pending if due > step]
        extra: dict[str, float] = {}
        if self.deferred:
            arrived, extra = self._collect(arrived, step)
        for group in arrived:
            group.extras["arrived_at"] = step
        self.groups.extend(arrived)
        stats = extra
        if arrived:
            # Retrained in the job's precision (fp16: with a loss scaler, inside).
            with autocast(model_device(self.network), self.precision):
                trained = retrain_reward_model(
                    self.network, self.tokenizer, self.groups, self.config
                )
            stats = {**trained, **extra}
        if self.delay:
            stats["feedback/pending"] = float(sum(len(groups) for _, groups in self.pending))
            if arrived:
                stats["feedback/label_age"] = float(
                    step - min(g.extras["requested_at"] for g in arrived)
                )
        return stats

    def _collect(self, due: list[Group], step: int) -> tuple[list[Group], dict[str, float]]:
        """The deferred source's labels of the groups due at ``step``: the labelled ones, and
        ``feedback/unlabelled`` (groups dropped without a label) and ``feedback/wait_seconds``."""
        assert self.source is not None
        started = time.monotonic()
        labels = checked_preferences(self.source, due, self.source.collect(due, step), "collect")
        for group, preference in zip(due, labels, strict=True):
            group.preference = preference
        labelled = [g for g in due if g.preference is not None]
        return labelled, {
            "feedback/unlabelled": float(len(due) - len(labelled)),
            "feedback/wait_seconds": time.monotonic() - started,
        }

    def refresh(self, policy: PreTrainedModel, step: int) -> dict[str, float]:
        """One online round: :meth:`request` fresh groups, then :meth:`arrive` (at once without a
        delay); with a delay the statistics add ``feedback/requested``."""
        fresh = self.request(policy, step)
        stats = self.arrive(step)
        if self.delay:
            stats["feedback/requested"] = float(len(fresh))
        return stats

    def state_dict(self) -> dict[str, Any]:
        """What online feedback changes: the weights, the groups (arrived and pending) and the
        random streams (checkpoint-safe: tensors, numbers and strings)."""
        return {
            "model": self.network.state_dict(),
            "groups": json.dumps([group_dict(g) for g in self.groups]),
            "rng": self.rng.bit_generator.state,
            # The sampler of fresh groups: without it a resumed run samples other groups.
            "generator": self.generator.get_state(),
            # Labels still on their way are part of where the run stands.
            "pending": json.dumps(
                [[due, [group_dict(g) for g in groups]] for due, groups in self.pending]
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` saved."""
        self.network.load_state_dict(state["model"])
        self.groups = [Group(**g) for g in json.loads(state["groups"])]
        self.pending = [
            (int(due), [Group(**g) for g in groups])
            for due, groups in json.loads(state.get("pending", "[]"))
        ]
        self.rng.bit_generator.state = state["rng"]
        if "generator" in state:
            self.generator.set_state(state["generator"])


def reward_texts(
    batch: Batch,
    policy_tokenizer: PreTrainedTokenizerBase,
    reward_tokenizer: PreTrainedTokenizerBase,
    stops: Collection[int] | None = None,
) -> list[list[int]]:
    """Each sequence of ``batch`` as ``reward_tokenizer`` writes it: with a chat template, the
    row's prompt (its conversation, or one user turn) and the decoded response as the
    assistant's turn, rendered by that template; without one, the prompt's text
    (:func:`~alignbench.batch.prompt_text`) followed by the response as the policy's
    decoding continues it, and the reward model's eos after a response that ended (how
    alignbench's reward models see a finished answer). A response ended when its last token is
    one of ``stops`` (default: the policy tokenizer's eos)."""
    ends = set(stops) if stops else {policy_tokenizer.eos_token_id}
    out = []
    for row, (response, _, _) in zip(batch.rows, batch.token_lists(), strict=True):
        ended = bool(response) and response[-1] in ends
        if getattr(reward_tokenizer, "chat_template", None):
            answer = policy_tokenizer.decode(response, skip_special_tokens=True).strip()
            conversation = [*prompt_messages(row), {"role": "assistant", "content": answer}]
            # Rendered to text, then encoded without special tokens: the template writes its own.
            # A response cut off by the token limit stays open (no end-of-turn after it), so
            # the reward model sees it unfinished, as the plain-text path does (no eos).
            if ended:
                text = reward_tokenizer.apply_chat_template(conversation, tokenize=False)
            else:
                text = open_reply(reward_tokenizer, conversation)
            out.append(reward_tokenizer.encode(text, add_special_tokens=False))
            continue
        # The prompt as plain text (not the policy's chat markup, nor its unknown-word tokens),
        # then the response as it continues that text when decoded (its spacing included).
        text = prompt_text(row)
        prompt = policy_tokenizer.encode(text, add_special_tokens=False)
        before = policy_tokenizer.decode(prompt, skip_special_tokens=True)
        joint = policy_tokenizer.decode(prompt + response, skip_special_tokens=True)
        answer = policy_tokenizer.decode(response, skip_special_tokens=True).strip()
        rest = joint[len(before) :] if joint.startswith(before) else f" {answer}"
        ids = reward_tokenizer.encode(text + rest)
        if ended and reward_tokenizer.eos_token_id is not None:
            ids.append(reward_tokenizer.eos_token_id)
        out.append(ids)
    return out


def _max_positions(network: torch.nn.Module) -> int | None:
    """The most positions the network's trunk takes (``max_position_embeddings`` or GPT-2's
    ``n_positions``), None when its config says none."""
    return positions_of(getattr(getattr(network, "trunk", network), "config", None))


#: Stands in for a reply while a chat template renders the text before it (:func:`open_reply`).
_REPLY = "ALIGNBENCHOPENREPLY"


def open_reply(tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, str]]) -> str:
    """A conversation ending in an unfinished assistant reply, as ``tokenizer``'s chat template
    writes it up to the reply's last character (no end-of-turn after it).

    ``continue_final_message`` does this, but fails (a multi-line error, mid-run) when the
    template rewrites a reply so that its text no longer appears (one that strips or replaces
    tags, say); then the template renders a stand-in reply and the text before the stand-in is
    followed by the reply as generated. A template that drops the reply is refused in one line.
    """
    try:
        return tokenizer.apply_chat_template(
            conversation, tokenize=False, continue_final_message=True
        )
    except ValueError:
        pass
    stand_in = [*conversation[:-1], {"role": "assistant", "content": _REPLY}]
    text = tokenizer.apply_chat_template(stand_in, tokenize=False)
    if _REPLY not in text:
        raise DataError(
            "the reward model's chat template does not write the assistant's reply into its "
            "text — use a reward model whose template keeps the reply, or one without a chat "
            "template"
        )
    return text[: text.rindex(_REPLY)] + conversation[-1]["content"]


def retokenized(
    batch: Batch,
    policy_tokenizer: PreTrainedTokenizerBase,
    reward_tokenizer: PreTrainedTokenizerBase,
    stops: Collection[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` ``[N, L]`` of :func:`reward_texts`, right-padded (the
    scalar is read at each row's last real token, positions come from the mask)."""
    sequences = reward_texts(batch, policy_tokenizer, reward_tokenizer, stops)
    pad = reward_tokenizer.pad_token_id
    pad = pad if pad is not None else (reward_tokenizer.eos_token_id or 0)
    length = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[i, : len(sequence)] = 1
    return ids, mask
