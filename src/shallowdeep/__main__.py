"""``python -m shallowdeep`` (also what torchrun launches)."""

import sys

from .cli import main

if __name__ == "__main__":  # run as `python -m shallowdeep`, not when something imports it
    sys.exit(main())
