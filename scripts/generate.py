"""Generate a data set; same options as ``fieldflow generate`` (see --help).

python scripts/generate.py data/ln32 --simulator lognormal --n-sims 2048 --n 32 --n-fiducial 256
python scripts/generate.py data/nb32 --simulator nbody --n-sims 512 --n 32   # resumable
"""

import sys

from fieldflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
