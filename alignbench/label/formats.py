"""Groups out to Label Studio and Argilla, and their exported labels back in as rankings.

File-based only (no server is contacted). What is written follows their documented formats:

* **Label Studio**, ``ranker`` interface: one task per group, ``{"data": {"group_id", "prompt",
  "items": [{"id": "response_1", "title": "Response 1", "body": ...}, ...]}}``, for a ``List`` +
  ``Ranker`` labelling config (written beside the tasks as ``<out>.label_config.xml``). An export
  of the project (JSON) has per task ``annotations[].result[]`` items of ``"type": "ranker"`` whose
  ``value.ranker`` is the item ids best first (a list, or ``{<tag name>: [ids]}``).
  ``pairwise`` interface (K = 2 only): ``{"data": {"group_id", "prompt", "answer1", "answer2"}}``
  for a ``Pairwise`` tag; its result is ``{"type": "pairwise", "value": {"selected": "left"}}``
  (left = answer1 is better). Cancelled annotations and tasks without one are left out.
* **Argilla** (v2 SDK): one record per group as ``Record.to_dict`` writes it, ``{"id",
  "fields": {"prompt", "response_1", ...}, "metadata": {...}, "responses": {}, ...}``, for a
  dataset with text fields ``prompt``, ``response_1..K`` and a ``RankingQuestion`` named
  ``ranking`` whose values are ``response_1..K``. An export (``dataset.records.to_json``) has per
  record ``responses.ranking[]`` = ``{"value": ["response_2", "response_1"], "user_id", "status"}``
  (best first; the server's form ``[{"value": ..., "rank": n}]`` is read too). Only submitted
  responses count; one with two responses at the same rank is a tie, which a ranking cannot
  hold, and is left out (counted).

Every imported label becomes one line of the rankings file ``feedback=file`` reads, with the
annotator (``completed_by`` / ``user_id``) and, from Label Studio, ``lead_time`` as ``seconds``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignbench.errors import DataError
from alignbench.label.groups import LabelGroup, group_id
from alignbench.label.store import check_ranking

FORMATS = ("labelstudio", "argilla")

#: The Label Studio labelling configs that the exported tasks are made for.
LABEL_STUDIO_CONFIGS = {
    "ranker": """<View>
  <Header value="Rank the responses, best first"/>
  <Text name="prompt" value="$prompt"/>
  <List name="responses" value="$items" title="Responses"/>
  <Ranker name="rank" toName="responses"/>
</View>
""",
    "pairwise": """<View>
  <Header value="Which response is better?"/>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="comparison" toName="answer1,answer2"/>
  <Text name="answer1" value="$answer1"/>
  <Text name="answer2" value="$answer2"/>
