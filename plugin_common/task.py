"""One drag run against the daemon, the same for both hosts: connect (``hello``) -> open
(invert the layer) -> drag -> close.

:class:`DragTask` never blocks longer than the poll timeout its host gives
:meth:`DragTask.tick`: GIMP's loop polls with a short timeout and checks its dialog between
polls; Krita's QTimer polls with a zero timeout, so its event loop never waits. Everything
the run learns lands in ``task.model`` (a :class:`~.jobs.BaseJobModel` of the host's kind);
errors end it as values (phase "failed" and a sentence in ``model.error``), never as an
exception out of :meth:`~DragTask.tick`.

Every wait is bounded:

* nothing from the daemon for ``connect_timeout`` seconds (not running, or died) -> the
  client fails the job with DaemonUnavailable ("... start it with: dragd serve"); a hello
  unanswered a second longer fails the run all the same;
* ``time_limit`` (when given) -> inversion gives up, a drag stops and keeps what it has;
* :meth:`~DragTask.stop` -> before the drag the run ends at once (cancelled); during it
  the drag job is cancelled and the daemon hands back the drag so far, kept ("keep") or
  dropped ("discard"), within ``stop_grace`` seconds or the run fails;
* closing the session at the end waits at most ``close_timeout`` seconds.

Imports the protocol (and so pyzmq): load it with :func:`~.loader.load_task`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type

from ..protocol import Client, DaemonRefused, DaemonUnavailable, ErrorCode, Image, ProtocolError, RemoteError
from . import messages
from .errors import UserError
from .geometry import Arrow
from .hello import accept_hello
from .jobs import BaseJobModel, Outcome, alignment, domain_judged, inversion_psnr, poor_domain
from .keys import curve_for
from .mask import MaskInfo
from .settings import CLOSE_TIMEOUT, CONNECT_TIMEOUT, STOP_GRACE

__all__ = ["DaemonProbe", "DragTask", "Image", "close_quietly", "connect", "user_message"]


def user_message(err: BaseException, hint: str = "") -> str:
    """The sentence for an error the client or the daemon reported; ``hint`` (from
    :func:`connect`) is added when the daemon cannot be reached, not when it refused us."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, DaemonUnavailable):
        if hint and not isinstance(err, DaemonRefused):
            return err.message + "." + hint
        return err.message
    if isinstance(err, RemoteError):
        return messages.refused(err.message)
    if isinstance(err, ProtocolError):
        return err.message
    return messages.bug(err)


def connect(factory: Callable[..., Any], endpoint: str, timeout: float, client_name: str,
            heartbeat: Optional[float] = None) -> Tuple[Any, str]:
    """A client for ``endpoint`` (with CurveZMQ keys for a remote daemon), and the hint
    to add when that daemon cannot be reached. The heartbeat defaults to half the timeout,
    at most a second. Raises UserError."""
    if heartbeat is None:
        heartbeat = min(1.0, timeout / 2)
    curve, hint = curve_for(endpoint)
    try:
        return factory(endpoint, timeout=timeout, heartbeat=heartbeat, job_timeout=None,
                       curve=curve, name=client_name), hint
    except Exception as e:   # zmq.ZMQError for a malformed address
        raise UserError(messages.bad_address(endpoint, e))


def close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:
        pass           # the socket is gone either way; nothing the user can act on


