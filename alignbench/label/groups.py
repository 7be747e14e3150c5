"""Groups to label: one prompt and its K responses, read from a groups file or a results folder.

A groups file is JSONL, one group per line::

    {"id": "g1", "prompt": "what is the colour of zorbia ?", "responses": ["red", "i do not know"]}

``id`` (optional; a hash of prompt and responses when absent), ``sources`` (optional: where each
response came from), ``row`` (optional: the task row) and, in a run's online requests file
(:mod:`alignbench.label.online`), ``requested_at`` and ``due`` (steps) are kept; other keys are
ignored. The
reward-model stage's own saved groups (``train.jsonl`` / ``heldout.jsonl``, whose prompt sits in
``row``) and a rankings file (its ``ranking`` ignored) are groups files too, so anything alignbench
wrote can be labelled again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignbench.errors import DataError


@dataclass
class LabelGroup:
    """One prompt and its K responses, as shown on the ranking page."""

    id: str
    prompt: str
    responses: list[str]
    sources: list[str] | None = None
    row: dict[str, Any] = field(default_factory=dict)
    #: An online round's group: the step that requested it and the step its label is due.
    requested_at: int | None = None
    due: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The group as one line of a groups file."""
        out: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "responses": self.responses}
        if self.sources:
            out["sources"] = self.sources
        if self.row:
            out["row"] = self.row
        if self.requested_at is not None:
            out["requested_at"] = self.requested_at
        if self.due is not None:
            out["due"] = self.due
        return out


def group_id(prompt: str, responses: list[str]) -> str:
    """A stable id for a group without one: a hash of its prompt and responses, in order."""
    blob = json.dumps([prompt, responses], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_group(item: Any, where: str) -> LabelGroup:
    """One group from a decoded JSON line (``where`` = ``file:line``, named in every error)."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object with 'prompt' and 'responses'")
    row = item.get("row") if isinstance(item.get("row"), dict) else {}
    prompt = item.get("prompt", row.get("prompt"))
    responses = item.get("responses")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: 'prompt' must be a non-empty string")
    if (
        not isinstance(responses, list)
        or len(responses) < 2
        or not all(isinstance(r, str) for r in responses)
    ):
        raise DataError(f"{where}: 'responses' must be a list of at least 2 strings")
    if len(responses) > 9:
        # Keys 1..9 pick responses on the page; more would need two keystrokes per pick.
        raise DataError(f"{where}: {len(responses)} responses — the page ranks at most 9")
    gid = item.get("id", item.get("group_id"))
    if gid is not None and (not isinstance(gid, str | int) or isinstance(gid, bool)):
        raise DataError(f"{where}: 'id' must be a string or a whole number")
    sources = item.get("sources")
    if sources is not None and (not isinstance(sources, list) or len(sources) != len(responses)):
        raise DataError(f"{where}: 'sources' must name the source of every response")
    steps = {key: item.get(key) for key in ("requested_at", "due")}
    for key, value in steps.items():
        if value is not None and (type(value) is not int or value < 0):
            raise DataError(f"{where}: '{key}' must be a step (a whole number >= 0)")
    return LabelGroup(
        id=str(gid) if gid is not None else group_id(prompt, responses),
        prompt=prompt,
        responses=list(responses),
        sources=sources,
        row=dict(row),
        requested_at=steps["requested_at"],
        due=steps["due"],
    )


def read_groups(path: Path) -> list[LabelGroup]:
    """Every group of a groups file, validated first; a bad line is one error naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such groups file — give a JSONL file, a job or a sweep folder")
    groups: dict[str, LabelGroup] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: not UTF-8 text — save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg}) — fix the line") from None
        group = parse_group(item, where)
        if group.id in groups:
            same = groups[group.id]
            if (same.prompt, same.responses) == (group.prompt, group.responses):
                continue  # the same group twice (a prompt sampled twice): shown once
            raise DataError(
                f"{where}: id {group.id!r} is already used by line {first_line[group.id]} — "
                "give every group its own id"
            )
        first_line[group.id] = number
        groups[group.id] = group
    if not groups:
        raise DataError(f"{path}: no groups in the file — it is empty")
    return list(groups.values())


