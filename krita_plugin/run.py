"""The run function: what the docker's Run button and the "Drag (DragGAN)" action call.

:func:`start_drag` reads the edit's inputs out of the document (paint layer, arrows,
selection), starts the shared run (:class:`~..plugin_common.task.DragTask`) and drives it
from a QTimer whose every tick polls without waiting and writes at most one band of the
result (:class:`~.host.ResultWriter`), so Krita's event loop never blocks; it returns the
:class:`DragRun` at once. Previews go to ``on_preview`` (the docker shows them). Tests (and the
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

from ..plugin_common.loader import load_task
from ..plugin_common.messages import bug
from ..plugin_common.pacing import Pacer
from .model import (CLIENT_NAME, Arrow, Cancelled, DragSettings, JobModel, UserError,
                    check_handles_movable)

POLL_INTERVAL_MS = 30

_runs: List["DragRun"] = []        # keeps running runs (and their timers) alive


def task_module() -> Any:
    """The shared run's module; a UserError saying how to install pyzmq and msgpack when
    Krita's Python lacks them."""
    return load_task("Krita", "docs/KRITA.md")


def make_task(settings: DragSettings, arrows: list, image: Any, mask: Any, **kw: Any) -> Any:
    """The shared run in the docker's words."""
    return task_module().DragTask(settings, arrows, image, mask, job_model=JobModel,
                                  client_name=CLIENT_NAME, **kw)


def make_probe(endpoint: str, **kw: Any) -> Any:
    """Asks the daemon for its models (the docker's refresh button); tick it."""
    return task_module().DaemonProbe(endpoint, client_name=CLIENT_NAME, **kw)


def running() -> Optional["DragRun"]:
    for r in _runs:
        if not r.finished:
            return r
    return None


