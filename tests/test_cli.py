"""The fieldflow command line: every documented example runs (on tiny data), the commands
share one shape, user mistakes are one-line errors, and the quickstart runs end to end.

The examples are every line of each command module's ``EXAMPLES`` and every ``fieldflow``
line of README.md's "## Command line" block. Each runs through ``fieldflow.cli.main`` in a
fresh directory where its inputs exist (``data/*`` is the tiny data set, ``runs/*`` the tiny
trained run, any other ``.npz`` a small map file), with its size options made tiny.
"""

import argparse
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import CALIBRATION_THETA, CONCAVE_RUN, TINY_TRAIN_OPTIONS

from fieldflow.cli import main
from fieldflow.commands import NAMES, add_subparser, command_module

README = Path(__file__).resolve().parent.parent / "README.md"

# size options, made tiny: given a tiny value wherever an example gives them ...
TINY_VALUES = {
    "--box": ["64"],
    "--lognormal-box": ["64"],
    "--n-fiducial": ["16"],
    "--n-mesh": ["16"],
    "--n-steps": ["2"],
    "--repeats": ["1"],
    "--calibrate": ["2"],
    "--calibrate-contrast": ["1"],
}
# ... and, per command, given a tiny value or added when an example does not give them. The
# tiny data set, run, quickstart and examples share their settings where they can, so that
# most compilations come from the compilation cache (see conftest.py)
TINY_OPTIONS = {
    "generate": {"--n-sims": ["32"], "--n": ["16"]},
    "train": {**TINY_TRAIN_OPTIONS, "--channels": ["4"]},
    "calibrate": {
        "--num": ["16"],
        "--out": ["out/calibration"],
        "--theta": CALIBRATION_THETA[1:],
        "--grid": ["16"],  # test_calibrate_command's grid: its compilations are reused
    },
    "sample": {"--num": ["8"]},
    "infer": {"--grid": ["50"], "--warmup": ["10"], "--samples": ["8"]},
    "denoise": {"--steps": ["3"]},
    # its calibration diagnostics are tested in test_evaluation.py
    "evaluate": {"--num": ["16"], "--grid": ["6"], "--coverage-maps": ["0"]},
    "benchmark": {"--sizes": ["16"], "--batch": ["2"], "--layers": ["1"], "--hidden": ["8"]},
    "quickstart": {
        "--n-sims": ["32"],
        "--n": ["16"],
        "--box": ["64"],
        **{k: TINY_TRAIN_OPTIONS[k] for k in ("--steps", "--layers", "--hidden")},
    },
}
# what each command writes (not linked to the shared inputs): its output directories
WRITES = {"generate": ("data/",), "train": ("runs/",)}


def readme_examples() -> list[str]:
    text = README.read_text()
    block = re.search(r"^## Command line\n.*?```bash\n(.*?)```", text, re.S | re.M)
    assert block, "README.md has no ```bash block under '## Command line'"
    return [line.strip() for line in block.group(1).splitlines() if line.startswith("fieldflow ")]


def all_examples() -> list[tuple[str, str]]:
    found = [(f"{name}.EXAMPLES", line) for name in NAMES for line in command_module(name).EXAMPLES]
    return found + [("README", line) for line in readme_examples()]


def tiny_argv(line: str) -> list[str]:
    """The example's arguments (after ``fieldflow``) with tiny size options."""
    words = shlex.split(line, comments=True)
    assert words[0] == "fieldflow" and len(words) > 1, line
    tiny = {**TINY_VALUES, **TINY_OPTIONS.get(words[1], {})}
    argv, i = [words[1]], 2
    while i < len(words):
        argv.append(words[i])
        i += 1
        if argv[-1] in tiny:
            while i < len(words) and not words[i].startswith("--"):
                i += 1
            argv += tiny[argv[-1]]
    for option, values in TINY_OPTIONS.get(argv[0], {}).items():
        if option not in argv:
            argv += [option, *values]
    return argv + ["--no-progress"]


def provide_inputs(argv: list[str], cwd: Path, data_dir: Path, run_dir: Path, maps: Path):
    """Make the relative input paths of ``argv`` exist under ``cwd`` (links)."""
    outputs = WRITES.get(argv[0], ())
    for word in argv[1:]:
        parts = Path(word).parts
        if word.startswith("-") or any(word.startswith(o) for o in outputs):
            continue
        if len(parts) >= 2 and parts[0] in ("data", "runs"):
            link = cwd / parts[0] / parts[1]
            target = data_dir if parts[0] == "data" else run_dir
        elif word.endswith(".npz"):
            link, target = cwd / word, maps
        else:
            continue
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)


@pytest.fixture(scope="module")
def tiny_maps_file(tiny_data_dir, tmp_path_factory):
    """One held-out 16 x 16 map with its theta and box, as the commands read them (one map:
    the denoise examples then compile what the others did)."""
    from fieldflow.data import load_dataset
    from fieldflow.io import save_npz

    maps, theta = load_dataset(tiny_data_dir)["test"]
    path = tmp_path_factory.mktemp("maps") / "maps.npz"
    return save_npz(path, maps=maps[:1], theta=theta[:1], box=np.float64(64.0))


def unique_examples() -> list[tuple[str, str]]:
    """Every example but the quickstart's (run by its own test), once per tiny command."""
    seen, out = set(), []
    for source, line in all_examples():
        argv = tuple(tiny_argv(line))
        if argv[0] != "quickstart" and argv not in seen:
            seen.add(argv)
            out.append((source, line))
    return out


EXAMPLES = unique_examples()


