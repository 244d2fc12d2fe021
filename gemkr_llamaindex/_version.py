"""The package version, defined once (the wheel reads it from here; a KB records it from the metadata)."""

__version__ = "0.1.0"
