#!/usr/bin/env python3
"""The seed's manual check.

    python scripts/probe_smtp.py --email X [--mx-host H] [--force-resolve] [--json]


Same code path as `mailprobe probe`; see `--help` for flags and exit status.
"""

import sys

from mailprobe.cli import main

if __name__ == "__main__":
    sys.exit(main(["probe", *sys.argv[1:]]))
