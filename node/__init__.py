"""Fanline's edge node."""

from importlib.metadata import PackageNotFoundError, version

try:
    # pyproject.toml holds the version; the installed metadata carries it here.
    __version__ = version("fanline")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
