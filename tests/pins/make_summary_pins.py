"""Record the summaries of the tiny jobs that tests/test_pins.py pins.

    python tests/pins/make_summary_pins.py tests/pins/summary_tiny.json

Run it only on code whose results are the reference (these were recorded at the commit that
added them, after the rm/, report/ and cli/job refactors were checked equal to their parents).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.test_pins import SUMMARY_RUNS, run_summary  # noqa: E402 (conftest sets offline mode)


def main() -> None:
    """Run every pinned configuration and write their summaries as JSON to argv[1]."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SUMMARY_RUNS.items():
            out[name] = run_summary(Path(tmp), Path(tmp) / "cache", name, overrides)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
