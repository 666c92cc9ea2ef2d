"""Starting a local daemon for the user, as krita-ai-diffusion manages its server: when no
daemon answers on the local default address and ``dragd`` is installed on this machine, the
live view offers to run ``dragd serve`` (detached: it outlives the host, which is what a
daemon that several views and both hosts share should do), its output in a known log file.

:func:`find_dragd` looks for the command, :func:`offer` says whether to offer it;
:class:`DaemonStart` starts it and, ticked from
the host's timer, asks it for ``hello`` until it answers (``state`` "ready"), exits
("failed", with the end of its log) or takes too long. A remote daemon stays the user's to
run: :func:`can_offer` is False for any other address.

Pure standard library, except that :class:`DaemonStart` probes with :class:`.task.DaemonProbe`
(and so needs pyzmq, as every run does).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, Callable, List, Optional, Sequence

from .settings import DEFAULT_ENDPOINT

#: Where ``find_dragd`` looks besides $PATH (the hosts often start with a short PATH): pip's
#: --user scripts, pipx's, and the virtualenv README.md's first command makes in a checkout.
EXTRA_PLACES = ("~/.local/bin", "~/.local/pipx/venvs/dragd/bin", "~/dragd/.venv/bin")
#: How long a started daemon may take to answer (importing torch, loading the model).
START_TIMEOUT = 90.0
#: Seconds between two hello probes of a daemon that is starting.
PROBE_INTERVAL = 1.0


def log_path() -> str:
    """The file the started daemon writes to: ~/.cache/dragd/serve.log ($XDG_CACHE_HOME,
    %LOCALAPPDATA% on Windows)."""
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "dragd", "serve.log")


def find_dragd(extra: Sequence[str] = EXTRA_PLACES) -> Optional[str]:
    """The ``dragd`` command: $DRAGD_COMMAND, else on $PATH, else in :data:`EXTRA_PLACES`;
    None when this machine has none."""
    env = os.environ.get("DRAGD_COMMAND")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("dragd")
    if found:
        return found
    name = "dragd.exe" if os.name == "nt" else "dragd"
    for place in extra:
        p = os.path.join(os.path.expanduser(place), name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def can_offer(endpoint: str) -> bool:
    """Only the local default address: a daemon elsewhere (or on another port, which the
    user chose) is the user's to run."""
    return endpoint.strip() == DEFAULT_ENDPOINT


def offer_text(command: str) -> str:
    return ("No dragd daemon answers at %s. Start one here (%s serve)? Its log goes to %s."
            % (DEFAULT_ENDPOINT, command, log_path()))


def offer(endpoint: str, unreachable: bool) -> Optional[str]:
    """What a live view offers when the daemon at ``endpoint`` could not be reached
    (``unreachable``): :func:`offer_text` when it is the local default address and dragd
    is installed here, else None (nothing to offer)."""
    if not unreachable or not can_offer(endpoint):
        return None
    command = find_dragd()
    return offer_text(command) if command is not None else None


class DaemonStart:
    """``dragd serve`` started by the plug-in: :meth:`start`, then :meth:`tick` until
    ``state`` is "ready" or "failed" (``message`` says what happened, with the log's
    path). ``args`` are what follows the command (tests pass their own model and
    address)."""

    def __init__(self, command: str, endpoint: str = DEFAULT_ENDPOINT,
                 args: Sequence[str] = ("serve",), *, log: Optional[str] = None,
                 probe_factory: Optional[Callable[[str], Any]] = None,
                 clock: Callable[[], float] = time.monotonic,
                 timeout: float = START_TIMEOUT):
        self.command = command
        self.endpoint = endpoint
        self.args: List[str] = list(args)
        self.log = log or log_path()
        self.probe_factory = probe_factory or _probe
        self.clock = clock
        self.timeout = float(timeout)
        self.state = "new"
        self.message = ""
        self.proc: Optional[subprocess.Popen] = None
        self._probe: Any = None
        self._probe_at = 0.0
        self._deadline = 0.0

    def start(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.log), exist_ok=True)
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    [self.command, *self.args], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, close_fds=True, **_detached())
        except OSError as e:
            self._end("failed", "Could not start %s serve (%s)." % (self.command, e))
            return
        self.state = "starting"
        self.message = "Starting the dragd daemon (log: %s)\u2026" % self.log
        self._deadline = self.clock() + self.timeout

    def tick(self) -> bool:
        """Advance without waiting; True while the daemon is still starting."""
        if self.state != "starting":
            return False
        if self.proc is not None and self.proc.poll() is not None:
            self._end("failed", "The daemon exited with status %s before it answered; its "
                      "log, %s, says why:\n%s" % (self.proc.returncode, self.log,
                                                  self.log_tail()))
            return False
        if self._probe is not None:
            if not self._probe.tick(0):
                ok = self._probe.error is None
                self._probe = None
                if ok:
                    self._end("ready", "Started the daemon (process %d; log: %s)."
                              % (self.proc.pid if self.proc else 0, self.log))
                    return False
        now = self.clock()
        if now > self._deadline:
            self._end("failed", "The daemon did not answer within %.0f s; its log is %s."
                      % (self.timeout, self.log))
            return False
        if self._probe is None and now - self._probe_at >= PROBE_INTERVAL:
            self._probe_at = now
            self._probe = self.probe_factory(self.endpoint)
            self._probe.start()
        return True

    def log_tail(self, limit: int = 1500) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def _end(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        self._probe = None


def _probe(endpoint: str) -> Any:
    from .task import DaemonProbe

    return DaemonProbe(endpoint, client_name="dragd-plugin", timeout=0.8)


def _detached() -> dict:
    """Popen arguments that let the daemon outlive the host (its own session or process
    group: closing Krita or GIMP does not take it down)."""
    if os.name == "nt":
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(
            subprocess, "DETACHED_PROCESS", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


__all__ = ["DaemonStart", "can_offer", "find_dragd", "log_path", "offer", "offer_text"]
