"""The ``dataset`` task: your own prompts, answers, demonstrations and preferences from a file.

``task=dataset task.path=<file or folder>`` reads a JSONL / JSON, CSV or parquet file (through
``datasets.load_dataset``, which caches it as Arrow) or a folder written by
``Dataset.save_to_disk`` (``datasets.load_from_disk``). ``task.columns.<role>=<column>`` says
which column holds what; a role left unset uses the column of its own name when the data has
one. The roles:

* ``prompt``: the question or instruction (one user turn), or a list of messages ending with
  the user's turn;
* ``messages``: instead of a prompt, a conversation: a list of ``{"role", "content"}`` messages
  (``system`` / ``user`` / ``assistant``) ending with the user's turn, which the policy answers
  (a CSV cell holds the list as JSON text); a row without one reads the prompt column. Ending
  with the assistant's answer, it is a demonstration: the prompt is everything before it, the
  answer its ``response`` (a row with a response cell too is refused as ambiguous);
* ``system``: a system prompt for the row (unless its messages have their own);
* ``response``: a demonstration (SFT trains on it);
* ``answer``: the gold answer, a string or a list of accepted strings (rule rewards, accuracy);
* ``chosen`` / ``rejected``: a preference pair; ``responses`` / ``ranking``: K responses and
  their indices best first (``feedback=dataset`` trains the reward model and DPO on them). Each
  answer is text, or a message list: the whole conversation (the prompt's messages, then the
  assistant's answer) or the answer alone (one assistant message, beside the row's prompt).
  Without a prompt or messages cell the prompt is the conversation the answers share before
  their final assistant turns (refused when they differ); with one, the messages before an
  answer must be that prompt (refused as ambiguous otherwise). Anthropic HH-RLHF's raw
  transcript text (opening with a blank line then "Human: …", turns after blank lines, an
  "Assistant: …" among them, in any of these cells) is read as that conversation's user and
  assistant messages (a prompt's trailing empty ``Assistant:`` dropped);
* ``split``: ``sft`` / ``rl`` / ``dev`` / ``test`` per row, to split the data yourself.

Without a split column the data is split by *prompt* (a prompt's rows stay together, so no
prompt is both trained on and evaluated): ``dev_size`` and ``test_size`` prompts are held out
(a share when below 1, a count otherwise), the rest is divided into an SFT part
(``sft_share``) and an RL part; RL prompts never include dev or test prompts, and include the
SFT part's prompts only with ``rl_includes_sft``. A row's demonstration is its ``response``,
else its ``chosen``, else the best of its ranking, else its (first) gold answer.

``system_prompt`` is the system message of every prompt that has none of its own. A prompt is
then rendered as a conversation: through the model's chat template, or without one as plain
text (``alignbench.plain_prompt``: one ``Role: content`` line per message, then
``Assistant:``). Results show it as ``system: … | user: … | assistant: … | user: …`` (a prompt of
one user message as its text; ``system_prompt``, being in the config, is not repeated).

Every row is checked when the command starts, before any folder is created: an unreadable file,
a missing column, an empty prompt or a malformed ranking is one line naming the file, the row
(1 = the first record) and the column.
"""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import alignbench
from alignbench import (
    ABSTAIN,
    CORRECT,
    WRONG,
    ConfigError,
    DataError,
    FeedbackConfig,
    FeedbackSource,
    Group,
    Reward,
    RewardConfig,
    Task,
    TaskConfig,
    input_path,
    normalize_answer,
    plain_prompt,
    ranking_to_preference,
    transcript,
)

if TYPE_CHECKING:
    from datasets import Dataset

FORMATS = ("auto", "json", "csv", "parquet", "disk")
SUFFIXES = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
SPLITS = ("sft", "rl", "dev", "test")
ROLES = (
    "prompt",
    "messages",
    "system",
    "response",
    "answer",
    "chosen",
    "rejected",
    "responses",
    "ranking",
    "split",
)
#: The roles of a conversation's messages; a system message comes first.
MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass
class ColumnsConfig:
    """Which column holds each role; unset (null) = the column named like the role, if any;
    "" = none (a column named like the role is not read)."""

    prompt: str = "prompt"
    # A conversation (list of {role, content}, ending with the user's turn) instead of a prompt.
    messages: str | None = None
    # The row's system prompt.
    system: str | None = None
    response: str | None = None
    answer: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    responses: str | None = None
    ranking: str | None = None
    split: str | None = None


@dataclass
class DatasetConfig(TaskConfig):
    """Your data: where it is, which column is what, and how it is split."""

    # A .jsonl/.json, .csv or .parquet file, or a folder saved with Dataset.save_to_disk; a
    # relative path is read from the folder the command started in.
    path: str = field(default="", metadata={"input": True})
    format: str = field(default="auto", metadata={"choices": FORMATS})
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # Held-out prompts (never trained on): a share of the prompts when below 1, else a count.
    dev_size: float = 0.1
    test_size: float = 0.1
    # Share of the other prompts whose rows form the SFT part; the rest are RL prompts.
    sft_share: float = 0.5
    # RL prompts also include the SFT part's prompts (as the built-in tasks do).
    rl_includes_sft: bool = False
    # At most this many rows per evaluation set (dev, test, eval_rl).
    eval_size: int = 200
    # The phrase that means "I do not know" (abstention-aware rewards and metrics); "" = none.
    abstention: str = ""
    # Read only the first this-many records (0 = all): a quick trial on a large file.
    max_rows: int = 0
    # The system message of every prompt without one of its own ("" = none).
    system_prompt: str = ""

    def validate(self) -> None:
        """Read and check the whole file now: a bad row is one line before anything runs."""
        for key in ("dev_size", "test_size"):
            value = getattr(self, key)
            if value < 0 or (value >= 1 and value != int(value)):
                raise ConfigError(
                    f"task.{key}={value} — give a share in [0, 1) or a whole number of prompts"
                )
        if self.max_rows < 0:
            raise ConfigError(f"task.max_rows={self.max_rows} — must be >= 0 (0 reads every row)")
        load_data(self)


