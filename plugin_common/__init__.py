"""Host-independent code shared by the GIMP 3 and Krita 5 plug-ins: pure Python.

Only the standard library and ``..protocol`` are imported here (pyzmq and msgpack are all
the hosts have). The installer vendors this package next to the protocol in both
installed layouts (``dragd/{gimp_plugin,plugin_common,protocol}`` and
``dragd_krita/dragd/{krita_plugin,plugin_common,protocol}``), so the plug-ins import it
relatively (``from ..plugin_common import ...``) in the repository and inside the host.

* :mod:`.errors`: :class:`UserError`, :class:`Cancelled`;
* :mod:`.settings`: the shared constants (endpoint, timeouts) and :class:`BaseDragSettings`
  (the drag's fields and what they become on the wire);
* :mod:`.geometry`: :class:`Arrow` (handle->target in layer coordinates), and how the
  live views show a layer box (:func:`~.geometry.region_box`, :func:`~.geometry.view_crop`);
* :mod:`.mask`: selection -> movable region (:func:`make_mask`,
  :func:`check_handles_movable`);
* :mod:`.pixels`: :func:`to_rgba`, :func:`merge_alpha`;
* :mod:`.jobs`: :class:`Outcome` and :class:`BaseJobModel`, the state of one run driven
  by protocol events, its progress maths and status line (each host words the line);
* :mod:`.messages`: what the plug-ins tell the user about a run (errors, the daemon
  probe's line, missing pyzmq), worded once;
* :mod:`.pacing`: :class:`~.pacing.Pacer`, how often the host redraws progress and
  previews.

These import the protocol (and so pyzmq); the package itself imports no zmq, so the
plug-ins' models stay importable and can report what is missing:

* :mod:`.task`: :class:`~.task.DragTask`, the run itself (connect, open, drag, close;
  every wait bounded) both hosts drive, and :class:`~.task.DaemonProbe`; load it with
  :func:`.loader.load_task`, which words the missing-package error;
* :mod:`.hello`: :func:`~.hello.accept_hello`, checking the daemon's limits and models;
* :mod:`.keys`: :func:`keys_dir`, :func:`curve_for` (CurveZMQ client configuration).
"""
from .errors import Cancelled, UserError
from .geometry import Arrow, Point, fmt_point
from .jobs import OPEN_STAGES, OPEN_WEIGHT, BaseJobModel, Outcome
from .mask import MaskInfo, check_handles_movable, make_mask
from .pixels import merge_alpha, to_rgba
from .settings import (ALIGN_MODES, ALIGN_SWITCH, CLOSE_TIMEOUT, CONNECT_TIMEOUT,
                       DEFAULT_ENDPOINT, INVERSION_QUALITIES, METHODS, PASTE_MODES,
                       PREVIEW_LAYER_NAME, SPACES, START_COMMAND, STOP_GRACE, BaseDragSettings)

__all__ = [
    "ALIGN_MODES", "ALIGN_SWITCH", "Arrow", "BaseDragSettings", "BaseJobModel", "CLOSE_TIMEOUT",
    "CONNECT_TIMEOUT", "Cancelled", "DEFAULT_ENDPOINT", "INVERSION_QUALITIES", "MaskInfo",
    "OPEN_STAGES",
    "METHODS", "OPEN_WEIGHT", "Outcome", "PASTE_MODES", "PREVIEW_LAYER_NAME", "Point", "SPACES", "START_COMMAND",
    "STOP_GRACE", "UserError", "check_handles_movable", "fmt_point", "make_mask",
    "merge_alpha", "to_rgba",
]
