"""Human feedback: groups of K responses to one prompt, and the sources that rank them.

A feedback source (a plugin registered with ``alignbench_register_feedback``) receives groups of
K responses and returns, for each, a preference vector (higher = better) or None when the group
came back unlabelled. A source that brings its own groups (a file of human rankings) provides
them through :meth:`FeedbackSource.load_groups` and nothing is sampled.

A *deferred* source (``deferred = True``: a person on the ranking page) cannot rank online groups
the moment they are sampled. For online rounds the reward model then chooses the groups without
labels, hands them over with :meth:`FeedbackSource.submit` at the step that requests them, and
asks :meth:`FeedbackSource.collect` for their labels at the step they are due
(``feedback.delay`` later); :meth:`FeedbackSource.open` tells it the job's folder first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
    """Ranks groups of responses. Subclasses implement :meth:`rank` (or :meth:`load_groups`);
    a deferred source implements :meth:`submit` and :meth:`collect` for online rounds."""

    #: True for a source whose labels of online groups come from outside the run, later: online
    #: rounds then :meth:`submit` groups and :meth:`collect` their labels at the due step,
    #: instead of calling :meth:`rank`.
    deferred: ClassVar[bool] = False
    #: Config keys that matter only to online rounds: left out of stage 2's cache key (like
    #: ``feedback.rounds`` and ``feedback.delay``), so changing them reuses the reward model.
    online_keys: ClassVar[tuple[str, ...]] = ()
    #: True for a source that ranks by the task's gold utility (simulated annotators): a job
    #: whose RL prompts lack gold answers (:meth:`Task.missing_gold`) is refused before stage 1.
    needs_gold: ClassVar[bool] = False

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

    # -- deferred sources (online rounds answered later, from outside the run) --------------------

    def open(self, folder: Path) -> None:
        """Called once the job's folder exists, before any online round (a deferred source
        exchanges groups and labels there); nothing by default."""

    def submit(self, groups: list[Group], step: int, due: int) -> None:
        """Online round at ``step``: ask for labels of ``groups`` (unlabelled), due at step
        ``due``. Called only on a deferred source; a resumed run may submit a group again."""
        raise NotImplementedError

    def collect(self, groups: list[Group], step: int) -> list[list[float] | None]:
        """At ``step`` (their due step): one preference vector per submitted group, in order, or
        None for a group left unlabelled (dropped). Called only on a deferred source."""
        raise NotImplementedError


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
