"""alignbench: compare alignment algorithms fairly — same model, data, reward and compute budget.

The public API a plugin is written against: the hook markers and specs, the base classes of
configs, tasks and rewards, the :class:`Batch` and :class:`Run` it receives, stage 2's
:class:`RewardModel`, the shared math in :mod:`alignbench.ops`, and the model helpers in
:mod:`alignbench.models`.
"""

from typing import TYPE_CHECKING, Any

from alignbench import crowd, distributed, lean_forward, ops

# Helpers the built-in plugins use, public so that every plugin can use them the same way.
from alignbench.batch import (  # noqa: E402
    Batch,
    Turns,
    collate,
    demonstration_batch,
    encode_dialogue,
    encode_prompts,
    encode_responses,
    encode_user_turn,
    join,
    plain_prompt,
    prompt_messages,
    prompt_text,
    transcript,
)
from alignbench.config import (
    AlgorithmConfig,
    FeedbackConfig,
    RewardConfig,
    SamplingConfig,
    TaskConfig,
    to_object,  # noqa: E402
)
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
from alignbench.hardware import model_device
from alignbench.hookspecs import Register, hookimpl, hookspec
from alignbench.label.online import OnlineRequests
from alignbench.loop import PromptStream
from alignbench.lora import SharedBaseReference, apply_lora_to_scalar, is_lora
from alignbench.model_folders import (  # noqa: E402
    check_model_folder,
    load_scalar_model,
    same_vocabulary,
)
from alignbench.models import (  # noqa: E402
    ScalarHeadModel,
    load_pretrained,
    position_ids,
    response_logits,
    response_logprobs,
    response_values,
    token_logprobs,
)
from alignbench.provenance import input_path  # noqa: E402
from alignbench.reward import PrepareContext, Reward, turn_rewards
from alignbench.rm import (
    FeedbackSource,
    Group,
    RewardModel,
    load_groups,
    ranking_to_preference,
    refresh_reward_model,
    request_feedback,
    retrain_reward_model,
    sequence_rewards,
)
from alignbench.run import Run
from alignbench.task import ABSTAIN, CORRECT, WRONG, Task, normalize_answer

if TYPE_CHECKING:
    from alignbench.sampling import SamplingParams, eos_ids

__version__ = "0.1.0"

# Public names imported on first use (PEP 562): alignbench.sampling imports transformers'
# modelling code, seconds of CPU that `import alignbench` (compare, label, a plugin that does
# not sample) should not pay.
_LAZY = {"SamplingParams": "alignbench.sampling", "eos_ids": "alignbench.sampling"}


def __getattr__(name: str) -> Any:
    """Import a lazily exported public name (see ``_LAZY``) on first access."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups find it without coming here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the lazily exported ones included."""
    return sorted({*globals(), *__all__})


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
    "OnlineRequests",
    "PluginError",
    "PrepareContext",
    "PromptStream",
    "Register",
    "Reward",
    "RewardConfig",
    "RewardModel",
    "Run",
    "SamplingConfig",
    "SamplingParams",
    "eos_ids",
    "SharedBaseReference",
    "Task",
    "TaskConfig",
    "Turns",
    "UnknownAlgorithm",
    "UnknownFeedback",
    "UnknownReward",
    "UnknownTask",
    "hookimpl",
    "hookspec",
    "crowd",
    "distributed",
    "lean_forward",
    "ops",
    "ScalarHeadModel",
    "collate",
    "demonstration_batch",
    "encode_dialogue",
    "encode_prompts",
    "encode_responses",
    "encode_user_turn",
    "join",
    "plain_prompt",
    "prompt_messages",
    "prompt_text",
    "transcript",
    "turn_rewards",
    "input_path",
    "check_model_folder",
    "load_scalar_model",
    "same_vocabulary",
    "apply_lora_to_scalar",
    "is_lora",
    "load_groups",
    "load_pretrained",
    "model_device",
    "normalize_answer",
    "position_ids",
    "ranking_to_preference",
    "refresh_reward_model",
    "request_feedback",
    "retrain_reward_model",
    "response_logits",
    "response_logprobs",
    "response_values",
    "sequence_rewards",
    "to_object",
    "token_logprobs",
]
