"""The runtime's version, compared against a capsule's ``min_runtime`` rule (FORMAT.md §4.2)."""

__version__ = "0.1.0"
