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

The pipeline is ``fieldflow.campaign.run_campaign`` (presets in ``fieldflow.campaign.PRESETS``).
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
import json
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from fieldflow.campaign import PRESETS

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


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from fieldflow.campaign import PRESETS, run_campaign
    from fieldflow.io import to_jsonable

    preset = "tiny" if args.tiny else "gpu"
    settings = dict(PRESETS[preset])
    settings.update({k: v for k, v in vars(args).items() if k in settings and v is not None})
    workdir = args.workdir or Path("out/gpu_campaign" + ("_tiny" if args.tiny else ""))
    out = run_campaign(
        settings, workdir, preset=preset, seed=args.seed, progress=not args.no_progress
    )
    summary = {"campaign": str(workdir / "campaign.json"), "timings_s": out["timings_s"]}
    print(json.dumps(to_jsonable(summary), indent=2))
    return out


if __name__ == "__main__":
    main()
