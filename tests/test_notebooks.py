"""The example notebooks run end to end on tiny settings, and their .py and .ipynb agree."""

import runpy
import sys
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def code_cells(notebook) -> list[str]:
    return [c.source.strip() for c in notebook.cells if c.cell_type == "code"]


def test_there_are_five_notebooks():
    assert len(NAMES) == 5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_data_dir, tiny_run_dir):
    """The notebooks' output directory, holding the session's tiny data set and run under
    the names notebooks/_setup.py gives them (its FIELDFLOW_TINY settings are the same):
    the notebooks reuse them instead of generating and training their own."""
    path = tmp_path_factory.mktemp("notebooks")
    (path / "lognormal_n16").symlink_to(tiny_data_dir)
    (path / "trenf_n16").symlink_to(tiny_run_dir)
    return path


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_tiny_settings(name, workdir, monkeypatch, capsys):
    nb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    assert code_cells(nb) == code_cells(jupytext.read(NOTEBOOKS / f"{name}.py")), (
        f"{name}.ipynb and {name}.py differ: run `jupytext --sync notebooks/{name}.py`"
    )
    assert not any(c.get("outputs") for c in nb.cells), (
        f"{name}.ipynb is committed with outputs: clear them (`jupytext --to ipynb --update`)"
    )
    script = workdir / f"{name}.py"
    script.write_text(jupytext.writes(nb, fmt="py:percent"))
    # top to bottom in this process, as a kernel would: what the other tests compiled for
    # the same tiny run is reused
    monkeypatch.setenv("FIELDFLOW_TINY", "1")
    monkeypatch.setenv("FIELDFLOW_NB_OUT", str(workdir))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # for matplotlib if not yet imported
    monkeypatch.chdir(NOTEBOOKS)
    monkeypatch.syspath_prepend(str(NOTEBOOKS))
    monkeypatch.delitem(sys.modules, "_setup", raising=False)
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
    assert capsys.readouterr().out.strip(), "the notebook printed no summary"
    assert list(workdir.glob(f"{name[:2]}_*.png")), "the notebook saved no figure"
