"""Multiscale-flow specifics beyond the exactness contract (conftest.FLOW_SPECS "multiscale").

The Haar split is orthogonal and its own inverse; log p is the sum of the level terms; the
model is invariant under exactly the shifts that keep the Haar blocks and every level's
checkerboard (multiples of 2^L with an even sum in units of 2^L) and under no other lattice
map; extreme maps give finite values; the config rebuilds the model. The tests reuse the
shared flow's compiled functions (same shapes), so they add little compile time.
"""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONDS, MULTISCALE_SMALL, contrasts, rbg_rngs
from flax import nnx

from fieldflow.models import build_model
from fieldflow.models.detail_flow import _smooth, _smoothing_matrix
from fieldflow.models.group_mixture import (
    LatticeSymmetry,
    coset_representatives,
    group_mixture_log_prob,
    group_mixture_sample,
)
from fieldflow.models.haar import haar_merge, haar_split
from fieldflow.models.multiscale import MultiscaleFlow, deepest_levels

# beside test_contract.py's tests of the shared "multiscale" flow: one worker compiles it
pytestmark = pytest.mark.xdist_group("flow_multiscale")


def test_haar_split_is_orthogonal_and_inverted_by_merge():
    basis = np.eye(16, dtype=np.float32).reshape(16, 4, 4)
    s, d = (np.asarray(a) for a in haar_split(basis))
    matrix = np.concatenate([s.reshape(16, -1), d.reshape(16, -1)], 1)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(16), atol=1e-6)
    # basis[0]: its top-left block [[a, b], [c, d]] = [[1, 0], [0, 0]] -> s = h = v = e = 1/2
    np.testing.assert_allclose(np.concatenate([s[0, :1, 0], d[0, :, 0, 0]]), 0.5)
    x = contrasts(8)
    np.testing.assert_allclose(haar_merge(*haar_split(x)), x, atol=1e-6)


@pytest.mark.parametrize("m", [4, 8, 16, 32])
def test_smoothed_energies_are_never_negative(m):
    """The smoothing matrix is a positive, normalised periodic Gaussian: the smoothed energy
    of a detail map holding one value of 20 among zeros stays >= 0 (a Fourier-space Gaussian
    rang below zero at m >= 8 and made log(floor + energy) NaN on N-body maps)."""
    matrix = _smoothing_matrix(m)
    assert matrix.min() >= 0.0
    np.testing.assert_allclose(matrix.reshape(m * m, 2, m * m).sum(axis=0), 1.0, rtol=1e-5)
    spike = np.zeros((1, 1, m, m), np.float32)
    spike[0, 0, 1, 2] = 20.0
    energy = np.asarray(jax.jit(_smooth)(spike**2))  # one compile, not one per operation
    assert energy.min() >= 0.0 and energy.max() > 0.0


def test_log_prob_is_the_sum_of_the_level_terms(flows):
    model = flows["multiscale"].module
    x, cond = np.asarray(contrasts(8)), jnp.asarray(CONDS)
    terms = np.asarray(model.level_log_probs(x, cond))
    assert model.level_term_names == [
        "coarsest",
        "details_level_1",
        "full_resolution_trenf",
        "standardisation",
    ]
    assert terms.shape == (3, 4)
    # the standardisation term: -N^2 log(scale) - sum log(1 + c + x)
    expected = -64 * np.log(model.data_scale) - np.sum(np.log(1.01 + x), axis=(1, 2))
    np.testing.assert_allclose(terms[:, -1], expected, rtol=1e-5)
    np.testing.assert_allclose(model.log_prob(x, cond), np.sum(terms, axis=1), rtol=1e-6)


SHIFTS_KEPT = [(2, 2), (4, 0), (0, 4), (2, -2), (6, 2)]
SHIFTS_BROKEN = [(2, 0), (0, 2), (1, 1), (1, 0), (4, 2)]


