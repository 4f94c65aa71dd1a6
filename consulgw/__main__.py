"""``python -m consulgw``: the same entry point as the ``consulgw`` console script."""

from __future__ import annotations

import sys

from consulgw.cli import main

if __name__ == "__main__":
    sys.exit(main())
