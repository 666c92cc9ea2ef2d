"""Krita entry module of the dragd plug-in (installed as <pykrita>/dragd_krita/__init__.py).

The installer (and the zip for Tools > Scripts > Import Python Plugin from File...) puts the
vendored packages inside this folder, dragd_krita/dragd/{krita_plugin,plugin_common,protocol}:
Krita's importer extracts only the folder named in the .desktop file. This folder goes first on
sys.path, so the plug-in is imported as dragd.krita_plugin, the same name it has in the
repository. A folder "site-packages" beside this file, when present, is searched last: a
place for pyzmq and msgpack when Krita's own Python lacks them (AppImage, Windows, macOS;
see KRITA.md).
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

from dragd.plugin_common.loader import use_site_packages  # noqa: E402

use_site_packages()

from dragd.krita_plugin.plugin import register  # noqa: E402

register()
