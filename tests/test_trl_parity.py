"""Each alignbench loss equals TRL 1.16's on the same batch and weights (to 1e-5).

GRPO, RLOO, DPO (sigmoid) and the reward model's pairwise loss, computed by
``benchmarks/trl_parity.py::loss_parity`` (the check the benchmark prints). TRL is not a
dependency: without it (``pip install -e '.[bench]'``, or ``ALIGNBENCH_TRL116_PATH`` naming a
folder that holds it) the test is skipped and says why. The TRL options that map to alignbench's
definitions (GRPO ``loss_type="grpo"`` = ``seq_mean``, ``use_bias_correction_kl=False``) are set
in the benchmark's ``trl_config``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRL_PATH = os.environ.get("ALIGNBENCH_TRL116_PATH")
if TRL_PATH and TRL_PATH not in sys.path:
    sys.path.insert(0, TRL_PATH)


def _trl_reason() -> str | None:
    """Why TRL 1.16 cannot be used here, or None when it can."""
    try:
        import trl
    except ImportError as exc:
        return f"trl is not importable ({exc}): pip install -e '.[bench]'"
    if not trl.__version__.startswith("1.16."):
        return f"trl {trl.__version__} found, the parity check is written for 1.16"
    return None


REASON = _trl_reason()
if REASON:
    print(f"tests/test_trl_parity.py skipped: {REASON}")


def _benchmark():
    # As when run as a script: its folder first on sys.path, for `from _common import ...`.
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("trl_parity", ROOT / "benchmarks/trl_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.parametrize("settings", ["SMOKE", "FULL"])
def test_losses_equal_trl(settings: str) -> None:
    bench = _benchmark()
    losses = bench.loss_parity(getattr(bench, settings))
    assert set(losses) == {"grpo", "rloo", "dpo", "reward"}
    for method, (ours, theirs) in losses.items():
        assert abs(ours - theirs) <= 1e-5, f"{method}: alignbench {ours} vs TRL {theirs}"
        # A loss that is 0 or log 2 whatever the weights would prove nothing.
        assert abs(ours) > 1e-3 and abs(ours - 0.693147) > 1e-3, (method, ours)
