"""The run function: what the docker's Run button and the "Drag (DragGAN)" action call.

:func:`start_drag` reads the edit's inputs out of the document (paint layer, arrows,
selection), starts a :class:`~.connection.DragTask` and drives it from a QTimer, so
Krita's event loop never blocks; it returns the :class:`DragRun` at once. Tests (and the
docker) wait for ``run.finished`` while the event loop spins::

    run = start_drag(doc, DragSettings(endpoint=...), on_finished=callback)
    while not run.finished:            # bounded by a timeout in tests
        QCoreApplication.processEvents(QEventLoop.AllEvents, 50)
    run.state      # "done" | "failed" | "cancelled"
    run.message    # the status line; run.new_layer on success

:class:`DragRun` itself is host-neutral orchestration over the glue (duck-typed host and
document), so the unit tests drive it with stand-ins by calling :meth:`DragRun.step`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

from .session import (Cancelled, DragSettings, UserError, check_handles_movable,
                      composite_through_mask, to_rgba)

POLL_INTERVAL_MS = 30
PROGRESS_INTERVAL = 0.1
PREVIEW_INTERVAL = 0.3

MISSING_DEPS = (
    "The DragGAN plug-in needs the Python packages pyzmq and msgpack inside Krita's Python "
    "(%s). On Debian/Ubuntu: sudo apt install python3-zmq python3-msgpack; other systems: "
    "see the plug-in's KRITA.md (put them into %s).")

_runs: List["DragRun"] = []        # keeps running runs (and their timers) alive


def running() -> Optional["DragRun"]:
    for r in _runs:
        if not r.finished:
            return r
    return None


class DragRun:
    """One drag on one document. ``state``: new -> running -> done | failed | cancelled.
    ``message`` is the status line, ``fraction`` the progress bar (0..1)."""

    def __init__(self, host: Any, doc: Any, settings: DragSettings, *, source: Any = None,
                 vector: Any = None, task_factory: Optional[Callable[..., Any]] = None,
                 on_update: Optional[Callable[["DragRun"], Any]] = None,
                 on_finished: Optional[Callable[["DragRun"], Any]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.doc = doc
        self.settings = settings
        self.source = source
        self.vector = vector
        self.task_factory = task_factory
        self.on_update = on_update
        self.on_finished = on_finished
        self.clock = clock
        self.state = "new"
        self.message = ""
        self.fraction = 0.0
        self.notes: List[str] = []
        self.task: Any = None
        self.preview: Any = None
        self.new_layer: Any = None
        self.outcome: Any = None
        self.rect: Any = None
        self.mask: Any = None
        self.arrows: List[Any] = []
        self.stale_removed = 0
        self.timings: Dict[str, float] = {}
        self._t0 = 0.0
        self._last_progress_t = -1e9
        self._last_preview_t = -1e9
        self._source_rgba = b""
        self._native: Any = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> bool:
        """Read the inputs and send the first request. False (and ``finished``) when the
        run cannot start: the reason is in ``message``."""
        self._t0 = self.clock()
        self.state = "running"
        try:
            self.settings.validate()
            factory = self.task_factory or _default_task_factory()
            self._prepare()
            from ..protocol import Image   # after _default_task_factory checked the import

            image = Image(self._source_rgba, self.rect.width, self.rect.height, 4)
            self.task = factory(self.settings, self.arrows, image, self.mask)
            self.task.start()
        except UserError as e:
            self._end("failed", str(e))
            return False
        except Exception as e:
            self._end("failed", "%s: %s" % (type(e).__name__, e))
            return False
        self.timings["prepare"] = self.clock() - self._t0
        if self.task.done:
            self._finish_task()
            return False
        self._show_progress(force=True)
        return True

    def _prepare(self) -> None:
        host, doc = self.host, self.doc
        source, vector = host.find_targets(doc, self.source, self.vector)
        self.source, self.vector = source, vector
        self.rect = host.layer_rect(doc, source)
        self.arrows, self.notes = host.read_arrows(doc, vector, self.rect)
        self.mask = host.read_mask(doc, self.rect)
        check_handles_movable(self.arrows, self.mask)
        self._source_rgba, self._native = host.read_pixels(doc, source, self.rect)
        self.stale_removed = host.remove_stale_previews(doc)
        if self.settings.live_preview:
            from .glue import PreviewLayer

            self.preview = PreviewLayer(host, doc, source, self.rect)

    def step(self) -> bool:
        """One tick of the timer: poll the daemon, show progress and previews, write the
        result when it arrives. Returns True while the run goes on."""
        if self.finished:
            return False
        try:
            self.task.tick()
            model = self.task.model
            if model.outcome is not None and self.new_layer is None and self.outcome is None:
                self._write(model.outcome)
            if self.task.done:
                self._finish_task()
                return False
            self._show_preview()
            self._show_progress()
        except Exception as e:
            if self.task is not None:
                self.task.close()
            self._end("failed", e.args[0] if isinstance(e, UserError) else
                      "%s: %s" % (type(e).__name__, e))
            return False
        return True

    def stop(self, how: str = "discard") -> None:
        """The Cancel ("discard") and Stop ("keep": keep the drag so far) buttons."""
        if self.finished or self.task is None:
            return
        self.task.stop(how)
        self._show_progress(force=True)

    # -- internals -----------------------------------------------------------------

    def _write(self, outcome: Any) -> None:
        self.outcome = outcome
        if self.preview is not None:
            self.preview.remove()
        img = outcome.image
        rgba = composite_through_mask(
            to_rgba(bytes(img.data), img.channels), self._source_rgba,
            self.mask.data if self.mask is not None else None)
        self.new_layer = self.host.write_result(self.doc, self.source, self.rect, rgba,
                                                self._native, self.mask)
        try:
            self.doc.setActiveNode(self.new_layer)
        except Exception:
            pass
        self.host.refresh(self.doc)

    def _finish_task(self) -> None:
        model = self.task.model
        self.timings.update(getattr(self.task, "timings", {}) or {})
        if model.phase == "done" or (model.outcome is not None and self.new_layer is not None):
            _, text = model.progress()
            if self.notes:
                text += " (%s)" % "; ".join(self.notes)
            self._end("done", text)
        elif model.phase == "cancelled":
            self._end("cancelled", "Cancelled; the layer was not changed.")
        else:
            self._end("failed", model.error or "failed")

    def _end(self, state: str, message: str) -> None:
        if self.preview is not None:
            try:
                self.preview.remove()
            except Exception:
                pass
        self.state = state
        self.message = message
        self.fraction = 1.0 if state == "done" else 0.0
        self.timings["total"] = self.clock() - self._t0
        if self.on_update is not None:
            self.on_update(self)
        if self.on_finished is not None:
            self.on_finished(self)

    def _show_progress(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_progress_t < PROGRESS_INTERVAL:
            return
        self._last_progress_t = now
        self.fraction, self.message = self.task.model.progress()
        if self.on_update is not None:
            self.on_update(self)

    def _show_preview(self) -> None:
        if self.preview is None or self.outcome is not None:
            return              # (a preview that came with the result must not reappear)
        now = self.clock()
        if now - self._last_preview_t < PREVIEW_INTERVAL:
            return
        p = self.task.model.take_preview()
        if p is not None:
            self.preview.show(p)
            self._last_preview_t = now


def _default_task_factory() -> Callable[..., Any]:
    """The real connection; a clear message when pyzmq or msgpack is missing."""
    try:
        from .connection import DragTask
    except ImportError as e:
        import os
        import sys

        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        raise UserError(MISSING_DEPS % ("Python %d.%d: %s" % (sys.version_info[0],
                                                              sys.version_info[1], e),
                                        os.path.join(here, "site-packages")))
    return DragTask


def start_drag(doc: Any = None, settings: Optional[DragSettings] = None, *,
               source: Any = None, vector: Any = None,
               on_update: Optional[Callable[[DragRun], Any]] = None,
               on_finished: Optional[Callable[[DragRun], Any]] = None,
               host: Any = None, task_factory: Optional[Callable[..., Any]] = None,
               interval_ms: int = POLL_INTERVAL_MS) -> DragRun:
    """Start a drag on ``doc`` (default: the active document) and return at once. A
    QTimer calls :meth:`DragRun.step` every ``interval_ms`` until the run finishes.
    ``on_update(run)`` follows progress, ``on_finished(run)`` is called once at the end
    (also when the run cannot start: then it is called before this returns)."""
    from PyQt5.QtCore import QTimer

    if doc is None:
        from krita import Krita

        doc = Krita.instance().activeDocument()
    if host is None:
        from .glue import KritaHost

        host = KritaHost()
    run = DragRun(host, doc, settings or DragSettings(), source=source, vector=vector,
                  task_factory=task_factory, on_update=on_update, on_finished=on_finished)
    other = running()
    if other is not None:
        run._end("failed", "A drag is already running; wait for it or cancel it first.")
        return run
    if not run.start():
        return run
    timer = QTimer()
    timer.setInterval(int(interval_ms))

    def tick() -> None:
        if not run.step():
            timer.stop()
            if run in _runs:
                _runs.remove(run)

    timer.timeout.connect(tick)
    run.timer = timer          # type: ignore[attr-defined]
    _runs.append(run)
    timer.start()
    return run


__all__ = ["DragRun", "start_drag", "running", "Cancelled"]
