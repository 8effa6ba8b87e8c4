"""Wiener filter and flow MAP reconstructions of noisy, masked maps: ``fieldflow denoise``
(see ``--help``; the logic is ``fieldflow.denoise``).

    python scripts/denoise.py maps.npz --out out/denoise --model runs/trenf --prior flow-latent
"""

import sys

from fieldflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["denoise", *sys.argv[1:]]))
