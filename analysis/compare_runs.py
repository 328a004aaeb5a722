#!/usr/bin/env python
"""Ratios of runs against the first (same as `hpcgrad analyze compare`).

A thin wrapper: the work is done by hpcgrad.analysis (see docs/analysis.md); arguments are
passed through, e.g. `python analysis/compare_runs.py --help`.
"""

import sys

from hpcgrad.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", "compare", *sys.argv[1:]]))