</View>
""",
}


def _item_id(index: int) -> str:
    return f"response_{index + 1}"


def _index(item_id: Any, k: int, where: str) -> int:
    """``response_3`` -> 2, checked against K."""
    text = str(item_id)
    if text.startswith("response_") and text[9:].isdigit() and 1 <= int(text[9:]) <= k:
        return int(text[9:]) - 1
    raise DataError(f"{where}: unknown response id {item_id!r} (expected response_1..response_{k})")


# -- export ------------------------------------------------------------------------------------


def to_label_studio(groups: list[LabelGroup], interface: str = "ranker") -> list[dict[str, Any]]:
    """Label Studio tasks (their import JSON) for the ``ranker`` or ``pairwise`` interface."""
    if interface not in LABEL_STUDIO_CONFIGS:
        raise DataError(f"--interface {interface!r} — use ranker or pairwise")
    tasks = []
    for g in groups:
        data: dict[str, Any] = {"group_id": g.id, "prompt": g.prompt}
        if interface == "pairwise":
            if len(g.responses) != 2:
                raise DataError(
                    f"group {g.id!r} has {len(g.responses)} responses — the pairwise interface "
                    "compares 2; use --interface ranker"
                )
            data["answer1"], data["answer2"] = g.responses
        else:
            data["items"] = [
                {"id": _item_id(i), "title": f"Response {i + 1}", "body": text}
                for i, text in enumerate(g.responses)
            ]
        tasks.append({"data": data})
    return tasks


def to_argilla(groups: list[LabelGroup]) -> list[dict[str, Any]]:
    """Argilla v2 records (``Record.to_dict`` form) for a ranking dataset; one K for all."""
    ks = sorted({len(g.responses) for g in groups})
    if len(ks) > 1:
        raise DataError(
            f"the groups have {' and '.join(map(str, ks))} responses — an Argilla ranking question "
            "has one set of options: export groups of one K"
        )
    return [
        {
            "id": g.id,
            "fields": {
                "prompt": g.prompt,
                **{_item_id(i): text for i, text in enumerate(g.responses)},
            },
            "metadata": {"group_id": g.id},
            "suggestions": {},
            "responses": {},
            "vectors": {},
        }
        for g in groups
    ]


def export_groups(
    groups: list[LabelGroup], fmt: str, out: Path, interface: str = "ranker"
) -> list[Path]:
    """Write the groups for ``fmt``; the files written (the tasks, and a config where needed)."""
    if fmt == "labelstudio":
        payload: list[dict[str, Any]] = to_label_studio(groups, interface)
    elif fmt == "argilla":
        payload = to_argilla(groups)
    else:
        raise DataError(f"--format {fmt!r} — use one of {', '.join(FORMATS)}")
    out.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    written = [out]
    if fmt == "labelstudio":
        config = out.with_name(f"{out.stem}.label_config.xml")
        config.write_text(LABEL_STUDIO_CONFIGS[interface], encoding="utf-8")
        written.append(config)
    return written


# -- import ------------------------------------------------------------------------------------


@dataclass
class Imported:
    """Rankings read from a tool's export, and what was left out and why."""

    rankings: list[dict[str, Any]] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)

    def leave_out(self, why: str) -> None:
        """Count one label (or task) that does not become a ranking."""
        self.left_out[why] = self.left_out.get(why, 0) + 1

    def add(
        self,
        prompt: str,
        responses: list[str],
        ranking: list[int],
        gid: Any,
        annotator: Any,
        seconds: Any = None,
    ) -> None:
        """One ranking line, in the format ``feedback=file`` reads."""
        line: dict[str, Any] = {
            "prompt": prompt,
            "responses": responses,
            "ranking": ranking,
            "group_id": str(gid) if gid is not None else group_id(prompt, responses),
            "annotator": "" if annotator is None else str(annotator),
        }
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            line["seconds"] = float(seconds)
        self.rankings.append(line)


def _load_json_list(path: Path) -> list[Any]:
    """A JSON list (or JSON lines) from ``path``; DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: no such file — give the tool's JSON export")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as first:
        try:  # JSON lines
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise DataError(
                f"{path}:{first.lineno}: not valid JSON ({first.msg}) — give the JSON export"
            ) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of tasks or records")
    return data


def _annotator(value: Any) -> Any:
    """Label Studio's ``completed_by``: an id, or an object with an email or id."""
    if isinstance(value, dict):
        return value.get("email") or value.get("id")
    return value


def _ranker_order(value: Any, k: int, where: str) -> list[int]:
    """Item ids best first from a ``ranker`` result's ``value.ranker``."""
    ranker = value.get("ranker") if isinstance(value, dict) else None
    if isinstance(ranker, dict):
        full = [ids for ids in ranker.values() if isinstance(ids, list) and len(ids) == k]
        if len(full) != 1:
            raise DataError(
                f"{where}: the ranker result sorts items into buckets, not one order — rank with "
                "the List + Ranker config that 'export' writes"
            )
        ranker = full[0]
    if not isinstance(ranker, list):
        raise DataError(f"{where}: a ranker result needs value.ranker, the item ids best first")
    try:
        return check_ranking([_index(i, k, where) for i in ranker], k)
    except DataError as exc:
        if str(exc).startswith(where):
            raise
        raise DataError(f"{where}: the ranker result does not order every response once") from None


