"""``python -m alignbench``: run a job or a ``--multirun`` sweep (see ``alignbench.app``)."""

import sys

from alignbench.app import main

if __name__ == "__main__":
    sys.exit(main())
