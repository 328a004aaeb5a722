import sys

if sys.argv[1:2] == ["train"]:  # the signal policy first, before any other import
    from .comm import interrupts

    interrupts.install()

from .cli import main

sys.exit(main())
