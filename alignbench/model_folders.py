"""A critic or reward model loaded from its own folder (``reward.path``, ``algo.critic_path``).

A config field marks itself as such a folder with ``field(metadata={"model_folder": role})``
(role ``reward`` or ``critic``), so the checks, the loader and the job's fingerprint find every
one without naming the keys; a field that names any other file or folder a job reads (the base
model, the data) marks itself ``metadata={"input": True}``, and its contents enter the
fingerprint too (:func:`folder_fingerprints`). Three formats are read, always from a local
folder (never the hub):

* ``sequence_classification``: a Hugging Face ``AutoModelForSequenceClassification`` of a
  decoder architecture with ``num_labels=1`` (the common format of published reward models);
  its trunk and its ``score`` head become a :class:`ScalarHeadModel` that scores every position.
* ``scalar_head``: alignbench's own (:func:`save_scalar_model`, ``RewardModel.export``): the
  trunk's causal-LM ``config.json``, the tokenizer and :data:`SCALAR_WEIGHTS` (the state dict of
  a :class:`ScalarHeadModel`, head bias included).
* ``causal_lm``: a plain causal LM, for a critic only: its trunk with a fresh zero head (like
  ``algo.critic_init=sft``); a reward model needs a trained head.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from alignbench import provenance
from alignbench.errors import ConfigError
from alignbench.models import ScalarHeadModel, build_tokenizer

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from alignbench.task import Task

#: The weights file of alignbench's scalar-head format (keys ``trunk.*``, ``head.weight``,
#: ``head.bias``), beside the trunk's ``config.json`` and the tokenizer.
SCALAR_WEIGHTS = "scalar_head_model.safetensors"
#: Where to get a folder, for the one-line errors.
_GET_ONE = (
    "give a local folder saved with save_pretrained (download a hub model once: `hf download "
    "<id> --local-dir models/<name>`)"
)


def _refusal(key: str, path: str | Path, why: str, fix: str) -> ConfigError:
    """The one line for a model folder that cannot be used: the key, the problem, the fix."""
    return ConfigError(f"{key}={str(path)!r}: {why} — {fix}")


def folder_config(path: str | Path, key: str) -> PretrainedConfig:
    """The folder's ``config.json`` as a transformers config (a decoder architecture), or one line
    naming ``key``: not a folder, no config.json, unreadable, or an encoder / encoder-decoder."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(path)
    if not folder.is_dir():
        raise _refusal(key, path, "not a local folder (nothing is downloaded)", _GET_ONE)
    if not (folder / "config.json").is_file():
        raise _refusal(
            key,
            path,
            "no config.json in the folder",
            "save the model with save_pretrained (a stage-2 cache folder is not self-contained: "
            "write one with RewardModel.export)",
        )
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _refusal(key, path, str(exc).splitlines()[0], _GET_ONE) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(
        config, "is_encoder_decoder", False
    ):
        raise _refusal(
            key,
            path,
            f"model_type {config.model_type!r} is not a decoder (causal LM) architecture",
            "use a decoder model (Llama, Qwen2, GPT-2, …); encoders are not supported",
        )
    return config


def folder_format(path: str | Path, key: str) -> str:
    """``sequence_classification``, ``scalar_head`` or ``causal_lm``, from the folder's files
    (no weights read); one line for a sequence classifier without exactly one label."""
    config = folder_config(path, key)
    if (Path(path) / SCALAR_WEIGHTS).is_file():
        return "scalar_head"
    if any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        if config.num_labels != 1:
            raise _refusal(
                key,
                path,
                f"a sequence classifier with {config.num_labels} labels, a score needs one",
                "use a reward model saved with num_labels=1",
            )
        return "sequence_classification"
    return "causal_lm"


