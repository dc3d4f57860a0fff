"""Regenerate the README's picture: a map of the embedded default forecast, drawn by the product.

Runs exactly what the Quickstart's first command runs (the embedded synthetic sample, the shipped `demo`
model, 8 members, the sampler it recommends, seed 0) and copies its map of the first four members at the
last lead time (+30 min) to ``docs/images/quickstart-map.png``::

    python docs/make_readme_figure.py            # about 20 seconds on a 2-core CPU
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from dydiff_earth.pipeline import ForecastRequest, run_forecast

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "images" / "quickstart-map.png"


def make_figure(output: Path = DEFAULT_OUTPUT) -> Path:
    """Run the default forecast in a temporary directory and copy its last members map to ``output``."""
    with tempfile.TemporaryDirectory(prefix="dydiff-readme-") as work:
        request = ForecastRequest(
            output=Path(work) / "forecast.nc",
            maps=Path(work) / "maps",
            command_line="dydiff-earth forecast",
        )
        result = run_forecast(request)
        members = sorted(p for p in result.maps if p.name.startswith("precip_members_lead"))
        if not members:
            raise RuntimeError(f"the default forecast drew no members map: {[p.name for p in result.maps]}")
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(members[-1], output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="PNG to write")
    print(f"wrote {make_figure(parser.parse_args().output)}")


if __name__ == "__main__":
    main()
