#!/usr/bin/env python
"""CSV tables of one log (same as `hpcgrad analyze export RUN.h5 --csv DIR`).

A thin wrapper: the work is done by hpcgrad.analysis (see docs/analysis.md); arguments are
passed through, e.g. `python analysis/export_csv.py --help`.
"""

import sys

from hpcgrad.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", "export", *sys.argv[1:]]))