# -- reading and checking ------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No "Generating train split" progress bars from datasets while a file is read."""
    # datasets costs about a second of CPU at import: only for task=dataset.
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def data_path(config: DatasetConfig) -> Path:
    """The file or folder ``task.path`` names (relative to the folder the command started in)."""
    if not config.path:
        raise ConfigError("task=dataset needs task.path=<.jsonl, .csv or .parquet file, or folder>")
    path = input_path(config.path)
    if not path.exists():
        raise ConfigError(f"task.path={config.path!r}: no such file or folder ({path})")
    return path


def read_table(path: Path, fmt: str) -> Dataset:
    """The file (or ``save_to_disk`` folder) at ``path`` as one ``Dataset``, one line on failure."""
    # datasets costs about a second of CPU at import: only for task=dataset.
    import datasets

    if fmt == "auto":
        fmt = "disk" if path.is_dir() else SUFFIXES.get(path.suffix.lower(), "")
        if not fmt:
            raise ConfigError(
                f"{path}: cannot tell the format from the name — use .jsonl, .csv, .parquet or a "
                "save_to_disk folder, or set task.format=json|csv|parquet"
            )
    try:
        with _quiet():
            if fmt == "disk":
                table = datasets.load_from_disk(str(path))
            else:
                table = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as exc:  # datasets / pyarrow raise many types; each becomes one line
        cause = exc.__cause__ or exc
        why = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise DataError(f"{path}: cannot be read as {fmt} ({why}) — fix the file") from None
    if isinstance(table, datasets.DatasetDict):
        raise DataError(
            f"{path}: a DatasetDict with splits {', '.join(table)} — give one split's folder "
            f"(task.path={path.name}/{next(iter(table))}), or a split column"
        )
    return table


def resolve_columns(path: Path, table: Dataset, columns: ColumnsConfig) -> dict[str, str]:
    """``{role: column}`` for every role the data has; a column named in config must exist."""
    present = set(table.column_names)
    has_messages = columns.messages != "" and (columns.messages or "messages") in present
    resolved: dict[str, str] = {}
    for role in ROLES:
        named = getattr(columns, role)
        if named == "":
            # Off: a column named like the role is not read (a `messages` or `system` column
            # kept in a file for another purpose, say; a `prompt` column holding only the first
            # turn of the answers' conversations).
            continue
        if named is None:
            if role in present:
                resolved[role] = role
            continue
        # Conversations need no prompt column (the default name, left as it is), nor do
        # answers that are whole conversations (the prompt is the messages before the answer).
        if (
            role == "prompt"
            and named == "prompt"
            and named not in present
            and (has_messages or _answers_are_conversations(table, columns))
        ):
            continue
        if named not in present:
            raise DataError(
                f"{path}: no column {named!r} (task.columns.{role}) — the columns are: "
                f"{', '.join(table.column_names)}"
            )
        resolved[role] = named
    for a, b in (("chosen", "rejected"), ("responses", "ranking")):
        if (a in resolved) != (b in resolved):
            have, lack = (a, b) if a in resolved else (b, a)
            raise DataError(
                f"{path}: column {resolved[have]!r} ({have}) needs a {lack} column — set "
                f"task.columns.{lack}=<column>"
            )
    return resolved


def _answers_are_conversations(table: Dataset, columns: ColumnsConfig) -> bool:
    """The first filled ``chosen`` (or ``responses``, ``response``) cell is a message list: the
    rows' prompts are read from their answers' conversations."""
    for role in ("chosen", "responses", "response"):
        named = getattr(columns, role)
        name = role if named is None else named
        if not name or name not in table.column_names:
            continue
        value = next((v for v in table[name] if v is not None), None)
        if role == "responses" and isinstance(value, list) and value:
            value = value[0]
        try:
            if _message_list(value, "") is not None:
                return True
        except DataError:
            return True  # text that looks like a list: refused with its row by check_row
    return False


def _text(value: Any) -> str:
    """A cell as stripped text ('' for a missing cell)."""
    return value.strip() if isinstance(value, str) else ""


def _columnar(value: Any) -> Any:
    """``value`` as a list of messages when it is datasets' columnar form of one,
    ``{"role": [...], "content": [...]}`` (a ``Sequence`` of a struct feature, as ``datasets``
    returns a cell read from parquet or ``save_to_disk``); else ``value`` unchanged."""
    if (
        isinstance(value, dict)
        and set(value) == {"role", "content"}
        and all(isinstance(v, list) for v in value.values())
        and len(value["role"]) == len(value["content"])
    ):
        return [
            {"role": r, "content": c} for r, c in zip(value["role"], value["content"], strict=True)
        ]
    return value


