"""``python -m wrn_fast`` and the ``wrn-fast`` console script: see :mod:`wrn_fast.cli`."""
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input, 130 interrupted)."""
    from .cli import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
