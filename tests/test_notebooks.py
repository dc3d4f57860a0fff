"""The notebooks run as written, in a real Jupyter kernel (nbclient), with small settings; git holds them
without outputs.

Each notebook has one code cell tagged ``parameters``; the run inserts a cell after it that overrides those
values (``SMALL``), then a cell of assertions on what the narration claims (``CHECKS``). A notebook that
names files of the shared data in its metadata (``dydiff_earth.needs_shared_data``) is skipped when they
are absent, as the other real-data tests are.
"""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: Settings of each notebook under test: few members and sampling steps, a few training steps.
SMALL: dict[str, dict[str, object]] = {
    "01-quickstart.ipynb": {"MEMBERS": 4, "SAMPLING_STEPS": 5},
    "02-radar-nowcasting.ipynb": {"MEMBERS": 2, "SKILL_INITS": 1},
    "03-train-your-own.ipynb": {"TRAIN_STEPS": 20, "MEMBERS": 2, "SAMPLING_STEPS": 5, "SKILL_INITS": 2},
}

#: Run after the notebook's last cell, in its namespace: the results the narration talks about exist.
CHECKS: dict[str, str] = {
    "01-quickstart.ipynb": """
assert fc.sizes["member"] == MEMBERS and fc.sizes["lead_time"] == 6
assert set(crps) == {"dydiff", "persistence"} and all(bool(v.notnull().all()) for v in crps.values())
assert paths and all(p.stat().st_size > 0 for p in paths)
""",
    "02-radar-nowcasting.ipynb": """
assert fc.sizes["member"] == MEMBERS and fc.sizes["lead_time"] == 12
assert list(fc["threshold"].values) == list(THRESHOLDS)
p = fc["precip_probability"]
assert float(p.min()) >= 0 and float(p.max()) <= 1 and float(p.max()) > 0
assert list(table.index) == ["radar-4km-v1", "persistence", "extrapolation", "steps"]
assert len(result.init_times) == SKILL_INITS and result.report.is_file()
assert rows["observed"][0] > 0
""",
    "03-train-your-own.ipynb": """
assert result.steps == TRAIN_STEPS and len(losses) == TRAIN_STEPS and result.checkpoint.is_file()
assert fc.sizes["member"] == MEMBERS and str(fc["t2m"].attrs["units"]) == "K"
assert list(crps.columns) == [result.checkpoint.stem, "persistence"] and len(crps) == model.horizon
assert bool(crps.notna().all().all()) and len(skill.init_times) == SKILL_INITS
""",
}


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _parameters(nb: nbformat.NotebookNode) -> tuple[int, set[str]]:
    """Index of the ``parameters`` cell and the names it assigns."""
    found = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(found) == 1, "a notebook needs exactly one code cell tagged 'parameters'"
    tree = ast.parse(nb.cells[found[0]].source)
    return found[0], {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


def test_notebooks_are_committed_without_outputs() -> None:
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = _read(path)
        nbformat.validate(nb)
        for k, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name} cell {k} holds outputs or an execution count; clear them before committing "
                    f"(jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)})"
                )


def test_every_notebook_has_small_settings_for_its_parameters() -> None:
    # A notebook without small settings would run at full size in CI; an override of a name the
    # parameters cell does not assign would be silently ignored.
    assert {p.name for p in NOTEBOOKS} == set(SMALL) == set(CHECKS)
    for path in NOTEBOOKS:
        _, names = _parameters(_read(path))
        assert set(SMALL[path.name]) <= names, (path.name, set(SMALL[path.name]) - names)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    nb = _read(path)
    needs = nb.metadata.get("dydiff_earth", {}).get("needs_shared_data", [])
    missing = [name for name in needs if not (SHARED_DATA / name).is_file()]
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)} in {SHARED_DATA}, which is absent")
    index, names = _parameters(nb)
    values = dict(SMALL[path.name], **({"DATA": str(SHARED_DATA)} if "DATA" in names else {}))
    nb.cells.insert(
        index + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
    )
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS[path.name]))
    # The kernel imports this checkout's package, whatever is installed, and draws without a display.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    start = time.perf_counter()
    try:
        NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        # The executed copy, figures included, for a look after a failure.
        nbformat.write(nb, tmp_path / path.name)
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})
    ]
    assert images, f"{path.name} drew no figure"
