"""Paper-size campaign in one command: PM maps, TRENF, FoM vs P(k), calibration; prints JSON.

On one GPU (budget: 10 minutes) it generates particle-mesh maps at the paper's geometry
(128^2 maps of a 512 h^-1 Mpc box, 256^3 particles, 4 slabs per simulation: 1024 + 128
simulations), trains TRENF (3000 steps), and writes into WORKDIR:

* ``fom.json``: posteriors of the flow against the power-spectrum likelihood (FoM, coverage,
  calibrated variants), ``scripts/benchmark_fom.py``;
* ``calibration/``: ``fieldflow calibrate`` (score tests, curvature adjustment);
* ``evaluate/``: ``fieldflow evaluate`` (sample quality, posterior contours, coverage; the
  figures ``maps.png``, ``power_spectrum.png``, ``pdf.png``, ``peaks.png``,
  ``posterior.png``, ``coverage.png``);
* ``campaign.json``: the settings, the device, the wall time of every stage and the headline
  numbers of the three.

The GPU sizes are estimated from the H100 rates in README's Results (PM 128^3: 65 sims/s, so
256^3 about 8/s: ~2.5 min of simulation; training 3000 steps: under a minute); the GPU run
itself has not been made yet. Every stage reuses what a previous (interrupted) campaign left
in WORKDIR::

    python scripts/gpu_campaign.py                      # one GPU, ~10 min
    python scripts/gpu_campaign.py --tiny               # 16^2 maps on CPU: ~5 CPU-minutes
    python scripts/gpu_campaign.py --workdir out/c2 --steps 4000 --n-sims 512

To simulate on several machines first, run ``fieldflow generate WORKDIR/nbody_n128/data
--simulator nbody ... --worker I --workers N`` with the settings in ``campaign.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

# the paper's geometry, sized for one GPU in 10 minutes; --tiny: the same pipeline on CPU
PRESETS = {
    "gpu": dict(n=128, box=512.0, n_mesh=256, pm_steps=10, n_slabs=4, n_sims=1024,
                n_fiducial=128, steps=3000, lr=2e-3, batch_size=32, layers=5, hidden=[128, 128],
                n_test=200, n_fid_eval=64, grid=50, calibrate=128, eval_num=512,
                coverage_maps=200),
    "tiny": dict(n=16, box=64.0, n_mesh=16, pm_steps=5, n_slabs=4, n_sims=32, n_fiducial=8,
                 steps=100, lr=1e-2, batch_size=16, layers=2, hidden=[16], n_test=8, n_fid_eval=8,
                 grid=10, calibrate=8, eval_num=32, coverage_maps=8),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny CPU run of the same pipeline")
    p.add_argument("--workdir", type=Path, default=None, help="default out/gpu_campaign[_tiny]")
    for key, value in PRESETS["gpu"].items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            p.add_argument(flag, type=int, nargs="+", default=None)
        else:
            p.add_argument(flag, type=type(value), default=None, help=f"GPU default {value}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p


def _benchmark_fom():
    """scripts/benchmark_fom.py as a module (the scripts are not a package)."""
    path = Path(__file__).with_name("benchmark_fom.py")
    spec = importlib.util.spec_from_file_location("benchmark_fom", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings(args) -> dict:
    """The preset (``--tiny`` or GPU) with the options given on the command line."""
    preset = dict(PRESETS["tiny" if args.tiny else "gpu"])
    preset.update({k: v for k, v in vars(args).items() if k in preset and v is not None})
    return preset


def fom_argv(s: dict, workdir: Path, seed: int, progress: bool) -> list[str]:
    """benchmark_fom.py's arguments for these settings."""
    argv = ["--simulator", "nbody", "--workdir", str(workdir), "--seed", str(seed)]
    for key in ("n", "box", "n_mesh", "pm_steps", "n_slabs", "n_sims", "n_fiducial", "steps"):
        argv += ["--" + key.replace("_", "-"), str(s[key])]
    argv += [
        "--batch-size",
        str(s["batch_size"]),
        "--layers",
        str(s["layers"]),
        "--lr",
        str(s["lr"]),
    ]
    argv += ["--hidden", *map(str, s["hidden"]), "--n-test", str(s["n_test"])]
    argv += ["--n-fid-eval", str(s["n_fid_eval"]), "--grid", str(s["grid"])]
    argv += ["--calibrate", str(s["calibrate"]), "--out", str(workdir / "fom.json")]
    return argv + ([] if progress else ["--no-progress"])


def _stage(command: str, argv: list) -> tuple[dict, float]:
    """(summary, seconds) of ``fieldflow COMMAND ARGV``; a user-level failure (ValueError, e.g.
    a likelihood not concave enough to calibrate after a short training) is recorded as
    ``{"error": ...}`` so that the other stages still run."""
    from fieldflow.commands import run_command

    t0 = time.perf_counter()
    try:
        summary = run_command(command, argv)
    except ValueError as err:
        print(f"{command} failed: {err}", file=sys.stderr)
        summary = {"error": str(err)}
    return summary, time.perf_counter() - t0


def _pick(summary: dict, keys) -> dict:
    return {k: summary[k] for k in keys if k in summary}


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    import jax

    from fieldflow.io import to_jsonable, write_json

    s = settings(args)
    workdir = args.workdir or Path("out/gpu_campaign" + ("_tiny" if args.tiny else ""))
    progress = [] if not args.no_progress else ["--no-progress"]
    timings = {}

    t0 = time.perf_counter()
    fom_args = fom_argv(s, workdir, args.seed, not args.no_progress)
    try:
        fom = _benchmark_fom().main(fom_args)
    except SystemExit as err:  # its ValueError, e.g. a likelihood nowhere concave enough
        if not s["calibrate"]:
            raise
        print(f"FoM with calibration failed ({err}); again without", file=sys.stderr)
        fom_args[fom_args.index("--calibrate") + 1] = "0"  # data and run are reused
        fom = {**_benchmark_fom().main(fom_args), "calibration_error": str(err)}
    timings["data_train_fom_s"] = time.perf_counter() - t0
    run_dir, data_dir = fom["run_dir"], fom["data_dir"]

    calibration, timings["calibrate_s"] = _stage(
        "calibrate",
        [run_dir, data_dir, "--num", s["calibrate"], "--out", workdir / "calibration"]
        + ["--seed", args.seed + 1, *progress],
    )
    evaluation, timings["evaluate_s"] = _stage(
        "evaluate",
        [run_dir, data_dir, workdir / "evaluate", "--num", s["eval_num"], "--grid", s["grid"]]
        + ["--coverage-maps", s["coverage_maps"], "--seed", args.seed, *progress],
    )
    timings["total_s"] = time.perf_counter() - t_start

    out = {
        "preset": "tiny" if args.tiny else "gpu",
        "settings": s,
        "device": str(jax.devices()[0]),
        "data_dir": data_dir,
        "run_dir": run_dir,
        "train": fom["train"],
        "fom": {"file": str(workdir / "fom.json"), **_pick(fom, ("results", "calibration_error"))},
        "calibration": _pick(calibration, ("calibration_file", "score_tests", "error")),
        "evaluate": {
            "dir": str(workdir / "evaluate"),
            **_pick(evaluation, ("figures", "posterior", "calibration", "error")),
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    path = write_json(workdir / "campaign.json", out)
    print(json.dumps(to_jsonable({"campaign": str(path), "timings_s": out["timings_s"]}), indent=2))
    return out


if __name__ == "__main__":
    main()
