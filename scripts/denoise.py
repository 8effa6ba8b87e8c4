"""Wiener filter and flow MAP reconstructions of noisy, masked maps; same as
``fieldflow denoise`` (see --help).

    python scripts/denoise.py maps.npz --out out/denoise --model runs/trenf --theta 0.3 0.8
"""

import sys

from fieldflow.commands.denoise import main

if __name__ == "__main__":
    sys.exit(main())
