"""Generate a data set: same options as ``python -m data_gen`` (see --help)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_gen.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
