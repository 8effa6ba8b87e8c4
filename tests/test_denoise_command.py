"""``fieldflow denoise`` (fieldflow.commands.denoise over fieldflow.denoise.reconstruct): the
outputs of a run without a flow, the Gaussian-prior MAP equal to the Wiener filter, and one
clear error for each user mistake."""

import json

import numpy as np
import pytest
from test_denoise import BOX, grf, pk_model, power

from fieldflow.commands import run_command
from fieldflow.io import save_npz


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two 16 x 16 Gaussian maps with their box, and their P(k) in files."""
    from fieldflow import fourier

    path = tmp_path_factory.mktemp("denoise_inputs")
    maps = grf(21, power(16), 2)
    save_npz(path / "maps.npz", maps=maps, box=np.float64(BOX))
    k = fourier.k_bin_centers(fourier.k_bin_edges(16, BOX))
    save_npz(path / "pk.npz", pk=pk_model(k))  # binned, mean mode fixed to 0
    k_half = fourier.kmag_half(16, BOX)
    pk_half = pk_model(np.where(k_half > 0, k_half, fourier.fundamental_k(BOX)))
    save_npz(path / "pk_half.npz", pk_half=pk_half)  # on every mode: the mean floats
    save_npz(path / "nomask.npz", noise_var=np.float32(1.0))
    return path


def test_wiener_only_run_writes_every_output(inputs, tmp_path):
    out = tmp_path / "wiener"
    summary = run_command(
        "denoise",
        [inputs / "maps.npz", "--out", out, "--pk-file", inputs / "pk.npz", "--no-plot"],
    )
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["prior"] == "none" and "map" not in summary and summary["n_maps"] == 2
    assert summary["box"] == BOX and summary["masked_fraction"] == pytest.approx(0.2, abs=0.01)
    assert all(summary["wiener"]["converged"])
    assert len(summary["metrics"]["wiener"]["r_k"]) == 2
    wiener = np.load(out / "wiener.npz")
    obs = np.load(out / "observation.npz")
    assert wiener["field"].shape == obs["data"].shape == (2, 16, 16)
    assert np.all(obs["data"][:, obs["mask"] == 0] == 0)  # masked pixels carry no data
    assert not (out / "map.npz").exists() and not (out / "denoise.png").exists()


def test_gaussian_prior_map_is_the_wiener_filter(inputs, tmp_path):
    out = tmp_path / "gaussian"
    summary = run_command(
        "denoise",
        [inputs / "maps.npz", "--out", out, "--pk-file", inputs / "pk_half.npz", "--index", "1"]
        + ["0", "--prior", "gaussian", "--noise-sigma", "0.3", "--cg-tol", "1e-7"],
    )
    assert summary["n_maps"] == 2 and summary["map"]["stopped"] == "gtol"
    assert summary["noise_var"] == pytest.approx(0.09)
    field = np.load(out / "map.npz")["field"]
    wiener = np.load(out / "wiener.npz")["field"]
    assert np.linalg.norm(field - wiener) / np.linalg.norm(wiener) < 5e-3
    assert (out / "denoise.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--prior", "flow"], ValueError, "needs --model"),
        (["--prior", "flow-latent", "--model", "/no/such/run"], FileNotFoundError, "does not"),
        (["--index", "5"], ValueError, "out of range"),
        (["--masked-fraction", "1.5"], ValueError, "masked_fraction"),
        (["--mask-file", "INPUTS/nomask.npz"], ValueError, "has no 'mask'"),
        (["--mask-file", "/no/mask.npz"], FileNotFoundError, "does not exist"),
        (["--pk-file", "INPUTS/maps.npz"], ValueError, "neither 'pk' nor 'pk_half'"),
        (["--prior", "gaussian"], ValueError, "S_k > 0"),  # binned P(k): no k = 0 power
        (
            ["--fit-theta", "--prior", "gaussian", "--pk-file", "INPUTS/pk_half.npz"],
            ValueError,
            "--fit-theta",
        ),
        (["--prior", "lognormal"], ValueError, "needs --theta"),
    ],
)
def test_user_mistakes_are_clear_errors(inputs, tmp_path, extra, error, message):
    argv = [inputs / "maps.npz", "--out", tmp_path / "o", "--no-plot"]
    if "--pk-file" not in extra:
        argv += ["--pk-file", inputs / "pk.npz"]
    argv += [str(a).replace("INPUTS", str(inputs)) for a in extra]
    with pytest.raises(error, match=message):
        run_command("denoise", argv)


def test_missing_inputs_are_clear_errors(inputs, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run_command("denoise", [tmp_path / "no.npz", "--out", tmp_path / "o"])
    with pytest.raises(ValueError, match="--theta"):  # no theta in the file, no P(k) file
        run_command("denoise", [inputs / "maps.npz", "--out", tmp_path / "o"])
