"""Stage 2: the reward model, trained from ranked feedback; its door is :class:`RewardModel`.

- :mod:`~alignbench.rm.feedback`: groups of K responses and the sources that rank them;
- :mod:`~alignbench.rm.groups`: producing groups from a policy, batching, saving, loading them;
- :mod:`~alignbench.rm.selection`: which groups to label under the budget, and collecting them;
- :mod:`~alignbench.rm.training`: the pairwise Bradley-Terry fit and scoring with it;
- :mod:`~alignbench.rm.evaluation`: ranking accuracy, the probe, the policy read as a scorer;
- :mod:`~alignbench.rm.stage`: the cached stage and online feedback rounds;
- :mod:`~alignbench.rm.model`: :class:`RewardModel`, what a learned reward is written against.
"""

from alignbench.rm.feedback import FeedbackSource, Group, pairwise_agreement, ranking_to_preference
from alignbench.rm.groups import load_groups
from alignbench.rm.model import RewardModel
from alignbench.rm.stage import refresh_reward_model, request_feedback, reward_model_stage
from alignbench.rm.training import retrain_reward_model, sequence_rewards, train_reward_model

__all__ = [
    "FeedbackSource",
    "Group",
    "RewardModel",
    "load_groups",
    "pairwise_agreement",
    "ranking_to_preference",
    "refresh_reward_model",
    "request_feedback",
    "retrain_reward_model",
    "reward_model_stage",
    "sequence_rewards",
    "train_reward_model",
]
