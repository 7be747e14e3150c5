"""Moved to :mod:`alignbench.rm.feedback` (stage 2's package); this path keeps old imports."""

from alignbench.rm.feedback import FeedbackSource, Group, pairwise_agreement, ranking_to_preference

__all__ = ["FeedbackSource", "Group", "pairwise_agreement", "ranking_to_preference"]
