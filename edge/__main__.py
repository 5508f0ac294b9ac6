"""``python -m edge``: same as the ``edge`` command."""

from .cli import run

run()