class DragRun:
    """One drag on one document. ``state``: new -> running -> done | failed | cancelled.
    ``message`` is the status line, ``fraction`` the progress bar (0..1)."""

    def __init__(self, host: Any, doc: Any, settings: DragSettings, *, source: Any = None,
                 vector: Any = None, task_factory: Callable[..., Any] = make_task,
                 on_update: Optional[Callable[["DragRun"], Any]] = None,
                 on_finished: Optional[Callable[["DragRun"], Any]] = None,
                 on_preview: Optional[Callable[[Any], Any]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.doc = doc
        self.settings = settings
        self.source = source
        self.vector = vector
        self.task_factory = task_factory
        self.on_update = on_update
        self.on_finished = on_finished
        self.on_preview = on_preview
        self.clock = clock
        self.state = "new"
        self.message = ""
        self.fraction = 0.0
        self.notes: List[str] = []
        self.task: Any = None
        self.pacer: Optional[Pacer] = None
        self.previews = 0
        self.writer: Any = None
        self.new_layer: Any = None
        self.outcome: Any = None
        self.rect: Any = None
        self.mask: Any = None
        self.arrows: List[Any] = []
        self.stale_removed = 0
        #: What the run measured (s): its phases, and the longest time one UI-thread
        #: callback spent on each kind of work ("ui_tick" the whole callback, "ui_read",
        #: "ui_send", "ui_poll_dragging", "ui_write", ...): what would stall Krita.
        self.timings: Dict[str, float] = {}
        self._t0 = 0.0
        self._source_rgba = b""
        self._native: Any = None
        self.reader: Any = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> bool:
        """Check the inputs and start reading the layer (a band per :meth:`step`; the
        first request goes out once it is read). False (and ``finished``) when the run
        cannot start: the reason is in ``message``."""
        self._t0 = self.clock()
        self.state = "running"
        try:
            self.settings.validate()
            task_module()                      # says what is missing before reading
            self._timed("start", self._prepare)
        except UserError as e:
            self._end("failed", str(e))
            return False
        except Exception as e:
            self._end("failed", bug(e))
            return False
        self.message = "Reading the layer\u2026"
        if self.on_update is not None:
            self.on_update(self)
        return True

    def _start_task(self) -> None:
        """The layer is read: send it."""
        self._source_rgba, self._native = self.reader.rgba, self.reader.native
        self.reader = None
        image = task_module().Image(self._source_rgba, self.rect.width, self.rect.height, 4)
        self.task = self.task_factory(self.settings, self.arrows, image, self.mask)
        self.pacer = Pacer(self.task.model, self.clock)
        self.task.start()
        self.timings["prepare"] = self.clock() - self._t0
        self._show_progress(force=True)

    def _prepare(self) -> None:
        host, doc = self.host, self.doc
        source, vector = host.find_targets(doc, self.source, self.vector)
        self.source, self.vector = source, vector
        self.rect = host.layer_rect(doc, source)
        self.arrows, self.notes = host.read_arrows(doc, vector, self.rect)
        self.mask = host.read_mask(doc, self.rect)
        check_handles_movable(self.arrows, self.mask)
        self.reader = host.pixel_reader(doc, source, self.rect)
        self.stale_removed = host.remove_stale_previews(doc)

    def step(self) -> bool:
        """One tick of the timer: poll the daemon, show progress and previews, write a band
        of the result once it is there. Returns True while the run goes on."""
        if self.finished:
            return False
        t0 = self.clock()
        try:
            return self._step()
        finally:
            self._lap_ui("tick", t0)

    def _lap_ui(self, what: str, since: float) -> None:
        """Keep the longest time one callback spent on ``what`` (``timings["ui_" + what]``)."""
        key = "ui_" + what
        self.timings[key] = max(self.clock() - since, self.timings.get(key, 0.0))

    def _timed(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = self.clock()
        try:
            return fn(*args)
        finally:
            self._lap_ui(what, t0)

    def _step(self) -> bool:
        try:
            if self.task is None:
                if self._timed("read", self.reader.step):
                    self._timed("send", self._start_task)
                    if self.task.done:
                        self._finish_task()
                        return False
                return True
            self._timed("poll_" + self.task.model.phase, self.task.tick)
            model = self.task.model
            if model.outcome is not None and self.writer is None:
                self.outcome = model.outcome
                self.writer = self._timed(
                    "writer", self.host.result_writer, self.doc, self.source, self.rect,
                    model.outcome.image, self._source_rgba, self._native, self.mask)
            elif self.writer is not None and self.new_layer is None:
                if self._timed("write", self.writer.step):
                    self._timed("added", self._written, self.writer.layer)
            if self.task.done and (self.writer is None or self.new_layer is not None):
                self._finish_task()
                return False
            self._timed("preview", self._show_preview)
            self._timed("progress", self._show_progress)
        except Exception as e:
            if self.task is not None:
                self.task.close()
            self._end("failed", str(e) if isinstance(e, UserError) else bug(e))
            return False
        return True

    def stop(self, how: str = "discard") -> None:
        """The Cancel ("discard") and Stop ("keep": keep the drag so far) buttons."""
        if self.finished:
            return
        if self.task is None:              # still reading the layer: nothing was sent
            model = JobModel(self.settings, self.arrows)
            model.cancelled()
            self._end("cancelled", model.end_text())
            return
        self.task.stop(how)
        self._show_progress(force=True)

    # -- internals -----------------------------------------------------------------

    def _written(self, layer: Any) -> None:
        self.new_layer = layer
        self._source_rgba = b""
        self._move_arrows()
        try:
            self.doc.setActiveNode(layer)
        except Exception:
            pass       # selecting the result is a courtesy; the result is written
        # No refreshProjection(): adding the node already has Krita update the canvas in
        # its own threads, while a refresh recomposites the whole image on this one (0.4 s
        # for 6000x4000).

    def _move_arrows(self) -> None:
        """The arrows now start where the handles went (thin, with arrowheads), so that
        the next Run continues from there."""
        handles = self.outcome.handles if self.outcome is not None else []
        if len(handles) != len(self.arrows):
            return
        moved = [Arrow((float(h[0]), float(h[1])), a.target)
                 for h, a in zip(handles, self.arrows)]
        try:
            self.host.redraw_arrows(self.doc, self.vector, self.rect, moved)
        except Exception as e:     # the result is written; say why the arrows stayed
            self.notes.append("the arrows could not be moved (%s)" % e)

    def _finish_task(self) -> None:
        model = self.task.model
        self.timings.update(self.task.timings)
        if model.phase == "done" or (model.outcome is not None and self.new_layer is not None):
            text = model.end_text()
            if self.notes:
                text += " (%s)" % "; ".join(self.notes)
            self._end("done", text)
        else:
            self._end("cancelled" if model.phase == "cancelled" else "failed",
                      model.end_text())

    def _end(self, state: str, message: str) -> None:
        self.state = state
        self.message = message
        self.fraction = 1.0 if state == "done" else 0.0
        self.timings["total"] = self.clock() - self._t0
        if self.on_update is not None:
            self.on_update(self)
        if self.on_finished is not None:
            self.on_finished(self)

    def _show_progress(self, force: bool = False) -> None:
        shown = self.pacer.progress(force)
        if shown is not None:
            self.fraction, self.message = shown
            if self.on_update is not None:
                self.on_update(self)

    def _show_preview(self) -> None:
        p = self.pacer.preview() if self.on_preview is not None else None
        if p is not None:
            self.previews += 1
            self.on_preview(p)


def start_drag(doc: Any = None, settings: Optional[DragSettings] = None, *,
               source: Any = None, vector: Any = None,
               on_update: Optional[Callable[[DragRun], Any]] = None,
               on_finished: Optional[Callable[[DragRun], Any]] = None,
               on_preview: Optional[Callable[[Any], Any]] = None, host: Any = None,
               task_factory: Callable[..., Any] = make_task,
               interval_ms: int = POLL_INTERVAL_MS) -> DragRun:
    """Start a drag on ``doc`` (default: the active document) and return at once. A
    QTimer calls :meth:`DragRun.step` every ``interval_ms`` until the run finishes.
    ``on_update(run)`` follows progress, ``on_preview(image)`` gets the previews (protocol
    Images, RGB, the region being edited at the settings' preview size), ``on_finished(run)``
    is called once at the end (also when the run cannot start: then it is called before
    this returns)."""
    from PyQt5.QtCore import QTimer

    if doc is None:
        from krita import Krita

        doc = Krita.instance().activeDocument()
    if host is None:
        from .host import KritaHost

        host = KritaHost()
    run = DragRun(host, doc, settings or DragSettings(), source=source, vector=vector,
                  task_factory=task_factory, on_update=on_update, on_finished=on_finished,
                  on_preview=on_preview)
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
