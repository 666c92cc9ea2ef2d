"""The dragd ZeroMQ server: a ROUTER socket, a FIFO job queue and ONE worker thread.

Threads:

* the **socket thread** owns the ROUTER socket. It reads and validates every request,
  answers ``hello``, ``ping``, ``status``, ``list_models`` and ``cancel`` at once (so a
  long job never hides the daemon), and queues the others (``load_model``,
  ``open_session``, ``drag``, ``undo``, ``reset_points``, ``close_session``);
* the **worker thread** owns the GPU (calls the :class:`~dragd.daemon.service.backend.Backend`),
  one job at a time in arrival order. Its replies and progress events travel to the
  socket thread over an inproc PUSH/PULL pair (zero-copy), because a ZeroMQ socket
  must only be used by one thread.

The ROUTER runs with ROUTER_MANDATORY, so a send to a client that has gone raises
EHOSTUNREACH: the message is dropped and that client's jobs are cancelled (queued ones
removed, the running one stopped at its next step). Nothing a client sends can raise
out of the socket thread; every bad request gets an ``error`` reply.

Start in-process::

    from dragd.daemon.service.server import Server, ServerConfig
    srv = Server(backend, ServerConfig(endpoint="tcp://127.0.0.1:5557")).start()
    srv.serve_forever()       # returns after srv.stop() (e.g. from a signal handler)
"""
from __future__ import annotations

import collections
import logging
import secrets
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import zmq

from ...protocol import (JOB_TYPES, PROGRESS_FIELDS, PROTOCOL_VERSION, ErrorCode, Image, Message,
                         ProtocolError, check_event, check_result, encode, encode_error, parse_request,
                         split_images)
from ...protocol.messages import STATUS_MAX_SESSIONS
from .backend import Backend, Cancelled
from .config import ConfigError, ServerConfig
from .jobs import Dispatcher, Job, is_oom, plain
from .logfmt import kv, peer_id
from .security import AllowList, CurveKeys, curve_keys_for, make_peer_ids_unguessable
from .sessions import SessionTable

log = logging.getLogger("dragd.server")

__all__ = ["Server", "ServerConfig", "ConfigError", "serve"]


