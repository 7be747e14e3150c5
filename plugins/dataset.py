"""The ``dataset`` task: your own prompts, answers, demonstrations and preferences from a file.

``task=dataset task.path=<file or folder>`` reads a JSONL / JSON, CSV or parquet file (through
``datasets.load_dataset``, which caches it as Arrow) or a folder written by
``Dataset.save_to_disk`` (``datasets.load_from_disk``). ``task.columns.<role>=<column>`` says
which column holds what; a role left unset uses the column of its own name when the data has
one. The roles:

* ``prompt``: the question or instruction (one user turn);
* ``messages``: instead of a prompt, a conversation: a list of ``{"role", "content"}`` messages
  (``system`` / ``user`` / ``assistant``) ending with the user's turn, which the policy answers
  (a CSV cell holds the list as JSON text); a row without one reads the prompt column;
* ``system``: a system prompt for the row (unless its messages have their own);
* ``response``: a demonstration (SFT trains on it);
* ``answer``: the gold answer, a string or a list of accepted strings (rule rewards, accuracy);
* ``chosen`` / ``rejected``: a preference pair; ``responses`` / ``ranking``: K responses and
  their indices best first (``feedback=dataset`` trains the reward model and DPO on them);
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
        if named == "" and role != "prompt":
            # Off: a column named like the role is not read (a `messages` or `system` column
            # kept in a file for another purpose, say).
            continue
        if named is None:
            if role in present:
                resolved[role] = role
            continue
        # Conversations need no prompt column (the default name, left as it is).
        if role == "prompt" and named == "prompt" and named not in present and has_messages:
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


def _text(value: Any) -> str:
    """A cell as stripped text ('' for a missing cell)."""
    return value.strip() if isinstance(value, str) else ""


def check_messages(where: str, column: str, value: Any) -> list[dict[str, str]]:
    """A ``messages`` cell as checked ``{role, content}`` messages (contents stripped): a list
    (or its JSON text) of system / user / assistant messages, a system message only first,
    ending with the user's turn."""
    fix = "give a list of {role, content} messages ending with the user's turn"
    if isinstance(value, str):
        try:  # a CSV cell holds the list as JSON text
            value = json.loads(value)
        except ValueError:
            raise DataError(
                f"{where}: column {column!r} (messages) is text, not a list of messages — {fix}"
            ) from None
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else f"not a list ({value!r:.40})"
        raise DataError(f"{where}: column {column!r} (messages) is {what} — {fix}")
    messages = []
    for number, message in enumerate(value, 1):
        at = f"{where}: column {column!r} (messages), message {number}"
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise DataError(f'{at} is not {{"role": ..., "content": ...}} with text values — {fix}')
        role, content = message["role"], message["content"].strip()
        if role not in MESSAGE_ROLES:
            raise DataError(f"{at} has role {role!r} — use one of: {', '.join(MESSAGE_ROLES)}")
        if not content:
            raise DataError(f"{at} ({role}) has empty content — write the message or drop it")
        if role == "system" and number > 1:
            raise DataError(f"{at} is a system message after the first — move it to the start")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise DataError(
            f"{where}: column {column!r} (messages) ends with the {messages[-1]['role']}'s "
            "message — a prompt ends with the user's turn (the answer goes in the response, or "
            "chosen / rejected, column)"
        )
    return messages


def check_prompt(
    where: str, row: dict[str, Any], cols: dict[str, str], system_prompt: str = ""
) -> tuple[str, list[dict[str, str]] | None]:
    """The row's prompt as ``(text, conversation)``: its messages, else its prompt as one user
    turn, its system prompt first; ``text`` names it in splits and results (one user message:
    its content; else :func:`alignbench.transcript`, without the task-wide ``system_prompt``).
    ``conversation`` is None when the data has no conversations (no messages or system column,
    no ``system_prompt``): the prompt is then one user turn, as always."""
    value = row.get(cols["messages"]) if "messages" in cols else None
    if value is not None:
        conversation = check_messages(where, cols["messages"], value)
    else:
        prompt = row.get(cols["prompt"]) if "prompt" in cols else None
        if not isinstance(prompt, str) or not prompt.strip():
            column = f"column {cols['prompt']!r} (prompt)" if "prompt" in cols else "no prompt"
            also = f" and column {cols['messages']!r} (messages)" if "messages" in cols else ""
            raise DataError(f"{where}: {column}{also} is missing or empty")
        conversation = [{"role": "user", "content": prompt.strip()}]
    if "system" in cols:
        system = row.get(cols["system"])
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: column {cols['system']!r} (system) must be text")
        if system and system.strip() and conversation[0]["role"] != "system":
            conversation = [{"role": "system", "content": system.strip()}, *conversation]
    text = conversation[0]["content"] if len(conversation) == 1 else transcript(conversation)
    if system_prompt.strip() and conversation[0]["role"] != "system":
        conversation = [{"role": "system", "content": system_prompt.strip()}, *conversation]
    chat = "messages" in cols or "system" in cols or bool(system_prompt.strip())
    return text, conversation if chat else None


def check_row(
    where: str, row: dict[str, Any], cols: dict[str, str], system_prompt: str = ""
) -> dict[str, Any]:
    """One record as ``{prompt, conversation, response, answers, ranked, split}``, checked."""
    prompt, conversation = check_prompt(where, row, cols, system_prompt)
    out: dict[str, Any] = {
        "prompt": prompt,
        "conversation": conversation,
        "answers": [],
        "ranked": None,
        "split": None,
        "where": where,
    }
    answer = row.get(cols["answer"]) if "answer" in cols else None
    if isinstance(answer, str):
        out["answers"] = [answer.strip()] if answer.strip() else []
    elif isinstance(answer, list) and all(isinstance(a, str) for a in answer):
        out["answers"] = [a.strip() for a in answer if a.strip()]
    elif answer is not None:
        raise DataError(
            f"{where}: column {cols['answer']!r} (answer) must be a string or a list of strings"
        )
    if "chosen" in cols:
        chosen, rejected = _text(row[cols["chosen"]]), _text(row[cols["rejected"]])
        if bool(chosen) != bool(rejected):
            lack = "rejected" if chosen else "chosen"
            raise DataError(f"{where}: column {cols[lack]!r} ({lack}) is missing or empty")
        if chosen:
            out["ranked"] = ([chosen, rejected], [1.0, 0.0])
    if "responses" in cols and row[cols["responses"]] is not None:
        responses, ranking = row[cols["responses"]], row[cols["ranking"]]
        if (
            not isinstance(responses, list)
            or len(responses) < 2
            or not all(isinstance(r, str) and r.strip() for r in responses)
        ):
            raise DataError(
                f"{where}: column {cols['responses']!r} (responses) must be a list of at least "
                "2 non-empty strings"
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
        out["ranked"] = ([r.strip() for r in responses], ranking_to_preference(ranking))
    demo = _text(row.get(cols["response"])) if "response" in cols else ""
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
