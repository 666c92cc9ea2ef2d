"""A recording stand-in backend for the plug-in tests, served by the real dragd server.

Inversion is a few progress steps; a drag streams one preview per step, honours cancel
(returning the drag so far) and returns the layer with its RGB inverted EVERYWHERE (it ignores
the mask: the plug-ins must keep unselected pixels themselves). It records what it was sent
and how each drag ended, so tests can check the requests the hosts made.
"""
from __future__ import annotations

import contextlib
import time

from dragd.daemon.service.backend import BackendError, NullBackend
from dragd.daemon.service.server import Server, ServerConfig
from dragd.protocol import Image

LONG_DRAG = 1000          # a drag with max_steps >= this runs long_drag_steps (cancellation tests)


class RecordingBackend(NullBackend):
    """opened: [{"size": (w, h, channels), "model", "invert", "roi", "align"}]; drags:
    [{"points", "mask", "params", "ended", "cancel_reason"}]; previews: how many were sent.

    A model named "slow" inverts slowly; a layer fail_width px wide fails its drag with
    out_of_memory. The drag inverts the colours, everywhere, or (honour_mask) blended
    through the mask as the real daemon pastes back. open_session replies with ``info`` as
    set (e.g. the daemon's ``align`` and ``domain``), or refuses with ``open_error`` (a
    BackendError) when set."""

    def __init__(self, *, models=("toy",), invert_steps: int = 3, invert_wait: float = 0.05,
                 drag_steps: int = 5, step_wait: float = 0.05, long_drag_steps: int = 100,
                 long_step_wait: float = 0.3, preview_size: tuple[int, int] = (4, 3),
                 fail_width: int | None = 13, honour_mask: bool = False):
        super().__init__(device="stub", models=models)
        self.invert_steps, self.invert_wait = invert_steps, invert_wait
        self.drag_steps, self.step_wait = drag_steps, step_wait
        self.long_drag_steps, self.long_step_wait = long_drag_steps, long_step_wait
        self.preview_size, self.fail_width = preview_size, fail_width
        self.honour_mask = honour_mask
        self.opened, self.drags = [], []
        self.info: dict = {}
        self.open_error: BackendError | None = None
        self.previews = 0

    def open_session(self, session_id, image, width, height, channels, settings, progress, cancel):
        self.opened.append({"size": (width, height, channels), "model": settings.get("model"),
                            "invert": settings.get("invert"), "roi": settings.get("roi"),
                            "align": settings.get("align")})
        for i in range(self.invert_steps):
            cancel.check()
            progress({"stage": "invert", "step": i, "total": self.invert_steps})
            cancel.wait(self.invert_wait if settings.get("model") != "slow" else 0.5)
        if self.open_error is not None:
            raise self.open_error
        reply = super().open_session(session_id, image, width, height, channels, settings,
                                     progress, cancel)
        return dict(reply, info=dict(self.info)) if self.info else reply

    def drag(self, session_id, points, mask, params, progress, cancel):
        img = self._get(session_id)
        self.drags.append({"points": [[list(h), list(t)] for h, t in points],
                           "mask": None if mask is None else bytes(mask), "params": dict(params)})
        data = bytearray(bytes(img.data))
        for c in range(3):
            if mask is None or not self.honour_mask:
                data[c::img.channels] = bytes(255 - b for b in data[c::img.channels])
            else:   # as the real daemon: blended through the mask, 0 = the source exactly
                data[c::img.channels] = bytes(
                    (v * (255 - m) + (255 - v) * m + 127) // 255
                    for v, m in zip(data[c::img.channels], bytes(mask)))
        long = params["max_steps"] >= LONG_DRAG
        n = self.long_drag_steps if long else min(self.drag_steps, int(params["max_steps"]))
        pw, ph = self.preview_size
        steps = 0
        for s in range(n):
            if cancel.cancelled:
                break
            prev = Image(bytes([40 * s % 256, 90, 160, 255]) * (pw * ph), pw, ph, 4)
            progress({"stage": "drag", "step": s, "total": params["max_steps"],
                      "distance": max(0.0, float(self.drag_steps - s))}, {"preview": prev})
            self.previews += 1
            steps = s + 1
            cancel.wait(self.long_step_wait if long else self.step_wait)
        self.drags[-1].update(ended=time.monotonic(), cancel_reason=cancel.reason)
        if img.width == self.fail_width:
            raise BackendError("out_of_memory", "too big for the test")
        return {"image": Image(bytes(data), img.width, img.height, img.channels),
                "handles": [list(t) for _, t in points], "steps": steps,
                "stop": "cancelled" if cancel.cancelled else "converged",
                "distance": 0.5, "history": 1}


@contextlib.contextmanager
def serving(backend):
    """The real dragd server on 127.0.0.1 around backend; yields its endpoint."""
    srv = Server(backend, ServerConfig(endpoint="tcp://127.0.0.1:0", shutdown_timeout=3.0)).start()
    try:
        yield srv.endpoint
    finally:
        srv.stop()
