"""The one sampling routine every algorithm and the evaluation use.

K responses per prompt with temperature / top-k / top-p (or greedy), stopping at eos (the whole
batch stops once every sequence has), through the model's KV cache. Prompts of different lengths
are left-padded; the decode steps run through :mod:`alignbench.decoding` (a static-cache decoder
for Llama-shaped models, ``model(...)`` otherwise), which give the same tokens and log-probs.
It returns a :class:`~alignbench.batch.Batch` in the shared layout with the sampler's per-token
log-probabilities, computed as ``log_softmax(logits / temperature)`` of the *unfiltered*
distribution, which is exactly what a training forward recomputes; top-k / top-p only decide
which token is drawn. Deterministic under a ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignbench.batch import Batch, decode_responses, encode_prompts, pad_prompts
from alignbench.decoding import decoder
from alignbench.hardware import model_device
from alignbench.models import position_ids


@dataclass
class SamplingParams:
    """How to decode: ``greedy`` ignores temperature, top_k and top_p.

    ``min_new_tokens`` forbids eos before that many tokens (benchmarks use it for fixed lengths).
    """

    max_new_tokens: int = 8
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    @classmethod
    def from_config(cls, config: Any) -> SamplingParams:
        """The decoding an algorithm config declares: its ``max_new_tokens``, ``temperature``,
        ``top_k`` and ``top_p`` (one definition instead of a copy in every algorithm)."""
        return cls(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
        )


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask to -inf every token outside the top-k and outside the top-p nucleus."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[dict[str, Any]],
    num_samples: int = 1,
    params: SamplingParams | None = None,
    generator: torch.Generator | None = None,
    prompt_key: str = "prompt",
    source: str = "policy",
) -> Batch:
    """Generate ``num_samples`` responses per prompt row, as a prompt-major Batch."""
    params = params or SamplingParams()
    was_training = model.training
    model.eval()  # dropout off: the sampler's log-probs must match the training forward's
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids = encode_prompts(tokenizer, [row[prompt_key] for row in prompts])
    ids, mask = pad_prompts([p for p in prompt_ids for _ in range(num_samples)], pad)
    device = model_device(model)
    ids, mask = ids.to(device), mask.to(device)  # no-ops on the CPU
    n, prompt_mask = ids.shape[0], mask
    # Only the last prompt position's logits are needed: the others are not projected.
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids(mask),
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1].float()
    next_position = position_ids(mask)[:, -1:] + 1
    # The last sampled token is never fed back: max_new_tokens - 1 decode steps at most.
    steps = decoder(model, out.cache, mask, max(0, params.max_new_tokens - 1))
    tokens, logprobs = [], []
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    response_mask = []
    for t in range(params.max_new_tokens):
        if t < params.min_new_tokens:
            logits = logits.clone()
            logits[:, eos] = float("-inf")
        if params.greedy:
            token = logits.argmax(-1)
            logp = torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0]
        else:
            # Dividing by 1.0 changes nothing: skip the pass over the vocabulary.
            scaled = logits if params.temperature == 1.0 else logits / params.temperature
            filtered = _filter_logits(scaled, params.top_k, params.top_p)
            probs = torch.softmax(filtered, -1)
            if generator is not None and probs.device != generator.device:
                # Drawn on the run's (CPU) generator: one seed, the same stream on any device.
                token = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
            else:
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            logp = torch.log_softmax(scaled, -1).gather(-1, token[:, None])[:, 0]
        token = token.masked_fill(finished, pad)
        response_mask.append((~finished).long())
        logprobs.append(logp.masked_fill(finished, 0.0))
        tokens.append(token)
        finished = finished | (token == eos)
        if bool(finished.all()) or t == params.max_new_tokens - 1:
            break
        logits = steps.step(token, next_position, t).float()
        next_position = next_position + 1
    model.train(was_training)
    r_ids = torch.stack(tokens, 1)
    r_mask = torch.stack(response_mask, 1)
    return Batch(
        prompts=list(prompts),
        group_size=num_samples,
        input_ids=torch.cat([ids, r_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, r_mask], dim=1),
        prompt_length=ids.shape[1],
        response_mask=r_mask,
        responses=decode_responses(tokenizer, r_ids, r_mask),
        sources=[source] * n,
        logprobs=torch.stack(logprobs, 1),
    )
