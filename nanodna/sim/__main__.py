"""`python -m nanodna.sim --out DIR [--seed S] [--preset demo|large] [--set name=value ...]`."""

import sys

from nanodna.sim.simulate import main

if __name__ == "__main__":
    sys.exit(main())
