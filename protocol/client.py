"""The dragd client used by the GIMP and Krita plug-ins and by the CLI.

Pure Python on pyzmq + msgpack. One DEALER socket (``linger=0``); every wait has a
timeout and goes through a ``zmq.Poller``, so nothing here blocks forever.

Two styles share one engine:

* Blocking with timeouts, for the CLI::

      c = Client("tcp://127.0.0.1:5557")
      s = c.open_session(Image(rgba, w, h, 4), progress=print)
      r = c.drag(s, [((10, 10), (20, 12))], max_steps=100, progress=print)
      r.image.data   # the edited layer

* Non-blocking, for a host event loop (QTimer / GLib timeout)::

      job = c.start_drag(s, points)
      ...  # every 30 ms:
      for ev in c.poll(timeout_ms=0):
          if ev.kind == "progress": ...
          elif ev.kind in ("result", "error"): ...

Liveness: while any job is outstanding and nothing has arrived for ``heartbeat``
seconds, the client pings the daemon (the daemon answers pings at once, even while
it is busy). With no sign of life for ``timeout`` seconds, every outstanding job fails
with :class:`DaemonUnavailable` ("dragd daemon not reachable at tcp://...; start it
with: dragd serve") and the socket is replaced by a fresh one, so the next request
reaches a restarted daemon. When a daemon answers ``unknown_session`` (it restarted,
or evicted the session) and the client still holds the layer of a :class:`Session`,
it reports "session lost, reopening", re-opens the session from that layer and
retries the request once.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import zmq

from zmq.utils.monitor import recv_monitor_message

from .curvekeys import normalise_key, read_key_file
from .codec import Message, encode, parse_reply, parse_request, peek_id, unpack_header
from .errors import ErrorCode, ProtocolError
from .image import Image
from .limits import DEFAULT_LIMITS, Limits

log = logging.getLogger("dragd.client")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"
SESSION_LOST = "session lost, reopening"
MAX_TOKENS = 4096
# The socket-monitor events that tell a refused handshake from a daemon that is not there.
HANDSHAKE_EVENTS = ("EVENT_HANDSHAKE_SUCCEEDED", "EVENT_HANDSHAKE_FAILED_AUTH",
                    "EVENT_HANDSHAKE_FAILED_PROTOCOL", "EVENT_HANDSHAKE_FAILED_NO_DETAIL")

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class RemoteError(ProtocolError):
    """An error reply from the daemon (or a client-side failure with a code)."""

    @classmethod
    def from_message(cls, m: Message) -> "RemoteError":
        return cls(m.get("code", ErrorCode.INTERNAL), m.get("message"), m.get("details"))


class DaemonUnavailable(RemoteError):
    def __init__(self, endpoint: str, why: str = ""):
        msg = "dragd daemon not reachable at %s; start it with: dragd serve" % endpoint
        if why:
            msg += " (%s)" % why
        super().__init__(ErrorCode.UNAVAILABLE, msg, {"endpoint": endpoint})
        self.endpoint = endpoint


class DaemonRefused(DaemonUnavailable):
    """The daemon is there but refused this client's CurveZMQ handshake: ``reason`` is "key"
    (our public key is not on its allow-list), "no_keys" (it requires CurveZMQ, we have no
    keys) or "not_curve" (we use keys, it runs without them)."""

    def __init__(self, endpoint: str, reason: str):
        RemoteError.__init__(self, ErrorCode.UNAVAILABLE, REFUSALS[reason] % endpoint,
                             {"endpoint": endpoint, "reason": reason})
        self.endpoint = endpoint
        self.reason = reason


REFUSALS = {
    "key": "the dragd daemon at %s refused this client's CurveZMQ key; create this machine's "
           "key with: dragd keys client, then on the daemon's machine allow it with: "
           "dragd keys allow client.key",
    "no_keys": "the dragd daemon at %s requires CurveZMQ keys and this client has none; create "
               "them with: dragd keys client, copy the daemon's server.key next to them, and on "
               "the daemon's machine run: dragd keys allow client.key",
    "not_curve": "the dragd daemon at %s runs without CurveZMQ (started with --insecure) but "
                 "this client uses keys; on the daemon's machine create its keys with: "
                 "dragd keys init, and start it again without --insecure",
}


class JobTimeout(RemoteError):
    def __init__(self, seconds: float):
        super().__init__(ErrorCode.TIMEOUT, "the daemon did not finish the job within "
                         "%.0f s; it was cancelled" % seconds)


# ---------------------------------------------------------------------------
# Curve configuration
# ---------------------------------------------------------------------------


class CurveConfig:
    """CurveZMQ settings of a client: the daemon's public key and our keypair (Z85)."""

    def __init__(self, server_public_key: Union[str, bytes], public_key: Union[str, bytes],
                 secret_key: Union[str, bytes]):
        self.server_public_key = normalise_key(server_public_key, "server public key")
        self.public_key = normalise_key(public_key, "client public key")
        self.secret_key = normalise_key(secret_key, "client secret key")

    @classmethod
    def from_files(cls, server_public_file: "os.PathLike[str] | str",
                   client_secret_file: "os.PathLike[str] | str") -> "CurveConfig":
        server_public, _ = read_key_file(server_public_file)
        public, secret = read_key_file(client_secret_file)
        if secret is None:
            raise ValueError("%s holds no secret-key line (use the .key_secret file)"
                             % os.fspath(client_secret_file))
        return cls(server_public, public, secret)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CurveConfig":
        """From a config mapping: either the keys themselves (``server_public_key``,
        ``public_key``, ``secret_key``) or files (``server_key_file``,
        ``client_key_file``)."""
        if "server_key_file" in d:
            return cls.from_files(d["server_key_file"], d["client_key_file"])
        return cls(d["server_public_key"], d["public_key"], d["secret_key"])

    def apply(self, sock: "zmq.Socket") -> None:
        sock.curve_serverkey = self.server_public_key
        sock.curve_publickey = self.public_key
        sock.curve_secretkey = self.secret_key