#: A turn of Anthropic HH-RLHF's transcript text: "Human:" / "Assistant:" opening the text or
#: after a blank line.
_HH_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):[ \t]*")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_messages(text: str, prompt: bool = False) -> list[dict[str, str]] | None:
    """Anthropic HH-RLHF's raw transcript (``"\\n\\nHuman: …\\n\\nAssistant: …"``) as user
    and assistant messages; ``prompt``: a trailing empty ``Assistant:`` (a prompt awaiting its
    answer) dropped (in an answer it stays, and is refused as empty). None for other text: one
    that does not open as HH's do, with a blank line then ``Human:`` (a few-shot prompt
    starting with ``Human:`` stays text), or has no ``Assistant:`` turn."""
    if not text.startswith("\n\nHuman:") or "\n\nAssistant:" not in text:
        return None
    body = text.lstrip("\n")
    parts = _HH_TURN.split(body)  # ["", role, content, role, content, ...]
    messages = [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if prompt and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def _message_list(value: Any, at: str, what: str = "answer") -> list | None:
    """``value`` when it is a list (of messages, checked later; the columnar form converted),
    or the list its text holds when that is JSON of a list of objects (a CSV cell); None for
    other text. Text that looks like a list of messages but is not one (``[]``, or Python's
    ``[{'role': ...}]`` as pandas writes it) is refused, ``at`` naming the cell: read as text
    it would silently become the ``what``."""
    value = _columnar(value)
    if isinstance(value, list):
        return value
    if isinstance(value, str) and (hh := hh_messages(value, what == "prompt")) is not None:
        return hh
    if not isinstance(value, str) or not value.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
        # "[" then "{": a list of objects that is not JSON; other text (say "[1] see ...")
        # stays text.
        if not value.lstrip()[1:].lstrip().startswith("{"):
            return None
    if isinstance(parsed, list) and parsed and any(isinstance(m, dict) for m in parsed):
        return parsed  # its messages are checked (a missing role is named there)
    if parsed is None or parsed == []:
        raise DataError(
            f"{at} is text that looks like a list of messages but is not one "
            f"({value.strip()!r:.40}) — write the list as JSON (json.dumps), or the {what} as "
            "plain text"
        )
    return None


def _checked_messages(at: str, value: Any, fix: str) -> list[dict[str, str]]:
    """``value`` as ``{role, content}`` messages (contents stripped), ``at`` naming the cell: a
    non-empty list of system / user / assistant messages, a system message only first. The
    columnar form ``{"role": [...], "content": [...]}`` (a ``Sequence`` of a struct feature, as
    ``datasets`` returns one read from parquet or ``save_to_disk``) is read as that list."""
    value = _columnar(value)
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else f"not a list ({value!r:.40})"
        raise DataError(f"{at} is {what} — {fix}")
    messages = []
    for number, message in enumerate(value, 1):
        here = f"{at}, message {number}"
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise DataError(
                f'{here} is not {{"role": ..., "content": ...}} with text values — {fix}'
            )
        role, content = message["role"], message["content"].strip()
        if role not in MESSAGE_ROLES:
            raise DataError(f"{here} has role {role!r} — use one of: {', '.join(MESSAGE_ROLES)}")
        if not content:
            raise DataError(f"{here} ({role}) has empty content — write the message or drop it")
        if role == "system" and number > 1:
            raise DataError(f"{here} is a system message after the first — move it to the start")
        messages.append({"role": role, "content": content})
    return messages


def _cell_messages(where: str, column: str, role: str, value: Any, fix: str) -> list:
    """A ``messages`` / ``prompt`` cell's checked messages (JSON text in a CSV cell, or HH's
    transcript text)."""
    if isinstance(value, str) and (hh := hh_messages(value, prompt=True)) is not None:
        value = hh
    elif isinstance(value, str):
        try:  # a CSV cell holds the list as JSON text
            value = json.loads(value)
        except ValueError:
            raise DataError(
                f"{where}: column {column!r} ({role}) is text, not a list of messages — {fix}"
            ) from None
    return _checked_messages(f"{where}: column {column!r} ({role})", value, fix)


def check_messages(
    where: str, column: str, value: Any, role: str = "messages"
) -> list[dict[str, str]]:
    """A prompt's conversation cell as checked ``{role, content}`` messages (contents
    stripped): a list (or its JSON text) of system / user / assistant messages, a system
    message only first, ending with the user's turn."""
    fix = "give a list of {role, content} messages ending with the user's turn"
    messages = _cell_messages(where, column, role, value, fix)
    if messages[-1]["role"] != "user":
        raise DataError(
            f"{where}: column {column!r} ({role}) ends with the {messages[-1]['role']}'s "
            "message — a prompt ends with the user's turn (the answer goes in the response, or "
            "chosen / rejected, column)"
        )
    return messages


def split_answer(at: str, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """``(prompt, answer)`` of checked messages ending with the assistant's answer: the messages
    before it (empty when the cell is the answer alone) and its content; ``at`` names the cell."""
    last = messages[-1]["role"]
    if last != "assistant":
        raise DataError(
            f"{at} ends with the {last}'s message — a conversation with an answer ends with "
            "the assistant's message (the answer)"
        )
    before = messages[:-1]
    if before and before[-1]["role"] != "user":
        raise DataError(
            f"{at}: its answer (the last message) follows the {before[-1]['role']}'s message, "
            "not the user's turn — one answer per conversation: drop or merge the extra "
            "assistant message"
        )
    return before, messages[-1]["content"]


def _own_prompt(
    where: str, row: dict[str, Any], cols: dict[str, str]
) -> tuple[list[dict[str, str]] | None, str, str, bool]:
    """The row's own prompt as ``(messages, answer, column, listed)``: its ``messages`` cell
    (split before a final assistant answer, returned as ``answer``), else its ``prompt`` cell
    (text as one user turn, or a message list); ``listed``: read from a message list.
    ``(None, "", "", False)`` when it has neither."""
    value = row.get(cols["messages"]) if "messages" in cols else None
    if value is not None:
        column = cols["messages"]
        fix = (
            "give a list of {role, content} messages ending with the user's turn (a prompt) "
            "or with the assistant's answer after it (a demonstration)"
        )
        messages = _cell_messages(where, column, "messages", value, fix)
        if messages[-1]["role"] == "user":
            return messages, "", column, True
        at = f"{where}: column {column!r} (messages)"
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{at} ends with the {messages[-1]['role']}'s message — a prompt ends with the "
                "user's turn (a demonstration: the assistant's answer after it)"
            )
        before, answer = split_answer(at, messages)
        if not before:
            raise DataError(
                f"{at} is the assistant's answer alone — put the user's turn (the prompt) before it"
            )
        return before, answer, column, True
    prompt = row.get(cols["prompt"]) if "prompt" in cols else None
    listed = _message_list(prompt, f"{where}: column {cols.get('prompt')!r} (prompt)", "prompt")
    if listed is not None:
        messages = check_messages(where, cols["prompt"], listed, role="prompt")
        return messages, "", cols["prompt"], True
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt.strip()}], "", cols["prompt"], False
    return None, "", "", False


