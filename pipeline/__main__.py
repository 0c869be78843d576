"""``python -m pipeline`` is the ``vidprobe`` command."""

from .cli import run

if __name__ == "__main__":  # decoder processes (forkserver) must not re-run the command
    run()
