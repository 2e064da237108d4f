"""`python -m bfmscale` = the `bfmscale` command."""

import sys

from bfmscale.cli import main

sys.exit(main())
