"""``python -m client VIDEO [--url URL] [--topk K] [--clips N]``: see client/predict.py."""

import sys

from client.predict import main

if __name__ == "__main__":
    sys.exit(main())
