"""``python -m edge``: same as the ``edge`` command."""

import sys

from .cli import main

sys.exit(main())
