"""Wiener filter and flow MAP reconstructions of noisy, masked maps; same as
``fieldflow denoise`` (see --help; the logic is ``fieldflow.commands.denoise``).

    python scripts/denoise.py maps.npz --out out/denoise --model runs/trenf --theta 0.3 0.8
    python scripts/denoise.py maps.npz --out out/denoise --model runs/trenf --prior flow-latent

``--prior flow`` is the data-space MAP argmax_s [-|d - M s|^2_N / 2 + log p_flow(s | theta)];
``--prior flow-latent`` the latent MAP s = f^-1(z_hat), z_hat = argmax_z
[-|d - M f^-1(z)|^2_N / 2 - |z|^2 / 2] (see ``fieldflow.denoise.flow_latent_map``).

From Python, ``main(argv) -> dict`` returns the run's summary (summary.json). Mistakes in
the input end with one line ``fieldflow denoise: error: ...`` and exit status 2.
"""

from __future__ import annotations

import json
import sys


def main(argv=None) -> dict:
    """Run ``fieldflow denoise`` with ``argv`` and return its summary.json as a dict."""
    from fieldflow.commands import denoise as command

    args = command.parse_args(argv)
    try:
        status = command.main(argv)
    except ValueError as err:  # a mistake in the input that escaped the command's checks
        print(f"fieldflow denoise: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if status:
        raise SystemExit(status)
    return json.loads((args.out / "summary.json").read_text())


if __name__ == "__main__":
    main()
