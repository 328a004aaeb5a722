#!/usr/bin/env python
"""Alpha-beta projection and fit (same as `hpcgrad analyze project`).

A thin wrapper: the work is done by hpcgrad.analysis (see docs/analysis.md); arguments are
passed through, e.g. `python analysis/project.py --help`.
"""

import sys

from hpcgrad.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze", "project", *sys.argv[1:]]))
