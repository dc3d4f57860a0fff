"""``python -m dydiff_earth``: the command line, so that ``torchrun ... -m dydiff_earth train`` works."""

from __future__ import annotations

from dydiff_earth.cli import main

if __name__ == "__main__":
    main()
