"""``python -m fedcls <command> [args ...]``: the same as the ``fedcls`` console script (fedcls.cli)."""

import sys

from fedcls.cli import main

if __name__ == "__main__":
    sys.exit(main())