def test_invariant_under_exactly_the_level_shifts(flows):
    """One Haar level on 8x8 maps: shifts (a, b) with a, b even and (a + b) / 2 even."""
    model = flows["multiscale"].module
    x, cond = np.asarray(contrasts(8, seed=5)), jnp.asarray(CONDS)
    ref = np.asarray(model.log_prob(x, cond))
    z = np.asarray(model.forward(x, cond)[0])
    for shift in SHIFTS_KEPT:  # numpy rolls: exact, nothing to compile
        moved = np.roll(x, shift, axis=(1, 2))
        np.testing.assert_allclose(model.log_prob(moved, cond), ref, rtol=1e-5, err_msg=shift)
        z_moved = model.forward(moved, cond)[0]
        np.testing.assert_allclose(z_moved, np.roll(z, shift, axis=(1, 2)), atol=3e-5)
    for shift in SHIFTS_BROKEN:
        lp = np.asarray(model.log_prob(np.roll(x, shift, axis=(1, 2)), cond))
        assert np.max(np.abs(lp - ref)) > 1e-2, shift


def test_group_mixture_is_invariant_under_every_lattice_symmetry(flows):
    """The mixture over the 64 coset representatives (8 shifts x D4) of one Haar level is
    exactly invariant under the one-pixel shifts, rotations and reflections the model lacks."""
    model = flows["multiscale"].module
    elements = coset_representatives(model)
    assert len(elements) == 64 and len(set(elements)) == 64
    x, cond = np.asarray(contrasts(8, seed=7)), jnp.asarray(CONDS)
    for r in elements:  # on numpy maps, as group_mixture_log_prob applies them
        np.testing.assert_allclose(r.inverse(r(x)), x, atol=0)
    ref = np.asarray(group_mixture_log_prob(model, x, cond, elements))
    assert np.max(np.abs(ref - np.asarray(model.log_prob(x, cond)))) > 1e-2
    # a one-pixel shift, a quarter turn, and a reflection composed with both
    moves = [LatticeSymmetry((1, 0)), LatticeSymmetry((0, 0), 1), LatticeSymmetry((2, 5), 3, True)]
    for g in moves:
        moved = group_mixture_log_prob(model, g(x), cond, elements)
        np.testing.assert_allclose(moved, ref, rtol=1e-5, err_msg=str(g))
    # the identity alone gives the model's own density; samples are maps of the model's shape
    np.testing.assert_allclose(
        group_mixture_log_prob(model, x, cond, [LatticeSymmetry()]), model.log_prob(x, cond)
    )
    sample = group_mixture_sample(model, jax.random.key(4), cond, elements)
    assert sample.shape == (3, 8, 8) and np.all(np.isfinite(np.asarray(sample)))


def test_diagnostics_report_the_mixture_nll_beside_the_model_nll(flows):
    from fieldflow.latent_diagnostics import model_diagnostics

    model = flows["multiscale"].module
    x, cond = contrasts(8, seed=7), jnp.asarray(CONDS)
    out = model_diagnostics(model, {"test": (np.asarray(x), CONDS)}, CONDS[0], n_score=0)
    mix = out["group_mixture"]
    assert (mix["n_maps"], mix["n_elements"]) == (3, 64)
    expected = -float(jnp.mean(group_mixture_log_prob(model, x, cond))) / 64
    np.testing.assert_allclose(mix["mixture_nll_per_pixel"], expected, rtol=1e-5)
    np.testing.assert_allclose(
        mix["model_nll_per_pixel"], -float(jnp.mean(model.log_prob(x, cond))) / 64, rtol=1e-5
    )
    assert list(out["nll_terms_per_pixel"]) == model.level_term_names


def test_group_mixture_needs_a_model_with_known_symmetries():
    def model(kind, **config):  # only the type and config are read
        return SimpleNamespace(model_type=kind, config=config, n_levels=2)

    assert coset_representatives(model("trenf", radial=True)) == [LatticeSymmetry()]
    assert len(coset_representatives(model("multiscale"))) == 2 * 16 * 8
    for kind, config in (("realnvp", {}), ("trenf", {"radial": False})):
        with pytest.raises(ValueError, match="not known"):
            coset_representatives(model(kind, **config))