class Server:
    """A dragd daemon around a Backend. ``start()`` binds and returns; ``stop()`` shuts
    down cleanly (from any thread, e.g. a signal handler)."""

    def __init__(self, backend: Backend, config: Optional[ServerConfig] = None, *,
                 context: Optional["zmq.Context"] = None):
        self.backend = backend
        self.config = config or ServerConfig()
        self.limits = self.config.limits
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        self.sessions = SessionTable(self.config.session_budget_bytes,
                                     self.config.session_idle_seconds)
        self.instance = secrets.token_hex(6)
        self.endpoint: Optional[str] = None
        self.curve = False
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._queue: "collections.deque[Job]" = collections.deque()
        self._jobs: Dict[str, Job] = {}
        self._running: Optional[Job] = None
        self._worker_exit = False
        self._stop_flag = threading.Event()
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._started = False
        self._started_at = time.monotonic()
        self._inproc = "inproc://dragd-out-%s" % self.instance
        self._socket_thread: Optional[threading.Thread] = None
        self._worker: Optional[threading.Thread] = None
        self._auth: Any = None
        self._router: Optional[zmq.Socket] = None
        self._curve_keys: Optional[CurveKeys] = None
        self._dispatcher = Dispatcher(backend, self.sessions, self._queued_sessions)

    # -- lifecycle -----------------------------------------------------------

    @property
    def port(self) -> Optional[int]:
        if not self.endpoint or not self.endpoint.startswith("tcp://"):
            return None
        return int(self.endpoint.rsplit(":", 1)[1])

    def start(self) -> "Server":
        """Bind and start the socket and worker threads. Raises ConfigError for an unsafe
        configuration and zmq.ZMQError when the address cannot be bound."""
        if self._started:
            return self
        self._curve_keys = curve_keys_for(self.config)
        self.curve = self._curve_keys is not None
        if self._curve_keys is not None:
            from zmq.auth.thread import ThreadAuthenticator
            self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("dragd.zap"))
            self._auth.start()
            self._auth.configure_curve_callback(
                domain="*", credentials_provider=AllowList(self._curve_keys.allowed,
                                                           self._curve_keys.allow_any))
        self._started = True
        self._socket_thread = threading.Thread(target=self._socket_main, name="dragd-socket",
                                               daemon=True)
        self._socket_thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._socket_thread.join(5)
            if self._auth is not None:
                self._auth.stop()
            if self._own_ctx:
                self._ctx.term()
            raise self._start_error
        return self

    def serve_forever(self) -> None:
        """Block until the server stops (call stop() from a signal handler)."""
        if not self._started:
            self.start()
        while not self._stopped.is_set():
            self._stopped.wait(0.5)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Refuse new work, answer queued jobs with ``shutting_down``, cancel the running
        job (it stops at its next step), close the sockets, and return."""
        if not self._started:
            return
        self._stop_flag.set()
        t = self._socket_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout if timeout is not None else self.config.shutdown_timeout + 5)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- socket thread -----------------------------------------------------

    def _bind_endpoint(self) -> str:
        ep = self.config.endpoint
        if ep.startswith("tcp://") and (ep.endswith(":0") or ep.endswith(":*")):
            ep = ep.rsplit(":", 1)[0] + ":*"
        return ep

    def _socket_main(self) -> None:
        try:
            make_peer_ids_unguessable()
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
            router.setsockopt(zmq.LINGER, 1000)
            if self.config.heartbeat_ivl_ms > 0:
                router.setsockopt(zmq.HEARTBEAT_IVL, self.config.heartbeat_ivl_ms)
                router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * self.config.heartbeat_ivl_ms)
            if self._curve_keys is not None:
                router.curve_server = True
                router.curve_publickey = self._curve_keys.public
                router.curve_secretkey = self._curve_keys.secret
            pull = self._ctx.socket(zmq.PULL)
            pull.setsockopt(zmq.LINGER, 0)
            pull.setsockopt(zmq.RCVHWM, 0)
            pull.bind(self._inproc)
            try:
                router.bind(self._bind_endpoint())
            except zmq.ZMQError:
                pull.close(0)
                router.close(0)
                raise
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._router = router
        except BaseException as e:       # reported by start()
            self._start_error = e
            self._ready.set()
            return
        self._worker = threading.Thread(target=self._worker_main, name="dragd-worker",
                                        daemon=True)
        self._worker.start()
        log.info(kv("listening", endpoint=self.endpoint, curve=self.curve,
                    protocol=PROTOCOL_VERSION, instance=self.instance))
        self._ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        try:
            while not self._stop_flag.is_set():
                try:
                    ready = dict(poller.poll(self.config.poll_ms))
                except zmq.ZMQError as e:
                    log.error(kv("poll_error", error=e))
                    time.sleep(0.05)
                    continue
                if pull in ready:
                    self._forward(pull, 256)
                if router in ready:
                    self._serve(router, 256)
        except Exception:
            log.exception(kv("socket_thread_crashed"))
        finally:
            self._shutdown(router, pull, poller)

    def _recv(self, router: "zmq.Socket") -> Tuple[bytes, str, List[Any], int]:
        """One message: the sender's peer id and owner (see `_owner`), at most
        max_frames+2 parts (the rest are read and dropped, so a hostile message with
        millions of parts cannot grow memory), and how many parts arrived."""
        ident = router.recv(flags=zmq.NOBLOCK, copy=False)
        keep = self.limits.max_frames + 2
        parts: List[Any] = []
        n = 0
        more = ident.more
        while more:
            f = router.recv(copy=False)
            more = f.more
            n += 1
            if len(parts) < keep:
                parts.append(f)
        return ident.bytes, self._owner(ident), parts, n

    def _owner(self, ident: "zmq.Frame") -> str:
        """Who a message comes from, as sessions and jobs record it: with CurveZMQ the
        client's public key (the user id the ZAP handler gave the connection), so the
        same key owns its work across reconnects; otherwise this connection."""
        if self.curve:
            try:
                return "key:" + ident.get("User-Id")
            except zmq.ZMQError:        # no ZAP user id: cannot happen with Curve on
                pass
        return "peer:" + ident.bytes.hex()

    def _serve(self, router: "zmq.Socket", budget: int) -> None:
        for _ in range(budget):
            try:
                peer, owner, parts, arrived = self._recv(router)
            except zmq.Again:
                return
            except zmq.ZMQError as e:
                log.warning(kv("recv_error", error=e))
                return
            try:
                self._handle(peer, owner, parts, arrived)
            except Exception:            # never let a request kill the socket thread
                log.exception(kv("handler_crashed", peer=peer_id(peer)))
                self._send(peer, encode_error(None, ProtocolError(ErrorCode.INTERNAL)))

    def _forward(self, pull: "zmq.Socket", budget: int) -> None:
        for _ in range(budget):
            try:
                parts = pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._send(parts[0].bytes, parts[1:])

    def _send(self, peer: bytes, parts: Sequence[Any]) -> bool:
        router = self._router
        if router is None:
            return False
        try:
            router.send_multipart([peer] + list(parts), flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self._peer_gone(peer)
            else:   # EAGAIN: the client is not reading (its queue is full)
                log.warning(kv("send_dropped", peer=peer_id(peer), error=e))
            return False

    def _reply(self, peer: bytes, msg: Message, fields: Dict[str, Any]) -> None:
        self._send(peer, encode("result", msg.id, fields, request_type=msg.type))

    def _error(self, peer: bytes, rid: Optional[str], err: ProtocolError,
               job: Optional[str] = None) -> None:
        self._send(peer, encode_error(rid, err, job))

    def _peer_gone(self, peer: bytes) -> None:
        with self._lock:
            mine = [j for j in self._queue if j.peer == peer]
            for j in mine:
                self._queue.remove(j)
                self._jobs.pop(j.id, None)
            running = self._running
            if running is not None and running.peer == peer:
                running.token.cancel("client_gone")
                mine.append(running)
        if mine:
            log.info(kv("client_gone", peer=peer_id(peer), cancelled=",".join(j.id for j in mine)))
        self._dispatcher.peer_gone(peer)

    def _handle(self, peer: bytes, owner: str, parts: List[Any], arrived: int) -> None:
        try:
            msg = parse_request([p.buffer for p in parts], self.limits, arrived)
        except ProtocolError as e:
            rid = e.details.pop("id", None)
            log.info(kv("bad_request", peer=peer_id(peer), id=rid, code=e.code, why=e.message))
            self._error(peer, rid, e)
            return
        if self._stop_flag.is_set():
            self._error(peer, msg.id, ProtocolError(ErrorCode.SHUTTING_DOWN))
            return
        log.debug(kv("request", peer=peer_id(peer), id=msg.id, type=msg.type))
        t = msg.type
        try:
            if t == "ping":
                self._reply(peer, msg, self._ping(msg, owner))
            elif t == "hello":
                self._reply(peer, msg, self._hello())
            elif t == "status":
                self._reply(peer, msg, self._status(owner))
            elif t == "list_models":
                models = plain(self.backend.list_models())
                check_result("list_models", {"models": models})
                self._reply(peer, msg, {"models": models})
            elif t == "cancel":
                self._cancel(peer, owner, msg)
            elif t in JOB_TYPES:
                self._enqueue(peer, owner, msg)
            else:                                  # pragma: no cover (schema rejects)
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE)
        except ProtocolError as e:
            if e.code == ErrorCode.INTERNAL:
                log.error(kv("bad_backend_reply", type=t, why=e.message))
            self._error(peer, msg.id, e)
        except Exception as e:
            log.exception(kv("request_failed", type=t, id=msg.id))
            self._error(peer, msg.id, ProtocolError(
                ErrorCode.INTERNAL, "the daemon hit an internal error (%s) answering %s; "
                "see the daemon log" % (type(e).__name__, t)))

    # -- immediate requests ------------------------------------------------

    def _ping(self, msg: Message, owner: str) -> Dict[str, Any]:
        with self._lock:
            r = self._running
            running = r.id if r is not None and r.owner == owner else None
            queued = len(self._queue)
            known = {j.request_id for j in self._jobs.values() if j.owner == owner}
        return {"time": time.time(), "uptime": time.monotonic() - self._started_at,
                "running": running, "queued": queued, "instance": self.instance,
                "unknown": [r for r in msg.get("jobs", []) if r not in known]}

    def _limits_dict(self) -> Dict[str, int]:
        d = self.limits.to_dict()
        d["session_budget_bytes"] = self.sessions.budget
        return d

    def _hello(self) -> Dict[str, Any]:
        info = plain(self.backend.hello_info())
        fields = {"protocol": PROTOCOL_VERSION, "daemon_version": self.config.daemon_version,
                  "device": str(info.get("device", "unknown")),
                  "models": list(info.get("models", [])),
                  "loaded_model": info.get("loaded_model"),
                  "limits": self._limits_dict(), "curve": self.curve,
                  "instance": self.instance}
        if info.get("info"):
            fields["info"] = info["info"]
        check_result("hello", fields)
        return fields

    def _status(self, owner: str) -> Dict[str, Any]:
        """What the daemon does, for one client: its own jobs and sessions in full (with
        their places in the whole queue), everyone else's only as counts."""
        with self._lock:
            running = self._running
            offset = 1 if running is not None else 0
            queue = [j.info(i + offset) for i, j in enumerate(self._queue) if j.owner == owner]
            mine = running is not None and running.owner == owner
            running_info = running.info() if mine else None
            other_jobs = len(self._queue) + offset - len(queue) - mine
        sessions, other_sessions = self.sessions.describe(owner, STATUS_MAX_SESSIONS)
        try:
            backend = plain(self.backend.status() or {})
        except Exception as e:
            backend = {"error": "%s: %s" % (type(e).__name__, e)}
        info = {}
        try:
            info = plain(self.backend.hello_info())
        except Exception:
            pass
        fields = {"queue": queue, "running": running_info, "sessions": sessions,
                  "others": {"sessions": other_sessions, "jobs": other_jobs},
                  "memory": {"budget": self.sessions.budget, "used": self.sessions.used,
                             "backend": backend},
                  "uptime": time.monotonic() - self._started_at,
                  "device": str(info.get("device", "unknown")),
                  "loaded_model": info.get("loaded_model")}
        check_result("status", fields)
        return fields

    def _cancel(self, peer: bytes, owner: str, msg: Message) -> None:
        jid, rid = msg.get("job"), msg.get("request")
        with self._lock:
            # Only the caller's own jobs: anyone else's is as unknown as one that never was.
            if jid is not None:
                job = self._jobs.get(jid)
            else:
                job = next((j for j in self._jobs.values()
                            if j.request_id == rid and j.owner == owner), None)
            if job is not None and job.owner != owner:
                job = None
            if job is None:
                state = None
            elif job in self._queue:
                self._queue.remove(job)
                self._jobs.pop(job.id, None)
                state = "queued"
            else:
                job.token.cancel("cancelled")
                state = "running"
        if job is None:
            self._error(peer, msg.id, ProtocolError(
                ErrorCode.UNKNOWN_JOB, "there is no queued or running job %s (it may have "
                "finished already)" % (jid or "for request %s" % rid)))
            return
        log.info(kv("cancel", job=job.id, state=state, by=peer_id(peer)))
        if state == "queued":
            self._error(job.peer, job.request_id, ProtocolError(
                ErrorCode.CANCELLED, "the job was cancelled before it started"), job.id)
        self._reply(peer, msg, {"job": job.id, "state": state})

    # -- queueing ------------------------------------------------------------

    def _enqueue(self, peer: bytes, owner: str, msg: Message) -> None:
        sid = msg.get("session")
        if sid is not None:
            # Raises unknown_session (why it is gone, to its owner only).
            rec = self.sessions.check(sid, msg.get("token"), owner if self.curve else None)
            if msg.type == "drag":
                self._check_drag(msg, rec)
        nbytes = sum(img.nbytes for img in msg.images.values())
        with self._lock:
            if len(self._queue) >= self.limits.max_queue:
                raise ProtocolError(ErrorCode.BUSY, "the daemon already has %d jobs waiting; "
                                    "try again when one has finished" % len(self._queue),
                                    {"queued": len(self._queue)})
            queued_bytes = sum(img.nbytes for j in self._queue for img in j.msg.images.values())
            if self._queue and queued_bytes + nbytes > self.config.max_queued_bytes:
                raise ProtocolError(ErrorCode.BUSY, "the daemon already holds %d MiB of "
                                    "queued layers; try again when a job has finished"
                                    % (queued_bytes >> 20), {"queued": len(self._queue)})
            job = Job(peer, msg, sid, owner)
            self._queue.append(job)
            self._jobs[job.id] = job
            position = len(self._queue) - 1 + (1 if self._running is not None else 0)
            self._cv.notify()
        log.info(kv("queued", job=job.id, type=msg.type, id=msg.id, peer=peer_id(peer),
                    session=sid, position=position))
        self._send(peer, encode("queued", msg.id, {"job": job.id, "position": position}))

    @staticmethod
    def _check_drag(msg: Message, rec: Any) -> None:
        w, h = rec.width, rec.height
        for i, p in enumerate(msg["points"]):
            for which in ("handle", "target"):
                x, y = p[which]
                if not (0 <= x <= w and 0 <= y <= h):
                    raise ProtocolError(
                        ErrorCode.BAD_POINTS, "the %s of point %d (%.1f, %.1f) lies outside "
                        "the %dx%d layer; redraw it inside the layer" % (which, i + 1, x, y,
                                                                        w, h),
                        {"point": i, "which": which})
        mask = msg.images.get("mask")
        if mask is not None and (mask.width, mask.height) != (w, h):
            raise ProtocolError(ErrorCode.BAD_PIXELS, "the mask is %dx%d but the layer is "
                                "%dx%d; the mask must cover the whole layer"
                                % (mask.width, mask.height, w, h))

    # -- worker thread -------------------------------------------------------

    def _worker_main(self) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 0)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(self._inproc)
        try:
            while True:
                with self._cv:
                    if not self._queue and not self._worker_exit:
                        self._cv.wait(0.5)
                    if not self._queue:
                        if self._worker_exit:
                            break
                        job = None
                    else:
                        job = self._queue.popleft()
                        job.state = "running"
                        job.started = time.monotonic()
                        self._running = job
                if job is None:                 # idle: expire sessions, free gone clients'
                    try:
                        self._dispatcher.housekeeping()
                    except Exception:
                        log.exception(kv("housekeeping_failed"))
                    continue
                try:
                    self._run(push, job)
                except Exception:
                    log.exception(kv("worker_error", job=job.id))
                finally:
                    with self._lock:
                        self._running = None
                        self._jobs.pop(job.id, None)
                    job.msg = None  # type: ignore[assignment]   # free the frames now
        finally:
            push.close()

    def _run(self, push: "zmq.Socket", job: Job) -> None:
        def send(parts: List[Any]) -> None:
            push.send_multipart([job.peer] + parts, copy=False)

        def progress(event: Any, frames: Optional[Dict[str, Image]] = None) -> None:
            if job.token.reason == "client_gone":
                return
            try:
                f, imgs = split_images(plain(dict(event)))
                if frames:
                    imgs.update(frames)
                extra = set(f) - PROGRESS_FIELDS
                for k in extra:
                    f.pop(k)
                f["job"] = job.id
                f = check_event("progress", f, imgs)
                job.step = f.get("step")
                send(encode("progress", job.request_id, f, imgs))
            except Exception as e:
                log.warning(kv("bad_progress_event", job=job.id, why=e))

        log.info(kv("job_start", job=job.id, type=job.type, session=job.session,
                    waited_s=job.started - job.created))
        err: Optional[ProtocolError] = None
        parts: Optional[List[Any]] = None
        try:
            job.token.check()
            fields, images = self._dispatcher.run(job, progress)
            check_result(job.type, fields, images)
            parts = encode("result", job.request_id, fields, images, request_type=job.type)
        except Cancelled:
            err = ProtocolError(ErrorCode.CANCELLED, "the %s job was cancelled" % job.type)
        except ProtocolError as e:
            err = e
            if e.code == ErrorCode.INTERNAL:
                log.error(kv("bad_backend_result", job=job.id, type=job.type, why=e.message))
        except Exception as e:
            if is_oom(e):
                err = ProtocolError(ErrorCode.OUT_OF_MEMORY)
                log.error(kv("out_of_memory", job=job.id, type=job.type, error=e))
            else:
                log.exception(kv("job_failed", job=job.id, type=job.type))
                err = ProtocolError(ErrorCode.INTERNAL, "the daemon hit an internal error "
                                    "(%s: %s) in %s; see the daemon log"
                                    % (type(e).__name__, str(e)[:200], job.type))
        if job.token.reason == "shutdown":
            err, parts = ProtocolError(ErrorCode.SHUTTING_DOWN), None
        seconds = time.monotonic() - job.started
        if err is not None:
            log.info(kv("job_error", job=job.id, type=job.type, code=err.code,
                        seconds=seconds))
            if job.token.reason != "client_gone":
                send(encode_error(job.request_id, err, job.id))
        else:
            log.info(kv("job_done", job=job.id, type=job.type, seconds=seconds,
                        cancelled=job.token.cancelled or None))
            if job.token.reason != "client_gone":
                send(parts)  # type: ignore[arg-type]

    def _queued_sessions(self) -> Set[str]:
        with self._lock:
            return {j.session for j in self._queue if j.session}

    # -- shutdown ------------------------------------------------------------

    def _shutdown(self, router: "zmq.Socket", pull: "zmq.Socket", poller: "zmq.Poller"
                  ) -> None:
        log.info(kv("shutdown_begin"))
        with self._cv:
            queued = list(self._queue)
            self._queue.clear()
            for j in queued:
                self._jobs.pop(j.id, None)
            running = self._running
            if running is not None:
                running.token.cancel("shutdown")
            self._worker_exit = True
            self._cv.notify_all()
        for j in queued:
            self._error(j.peer, j.request_id, ProtocolError(ErrorCode.SHUTTING_DOWN), j.id)
        deadline = time.monotonic() + self.config.shutdown_timeout
        worker = self._worker
        while worker is not None and worker.is_alive() and time.monotonic() < deadline:
            try:
                ready = dict(poller.poll(50))
            except zmq.ZMQError:
                break
            if pull in ready:
                self._forward(pull, 256)
            if router in ready:
                self._serve(router, 64)      # every request now gets shutting_down
        worker_done = worker is None or not worker.is_alive()
        if worker_done:
            self._forward(pull, 10000)
        else:
            log.warning(kv("worker_stuck", timeout_s=self.config.shutdown_timeout))
        pull.close(0)
        self._router = None
        router.close(linger=500)
        if self._auth is not None:
            try:
                self._auth.stop()
            except Exception:
                log.exception(kv("auth_stop_failed"))
        if worker_done:
            try:
                self.backend.close()
            except Exception:
                log.exception(kv("backend_close_failed"))
            if self._own_ctx:
                self._ctx.term()
        log.info(kv("stopped", endpoint=self.endpoint))
        self._stopped.set()


def serve(backend: Backend, config: Optional[ServerConfig] = None, *,
          handle_signals: bool = True) -> Server:
    """Run a daemon in the foreground until SIGTERM/SIGINT (what ``dragd serve`` does).
    Returns the stopped server."""
    srv = Server(backend, config).start()
    if handle_signals and threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, frame: Any) -> None:
            log.info(kv("signal", signum=signum))
            # stop() joins threads: run it off the signal handler.
            threading.Thread(target=srv.stop, name="dragd-stop", daemon=True).start()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    srv.serve_forever()
    return srv
