"""The one sampling routine every algorithm and the evaluation use.

K responses per prompt with temperature / top-k / top-p (or greedy), stopping at eos (the whole
batch stops once every sequence has), through the model's KV cache. A response ends at any of
:func:`eos_ids`: the tokenizer's eos and every id of the model's
``generation_config.eos_token_id`` (Llama 3 and Qwen list several). Prompts of different lengths
are left-padded; the decode steps run through :mod:`alignbench.decoding` (a static-cache decoder
for Llama-shaped models, ``model(...)`` otherwise), which give the same tokens and log-probs.
It returns a :class:`~alignbench.batch.Batch` in the shared layout with the sampler's per-token
log-probabilities, computed as ``log_softmax(logits / temperature)`` of the *unfiltered*
distribution, which is exactly what a training forward recomputes; top-k / top-p only decide
which token is drawn. Deterministic under a ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alignbench import lean_forward
from alignbench.batch import (
    Batch,
    collate,
    decode_responses,
    encode_prompts,
    encode_user_turn,
    pad_prompts,
    row_prompts,
)
from alignbench.config import SamplingConfig
from alignbench.decoding import StaticCacheDecoder, decoder
from alignbench.errors import PluginError
from alignbench.hardware import model_device
from alignbench.models import position_ids, response_logits
from alignbench.task import Task

if TYPE_CHECKING:  # annotations only: importing them loads transformers' modelling code (~3 s)
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class SamplingParams:
    """How to decode: ``greedy`` ignores temperature, top_k and top_p.

    ``min_new_tokens`` forbids eos before that many tokens (benchmarks use it for fixed lengths).
    ``draw`` is how a token is drawn from the (filtered) distribution: ``multinomial`` is
    ``torch.multinomial`` (the default: one exponential draw per vocabulary entry, as Hugging
    Face's ``generate``); ``inverse_cdf`` takes one uniform draw per sequence and finds it in the
    cumulative distribution. Both sample exactly the same distribution, but they consume the
    generator differently, so the tokens differ; ``inverse_cdf`` costs about 1/12 of the draw
    on the CPU (16 x 1024 probabilities, one thread: 22 us instead of 280 us per token).
    ``lean_prefill`` runs the prompt pass of a Llama-shaped model through
    :func:`alignbench.lean_forward.prefill` (the last layer's queries and MLP at the last
    position only): logits within 1e-5 of the Hugging Face pass, not bit for bit.
    """

    max_new_tokens: int = 8
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    draw: str = "multinomial"
    lean_prefill: bool = False

    @classmethod
    def from_config(cls, sampling: SamplingConfig) -> SamplingParams:
        """The decoding a :class:`~alignbench.config.SamplingConfig` declares (``algo.sampling``,
        ``feedback.sampling``): its ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``."""
        return cls(
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            draw=sampling.draw,
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


#: The ways :class:`SamplingParams` ``draw`` may name.
DRAWS = ("multinomial", "inverse_cdf")


def eos_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends a response: the tokenizer's eos first, then each id of the
    model's ``generation_config.eos_token_id`` (an int or a list) not already named."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if declared is None:
        return ids
    for token in [declared] if isinstance(declared, int) else declared:
        if int(token) not in ids:
            ids.append(int(token))
    return ids


def _draw_inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``probs`` ``[N, V]``: a uniform draw located in the row's cumulative
    distribution (summed in float64, so a long vocabulary's rounding does not bias it)."""
    device = generator.device if generator is not None else probs.device
    u = torch.rand(probs.shape[0], 1, generator=generator, device=device, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    # Strictly below the total: the search then never lands past the last token with mass.
    x = torch.minimum(u.to(probs.device) * total, total.nextafter(torch.zeros_like(total)))
    # right=True: the first index whose cumulative mass exceeds x, never a zero-mass token.
    return torch.searchsorted(cdf, x, right=True)[:, 0]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    params: SamplingParams,
    generator: torch.Generator | None,
    eos: int | Sequence[int],
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode one response per prompt token list: ``(prompt ids [n, P], prompt mask [n, P],
    response ids [n, R], response mask [n, R], log-probs [n, R])``, the prompts left-padded; a
    response ends at ``eos`` (one id, or any of several)."""
    if params.draw not in DRAWS:
        raise ValueError(f"draw={params.draw!r} — use one of {', '.join(DRAWS)}")
    was_training = model.training
    model.eval()  # dropout off: the sampler's log-probs must match the training forward's
    ids, mask = pad_prompts(prompt_ids, pad)
    device = model_device(model)
    ids, mask = ids.to(device), mask.to(device)  # no-ops on the CPU
    # Inference mode: the same operations without autograd's per-operation bookkeeping (about
    # a tenth of a small model's sampling time). Its tensors stay inside: the stacks below,
    # made outside it, are ordinary tensors a training forward can use.
    with torch.inference_mode():
        tokens, response_mask, logprobs = _decode(model, ids, mask, params, generator, eos, pad)
    model.train(was_training)
    return (
        ids,
        mask,
        torch.stack(tokens, 1),
        torch.stack(response_mask, 1),
        torch.stack(logprobs, 1),
    )


def _decode(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    eos: int | Sequence[int],
    pad: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """The prompt pass and the decode loop: per step, the tokens, mask and log-probs ``[n]``."""
    n, device = ids.shape[0], ids.device
    if params.lean_prefill and lean_forward.supports(model) and StaticCacheDecoder.supports(model):
        logits, cache = lean_forward.prefill(model, ids, mask)
    else:
        # Only the last prompt position's logits are needed: the others are not projected.
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            use_cache=True,
            logits_to_keep=1,
        )
        logits, cache = out.logits[:, -1], out.cache
    logits = logits.float()
    next_position = position_ids(mask)[:, -1:] + 1
    # The last sampled token is never fed back: max_new_tokens - 1 decode steps at most.
    steps = decoder(model, cache, mask, max(0, params.max_new_tokens - 1))
    tokens, logprobs = [], []
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    ones = torch.ones(n, dtype=torch.long, device=device)
    # One id is compared as before (the default's bits unchanged); several through isin.
    stops = [eos] if isinstance(eos, int) else list(dict.fromkeys(int(e) for e in eos))
    stop = stops[0] if len(stops) == 1 else torch.tensor(stops, dtype=torch.long, device=device)
    response_mask = []
    for t in range(params.max_new_tokens):
        # While eos is banned no sequence can finish: nothing to mask, nothing to check.
        banned = t < params.min_new_tokens
        if banned and stops:
            logits = logits.clone()
            logits[:, stop] = float("-inf")
        if params.greedy:
            token = logits.argmax(-1)
            logp = torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0]
        else:
            # Dividing by 1.0 changes nothing: skip the pass over the vocabulary.
            scaled = logits if params.temperature == 1.0 else logits / params.temperature
            filtered = _filter_logits(scaled, params.top_k, params.top_p)
            probs = torch.softmax(filtered, -1)
            if params.draw == "inverse_cdf":
                token = _draw_inverse_cdf(probs, generator)
            elif generator is not None and probs.device != generator.device:
                # Drawn on the run's (CPU) generator: one seed, the same stream on any device.
                token = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
            else:
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            logp = torch.log_softmax(scaled, -1).gather(-1, token[:, None])[:, 0]
        tokens.append(token if banned else token.masked_fill(finished, pad))
        response_mask.append(ones if banned else (~finished).long())
        logprobs.append(logp if banned else logp.masked_fill(finished, 0.0))
        if t == params.max_new_tokens - 1:
            break
        if not banned and stops:
            ended = tokens[-1] == stop if len(stops) == 1 else torch.isin(tokens[-1], stop)
            finished = finished | ended
            if bool(finished.all()):
                break
        logits = steps.step(tokens[-1], next_position, t).float()
        next_position = next_position + 1
    return tokens, response_mask, logprobs


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
    engine: Engine | None = None,
) -> Batch:
    """Generate ``num_samples`` responses per prompt row, as a prompt-major Batch (``engine``:
    an external inference engine's answer for the prompts' token ids, when it gives one)."""
    params = params or SamplingParams()
    prompt_ids = encode_prompts(tokenizer, row_prompts(prompts, prompt_key))
    if engine is not None:  # alignbench_generate; None from it: decode here
        batch = engine(prompt_ids)
        if batch is not None:
            return batch
    ids, prompt_mask, r_ids, r_mask, logprobs = generate(
        model,
        [p for p in prompt_ids for _ in range(num_samples)],
        params,
        generator,
        eos_ids(model, tokenizer),
        tokenizer.pad_token_id,
    )
    return Batch(
        prompts=list(prompts),
        group_size=num_samples,
        input_ids=torch.cat([ids, r_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, r_mask], dim=1),
        prompt_length=ids.shape[1],
        response_mask=r_mask,
        responses=decode_responses(tokenizer, r_ids, r_mask),
        sources=[source] * ids.shape[0],
        logprobs=logprobs,
    )


# -- an external inference engine (the ``alignbench_generate`` hook) ----------------------------

#: ``engine(prompt_ids)``: the Batch of an external engine's responses to the prompts' token ids
#: (one list per prompt row), or None to decode here. :meth:`alignbench.Run.sample` builds it.
Engine = Callable[[list[list[int]]], Batch | None]


def sampler_forwards(
    sequences: int, prompt_length: int, response_length: int
) -> list[tuple[int, int]]:
    """The forwards :func:`generate` runs for a batch of this shape, as ``(tokens fed, positions
    projected)``: the prompt pass (every position fed, the last one projected), then one decode
    step per response token but the last (it is never fed back)."""
    prompt = [(sequences * prompt_length, sequences)]
    return prompt + [(sequences, sequences)] * max(0, response_length - 1)


#: At most this many fp32 logits at once when an engine's tokens are scored (about 1 GiB).
ENGINE_LOGITS_ELEMENTS = 1 << 28


def _engine_error(engine: str, problem: str) -> PluginError:
    """One line naming the engine plugin and what is wrong with its answer."""
    return PluginError(f"alignbench_generate of {engine} {problem}")


def checked_responses(
    responses: Any,
    sequences: int,
    vocab_size: int,
    params: SamplingParams,
    eos: Sequence[int],
    engine: str,
) -> list[list[int]]:
    """An engine's response token lists, checked (else one line naming ``engine`` and the
    problem) and each cut after its first eos, as the built-in sampler ends a response."""
    if not isinstance(responses, list | tuple):
        raise _engine_error(
            engine,
            f"returned {type(responses).__name__}, not a list of token-id lists — return one "
            "list of ints per response (or None to use the built-in sampler)",
        )
    odd = next((i for i, r in enumerate(responses) if not isinstance(r, list | tuple)), None)
    if odd is not None:
        raise _engine_error(
            engine,
            f"returned {type(responses[odd]).__name__} as response #{odd}, not a list of ints — "
            "convert each response with list(...) / .tolist(); None works only for the whole "
            "call (the built-in sampler then answers every prompt)",
        )
    if len(responses) != sequences:
        raise _engine_error(
            engine,
            f"returned {len(responses)} responses for {sequences} — num_samples per prompt, "
            "prompt-major (vLLM: n=num_samples)",
        )
    stops = set(eos)
    out = []
    for i, response in enumerate(responses):
        if not response:
            raise _engine_error(engine, f"returned an empty response (#{i}) — at least one token")
        if len(response) > params.max_new_tokens:
            raise _engine_error(
                engine,
                f"returned {len(response)} tokens in response #{i}, over "
                f"max_new_tokens={params.max_new_tokens} (vLLM: max_tokens)",
            )
        bad = [t for t in response if isinstance(t, bool) or not isinstance(t, int | np.integer)]
        if bad:
            raise _engine_error(
                engine, f"returned {bad[0]!r} in response #{i} — token ids must be ints"
            )
        outside = [t for t in response if not 0 <= t < vocab_size]
        if outside:
            raise _engine_error(
                engine,
                f"returned token id {outside[0]} in response #{i}, outside the model's "
                f"vocabulary of {vocab_size} — is the engine serving another tokenizer?",
            )
        ends = [t for t, token in enumerate(response) if int(token) in stops]
        if ends and ends[0] < params.min_new_tokens:
            raise _engine_error(
                engine,
                f"ended response #{i} with eos id {response[ends[0]]} at token {ends[0] + 1}, "
                f"before min_new_tokens={params.min_new_tokens} (vLLM: min_tokens)",
            )
        if not ends and len(response) != params.max_new_tokens:
            # The built-in sampler stops only there: a shorter response without an eos would be
            # taken for one cut off by the limit (PPO's missing-eos penalty, truncated_share).
            raise _engine_error(
                engine,
                f"stopped response #{i} after {len(response)} tokens, without an eos id "
                f"{sorted(stops)} and before max_new_tokens={params.max_new_tokens} — stop only "
                "at an eos id (alignbench.eos_ids) or the limit (vLLM: no stop strings, check "
                "finish_reason and the context length)",
            )
        out.append([int(t) for t in (response[: ends[0] + 1] if ends else response)])
    return out


@torch.no_grad()
def engine_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[dict[str, Any]],
    prompt_ids: list[list[int]],
    responses: Any,
    num_samples: int,
    params: SamplingParams,
    source: str = "policy",
    engine: str = "an engine",
) -> Batch:
    """The Batch :func:`sample` returns, for response token ids an external engine generated
    (``num_samples`` per prompt, prompt-major): checked by :func:`checked_responses`, laid out
    and padded as the sampler does, and its log-probs computed by one forward of ``model`` (the
    sampler's: ``log_softmax`` of the unfiltered logits over temperature, eos banned before
    ``min_new_tokens``), whatever the engine's own numerics were."""
    rows = [p for p in prompt_ids for _ in range(num_samples)]
    vocab_size = int(model.config.vocab_size)
    eos = eos_ids(model, tokenizer)
    tokens = checked_responses(responses, len(rows), vocab_size, params, eos, engine)
    pad = tokenizer.pad_token_id
    ids, prompt_mask = pad_prompts(rows, pad)
    length = max(len(t) for t in tokens)
    r_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    r_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, response in enumerate(tokens):
        r_ids[i, : len(response)] = torch.tensor(response)
        r_mask[i, : len(response)] = 1
    device = model_device(model)
    ids, prompt_mask, r_ids, r_mask = (t.to(device) for t in (ids, prompt_mask, r_ids, r_mask))
    input_ids = torch.cat([ids, r_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, r_mask], dim=1)
    was_training = model.training
    model.eval()  # dropout off, as the sampler's
    banned = min(params.min_new_tokens, length)
    # Rows in chunks: the fp32 logits of a whole rollout are [N, R, V] (with a 150k vocabulary
    # and 128 x 256 tokens, 20 GB), while the built-in sampler only ever holds [N, V].
    rows_per_chunk = max(1, ENGINE_LOGITS_ELEMENTS // max(1, length * vocab_size))
    parts = []
    with torch.inference_mode():
        for start in range(0, len(rows), rows_per_chunk):
            part = slice(start, start + rows_per_chunk)
            logits = response_logits(
                model, input_ids[part], attention_mask[part], ids.shape[1]
            ).float()
            if banned and eos:
                logits[:, :banned, eos] = float("-inf")
            if not params.greedy and params.temperature != 1.0:
                logits = logits / params.temperature
            parts.append(torch.log_softmax(logits, -1).gather(-1, r_ids[part, :, None])[..., 0])
            del logits
        picked = torch.cat(parts).masked_fill(r_mask == 0, 0.0)
    model.train(was_training)
    return Batch(
        prompts=list(prompts),
        group_size=num_samples,
        input_ids=input_ids,
        attention_mask=attention_mask,
        prompt_length=ids.shape[1],
        response_mask=r_mask,
        responses=decode_responses(tokenizer, r_ids, r_mask),
        sources=[source] * len(rows),
        logprobs=picked.clone(),  # out of inference mode: a tensor a training forward can use
    )


@torch.no_grad()
def converse(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    prompts: list[dict[str, Any]],
    num_samples: int = 1,
    params: SamplingParams | None = None,
    generator: torch.Generator | None = None,
    source: str = "policy",
    user_seeds: list[int] | None = None,
) -> Batch:
    """``num_samples`` conversations per row of a multi-turn task, as a prompt-major Batch.

    Each conversation opens with ``row["prompt"]``; the model replies (sampled like
    :func:`sample`, all active conversations of a turn in one batch), then the task's
    :meth:`~alignbench.Task.user_reply` answers, until it ends the dialogue or
    ``task.max_turns`` replies. The tokens are kept as they were generated (never re-encoded
    from text), so a training forward sees exactly the sampled sequence. The simulated user of
    conversation i draws from ``numpy.random.default_rng(user_seeds[i])``: seeds from
    ``generator`` when not given (greedy evaluation passes them: the row's position).
    """
    params = params or SamplingParams()
    eos, pad = eos_ids(model, tokenizer), tokenizer.pad_token_id
    rows = [row for row in prompts for _ in range(num_samples)]
    n = len(rows)
    if user_seeds is None:
        user_seeds = (
            torch.randint(0, 2**62, (n,), generator=generator).tolist()
            if generator is not None
            else list(range(n))
        )
    rngs = [np.random.default_rng(seed) for seed in user_seeds]
    contexts = [list(ids) for ids in encode_prompts(tokenizer, [row["prompt"] for row in rows])]
    dialogues = [[{"role": "user", "content": row["prompt"]}] for row in rows]
    ids: list[list[int]] = [[] for _ in rows]
    masks: list[list[int]] = [[] for _ in rows]
    index: list[list[int]] = [[] for _ in rows]
    logprobs: list[list[float]] = [[] for _ in rows]
    active = list(range(n))
    for turn in range(task.max_turns):
        _, _, r_ids, r_mask, r_logprobs = generate(
            model, [contexts[i] for i in active], params, generator, eos, pad
        )
        for j, i in enumerate(active):
            keep = r_mask[j].bool()
            tokens = r_ids[j][keep].tolist()
            ids[i] += tokens
            masks[i] += [1] * len(tokens)
            index[i] += [turn] * len(tokens)
            logprobs[i] += r_logprobs[j][keep].tolist()
            contexts[i] += tokens
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            dialogues[i].append({"role": "assistant", "content": text})
        if turn == task.max_turns - 1:
            break
        still = []
        for i in active:
            reply = task.user_reply(rows[i], dialogues[i], rngs[i])
            if reply is None:
                continue
            tokens = encode_user_turn(tokenizer, reply)
            ids[i] += tokens
            masks[i] += [0] * len(tokens)
            index[i] += [-1] * len(tokens)
            logprobs[i] += [0.0] * len(tokens)
            contexts[i] += tokens
            dialogues[i].append({"role": "user", "content": reply})
            still.append(i)
        active = still
        if not active:
            break
    # The opening is the same for the K conversations of a row: collate encodes it once more.
    batch = collate(
        tokenizer,
        list(prompts),
        ids,
        num_samples,
        [source] * n,
        response_masks=masks,
        turn_index=index,
        dialogues=dialogues,
        logprobs=logprobs,
    )
    return batch.to(model_device(model))
