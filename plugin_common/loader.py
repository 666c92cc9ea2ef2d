"""Where the plug-ins find pyzmq and msgpack, and loading the run's machinery
(:mod:`.task`), which needs them.

The plug-ins import the task only when a run starts, so that they register with the host
and can say what is missing even where the host's Python lacks those packages.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
from types import ModuleType

from .errors import UserError
from .messages import missing_deps


def site_packages_dir() -> str:
    """The folder beside the vendored ``dragd/`` package that the entry scripts search
    last: where pyzmq and msgpack go when the host's Python cannot install them."""
    here = os.path.dirname(os.path.abspath(__file__))            # .../dragd/plugin_common
    return os.path.join(os.path.dirname(os.path.dirname(here)), "site-packages")


def use_site_packages() -> None:
    """Search :func:`site_packages_dir` last, when it exists (the entry scripts call this
    once the plug-in's own folder is first on sys.path)."""
    site = site_packages_dir()
    if os.path.isdir(site) and site not in sys.path:
        sys.path.append(site)


def load_task(host: str, doc: str) -> ModuleType:
    """:mod:`.task`; a UserError saying how to install pyzmq and msgpack for ``host``
    (its install notes: ``doc``) when they cannot be imported."""
    try:
        from . import task
    except ImportError as e:
        raise UserError(missing_deps(host, e, site_packages_dir(), doc))
    return task


def preload(names=("task", "live")) -> threading.Thread:
    """Import the run's machinery (these plugin_common modules) on a background thread.

    Krita's dockers live as long as Krita, and importing pyzmq, msgpack and the protocol
    took ~70 ms of the first Run or Live view click on its UI thread (measured in Krita
    5.2.9: 29 ms of it compiling a fresh install's sources). A docker starts this when it
    is built; a click that comes sooner waits on Python's import lock for what is left.
    What cannot be imported is left for :func:`load_task` to report."""
    def run() -> None:
        for name in names:
            try:
                importlib.import_module("." + name, __package__)
            except Exception:       # noqa: BLE001 - reported by load_task on use
                return

    t = threading.Thread(target=run, name="dragd-preload", daemon=True)
    t.start()
    return t
