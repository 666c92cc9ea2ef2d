"""Where the plug-ins find pyzmq and msgpack, and loading the run's machinery
(:mod:`.task`), which needs them.

The plug-ins import the task only when a run starts, so that they register with the host
and can say what is missing even where the host's Python lacks those packages.
"""
from __future__ import annotations

import os
import sys
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
