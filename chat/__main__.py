"""`python -m chat`: the same command line as `sidechat`."""

import sys

from .cli import main

sys.exit(main(prog="python -m chat"))
