"""Errors a user can act on: each says what is wrong and how to fix it, in one line."""

from __future__ import annotations

from collections.abc import Iterable


class AlignbenchError(Exception):
    """Base class of every error alignbench reports to the user as one line."""


class ConfigError(AlignbenchError):
    """A config key is unknown, has the wrong type or an impossible value."""


class PluginError(AlignbenchError):
    """A plugin is broken or two plugins claim the same name or hook."""


class DataError(AlignbenchError):
    """A data file or dataset is missing, empty or malformed."""


class NonFiniteError(AlignbenchError):
    """A loss, gradient or reward became NaN or infinite; raised before the weights are touched."""


class Interrupted(AlignbenchError):
    """The job was stopped by a signal (after saving a checkpoint where it had one to save)."""

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum


class UnknownName(AlignbenchError):
    """A name that no plugin registered; the message lists the known ones."""

    kind = "name"

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(
            f"Unknown{self.kind.capitalize()}: {name!r} — known: {', '.join(self.known) or 'none'}"
        )


class UnknownAlgorithm(UnknownName):
    """``algo=<name>`` names no registered algorithm."""

    kind = "algorithm"


class UnknownReward(UnknownName):
    """``reward=<name>`` names no registered reward."""

    kind = "reward"


class UnknownTask(UnknownName):
    """``task=<name>`` names no registered task."""

    kind = "task"


class UnknownFeedback(UnknownName):
    """``feedback=<name>`` names no registered feedback source."""

    kind = "feedback"


UNKNOWN_BY_GROUP: dict[str, type[UnknownName]] = {
    "algo": UnknownAlgorithm,
    "reward": UnknownReward,
    "task": UnknownTask,
    "feedback": UnknownFeedback,
}
