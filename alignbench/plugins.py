"""``python -m alignbench.plugins``: list the registered algorithms, rewards and tasks.

Each name is shown with the plugin that registered it and where that plugin came from (a
distribution's entry point, or a file of a ``plugin_dirs`` folder). Plugins that failed to load
are listed too, with their error.
"""

from __future__ import annotations

import argparse
import json
import sys

from alignbench.errors import AlignbenchError
from alignbench.registry import GROUPS, Registry, build_registry


def describe(registry: Registry) -> dict[str, object]:
    """A JSON-ready description of every registered name and every failed plugin."""
    groups = {
        group: [
            {
                "name": entry.name,
                "class": f"{entry.cls.__module__}.{entry.cls.__qualname__}",
                "config": entry.config_cls.__qualname__,
                "plugin": entry.plugin,
                "origin": registry.origins.get(entry.plugin, "?"),
            }
            for entry in sorted(registry.entries.get(group, {}).values(), key=lambda e: e.name)
        ]
        for group in GROUPS
    }
    return {"groups": groups, "failed": dict(registry.failed)}


def main(argv: list[str] | None = None) -> int:
    """Print the registered plugins as a table (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m alignbench.plugins", description=__doc__)
    parser.add_argument("--plugin-dir", action="append", default=[], help="also load this folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        info = describe(build_registry(args.plugin_dir))
    except AlignbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for group, entries in info["groups"].items():  # type: ignore[union-attr]
        print(f"{group}:")
        for e in entries:
            print(f"  {e['name']:<14} {e['class']:<40} from {e['plugin']} — {e['origin']}")
    for name, error in info["failed"].items():  # type: ignore[union-attr]
        print(f"failed to load: {name}: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python -m alignbench.plugins | head`
        sys.exit(0)
