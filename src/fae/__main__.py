"""``python -m fae`` runs the command line."""

import sys

from fae.cli import main

sys.exit(main())
