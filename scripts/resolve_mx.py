#!/usr/bin/env python3
"""The seed's R15 script: `python scripts/resolve_mx.py --from-db` (or --domain D [--force]).

Same code path as `mailprobe resolve`.
"""

import sys

from mailprobe.cli import main

if __name__ == "__main__":
    sys.exit(main(["resolve", *sys.argv[1:]]))
