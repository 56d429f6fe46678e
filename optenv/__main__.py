"""``python -m optenv`` = the ``optenv`` command."""

import sys

from optenv.lab.cli import main

sys.exit(main())
