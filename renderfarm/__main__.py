"""``python -m renderfarm``: the same as the ``renderfarm`` command."""

import sys

from renderfarm.cli import main

sys.exit(main())
