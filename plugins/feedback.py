"""Built-in feedback sources: simulated annotators, a file of rankings written by people, and a
person on the ranking page during online rounds (``page``).

Simulated annotators compare every pair of a group by the task's hidden gold utility, with the
imperfections of real feedback as knobs:

* ``bt_temperature``: comparisons are Bradley-Terry draws, ``P(i > j) = sigmoid((u_i - u_j) / T)``
  (0 = always the better one; ties broken by a coin);
* ``error_rate``: each comparison is flipped with this probability (0.5 = labels at chance);
* ``annotators`` / ``annotator_bias``: each annotator perceives ``u + b * words(response)`` with
  their own ``b ~ N(0, annotator_bias)`` (some like long answers, some short), and the
  annotators' rankings are aggregated by ``mean_rank``, pairwise ``majority``, or a
  reliability-aware Dawid-Skene model (``dawid_skene``, :mod:`alignbench.crowd`);
* ``annotator_noise`` / ``annotator_length_bias``: a crowd of unequal annotators, one error rate
  and one length bias each (lists; their length is the number of annotators), and
  ``annotators_per_group`` of them (drawn at random) label each group — so the benefit of
  reliability-aware aggregation can be measured;
* ``unlabelled_share``: this share of groups comes back without a label (sparse feedback);
* ``allow_ties``: equally good responses may be called a tie (only when ``bt_temperature`` is 0).

An annotator's ranking of a group orders responses by comparisons won (Copeland).

``page`` trains stage 2 on a rankings file like ``file``, and hands each online round's groups to
a person on the ranking page: a deferred source (``submit`` at the requesting step, ``collect``
at the due step; the files and their semantics: :mod:`alignbench.label.online`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import alignbench
from alignbench import (
    ConfigError,
    DataError,
    FeedbackConfig,
    FeedbackSource,
    Group,
    OnlineRequests,
    distributed,
    input_path,
    ranking_to_preference,
)


@dataclass
class SimulatedConfig(FeedbackConfig):
    """Simulated annotators who rank K responses per prompt by the task's hidden gold utility,
    imperfectly (stage 2, the reward model, when reward=rm); the imperfections are knobs."""

    # Bradley-Terry noise on each comparison; 0 = always the better response.
    bt_temperature: float = 0.0
    # Each comparison flipped with this probability; 0.5 = labels at chance.
    error_rate: float = 0.0
    # Several annotators with their own biases, each perceiving gold + b * words with
    # b ~ N(0, annotator_bias).
    annotators: int = 1
    annotator_bias: float = 0.0
    # mean_rank | majority (pairwise vote) | dawid_skene (reliability-aware, crowd-kit).
    aggregate: str = field(default="mean_rank", metadata={"choices": alignbench.crowd.AGGREGATES})
    # A crowd of unequal annotators: each one's error rate (replacing error_rate) and length
    # bias (replacing the N(0, annotator_bias) draw); a list's length is the number of annotators.
    annotator_noise: list[float] = field(default_factory=list)
    annotator_length_bias: list[float] = field(default_factory=list)
    # Annotators (drawn at random) who label each group; 0 = every annotator labels every group.
    annotators_per_group: int = 0
    # Share of groups that come back without a label (sparse feedback).
    unlabelled_share: float = 0.0
    # Annotators may call two equally good responses a tie (no pair is trained on); without it
    # a tie is broken by a coin, which teaches a reward model noise.
    allow_ties: bool = True

    def crowd_size(self) -> int:
        """How many annotators: ``annotators``, or the length of the per-annotator lists."""
        return max(self.annotators, len(self.annotator_noise), len(self.annotator_length_bias))

    def validate(self) -> None:
        """Per-annotator lists agree in length and hold rates in [0, 1]; a panel fits the crowd."""
        lengths = {len(x) for x in (self.annotator_noise, self.annotator_length_bias) if x}
        size = self.crowd_size()
        if len(lengths) > 1 or (lengths and self.annotators not in (1, *lengths)):
            raise alignbench.ConfigError(
                f"feedback.annotator_noise ({len(self.annotator_noise)} values), "
                f"annotator_length_bias ({len(self.annotator_length_bias)}) and annotators "
                f"({self.annotators}) disagree on the number of annotators — give one value per "
                "annotator in each list (and leave annotators at 1)"
            )
        if not all(0 <= x <= 1 for x in self.annotator_noise):
            raise alignbench.ConfigError(
                f"feedback.annotator_noise={list(self.annotator_noise)} — each error rate must be "
                "in [0, 1]"
            )
        if not all(math.isfinite(x) for x in self.annotator_length_bias):
            raise alignbench.ConfigError("feedback.annotator_length_bias must be finite numbers")
        if not 0 <= self.annotators_per_group <= size:
            raise alignbench.ConfigError(
                f"feedback.annotators_per_group={self.annotators_per_group} — must be in "
                f"[0, {size}] (0 = every annotator labels every group)"
            )


class SimulatedAnnotators(FeedbackSource):
    """Rank groups by gold utility through noisy, biased, sometimes absent annotators."""

    config: SimulatedConfig
    needs_gold = True

    def __init__(self, config: SimulatedConfig, task: alignbench.Task) -> None:
        super().__init__(config, task)
        if config.aggregate not in alignbench.crowd.AGGREGATES:
            raise alignbench.ConfigError(
                f"feedback.aggregate={config.aggregate!r} — use mean_rank or majority, or a "
                "reliability-aware dawid_skene"
            )
        if not 0 <= config.error_rate <= 1 or not 0 <= config.unlabelled_share < 1:
            raise alignbench.ConfigError(
                "feedback.error_rate must be in [0, 1] and feedback.unlabelled_share in [0, 1)"
            )
        config.validate()
        size = config.crowd_size()
        rng = np.random.default_rng(config.seed + 7919)
        self.biases = rng.normal(0.0, config.annotator_bias, size=max(1, config.annotators))
        if config.annotator_length_bias:
            self.biases = np.asarray(config.annotator_length_bias, dtype=float)
        elif len(self.biases) < size:  # the crowd's size comes from annotator_noise
            self.biases = np.zeros(size)
        self.error_rates = (
            np.asarray(config.annotator_noise, dtype=float)
            if config.annotator_noise
            else np.full(len(self.biases), config.error_rate)
        )
        # Every judgement so far (groups numbered across calls) and the last estimated
        # reliabilities: what statistics() reports.
        self.judgements: list[alignbench.crowd.Judgement] = []
        self.reliability: dict[str, float] = {}
        self.groups_seen = 0

    def _wins(
        self, utilities: np.ndarray, rng: np.random.Generator, error_rate: float
    ) -> np.ndarray:
        """``wins[i, j] = 1`` when this annotator prefers response i to response j."""
        k, c = len(utilities), self.config
        wins = np.zeros((k, k))
        for i in range(k):
            for j in range(i + 1, k):
                gap = utilities[i] - utilities[j]
                if c.bt_temperature > 0:
                    i_better = rng.random() < 1.0 / (1.0 + math.exp(-gap / c.bt_temperature))
                elif gap == 0 and c.allow_ties:
                    wins[i, j] = wins[j, i] = 0.5
                    continue
                else:
                    i_better = gap > 0 or (gap == 0 and rng.random() < 0.5)
                if rng.random() < error_rate:
                    i_better = not i_better
                wins[i, j], wins[j, i] = float(i_better), float(not i_better)
        return wins

    def rank(self, groups: list[Group], rng: np.random.Generator) -> list[list[float] | None]:
        """A preference per group (comparisons won, over annotators); None if unlabelled."""
        c = self.config
        out: list[list[float] | None] = []
        panels: list[list[alignbench.crowd.Judgement]] = []
        for number, group in enumerate(groups):
            if group.gold is None:
                raise DataError(
                    "simulated feedback needs the task's gold utility — this task has none; "
                    "use feedback=file"
                )
            if rng.random() < c.unlabelled_share:
                out.append(None)
                panels.append([])
                continue
            lengths = np.array([len(r.split()) for r in group.responses], dtype=float)
            gold = np.asarray(group.gold, dtype=float)
            panel = range(len(self.biases))
            if c.annotators_per_group:
                panel = sorted(rng.choice(len(self.biases), c.annotators_per_group, replace=False))
            judgements = [
                alignbench.crowd.Judgement(
                    number,
                    f"a{a}",
                    self._wins(gold + self.biases[a] * lengths, rng, self.error_rates[a]),
                )
                for a in panel
            ]
            panels.append(judgements)
            if c.aggregate == "majority":
                out.append(alignbench.crowd.majority(judgements, rng))
            elif c.aggregate == "mean_rank":
                out.append(alignbench.crowd.mean_rank(judgements))
            else:  # reliability-aware: fitted on every group of this call at once, below
                out.append([])
        judged = [j for panel in panels for j in panel]
        if c.aggregate in alignbench.crowd.RELIABILITY_AWARE:
            sizes = [len(g.responses) for g in groups]
            voted, self.reliability = alignbench.crowd.reliability_vote(
                judged, sizes, c.aggregate, rng
            )
            out = [None if pref is None else voted[i] for i, pref in enumerate(out)]
        for judgement in judged:  # numbered across calls, for the crowd statistics
            judgement.group += self.groups_seen
        self.judgements += judged
        self.groups_seen += len(groups)
        return out

    def statistics(self) -> dict[str, float]:
        """Agreement of the annotators, groups each labelled, reliabilities (several annotators)."""
        if len(self.biases) < 2:
            return {}
        return alignbench.crowd.crowd_statistics(self.judgements, self.reliability)


@dataclass
class FileConfig(FeedbackConfig):
    """Rankings written by people, one JSON object per line (schema in the README)."""

    # Its contents go into the job's fingerprint (metadata input): other rankings, another job.
    path: str = field(default="", metadata={"input": True})

    def validate(self) -> None:
        """A file has no one to rank an online round's new responses."""
        if self.rounds:
            raise ConfigError(
                f"feedback=file with feedback.rounds={self.rounds} — a file cannot rank new "
                "responses: set feedback.rounds=0, or use feedback=page to rank online rounds "
                "on the ranking page"
            )


