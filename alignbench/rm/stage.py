"""Stage 2, cached like stage 1: ranked groups from the SFT model and the reward model fit to them;
and online feedback, the same collection from the current policy during RL.

Groups of K responses are produced from a policy (sampling or beam search), a selection strategy
decides which are worth labelling under the label budget, a feedback source ranks them, and a
scalar-head model learns to respect the rankings with ``ops.ranking_rm_loss`` over every
ordered pair of each group. Declared sources add contrast to a group (the prompt's human
demonstration, the task's abstention phrase). A share of the groups is held out: the best epoch
on their labels is kept (early stopping), and pairwise accuracy is reported against the labels
(noisy) and the task's gold utility (the truth). The probe scores the model on held-out
questions beside reference scorers (always abstain, random, the gold utility itself).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from alignbench import provenance
from alignbench.budget import FlopCounter
from alignbench.cache import cached_stage, config_hash
from alignbench.config import (
    FeedbackConfig,
    RMStageConfig,
    Selection,
    omit_off_switches,
    to_object,
)
from alignbench.hardware import autocast, model_device, stage_hardware, stage_key, stage_record
from alignbench.lora import apply_lora_to_scalar, make_trainable, merge_adapters
from alignbench.models import ScalarHeadModel, build_model, freeze, load_pretrained, random_like
from alignbench.rm.evaluation import probe_report, ranking_accuracy
from alignbench.rm.feedback import FeedbackSource, Group
from alignbench.rm.groups import load_groups, ordered_pairs, save_groups
from alignbench.rm.selection import (
    choose_groups,
    collect_feedback,
)
from alignbench.rm.training import retrain_reward_model, score_groups, train_reward_model
from alignbench.task import Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from alignbench.reward import PrepareContext

#: Bump when this stage's code changes what it produces.
RM_STAGE_VERSION = 3
#: Feedback keys that only matter during RL (online rounds), left out of the stage's key.
ONLINE_ONLY_KEYS = ("rounds", "delay")


def new_reward_model(
    sft_path: Path, cfg: DictConfig, tokenizer: PreTrainedTokenizerBase
) -> ScalarHeadModel:
    """An untrained reward model: the SFT trunk (``stage.rm.init=sft``) or a fresh one (scratch);
    with ``model.lora.targets`` naming ``reward_model``, LoRA adapters on that trunk train instead
    of it (and the whole head)."""
    torch.manual_seed(cfg.stage.rm.seed)
    if cfg.stage.rm.init == "scratch":
        if cfg.model.name_or_path:  # the same architecture as the SFT model, fresh weights
            model = ScalarHeadModel(random_like(sft_path))
        else:
            model = ScalarHeadModel(build_model(to_object(cfg.model), tokenizer))
    else:
        model = ScalarHeadModel(load_pretrained(sft_path)[0])
    return apply_lora_to_scalar(model, cfg.model.lora, "reward_model")


def lora_key(cfg: DictConfig) -> list[dict[str, Any]]:
    """The LoRA settings that shape the reward model, as extra parts of the stage's key: none when
    it trains whole (so the key of a full fine-tuned reward model is what it always was)."""
    lora = cfg.model.lora
    if not lora.r or "reward_model" not in lora.targets:
        return []
    settings = OmegaConf.to_container(lora, resolve=True)
    return [{"lora": {k: settings[k] for k in ("r", "alpha", "dropout", "target_modules")}}]


def flops_key(feedback: dict[str, Any]) -> list[dict[str, str]]:
    """Extra parts of the stage's key for a stage whose recorded FLOPs grew when what it runs
    was first charged in full: diversity selection's embeddings (none for other selections, so
    their keys are what they always were)."""
    if feedback.get("selection") == Selection.diversity.value:
        return [{"flops": "selection_charged"}]
    return []


def load_reward_model(path: Path, sft_path: Path) -> ScalarHeadModel:
    """A frozen trained reward model from the stage's cache folder."""
    model = ScalarHeadModel(load_pretrained(sft_path)[0])
    model.load_state_dict(load_file(path / "model.safetensors"))
    return freeze(model)