@functools.lru_cache(maxsize=16)
def _cached_tokenizer(path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def folder_tokenizer(path: str | Path, key: str) -> PreTrainedTokenizerBase:
    """The folder's own tokenizer, or one line naming ``key`` (a critic or reward model is read
    with its tokenizer: it decides how the policy's text is scored)."""
    try:
        return _cached_tokenizer(str(Path(path).resolve()))
    except (OSError, ValueError, TypeError) as exc:
        raise _refusal(
            key,
            path,
            f"no usable tokenizer ({str(exc).splitlines()[0]})",
            "save the model's tokenizer into the folder too (tokenizer.save_pretrained)",
        ) from None


def check_model_folder(path: str | Path, key: str, role: str) -> str:
    """Refuse, in one line naming ``key``, a folder that cannot be the ``role`` (``reward`` or
    ``critic``): missing, no config.json, not a decoder, not one label, no tokenizer, and for a
    reward model no trained head. Reads no weights; returns the folder's format."""
    kind = folder_format(path, key)
    if role == "reward" and kind == "causal_lm":
        raise _refusal(
            key,
            path,
            "a causal LM without a trained scalar head (a reward model needs one)",
            "give a sequence classifier with num_labels=1 (AutoModelForSequenceClassification) "
            "or a reward model written by RewardModel.export",
        )
    folder_tokenizer(path, key)
    return kind


# -- tokenizers ----------------------------------------------------------------------------------


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The special tokens that shape a text's ids (pad left out: padding is masked by length,
    and a tokenizer without a pad token pads with eos here)."""
    return {k: str(v) for k, v in tokenizer.special_tokens_map.items() if k != "pad_token"}


def _backend(tokenizer: PreTrainedTokenizerBase) -> Any:
    """Everything that maps text to ids: the fast tokenizer's whole definition (vocabulary,
    merges, normaliser, pre-tokeniser, added tokens) without its padding or truncation state;
    a slow tokenizer's class and vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())]
    spec = json.loads(backend.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    return spec


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether a text becomes the same ids under ``a`` and ``b`` and a conversation the same text:
    the same backend (vocabulary, merges, normalisation, added tokens), the same special tokens
    (pad aside) and the same chat template. Only then may one score the other's ids directly."""
    return (
        _special_tokens(a) == _special_tokens(b)
        and getattr(a, "chat_template", None) == getattr(b, "chat_template", None)
        and _backend(a) == _backend(b)
    )


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether every id means the same token under ``a`` and ``b`` (what a critic reading the
    policy's ids needs)."""
    return a.get_vocab() == b.get_vocab()


def policy_tokenizer(cfg: DictConfig, make_task: Callable[[], Task]) -> PreTrainedTokenizerBase:
    """The tokenizer stage 1 will give the policy, before stage 1 runs: the folder's of
    ``model.name_or_path``, else the built-in one over the task's vocabulary."""
    from transformers import AutoTokenizer

    name = cfg.model.get("name_or_path") or ""
    if name:
        return AutoTokenizer.from_pretrained(
            str(provenance.input_path(name)), local_files_only=True
        )
    task = make_task()
    return build_tokenizer(task.vocabulary(), chat=task.multi_turn)


# -- the config's folders ------------------------------------------------------------------------


def marked_fields(cfg: DictConfig, marker: str) -> dict[str, tuple[Any, str]]:
    """``{dotted key: (marker value, field value)}`` of every non-empty field of the config's
    dataclasses whose metadata holds ``marker`` (``model_folder``, ``input``)."""
    found: dict[str, tuple[Any, str]] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        schema = OmegaConf.get_type(node)
        marks = (
            {f.name: f.metadata.get(marker) for f in dataclasses.fields(schema)}
            if dataclasses.is_dataclass(schema)
            else {}
        )
        for key in node:
            if OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value, f"{prefix}{key}.")
            elif marks.get(str(key)) and value:
                found[f"{prefix}{key}"] = (marks[str(key)], str(value))

    walk(cfg, "")
    return found


def model_folder_keys(cfg: DictConfig) -> dict[str, tuple[str, str]]:
    """``{dotted key: (role, value)}`` of every non-empty field marked ``model_folder`` in the
    config's dataclasses (``reward.path``, ``algo.critic_path``)."""
    return marked_fields(cfg, "model_folder")


#: ``(resolved folder, (file, size, mtime) of each file)`` -> contents hash: a checkpoint writes
#: the fingerprint every time, and a large reward model is not read again unless it changed.
_HASHES: dict[tuple[str, tuple[tuple[Any, ...], ...]], str] = {}


def contents_hash(folder: Path) -> str:
    """One sha256 over the folder's files (names and bytes; hidden files left out)."""
    files = sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts)
    )
    stamp = tuple((f.relative_to(folder).as_posix(), *provenance.file_stamp(f)) for f in files)
    key = (str(folder.resolve()), stamp)
    if key not in _HASHES:
        digest = provenance.folder_digest(folder)
        _HASHES[key] = hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()
    return _HASHES[key]


def file_hash(path: Path) -> str:
    """The sha256 of a file's bytes, read once per process while its
    :func:`~alignbench.provenance.file_stamp` stays."""
    key = (str(path.resolve()), ((path.name, *provenance.file_stamp(path)),))
    if key not in _HASHES:
        _HASHES[key] = provenance.sha256_file(path)
    return _HASHES[key]


def input_keys(cfg: DictConfig) -> dict[str, str]:
    """``{dotted key: value}`` of every non-empty field marked ``input`` in the config's
    dataclasses: files or folders a job reads (``model.name_or_path``, ``task.path``,
    ``feedback.path``), whose contents, not only their names, decide its numbers."""
    return {key: value for key, (_, value) in marked_fields(cfg, "input").items()}


