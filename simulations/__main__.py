"""`python -m simulations ...` is `p2pexec simulate ...`."""

import sys

from simulations.cli import main

sys.exit(main())
