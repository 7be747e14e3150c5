"""Record the step metrics of the tiny PPO runs that tests/test_fast_paths.py pins.

    python tests/pins/make_ppo_pins.py tests/pins/ppo_tiny.json

Run it only on code whose results are the reference: the pins were recorded on commit a482d36,
before PPO reused any forward pass or the sampler had a static-cache decoder.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.test_fast_paths import PPO_RUNS, run_ppo  # noqa: E402 (conftest sets offline mode)


def main() -> None:
    """Run every pinned configuration and write their step metrics as JSON to argv[1]."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in PPO_RUNS.items():
            out[name] = run_ppo(Path(tmp), Path(tmp) / "cache", name, overrides)
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