def conversation_answers(
    where: str,
    cells: list[tuple[str, Any]],
    prompts: list[list[dict[str, str]]],
    prompt_column: str,
    off: str = "",
) -> tuple[list[dict[str, str]] | None, list[str]] | None:
    """The answers of answer cells that are message lists, as ``(prompt, answers)``; None when
    every cell is text (read as before). ``cells`` are ``(name, value)``; ``prompts`` the forms
    of the row's own prompt (none: the answers' shared messages before them are the prompt);
    ``off`` ends the ambiguous-prompt refusal (how to switch the prompt column off).

    A cell is either the whole conversation (the prompt's messages, then the assistant's answer)
    or only the answer (one assistant message; the prompt is the row's own). Refused in one
    line: text beside lists, different conversations before the answers, messages before an
    answer that are not the row's prompt, an answer alone on a row without a prompt."""
    lists = [_message_list(value, f"{where}: {name}") for name, value in cells]
    if all(found is None for found in lists):
        return None
    if None in lists:
        text, value = cells[lists.index(None)]
        if not _text(value):  # a null entry of a ranking's responses
            raise DataError(
                f"{where}: {text} is missing or empty — give it as a message list like the "
                "others, or drop it and its index from the ranking"
            )
        listed = cells[next(i for i, f in enumerate(lists) if f is not None)][0]
        raise DataError(
            f"{where}: {listed} is a list of messages and {text} is text — give every answer "
            "as a message list (the conversation, then the answer) or every one as text"
        )
    fix = (
        "give the conversation ending with the assistant's answer, or the answer alone "
        '([{"role": "assistant", "content": ...}])'
    )
    shared: list[dict[str, str]] | None = None
    shared_name = ""
    answers = []
    for (name, _), value in zip(cells, lists, strict=True):
        at = f"{where}: {name}"
        before, answer = split_answer(at, _checked_messages(at, value, fix))
        answers.append(answer)
        if not before:
            continue  # the answer alone: its prompt is the row's own
        if prompts:
            if before not in prompts:
                raise DataError(
                    f"{at} holds messages before its answer that are not the row's prompt "
                    f"(column {prompt_column!r}) — ambiguous: give the prompt's messages then "
                    'the answer, or the answer alone ([{"role": "assistant", "content": ...}])'
                    f"{off}"
                )
        elif shared is None:
            shared, shared_name = before, name
        elif before != shared:
            differs = next(
                (i for i, (a, b) in enumerate(zip(before, shared, strict=False)) if a != b),
                min(len(before), len(shared)),
            )
            raise DataError(
                f"{where}: {shared_name} and {name} hold different conversations before their "
                f"answers (message {differs + 1} differs) — the answers to one prompt share its "
                "messages: fix the row, or split it into one row per prompt"
            )
    if not prompts and shared is None:
        raise DataError(
            f"{where}: {cells[0][0]} is the assistant's answer alone and the row has no prompt "
            "— give the whole conversation (its messages, then the answer) or map a prompt "
            "column (task.columns.prompt=<column>)"
        )
    return shared, answers


def _conversation(
    own: list[dict[str, str]], system: str, system_prompt: str
) -> tuple[str, list[dict[str, str]]]:
    """``(text, conversation)`` of a prompt's messages: the row's system prompt first, then the
    task-wide one, unless it has its own; ``text`` names it (without the task-wide one, also
    where the messages themselves start with it)."""
    conversation = own
    if system and conversation[0]["role"] != "system":
        conversation = [{"role": "system", "content": system}, *conversation]
    task_wide = {"role": "system", "content": system_prompt.strip()}
    # The same conversation has the same name whether the task or the row gave it the
    # task-wide system message: its prompt then splits, and matches gold rows and pairs, as one.
    named = conversation[1:] if system_prompt.strip() and conversation[0] == task_wide else None
    named = named or conversation
    text = named[0]["content"] if len(named) == 1 else transcript(named)
    if system_prompt.strip() and conversation[0]["role"] != "system":
        conversation = [task_wide, *conversation]
    return text, conversation


