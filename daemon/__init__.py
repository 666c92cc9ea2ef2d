"""The dragd daemon: everything with torch in it.

Sub-packages, imported in one direction only (tests/test_layout.py checks it):
cli → service → edit → model.
"""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("dragd")
except _metadata.PackageNotFoundError:     # run from a checkout that was never installed
    __version__ = "0+unknown"
