"""Shared settings of the example notebooks (imported by each).

``FIELDFLOW_TINY=1`` shrinks everything so that the test suite can execute the
notebooks in seconds; ``FIELDFLOW_NB_OUT`` is where data, runs and figures go
(default ``notebook_out/`` next to the notebooks). Headless runs choose matplotlib's
backend with ``MPLBACKEND`` (the tests set ``Agg``).
"""

import os
from pathlib import Path

TINY = os.environ.get("FIELDFLOW_TINY") == "1"
OUT = Path(os.environ.get("FIELDFLOW_NB_OUT", "notebook_out"))
N = 16 if TINY else 32  # pixels per side
BOX = 64.0 if TINY else 128.0  # h^-1 Mpc
N_SIMS = 32 if TINY else 2048
N_FIDUCIAL = 16 if TINY else 256
STEPS = 20 if TINY else 3000
GRID = 12 if TINY else 60
DATA = OUT / f"lognormal_n{N}"
RUN = OUT / f"trenf_n{N}"
# TRENF layers and conditioner MLP widths
MODEL_KWARGS = {"n_layers": 2, "hidden": (16,)} if TINY else {"n_layers": 5, "hidden": (64, 64)}


def lognormal_data():
    """The lognormal data set shared by the notebooks (generated once, or resumed)."""
    from fieldflow.workflows import ensure_dataset

    ensure_dataset(
        DATA, "lognormal", N_SIMS, n=N, box=BOX, n_fiducial=N_FIDUCIAL, progress=not TINY
    )
    return DATA


def train_config():
    """The training settings of the notebooks' run (Adam, warm-up, cosine decay)."""
    from fieldflow.train import TrainConfig

    return TrainConfig(
        steps=STEPS,
        learning_rate=3e-3,
        warmup_steps=min(100, STEPS // 10),
        eval_every=max(STEPS // 10, 1),
        patience=None,
    )


def trained_run():
    """A conditional TRENF trained on the lognormal data (trained once, then reused)."""
    from fieldflow.workflows import ensure_run

    ensure_run(
        lognormal_data(), RUN, model_kwargs=MODEL_KWARGS, config=train_config(), progress=not TINY
    )
    return RUN


def show(fig, name: str) -> Path:
    """Save ``fig`` as OUT/name, close it and, inside Jupyter, display the PNG."""
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return path
    if get_ipython() is not None:
        display(Image(filename=str(path)))
    return path
