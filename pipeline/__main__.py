"""``python -m pipeline`` is the ``vidprobe`` command."""
import sys

from .cli import main

sys.exit(main())
