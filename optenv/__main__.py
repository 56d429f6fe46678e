"""``python -m optenv`` = the ``optenv`` command."""

import sys

from optenv.cli import main

sys.exit(main())
