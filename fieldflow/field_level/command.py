"""``fieldflow infer --mask/--noise``: the field-level posterior of one noisy, masked map.

The map of the file is the truth; the observation d = M (x + n) is simulated with the mask
(``--mask FRACTION`` draws a survey mask with ``make_mask``, ``--mask FILE`` reads a 0/1
array from an ``.npy`` or an ``.npz`` with ``mask``) and white noise of standard deviation
``--noise`` (seed ``--seed``); with ``--observed`` the map is the observation itself. Writes
``field_level.npz`` (theta chains, field mean and std, ``--field-draws`` thinned field draws
per chain, diagnostics), ``field_level.nc``
(ArviZ InferenceData), the same for the exact lognormal prior with ``--lognormal-box``
(``field_level_exact.*``), ``field_level.png`` and the summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "wanted", "run_field_level"]


def add_arguments(parser) -> None:
    """The field-level options of ``fieldflow infer``."""
    g = parser.add_argument_group(
        "field-level inference (with --mask or --noise: sample theta and the field jointly)"
    )
    g.add_argument(
        "--mask",
        default=None,
        help="masked fraction in [0, 1) of a random survey mask, or an .npy/.npz 0/1 mask file",
    )
    g.add_argument("--noise", type=float, default=None, help="noise standard deviation per pixel")
    g.add_argument("--sampler", choices=("mclmc", "nuts"), default=None, help="default: nuts")
    g.add_argument("--chains", type=int, default=4)
    g.add_argument("--warmup", type=int, default=500, help="adaptation steps per chain")
    g.add_argument("--samples", type=int, default=1000, help="samples per chain")
    g.add_argument(
        "--field-draws",
        type=int,
        default=100,
        help="thinned field draws kept per chain (per-pixel intervals; 0: none)",
    )
    g.add_argument(
        "--extend-samples",
        type=int,
        default=0,
        help="up to this many more samples per chain while R-hat or ESS fail",
    )
    g.add_argument(
        "--coordinates",
        choices=("auto", "latent", "data"),
        default="auto",
        help="sample the field in latent (noisy maps) or data (nearly clean maps) coordinates; "
        "auto: data when the observed pixels' S/N per pixel >= 2.5",
    )
    g.add_argument("--seed", type=int, default=0, help="mask, noise and sampler seed")
    g.add_argument("--observed", action="store_true", help="the map is the observation d")


def wanted(args) -> bool:
    """Whether ``fieldflow infer`` runs the field-level posterior."""
    return getattr(args, "mask", None) is not None or getattr(args, "noise", None) is not None


def _mask(spec, n: int, seed: int) -> np.ndarray:
    import jax

    from fieldflow.masks import make_mask

    try:
        frac = float(spec)
    except (TypeError, ValueError):
        frac = None
    if spec is None:
        return np.ones((n, n), np.float32)
    if frac is not None:
        return np.asarray(make_mask(jax.random.key(seed), n, frac))
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--mask {spec}: neither a fraction nor an existing file")
    if path.suffix == ".npz":
        with np.load(path) as f:
            if "mask" not in f:
                raise ValueError(f"{path} has no 'mask' array")
            return np.asarray(f["mask"], np.float32)
    return np.asarray(np.load(path), np.float32)


def run_field_level(args, model, maps, theta) -> dict:
    """Sample the field-level posterior of the one map ``maps`` (1, N, N); write the outputs."""
    import jax
    import matplotlib.pyplot as plt

    from fieldflow import inference
    from fieldflow.denoise.observation import observe
    from fieldflow.field_level import (
        DEFAULT_SAMPLER,
        field_level_posterior,
        lognormal_field_level_posterior,
    )
    from fieldflow.io import write_json
    from fieldflow.plots.field_level import plot_field_level

    if len(maps) != 1:
        raise ValueError(
            f"field-level inference takes one map: give --index (the file has {len(maps)})"
        )
    x = np.asarray(maps[0], np.float32)
    n = x.shape[-1]
    noise = 1.0 if args.noise is None else float(args.noise)
    if not np.isfinite(noise) or noise <= 0:
        raise ValueError(f"--noise must be a finite standard deviation > 0, got {args.noise}")
    mask = _mask(args.mask, n, args.seed)
    d = x if args.observed else observe(x, mask, noise**2, args.seed + 1)
    truth = None if args.observed else x
    sampler = args.sampler or DEFAULT_SAMPLER
    kw = dict(
        sampler=sampler,
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.samples,
        progress=not args.no_progress,
        field_draws=args.field_draws,
        extend_samples=args.extend_samples,
        coordinates=args.coordinates,
    )
    key = jax.random.key(args.seed + 2)
    result = field_level_posterior(model, d, mask, noise**2, key=key, **kw)
    out = Path(args.out_dir)
    files = result.save(out, "field_level")
    others = {}
    if args.lognormal_box:
        exact = lognormal_field_level_posterior(
            d, mask, noise**2, box=args.lognormal_box, key=key, **kw
        )
        files += exact.save(out, "field_level_exact")
        others["exact lognormal"] = exact
    grid_post = None
    if truth is not None:
        om_range, s8_range = inference.model_theta_range(model)
        grid = inference.theta_grid(args.grid, args.grid, om_range, s8_range)
        grid_post = inference.flow_posterior(model, truth, grid)
    theta_true = None if theta is None else np.asarray(theta[0])
    fig = plot_field_level(
        truth, d, mask, result, others=others, grid_posterior=grid_post, theta_true=theta_true
    )
    fig.savefig(out / "field_level.png", dpi=110)
    plt.close(fig)
    files.append("field_level.png")
    summary = {
        "command": "infer",
        "mode": "field-level",
        "map_file": str(args.map_file),
        "theta_true": None if theta_true is None else theta_true.tolist(),
        "masked_fraction": float(1.0 - mask.mean()),
        "noise_std": noise,
        "field_level": result.summary(),
        "exact_lognormal": {k: r.summary() for k, r in others.items()}.get("exact lognormal"),
        "grid_posterior_clean_map": None if grid_post is None else grid_post.summary(),
        "masked_truth_within_central68": result.masked_coverage(truth, mask),
        "masked_truth_within_1std_log": result.masked_std_coverage(
            truth, mask, float(getattr(model, "log_offset", None) or 0.0)
        ),
        "files": files,
    }
    write_json(out / "summary.json", summary)
    flag = "" if result.converged else " (NOT converged: " + "; ".join(result.problems) + ")"
    m, s = result.mean, result.std
    print(
        f"field-level {sampler} ({result.coordinates} coordinates): Omega_m = {m[0]:.4f} +- "
        f"{s[0]:.4f}, sigma_8 = {m[1]:.4f} +- {s[1]:.4f}, "
        f"R-hat {np.round(result.rhat, 3).tolist()}{flag}; figure {out / 'field_level.png'}"
    )
    return summary