def write_groups(path: Path, groups: list[LabelGroup]) -> None:
    """Write a groups file atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for group in groups:
            handle.write(json.dumps(group.to_json(), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# -- groups from results folders ---------------------------------------------------------------


def _job_folders(folder: Path) -> list[Path]:
    """The job folders at or under ``folder`` (a job folder holds a summary.json)."""
    if (folder / "summary.json").is_file():
        return [folder]
    return sorted(p.parent for p in folder.glob("*/summary.json"))


def _rm_stage_folder(job: Path) -> Path | None:
    """The stage-2 cache folder a job trained or reused, or None (no reward model)."""
    try:
        summary = json.loads((job / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    key = (summary.get("stage/rm") or {}).get("key")
    if not key:
        return None
    cache_dir = "results/cache"
    config = job / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        cache_dir = str(OmegaConf.load(config).get("cache_dir", cache_dir))
    folder = Path(cache_dir) / "rm" / key
    return folder if folder.is_dir() else None


def groups_from_folder(folder: Path) -> list[LabelGroup]:
    """The groups a reward-model stage sampled: of a stage-2 cache folder, a job, or a sweep.

    Each stage folder's ``train.jsonl`` and ``heldout.jsonl`` (their simulated labels are left
    behind: the person ranks afresh); a stage shared by several jobs is read once.
    """
    if (folder / "train.jsonl").is_file():
        stages = [folder]
    else:
        found = [_rm_stage_folder(job) for job in _job_folders(folder)]
        stages = list(dict.fromkeys(f for f in found if f is not None))
    if not stages:
        raise DataError(
            f"{folder}: no reward-model stage found (no job here ran with reward=rm, or its cache "
            "folder is gone) — sample groups instead: python -m alignbench.label export-groups "
            "--sample --out groups.jsonl"
        )
    groups: dict[str, LabelGroup] = {}
    for stage in stages:
        for name in ("train.jsonl", "heldout.jsonl"):
            path = stage / name
            if path.is_file():
                for group in read_groups(path):
                    groups.setdefault(group.id, group)
    return list(groups.values())


def load_label_groups(source: Path) -> list[LabelGroup]:
    """Groups from a groups file, or from the reward-model stages of a results folder."""
    if source.is_dir():
        return groups_from_folder(source)
    return read_groups(source)


def sample_groups(overrides: list[str], count: int | None = None) -> list[LabelGroup]:
    """Fresh groups from the task's RL prompts, sampled from the (cached) stage-1 SFT model.

    The job config is composed from ``overrides`` like ``python -m alignbench`` does; K, decoding
    and the declared contrast sources come from ``feedback.*``, the number of groups from
    ``count`` (default ``feedback.labels``).
    """
    import hydra
    import numpy as np
    import torch

    from alignbench.config import CONF_PACKAGE, to_object
    from alignbench.models import load_pretrained
    from alignbench.registry import build_registry
    from alignbench.reward_model import generate_groups
    from alignbench.stages import sft_stage

    registry = build_registry()
    with hydra.initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = hydra.compose(config_name="config", overrides=overrides)
    task = registry.get("task", cfg.task.name).cls(to_object(cfg.task))
    fb = to_object(cfg.feedback)
    sft_path, _ = sft_stage(cfg, task)
    policy, tokenizer = load_pretrained(sft_path)
    prompts = task.splits["rl"].to_list()
    rng = np.random.default_rng(fb.seed)
    rows = [prompts[i] for i in rng.permutation(len(prompts))[: count or fb.labels]]
    generator = torch.Generator().manual_seed(fb.seed)
    sampled = generate_groups(policy, tokenizer, task, rows, fb, generator)
    return [
        LabelGroup(
            id=group_id(g.row["prompt"], g.responses),
            prompt=g.row["prompt"],
            responses=g.responses,
            sources=g.extras.get("sources"),
            row=g.row,
        )
        for g in sampled
    ]
