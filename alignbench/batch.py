"""The step's data: a :class:`Batch` of K sequences per prompt, and :func:`collate` to build one."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class Batch:
    """K sequences for each of B prompts, prompt-major (sequence ``b * K + k``), in one layout.

    ``input_ids`` / ``attention_mask`` are ``[N, P + R]`` (N = B * K): the prompt left-padded to
    ``prompt_length`` = P, then the response right-padded to R with ``response_mask`` ``[N, R]``
    (the eos token, when generated, is inside the mask). ``logprobs`` are the sampler's
    per-token log-probabilities (NaN-free, 0 on padding) when the sequences were sampled;
    ``rewards`` ``[N]`` are set by the score hook; ``extras`` holds whatever else an algorithm
    attaches (reference log-probs, values, per-token rewards...).
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
        )

    def grouped(self, values: torch.Tensor) -> torch.Tensor:
        """Reshape a per-sequence ``[N]`` tensor to ``[B, K]``."""
        return values.view(len(self.prompts), self.group_size)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt: one user turn through the tokenizer's chat template, ending
    where the assistant's answer starts, when it has one; else the text as it is."""
    if getattr(tokenizer, "chat_template", None):
        # Rendered to text, then encoded without adding special tokens: a template that writes
        # its own bos token would otherwise get a second one.
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    return [tokenizer.encode(p, add_special_tokens=False) for p in prompts]


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
) -> Batch:
    """Build a :class:`Batch` from prompt rows and K response-token lists per prompt."""
    if len(response_ids) != len(prompts) * group_size:
        raise ValueError(
            f"{len(response_ids)} responses for {len(prompts)} prompts × K={group_size}"
        )
    pad = tokenizer.pad_token_id
    prompt_ids = encode_prompts(tokenizer, [row[prompt_key] for row in prompts])
    p_ids, p_mask = pad_prompts([p for p in prompt_ids for _ in range(group_size)], pad)
    length = max(1, max(len(r) for r in response_ids))
    r_ids = torch.full((len(response_ids), length), pad, dtype=torch.long)
    r_mask = torch.zeros((len(response_ids), length), dtype=torch.long)
    for i, r in enumerate(response_ids):
        if r:
            r_ids[i, : len(r)] = torch.tensor(r)
            r_mask[i, : len(r)] = 1
    return Batch(
        prompts=list(prompts),
        group_size=group_size,
        input_ids=torch.cat([p_ids, r_ids], dim=1),
        attention_mask=torch.cat([p_mask, r_mask], dim=1),
        prompt_length=p_ids.shape[1],
        response_mask=r_mask,
        responses=decode_responses(tokenizer, r_ids, r_mask),
        sources=list(sources),
    )