def from_label_studio(path: Path) -> Imported:
    """Rankings from a Label Studio JSON export of tasks made by :func:`to_label_studio`."""
    out = Imported()
    for number, task in enumerate(_load_json_list(path), start=1):
        where = f"{path}: task {number}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise DataError(f"{where}: expected a task object with 'data'")
        data = task["data"]
        where = f"{path}: task {task.get('id', number)}"
        prompt = data.get("prompt")
        if isinstance(data.get("items"), list):
            items = data["items"]
            responses = [it.get("body") if isinstance(it, dict) else None for it in items]
            ids = [it.get("id") if isinstance(it, dict) else None for it in items]
            if ids != [_item_id(i) for i in range(len(items))]:
                raise DataError(f"{where}: items must have ids response_1..response_K in order")
        else:
            responses = [data.get("answer1"), data.get("answer2")]
        if not isinstance(prompt, str) or not all(isinstance(r, str) for r in responses):
            raise DataError(
                f"{where}: data needs 'prompt' and 'items' (or 'answer1'/'answer2') — export the "
                "tasks with 'python -m alignbench.label export'"
            )
        annotations = task.get("annotations") or []
        if not annotations:
            out.leave_out("task without annotation")
        for annotation in annotations:
            if annotation.get("was_cancelled"):
                out.leave_out("cancelled (skipped) annotation")
                continue
            results = [
                r for r in annotation.get("result") or [] if r.get("type") in ("ranker", "pairwise")
            ]
            if not results:
                out.leave_out("annotation without a ranker or pairwise result")
                continue
            result = results[0]
            if result["type"] == "pairwise":
                selected = (result.get("value") or {}).get("selected")
                if selected not in ("left", "right") or len(responses) != 2:
                    raise DataError(f"{where}: pairwise needs value.selected = left or right")
                ranking = [0, 1] if selected == "left" else [1, 0]
            else:
                ranking = _ranker_order(result.get("value"), len(responses), where)
            out.add(
                prompt,
                responses,
                ranking,
                data.get("group_id"),
                _annotator(annotation.get("completed_by")),
                annotation.get("lead_time"),
            )
    return out


def _argilla_order(value: Any, k: int, where: str) -> list[int] | None:
    """Response indices best first from a ranking response's value; None for a tie."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: a ranking response's value must be a list of options")
    if all(isinstance(v, dict) for v in value):
        if all("rank" in v for v in value):
            ranks = [v["rank"] for v in value]
            if len(set(ranks)) != len(ranks):
                return None
            value = sorted(value, key=lambda v: v["rank"])
        value = [v.get("value") for v in value]
    try:
        return check_ranking([_index(v, k, where) for v in value], k)
    except DataError as exc:
        if str(exc).startswith(where):
            raise
        raise DataError(f"{where}: the ranking does not order every response once") from None


def from_argilla(path: Path, question: str = "ranking") -> Imported:
    """Rankings from Argilla v2 records (``dataset.records.to_json``) made by :func:`to_argilla`."""
    out = Imported()
    for number, record in enumerate(_load_json_list(path), start=1):
        where = f"{path}: record {number}"
        if not isinstance(record, dict) or not isinstance(record.get("fields"), dict):
            raise DataError(f"{where}: expected a record object with 'fields'")
        fields = record["fields"]
        where = f"{path}: record {record.get('id', number)}"
        k = sum(1 for name in fields if str(name).startswith("response_"))
        prompt = fields.get("prompt")
        responses = [fields.get(_item_id(i)) for i in range(k)]
        if not isinstance(prompt, str) or k < 2 or not all(isinstance(r, str) for r in responses):
            raise DataError(
                f"{where}: fields need 'prompt' and response_1..response_K — export the records "
                "with 'python -m alignbench.label export --format argilla'"
            )
        answers = (record.get("responses") or {}).get(question) or []
        if not answers:
            out.leave_out("record without a response")
        for answer in answers:
            status = answer.get("status") or "submitted"
            if status != "submitted":
                out.leave_out(f"{status} response")
                continue
            ranking = _argilla_order(answer.get("value"), k, where)
            if ranking is None:
                out.leave_out("tie (two options at one rank)")
                continue
            gid = (record.get("metadata") or {}).get("group_id", record.get("id"))
            out.add(prompt, responses, ranking, gid, answer.get("user_id"))
    return out


def import_rankings(fmt: str, path: Path, question: str = "ranking") -> Imported:
    """Rankings from a Label Studio or Argilla export file."""
    if fmt == "labelstudio":
        return from_label_studio(path)
    if fmt == "argilla":
        return from_argilla(path, question)
    raise DataError(f"--format {fmt!r} — use one of {', '.join(FORMATS)}")
