"""The step's data: a :class:`Batch` of K sequences per prompt, and :func:`collate` to build one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from alignbench import ops

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Turns:
    """The turn structure of a batch of conversations (a single-turn batch has none).

    In a conversation the response part of a sequence holds every turn after the opening user
    message: assistant replies (``response_mask`` 1: trained, rewarded, advantaged) and the
    user's later messages (``response_mask`` 0 but attended to: context, never trained on).
    ``index`` ``[N, R]`` is the assistant turn (0, 1, ...) of each response token and -1 on user
    tokens and padding; ``dialogues`` the messages of each conversation; ``rewards`` ``[N, T]``
    one reward per assistant turn (set by the score step, 0 after a dialogue's last turn) and
    ``gamma`` the discount between turns (the reward's ``turn_gamma``).
    """

    index: torch.Tensor
    dialogues: list[list[dict[str, str]]]
    rewards: torch.Tensor | None = None
    gamma: float = 1.0

    @property
    def count(self) -> torch.Tensor:
        """Assistant turns of each conversation ``[N]``."""
        return self.index.max(-1).values + 1

    def ends(self) -> torch.Tensor:
        """Position in the response of each assistant turn's last token ``[N, T]`` (-1: none)."""
        turns = max(1, int(self.count.max()))
        ends = torch.full(
            (self.index.shape[0], turns), -1, dtype=torch.long, device=self.index.device
        )
        for t in range(turns):
            ends[:, t] = ops.last_positions(self.index == t)
        return ends

    def to(self, device: torch.device) -> Turns:
        """These turns with their tensors on ``device``."""
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return replace(self, index=move(self.index), rewards=move(self.rewards))


@dataclass
class Batch:
    """K sequences for each of B prompts, prompt-major (sequence ``b * K + k``), in one layout.

    ``input_ids`` / ``attention_mask`` are ``[N, P + R]`` (N = B * K): the prompt left-padded to
    ``prompt_length`` = P, then the response right-padded to R with ``response_mask`` ``[N, R]``
    (the eos token, when generated, is inside the mask). ``logprobs`` are the sampler's
    per-token log-probabilities (NaN-free, 0 on padding) when the sequences were sampled;
    ``rewards`` ``[N]`` are set by the score hook; ``extras`` holds whatever else an algorithm
    attaches (reference log-probs, values, per-token rewards...). A conversation (multi-turn
    task) also has ``turns`` (:class:`Turns`): its response part then interleaves assistant
    replies (in ``response_mask``) with user messages (attended, outside ``response_mask``).
    """

    prompts: list[dict[str, Any]]
    group_size: int
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    response_mask: torch.Tensor
    responses: list[str]
    sources: list[str]
    logprobs: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    turns: Turns | None = None

    @property
    def response_ids(self) -> torch.Tensor:
        """The response tokens ``[N, R]`` (padding included; see ``response_mask``)."""
        return self.input_ids[:, self.prompt_length :]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The prompt row of every sequence (each prompt repeated K times)."""
        return [row for row in self.prompts for _ in range(self.group_size)]

    @property
    def num_sequences(self) -> int:
        """N = B * K."""
        return self.input_ids.shape[0]

    @property
    def last_positions(self) -> torch.Tensor:
        """Position in the response of each sequence's last token ``[N]`` (its eos when it
        ended; in a conversation, the last assistant reply's)."""
        return ops.last_positions(self.response_mask).clamp(min=0)

    def token_lists(self) -> list[tuple[list[int], list[int], list[int]]]:
        """Each sequence's response as ``(ids, response_mask, turn index)`` lists without the
        padding: what :func:`collate` takes to rebuild (or regroup) it."""
        attended = self.attention_mask[:, self.prompt_length :].bool()
        index = self.turns.index if self.turns is not None else None
        out = []
        for i in range(self.num_sequences):
            keep = attended[i]
            turn = index[i][keep].tolist() if index is not None else [0] * int(keep.sum())
            out.append(
                (self.response_ids[i][keep].tolist(), self.response_mask[i][keep].tolist(), turn)
            )
        return out

    @property
    def num_response_tokens(self) -> int:
        """Response tokens in the batch, eos included, padding excluded."""
        return int(self.response_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        """This batch with its tensors (``extras`` included) on ``device``; itself if there."""
        device = torch.device(device)
        if self.input_ids.device == device:
            return self

        def move(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        return replace(
            self,
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            response_mask=move(self.response_mask),
            logprobs=move(self.logprobs),
            rewards=move(self.rewards),
            extras={key: move(value) for key, value in self.extras.items()},
            turns=self.turns.to(device) if self.turns is not None else None,
        )

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """Reshape a per-sequence ``[N]`` tensor to ``[B, K]``."""
        return values.view(len(self.prompts), self.group_size)


#: The key of a prompt row that holds its conversation: the messages before the answer
#: (``system`` / ``user`` / ``assistant``, ending with the user's turn the policy answers). A row
#: without one is a single user turn, ``row["prompt"]``.
CONVERSATION = "conversation"


def prompt_messages(row: dict[str, Any], prompt_key: str = "prompt") -> list[dict[str, str]]:
    """The conversation a prompt row stands for: its ``conversation`` when it has one, else
    one user turn holding ``row[prompt_key]``."""
    conversation = row.get(CONVERSATION) if prompt_key == "prompt" else None
    return list(conversation) if conversation else [{"role": "user", "content": row[prompt_key]}]


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """A conversation as plain text, for a tokenizer without a chat template: a single user
    message is its text as it is; otherwise one ``Role: content`` line per message and a last
    line ``Assistant:`` where the answer starts."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def prompt_text(row: dict[str, Any], prompt_key: str = "prompt") -> str:
    """The prompt row as plain text (:func:`plain_prompt` of :func:`prompt_messages`): what a
    tokenizer without a chat template encodes; ``row["prompt"]`` for a single user turn."""
    return plain_prompt(prompt_messages(row, prompt_key))


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | list[dict[str, str]]]
) -> list[list[int]]:
    """Token ids of each prompt, ending where the assistant's answer starts: a text is one user
    turn, a list of messages a conversation (see :data:`CONVERSATION`); rendered through the
    tokenizer's chat template when it has one, else as :func:`plain_prompt` text."""
    conversations = [
        p if isinstance(p, list) else [{"role": "user", "content": p}] for p in prompts
    ]
    if getattr(tokenizer, "chat_template", None):
        # Rendered to text, then encoded without adding special tokens: a template that writes
        # its own bos token would otherwise get a second one.
        texts = [
            tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
    else:
        texts = [plain_prompt(c) for c in conversations]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def row_prompts(
    rows: list[dict[str, Any]], prompt_key: str = "prompt"
) -> list[str | list[dict[str, str]]]:
    """What :func:`encode_prompts` takes for prompt rows: each row's text, or its conversation
    where it has one."""
    return [
        prompt_messages(row)
        if prompt_key == "prompt" and row.get(CONVERSATION)
        else row[prompt_key]
        for row in rows
    ]


#: Stands in for an assistant reply when a chat template renders the turn that follows it.
_PLACEHOLDER = "ALIGNBENCHREPLY"


def encode_user_turn(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a user message that follows an assistant reply (which ended with eos), up
    to where the assistant's next reply starts: what a chat template writes between the two
    replies; without a template, the text alone.

    Rendered as the difference between a template's text for ``[user, assistant]`` and for
    ``[user, assistant, user]`` (with the generation prompt), from just after the reply's eos,
    so the template's own role markers and separators are kept exactly.
    """
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.encode(text, add_special_tokens=False)
    before = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PLACEHOLDER}]
    head = tokenizer.apply_chat_template(before, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*before, {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    start = full.index(_PLACEHOLDER) + len(_PLACEHOLDER)
    eos = tokenizer.eos_token or ""
    # The reply's tokens already end with eos; the template's text for it is not repeated.
    if eos and full[start:].lstrip().startswith(eos) and head[start:].lstrip().startswith(eos):
        start = full.index(eos, start) + len(eos)
    return tokenizer.encode(full[start:], add_special_tokens=False)


def encode_dialogue(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[list[int], list[int], list[int]]:
    """A written conversation (a demonstration) after its opening user message, as
    ``(ids, response_mask, turn_index)``: each assistant reply followed by eos (mask 1, its turn
    number), each later user message as :func:`encode_user_turn` (mask 0, turn -1)."""
    if not messages or messages[0]["role"] != "user":
        raise ValueError("a dialogue starts with the user's message")
    ids: list[int] = []
    mask: list[int] = []
    index: list[int] = []
    turn = 0
    for message in messages[1:]:
        if message["role"] == "assistant":
            part = encode_responses(tokenizer, [message["content"]])[0]
            ids, mask, index = ids + part, mask + [1] * len(part), index + [turn] * len(part)
            turn += 1
        else:
            part = encode_user_turn(tokenizer, message["content"])
            ids, mask, index = ids + part, mask + [0] * len(part), index + [-1] * len(part)
    return ids, mask, index


def demonstration_batch(
    tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, Any]], source: str = "demonstration"
) -> Batch:
    """The task's demonstrations of ``rows`` as one Batch (K=1): the ``response`` of each row,
    or its whole conversation where the row has ``messages`` (a multi-turn demonstration, trained
    on the assistant turns only). Stage 1, PPO-ptx and RRHF's demonstration candidate use it."""
    if any(row.get("messages") for row in rows):
        # A row without a conversation of its own is the one-turn conversation it describes.
        dialogues = [
            row.get("messages")
            or [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["response"]},
            ]
            for row in rows
        ]
        parts = [encode_dialogue(tokenizer, d) for d in dialogues]
        return collate(
            tokenizer,
            rows,
            [ids for ids, _, _ in parts],
            1,
            [source] * len(rows),
            response_masks=[mask for _, mask, _ in parts],
            turn_index=[index for _, _, index in parts],
            dialogues=dialogues,
        )
    ids = encode_responses(tokenizer, [row["response"] for row in rows])
    return collate(tokenizer, rows, ids, 1, [source] * len(rows))


def encode_responses(tokenizer: PreTrainedTokenizerBase, responses: list[str]) -> list[list[int]]:
    """Token ids of each response text, followed by eos (a finished answer)."""
    eos = tokenizer.eos_token_id
    return [tokenizer.encode(r, add_special_tokens=False) + [eos] for r in responses]


def decode_responses(
    tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, mask: torch.Tensor
) -> list[str]:
    """Response texts without special tokens, from ``[N, R]`` ids and their mask."""
    return [
        tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip()
        for row, m in zip(ids, mask, strict=True)
    ]


def pad_prompts(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompt ids to one length: ``(ids [N, P], attention_mask [N, P])``."""
    length = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        if p:
            ids[i, length - len(p) :] = torch.tensor(p)
            mask[i, length - len(p) :] = 1
    return ids, mask


def collate(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[dict[str, Any]],
    response_ids: list[list[int]],
    group_size: int,
    sources: list[str],
    prompt_key: str = "prompt",
    *,
    response_masks: list[list[int]] | None = None,
    turn_index: list[list[int]] | None = None,
    dialogues: list[list[dict[str, str]]] | None = None,
    logprobs: list[list[float]] | None = None,
) -> Batch:
    """Build a :class:`Batch` from prompt rows and K response-token lists per prompt.

    Conversations pass, per sequence, ``response_masks`` (1 on assistant tokens, 0 on user
    tokens), ``turn_index`` and ``dialogues`` (see :class:`Turns`); sampled sequences may pass
    their per-token ``logprobs``. Without masks every response token is trained on.
    """
    if len(response_ids) != len(prompts) * group_size:
        raise ValueError(
            f"{len(response_ids)} responses for {len(prompts)} prompts × K={group_size}"
        )
    pad = tokenizer.pad_token_id
    prompt_ids = encode_prompts(tokenizer, row_prompts(prompts, prompt_key))
    p_ids, p_mask = pad_prompts([p for p in prompt_ids for _ in range(group_size)], pad)
    n, length = len(response_ids), max(1, max(len(r) for r in response_ids))
    r_ids = torch.full((n, length), pad, dtype=torch.long)
    r_attention = torch.zeros((n, length), dtype=torch.long)
    r_mask = torch.zeros((n, length), dtype=torch.long)
    index = torch.full((n, length), -1, dtype=torch.long)
    r_logprobs = torch.zeros((n, length)) if logprobs is not None else None
    for i, r in enumerate(response_ids):
        if r:
            r_ids[i, : len(r)] = torch.tensor(r)
            r_attention[i, : len(r)] = 1
            r_mask[i, : len(r)] = torch.tensor(response_masks[i]) if response_masks else 1
            if turn_index is not None:
                index[i, : len(r)] = torch.tensor(turn_index[i])
            if r_logprobs is not None:
                r_logprobs[i, : len(r)] = torch.tensor(logprobs[i])
    turns = None
    if dialogues is not None:
        if turn_index is None:
            raise ValueError("collate: dialogues need their turn_index")
        index = index.masked_fill(r_mask == 0, -1)
        turns = Turns(index=index, dialogues=[list(d) for d in dialogues])
    return Batch(
        prompts=list(prompts),
        group_size=group_size,
        input_ids=torch.cat([p_ids, r_ids], dim=1),
        attention_mask=torch.cat([p_mask, r_attention], dim=1),
        prompt_length=p_ids.shape[1],
        response_mask=r_mask,
        responses=(
            [transcript(d[1:]) for d in dialogues]
            if dialogues is not None
            else decode_responses(tokenizer, r_ids, r_mask)
        ),
        sources=list(sources),
        logprobs=r_logprobs,
        turns=turns,
    )


def join(
    tokenizer: PreTrainedTokenizerBase, prompts: list[dict[str, Any]], parts: list[Batch]
) -> Batch:
    """One prompt-major Batch of every part's candidates (each part a Batch over the same
    ``prompts``, K_i per prompt): per prompt, part 1's K_1, then part 2's, ... (K = sum K_i).

    Sources and, where every part has them, sampler log-probs are kept. If any part holds
    conversations, so does the result: a single-turn part becomes one-turn conversations.
    """
    if not parts:
        raise ValueError("join: no parts")
    chat = any(part.turns is not None for part in parts)
    per_part = []
    for part in parts:
        if len(part.prompts) != len(prompts):
            raise ValueError(f"join: a part has {len(part.prompts)} prompts, not {len(prompts)}")
        lists = part.token_lists()
        logprobs = None
        if part.logprobs is not None:
            attended = part.attention_mask[:, part.prompt_length :].bool()
            logprobs = [part.logprobs[i][attended[i]].tolist() for i in range(len(lists))]
        if part.turns is not None:
            dialogues = part.turns.dialogues
        else:
            dialogues = [
                [
                    {"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": response},
                ]
                for row, response in zip(part.rows, part.responses, strict=True)
            ]
        per_part.append((part.group_size, lists, logprobs, dialogues, part.sources))
    ids, masks, index, logprobs, dialogues, sources = [], [], [], [], [], []
    keep_logprobs = all(lp is not None for _, _, lp, _, _ in per_part)
    for b in range(len(prompts)):
        for k, lists, part_logprobs, part_dialogues, part_sources in per_part:
            for i in range(b * k, (b + 1) * k):
                ids.append(lists[i][0])
                masks.append(lists[i][1])
                index.append(lists[i][2])
                dialogues.append(part_dialogues[i])
                sources.append(part_sources[i])
                if keep_logprobs:
                    logprobs.append(part_logprobs[i])
    return collate(
        tokenizer,
        prompts,
        ids,
        sum(k for k, *_ in per_part),
        sources,
        response_masks=masks,
        turn_index=index if chat else None,
        dialogues=dialogues if chat else None,
        logprobs=logprobs if keep_logprobs else None,
    )


def transcript(messages: list[dict[str, str]]) -> str:
    """A conversation as one line of text (``user: ... | assistant: ...``), for logs and tables."""
    return " | ".join(f"{m['role']}: {m['content']}" for m in messages)
