"""`python -m mailprobe.cli`: the same as the `mailprobe` console script."""

import sys

from mailprobe.cli import main

sys.exit(main())