# ---------------------------------------------------------------------------
# Jobs, events, sessions
# ---------------------------------------------------------------------------


class Event:
    """Something that happened to a job: ``kind`` is queued | progress | notice |
    result | error. ``fields``/``images`` come from the daemon's message; for an
    error, ``error`` is the exception (a RemoteError)."""

    __slots__ = ("kind", "job", "message", "error")

    def __init__(self, kind: str, job: "Job", message: Optional[Message] = None,
                 error: Optional[RemoteError] = None):
        self.kind, self.job, self.message, self.error = kind, job, message, error

    @property
    def fields(self) -> Dict[str, Any]:
        return self.message.fields if self.message is not None else {}

    @property
    def images(self) -> Dict[str, Image]:
        return self.message.images if self.message is not None else {}

    def get(self, k: str, default: Any = None) -> Any:
        return self.fields.get(k, default)

    def __getitem__(self, k: str) -> Any:
        return self.fields[k]

    @property
    def final(self) -> bool:
        return self.kind in ("result", "error")

    def __repr__(self) -> str:
        if self.error is not None:
            return "Event(error %s: %s)" % (self.error.code, self.error.message)
        return "Event(%s %r)" % (self.kind, self.fields)


class Session:
    """Client-side handle of a daemon session. Holds the current layer (the opened
    image, then the latest drag/undo result) so a lost session can be re-opened, and the
    session's token, which the client adds to every request naming the session."""

    def __init__(self, image: Image, roi: Optional[Dict[str, int]] = None,
                 invert: Optional[Dict[str, Any]] = None, model: Optional[str] = None,
                 align: Optional[str] = None):
        self.id: Optional[str] = None
        self.token: Optional[str] = None
        self.image = image
        self.roi = roi
        self.invert = invert
        self.model = model
        self.align = align
        self.info: Dict[str, Any] = {}
        self.history = 0
        self.reopened = 0

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @property
    def channels(self) -> int:
        return self.image.channels

    def _adopt(self, m: Message) -> None:
        self.id = m["session"]
        self.token = m["token"]
        self.info = dict(m.fields)
        if m.get("model"):
            self.model = m["model"]

    def __repr__(self) -> str:
        return "Session(%s, %r)" % (self.id, self.image)


