"""``python -m client PATH... [options]``: see client/cli.py."""

import sys

from client.cli import main

if __name__ == "__main__":
    sys.exit(main())
