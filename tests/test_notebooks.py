"""The notebooks in notebooks/ run top to bottom, are stored without outputs, and are linked
from the README.

Each notebook is executed with nbclient in a fresh ``python3`` kernel, from the notebooks
directory as working directory, with matplotlib headless (``MPLBACKEND=Agg``) and the
repository on ``PYTHONPATH``. A failing cell fails the test with nbclient's
``CellExecutionError``, which shows the cell's source and traceback.
"""
from __future__ import annotations

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; the notebooks are meant to take well under a minute


def _readme_links() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return sorted(set(re.findall(r"notebooks/[\w.-]+\.ipynb", text)))


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


def test_readme_links_every_notebook():
    links = _readme_links()
    assert links, "README.md links no notebook (expected a 'Notebooks' section with notebooks/*.ipynb links)"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README.md links notebooks that do not exist: {missing}"
    unlisted = [p.name for p in NOTEBOOKS if f"notebooks/{p.name}" not in links]
    assert not unlisted, f"notebooks not linked from README.md: {unlisted}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_stored_without_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} are stored with outputs or execution counts; "
        f"clear them (e.g. `jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}`)"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be 'python3'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    # The kernel inherits this process's environment.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {[(e.ename, e.evalue) for e in errors]}"