def folder_fingerprints(cfg: DictConfig) -> dict[str, str]:
    """``{key: contents hash}`` of every model folder and input file or folder the config names
    (empty when none: the default's fingerprint is unchanged); another file behind the same
    name is another job. A name that is not a local path (a hub id) stays a name."""
    out = {}
    for key, (_, value) in model_folder_keys(cfg).items():
        folder = provenance.input_path(value)
        out[key] = contents_hash(folder) if folder.is_dir() else "missing"
    for key, value in input_keys(cfg).items():
        path = provenance.input_path(value)
        if path.is_dir():
            out[key] = contents_hash(path)
        elif path.is_file():
            out[key] = file_hash(path)
    return out


def check_model_folders(cfg: DictConfig, make_task: Callable[[], Task]) -> None:
    """Every model folder of the job, before stage 1 and before any folder: each usable in its
    role, a critic's vocabulary the policy's (it reads the policy's ids), and no setting that
    would train a reward model read from a folder. One line each."""
    folders = model_folder_keys(cfg)
    policy: list[PreTrainedTokenizerBase] = []  # built once, when a critic needs it
    make_task = functools.cache(make_task)  # the critic and the prompt checks read one task

    def policy_vocabulary_of(path: Path, key: str) -> None:
        if not policy:
            policy.append(policy_tokenizer(cfg, make_task))
        if not same_vocabulary(folder_tokenizer(path, key), policy[0]):
            raise _refusal(
                key,
                path,
                "its tokenizer's vocabulary is not the policy's (a critic reads the policy's "
                "token ids, so it must share the policy's tokenizer)",
                "give a critic built on the policy's tokenizer, or leave the key empty",
            )
        vocab_size = getattr(folder_config(path, key), "vocab_size", None)
        if vocab_size is not None and vocab_size < len(policy[0]):
            raise _refusal(
                key,
                path,
                f"its embedding has {vocab_size} rows for the policy's {len(policy[0])} tokens",
                "give a critic built on the policy's tokenizer",
            )

    for key, (role, value) in folders.items():
        path = provenance.input_path(value)
        check_model_folder(path, key, role)
        if role == "critic":
            policy_vocabulary_of(path, key)
        if role != "reward":
            continue
        rounds = int(cfg.get("feedback", {}).get("rounds", 0) or 0)
        if rounds:
            raise _refusal(
                key,
                value,
                f"feedback.rounds={rounds} retrains the reward model, but one read from a "
                "folder has no ranked groups",
                "set feedback.rounds=0, or leave the key empty to train stage 2",
            )
        lora = cfg.get("model", {}).get("lora", {}) or {}
        if lora.get("r") and "reward_model" in (lora.get("targets") or []):
            raise _refusal(
                key,
                value,
                "model.lora.targets names reward_model, but a reward model read from a folder "
                "is not trained",
                "drop reward_model from model.lora.targets",
            )
        algo = cfg.get("algo", {})
        if algo.get("critic") == "separate" and algo.get("critic_init") == "reward_model":
            policy_vocabulary_of(path, key)  # the critic starts as a copy of this model
    check_policy_prompts(cfg, make_task)


def check_policy_prompts(cfg: DictConfig, make_task: Callable[[], Task]) -> None:
    """Every prompt of the task as the policy's tokenizer will write it, before stage 1: a chat
    template that refuses one (many refuse a system role, or turns that do not alternate) and a
    prompt that with the longest response is longer than the model's positions are one line,
    not an error inside stage 1 (or a position embedding read past its end). Only for a model
    from a folder or the task's data: the built-in model on a built-in task fits by design."""
    name = cfg.model.get("name_or_path") or ""
    if not name and cfg.task.get("name") != "dataset":
        return
    from alignbench.batch import encode_prompts, row_prompts
    from alignbench.models import check_loadable

    if name:
        local = provenance.input_path(name)
        check_loadable(local if local.is_dir() else name)  # a missing folder: its own one line
    task = make_task()
    if getattr(task, "multi_turn", False):
        return  # a dialogue's later turns are written while it runs
    tokenizer = policy_tokenizer(cfg, lambda: task)
    if str(cfg.model.get("chat_template", "auto")) == "none":
        tokenizer.chat_template = None
    rows = {row["prompt"]: row for split in task.splits.values() for row in split.to_list()}
    where = f"model.name_or_path={name!r}" if name else "the built-in model"
    lengths = _render_each(
        list(rows.values()),
        lambda row: len(encode_prompts(tokenizer, row_prompts([row]))[0]),
        where,
        "or write prompts as plain text (model.chat_template=none)",
    )
    _check_reward_template(cfg, tokenizer, list(rows.values()))
    limit = (
        positions_of(folder_config(provenance.input_path(name), "model.name_or_path"))
        if name
        else int(cfg.model.get("max_position_embeddings") or 0) or None
    )
    longest = max(
        int(cfg.get(group, {}).get("sampling", {}).get("max_new_tokens", 0) or 0)
        for group in ("algo", "feedback")
    )
    longest = max(longest, int(cfg.get("eval", {}).get("max_new_tokens", 0) or 0))
    if limit is not None and lengths and max(lengths) + longest > limit:
        raise ConfigError(
            f"{where}: the longest prompt takes {max(lengths)} tokens, and with {longest} new "
            f"tokens more than the model's {limit} positions — use shorter prompts "
            "(task.max_rows, or trim the data), fewer new tokens (algo.sampling.max_new_tokens, "
            "eval.max_new_tokens), or a model with a longer context"
            + ("" if name else f" (model.max_position_embeddings={max(lengths) + longest})")
        )


