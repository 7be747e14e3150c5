"""``python -m alignbench.plugins``: list the registered algorithms, rewards and tasks.

The command keeps its name; the listing is :func:`alignbench.cli.list_plugins` and the
description it prints :func:`alignbench.registry.describe` (the plugins themselves live in the
top-level ``plugins/`` folder, installed as ``alignbench_plugins``).
"""

from __future__ import annotations

import sys

from alignbench.cli import list_plugins as main
from alignbench.registry import describe

__all__ = ["describe", "main"]

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python -m alignbench.plugins | head`
        sys.exit(0)
