"""The connection: one drag run against the daemon, driven without ever blocking.

:class:`DragTask` goes connect (``hello``) -> open (invert the layer) -> drag -> close,
through the protocol client's non-blocking style: the host calls :meth:`DragTask.tick`
from a timer (Krita: a QTimer every ~30 ms) and each tick polls the socket with a zero
timeout. Host-independent (no krita, no Qt): the unit tests drive it against an
in-process daemon.

Liveness: the client pings the daemon while a job is outstanding; no sign of life for
``connect_timeout`` seconds (5 s) -> the job fails with "dragd daemon not reachable at
...; start it with: dragd serve". A long inversion does not count as silence: the daemon
answers pings at once while it works.

Stopping: :meth:`DragTask.stop` ("keep" or "discard") sends ``cancel``. During the drag
the daemon hands back the drag so far (``stop: "cancelled"``): "keep" turns it into the
outcome, "discard" drops it. Before the drag a stop always discards.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence

from ..plugin_common.hello import accept_hello
from ..plugin_common.keys import curve_for
from ..protocol import Client, DaemonUnavailable, Image, ProtocolError, RemoteError
from ..protocol.schema import ErrorCode
from .session import (CLIENT_NAME, CLOSE_TIMEOUT, CONNECT_TIMEOUT, START_COMMAND,
                      STOP_GRACE, Arrow, DragSettings, JobModel, MaskInfo, Outcome,
                      UserError)


def user_message(err: BaseException) -> str:
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, DaemonUnavailable):
        return err.message
    if isinstance(err, RemoteError):
        return "The dragd daemon refused the request: %s" % err.message
    if isinstance(err, ProtocolError):
        return err.message
    return "%s: %s" % (type(err).__name__, err)


class DragTask:
    """One run: ``start()``, then ``tick()`` until ``done``. ``model`` (a
    :class:`~.session.JobModel`) holds the phase, progress, previews, the outcome (set
    as soon as the drag result arrives, phase "closing") or the error."""

    def __init__(self, settings: DragSettings, arrows: Sequence[Arrow], image: Image,
                 mask: Optional[MaskInfo], *,
                 client_factory: Callable[..., Any] = Client,
                 clock: Callable[[], float] = time.monotonic,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 stop_grace: float = STOP_GRACE, close_timeout: float = CLOSE_TIMEOUT):
        self.settings = settings
        self.image = image
        self.mask = mask
        self.model = JobModel(settings, arrows)
        self.client_factory = client_factory
        self.clock = clock
        self.connect_timeout = float(connect_timeout)
        self.stop_grace = float(stop_grace)
        self.close_timeout = float(close_timeout)
        self.client: Any = None
        self.session: Any = None
        self.job: Any = None
        self._deadline: Optional[float] = None
        self._hint = ""
        self._cancel_sent_at: Optional[float] = None
        self.timings: Dict[str, float] = {}
        self._t_phase = 0.0

    @property
    def done(self) -> bool:
        return self.model.finished

    # -- driving ----------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self._t_phase = self.clock()
        try:
            curve, self._hint = curve_for(s.endpoint)
            self.client = self.client_factory(
                s.endpoint, timeout=self.connect_timeout,
                heartbeat=min(1.0, self.connect_timeout / 2), job_timeout=None, curve=curve,
                name=CLIENT_NAME)
        except UserError as e:
            self._fail(str(e))
            return
        except Exception as e:   # zmq.ZMQError for a malformed address
            self._fail("Cannot use the daemon address %r (%s). It should look like %s."
                       % (s.endpoint, e, "tcp://127.0.0.1:5557"))
            return
        self.job = self._send(lambda: self.client.start("hello", {"client": CLIENT_NAME}))
        self._deadline = self.clock() + self.connect_timeout + 1.0

    def tick(self) -> bool:
        """Poll once (never blocks) and advance. Returns True while the run goes on."""
        if self.done or self.client is None:
            return not self.done
        try:
            self._check_time()
            if not self.done:
                for ev in self.client.poll(0):
                    self._on_event(ev)
                    if self.done:
                        break
        except Exception as e:      # a bug or an unexpected reply: never leave it running
            self._fail(user_message(e))
        return not self.done

    def stop(self, how: str = "discard") -> None:
        """Stop the run: "keep" the drag so far, or "discard" everything."""
        if self.done:
            return
        first = self.model.request_stop(how)
        phase = self.model.phase
        if phase == "closing":
            return                      # the result is already here
        if phase in ("connecting", "opening") or self.job is None:
            if self.job is not None and phase == "opening":
                self._cancel(self.job)
            self._cancelled()
            return
        if first:
            self._cancel(self.job)
            self._cancel_sent_at = self.clock()

    def close(self) -> None:
        """Drop the connection now (the daemon frees a session whose client is gone)."""
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
        if not self.done:
            self._cancelled()

    # -- internals --------------------------------------------------------------

    def _send(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ProtocolError as e:
            self._fail(user_message(e))
        except Exception as e:
            self._fail(user_message(e))
        return None

    def _check_time(self) -> None:
        now = self.clock()
        phase = self.model.phase
        if phase == "connecting" and self._deadline is not None and now > self._deadline:
            self._fail("The dragd daemon at %s did not answer within %.0f s; start it with: "
                       "%s.%s" % (self.settings.endpoint, self.connect_timeout,
                                  START_COMMAND, self._hint))
        elif (self._cancel_sent_at is not None and phase == "dragging"
              and now - self._cancel_sent_at > self.stop_grace):
            self._fail("The daemon did not stop the drag within %.0f s of the stop request."
                       % self.stop_grace)
        elif phase == "closing" and self._deadline is not None and now > self._deadline:
            self._finish_closed()

    def _on_event(self, ev: Any) -> None:
        if ev.job is not self.job:
            return
        if ev.kind == "error":
            self._on_error(ev.error)
            return
        if ev.kind != "result":
            self.model.on_event(ev.kind, ev.fields, ev.images)
            return
        phase = self.model.phase
        if phase == "connecting":
            self._on_hello(dict(ev.fields))
        elif phase == "opening":
            self.session = self.job.session
            self.model.opened(dict(ev.fields))
            self._lap("open")
            self._start_drag()
        elif phase == "dragging":
            self._on_drag_result(ev.message)
        elif phase == "closing":
            self._finish_closed()

    def _on_error(self, err: Any) -> None:
        phase = self.model.phase
        if phase == "closing":
            self._finish_closed()           # close_session failing does not matter
            return
        if isinstance(err, RemoteError) and err.code == ErrorCode.CANCELLED:
            self._cancelled()
            return
        msg = user_message(err)
        if isinstance(err, DaemonUnavailable) and self._hint:
            msg += "." + self._hint
        self._fail(msg)

    def _on_hello(self, fields: Dict[str, Any]) -> None:
        s = self.settings
        try:
            accept_hello(self.client, fields, model=s.model, endpoint=s.endpoint,
                         n_points=len(self.model.arrows),
                         size=(self.image.width, self.image.height),
                         too_many_points="There are %d arrows; the daemon takes at most %d.",
                         scale_what="image")
        except UserError as e:
            self._fail(str(e))
            return
        self.model.connected(fields)
        self._lap("connect")
        self.job = self._send(lambda: self.client.start_open_session(
            self.image, invert=s.invert_fields(), model=s.model or None))

    def _start_drag(self) -> None:
        mask_img = None
        if self.mask is not None and self.mask.data is not None:
            mask_img = Image(self.mask.data, self.mask.width, self.mask.height, 1)
        self.job = self._send(lambda: self.client.start_drag(
            self.session, [a.pair() for a in self.model.arrows], mask=mask_img,
            **self.settings.drag_params()))

    def _on_drag_result(self, m: Any) -> None:
        self._lap("drag")
        if self.model.stop_requested == "discard":
            self._cancelled()
            return
        img = m.image
        if img is None or (img.width, img.height) != (self.image.width, self.image.height):
            self._fail("The daemon returned an image of the wrong size; update the daemon and "
                       "the plug-in to the same dragd release.")
            return
        self.model.dragged(Outcome(img, int(m.get("steps", 0)), str(m.get("stop", "converged")),
                                   m.get("distance"), list(m.get("handles") or [])))
        self._begin_close()

    def _begin_close(self) -> None:
        sid = getattr(self.session, "id", None)
        if not sid or self.client is None:
            self._finish_closed()
            return
        try:
            self.job = self.client.start("close_session", {"session": sid})
        except Exception:
            self._finish_closed()
            return
        self._deadline = self.clock() + self.close_timeout

    def _finish_closed(self) -> None:
        self.model.closed()
        self._shutdown()

    def _lap(self, name: str) -> None:
        now = self.clock()
        self.timings[name] = now - self._t_phase
        self._t_phase = now

    def _cancel(self, job: Any) -> None:
        try:
            self.client.cancel(job, wait=False)
        except Exception:
            pass

    def _fail(self, message: str) -> None:
        if not self.done:
            self.model.failed(message)
        self._shutdown()

    def _cancelled(self) -> None:
        if not self.done:
            self.model.cancelled()
        self._shutdown()

    def _shutdown(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            try:
                c.close()
            except Exception:
                pass


class DaemonProbe:
    """Ask the daemon for its models without blocking (the docker's refresh button):
    ``start()``, ``tick()`` until ``done``; then ``models`` / ``loaded_model`` /
    ``device``, or ``error``."""

    def __init__(self, endpoint: str, *, client_factory: Callable[..., Any] = Client,
                 clock: Callable[[], float] = time.monotonic, timeout: float = 2.0):
        self.endpoint = endpoint
        self.client_factory = client_factory
        self.clock = clock
        self.timeout = float(timeout)
        self.client: Any = None
        self.job: Any = None
        self.done = False
        self.error: Optional[str] = None
        self.models: list = []
        self.loaded_model: Optional[str] = None
        self.device = ""
        self._deadline = 0.0

    def start(self) -> None:
        try:
            curve, _ = curve_for(self.endpoint)
            self.client = self.client_factory(self.endpoint, timeout=self.timeout,
                                              heartbeat=self.timeout / 3, job_timeout=None,
                                              curve=curve, name=CLIENT_NAME)
            self.job = self.client.start("hello", {"client": CLIENT_NAME})
        except Exception as e:
            self._end("The daemon address %r is not usable: %s" % (self.endpoint,
                                                                   user_message(e)))
            return
        self._deadline = self.clock() + self.timeout + 0.5

    def tick(self) -> bool:
        if self.done:
            return False
        try:
            self.client.poll(0)
        except Exception as e:
            self._end(user_message(e))
            return False
        if self.job.result is not None:
            f = self.job.result.fields
            self.models = list(f.get("models") or [])
            self.loaded_model = f.get("loaded_model")
            self.device = str(f.get("device") or "")
            self._end(None)
        elif self.job.error is not None:
            self._end(user_message(self.job.error))
        elif self.clock() > self._deadline:
            self._end("The dragd daemon is not reachable at %s; start it with: %s"
                      % (self.endpoint, START_COMMAND))
        return not self.done

    def describe(self) -> str:
        if self.error:
            return self.error
        return "Daemon at %s (%s): models %s; loaded: %s." % (
            self.endpoint, self.device or "?", ", ".join(self.models) or "none",
            self.loaded_model or "none")

    def _end(self, error: Optional[str]) -> None:
        self.error = error
        self.done = True
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
