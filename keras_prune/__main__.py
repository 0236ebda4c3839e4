"""`python -m keras_prune compare ...`: the same as the `keras-prune` command."""

import sys

from keras_prune.compare.cli import main

if __name__ == "__main__":
    sys.exit(main())
