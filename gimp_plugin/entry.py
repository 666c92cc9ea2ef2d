#!/usr/bin/env python3
"""GIMP 3 entry script of the dragd plug-in (installed as dragd-gimp/dragd-gimp.py).

The installer puts the vendored packages beside this file (dragd/gimp_plugin,
dragd/plugin_common and dragd/protocol), so this folder goes first on sys.path and the
plug-in is imported as dragd.gimp_plugin, the same name it has in the repository. A folder
"site-packages" beside this file, when present, is searched last: a place for pyzmq and
msgpack when GIMP's own Python lacks them and cannot install them (Flatpak, macOS; see
docs/GIMP.md).
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

from dragd.plugin_common.loader import use_site_packages  # noqa: E402

use_site_packages()

from dragd.gimp_plugin.plugin import main  # noqa: E402

main(sys.argv)
