"""The example notebooks run end to end on tiny settings, and their .py and .ipynb agree."""

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def code_cells(notebook) -> list[str]:
    return [c.source.strip() for c in notebook.cells if c.cell_type == "code"]


def test_there_are_four_notebooks():
    assert len(NAMES) == 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    # shared: the first notebook trains the model the others reuse
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_tiny_settings(name, workdir):
    nb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    assert code_cells(nb) == code_cells(jupytext.read(NOTEBOOKS / f"{name}.py")), (
        f"{name}.ipynb and {name}.py differ: run `jupytext --sync notebooks/{name}.py`"
    )
    assert not any(c.get("outputs") for c in nb.cells), (
        f"{name}.ipynb is committed with outputs: clear them (`jupytext --to ipynb --update`)"
    )
    script = workdir / f"{name}.py"
    script.write_text(jupytext.writes(nb, fmt="py:percent"))
    env = {**os.environ, "FIELDFLOW_TINY": "1", "FIELDFLOW_NB_OUT": str(workdir),
           "MPLBACKEND": "Agg", "PYTHONPATH": str(NOTEBOOKS)}
    proc = subprocess.run([sys.executable, str(script)], cwd=NOTEBOOKS, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "the notebook printed no summary"
    assert list(workdir.glob(f"{name[:2]}_*.png")), "the notebook saved no figure"
