"""``python -m alignbench``: run a job or a ``--multirun`` sweep (see ``alignbench.cli``)."""

import sys

from alignbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
