"""Groups of K responses to one prompt: produced from a policy, batched, checked, saved and loaded.

A group holds policy samples (or beams) plus the declared non-policy responses that add contrast
(the prompt's human demonstration, the task's abstention phrase), each response's source, and
the gold utility where the task knows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignbench.batch import Batch, collate, encode_responses, prompt_text
from alignbench.config import Decoding, FeedbackConfig
from alignbench.errors import DataError
from alignbench.hardware import model_device
from alignbench.rm.feedback import Group
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def beam_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    k: int,
    max_new_tokens: int,
) -> list[list[str]]:
    """The K best beams for each row (beam search through ``generate``)."""
    batch = collate(tokenizer, rows, [[]] * len(rows), 1, ["prompt"] * len(rows))
    batch = batch.to(model_device(model))  # the stage's device (a no-op on the CPU)
    prompt_ids = batch.input_ids[:, : batch.prompt_length]
    mask = batch.attention_mask[:, : batch.prompt_length]
    # alignbench.sampling imports transformers' modelling code: only when beams are drawn.
    from alignbench.sampling import eos_ids

    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=mask,
        num_beams=k,
        num_return_sequences=k,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids(model, tokenizer),  # every end id a chat model lists
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = tokenizer.batch_decode(out[:, batch.prompt_length :], skip_special_tokens=True)
    return [[t.strip() for t in texts[i * k : (i + 1) * k]] for i in range(len(rows))]


def contrast_responses(task: Task, row: dict[str, Any], fb: FeedbackConfig) -> dict[str, str]:
    """The declared non-policy responses of a row's group: ``{source: text}``, at most K - 1.

    ``demonstration`` is the row's human demonstration (its ``response``, when non-empty);
    ``abstention`` is the task's abstention phrase (when it has one and the demonstration is not
    already that phrase). At least one policy response stays in every group.
    """
    extras: dict[str, str] = {}
    demonstration = str(row.get("response") or "").strip()
    if fb.include_demonstration and demonstration:
        extras["demonstration"] = demonstration
    if fb.include_abstention and task.abstention and demonstration != task.abstention:
        extras["abstention"] = task.abstention
    return dict(list(extras.items())[: max(0, fb.k - 1)])


def generate_groups(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    rows: list[dict[str, Any]],
    fb: FeedbackConfig,
    generator: torch.Generator,
) -> list[Group]:
    """K responses per row: policy samples (or beams), the last ones replaced by declared extras.

    Each group records where every response came from in ``extras["sources"]`` (``policy``,
    ``demonstration``, ``abstention``), so the contrast is reported, not hidden.
    """
    # The sampler imports transformers' modelling code (seconds): only when generating.
    from alignbench.sampling import SamplingParams, sample

    model.eval()
    if fb.decoding == Decoding.beam:
        texts = beam_responses(model, tokenizer, rows, fb.k, fb.sampling.max_new_tokens)
    else:
        params = SamplingParams.from_config(fb.sampling)
        sampled = sample(model, tokenizer, rows, fb.k, params, generator).responses
        texts = [sampled[i * fb.k : (i + 1) * fb.k] for i in range(len(rows))]
    groups = []
    for row, policy_texts in zip(rows, texts, strict=True):
        extras = contrast_responses(task, row, fb)
        kept = len(policy_texts) - len(extras)
        responses = list(policy_texts[:kept]) + list(extras.values())
        sources = ["policy"] * kept + list(extras)
        gold = [task.gold_utility(row, r) for r in responses]
        groups.append(
            Group(row, responses, None if None in gold else gold, extras={"sources": sources})
        )
    return groups


def ordered_pairs(values: list[float] | None) -> int:
    """How many pairs of a group ``values`` orders strictly (0 for an unlabelled group)."""
    if values is None:
        return 0
    return sum(a > b for a in values for b in values)


def group_batch(
    tokenizer: PreTrainedTokenizerBase, groups: list[Group]
) -> tuple[Batch, torch.Tensor]:
    """The groups as one Batch (padded to the largest K) and their preferences ``[B, K]``.

    Padding responses get a NaN preference, so they take part in no pair.
    """
    k = max(len(g.responses) for g in groups)
    responses, preference = [], torch.full((len(groups), k), float("nan"))
    for b, g in enumerate(groups):
        padded = g.responses + [""] * (k - len(g.responses))
        responses += padded
        if g.preference is not None:
            preference[b, : len(g.preference)] = torch.tensor(g.preference)
    ids = encode_responses(tokenizer, responses)
    batch = collate(tokenizer, [g.row for g in groups], ids, k, ["feedback"] * len(responses))
    return batch, preference


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, groups: list[Group]) -> None:
    """Refuse groups whose words the tokenizer cannot represent (they would silently become
    ``<unk>``: "Dakar" is not "dakar" to a case-sensitive word tokenizer), naming where they are
    (``file:line`` for a file source) and the words."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    for group in groups:
        unknown: list[str] = []
        # The prompt as a plain tokenizer reads it (a conversation with its role lines).
        for text in [prompt_text(group.row), *group.responses]:
            for word in text.split():
                if unk in tokenizer(word, add_special_tokens=False)["input_ids"]:
                    unknown.append(word)
        if unknown:
            where = group.extras.get("where", f"the group for {group.row['prompt']!r}")
            shown = ", ".join(repr(w) for w in dict.fromkeys(unknown))
            raise DataError(
                f"{where}: words the model's tokenizer does not know: {shown} — write them as the "
                "task does (its prompts and answers are lower case, e.g. 'i do not know')"
            )


def save_groups(path: Path, groups: list[Group]) -> None:
    """Write groups as JSON lines: ``row``, ``responses``, ``gold``, ``preference``, ``sources``."""
    with open(path, "w") as f:
        for g in groups:
            f.write(
                json.dumps(
                    {
                        "row": g.row,
                        "responses": g.responses,
                        "gold": g.gold,
                        "preference": g.preference,
                        "sources": g.extras.get("sources"),
                    }
                )
                + "\n"
            )


def load_groups(path: Path) -> list[Group]:
    """Groups saved by the stage (its held-out set, for measuring other scorers)."""
    groups = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        extras = {"sources": item["sources"]} if item.get("sources") else {}
        groups.append(
            Group(item["row"], item["responses"], item["gold"], item["preference"], extras)
        )
    return groups


def group_dict(group: Group) -> dict[str, Any]:
    """A group as JSON-ready fields, extras included (a checkpoint keeps where online groups came
    from); ``Group(**group_dict(g))`` gives it back."""
    return {
        "row": group.row,
        "responses": group.responses,
        "gold": group.gold,
        "preference": group.preference,
        "extras": group.extras,
    }
