"""In which order the page shows groups: the stage-2 selection strategies, applied to a person.

* ``random`` (default): a seeded shuffle (the same seed gives the same order on resume);
* ``file``: the order of the groups file;
* ``diversity`` (needs ``--model``): greedy k-center over the model trunk's embedding of each
  group, as ``feedback.selection=diversity`` (``_k_center`` / ``_embeddings``): far-apart groups
  first;
* ``uncertainty`` (needs ``--model``): a reward model on that trunk is trained on the labels made
  so far (this output file) every ``refit_every`` rankings, in a background thread, and the groups
  it is least sure about come first (``_confidence``, as ``feedback.selection=uncertainty``);
  until the first fit (at least 2 rankings) the order is random.

``--model`` is a Hugging Face folder the trunk is loaded from: a job's ``model/`` folder, a job
folder (its ``model/`` is used) or a stage-1 cache folder.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from alignbench.errors import ConfigError
from alignbench.feedback import Group
from alignbench.label.groups import LabelGroup

log = logging.getLogger(__name__)

ORDERS = ("random", "file", "diversity", "uncertainty")


def _as_groups(groups: list[LabelGroup]) -> list[Group]:
    return [Group(g.row or {"prompt": g.prompt}, g.responses) for g in groups]


def model_folder(path: Path) -> Path:
    """The Hugging Face folder named by ``--model`` (a job folder means its ``model/``)."""
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    raise ConfigError(
        f"--model {path}: no model here — give a job folder, its model/ folder or a stage-1 "
        "cache folder"
    )


class GroupOrder:
    """Keeps the groups in the order the chosen strategy prefers; ``ranked`` feeds uncertainty."""

    def __init__(
        self,
        groups: list[LabelGroup],
        order: str = "random",
        seed: int = 0,
        model: Path | None = None,
        refit_every: int = 10,
    ) -> None:
        if order not in ORDERS:
            raise ConfigError(f"--order {order!r} — use one of {', '.join(ORDERS)}")
        if order in ("diversity", "uncertainty") and model is None:
            raise ConfigError(
                f"--order {order} needs a model to embed or score groups: add --model <job folder>"
                " (or use --order random)"
            )
        self.groups = groups
        self.strategy = order
        self.refit_every = max(1, refit_every)
        self.seed = seed
        self._lock = threading.Lock()
        self._fitting: threading.Thread | None = None
        self._fitted_at = 0
        self.fits = 0
        rng = self._rng = np.random.default_rng(seed)
        if order == "file":
            self.order = list(range(len(groups)))
        else:
            self.order = [int(i) for i in rng.permutation(len(groups))]
        self._backbone: Any = None
        if model is not None and order in ("diversity", "uncertainty"):
            from alignbench.models import load_pretrained

            self._backbone, self.tokenizer = load_pretrained(model_folder(model))
        if order == "diversity" and groups:
            self.order = self._diversity(rng)

    def extend(self, groups: list[LabelGroup]) -> None:
        """Take in groups that appeared since (a followed run's new requests): after the others,
        in this strategy's order (diversity: the whole order again; uncertainty: as the next
        refit has it)."""
        with self._lock:
            start = len(self.groups)
            self.groups = self.groups + list(groups)
            new = list(range(start, len(self.groups)))
            if self.strategy == "random":
                new = [new[int(i)] for i in self._rng.permutation(len(new))]
            self.order = self.order + new
        if self.strategy == "diversity":
            order = self._diversity(self._rng)
            with self._lock:
                self.order = order

    def _fresh_model(self) -> Any:
        import copy

        import torch

        from alignbench.models import ScalarHeadModel

        torch.manual_seed(self.seed)
        return ScalarHeadModel(copy.deepcopy(self._backbone))

    def _diversity(self, rng: np.random.Generator) -> list[int]:
        from alignbench.reward_model import _embeddings, _k_center

        vectors = _embeddings(self._fresh_model(), self.tokenizer, _as_groups(self.groups))
        return _k_center(vectors, len(self.groups), rng)

    def ranked(self, labelled: list[tuple[LabelGroup, list[int]]]) -> None:
        """New rankings exist: refit the uncertainty model every ``refit_every`` of them."""
        if self.strategy != "uncertainty" or len(labelled) < 2:
            return
        if self._fitted_at and len(labelled) - self._fitted_at < self.refit_every:
            return
        if self._fitting is not None and self._fitting.is_alive():
            return
        self._fitted_at = len(labelled)
        self._fitting = threading.Thread(target=self._fit, args=(list(labelled),), daemon=True)
        self._fitting.start()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a refit under way (tests, and the end of the process)."""
        if self._fitting is not None:
            self._fitting.join(timeout)

    def _fit(self, labelled: list[tuple[LabelGroup, list[int]]]) -> None:
        from alignbench.config import RMStageConfig
        from alignbench.feedback import ranking_to_preference
        from alignbench.reward_model import _confidence, score_groups, train_reward_model

        train = [
            Group(g.row or {"prompt": g.prompt}, g.responses, preference=ranking_to_preference(r))
            for g, r in labelled
        ]
        model = self._fresh_model()
        cfg = RMStageConfig(epochs=5, patience=0, seed=self.seed)
        groups = list(self.groups)
        try:
            train_reward_model(model, self.tokenizer, train, cfg)
            scores = score_groups(model, self.tokenizer, _as_groups(groups))
        except Exception as exc:  # a failed refit keeps the old order; the page goes on
            log.warning("uncertainty order: refit failed (%s) — the order is unchanged", exc)
            return
        confidence = [_confidence(s) for s in scores]
        with self._lock:
            # Groups that appeared during the fit (extend) keep their places after the others.
            self.order = [int(i) for i in np.argsort(confidence, kind="stable")]
            self.order += list(range(len(scores), len(self.groups)))
            self.fits += 1

    def ordered(self) -> list[LabelGroup]:
        """The groups, most wanted first."""
        with self._lock:
            return [self.groups[i] for i in self.order]
