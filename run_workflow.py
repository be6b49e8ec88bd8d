#!/usr/bin/env python3
"""synthquant BIDS-App entry point: see ``python run_workflow.py --help``."""

import sys

from synthquant.cli import main

if __name__ == "__main__":
    sys.exit(main())
