"""Train a flow on a data set directory; same options as ``fieldflow train`` (see --help).

python scripts/train.py data/ln32 runs/trenf --steps 4000
python scripts/train.py data/ln32 runs/trenf --steps 4000 --resume   # after an interruption
"""

import sys

from fieldflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
