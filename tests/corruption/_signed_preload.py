"""Imported by the signed-fuzz forkserver: warm the state every forked worker inherits."""

from .signed_mutations import warm

warm()
