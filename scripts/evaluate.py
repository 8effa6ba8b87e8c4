"""Sample quality and posteriors of a trained run; same options as ``fieldflow evaluate``.

python scripts/evaluate.py RUN_DIR DATA_DIR OUT_DIR [--theta 0.3 0.8] [--num 1024]
"""

import sys

from fieldflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
