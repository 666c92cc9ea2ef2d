"""Runs one drag against the daemon: connect, open (invert) the layer, drag, close.

Host-independent: the host is reached only through a small UI object, the daemon only
through the protocol client (:class:`dragd.protocol.client.Client`). Every wait is a
poll with a short timeout inside a loop bounded by a deadline, so the host never freezes:

* nothing from the daemon for ``CONNECT_TIMEOUT`` seconds (it is not running, or died) ->
  the client fails the job with DaemonUnavailable ("... start it with: dragd serve");
* the run's time limit -> inversion gives up, a drag stops and keeps what it has;
* a stop request from the UI -> the drag job is cancelled, the daemon hands back the
  drag so far (kept, or discarded for "discard");
* after a cancel, at most ``STOP_GRACE`` seconds for the daemon to answer.

The UI object (duck-typed) provides::

    progress(fraction: float, text: str)   # at most ~10 times a second
    preview(image)                         # a protocol Image (downscaled), throttled
    pump()                                 # let the host process its events
    stop_requested() -> None | "keep" | "discard"
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence

from ..plugin_common.hello import accept_hello
from ..plugin_common.keys import curve_for
from ..protocol import Client, DaemonUnavailable, Image, ProtocolError, RemoteError
from ..protocol.schema import ErrorCode
from .session import (CLOSE_TIMEOUT, CONNECT_TIMEOUT, STOP_GRACE, Arrow, Cancelled,
                      DragSettings, JobModel, MaskInfo, Outcome, UserError)

POLL_MS = 40
PROGRESS_INTERVAL = 0.1
PREVIEW_INTERVAL = 0.4
CLIENT_NAME = "dragd-gimp"


class NullUi:
    """A UI that shows nothing and never asks to stop (non-interactive runs)."""

    def progress(self, fraction: float, text: str) -> None:
        pass

    def preview(self, image: Any) -> None:
        pass

    def pump(self) -> None:
        pass

    def stop_requested(self) -> Optional[str]:
        return None


def _user_error(err: Exception) -> UserError:
    if isinstance(err, UserError):
        return err
    if isinstance(err, DaemonUnavailable):
        return UserError(err.message)
    if isinstance(err, RemoteError):
        if err.code == ErrorCode.CANCELLED:
            return Cancelled("DragGAN: cancelled.")
        return UserError("The dragd daemon refused the request: %s" % err.message)
    if isinstance(err, ProtocolError):
        return UserError(err.message)
    return UserError(str(err))


class Runner:
    def __init__(self, settings: DragSettings, arrows: Sequence[Arrow], image: Image,
                 mask: MaskInfo, ui: Any = None, *,
                 client_factory: Callable[..., Any] = Client,
                 clock: Callable[[], float] = time.monotonic,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 stop_grace: float = STOP_GRACE):
        self.settings = settings
        self.image = image
        self.mask = mask
        self.ui = ui or NullUi()
        self.model = JobModel(settings, arrows)
        self.client_factory = client_factory
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.stop_grace = stop_grace
        self.client: Any = None
        self.session: Any = None
        self._deadline = 0.0
        self._last_progress = (-1.0, None)
        self._last_progress_t = -1e9
        self._last_preview_t = -1e9
        self.timings: Dict[str, float] = {}
        self._unavailable_hint = ""

    # -- public -------------------------------------------------------------

    def run(self) -> Outcome:
        t0 = self.clock()
        self._deadline = t0 + float(self.settings.time_limit)
        try:
            self._connect()
            self.timings["connect"] = self.clock() - t0
            t1 = self.clock()
            self._open()
            self.timings["open"] = self.clock() - t1
            t2 = self.clock()
            outcome = self._drag()
            self.timings["drag"] = self.clock() - t2
            self.model.finished(outcome)
            self._show_progress(force=True)
            return outcome
        except Exception as e:
            err = self._error(e)
            self.model.failed(str(err))
            raise err from (None if isinstance(e, UserError) else e)
        finally:
            self._close()

    def _error(self, e: Exception) -> UserError:
        err = _user_error(e)
        if isinstance(e, DaemonUnavailable) and self._unavailable_hint:
            err = UserError(str(err) + "." + self._unavailable_hint)
        return err

    # -- steps ---------------------------------------------------------------

    def _connect(self) -> None:
        s = self.settings
        curve, self._unavailable_hint = curve_for(s.endpoint)
        try:
            self.client = self.client_factory(s.endpoint, timeout=self.connect_timeout,
                                              heartbeat=min(1.0, self.connect_timeout / 2),
                                              job_timeout=None, curve=curve,
                                              name=CLIENT_NAME)
        except Exception as e:   # zmq.ZMQError for a malformed endpoint
            raise UserError("Cannot use the daemon address %r (%s). It should look like "
                            "tcp://127.0.0.1:5557." % (s.endpoint, e))
        self._show_progress(force=True)
        job = self._start("hello", {"client": CLIENT_NAME})
        hello = self._wait(job, self.clock() + self.connect_timeout + 1.0, "connect")
        fields = dict(hello.fields)
        accept_hello(self.client, fields, model=s.model, endpoint=s.endpoint,
                     n_points=len(self.model.arrows),
                     size=(self.image.width, self.image.height),
                     too_many_points="The path has %d strokes; the daemon takes at most %d "
                                     "drag points.", scale_what="layer")
        self.model.connected(fields)

    def _open(self) -> None:
        s = self.settings
        self._show_progress(force=True)
        try:
            job = self.client.start_open_session(self.image, invert=s.invert_fields(),
                                                 model=s.model or None)
        except ProtocolError as e:
            raise _user_error(e)
        self._wait(job, None, "open")
        self.session = job.session
        self.model.opened(dict(job.result.fields))

    def _drag(self) -> Outcome:
        s = self.settings
        self._show_progress(force=True)
        mask_img = None
        if self.mask is not None and self.mask.data is not None:
            mask_img = Image(self.mask.data, self.mask.width, self.mask.height, 1)
        try:
            job = self.client.start_drag(self.session, [a.pair() for a in self.model.arrows],
                                         mask=mask_img, **s.drag_params())
        except ProtocolError as e:
            raise _user_error(e)
        m = self._wait(job, None, "drag")
        img = m.image
        if img is None or (img.width, img.height) != (self.image.width, self.image.height):
            raise UserError("The daemon returned an image of the wrong size; update the "
                            "daemon and the plug-in to the same dragd release.")
        stop = str(m.get("stop", "converged"))
        if self.model.stop_requested == "discard":
            raise Cancelled("DragGAN: cancelled; the layer was not changed.")
        return Outcome(img, int(m.get("steps", 0)), stop, m.get("distance"),
                       list(m.get("handles") or []))

    def _close(self) -> None:
        c = self.client
        if c is None:
            return
        try:
            if self.session is not None and getattr(self.session, "id", None):
                try:
                    job = self._start("close_session", {"session": self.session.id})
                    end = self.clock() + CLOSE_TIMEOUT
                    while not job.done and self.clock() < end:
                        c.poll(POLL_MS)
                except Exception:
                    pass
        finally:
            try:
                c.close()
            except Exception:
                pass
            self.client = None

    # -- the loop -------------------------------------------------------------

    def _start(self, type: str, fields: Dict[str, Any]) -> Any:
        try:
            return self.client.start(type, fields)
        except ProtocolError as e:
            raise _user_error(e)

    def _wait(self, job: Any, deadline: Optional[float], what: str) -> Any:
        """Poll until ``job`` is done. ``deadline`` (absolute) overrides the run's time
        limit (used for the handshake). Stop requests and the time limit cancel the job."""
        cancel_sent_at: Optional[float] = None
        while not job.done:
            now = self.clock()
            limit = deadline if deadline is not None else self._deadline
            if cancel_sent_at is None:
                how = self.ui.stop_requested()
                if how is None and now >= limit:
                    if what == "connect":
                        raise UserError("The dragd daemon at %s did not answer within %.0f s; "
                                        "start it with: dragd serve.%s" % (
                                            self.settings.endpoint, self.connect_timeout,
                                            self._unavailable_hint))
                    how = "keep"
                    self.model.request_stop("keep", "time limit")
                elif how is not None:
                    self.model.request_stop(how, "user")
                if how is not None:
                    if what != "drag":
                        self._cancel(job)
                        if self.model.stop_reason == "time limit":
                            raise UserError(
                                "The time limit of %d s ran out while the daemon was "
                                "inverting the layer. Raise the time limit or choose a "
                                "faster inversion quality." % self.settings.time_limit)
                        raise Cancelled("DragGAN: cancelled; the layer was not changed.")
                    self._cancel(job)
                    cancel_sent_at = now
            elif now - cancel_sent_at > self.stop_grace:
                raise UserError("The daemon did not stop the drag within %.0f s of the stop "
                                "request." % self.stop_grace)
            else:
                how = self.ui.stop_requested()
                if how == "discard":
                    self.model.request_stop("discard", "user")
            for ev in self.client.poll(POLL_MS):
                if ev.job is not job:
                    continue
                if ev.kind == "error":
                    raise self._error(ev.error)
                if ev.kind != "result":
                    self.model.on_event(ev.kind, ev.fields, ev.images)
            self._show_progress()
            self._show_preview()
            self.ui.pump()
        if job.error is not None:
            raise self._error(job.error)
        return job.result

    def _cancel(self, job: Any) -> None:
        try:
            self.client.cancel(job, wait=False)
        except Exception:
            pass

    # -- UI throttling --------------------------------------------------------

    def _show_progress(self, force: bool = False) -> None:
        now = self.clock()
        frac, text = self.model.progress()
        if not force and now - self._last_progress_t < PROGRESS_INTERVAL:
            return
        if force or (round(frac, 3), text) != self._last_progress:
            self.ui.progress(frac, text)
            self._last_progress = (round(frac, 3), text)
            self._last_progress_t = now

    def _show_preview(self) -> None:
        if not self.settings.live_preview:
            return
        now = self.clock()
        if now - self._last_preview_t < PREVIEW_INTERVAL:
            return
        p = self.model.take_preview()
        if p is not None:
            self.ui.preview(p)
            self._last_preview_t = now


def run_drag(settings: DragSettings, arrows: Sequence[Arrow], image: Image,
             mask: MaskInfo, ui: Any = None, **kw: Any) -> Outcome:
    return Runner(settings, arrows, image, mask, ui, **kw).run()


def describe_daemon(endpoint: str, timeout: float = 1.5, *,
                    client_factory: Callable[..., Any] = Client,
                    clock: Callable[[], float] = time.monotonic) -> str:
    """One line about the daemon for the settings dialog (waits at most ~``timeout``)."""
    try:
        curve, _ = curve_for(endpoint)
        c = client_factory(endpoint, timeout=timeout, heartbeat=timeout / 3.0,
                           job_timeout=None, curve=curve, name=CLIENT_NAME)
    except Exception as e:
        return "The daemon address %r is not valid (%s)." % (endpoint, e)
    try:
        job = c.start("hello", {"client": CLIENT_NAME})
        end = clock() + timeout + 0.5
        while not job.done and clock() < end:
            c.poll(POLL_MS)
        if job.result is None:
            return ("The dragd daemon is not reachable at %s: start it with: dragd serve"
                    % endpoint)
        f = job.result.fields
        models = ", ".join(f.get("models") or []) or "none"
        loaded = f.get("loaded_model") or "none"
        return ("Daemon at %s: %s; models: %s (loaded: %s)."
                % (endpoint, f.get("device", "?"), models, loaded))
    except Exception as e:
        return "The dragd daemon at %s could not be asked (%s)." % (endpoint, e)
    finally:
        try:
            c.close()
        except Exception:
            pass