class Job:
    """A request in flight. ``done`` once a result or an error arrived; then
    ``result`` (a Message) or ``error`` (a RemoteError) is set."""

    def __init__(self, client: "Client", type: str, fields: Dict[str, Any],
                 images: Dict[str, Image], on_event: Optional[Callable[[Event], Any]],
                 session: Optional[Session], internal: bool = False):
        self.client = client
        self.type = type
        self.fields = fields
        self.images = images
        self.on_event = on_event
        self.session = session
        self.internal = internal
        self.request_id = ""
        self.job_id: Optional[str] = None
        self.state = "new"
        self.result: Optional[Message] = None
        self.error: Optional[RemoteError] = None
        self.started = 0.0
        self.sent_at = 0.0
        self.resent = 0
        self.reopened = False
        self.parent: Optional[Job] = None
        self.child: Optional[Job] = None

    @property
    def done(self) -> bool:
        return self.state in ("done", "failed")

    def get(self) -> Message:
        if self.error is not None:
            raise self.error
        if self.result is None:
            raise RuntimeError("job %s is not finished" % self.request_id)
        return self.result

    def __repr__(self) -> str:
        return "Job(%s %s %s)" % (self.type, self.request_id, self.state)


PointLike = Union[Sequence[Sequence[float]], Dict[str, Sequence[float]]]


def normalise_points(points: Iterable[PointLike]) -> List[Dict[str, List[float]]]:
    """Accept ((hx, hy), (tx, ty)), (hx, hy, tx, ty) or {"handle":..., "target":...}."""
    out = []
    for p in points:
        if isinstance(p, dict):
            h, t = p["handle"], p["target"]
        elif len(p) == 4:
            h, t = p[:2], p[2:]
        else:
            h, t = p
        out.append({"handle": [float(h[0]), float(h[1])],
                    "target": [float(t[0]), float(t[1])]})
    return out


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


