"""Shared settings of the example notebooks (imported by each).

``FIELDFLOW_TINY=1`` shrinks everything so that the test suite can execute the
notebooks in seconds; ``FIELDFLOW_NB_OUT`` is where data, runs and figures go.
"""

import os
from pathlib import Path

import matplotlib

if os.environ.get("FIELDFLOW_NB_OUT"):
    matplotlib.use("Agg")

TINY = os.environ.get("FIELDFLOW_TINY") == "1"
OUT = Path(os.environ.get("FIELDFLOW_NB_OUT", "notebook_out"))
N = 16 if TINY else 32  # pixels per side
BOX = 64.0 if TINY else 128.0  # h^-1 Mpc
N_SIMS = 128 if TINY else 2048
N_FIDUCIAL = 32 if TINY else 256
STEPS = 30 if TINY else 3000
GRID = 12 if TINY else 60
DATA = OUT / f"lognormal_n{N}"
RUN = OUT / f"trenf_n{N}"


def lognormal_data():
    """Generate (or resume) the lognormal data set shared by the notebooks."""
    from data_gen import generate_dataset

    generate_dataset(DATA, "lognormal", N_SIMS, n=N, box=BOX, n_fiducial=N_FIDUCIAL,
                     progress=not TINY)
    return DATA


def trained_run():
    """A conditional TRENF trained on the lognormal data (trained once, then reused)."""
    from fieldflow.cli import train_run
    from fieldflow.train import TrainConfig

    if not (RUN / "summary.json").exists():
        config = TrainConfig(steps=STEPS, learning_rate=3e-3, warmup_steps=min(100, STEPS // 5),
                             eval_every=max(STEPS // 10, 1), patience=None)
        train_run(lognormal_data(), RUN, "trenf", {"n_layers": 5, "hidden": (64, 64)}, config,
                  progress=not TINY)
    return RUN
