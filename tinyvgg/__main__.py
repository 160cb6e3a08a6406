"""``python -m tinyvgg``: see :mod:`tinyvgg.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