class FileFeedback(FeedbackSource):
    """Reads ranked groups from a JSONL file; any malformed line stops everything, naming it."""

    config: FileConfig

    def __init__(self, config: FileConfig, task: alignbench.Task) -> None:
        super().__init__(config, task)
        config.validate()
        # A relative path is read from the folder the command was started from: the same file
        # whose content the stage-2 cache key hashes (input_files).
        self.path = input_path(config.path) if config.path else None

    def input_files(self) -> list[Path]:
        """The rankings file: its content, not only its name, is part of the stage-2 cache key."""
        return [self.path] if self.path is not None else []

    def load_groups(self) -> list[Group]:
        """Every group of the file, validated before any is used."""
        path = self.path
        if path is None or not path.is_file():
            raise DataError(
                f"feedback.path={self.config.path!r}: no such file — give a JSONL file of rankings"
            )
        by_prompt = {
            row["prompt"]: row for split in self.task.splits.values() for row in split.to_list()
        }
        groups = []
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte {exc.start} of the line) — save the "
                    "file as UTF-8"
                ) from None
            if not line.strip():
                continue
            groups.append(self._parse(path, number, line, by_prompt))
        if not groups:
            raise DataError(f"{path}: no rankings in the file — it is empty")
        return groups

    def _parse(self, path: Path, number: int, line: str, by_prompt: dict) -> Group:
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg}) — fix the line") from None
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a JSON object with prompt, responses, ranking")
        prompt, responses, ranking = item.get("prompt"), item.get("responses"), item.get("ranking")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string")
        if (
            not isinstance(responses, list)
            or len(responses) < 2
            or not all(isinstance(r, str) for r in responses)
        ):
            raise DataError(f"{where}: 'responses' must be a list of at least 2 strings")
        # Whole numbers only: 1.0 == 1 in Python would let [1.0, 0.0] through, and nested lists
        # would sort without complaint.
        if (
            not isinstance(ranking, list)
            or not all(type(i) is int for i in ranking)
            or sorted(ranking) != list(range(len(responses)))
        ):
            raise DataError(
                f"{where}: 'ranking' must list every response index once, best first "
                f"(a permutation of 0..{len(responses) - 1})"
            )
        if prompt not in by_prompt and any("conversation" in r for r in by_prompt.values()):
            # A bare row would lose the conversation (and task.system_prompt) the policy is
            # given: the reward model would learn on other prompts than RL scores.
            raise DataError(
                f"{where}: prompt {prompt[:60]!r} is none of the task's prompts, whose rows are "
                "conversations (messages, a system column or task.system_prompt) — use the "
                "prompt as the task writes it (its transcript in results), or drop the line"
            )
        row = by_prompt.get(prompt, {"prompt": prompt})
        gold = None
        if prompt in by_prompt:
            gold = [self.task.gold_utility(row, r) for r in responses]
            gold = None if any(g is None for g in gold) else gold
        return Group(
            row=row,
            responses=responses,
            gold=gold,
            preference=ranking_to_preference(ranking),
            extras={"where": where},
        )

    def rank(self, groups: list[Group], rng: np.random.Generator) -> list[list[float] | None]:
        """A file has no one to ask about new groups (online rounds: simulated or page)."""
        raise DataError(
            "feedback=file cannot rank new responses — set feedback.rounds=0, or use "
            "feedback=page to rank online rounds on the ranking page"
        )


