"""Human feedback: groups of K responses to one prompt, and the sources that rank them.

A feedback source (a plugin registered with ``alignbench_register_feedback``) receives groups of
K responses and returns, for each, a preference vector (higher = better) or None when the group
came back unlabelled. A source that brings its own groups (a file of human rankings) provides
them through :meth:`FeedbackSource.load_groups` and nothing is sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alignbench.config import FeedbackConfig
from alignbench.task import Task


@dataclass
class Group:
    """K responses to one prompt, their gold utilities (if the task knows them) and the label."""

    row: dict[str, Any]
    responses: list[str]
    gold: list[float] | None = None
    preference: list[float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class FeedbackSource:
    """Ranks groups of responses. Subclasses implement :meth:`rank` (or :meth:`load_groups`)."""

    def __init__(self, config: FeedbackConfig, task: Task) -> None:
        self.config = config
        self.task = task

    def load_groups(self) -> list[Group] | None:
        """Groups this source brings itself (already labelled), or None to have groups sampled."""
        return None

    def rank(self, groups: list[Group], rng: np.random.Generator) -> list[list[float] | None]:
        """One preference vector per group (higher = better), or None for an unlabelled group."""
        raise NotImplementedError

    def statistics(self) -> dict[str, float]:
        """What the source reports about the labels it gave (e.g. a crowd's agreement)."""
        return {}


def ranking_to_preference(ranking: list[int]) -> list[float]:
    """From indices best-first (``[2, 0, 1]``) to a preference per response (``[1, 0, 2]``)."""
    k = len(ranking)
    preference = [0.0] * k
    for position, index in enumerate(ranking):
        preference[index] = float(k - 1 - position)
    return preference


def pairwise_agreement(preferences: list[list[float]], references: list[list[float]]) -> float:
    """Share of pairs strictly ordered by ``references`` that ``preferences`` order the same way.

    Pairs tied in the preference count as half right (a coin flip). NaN when no pair is ordered.
    """
    right, total = 0.0, 0
    for pref, ref in zip(preferences, references, strict=True):
        for i in range(len(ref)):
            for j in range(len(ref)):
                if ref[i] > ref[j]:
                    total += 1
                    right += 1.0 if pref[i] > pref[j] else 0.5 if pref[i] == pref[j] else 0.0
    return right / total if total else float("nan")
