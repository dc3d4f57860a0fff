from __future__ import annotations

from pathlib import Path

import cartopy
import pytest

from dydiff_earth import geo

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real observations in ``../shared/data``; tests that need them skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def no_map_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point every map-data folder at an empty directory (maps must then draw without coastlines)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(geo, "LOCAL_DATA_DIRS", (empty,))
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", empty)
    monkeypatch.setitem(cartopy.config, "data_dir", empty)
    monkeypatch.setattr(geo, "SHIPPED_MAP", empty / "countries-50m.json")
    monkeypatch.setattr(geo, "_warned_no_map_data", False)
    return empty