@dataclass
class PageConfig(FileConfig):
    """Stage 2 from a rankings file (``path``, as ``file``); online rounds ranked by a person on the
    ranking page, their labels due ``delay`` steps after the request."""

    # At a due step, wait up to this many seconds for groups still unranked (reading the rankings
    # file every poll_s); 0 = do not wait: unranked groups are dropped (feedback/unlabelled).
    wait_s: float = 0.0
    poll_s: float = 1.0
    # The rankings file the page writes for online rounds; empty = <job>/feedback/rankings.jsonl.
    # Never stage 2's `path`: stage 2's cache key hashes that file's content.
    rankings: str = ""

    def validate(self) -> None:
        """Online rounds are what this source is for; their selection needs no labels."""
        if self.rounds < 1:
            raise ConfigError(
                f"feedback=page with feedback.rounds={self.rounds} — the page ranks online "
                "rounds: set feedback.rounds >= 1 (or use feedback=file for stage 2 alone)"
            )
        if str(getattr(self.selection, "value", self.selection)) == "uncertainty":
            raise ConfigError(
                "feedback.selection=uncertainty needs labels while it chooses groups, which a "
                "person on the page gives later — use feedback.selection=random or diversity"
            )
        if not self.path:
            raise ConfigError(
                "feedback=page needs feedback.path, the rankings file stage 2 trains on (as "
                "feedback=file) — give feedback.path=rankings.jsonl"
            )
        if not (math.isfinite(self.wait_s) and self.wait_s >= 0):
            raise ConfigError(f"feedback.wait_s={self.wait_s} — must be a number of seconds >= 0")
        if not (math.isfinite(self.poll_s) and self.poll_s > 0):
            raise ConfigError(f"feedback.poll_s={self.poll_s} — must be a number of seconds > 0")
        if self.rankings and input_path(self.rankings) == input_path(self.path):
            raise ConfigError(
                f"feedback.rankings={self.rankings!r} is stage 2's feedback.path — give the "
                "online rankings their own file (or leave it empty: <job>/feedback/rankings.jsonl)"
            )
        processes = distributed.world_size()
        limit = distributed.wait_timeout_s() if processes > 1 else math.inf
        if self.wait_s >= limit:
            # Rank 0 waits for the page while the other ranks wait for rank 0, up to the
            # waiting group's timeout (alignbench.distributed.wait_timeout_s).
            raise ConfigError(
                f"feedback.wait_s={self.wait_s:g} on {processes} processes — the other ranks "
                f"wait for rank 0 at most {limit:g} s ({distributed.WAIT_TIMEOUT_ENV}): give "
                f"feedback.wait_s < {limit:g}, or raise {distributed.WAIT_TIMEOUT_ENV}"
            )
        if not self.delay and not self.wait_s:
            # Requested and collected in the same instant: every group would be dropped.
            raise ConfigError(
                "feedback=page with feedback.delay=0 and feedback.wait_s=0 — no one can rank a "
                "group between its request and its collection: give feedback.delay >= 1 (steps) "
                "or feedback.wait_s > 0 (seconds)"
            )


