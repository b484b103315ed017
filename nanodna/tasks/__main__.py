"""`python -m nanodna.tasks --out DIR`: the Arabidopsis build (nanodna.tasks.arabidopsis)."""

import sys

from nanodna.tasks.arabidopsis import main

sys.exit(main())
