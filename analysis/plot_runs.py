#!/usr/bin/env python
"""PNG figures of hpcgrad logs (same as `hpcgrad analyze plot RUN.h5... -o DIR`).

A thin wrapper: the work is done by hpcgrad.analysis (see docs/analysis.md); arguments are
passed through, e.g. `python analysis/plot_runs.py --help`.
"""

import sys

from hpcgrad.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", "plot", *sys.argv[1:]]))