class PageFeedback(FileFeedback):
    """Stage 2 from a rankings file; online rounds go to the ranking page and come back at their
    due step (``python -m alignbench.label <job folder> --follow``)."""

    config: PageConfig
    deferred = True
    online_keys = ("wait_s", "poll_s", "rankings")

    def __init__(self, config: PageConfig, task: alignbench.Task) -> None:
        super().__init__(config, task)  # validates the config (PageConfig.validate)
        self.exchange: OnlineRequests | None = None

    def open(self, folder: Path) -> None:
        """The job's ``feedback/`` folder holds the requests, and the rankings unless
        ``feedback.rankings`` names another file."""
        rankings = input_path(self.config.rankings) if self.config.rankings else None
        self.exchange = OnlineRequests.of_job(folder, rankings)

    def _opened(self) -> OnlineRequests:
        if self.exchange is None:
            raise TypeError("PageFeedback.open(job folder) comes before online rounds")
        return self.exchange

    def submit(self, groups: list[Group], step: int, due: int) -> None:
        """Append the round's groups to ``<job>/feedback/requests.jsonl`` (once per id)."""
        self._opened().submit(groups, step, due)

    def collect(self, groups: list[Group], step: int) -> list[list[float] | None]:
        """The page's rankings of the due groups, after waiting up to ``wait_s`` for them."""
        return self._opened().collect(groups, step, self.config.wait_s, self.config.poll_s)

    def rank(self, groups: list[Group], rng: np.random.Generator) -> list[list[float] | None]:
        """Online groups are submitted and collected, never ranked at once."""
        raise DataError("feedback=page ranks online groups later, on the page (submit/collect)")


@alignbench.hookimpl
def alignbench_register_feedback(register: alignbench.Register) -> None:
    """Register ``simulated``, ``file`` and ``page``."""
    register("simulated", SimulatedAnnotators, SimulatedConfig)
    register("file", FileFeedback, FileConfig)
    register("page", PageFeedback, PageConfig)
