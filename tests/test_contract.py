"""The exactness contract every bijection and model keeps (flows of conftest.FLOW_SPECS).

For each flow x -> z with log|det dz/dx|:

- the inverse is a round trip both ways, and the map is far from the identity;
- the log-determinant equals a brute-force slogdet of the ``jax.jacfwd`` Jacobian, which
  is diagonal for a pointwise map and mixes pixels otherwise;
- a model's log p is log N(z; 0, I) + logdet;
- log p is invariant (and z equivariant) under exactly the lattice maps the flow claims
  (periodic shifts, the 4 rotations and the reflections for the equivariant flows; shifts
  by the mask period only for RealNVP) and changes under every other one;
- wrong shapes, NaN / inf, conditions that are missing, unexpected, malformed or outside
  the trained range (models; single layers do not know a trained range), and maps outside
  a log transform's support raise ValueError.

Controls (a TRENF with a non-radial kernel) take part in the symmetry and bad-input checks
only. Each flow is built once per session (the ``flows`` fixture), so the compiled
functions are shared with test_trenf.py and test_realnvp.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ALL_SYMMETRIES, CONDS, FLOW_SPECS, gaussian_fields

FLOW_NAMES = list(FLOW_SPECS)


def flow_group(name: str) -> str:
    """The xdist group of a flow: one worker traces and compiles a flow's functions, and the
    other does not repeat that work. The flows test_trenf.py and test_realnvp.py also use
    ("trenf", "trenf_log_offset", "trenf_9_unconditional"; "realnvp",
    "realnvp_1_scale_unconditional") share those files' groups, and the single layers, which
    run op by op, share one group (and so their compiled operations)."""
    if name.startswith(("fourier_conv", "pointwise_spline")):
        return "flow_layers"
    if name in ("trenf_log_offset", "trenf_9_unconditional"):
        return "flow_trenf"
    if name.startswith("realnvp"):
        return "flow_realnvp"
    return f"flow_{name}"


def by_flow(names):
    """``names`` as parameters, each in the xdist group of its flow (:func:`flow_group`)."""
    return [pytest.param(name, marks=pytest.mark.xdist_group(flow_group(name))) for name in names]


EXACT_NAMES = [name for name, spec in FLOW_SPECS.items() if not spec.control]
MODEL_NAMES = [name for name in EXACT_NAMES if FLOW_SPECS[name].is_model]

# numpy permutations of numpy maps (exact, and nothing to compile: each jnp operation on
# the host would compile once per static shift, rotation and shape)
LATTICE_MAPS = {
    "shift(3,5)": lambda x: np.roll(x, (3, 5), axis=(1, 2)),
    "shift(0,1)": lambda x: np.roll(x, 1, axis=2),
    "shift(4,-4)": lambda x: np.roll(x, (4, -4), axis=(1, 2)),
    "rot90": lambda x: np.rot90(x, 1, axes=(1, 2)),
    "rot180": lambda x: np.rot90(x, 2, axes=(1, 2)),
    "rot270": lambda x: np.rot90(x, 3, axes=(1, 2)),
    "flip_y": lambda x: x[:, ::-1, :],
    "flip_x": lambda x: x[:, :, ::-1],
    "transpose": lambda x: np.swapaxes(x, 1, 2),
}
assert set(LATTICE_MAPS) == ALL_SYMMETRIES


@pytest.mark.parametrize("name", by_flow(EXACT_NAMES))
def test_round_trip_both_directions(flows, name):
    flow = flows[name]
    x, cond = flow.fields(), flow.cond()
    z, logdet = flow.module.forward(x, cond)
    assert z.shape == x.shape and z.dtype == jnp.float32 and logdet.shape == (3,)
    assert np.max(np.abs(np.asarray(z) - np.asarray(x))) > 0.1  # perturbed: far from identity
    np.testing.assert_allclose(flow.module.inverse(z, cond), x, rtol=1e-4, atol=1e-4)
    latent = gaussian_fields(flow.spec.n, seed=1)  # a draw from the base density
    z_again, _ = flow.module.forward(flow.module.inverse(latent, cond), cond)
    np.testing.assert_allclose(z_again, latent, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", by_flow(EXACT_NAMES))
def test_logdet_matches_brute_force_jacobian(flows, name):
    """log|det dz/dx| of each of 3 maps (each with its own condition) against the slogdet
    of the float32 (N^2, N^2) Jacobian by forward autodiff.

    One ``jax.jacfwd`` of the whole batch (3 N^2 tangents; tracing a vmap of the per-map
    Jacobian took longer): its blocks between different maps must be exactly zero, those
    of each map are that map's Jacobian."""
    flow = flows[name]
    n, module = flow.spec.n, flow.module
    x, cond = np.asarray(flow.fields(seed=3)), flow.cond()
    logdet = np.asarray(module.forward(x, cond)[1])

    def batch(v, c):
        return module.forward(v, c)[0]

    jac = np.asarray(jax.jit(jax.jacfwd(batch))(x, cond), np.float64).reshape(3, n * n, 3, n * n)
    for i in range(3):
        for j in range(3):
            if j != i:  # the maps are independent
                assert not np.any(jac[i, :, j]), (i, j)
    for i, jac_i in enumerate(jac[np.arange(3), :, np.arange(3)]):
        off_diagonal = np.abs(jac_i - np.diag(np.diag(jac_i))).max()
        if flow.spec.pointwise:
            assert off_diagonal == 0.0
        else:
            assert off_diagonal > flow.spec.min_mixing  # it mixes pixels
        sign, value = np.linalg.slogdet(jac_i)
        assert float(sign) > 0
        assert abs(float(value) - float(logdet[i])) < 1e-3, (i, float(value), float(logdet[i]))


