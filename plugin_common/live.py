"""The live view's session, the same for both hosts: the authors' interactive DragGAN tool over
the daemon's session (click handle then target, Start, watch, Stop, Continue, go back to an
earlier drag, Apply).

:class:`LiveSession` owns one daemon session for as long as the view is open: connect
(``hello``) and open (invert) at once, so that the inversion runs while the user places
points; then any number of drags, each continuing from the session's current latent; undo
to any finished drag (the history strip); close. The host's UI polls :meth:`LiveSession.tick`
from its timer (GLib timeout, QTimer) with a zero timeout, so nothing here ever waits, and
draws what it finds: :attr:`frame` (the newest picture of the region and the layer box it
covers), :attr:`points` (drawn as arrows; their handles where the tracker has them while a
drag runs), :attr:`history`, :meth:`connection_line` and :meth:`status_line`. Errors are
values (``error``, a sentence), never exceptions out of :meth:`tick`.

States: ``connecting`` -> ``opening`` -> ``idle`` <-> ``dragging`` (-> ``stopping``) /
``undoing``; ``failed`` (the daemon is gone or refused the layer: the host offers to try
again) and ``closed``. A drag that the daemon refuses (points outside the region, ...) only
says why and goes back to ``idle``.

Imports the protocol (and so pyzmq): load it like :mod:`.task`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..protocol import Client, DaemonUnavailable, ErrorCode, Image, RemoteError
from .errors import UserError
from .geometry import Arrow, Box, Point, region_box
from .hello import accept_hello
from .jobs import inversion_psnr, poor_domain
from .mask import MaskInfo
from .messages import WRONG_SIZE, not_answering, stop_unanswered
from .settings import CLOSE_TIMEOUT, CONNECT_TIMEOUT, STOP_GRACE
from .task import close_quietly, connect, user_message

__all__ = ["Frame", "HistoryEntry", "LivePoint", "LiveSession"]

#: Seconds between two liveness pings while no job runs: the connection line stays true
#: even when the user only looks.
PING_INTERVAL = 2.0
#: The most seconds closing the view waits for the daemon to confirm close_session.
CLOSE_WAIT = 0.08


@dataclass
class LivePoint:
    """One handle -> target pair being placed; ``target`` None until its second click."""

    handle: Point
    target: Optional[Point] = None

    @property
    def complete(self) -> bool:
        return self.target is not None

    def arrow(self) -> Arrow:
        assert self.target is not None
        return Arrow(self.handle, self.target)


@dataclass
class Frame:
    """A picture of the layer: ``image`` (a protocol Image) covers the layer box ``box``
    (x0, y0, x1, y1). ``serial`` grows with every new frame, so the host redraws only then."""

    image: Any
    box: Box
    serial: int = 0


@dataclass
class HistoryEntry:
    """A finished drag the session can return to: the daemon's history index, its picture
    (the last preview, else the result) and the points as they ended."""

    index: int
    frame: Optional[Frame]
    points: List[LivePoint]
    steps: int = 0
    stop: str = "converged"
    distance: Optional[float] = None

    def label(self) -> str:
        if self.index == 0:
            return "start"
        text = "%d: %d steps" % (self.index, self.steps)
        return text + (", stopped" if self.stop == "cancelled" else "")


@dataclass
class Timings:
    """What the benchmarks and host tests report: seconds from Start to the first preview,
    and the previews of the last drag with the seconds they spanned."""

    started_at: Optional[float] = None
    first_frame_s: Optional[float] = None
    frames: int = 0
    frames_span_s: float = 0.0
    _first_at: Optional[float] = None

    def fps(self) -> Optional[float]:
        if self.frames < 2 or self.frames_span_s <= 0:
            return None
        return (self.frames - 1) / self.frames_span_s


class LiveSession:
    """One live view's session. ``image`` is the layer (RGBA protocol Image), ``mask`` the
    selection over it (its box is the inversion region unless ``region`` says otherwise),
    ``arrows`` the paths / vector lines already drawn, which become the first points."""

    def __init__(self, settings: Any, image: Image, mask: Optional[MaskInfo] = None, *,
                 arrows: Sequence[Arrow] = (), region: Optional[Dict[str, int]] = None,
                 client_name: str = "dragd-plugin",
                 client_factory: Callable[..., Any] = Client,
                 clock: Callable[[], float] = time.monotonic,
                 connect_timeout: float = CONNECT_TIMEOUT, stop_grace: float = STOP_GRACE,
                 close_timeout: float = CLOSE_TIMEOUT, too_many_points: Optional[str] = None):
        self.settings = settings
        self.image = image
        self.mask = mask
        self.use_mask = mask is not None and mask.data is not None
        self.mask_serial = 0                   # grows with every brush dab
        self.points: List[LivePoint] = [LivePoint(a.handle, a.target) for a in arrows]
        self.region = region if region is not None else (
            mask.region() if mask is not None else None)
        self.client_name = client_name
        self.client_factory = client_factory
        self.clock = clock
        self.connect_timeout = float(connect_timeout)
        self.stop_grace = float(stop_grace)
        self.close_timeout = float(close_timeout)
        self.too_many_points = too_many_points
        self.state = "new"
        self.error: Optional[str] = None       # why the session failed
        self.notice: Optional[str] = None      # a refused drag, a lost connection, ...
        self.daemon: Dict[str, Any] = {}
        self.session: Any = None
        self.session_info: Dict[str, Any] = {}
        self.view_box: Box = region_box(self.region, image.width, image.height)
        self.frame: Optional[Frame] = None
        self.tracked: Optional[List[List[float]]] = None    # handles during a drag
        self.step = 0
        self.distance: Optional[float] = None
        self.history: List[HistoryEntry] = []
        self.position = 0                      # the daemon's history index now shown
        self.result: Any = None                # the full layer of that state (Apply)
        self.timings = Timings()
        self.connected: Optional[bool] = None  # None: not known yet
        self.client: Any = None
        self._job: Any = None                  # the one request in flight
        self._ping: Any = None
        self._ping_at = 0.0
        self._deadline: Optional[float] = None
        self._cancel_at: Optional[float] = None
        self._hint = ""
        self._serial = 0
        self._drag_points: List[LivePoint] = []
        self._undo_to = 0                      # the history index an undo goes to

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect and open the layer (the inversion runs while the user places points)."""
        s = self.settings
        self.state = "connecting"
        self._show_frame(self.image, (0.0, 0.0, float(self.image.width),
                                      float(self.image.height)))
        try:
            self.client, self._hint = connect(self.client_factory, s.endpoint,
                                              self.connect_timeout, self.client_name)
        except UserError as e:
            self._fail(str(e))
            return
        self._job = self._send(lambda: self.client.start("hello", {"client": self.client_name}))
        self._deadline = self.clock() + self.connect_timeout + 1.0

    def tick(self, timeout_ms: int = 0) -> bool:
        """Poll once (waiting at most ``timeout_ms``) and advance. True while the session
        lives."""
        if self.client is None:
            return self.state not in ("failed", "closed")
        try:
            self._check_time()
            if self.client is not None:
                for ev in self.client.poll(timeout_ms):
                    self._on_event(ev)
                    if self.client is None:
                        break
            self._keep_alive()
        except Exception as e:       # a bug or an unexpected reply: say it, never raise
            self._fail(user_message(e))
        return self.state not in ("failed", "closed")

    def close(self, wait_s: float = CLOSE_WAIT) -> None:
        """Stop what runs (a drag, an undo, the open), close the daemon session (also the
        one an open still in flight makes) and the connection, waiting at most ``wait_s`` in
        all for the daemon's answers (the socket drops what it has not sent when it closes;
        a daemon that does not answer in time frees the session of a client that went away
        on its own)."""
        if self.client is not None:
            try:
                deadline = self.clock() + wait_s
                if self._job is not None and (self.busy or self.state == "opening"):
                    self.client.cancel(self._job, wait=False)
                session = self.session
                if self.state == "opening":
                    # The session exists once the open's answer is here (the cancel may
                    # come too late to stop it): wait for that answer, then close it.
                    self._poll_until(self._job, deadline)
                    session = self._job.session
                if session is not None and session.id:
                    self._poll_until(self.client.start("close_session", {"session": session.id}),
                                     deadline)
            except Exception:
                pass       # the daemon frees a session whose client is gone
        self._shutdown()
        if self.state != "failed":
            self.state = "closed"

    # -- what the user does -------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A drag or an undo is running: points stay as they are."""
        return self.state in ("dragging", "stopping", "undoing")

    def click(self, p: Point) -> None:
        """A click on the picture (layer coordinates): a new handle, or the target of the
        handle placed last."""
        if self.busy:
            return
        if self.points and not self.points[-1].complete:
            self.points[-1].target = (float(p[0]), float(p[1]))
        else:
            self.points.append(LivePoint((float(p[0]), float(p[1]))))
        self.notice = None

    def grab(self, p: Point, radius: float) -> Optional[Tuple[int, str]]:
        """(index, "handle" | "target") of the point nearest to ``p`` within ``radius``
        (layer units), else None."""
        best, found = radius, None
        for i, pt in enumerate(self.points):
            for which, q in (("target", pt.target), ("handle", pt.handle)):
                if q is not None:
                    d = math.hypot(q[0] - p[0], q[1] - p[1])
                    if d <= best:
                        best, found = d, (i, which)
        return found

    def move(self, index: int, which: str, p: Point) -> None:
        if self.busy or not 0 <= index < len(self.points):
            return
        q = (float(p[0]), float(p[1]))
        if which == "handle":
            self.points[index].handle = q
        else:
            self.points[index].target = q

    def remove(self, index: int) -> None:
        if not self.busy and 0 <= index < len(self.points):
            del self.points[index]

    def can_start(self) -> bool:
        return self.state == "idle" and any(p.complete for p in self.points)

    def start_drag(self) -> bool:
        """Start (or continue) the drag with the complete points, from the current state.
        False, with the reason in ``notice``, when it cannot start now."""
        if not self.can_start():
            self.notice = ("Place a handle and then its target on the picture first."
                           if self.state == "idle" else None)
            return False
        self._drag_points = [LivePoint(p.handle, p.target) for p in self.points if p.complete]
        mask_img = None
        if self.use_mask and self.mask is not None and self.mask.data is not None:
            mask_img = Image(self.mask.data, self.mask.width, self.mask.height, 1)
        params = dict(self.settings.drag_params())
        params["preview_every"] = max(1, int(params.get("preview_every") or 1))
        job = self._send(lambda: self.client.start_drag(
            self.session, [p.arrow().pair() for p in self._drag_points], mask=mask_img,
            **params))
        if job is None:
            return False
        self._job = job
        self.state = "dragging"
        self.notice = None
        self.step, self.tracked, self._cancel_at = 0, None, None
        now = self.clock()
        self.timings = Timings(started_at=now)
        return True

    def stop(self) -> None:
        """Stop the drag: the daemon keeps what it reached (a history entry)."""
        if self.state != "dragging":
            return
        try:
            self.client.cancel(self._job, wait=False)
        except Exception:
            pass           # the drag ends on its own; a lost cancel is caught by the grace
        self.state = "stopping"
        self._cancel_at = self.clock()

    def reset_points(self) -> None:
        """A new point set from the current picture (the authors' "Reset point")."""
        if self.busy:
            return
        self.points = []
        self.notice = None
        if self.state == "idle" and self.session is not None and self.session.id:
            # Not waited for: the daemon's queue runs it before the next drag.
            self._send(lambda: self.client.start("reset_points", {"session": self.session.id},
                                                 session=self.session))

    def go_to(self, index: int) -> bool:
        """Return the session to history entry ``index`` (the daemon's undo). False when
        that is not possible now."""
        if self.state != "idle" or not 0 <= index < self.position:
            return False
        job = self._send(lambda: self.client.start_undo(self.session, self.position - index))
        if job is None:
            return False
        self._job = job
        self.state = "undoing"
        self._undo_to = index
        return True

    def can_apply(self) -> bool:
        return self.state == "idle" and self.result is not None and self.position > 0

    def brush(self, p: Point, radius: float, grow: bool = True) -> bool:
        """Paint the movable region with a soft round brush at ``p`` (layer coordinates):
        ``grow`` adds to it, else it takes away; the next drag sends the painted mask (the
        inversion region stays the one opened). Without a selection the region starts as
        the whole layer. False when nothing was painted (busy, off the layer)."""
        if self.busy or radius <= 0:
            return False
        w, h = self.image.width, self.image.height
        cx, cy = float(p[0]), float(p[1])
        x0, x1 = max(0, int(cx - radius)), min(w, int(math.ceil(cx + radius)))
        y0, y1 = max(0, int(cy - radius)), min(h, int(math.ceil(cy + radius)))
        if x1 <= x0 or y1 <= y0:
            return False
        if self.mask is None or self.mask.data is None:
            cls = type(self.mask) if self.mask is not None else MaskInfo
            self.mask = cls(bytes(b"\xff" * (w * h)), w, h)
        data = bytearray(self.mask.data)
        soft = 0.5 * radius          # the outer half of the brush fades out
        for y in range(y0, y1):
            row = data[y * w + x0:y * w + x1]
            dy = y + 0.5 - cy
            for i in range(len(row)):
                k = (radius - math.hypot(x0 + i + 0.5 - cx, dy)) / soft
                if k > 0:
                    k = min(1.0, k)
                    v = row[i]
                    row[i] = int(round(v + (255 - v) * k if grow else v * (1.0 - k)))
            data[y * w + x0:y * w + x1] = row
        self.mask.data = bytes(data)
        self.use_mask = True
        self.mask_serial += 1
        return True

    def brush_line(self, a: Point, b: Point, radius: float, grow: bool = True) -> bool:
        """Brush dabs from ``a`` to ``b`` close enough to make one stroke (a mouse moves
        farther than a brush between two events)."""
        n = max(1, int(math.ceil(math.hypot(b[0] - a[0], b[1] - a[1]) / (0.4 * radius))))
        painted = False
        for i in range(1, n + 1):
            t = i / float(n)
            painted |= self.brush((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])),
                                  radius, grow)
        return painted

    def set_use_mask(self, on: bool) -> None:
        self.use_mask = bool(on) and self.mask is not None and self.mask.data is not None

    # -- display ------------------------------------------------------------------------

    def shown_points(self) -> List[Tuple[Point, Optional[Point]]]:
        """(handle, target) as the view draws them: while a drag runs, the handles where the
        tracker has them."""
        if self.busy and self.tracked and self.state != "undoing":
            out = [(tuple(h), p.target) for h, p in zip(self.tracked, self._drag_points)]
            return out  # type: ignore[return-value]
        return [(p.handle, p.target) for p in self.points]

    def connection_line(self) -> str:
        ep = self.settings.endpoint
        if self.connected is None:
            return "Connecting to %s\u2026" % ep
        if not self.connected:
            return "Not connected: %s" % (self.error or self.notice or ep)
        d = self.daemon
        return "Connected to %s (%s, %s)" % (ep, d.get("device") or "?",
                                             d.get("loaded_model") or "no model loaded")

    def status_line(self) -> str:
        st = self.state
        if st == "failed":
            return self.error or "failed"
        if st in ("new", "connecting"):
            return "Connecting\u2026"
        if st == "opening":
            return "Inverting the region (place your points meanwhile)\u2026"
        if st in ("dragging", "stopping"):
            text = "Dragging: step %d" % self.step
            if self.distance is not None:
                text += ", %.1f px to go" % self.distance
            return text + (" (stopping)" if st == "stopping" else "")
        if st == "undoing":
            return "Going back\u2026"
        if st == "closed":
            return "Closed."
        if self.notice:
            return self.notice
        if self.position:
            e = self.history[-1] if self.history else None
            text = "History entry %d" % self.position
            if e is not None and e.distance is not None:
                text += ", %.1f px from the targets" % e.distance
            return text + ". Add or move points and Continue, pick an entry, or Apply."
        ready = "Ready"
        psnr = inversion_psnr(self.session_info)
        if psnr is not None:
            poor = poor_domain(self.session_info)
            ready += " (inversion %.1f dB%s)" % (psnr, "; " + poor if poor else "")
        return ready + ": click a handle, then its target; Start."

    # -- internals ----------------------------------------------------------------------

    def _show_frame(self, image: Any, box: Box) -> Frame:
        self._serial += 1
        self.frame = Frame(image, box, self._serial)
        return self.frame

    def _poll_until(self, job: Any, deadline: float) -> None:
        while not job.done and self.clock() < deadline:
            self.client.poll(10)

    def _send(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:
            self.notice = user_message(e)
        return None

    def _check_time(self) -> None:
        now = self.clock()
        if self.state == "connecting" and self._deadline is not None and now > self._deadline:
            self._fail(not_answering(self.settings.endpoint, self.connect_timeout, self._hint))
        elif (self.state == "stopping" and self._cancel_at is not None
              and now - self._cancel_at > self.stop_grace):
            self._fail(stop_unanswered(self.stop_grace))

    def _keep_alive(self) -> None:
        """While nothing runs, a ping now and then: a daemon that went away shows as not
        connected within a few seconds (the client fails an unanswered ping)."""
        if self.state != "idle" or self.client is None:
            return
        now = self.clock()
        if self._ping is None and now - self._ping_at >= PING_INTERVAL:
            self._ping_at = now
            self._ping = self._send(lambda: self.client.start("ping", {}))

    def _on_event(self, ev: Any) -> None:
        if ev.job is self._ping:
            if ev.final:
                self._ping = None
                self.connected = ev.kind == "result"
                if ev.kind == "error":
                    self.notice = user_message(ev.error)
                elif self.notice and self.notice.startswith("dragd daemon not reachable"):
                    self.notice = None
            return
        if ev.job is not self._job:
            return
        if ev.kind == "error":
            self._on_error(ev.error)
        elif ev.kind == "progress":
            self._on_progress(ev)
        elif ev.kind == "notice":
            self.notice = str(ev.fields.get("message", ""))
        elif ev.kind == "result":
            self._on_result(ev)

    def _on_progress(self, ev: Any) -> None:
        f = ev.fields
        if self.state not in ("dragging", "stopping"):
            return
        self.step = int(f.get("step", self.step))
        if f.get("handles"):
            self.tracked = [list(h) for h in f["handles"]]
        d = f.get("distance")
        if isinstance(d, (int, float)) and math.isfinite(d):
            self.distance = float(d)
        prev = ev.images.get("preview") if ev.images else None
        if prev is not None:
            self._show_frame(prev, self.view_box)
            t, now = self.timings, self.clock()
            t.frames += 1
            if t._first_at is None:
                t._first_at = now
                t.first_frame_s = now - (t.started_at or now)
            t.frames_span_s = now - t._first_at

    def _on_result(self, ev: Any) -> None:
        st = self.state
        if st == "connecting":
            self._on_hello(dict(ev.fields))
        elif st == "opening":
            self.session = self._job.session
            self.session_info = dict(ev.fields)
            self._set_view_box(self.session_info)
            self.history = [HistoryEntry(0, self.frame, [LivePoint(p.handle, p.target)
                                                         for p in self.points])]
            self.state = "idle"
            self.connected = True
        elif st in ("dragging", "stopping"):
            self._on_dragged(ev)
        elif st == "undoing":
            self._on_undone(ev)

    def _on_hello(self, fields: Dict[str, Any]) -> None:
        s = self.settings
        kw = {"too_many_points": self.too_many_points} if self.too_many_points else {}
        try:
            accept_hello(self.client, fields, model=s.model, endpoint=s.endpoint,
                         n_points=0, size=(self.image.width, self.image.height), **kw)
        except UserError as e:
            self._fail(str(e))
            return
        self.daemon = fields
        self.connected = True
        self.state = "opening"
        self._job = self._send(lambda: self.client.start_open_session(
            self.image, roi=self.region, invert=s.invert_fields(), model=s.model or None,
            align=s.align, reconstruction="none"))      # the view shows the layer itself
        if self._job is None:
            self._fail(self.notice or "The layer could not be sent to the daemon.")

    def _set_view_box(self, fields: Dict[str, Any]) -> None:
        """The daemon's previews show the crop it works on, clipped to the layer: the
        view shows that box from now on."""
        box = (fields.get("info") or {}).get("crop_box")
        if isinstance(box, (list, tuple)) and len(box) == 4:
            w, h = float(self.image.width), float(self.image.height)
            x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
            x1, y1 = min(w, float(box[2])), min(h, float(box[3]))
            if x1 > x0 and y1 > y0:
                self.view_box = (x0, y0, x1, y1)

    def _on_dragged(self, ev: Any) -> None:
        f = ev.fields
        img = ev.images.get("image")
        if img is None or (img.width, img.height) != (self.image.width, self.image.height):
            self._fail(WRONG_SIZE)
            return
        self.result = img
        handles = [list(h) for h in (f.get("handles") or [])]
        # Continue starts where the tracker left the handles, as in the authors' tool.
        done = [LivePoint(tuple(h), p.target) for h, p in zip(handles, self._drag_points)]
        self.points = done + [p for p in self.points if not p.complete]
        self.tracked = None
        history = int(f.get("history", self.position + 1))
        frame = self.frame if self.timings.frames else self._show_frame(
            img, (0.0, 0.0, float(img.width), float(img.height)))
        if history <= self.position:
            # The daemon's history was full: it dropped its oldest drags (after the start).
            drop = self.position + 1 - history
            self.history = self.history[:1] + self.history[1 + drop:]
            for e in self.history[1:]:
                e.index -= drop
        self.history = [e for e in self.history if e.index < history]
        entry = HistoryEntry(history, frame, [LivePoint(p.handle, p.target) for p in done],
                             int(f.get("steps", 0)), str(f.get("stop", "converged")),
                             f.get("distance"))
        self.history.append(entry)
        self.position = history
        self.distance = f.get("distance")
        self.state = "idle"

    def _on_undone(self, ev: Any) -> None:
        f = ev.fields
        img = ev.images.get("image")
        index = int(f.get("history", self._undo_to))
        self.history = [e for e in self.history if e.index <= index]
        entry = self.history[-1] if self.history else None
        self.result = img if index > 0 else None
        if entry is not None:
            handles = f.get("handles") or [p.handle for p in entry.points]
            self.points = [LivePoint(tuple(h), p.target) for h, p in zip(handles, entry.points)]
            if entry.frame is not None:
                self._show_frame(entry.frame.image, entry.frame.box)
        self.position = index
        self.state = "idle"

    def _on_error(self, err: Any) -> None:
        st = self.state
        if st in ("connecting", "opening") or (
                isinstance(err, DaemonUnavailable) and st != "idle"):
            if isinstance(err, DaemonUnavailable):
                self.connected = False
            self._fail(user_message(err, self._hint))
            return
        if isinstance(err, RemoteError) and err.code == ErrorCode.CANCELLED:
            self.notice = "Stopped before the drag began; nothing changed."
        else:
            self.notice = user_message(err)
        self.tracked = None
        self.state = "idle"

    def _fail(self, message: str) -> None:
        self.error = message
        self.state = "failed"
        if self.connected is None:
            self.connected = False
        self._shutdown()

    def _shutdown(self) -> None:
        c, self.client = self.client, None
        if c is not None:
            close_quietly(c)
