"""The fieldflow command line end to end on tiny settings, and its one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from fieldflow.cli import main


def test_quickstart_runs_the_whole_pipeline(tmp_path, capsys):
    out = tmp_path / "qs"
    rc = main(
        [
            "quickstart",
            str(out),
            "--n-sims",
            "64",
            "--n",
            "16",
            "--box",
            "64",
            "--steps",
            "20",
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    train = summary["train"]
    assert np.isfinite(train["test_nll_per_pixel"]) and np.isfinite(train["gap_nats_per_pixel"])
    assert set(summary["infer"]) == {"TRENF", "exact lognormal"}
    for fig in summary["figures"]:
        assert Path(fig).is_file(), fig
    samples = np.load(out / "samples" / "samples.npz")
    assert samples["maps"].shape == (8, 16, 16) and np.all(np.isfinite(samples["maps"]))
    assert "figures:" in capsys.readouterr().out

    # the trained run serves the other subcommands
    assert (
        main(
            ["sample", str(out / "run"), str(tmp_path / "s"), "--theta", "0.3", "0.8", "--num", "3"]
        )
        == 0
    )
    assert np.load(tmp_path / "s" / "samples.npz")["maps"].shape == (3, 16, 16)
    assert (
        main(
            [
                "infer",
                str(out / "run"),
                str(out / "test_maps.npz"),
                str(tmp_path / "i"),
                "--grid",
                "12",
            ]
        )
        == 0
    )
    post = json.loads((tmp_path / "i" / "summary.json").read_text())["posteriors"]["TRENF"]
    assert post["fom"] > 0 and 0.2 <= post["mean"][0] <= 0.5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "/no/such/run", "/tmp/x", "--theta", "0.3", "0.8"], "not a fieldflow run"),
        (["train", "/no/such/data", "/tmp/run"], "does not exist"),
        (["infer", "/no/such/run", "/no/map.npz", "/tmp/x"], "not a fieldflow run"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fieldflow: error:") and message in err[0]
