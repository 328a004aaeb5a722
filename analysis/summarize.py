#!/usr/bin/env python
"""Per-run figures of hpcgrad logs (same as `hpcgrad analyze summary`).

A thin wrapper: the work is done by hpcgrad.analysis (see docs/analysis.md); arguments are
passed through, e.g. `python analysis/summarize.py --help`.
"""

import sys

from hpcgrad.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", "summary", *sys.argv[1:]]))
