"""Command line of the ranking page and of the groups / label-tool files.

    python -m alignbench.label SOURCE --out rankings.jsonl [--annotator ID] [--order random|file|
        diversity|uncertainty] [--model DIR] [--port N]      # serve the ranking page
    python -m alignbench.label JOB --follow [--out FILE] [...]  # a running job's online rounds
    python -m alignbench.label export-groups SOURCE --out groups.jsonl
    python -m alignbench.label export-groups --sample [--count N] --out groups.jsonl [overrides]
    python -m alignbench.label export --format labelstudio|argilla SOURCE --out tasks.json
    python -m alignbench.label import --format labelstudio|argilla EXPORT --out rankings.jsonl

SOURCE is a groups file (JSONL), a job or sweep folder (the groups its reward-model stage
sampled) or a stage-2 cache folder. With ``--follow``, JOB is a job folder with ``feedback=page``
(or its ``feedback/requests.jsonl``): the page keeps picking up the groups its online rounds
request, soonest due first, and ``--out`` defaults to ``<job>/feedback/rankings.jsonl``, the file
the run reads (a job with ``feedback.rankings`` set needs ``--out`` with that file). Bad input
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from pathlib import Path

from alignbench.errors import AlignbenchError, ConfigError
from alignbench.label.formats import FORMATS, export_groups, import_rankings
from alignbench.label.groups import load_label_groups, sample_groups, write_groups
from alignbench.label.order import ORDERS

COMMANDS = ("export-groups", "export", "import")


def _fresh(out: Path) -> Path:
    """``out`` if nothing is there yet: these commands never overwrite a file."""
    if out.exists():
        raise ConfigError(f"--out {out} already exists — give a new file (nothing is overwritten)")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist — create it first")
    return out


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "annotator"


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise ConfigError(f"port {port} on {host} is in use — pass --port N") from None


def _job_rankings(requests: Path) -> str:
    """The ``feedback.rankings`` of the job whose requests file this is, from its recorded config
    (``<job>/.hydra/config.yaml``); empty when it reads ``<job>/feedback/rankings.jsonl``."""
    import yaml

    record = requests.parent.parent / ".hydra" / "config.yaml"
    if not record.is_file():
        return ""
    feedback = (yaml.safe_load(record.read_text()) or {}).get("feedback") or {}
    return str(feedback.get("rankings") or "")


def serve_main(argv: list[str]) -> int:
    """Serve the ranking page for SOURCE, writing to --out."""
    parser = argparse.ArgumentParser(
        prog="python -m alignbench.label",
        description="Rank groups of responses in a local web page; every label is appended to "
        "--out, the rankings file feedback=file reads. Other commands: " + ", ".join(COMMANDS),
    )
    parser.add_argument("source", type=Path, help="groups file (JSONL), job or sweep folder")
    parser.add_argument("--out", type=Path, help="rankings JSONL (resumed if any)")
    parser.add_argument(
        "--follow",
        action="store_true",
        help="SOURCE is a running job (or its feedback/requests.jsonl): show the groups its "
        "online rounds request as they come, soonest due first",
    )
    parser.add_argument("--annotator", default=_default_annotator(), help="who is labelling")
    parser.add_argument("--order", default="random", choices=ORDERS, help="order of the groups")
    parser.add_argument("--model", type=Path, help="job or model folder (diversity, uncertainty)")
    parser.add_argument("--refit-every", type=int, default=10, help="uncertainty: refit period")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random order")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    from alignbench.label.order import GroupOrder
    from alignbench.label.server import LabelSession, serve
    from alignbench.label.store import RankingStore

    follow = None
    if args.follow:
        from alignbench.label.online import RANKINGS, read_requests, requests_path

        follow = requests_path(args.source)
        if not follow.parent.is_dir():
            raise ConfigError(
                f"{args.source}: no feedback folder of a job with feedback=page here — start the "
                "job first, then the page on its folder"
            )
        groups = read_requests(follow)
        if args.out is None:
            named = _job_rankings(follow)
            if named:  # the run reads another file than the default: ranking here would be lost
                raise ConfigError(
                    f"{args.source}: the job reads its online rankings from feedback.rankings="
                    f"{named} — pass --out with that file"
                )
            args.out = follow.parent / RANKINGS
    elif args.out is None:  # as argparse says it: only --follow has a default
        parser.error("the following arguments are required: --out")
    else:
        groups = load_label_groups(args.source)
    store = RankingStore(args.out)
    store.acquire(owner=f"http://{args.host}:{args.port}/")
    try:
        _check_port(args.host, args.port)
        order = GroupOrder(groups, args.order, args.seed, args.model, args.refit_every)
        session = LabelSession(groups, store, order, args.annotator, follow)
    except BaseException:
        store.release()
        raise
    serve(session, args.host, args.port)
    return 0


def export_groups_main(argv: list[str]) -> int:
    """Write a groups file from a results folder, or sampled from the task's SFT model."""
    parser = argparse.ArgumentParser(prog="python -m alignbench.label export-groups")
    parser.add_argument("source", nargs="?", type=Path, help="job, sweep or stage-2 cache folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--sample", action="store_true", help="sample fresh groups from the stage-1 SFT model"
    )
    parser.add_argument("--count", type=int, help="--sample: how many groups (feedback.labels)")
    args, overrides = parser.parse_known_args(argv)
    out = _fresh(args.out)
    if args.sample:
        if args.source is not None and "=" in str(args.source):
            overrides.insert(0, str(args.source))
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        groups = sample_groups(overrides, args.count)
    elif args.source is None:
        raise ConfigError("give a job, sweep or stage-2 cache folder, or --sample")
    else:
        if overrides:
            raise ConfigError(
                f"unexpected arguments {' '.join(overrides)} — overrides need --sample"
            )
        groups = load_label_groups(args.source)
    write_groups(out, groups)
    print(f"wrote {len(groups)} groups to {out}", file=sys.stderr)
    return 0


def export_main(argv: list[str]) -> int:
    """Write groups as Label Studio tasks or Argilla records."""
    parser = argparse.ArgumentParser(prog="python -m alignbench.label export")
    parser.add_argument("source", type=Path, help="groups file, job or sweep folder")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--interface", default="ranker", choices=("ranker", "pairwise"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out = _fresh(args.out)
    groups = load_label_groups(args.source)
    written = export_groups(groups, args.format, out, args.interface)
    print(f"wrote {len(groups)} groups to {', '.join(map(str, written))}", file=sys.stderr)
    return 0


def import_main(argv: list[str]) -> int:
    """Turn a Label Studio or Argilla export into the rankings file feedback=file reads."""
    parser = argparse.ArgumentParser(prog="python -m alignbench.label import")
    parser.add_argument("export", type=Path, help="the tool's JSON export")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--question", default="ranking", help="Argilla: the ranking question")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    out = _fresh(args.out)
    imported = import_rankings(args.format, args.export, args.question)
    if not imported.rankings:
        raise ConfigError(f"{args.export}: no usable ranking in the export — nothing written")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in imported.rankings),
        encoding="utf-8",
    )
    os.replace(tmp, out)
    left = ", ".join(f"{n} {why}" for why, n in imported.left_out.items())
    print(
        f"wrote {len(imported.rankings)} rankings to {out}"
        + (f" (left out: {left})" if left else ""),
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; an error the user can act on is one line and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    command = {"export-groups": export_groups_main, "export": export_main, "import": import_main}
    try:
        if argv and argv[0] in command:
            return command[argv[0]](argv[1:])
        return serve_main(argv)
    except AlignbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
