"""The floors of pyproject.toml's dependencies as pip constraints (``name==floor``), or a check
that the installed versions are those floors (``--check``): what ``.ci/lowest`` installs."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

#: ``name[extras]>=floor`` inside a quoted requirement.
REQUIREMENT = re.compile(r'"([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;"\s]*)')


def floors(pyproject: Path) -> dict[str, str]:
    """``{name: floor}`` for every ``name>=floor`` requirement (dependencies and the test extra).

    Read with a regular expression, not tomllib, so that Python 3.10 runs it too.
    """
    text = pyproject.read_text()
    blocks = [
        re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M),
        re.search(r"^test = \[(.*?)\]", text, re.S | re.M),
    ]
    found = {}
    for block in blocks:
        for line in (block.group(1) if block else "").splitlines():
            match = REQUIREMENT.search(line.split("#", 1)[0])
            if match:
                found[match.group(1).lower()] = match.group(2)
    return found


def _release(version: str) -> str:
    """``2.13.0+cpu`` → ``2.13``: the release part without a local label or trailing zeros."""
    parts = version.split("+")[0].split(".")
    while len(parts) > 1 and parts[-1] == "0":
        parts.pop()
    return ".".join(parts)


def main(argv: list[str]) -> int:
    """Print constraints, or with --check exit 1 naming each package not at its floor."""
    check = "--check" in argv
    pyproject = Path(next((a for a in argv if not a.startswith("--")), "pyproject.toml"))
    pins = floors(pyproject)
    if not check:
        print("\n".join(f"{name}=={version}" for name, version in sorted(pins.items())))
        return 0
    wrong = []
    for name, version in sorted(pins.items()):
        installed = metadata.version(name)
        # 2.13.0+cpu is torch 2.13.0; "8" is the floor 8.0.0.
        if _release(installed) != _release(version):
            wrong.append(f"{name} {installed} (floor {version})")
    for line in wrong:
        print(f"not at its floor: {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