@pytest.mark.parametrize(
    "source, line",
    [
        pytest.param(s, x, marks=[CONCAVE_RUN] if shlex.split(x)[1] == "calibrate" else [])
        for s, x in EXAMPLES
    ],
    ids=[f"{s}:{shlex.split(x)[1]}{i}" for i, (s, x) in enumerate(EXAMPLES)],
)
def test_example_runs_on_tiny_data(
    source,
    line,
    tiny_data_dir,
    tiny_run_dir,
    tiny_maps_file,
    tmp_path,
    monkeypatch,
    capsys,
    request,
):
    argv = tiny_argv(line)
    if argv[0] == "calibrate":  # the tiny run is too short to have a concave likelihood
        tiny_run_dir = request.getfixturevalue("concave_run_dir")
    provide_inputs(argv, tmp_path, tiny_data_dir, tiny_run_dir, tiny_maps_file)
    monkeypatch.chdir(tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 0, f"{source}: `{line}` failed ({' '.join(argv)}):\n{err[-2000:]}"
    inside = tmp_path.resolve()
    summaries = [p for p in tmp_path.rglob("summary.json") if p.resolve().is_relative_to(inside)]
    if argv[0] != "benchmark" or "--out-dir" in argv:
        assert summaries, f"`{line}` wrote no summary.json"
        for path in summaries:
            json.loads(path.read_text())


def test_every_command_has_the_one_shape(capsys):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    for name in NAMES:
        module = command_module(name)
        assert isinstance(module.HELP, str) and module.HELP and "\n" not in module.HELP
        assert module.EXAMPLES, name
        assert all(line.startswith(f"fieldflow {name} ") for line in module.EXAMPLES), name
        assert callable(module.run), name
        sub = add_subparser(subparsers, name)
        assert any("--no-progress" in a.option_strings for a in sub._actions), name
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in NAMES:
        assert name in text
        for line in command_module(name).EXAMPLES:
            assert line in text


def test_readme_lists_every_command():
    assert {shlex.split(line)[1] for line in readme_examples()} >= set(NAMES) - {"quickstart"}


def test_quickstart_runs_the_whole_pipeline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for line in command_module("quickstart").EXAMPLES:
        argv = tiny_argv(line)
        assert main(argv) == 0, line
    out = tmp_path / argv[1]
    summary = json.loads((out / "summary.json").read_text())
    train = summary["train"]
    assert np.isfinite(train["test_nll_per_pixel"]) and np.isfinite(train["gap_nats_per_pixel"])
    assert set(summary["infer"]) == {"TRENF", "exact lognormal"}
    for fig in summary["figures"]:
        assert Path(fig).is_file(), fig
    samples = np.load(out / "samples" / "samples.npz")
    assert samples["maps"].shape == (8, 16, 16) and np.all(np.isfinite(samples["maps"]))
    printed = capsys.readouterr().out
    assert "figures:" in printed
    assert [f"[{i}/5]" in printed for i in range(1, 6)] == [True] * 5

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
        (["evaluate", "/no/such/run", "/no/such/data", "/tmp/x"], "does not exist"),
        (["generate", __file__, "--n-sims", "2", "--n", "8"], "not a directory"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fieldflow: error:") and message in err[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["infer", "RUN", "/no/map.npz", "OUT"], "does not exist"),
        (["sample", "RUN", "OUT"], "--theta"),
        (["evaluate", "RUN", "DATA", "OUT", "--index", "99", "--num", "2"], "out of range"),
    ],
)
def test_user_mistakes_with_a_run_are_one_line_errors(
    argv, message, tiny_run_dir, tiny_data_dir, tmp_path, capsys
):
    paths = {"RUN": str(tiny_run_dir), "DATA": str(tiny_data_dir), "OUT": str(tmp_path / "o")}
    assert main([paths.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fieldflow: error:") and message in err[0]


def test_unknown_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "run", "out", "--no-such-option"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_train_defaults_of_the_multiscale_flow():
    """The multiscale flow gets its full-resolution TRENF layers and lattice augmentation by
    default (it lacks the symmetries TRENF has exactly); each can be turned off."""
    from fieldflow.commands import train

    parser = argparse.ArgumentParser()
    sub = train.add_parser(parser.add_subparsers())

    def parsed(*extra):
        return sub.parse_args(["data", "run", *extra])

    multiscale = parsed("--model", "multiscale")
    assert train.model_kwargs(multiscale)["prefix_layers"] == 5 and train.augment(multiscale)
    assert not train.augment(parsed("--model", "multiscale", "--no-augment"))
    assert not train.augment(parsed()) and train.augment(parsed("--augment"))
    assert train.model_kwargs(parsed("--model", "multiscale", "--prefix-layers", "0")) == {
        **train.model_kwargs(multiscale),
        "prefix_layers": 0,
    }


def test_train_psi_bound_reaches_the_spline_models_only():
    """--psi-bound sets the splines' range of TRENF and the multiscale flow; RealNVP has no
    splines, so asking for it there is an error, not a silently ignored option."""
    from fieldflow.commands import train

    parser = argparse.ArgumentParser()
    sub = train.add_parser(parser.add_subparsers())

    def kwargs(*extra):
        return train.model_kwargs(sub.parse_args(["data", "run", *extra]))

    assert "psi_bound" not in kwargs()
    assert kwargs("--psi-bound", "15")["psi_bound"] == 15.0
    assert kwargs("--model", "multiscale", "--psi-bound", "8")["psi_bound"] == 8.0
    with pytest.raises(ValueError, match="--psi-bound"):
        kwargs("--model", "realnvp", "--psi-bound", "8")
