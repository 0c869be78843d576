"""``python -m pipeline`` is the ``vidprobe`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # decoder processes (forkserver) must not re-run the command
    sys.exit(main())
