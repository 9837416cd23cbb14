"""Notebooks are committed clean and parameterisable (papermill's quiet failure modes)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"walkthrough", "train", "tables", "figures"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_has_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    # the parameters cell comes before any code that uses the parameters
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is tagged[0]
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], "committed with outputs: strip them (nbstripout)"
            assert cell.execution_count is None
    assert papermill.inspect_notebook(str(path)), "papermill sees no parameters"