def _check_reward_template(
    cfg: DictConfig, policy: PreTrainedTokenizerBase, rows: list[dict[str, Any]]
) -> None:
    """A reward model from ``reward.path`` that reads the policy's text through its own chat
    template (another tokenizer): each prompt, with a reply, rendered by that template as it
    will score it; a template that refuses one is one line now, not an error at the first
    score after stage 1 (many refuse a system role)."""
    from alignbench.batch import prompt_messages

    value = (cfg.get("reward") or {}).get("path") or ""
    if not value:
        return
    reward = folder_tokenizer(provenance.input_path(value), "reward.path")
    if not getattr(reward, "chat_template", None) or same_vocabulary(reward, policy):
        return  # scored on the policy's own tokens: no template of its own is used
    _render_each(
        rows,
        lambda row: reward.apply_chat_template(
            [*prompt_messages(row), {"role": "assistant", "content": "yes"}], tokenize=False
        ),
        f"reward.path={value!r}",
        "or use a reward model whose template takes it",
    )


def _render_each(
    rows: list[dict[str, Any]], render: Callable[[dict[str, Any]], Any], where: str, fix: str
) -> list[Any]:
    """``render(row)`` of every prompt row; a chat template that refuses one (jinja2's
    TemplateError, or the template's own ``raise_exception``) is one line naming ``where``,
    the prompt and ``fix``."""
    out = []
    for row in rows:
        try:
            out.append(render(row))
        except Exception as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                f"{where}: its chat template refuses the prompt {row['prompt'][:80]!r} ({why}) "
                "— leave out what it refuses (task.system_prompt='', task.columns.system=''), "
                + fix
            ) from None
    return out


def positions_of(config: Any) -> int | None:
    """The most positions a model config allows (``max_position_embeddings``, or GPT-2's
    ``n_positions``); None when it says none."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# -- loading and saving --------------------------------------------------------------------------


def load_scalar_model(
    path: str | Path, key: str, role: str
) -> tuple[ScalarHeadModel, PreTrainedTokenizerBase]:
    """A :class:`ScalarHeadModel` and its tokenizer from a local folder of any of the three
    formats (checked as :func:`check_model_folder` does), in fp32, trainable (freeze it for a
    reward model). A sequence classifier's ``score`` head becomes the head (bias 0 when it has
    none), so its scalar at a sequence's last token is the classifier's score of it."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kind = check_model_folder(path, key, role)
    tokenizer = folder_tokenizer(path, key)
    config = folder_config(path, key)
    loaded = dict(dtype=torch.float32, local_files_only=True)
    try:
        if kind == "scalar_head":
            model = ScalarHeadModel(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
            model.load_state_dict(load_file(Path(path) / SCALAR_WEIGHTS))
        elif kind == "sequence_classification":
            classifier = AutoModelForSequenceClassification.from_pretrained(str(path), **loaded)
            score = getattr(classifier, "score", None)
            if not isinstance(score, torch.nn.Linear) or score.out_features != 1:
                raise _refusal(
                    key,
                    path,
                    f"{type(classifier).__name__} has no one-output `score` head",
                    "use a decoder's sequence classifier (LlamaForSequenceClassification, …)",
                )
            model = ScalarHeadModel(classifier)
            with torch.no_grad():
                model.head.weight.copy_(score.weight)
                if score.bias is not None:
                    model.head.bias.copy_(score.bias)
                else:
                    model.head.bias.zero_()
        else:
            model = ScalarHeadModel(AutoModelForCausalLM.from_pretrained(str(path), **loaded))
    except (OSError, RuntimeError) as exc:  # weights missing, or not this config's shapes
        raise _refusal(key, path, str(exc).splitlines()[0], _GET_ONE) from None
    return model, tokenizer


def save_scalar_model(
    model: ScalarHeadModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> Path:
    """Write ``model`` in alignbench's scalar-head format (``config.json``, the tokenizer and
    :data:`SCALAR_WEIGHTS`) so that ``reward.path`` or ``algo.critic_path`` reads it back."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, folder / SCALAR_WEIGHTS)
    return folder