def check_row(
    where: str, row: dict[str, Any], cols: dict[str, str], system_prompt: str = ""
) -> dict[str, Any]:
    """One record as ``{prompt, conversation, response, answers, ranked, split}``, checked.

    The prompt is the row's ``messages``, else its ``prompt``, else the messages its
    ``chosen`` / ``rejected`` (or ``responses``) conversations share before their answers; its
    system prompt goes first. ``prompt`` (text) names it in splits and results (one user message:
    its content; else :func:`alignbench.transcript`, without the task-wide ``system_prompt``).
    ``conversation`` is None when the prompt is one user turn from text and the data has no
    system prompts (no system column, no ``system_prompt``) nor messages column."""
    own, final_answer, prompt_column, listed = _own_prompt(where, row, cols)
    system = row.get(cols["system"]) if "system" in cols else None
    if system is not None and not isinstance(system, str):
        raise DataError(
            f"{where}: column {cols['system']!r} (system) must be text — write the system "
            "prompt as text, or leave the cell empty"
        )
    system = (system or "").strip()
    # The forms the answers' conversations may repeat the prompt in: with its system column's
    # message first or without it.
    prompts = [] if own is None else [own]
    if own is not None and system and own[0]["role"] != "system":
        prompts.append([{"role": "system", "content": system}, *own])
    out: dict[str, Any] = {"answers": [], "ranked": None, "split": None, "where": where}
    # A prompt column holding only the conversations' first turn (Capybara) is switched off.
    off = ""
    if "prompt" in cols and prompt_column == cols["prompt"]:
        off = ", or read each prompt from the conversations (task.columns.prompt='')"
    answer = row.get(cols["answer"]) if "answer" in cols else None
    if isinstance(answer, str):
        out["answers"] = [answer.strip()] if answer.strip() else []
    elif isinstance(answer, list) and all(isinstance(a, str) for a in answer):
        out["answers"] = [a.strip() for a in answer if a.strip()]
    elif answer is not None:
        raise DataError(
            f"{where}: column {cols['answer']!r} (answer) must be a string or a list of strings"
        )
    from_answers, answers_column = None, ""
    if "chosen" in cols:
        chosen, rejected = row[cols["chosen"]], row[cols["rejected"]]
        filled = {"chosen": chosen, "rejected": rejected}
        filled = {
            k: v
            for k, v in filled.items()
            if _text(v) or _message_list(v, f"{where}: column {cols[k]!r} ({k})") is not None
        }
        if len(filled) == 1:
            lack = "rejected" if "chosen" in filled else "chosen"
            raise DataError(
                f"{where}: column {cols[lack]!r} ({lack}) is missing or empty — fill it, or "
                f"leave the row's {cols['chosen']!r} and {cols['rejected']!r} both empty"
            )
        if filled:
            cells = [(f"column {cols[k]!r} ({k})", row[cols[k]]) for k in ("chosen", "rejected")]
            found = conversation_answers(where, cells, prompts, prompt_column, off)
            if found is None:
                pair = [_text(chosen), _text(rejected)]
            else:
                (from_answers, pair), answers_column = found, cols["chosen"]
            out["ranked"] = (pair, [1.0, 0.0])
    if "responses" in cols and row[cols["responses"]] is not None:
        responses, ranking = row[cols["responses"]], row[cols["ranking"]]
        column = cols["responses"]
        found = None
        if isinstance(responses, list) and len(responses) >= 2:
            cells = [
                (f"column {column!r} (responses), response {i}", value)
                for i, value in enumerate(responses, 1)
            ]
            found = conversation_answers(where, cells, prompts, prompt_column, off)
        if found is None and (
            not isinstance(responses, list)
            or len(responses) < 2
            or not all(isinstance(r, str) and r.strip() for r in responses)
        ):
            raise DataError(
                f"{where}: column {column!r} (responses) must be a list of at least "
                "2 non-empty strings (or of message lists)"
            )
        if (
            not isinstance(ranking, list)
            or not all(type(i) is int for i in ranking)
            or sorted(ranking) != list(range(len(responses)))
        ):
            raise DataError(
                f"{where}: column {cols['ranking']!r} (ranking) must list every response index "
                f"once, best first (a permutation of 0..{len(responses) - 1})"
            )
        if out["ranked"] is not None:
            raise DataError(f"{where}: both a chosen/rejected pair and a ranking — keep one")
        if found is None:
            texts = [r.strip() for r in responses]
        else:
            (from_answers, texts), answers_column = found, column
        out["ranked"] = (texts, ranking_to_preference(ranking))
    demo = ""
    if "response" in cols and row[cols["response"]] is not None:
        # A demonstration as a message list follows the same rules, its prompt the row's own
        # or the one the preference answers share.
        shared = [from_answers] if from_answers is not None else []
        cell = [(f"column {cols['response']!r} (response)", row[cols["response"]])]
        found = conversation_answers(
            where, cell, prompts or shared, prompt_column or answers_column, off
        )
        if found is None:
            demo = _text(row[cols["response"]])
        else:
            before, [demo] = found
            from_answers = from_answers or before
    if own is None:
        if from_answers is None:
            column = f"column {cols['prompt']!r} (prompt)" if "prompt" in cols else "no prompt"
            also = f" and column {cols['messages']!r} (messages)" if "messages" in cols else ""
            if not also and "prompt" not in cols:
                raise DataError(
                    f"{where}: no prompt — no prompt column, and no conversation in the "
                    "answers to read it from: give the answers as message lists ending with "
                    "the answer, or map a prompt column (task.columns.prompt=<column>)"
                )
            raise DataError(
                f"{where}: {column}{also} is missing or empty — fill the row's prompt (or "
                "messages), or drop the row"
            )
        own, listed = from_answers, True
    out["prompt"], out["conversation"] = _conversation(own, system, system_prompt)
    # Conversations anywhere in the data make every prompt one (see _load).
    out["chat"] = listed or "messages" in cols or "system" in cols or bool(system_prompt.strip())
    if final_answer:
        if demo:
            raise DataError(
                f"{where}: column {cols['messages']!r} (messages) ends with the assistant's "
                f"answer and column {cols['response']!r} (response) has one too — ambiguous: "
                "drop the final assistant message, or the response (task.columns.response='' "
                "reads none)"
            )
        demo = final_answer
    if not demo and out["ranked"] is not None:
        texts, preference = out["ranked"]
        demo = texts[int(np.argmax(preference))]
    out["response"] = demo or (out["answers"][0] if out["answers"] else "")
    if "split" in cols:
        split = row[cols["split"]]
        if split not in SPLITS:
            raise DataError(
                f"{where}: column {cols['split']!r} (split) is {split!r} — use one of: "
                + ", ".join(SPLITS)
            )
        out["split"] = split
    return out


