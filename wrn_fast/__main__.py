"""``python -m wrn_fast`` and the ``wrn-fast`` console script: see :mod:`wrn_fast.cli`."""
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status: 0 success, 1 training diverged, 2 bad input (usage), 130 / 143
    stopped by Ctrl-C / SIGTERM (checkpoint saved; resume with --resume)."""
    from .cli import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
