"""Moved to :mod:`alignbench.rm` (stage 2's package, whose door is :class:`RewardModel`); this
path keeps old imports working."""

from alignbench.rm.evaluation import (
    pair_accuracy,
    policy_ranking_accuracy,
    probe_groups,
    probe_metrics,
    probe_report,
    ranking_accuracy,
    reference_scores,
)
from alignbench.rm.feedback import FeedbackSource, Group, pairwise_agreement
from alignbench.rm.groups import (
    beam_responses,
    check_vocabulary,
    contrast_responses,
    generate_groups,
    group_batch,
    load_groups,
    ordered_pairs,
    save_groups,
)
from alignbench.rm.model import RewardModel
from alignbench.rm.selection import (
    _confidence,
    _embeddings,
    _k_center,
    collect_feedback,
    label_groups,
)
from alignbench.rm.stage import (
    ONLINE_ONLY_KEYS,
    RM_STAGE_VERSION,
    load_reward_model,
    new_reward_model,
    refresh_reward_model,
    request_feedback,
    reward_model_stage,
)
from alignbench.rm.training import (
    label_loss,
    retrain_reward_model,
    score_groups,
    sequence_rewards,
    train_reward_model,
)

_save_groups = save_groups  # the old private name

__all__ = [
    "ONLINE_ONLY_KEYS",
    "RM_STAGE_VERSION",
    "FeedbackSource",
    "Group",
    "RewardModel",
    "_confidence",
    "_embeddings",
    "_k_center",
    "_save_groups",
    "beam_responses",
    "check_vocabulary",
    "collect_feedback",
    "contrast_responses",
    "generate_groups",
    "group_batch",
    "label_groups",
    "label_loss",
    "load_groups",
    "load_reward_model",
    "new_reward_model",
    "ordered_pairs",
    "pair_accuracy",
    "pairwise_agreement",
    "policy_ranking_accuracy",
    "probe_groups",
    "probe_metrics",
    "probe_report",
    "ranking_accuracy",
    "reference_scores",
    "refresh_reward_model",
    "request_feedback",
    "retrain_reward_model",
    "reward_model_stage",
    "save_groups",
    "score_groups",
    "sequence_rewards",
    "train_reward_model",
]