def _count(size: float, total: int) -> int:
    """A share (below 1) or a count of ``total`` prompts."""
    return min(total, round(size * total) if size < 1 else int(size))


@dataclass
class LoadedData:
    """The checked records of a file, split by prompt."""

    path: Path
    records: list[dict[str, Any]]
    split_of: dict[str, str]

    def rows(self, split: str) -> list[dict[str, Any]]:
        """The records whose prompt belongs to ``split``."""
        return [r for r in self.records if self.split_of[r["prompt"]] == split]


_LOADED: dict[tuple, LoadedData] = {}


def load_data(config: DatasetConfig) -> LoadedData:
    """Read, check and split the data once per process (keyed by the config and the file)."""
    path = data_path(config)
    stamp = tuple(
        (str(f), f.stat().st_mtime_ns, f.stat().st_size)
        for f in ([path] if path.is_file() else sorted(path.rglob("*")))
    )
    key = (repr(config), stamp)
    if key not in _LOADED:
        _LOADED.clear()  # one dataset at a time: a sweep over files does not keep them all
        _LOADED[key] = _load(path, config)
    return _LOADED[key]


def _load(path: Path, config: DatasetConfig) -> LoadedData:
    table = read_table(path, config.format)
    if config.max_rows:
        table = table.select(range(min(config.max_rows, len(table))))
    cols = resolve_columns(path, table, config.columns)
    records = [
        check_row(f"{path}: row {i + 1}", row, cols, config.system_prompt)
        for i, row in enumerate(table)
    ]
    if not records:
        raise DataError(f"{path}: no rows — the file is empty")
    # Conversations in any row (a messages or system column, task.system_prompt, message-list
    # prompts or answers): every prompt carries its conversation (one user turn renders as its
    # text); none: single-turn rows stay as they always were, without the key.
    if not any([r.pop("chat") for r in records]):
        for record in records:
            record["conversation"] = None
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    split_of: dict[str, str] = {}
    if "split" in cols:
        for i, r in enumerate(records):
            if split_of.setdefault(r["prompt"], r["split"]) != r["split"]:
                raise DataError(
                    f"{path}: row {i + 1}: prompt already in split {split_of[r['prompt']]!r}, "
                    f"here {r['split']!r} — a prompt belongs to one split"
                )
    else:
        order = [prompts[i] for i in np.random.default_rng(config.seed).permutation(len(prompts))]
        n_test = _count(config.test_size, len(order))
        n_dev = _count(config.dev_size, len(order) - n_test)
        rest = order[n_test + n_dev :]
        n_sft = round(config.sft_share * len(rest))
        parts = {"test": order[:n_test], "dev": order[n_test : n_test + n_dev]}
        parts.update(sft=rest[:n_sft], rl=rest[n_sft:])
        split_of = {p: name for name, ps in parts.items() for p in ps}
    data = LoadedData(path, records, split_of)
    if not any(r["response"] for r in data.rows("sft")):
        raise DataError(
            f"{path}: no demonstration in the sft split — map a response, chosen, ranking or "
            "answer column (task.columns.response=<column>), or raise task.sft_share"
        )
    if not data.rows("rl") and not config.rl_includes_sft:
        raise DataError(
            f"{path}: no RL prompts — lower task.sft_share or set task.rl_includes_sft=true"
        )
    return data


# -- the task ------------------------------------------------------------------------------------


class NoGoldAnswer(DataError, NotImplementedError):
    """The row has no gold answer: nothing can judge it (an evaluation then shows no verdict)."""