def test_finite_for_extreme_maps_and_latents(flows):
    model = flows["multiscale"].module
    cond = jnp.asarray(CONDS)
    x = np.array(contrasts(8, seed=6))
    x[0, 1, 1], x[1, 4, 5], x[2] = 1e4, -1.0, 50.0  # a spike, an empty pixel, a flat map
    assert np.all(np.isfinite(np.asarray(model.log_prob(x, cond))))
    z = 3.0 * np.asarray(jax.random.normal(jax.random.key(2), (3, 8, 8)))
    assert np.all(np.isfinite(np.asarray(model.inverse(z, cond))))
    # far-out latents may overflow exp(log(1 + c + x)) to inf, but never give NaN
    assert not np.any(np.isnan(np.asarray(model.inverse(10.0 * z, cond))))
    assert np.all(np.isfinite(np.asarray(model.sample(jax.random.key(3), cond))))


def test_config_rebuilds_the_model(flows):
    model = flows["multiscale"].module
    config = json.loads(json.dumps(model.config))
    rebuilt = build_model("multiscale", config, rbg_rngs(1))
    assert rebuilt.num_params() == model.num_params()
    nnx.update(rebuilt, nnx.state(model, nnx.Param))
    x, cond = contrasts(8), jnp.asarray(CONDS)
    np.testing.assert_array_equal(rebuilt.log_prob(x, cond), model.log_prob(x, cond))


def test_hessians_use_a_rolled_copy_with_the_same_values(flows):
    """score_and_hessian swaps an unrolled multiscale flow for a rolled copy of it (same
    weights; second derivatives compile in about half the time): the copy is the shared
    (rolled) flow with the unrolled model's weights, so its log p is the shared flow's."""
    from fieldflow.inference.likelihoods import flow_log_like_fn

    model = flows["multiscale"].module
    unrolled = nnx.merge(*nnx.split(model))  # a copy, then unrolled as a user would build it
    for _, module in nnx.iter_modules(unrolled):
        if hasattr(module, "unroll"):
            module.unroll = True
    assert unrolled.config == {**model.config, "unroll": True}
    rolled = flow_log_like_fn(unrolled).rolled()
    copy = nnx.merge(rolled.graphdef, rolled.state)
    assert not copy.unroll and not any(d.unroll for d in copy.details)
    same = flow_log_like_fn(model)
    assert (
        rolled.graphdef == same.graphdef and rolled.graphdef != flow_log_like_fn(unrolled).graphdef
    )
    for a, b in zip(jax.tree.leaves(rolled.state), jax.tree.leaves(same.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert same.rolled() is same  # already rolled


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((10, 10), {}, "divisible"),
        ((8, 8), {"n_levels": 2}, "divisible"),
        ((8, 8), {"n_levels": 0}, "n_levels"),
        ((8, 8), {"detail_bins": 1}, "detail_bins"),
        ((8, 8), {"psi_bound": 0.0}, "psi_bound"),
        ((8, 8), {"data_scale": -1.0}, "data_scale"),
    ],
)
def test_bad_configuration_raises(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiscaleFlow(shape, rngs=rbg_rngs(0), **{**MULTISCALE_SMALL, **kwargs})


@pytest.mark.parametrize("n, levels", [(8, 1), (16, 2), (24, 2), (32, 3), (128, 3)])
def test_default_levels_are_as_deep_as_the_map_allows(n, levels):
    """n_levels=None (the CLI default) takes the deepest valid hierarchy up to 3 levels: the
    coarsest map keeps at least 4 x 4 pixels and the shift lattice stays on the grid. The
    resolved number is what the config stores, so the run reloads with the same model."""
    assert deepest_levels(n) == levels
    if n <= 16:
        # the shared flow's widths: its parameter shapes, whose initialisers are compiled
        model = MultiscaleFlow(
            (n, n), n_levels=None, hidden=(8,), rngs=rbg_rngs(0), **MULTISCALE_SMALL
        )
        assert model.n_levels == levels and model.config["n_levels"] == levels
        assert len(model.details) == levels and model.coarse.shape == (n // 2**levels,) * 2