def reward_model_stage(
    cfg: DictConfig,
    task: Task,
    source: FeedbackSource,
    sft_path: Path,
    sft_key: str,
    device: torch.device | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The folder of the stage-2 reward model, trained unless the cache already holds it.

    Groups are generated, the reward model trained and measured on ``device`` (the job's; else
    ``cfg.device``'s) in ``cfg.precision``; it is cached as fp32 on the CPU."""
    device, precision = stage_hardware(cfg, device)
    # The SFT model's weights (as verified by stage 1), the plugins' sources and the contents of
    # their input files (a rankings file) are keyed, not only their names.
    sft_files = json.loads((sft_path / "stage.json").read_text())["provenance"]["files"]
    plugins = {"task": task, "feedback": source}
    # Online-round keys (rounds, delay) change RL, not this stage: a sweep over them shares one
    # reward model.
    feedback = OmegaConf.to_container(cfg.feedback, resolve=True, enum_to_str=True)
    # The sampler's default draw is left out, as in fingerprints: keys made before it existed hold.
    feedback = omit_off_switches({"feedback": feedback})["feedback"]
    online_only = (*ONLINE_ONLY_KEYS, *source.online_keys)
    key = config_hash(
        sft_key,
        {k: v for k, v in feedback.items() if k not in online_only},
        cfg.stage.rm,
        RM_STAGE_VERSION,
        sft_files,
        provenance.key_parts(plugins),
        provenance.STAGE_THREADS,
        # A reward model trained as adapters is another model: never the full one's cache.
        *lora_key(cfg),
        *flops_key(feedback),
        # So is one built on a GPU or in bf16/fp16 (nothing added on the CPU in fp32).
        *stage_key(device, precision),
    )

    def build(folder: Path) -> dict[str, Any]:
        fb, rm_cfg = to_object(cfg.feedback), to_object(cfg.stage.rm)
        policy, tokenizer = load_pretrained(sft_path)
        policy.to(device)
        flops = FlopCounter()
        flops.track(policy, "sampler")
        rng = np.random.default_rng(fb.seed)
        generator = torch.Generator().manual_seed(fb.seed)

        def make_model() -> ScalarHeadModel:
            # Initialised on the CPU (the same weights on every device), trained on the device.
            return new_reward_model(sft_path, cfg, tokenizer).to(device)

        # Sampling, and choosing what to label (an uncertainty probe trains under it), in the
        # job's precision; the selection's passes are charged to the stage's FLOPs.
        with autocast(device, precision):
            groups = collect_feedback(
                policy, tokenizer, task, source, fb, rm_cfg, make_model, rng, generator, flops
            )
        order = rng.permutation(len(groups))
        held = max(1, round(len(groups) * rm_cfg.heldout_share)) if len(groups) > 1 else 0
        heldout = [groups[i] for i in order[:held]]
        train = [groups[i] for i in order[held:]]
        model = flops.track(make_model(), "reward_model")
        stats = train_reward_model(
            model, tokenizer, train, rm_cfg, heldout=heldout, precision=precision
        )
        accuracy = ranking_accuracy(score_groups(model, tokenizer, heldout, precision), heldout)
        golden = [g for g in groups if g.gold is not None]
        label_accuracy = ranking_accuracy([g.preference for g in golden], golden)
        probe = probe_report(
            model, tokenizer, task, exclude={g.row["prompt"] for g in groups}, precision=precision
        )
        flops.close()
        # Measured with the adapters as trained; cached folded into the trunk (equal within
        # rounding), so RL's frozen reward is a plain model that every loader reads.
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lora = {"lora_trainable_parameters": trainable} if lora_key(cfg) else {}
        merge_adapters(model)
        # fp32 master weights, saved from the CPU: the cache entry loads on any machine.
        model.to("cpu")
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            folder / "model.safetensors",
        )
        save_groups(folder / "heldout.jsonl", heldout)
        save_groups(folder / "train.jsonl", train)
        return {
            "groups": len(groups),
            "train_groups": len(train),
            "heldout_groups": len(heldout),
            "flops": flops.total,
            "heldout_accuracy_labels": accuracy.get("accuracy_labels"),
            "heldout_accuracy_gold": accuracy.get("accuracy_gold"),
            # How good the labels themselves are, over all groups (what a reward model learns from).
            "labels_accuracy_gold": label_accuracy.get("accuracy_gold"),
            # Contrast: which declared sources entered the groups, and how many pairs they order.
            **{
                f"groups_with_{name}": sum(name in g.extras.get("sources", []) for g in groups)
                for name in ("demonstration", "abstention")
            },
            "ordered_gold_pairs": sum(ordered_pairs(g.gold) for g in groups),
            "ordered_label_pairs": sum(ordered_pairs(g.preference) for g in groups),
            **source.statistics(),
            **probe,
            **stats,
            **lora,
            **stage_record(device, precision),
        }

    return cached_stage(
        cfg.cache_dir,
        "rm",
        key,
        build,
        sources=provenance.RM_SOURCES,
        plugins=plugins,
        rebuild=cfg.cache_rebuild,
    )


def context_stage(context: PrepareContext) -> tuple[Path, dict[str, Any], FeedbackSource]:
    """Stage 2 of a job (its folder, its ``stage/rm`` record, and the ``feedback=`` source it was
    built from), from what a reward's ``prepare`` receives."""
    source = context.feedback()
    folder, info = reward_model_stage(
        context.cfg, context.task, source, context.sft_path, context.sft_key, context.device
    )
    return folder, info, source


def stage_groups(context: PrepareContext, split: str) -> tuple[list[Group], dict[str, Any]]:
    """Stage 2's ranked groups of ``split`` (``train`` or ``heldout``), built (and cached) on
    demand, and the stage's ``stage/rm`` record."""
    folder, info, _ = context_stage(context)
    return load_groups(folder / f"{split}.jsonl"), info


# -- online feedback -----------------------------------------------------------------------------


def request_feedback(
    model: ScalarHeadModel,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    source: FeedbackSource,
    fb: FeedbackConfig,
    rm_cfg: RMStageConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    flops: FlopCounter | None = None,
) -> list[Group]:
    """Online feedback: fresh groups from the current policy, ranked by the source (not yet
    trained on: with ``feedback.delay`` they arrive later); a deferred source's groups are
    chosen unlabelled (it labels them later: :meth:`FeedbackSource.collect`). The selection's
    passes on its copy of ``model`` (uncertainty's probe, diversity's embeddings) are charged
    to ``flops`` (the job's counter) as ``reward_model``."""

    def make_model() -> ScalarHeadModel:
        # Uncertainty selection trains this copy as a probe: the job's reward model is frozen
        # between rounds, so its copy must be made trainable again (as a round would train it:
        # adapters and head when it has online adapters).
        return make_trainable(copy.deepcopy(model))

    # Fresh groups of the current policy, always: a source's own groups (a file's) were stage
    # 2's, held-out ones included, and a source that cannot rank new ones says so (rank).
    ranker = None if source.deferred else source
    return choose_groups(
        policy, tokenizer, task, ranker, fb, rm_cfg, make_model, rng, generator, flops
    )


def refresh_reward_model(
    model: ScalarHeadModel,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    source: FeedbackSource,
    fb: FeedbackConfig,
    rm_cfg: RMStageConfig,
    groups: list[Group],
    rng: np.random.Generator,
    generator: torch.Generator,
    precision: str = "fp32",
    flops: FlopCounter | None = None,
) -> dict[str, float]:
    """Online feedback: rank fresh groups from the current policy; train on all groups so far
    (sampling on the policy's device, training on the reward model's, both in ``precision``;
    the selection's passes charged to ``flops``: :func:`request_feedback`)."""
    with autocast(model_device(policy), precision):
        fresh = request_feedback(
            model, policy, tokenizer, task, source, fb, rm_cfg, rng, generator, flops
        )
    groups.extend(fresh)
    return retrain_reward_model(model, tokenizer, groups, rm_cfg, precision)