class DatasetTask(Task):
    """Prompts, demonstrations, gold answers and preferences from your own file."""

    probe_split = "test"

    def __init__(self, config: DatasetConfig) -> None:
        super().__init__(config)
        self.config: DatasetConfig = config
        self.data = load_data(config)
        self.abstention = " ".join(config.abstention.split()) or None
        # Only the held-out sets the data has are evaluated (dev_size=0 means no dev set).
        self.eval_sets = {
            prefix: name
            for prefix, name in (("dev", "dev"), ("test", "test"), ("eval_rl", "rl_eval"))
            if len(self.splits[name])
        }

    @staticmethod
    def _row(record: dict[str, Any]) -> dict[str, Any]:
        """A split row: the prompt, its demonstration and its gold answers (first in ``answer``)."""
        answers = record["answers"]
        row = {
            "prompt": record["prompt"],
            "response": record["response"],
            "answers": answers,
            "answer": answers[0] if answers else "",
        }
        # Only data with conversations has the key: single-turn rows stay as they always were.
        if record["conversation"] is not None:
            row["conversation"] = record["conversation"]
        return row

    def _prompt_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One row per prompt (a prompt's accepted answers merged over its records)."""
        rows: dict[str, dict[str, Any]] = {}
        for record in records:
            row = rows.setdefault(record["prompt"], self._row(record))
            for answer in record["answers"]:
                if answer not in row["answers"]:
                    row["answers"].append(answer)
            row["answer"] = row["answers"][0] if row["answers"] else ""
        return list(rows.values())

    def build_splits(self) -> dict[str, Dataset]:
        """sft (rows with a demonstration), rl, dev, test and eval_rl, by prompt."""
        # datasets costs about a second of CPU at import: only for task=dataset.
        from datasets import Dataset

        data, size = self.data, self.config.eval_size
        sft = [self._row(r) for r in data.rows("sft") if r["response"]]
        rl_records = data.rows("rl") + (data.rows("sft") if self.config.rl_includes_sft else [])
        rl = self._prompt_rows(rl_records)
        splits = {"sft": sft, "rl": rl, "rl_eval": rl[:size]}
        for name in ("dev", "test"):
            splits[name] = self._prompt_rows(data.rows(name))[:size]
        empty: dict[str, list] = {"prompt": [], "response": [], "answers": [], "answer": []}
        if any(r["conversation"] is not None for r in data.records):
            empty["conversation"] = []
        return {
            name: Dataset.from_list(rows) if rows else Dataset.from_dict(empty)
            for name, rows in splits.items()
        }

    def input_files(self) -> list[Path]:
        """The data file(s): their contents, not only their names, key the cached stages."""
        path = self.data.path
        return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())

    def vocabulary(self) -> list[str]:
        """Every word of every prompt, response, answer and ranked response (built-in model)."""
        words: dict[str, None] = {}
        for record in self.data.records:
            # A conversation as a plain tokenizer reads it: its role lines included.
            prompt = record["prompt"]
            if record["conversation"] is not None:
                prompt = plain_prompt(record["conversation"])
            texts = [prompt, record["response"], *record["answers"]]
            if record["ranked"] is not None:
                texts += record["ranked"][0]
            for text in texts:
                words.update(dict.fromkeys(text.split()))
        if self.abstention:
            words.update(dict.fromkeys(self.abstention.split()))
        return list(words)

    def judge(self, row: dict[str, Any], response: str) -> str:
        """``correct`` if the response is an accepted answer, ``abstain`` if it is the
        abstention phrase (both compared as :func:`alignbench.normalize_answer` text)."""
        if not row.get("answers"):
            raise NoGoldAnswer(
                f"{self.data.path}: the prompt {row['prompt'][:60]!r} has no gold answer — a rule "
                "reward needs task.columns.answer=<column>; use reward=rm otherwise"
            )
        text = normalize_answer(response)
        if text in {normalize_answer(a) for a in row["answers"]}:
            return CORRECT
        if self.abstention and text == normalize_answer(self.abstention):
            return ABSTAIN
        return WRONG

    def missing_gold(self, splits: tuple[str, ...] | None = None) -> str | None:
        """The prompts of ``splits`` (None: the RL and evaluation prompts, what a reward
        scores) without a gold answer, with the fix; None when each has one."""
        path = self.data.path
        if not any(r["answers"] for r in self.data.records):
            return (
                f"{path} has no gold answers (no answer column, or every cell empty) — map "
                "them with task.columns.answer=<column>"
            )
        names = splits if splits is not None else ("rl", *self.eval_sets.values())
        scored = {prompt for name in names for prompt in self.splits[name]["prompt"]}
        gold = {r["prompt"] for r in self.data.records if r["answers"]}
        lacking = [r for r in self.data.records if r["prompt"] in scored - gold]
        if not lacking:
            return None
        count = len({r["prompt"] for r in lacking})
        which = (
            "RL and evaluation"
            if splits is None
            else " and ".join({"rl": "RL"}.get(name, name) for name in splits)
        )
        return (
            f"{count} of the {len(scored)} {which} prompts of {path} have none (the "
            f"first: {lacking[0]['where'].removeprefix(f'{path}: ')}) — give each an answer "
            "(task.columns.answer), or put them in the sft split with a split column (and "
            "task.rl_includes_sft=false)"
        )

    def gold_utility(self, row: dict[str, Any], response: str) -> float | None:
        """1 for an accepted answer, 0 for the abstention phrase, -1 otherwise; None without
        a gold answer (then simulated annotators cannot rank: use feedback=dataset)."""
        if not row.get("answers"):
            return None
        return {CORRECT: 1.0, ABSTAIN: 0.0}.get(self.judge(row, response), -1.0)

    def probe_responses(self, row: dict[str, Any]) -> list[str]:
        """The answer, the abstention phrase (if any) and another prompt's answer (a wrong one)."""
        if not row.get("answers"):
            return []
        accepted = {normalize_answer(a) for a in row["answers"]}
        pool = sorted(
            {r["answer"] for r in self.splits[self.probe_split].to_list() if r["answer"]}
            - set(row["answers"])
        )
        pool = [a for a in pool if normalize_answer(a) not in accepted]
        if not pool:
            return []
        wrong = pool[zlib.crc32(row["prompt"].encode()) % len(pool)]
        return [row["answers"][0], *([self.abstention] if self.abstention else []), wrong]

    def metrics(self, rows: list[dict[str, Any]], responses: list[str]) -> dict[str, float]:
        """Length in words; accuracy / abstention / wrong over the rows with a gold answer."""
        out = {"length": sum(len(r.split()) for r in responses) / max(1, len(responses))}
        judged = [
            self.judge(row, r) for row, r in zip(rows, responses, strict=True) if row["answers"]
        ]
        if judged:
            out["accuracy"] = judged.count(CORRECT) / len(judged)
            out["wrong"] = judged.count(WRONG) / len(judged)
            if self.abstention:
                out["abstain"] = judged.count(ABSTAIN) / len(judged)
        elif self.abstention:
            phrase = normalize_answer(self.abstention)
            out["abstain"] = sum(normalize_answer(r) == phrase for r in responses) / max(
                1, len(responses)
            )
        return out

    def preference_groups(self) -> list[Group]:
        """Every chosen/rejected pair and ranking of the training rows (never dev or test)."""
        training = [r for r in self.data.records if self.data.split_of[r["prompt"]] in SPLITS[:2]]
        groups = []
        for record in training:
            if record["ranked"] is None:
                continue
            row = self._row(record)
            texts, preference = record["ranked"]
            gold = [self.gold_utility(row, t) for t in texts]
            groups.append(
                Group(
                    row=row,
                    responses=list(texts),
                    gold=None if None in gold else gold,
                    preference=list(preference),
                    extras={"where": record["where"]},
                )
            )
        return groups


