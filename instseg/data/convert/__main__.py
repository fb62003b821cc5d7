"""`python -m instseg.data.convert ...`: the command of instseg.data.convert.cli."""

import sys

from instseg.data.convert.cli import main

sys.exit(main())