@pytest.mark.parametrize("name", by_flow(MODEL_NAMES))
def test_log_prob_is_normal_plus_logdet(flows, name):
    flow = flows[name]
    x, cond = flow.fields(), flow.cond()
    z, logdet = (np.asarray(a) for a in flow.module.forward(x, cond))
    n_pix = flow.spec.n**2
    expected = -0.5 * np.sum(z**2, axis=(1, 2)) - 0.5 * n_pix * float(np.log(2 * np.pi)) + logdet
    assert expected.dtype == np.float32
    np.testing.assert_allclose(flow.module.log_prob(x, cond), expected, rtol=1e-6)


@pytest.mark.parametrize("name", by_flow(FLOW_NAMES))
def test_lattice_symmetries_exactly_as_claimed(flows, name):
    """Invariant log p and equivariant z under the claimed maps; log p changes under the
    others (the controls: non-radial kernels and the non-equivariant RealNVP)."""
    flow = flows[name]
    x, cond = np.asarray(flow.fields(seed=4)), flow.cond()
    z = None if flow.spec.control else np.asarray(flow.module.forward(x, cond)[0])
    ref = np.asarray(flow.log_p(x, cond))
    for sym, apply in LATTICE_MAPS.items():
        lp = np.asarray(flow.log_p(apply(x), cond))
        if sym in flow.spec.symmetries:
            np.testing.assert_allclose(lp, ref, rtol=1e-5, err_msg=sym)
            if not flow.spec.control:
                z_sym, _ = flow.module.forward(apply(x), cond)
                np.testing.assert_allclose(z_sym, apply(z), atol=1e-5, err_msg=sym)
        else:
            assert np.max(np.abs(lp - ref)) > 1e-2, sym


def _bad_calls(flow, method: str):
    """(label, call, regex) for every bad input ``method`` of ``flow`` must refuse."""
    n, spec, module = flow.spec.n, flow.spec, flow.module
    name = "z" if method == "inverse" else "x"
    fn = getattr(module, method)
    cond = flow.cond()
    good = np.array(flow.fields())
    nan = good.copy()
    nan[1, 2, 3] = np.nan
    cases = [
        ("rank 2", lambda: fn(np.zeros((3, n), np.float32), cond), "shape"),
        ("one map without batch axis", lambda: fn(np.zeros((n, n), np.float32), cond), "shape"),
        ("not square", lambda: fn(np.zeros((3, n, n + 1), np.float32), cond), "square"),
        ("another N", lambda: fn(np.zeros((3, 2 * n, 2 * n), np.float32), cond), "shape"),
        ("NaN pixel", lambda: fn(nan, cond), f"{name} contains NaN"),
        (
            "inf map",
            lambda: fn(np.full((3, n, n), np.inf, np.float32), cond),
            f"{name} contains NaN",
        ),
    ]
    if spec.cond_dim:
        inf_cond = np.array(CONDS)
        inf_cond[0, 1] = np.inf
        cases += [
            ("cond batch", lambda: fn(good, np.full((2, 2), 0.3, np.float32)), "batch"),
            ("cond width", lambda: fn(good, np.full((3, 3), 0.3, np.float32)), "shape"),
            ("missing cond", lambda: fn(good, None), "required"),
            ("inf cond", lambda: fn(good, inf_cond), "cond contains NaN"),
        ]
        if spec.is_model:
            above = np.full((3, 2), 0.9, np.float32)
            below = np.array(CONDS)
            below[2, 0] = 0.1
            cases += [
                ("theta above range", lambda: fn(good, above), "outside the trained range"),
                ("theta below range", lambda: fn(good, below), "outside the trained range"),
            ]
    else:
        cases.append(("unexpected cond", lambda: fn(good, np.full((3, 2), 0.3)), "unconditional"))
    if spec.log_offset is not None and method != "inverse":
        below_support = good.copy()
        below_support[0, 2, 3] = -1.5
        cases.append(("outside support", lambda: fn(below_support, cond), "log transform"))
    return cases


def _bad_sample_calls(flow):
    sample, key = flow.module.sample, jax.random.key(0)
    if not flow.spec.cond_dim:
        return [
            ("no num", lambda: sample(key), "num"),
            ("num 0", lambda: sample(key, num=0), "num"),
            ("unexpected cond", lambda: sample(key, np.full((3, 2), 0.3), num=3), "unconditional"),
        ]
    return [
        ("cond (3, 2, 1)", lambda: sample(key, np.full((3, 2, 1), 0.3)), "shape"),
        ("missing cond", lambda: sample(key), "required"),
        ("num with cond", lambda: sample(key, jnp.asarray(CONDS), num=3), "num"),
        ("theta outside", lambda: sample(key, np.full((3, 2), 0.9)), "outside the trained range"),
    ]


@pytest.mark.parametrize("name", by_flow(FLOW_NAMES))
def test_bad_input_raises_value_error(flows, name):
    flow = flows[name]
    methods = ["forward", "inverse"] + (["log_prob"] if flow.spec.is_model else [])
    cases = [
        (f"{m}: {label}", call, rx) for m in methods for label, call, rx in _bad_calls(flow, m)
    ]
    if flow.spec.is_model:
        cases += [(f"sample: {label}", call, rx) for label, call, rx in _bad_sample_calls(flow)]
    for label, call, regex in cases:
        try:
            call()
        except ValueError as err:
            assert re.search(regex, str(err)), f"{label}: {err} does not match {regex!r}"
        else:
            pytest.fail(f"{label}: no ValueError")