# -- preferences as stage-2 feedback -------------------------------------------------------------


@dataclass
class DatasetFeedbackConfig(FeedbackConfig):
    """The task's own chosen/rejected pairs and rankings (``task=dataset`` only)."""

    def validate(self) -> None:
        """The data's rankings are fixed: no one ranks an online round's new responses."""
        if self.rounds:
            raise ConfigError(
                f"feedback=dataset with feedback.rounds={self.rounds} — the data's rankings "
                "cannot rank new responses: set feedback.rounds=0, or use feedback=page to rank "
                "online rounds on the ranking page"
            )


class DatasetFeedback(FeedbackSource):
    """Ranked groups from the preference columns of ``task=dataset``: nothing is sampled."""

    def load_groups(self) -> list[Group]:
        """Every pair and ranking of the task's training rows."""
        if not isinstance(self.task, DatasetTask):
            raise DataError(
                "feedback=dataset reads the preference columns of task=dataset — use "
                "feedback=file for a rankings file with another task"
            )
        groups = self.task.preference_groups()
        if not groups:
            raise DataError(
                f"{self.task.data.path}: no preference data in the training rows — map "
                "task.columns.chosen/rejected or responses/ranking, or use feedback=simulated "
                "(it needs gold answers)"
            )
        return groups

    def rank(self, groups: list[Group], rng: np.random.Generator) -> list[list[float] | None]:
        """A file has no one to ask about new groups: online rounds need a simulated source."""
        raise DataError("feedback=dataset cannot rank new responses — set feedback.rounds=0")


# -- a length reward -----------------------------------------------------------------------------


@dataclass
class LengthConfig(RewardConfig):
    """``-per_word * |words - target|``: the closer to ``target`` words, the better (0 best)."""

    target: int = 8
    per_word: float = 0.1


class LengthReward(Reward):
    """A rule reward on response length in words, for any task (a control without content)."""

    config: LengthConfig

    @classmethod
    def model_roles(cls, config: RewardConfig) -> frozenset[str]:
        """No model for ``placement.reward`` to move: a rule."""
        return frozenset()

    def score(self, rows: list[dict[str, Any]], responses: list[str]) -> list[float]:
        """``-per_word * |words - target|`` of each response."""
        c = self.config
        return [-c.per_word * abs(len(r.split()) - c.target) for r in responses]


@alignbench.hookimpl
def alignbench_register_tasks(register: alignbench.Register) -> None:
    """Register the ``dataset`` task."""
    register("dataset", DatasetTask, DatasetConfig)


@alignbench.hookimpl
def alignbench_register_feedback(register: alignbench.Register) -> None:
    """Register ``dataset`` feedback (the task's own preference data)."""
    register("dataset", DatasetFeedback, DatasetFeedbackConfig)


@alignbench.hookimpl
def alignbench_register_rewards(register: alignbench.Register) -> None:
    """Register the ``length`` reward."""
    register("length", LengthReward, LengthConfig)