class DragTask:
    """One run: :meth:`start`, then :meth:`tick` until :attr:`done`. ``model`` holds the
    phase, progress, previews, the outcome (set as soon as the drag result arrives, phase
    "closing") or the error. ``job_model`` is the host's model class (its wording),
    ``client_name`` the name the daemon logs."""

    def __init__(self, settings: Any, arrows: Sequence[Arrow], image: Image,
                 mask: Optional[MaskInfo], *, job_model: Type[BaseJobModel] = BaseJobModel,
                 client_name: str = "dragd-plugin",
                 client_factory: Callable[..., Any] = Client,
                 clock: Callable[[], float] = time.monotonic,
                 connect_timeout: float = CONNECT_TIMEOUT, stop_grace: float = STOP_GRACE,
                 close_timeout: float = CLOSE_TIMEOUT, time_limit: Optional[float] = None,
                 region: Optional[Dict[str, int]] = None):
        self.settings = settings
        self.image = image
        self.mask = mask
        self.model = job_model(settings, arrows)
        self.client_name = client_name
        self.client_factory = client_factory
        self.clock = clock
        self.connect_timeout = float(connect_timeout)
        self.stop_grace = float(stop_grace)
        self.close_timeout = float(close_timeout)
        self.time_limit = None if time_limit is None else float(time_limit)
        #: The inversion region (protocol ``roi``): the selection's box unless the host
        #: says otherwise (a result layer continues in the region it was made in).
        self.region = region if region is not None else (
            mask.region() if mask is not None else None)
        self.client: Any = None
        self.session: Any = None
        self.job: Any = None
        self.timings: Dict[str, float] = {}
        self._deadline: Optional[float] = None     # of the hello, then of the close
        self._run_deadline: Optional[float] = None
        self._cancel_sent_at: Optional[float] = None
        self._hint = ""
        self._t_phase = 0.0

    @property
    def done(self) -> bool:
        return self.model.finished

    # -- driving ----------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self._t_phase = now = self.clock()
        if self.time_limit is not None:
            self._run_deadline = now + self.time_limit
        try:
            self.client, self._hint = connect(self.client_factory, s.endpoint,
                                              self.connect_timeout, self.client_name)
        except UserError as e:
            self._fail(str(e))
            return
        self.job = self._send(lambda: self.client.start("hello", {"client": self.client_name}))
        self._deadline = self.clock() + self.connect_timeout + 1.0

    def tick(self, timeout_ms: int = 0) -> bool:
        """Poll once, waiting at most ``timeout_ms``, and advance. Returns True while the
        run goes on."""
        if self.done or self.client is None:
            return not self.done
        try:
            self._check_time()
            if not self.done:
                for ev in self.client.poll(timeout_ms):
                    self._on_event(ev)
                    if self.done:
                        break
        except Exception as e:      # a bug or an unexpected reply: never leave it running
            self._fail(user_message(e))
        return not self.done

    def stop(self, how: str = "discard") -> None:
        """Stop the run: "keep" the drag so far, or "discard" everything. Repeating it is
        harmless ("discard" after "keep" still discards)."""
        if self.done:
            return
        first = self.model.request_stop(how, "user")
        phase = self.model.phase
        if phase == "closing":
            return                      # the result is already here
        if phase in ("connecting", "opening") or self.job is None:
            if self.job is not None and phase == "opening":
                self._cancel(self.job)
            self._cancelled()
            return
        if first:
            self._cancel_drag()

    def close(self) -> None:
        """Drop the connection now (the daemon frees a session whose client is gone)."""
        if self.client is not None:
            close_quietly(self.client)
            self.client = None
        if not self.done:
            self._cancelled()

    # -- internals --------------------------------------------------------------

    def _send(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:
            self._fail(user_message(e))
        return None

    def _check_time(self) -> None:
        now = self.clock()
        phase = self.model.phase
        if phase == "connecting" and self._deadline is not None and now > self._deadline:
            self._fail(messages.not_answering(self.settings.endpoint, self.connect_timeout,
                                              self._hint))
        elif phase == "opening" and self._over_time(now):
            self._cancel(self.job)
            self._fail(messages.time_limit_while_inverting(self.time_limit or 0))
        elif phase == "dragging" and self._cancel_sent_at is None and self._over_time(now):
            self.model.request_stop("keep", "time limit")
            self._cancel_drag()
        elif (phase == "dragging" and self._cancel_sent_at is not None
              and now - self._cancel_sent_at > self.stop_grace):
            self._fail(messages.stop_unanswered(self.stop_grace))
        elif phase == "closing" and self._deadline is not None and now > self._deadline:
            self._finish_closed()

    def _over_time(self, now: float) -> bool:
        return self._run_deadline is not None and now >= self._run_deadline

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
            self._on_drag_result(self.job.result)
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
        self._fail(user_message(err, self._hint))

    def _on_hello(self, fields: Dict[str, Any]) -> None:
        s, m = self.settings, self.model
        try:
            accept_hello(self.client, fields, model=s.model, endpoint=s.endpoint,
                         n_points=len(m.arrows), size=(self.image.width, self.image.height),
                         too_many_points=m.TOO_MANY_POINTS, scale_what=m.SCALE_WHAT)
        except UserError as e:
            self._fail(str(e))
            return
        m.connected(fields)
        self._lap("connect")
        # No reconstruction back: the plug-ins show none of it, and for a large layer it
        # is a copy of the layer for the host's UI thread to receive.
        self.job = self._send(lambda: self.client.start_open_session(
            self.image, roi=self.region, invert=s.invert_fields(), model=s.model or None,
            align=s.align, reconstruction="none"))

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
            self._fail(messages.WRONG_SIZE)
            return
        info = self.model.session_info
        self.model.dragged(Outcome(img, int(m.get("steps", 0)), str(m.get("stop", "converged")),
                                   m.get("distance"), list(m.get("handles") or []),
                                   psnr=inversion_psnr(info), poor_domain=poor_domain(info),
                                   domain_judged=domain_judged(info), aligned=alignment(info),
                                   continued=bool((info.get("info") or {}).get("continues_edit"))))
        self._begin_close()

    def _begin_close(self) -> None:
        sid = getattr(self.session, "id", None)
        if not sid or self.client is None:
            self._finish_closed()
            return
        try:
            self.job = self.client.start("close_session", {"session": sid})
        except Exception:
            self._finish_closed()           # best effort: the daemon frees it on its own
            return
        self._deadline = self.clock() + self.close_timeout

    def _finish_closed(self) -> None:
        self.model.closed()
        self._shutdown()

    def _lap(self, name: str) -> None:
        now = self.clock()
        self.timings[name] = now - self._t_phase
        self._t_phase = now

    def _cancel_drag(self) -> None:
        self._cancel(self.job)
        self._cancel_sent_at = self.clock()

    def _cancel(self, job: Any) -> None:
        try:
            self.client.cancel(job, wait=False)
        except Exception:
            pass           # the run ends (or times out) on its own; a lost cancel is moot

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
            close_quietly(c)


class DaemonProbe:
    """Ask the daemon which models it has, without blocking (the GIMP settings dialog, the
    Krita docker's refresh button): :meth:`start`, :meth:`tick` until ``done``; then
    ``models`` / ``loaded_model`` / ``device``, or ``error``; :meth:`describe` says it in
    one line."""

    def __init__(self, endpoint: str, *, client_name: str = "dragd-plugin",
                 client_factory: Callable[..., Any] = Client,
                 clock: Callable[[], float] = time.monotonic, timeout: float = 2.0):
        self.endpoint = endpoint
        self.client_name = client_name
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
            self.client, _ = connect(self.client_factory, self.endpoint, self.timeout,
                                     self.client_name, heartbeat=self.timeout / 3)
            self.job = self.client.start("hello", {"client": self.client_name})
        except Exception as e:
            self._end(user_message(e))
            return
        self._deadline = self.clock() + self.timeout + 0.5

    def tick(self, timeout_ms: int = 0) -> bool:
        if self.done:
            return False
        try:
            self.client.poll(timeout_ms)
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
            self._end(messages.not_reachable(self.endpoint))
        return not self.done

    def describe(self) -> str:
        if self.error:
            return self.error
        return messages.daemon_line(self.endpoint, self.device, self.models,
                                    self.loaded_model or "")

    def _end(self, error: Optional[str]) -> None:
        self.error = error
        self.done = True
        if self.client is not None:
            close_quietly(self.client)
            self.client = None
