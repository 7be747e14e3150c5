"""alignbench: compare alignment algorithms fairly — same model, data, reward and compute budget.

The public API a plugin is written against: the hook markers and specs, the base classes of
configs, tasks and rewards, the :class:`Batch` and :class:`Run` it receives, the shared math in
:mod:`alignbench.ops`, and the model helpers in :mod:`alignbench.models`.
"""

from alignbench import ops
from alignbench.batch import Batch
from alignbench.config import AlgorithmConfig, FeedbackConfig, RewardConfig, TaskConfig
from alignbench.errors import (
    AlignbenchError,
    ConfigError,
    DataError,
    Interrupted,
    NonFiniteError,
    PluginError,
    UnknownAlgorithm,
    UnknownFeedback,
    UnknownReward,
    UnknownTask,
)
from alignbench.feedback import FeedbackSource, Group
from alignbench.hookspecs import Register, hookimpl, hookspec
from alignbench.loop import PromptStream
from alignbench.reward import Reward
from alignbench.run import Run
from alignbench.sampling import SamplingParams
from alignbench.task import ABSTAIN, CORRECT, WRONG, Task

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "CORRECT",
    "WRONG",
    "AlgorithmConfig",
    "AlignbenchError",
    "Batch",
    "ConfigError",
    "DataError",
    "FeedbackConfig",
    "FeedbackSource",
    "Group",
    "Interrupted",
    "NonFiniteError",
    "PluginError",
    "PromptStream",
    "Register",
    "Reward",
    "RewardConfig",
    "Run",
    "SamplingParams",
    "Task",
    "TaskConfig",
    "UnknownAlgorithm",
    "UnknownFeedback",
    "UnknownReward",
    "UnknownTask",
    "hookimpl",
    "hookspec",
    "ops",
]