class Client:
    """A connection to a dragd daemon. Not thread-safe: use it from one thread."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, timeout: float = 5.0,
                 heartbeat: float = 1.0, job_timeout: Optional[float] = 3600.0,
                 curve: Optional[Union[CurveConfig, Dict[str, Any]]] = None,
                 context: Optional["zmq.Context"] = None, auto_reopen: bool = True,
                 limits: Optional[Limits] = None, name: str = "dragd-client"):
        if isinstance(curve, dict):
            curve = CurveConfig.from_dict(curve)
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.heartbeat = min(float(heartbeat), self.timeout / 2.0)
        self.job_timeout = job_timeout
        self.curve = curve
        self.auto_reopen = auto_reopen
        self.limits = limits or DEFAULT_LIMITS
        self.name = name
        self._ctx = context or zmq.Context.instance()
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._jobs: Dict[str, Job] = {}
        # Tokens of the sessions this client opened, by session id: so a request that names
        # a session by id alone still proves it is ours (and, after a close, still learns why
        # the session is gone). Forgotten on unknown_session, the oldest beyond MAX_TOKENS.
        self._tokens: Dict[str, str] = {}
        self._sock: Optional[zmq.Socket] = None
        self._poller = zmq.Poller()
        self._last_rx = 0.0
        self._wait_since = 0.0
        self._ping_id: Optional[str] = None
        self._ping_sent = 0.0
        self._ping_jobs: Tuple[str, ...] = ()
        self._monitor: Optional[zmq.Socket] = None
        self._refused: Optional[str] = None      # why the daemon refused this socket
        self._handshake_why = ""                 # a failed handshake, for DaemonUnavailable
        self._closed = False
        self._open_socket()

    # -- socket management -------------------------------------------------

    def _open_socket(self) -> None:
        s = self._ctx.socket(zmq.DEALER)
        s.linger = 0
        if self.curve is not None:
            self.curve.apply(s)
        self._poller = zmq.Poller()
        self._poller.register(s, zmq.POLLIN)
        self._monitor = self._watch_handshakes(s)
        if self._monitor is not None:
            self._poller.register(self._monitor, zmq.POLLIN)
        s.connect(self.endpoint)
        self._sock = s

    def _watch_handshakes(self, s: "zmq.Socket") -> Optional["zmq.Socket"]:
        """A monitor of ``s``'s handshakes (before it connects): without it a refused key
        looks like a daemon that is not there. None where this libzmq cannot tell."""
        if not all(hasattr(zmq, n) for n in HANDSHAKE_EVENTS):
            return None
        events = sum(getattr(zmq, n) for n in HANDSHAKE_EVENTS)
        addr = "inproc://dragd-client-monitor-%s" % secrets.token_hex(8)
        s.monitor(addr, events)
        m = self._ctx.socket(zmq.PAIR)
        m.linger = 0
        m.connect(addr)
        return m

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        if self._monitor is not None:
            self._monitor.close(linger=0)
        self._sock = self._monitor = None
        self._refused = None
        self._handshake_why = ""

    def _reset_socket(self) -> None:
        self._drop_socket()
        self._ping_id = None
        if not self._closed:
            self._open_socket()

    def close(self) -> None:
        """Close the socket; outstanding jobs are dropped."""
        self._closed = True
        self._drop_socket()
        self._jobs.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- sending -----------------------------------------------------------

    def _next_id(self, tag: str = "") -> str:
        return "%s-%s%d" % (self._prefix, tag, next(self._counter))

    def _send(self, parts: List[Any]) -> None:
        if self._sock is None:
            raise DaemonUnavailable(self.endpoint, "client closed")
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise DaemonUnavailable(self.endpoint, "send queue full")

    def _outstanding(self) -> List[Job]:
        return [j for j in self._jobs.values() if not j.done]

    def _transmit(self, job: Job) -> None:
        if self._refused is not None:
            # libzmq gives up on a refused connection: try afresh (the key may be allowed now).
            self._reset_socket()
        if job.request_id:
            self._jobs.pop(job.request_id, None)
        job.request_id = self._next_id()
        sid = job.fields.get("session")
        if sid is not None and sid in self._tokens:
            job.fields["token"] = self._tokens[sid]
        parts = encode(job.type, job.request_id, job.fields, job.images)
        # Fail fast on anything the daemon would reject (bad points, sizes...).
        try:
            parse_request(parts, self.limits)
        except ProtocolError as e:
            if isinstance(e, RemoteError):
                raise
            raise RemoteError(e.code, e.message, e.details) from None
        now = time.monotonic()
        if not self._outstanding():
            self._wait_since = now
        self._send(parts)
        job.sent_at = now
        if not job.started:
            job.started = now
        job.state = "sent"
        self._jobs[job.request_id] = job

    def start(self, type: str, fields: Optional[Dict[str, Any]] = None,
              images: Optional[Dict[str, Image]] = None, *,
              on_event: Optional[Callable[[Event], Any]] = None,
              session: Optional[Session] = None) -> Job:
        """Send a request and return its Job at once (non-blocking style).
        Raises ProtocolError for a request the daemon would reject."""
        job = Job(self, type, dict(fields or {}), dict(images or {}), on_event, session)
        self._transmit(job)
        return job

    def _remember_token(self, sid: str, token: str) -> None:
        self._tokens[sid] = token
        while len(self._tokens) > MAX_TOKENS:
            del self._tokens[next(iter(self._tokens))]

    # -- receiving ---------------------------------------------------------

    def poll(self, timeout_ms: int = 0) -> List[Event]:
        """Return the events that arrived, waiting at most ``timeout_ms`` for the first.
        Never raises for a dead daemon: outstanding jobs then get an ``error`` event
        carrying DaemonUnavailable."""
        events: List[Event] = []
        if self._sock is None:
            return events
        deadline = time.monotonic() + max(0, timeout_ms) / 1000.0
        while True:
            wait = max(0.0, deadline - time.monotonic())
            if self._outstanding():
                wait = min(wait, self.heartbeat / 2.0)
            got = False
            if self._sock is not None and self._poller.poll(int(wait * 1000)):
                got = True
                for _ in range(1000):
                    try:
                        parts = self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    events.extend(self._on_message(parts))
            events.extend(self._on_handshakes())
            events.extend(self._tick())
            if got or events or time.monotonic() >= deadline:
                return events

    def wait(self, job: Job, timeout: Optional[float] = None,
             progress: Optional[Callable[[Event], Any]] = None) -> Message:
        """Block (in slices, with liveness checks) until ``job`` is done; return its
        result or raise its error. ``timeout`` bounds the whole wait (default: the
        client's ``job_timeout``)."""
        limit = timeout if timeout is not None else self.job_timeout
        end = None if limit is None else time.monotonic() + limit
        while not job.done:
            left = 0.2 if end is None else min(0.2, end - time.monotonic())
            if left <= 0:
                self._fail(job, JobTimeout(limit or 0.0))
                self._send_cancel(job)
                break
            for ev in self.poll(int(left * 1000) + 1):
                if progress is not None and ev.job is job and not ev.final:
                    progress(ev)
        return job.get()

    def _on_message(self, parts: List[Any]) -> List[Event]:
        self._last_rx = time.monotonic()
        try:
            rid = peek_id(unpack_header(parts[0].buffer, Limits(max_header_bytes=1 << 26)))
        except ProtocolError:
            log.warning("event=bad_reply reason=undecodable")
            return []
        if rid is not None and rid == self._ping_id:
            return self._on_pong(parts)
        job = self._jobs.get(rid or "")
        if job is None or job.done:
            return []     # a stale reply (earlier socket, cancelled wait...)
        try:
            m = parse_reply([p.buffer for p in parts], job.type)
        except ProtocolError as e:
            err = RemoteError(ErrorCode.BAD_MESSAGE, "the daemon sent a reply this client "
                              "cannot read (%s); update the plug-in and the daemon to the "
                              "same dragd release" % e.message)
            return self._finish_error(job, err)
        if m.type == "queued":
            job.job_id = m["job"]
            job.state = "queued"
            return self._emit(job, Event("queued", job, m))
        if m.type == "progress":
            job.job_id = m["job"]
            job.state = "running"
            return self._emit(job, Event("progress", job, m))
        if m.type == "notice":
            return self._emit(job, Event("notice", job, m))
        if m.type == "result":
            return self._finish_result(job, m)
        return self._finish_error(job, RemoteError.from_message(m))

    def _emit(self, job: Job, ev: Event) -> List[Event]:
        if job.internal and job.parent is not None:
            parent = job.parent
            if ev.kind != "progress":
                return []
            ev = Event("progress", parent, ev.message)
            job = parent
        if job.on_event is not None:
            job.on_event(ev)
        return [ev]

    def _finish_result(self, job: Job, m: Message) -> List[Event]:
        job.result = m
        job.state = "done"
        self._jobs.pop(job.request_id, None)
        if job.type == "open_session":
            self._remember_token(m["session"], m["token"])
        s = job.session
        if s is not None:
            if job.type == "open_session":
                s._adopt(m)
                if m.get("model"):
                    s.model = m["model"]
            elif job.type in ("drag", "undo") and m.image is not None:
                s.image = Image(m.image.data, m.image.width, m.image.height,
                                m.image.channels)
                s.history = m.get("history", s.history)
        if job.internal and job.parent is not None:
            return self._reopened(job.parent)
        return self._emit(job, Event("result", job, m))

    def _finish_error(self, job: Job, err: RemoteError) -> List[Event]:
        if err.code == ErrorCode.UNKNOWN_SESSION:
            self._tokens.pop(job.fields.get("session"), None)
        if (err.code == ErrorCode.UNKNOWN_SESSION and self.auto_reopen and not job.internal
                and not job.reopened and job.session is not None
                and job.type in ("drag", "undo", "reset_points")):
            return self._reopen(job, err)
        self._fail(job, err)
        if job.internal and job.parent is not None:
            parent = job.parent
            perr = RemoteError(err.code, "the session was lost and could not be re-opened: "
                               "%s" % err.message, err.details)
            self._fail(parent, perr)
            return self._emit_final_error(parent)
        return self._emit_final_error(job)

    def _emit_final_error(self, job: Job) -> List[Event]:
        ev = Event("error", job, None, job.error)
        if job.on_event is not None:
            job.on_event(ev)
        return [ev]

    def _fail(self, job: Job, err: RemoteError) -> None:
        job.error = err
        job.state = "failed"
        self._jobs.pop(job.request_id, None)

    # -- session re-opening ------------------------------------------------

    def _reopen(self, job: Job, err: RemoteError) -> List[Event]:
        s = job.session
        assert s is not None
        job.reopened = True
        job.state = "reopening"
        self._jobs.pop(job.request_id, None)
        log.warning("event=session_lost session=%s reason=%s", s.id, err.code)
        notice = Message("notice", job.request_id,
                         {"message": SESSION_LOST, "details": {"session": s.id or "",
                                                               "reason": err.message}})
        events = self._emit(job, Event("notice", job, notice))
        fields: Dict[str, Any] = {"model": s.model, "roi": s.roi}
        if s.invert:
            fields["invert"] = s.invert
        if s.align:
            fields["align"] = s.align
        child = Job(self, "open_session", fields, {"image": s.image}, None, s, internal=True)
        child.parent = job
        job.child = child
        s.reopened += 1
        try:
            self._transmit(child)
        except ProtocolError as e:
            return events + self._finish_error(child, RemoteError(e.code, e.message, e.details))
        return events

    def _reopened(self, job: Job) -> List[Event]:
        """The session of ``job`` was re-opened: retry the request on the new id."""
        assert job.session is not None
        job.fields["session"] = job.session.id
        job.child = None
        try:
            self._transmit(job)
        except ProtocolError as e:
            self._fail(job, RemoteError(e.code, e.message, e.details))
            return self._emit_final_error(job)
        return []

    # -- liveness ----------------------------------------------------------

    def _tick(self) -> List[Event]:
        out = self._outstanding()
        if not out:
            return []
        now = time.monotonic()
        alive = max(self._last_rx, self._wait_since)
        if now - alive > self.timeout:
            log.warning("event=daemon_unavailable endpoint=%s silent_s=%.1f",
                        self.endpoint, now - alive)
            why = self._handshake_why
            events = self._fail_outstanding(lambda: DaemonUnavailable(self.endpoint, why))
            self._reset_socket()
            return events
        events = []
        if self.job_timeout is not None:
            for j in out:
                if not j.internal and now - j.started > self.job_timeout:
                    self._send_cancel(j)
                    self._fail(j, JobTimeout(self.job_timeout))
                    events.extend(self._emit_final_error(j))
        if now - alive > self.heartbeat and (self._ping_id is None
                                             or now - self._ping_sent > self.heartbeat):
            self._send_ping([j for j in out if not j.done])
        return events

    def _fail_outstanding(self, error: Callable[[], RemoteError]) -> List[Event]:
        events: List[Event] = []
        for j in self._outstanding():
            if j.internal and j.parent is not None:
                j = j.parent
            if j.done:
                continue
            self._fail(j, error())
            events.extend(self._emit_final_error(j))
        self._jobs.clear()
        return events

    def _on_handshakes(self) -> List[Event]:
        """Read the socket monitor; when the daemon refused the handshake, fail every
        outstanding job at once with a DaemonRefused that says what to do."""
        while self._monitor is not None:
            try:
                ev = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            kind, value = ev["event"], ev["value"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_why = ""
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._refused = "key"
            elif (kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH):
                self._refused = "not_curve" if self.curve is not None else "no_keys"
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self.curve is None:
                # Without keys a handshake fails only when the daemon wants CurveZMQ; libzmq
                # reports it as a mechanism mismatch or, in about half the tries (measured),
                # with no detail.
                self._refused = "no_keys"
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self.curve is not None:
                # A Curve daemon drops a hello it cannot decrypt: our server.key is not its key.
                self._handshake_why = ("the CurveZMQ handshake failed: check that server.key "
                                       "holds this daemon's public key, which on the daemon's "
                                       "machine this prints: dragd keys show")
        if self._refused is None:
            return []
        reason = self._refused
        log.warning("event=daemon_refused endpoint=%s reason=%s", self.endpoint, reason)
        return self._fail_outstanding(lambda: DaemonRefused(self.endpoint, reason))

    def _send_ping(self, jobs: List[Job]) -> None:
        self._ping_id = self._next_id("hb")
        self._ping_sent = time.monotonic()
        ids = tuple(j.request_id for j in jobs if j.state != "reopening")[:256]
        self._ping_jobs = ids
        try:
            self._send(encode("ping", self._ping_id, {"jobs": list(ids)}))
        except DaemonUnavailable:
            pass

    def _on_pong(self, parts: List[Any]) -> List[Event]:
        self._ping_id = None
        try:
            m = parse_reply([p.buffer for p in parts], "ping")
        except ProtocolError:
            return []
        events: List[Event] = []
        for rid in m.get("unknown", []):
            job = self._jobs.get(rid)
            if job is None or job.done or rid not in self._ping_jobs:
                continue
            # The daemon never got this request (lost in a restart): resend it once.
            if job.resent < 1:
                job.resent += 1
                log.warning("event=request_lost request=%s action=resend", rid)
                try:
                    self._transmit(job)
                    continue
                except ProtocolError:
                    pass
            err = RemoteError(ErrorCode.INTERNAL, "the daemon lost this request twice; "
                              "try again")
            events.extend(self._finish_error(job, err))
        return events

    def _send_cancel(self, job: Job) -> None:
        f = {"job": job.job_id} if job.job_id else {"request": job.request_id}
        try:
            self._send(encode("cancel", self._next_id("c"), f))
        except ProtocolError:
            pass

    # -- blocking convenience ----------------------------------------------

    def call(self, type: str, fields: Optional[Dict[str, Any]] = None,
             images: Optional[Dict[str, Image]] = None, *,
             progress: Optional[Callable[[Event], Any]] = None,
             timeout: Optional[float] = None, session: Optional[Session] = None) -> Message:
        """Send a request and wait for its result (raises RemoteError /
        DaemonUnavailable). ``progress(event)`` gets queued/progress/notice events."""
        job = self.start(type, fields, images, session=session)
        return self.wait(job, timeout, progress)

    def hello(self, timeout: Optional[float] = None) -> Message:
        m = self.call("hello", {"client": self.name}, timeout=timeout)
        try:
            self.limits = Limits.from_dict(m["limits"])
        except (TypeError, ValueError):
            pass
        return m

    def ping(self, timeout: Optional[float] = None) -> Message:
        return self.call("ping", timeout=timeout)

    def status(self) -> Message:
        return self.call("status")

    def list_models(self) -> List[Dict[str, Any]]:
        return self.call("list_models")["models"]

    def load_model(self, model: str, progress: Optional[Callable[[Event], Any]] = None
                   ) -> Message:
        return self.call("load_model", {"model": model}, progress=progress)

    # open_session ---------------------------------------------------------

    def start_open_session(self, image: Image, *, roi: Optional[Dict[str, int]] = None,
                           invert: Optional[Dict[str, Any]] = None,
                           model: Optional[str] = None,
                           on_event: Optional[Callable[[Event], Any]] = None,
                           align: Optional[str] = None,
                           reconstruction: Optional[str] = None) -> Job:
        """Non-blocking open; ``job.session`` is filled in when the result arrives.
        ``reconstruction="none"``: the reply carries no reconstruction image."""
        s = Session(image, roi, invert, model, align)
        fields: Dict[str, Any] = {"model": model, "roi": roi}
        if invert:
            fields["invert"] = invert
        if align:
            fields["align"] = align
        if reconstruction:
            fields["reconstruction"] = reconstruction
        return self.start("open_session", fields, {"image": image}, on_event=on_event,
                          session=s)

    def open_session(self, image: Image, *, roi: Optional[Dict[str, int]] = None,
                     invert: Optional[Dict[str, Any]] = None, model: Optional[str] = None,
                     progress: Optional[Callable[[Event], Any]] = None,
                     timeout: Optional[float] = None, align: Optional[str] = None) -> Session:
        job = self.start_open_session(image, roi=roi, invert=invert, model=model, align=align)
        self.wait(job, timeout, progress)
        assert job.session is not None
        return job.session

    # drag / undo / points ------------------------------------------------

    @staticmethod
    def _sid(session: Union[Session, str]) -> Tuple[str, Optional[Session]]:
        if isinstance(session, Session):
            if session.id is None:
                raise ValueError("the session is not open yet")
            return session.id, session
        return session, None

    def start_drag(self, session: Union[Session, str], points: Iterable[PointLike], *,
                   mask: Optional[Image] = None,
                   on_event: Optional[Callable[[Event], Any]] = None,
                   **params: Any) -> Job:
        """Non-blocking drag. ``params``: max_steps, lr, lambda_mask, space ("w"/"w+"),
        tracking ("l1"/"l2"), preview_every, preview_max_size, r1, r2, stop_distance,
        stall_steps, paste (see docs/PROTOCOL.md)."""
        sid, s = self._sid(session)
        fields: Dict[str, Any] = {"session": sid, "points": normalise_points(points)}
        if params:
            fields["params"] = params
        images = {"mask": mask} if mask is not None else None
        return self.start("drag", fields, images, on_event=on_event, session=s)

    def drag(self, session: Union[Session, str], points: Iterable[PointLike], *,
             mask: Optional[Image] = None, progress: Optional[Callable[[Event], Any]] = None,
             timeout: Optional[float] = None, **params: Any) -> Message:
        """Blocking drag: returns the result (``.image``, ``["handles"]``, ``["steps"]``,
        ``["stop"]``) and calls ``progress(event)`` for each event on the way."""
        job = self.start_drag(session, points, mask=mask, **params)
        return self.wait(job, timeout, progress)

    def start_undo(self, session: Union[Session, str], steps: int = 1,
                   on_event: Optional[Callable[[Event], Any]] = None) -> Job:
        sid, s = self._sid(session)
        return self.start("undo", {"session": sid, "steps": steps}, on_event=on_event,
                          session=s)

    def undo(self, session: Union[Session, str], steps: int = 1,
             timeout: Optional[float] = None) -> Message:
        return self.wait(self.start_undo(session, steps), timeout)

    def reset_points(self, session: Union[Session, str]) -> Message:
        sid, s = self._sid(session)
        return self.call("reset_points", {"session": sid}, session=s)

    def close_session(self, session: Union[Session, str]) -> Message:
        sid, _ = self._sid(session)
        return self.call("close_session", {"session": sid})

    # cancel ----------------------------------------------------------------

    def cancel(self, job: Union[Job, str], wait: bool = True) -> Optional[Message]:
        """Cancel a job (a Job or a daemon job id). With ``wait`` returns the reply
        (``state``: queued | running) or None when the job had already finished."""
        if isinstance(job, Job):
            target = job.child if job.child is not None else job
            f = ({"job": target.job_id} if target.job_id
                 else {"request": target.request_id})
        else:
            f = {"job": job}
        cj = self.start("cancel", f)
        if not wait:
            return None
        try:
            return self.wait(cj, self.timeout * 2)
        except RemoteError as e:
            if e.code == ErrorCode.UNKNOWN_JOB:
                return None
            raise


__all__ = ["Client", "Job", "Event", "Session", "CurveConfig", "RemoteError",
           "DaemonUnavailable", "DaemonRefused", "JobTimeout", "DEFAULT_ENDPOINT", "SESSION_LOST",
           "normalise_points"]
