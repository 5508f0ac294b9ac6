"""``python -m firmware_tools``: same as the ``firmware-tools`` command."""

import sys

from .cli import main

sys.exit(main())
