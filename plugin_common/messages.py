"""What both plug-ins tell the user about a run, worded once.

Every sentence names what went wrong and what to do about it; none carries a traceback.
Pure Python (no zmq): the hosts' run modules use these before the protocol is importable,
e.g. to say that it is not.
"""
from __future__ import annotations

import sys
from typing import Sequence

from .settings import ALIGN_SWITCH, DEFAULT_ENDPOINT, START_COMMAND

#: The end of a run that changed nothing (the host puts it in its own words: see
#: :meth:`~.jobs.BaseJobModel.line`).
CANCELLED = "cancelled; the layer was not changed"

#: More arrows than the daemon takes: % (arrows, most); each host names its arrows.
TOO_MANY_POINTS = "There are %d drag points; the daemon takes at most %d."

WRONG_SIZE = ("The daemon returned an image of the wrong size; update the daemon and the "
              "plug-in to the same dragd release.")


def bad_address(endpoint: str, err: BaseException) -> str:
    return ("Cannot use the daemon address %r (%s). It should look like %s."
            % (endpoint, err, DEFAULT_ENDPOINT))


def not_answering(endpoint: str, seconds: float, hint: str = "") -> str:
    """The daemon accepted no hello within ``seconds`` (``hint``: how to set up keys for a
    remote one)."""
    return ("The dragd daemon at %s did not answer within %.0f s; start it with: %s.%s"
            % (endpoint, seconds, START_COMMAND, hint))


def not_reachable(endpoint: str) -> str:
    return "The dragd daemon is not reachable at %s; start it with: %s" % (endpoint,
                                                                          START_COMMAND)


def refused(detail: str) -> str:
    return "The dragd daemon refused the request: %s" % name_align_switch(detail)


#: How the daemon names the way out of a failed face alignment, for its command line too.
_DAEMON_ALIGN_OFF = "alignment off (`--align none`, or the plug-in's alignment switch)"


def name_align_switch(detail: str) -> str:
    """The daemon's sentence with "alignment off" naming the plug-in's switch as its UI
    calls it; the rest of the sentence, which says why and what else to do, unchanged."""
    ours = "alignment off (set %s to Off)" % ALIGN_SWITCH
    if _DAEMON_ALIGN_OFF in detail:
        return detail.replace(_DAEMON_ALIGN_OFF, ours)
    if "alignment off" in detail and ALIGN_SWITCH not in detail:
        return detail.replace("alignment off", ours, 1)
    return detail


def aligned(kind: str) -> str:
    """What the daemon's face alignment did (``kind``: open_session's info ``align``)."""
    return "face found, aligned (%s)" % kind.upper()


def stop_unanswered(grace: float) -> str:
    return "The daemon did not stop the drag within %.0f s of the stop request." % grace


def time_limit_while_inverting(limit: float) -> str:
    return ("The time limit of %d s ran out while the daemon was inverting the layer. Raise "
            "the time limit or choose a faster inversion quality." % limit)


def daemon_line(endpoint: str, device: str, models: Sequence[str], loaded: str) -> str:
    """One line about a daemon that answered (the settings dialog, the docker)."""
    return "Daemon at %s (%s): models %s; loaded: %s." % (
        endpoint, device or "?", ", ".join(models) or "none", loaded or "none")


def bug(err: BaseException, report: str = "") -> str:
    """An error the plug-in did not expect (``report``: where the details are)."""
    return ("The DragGAN plug-in failed (%s: %s). Please report this bug%s."
            % (type(err).__name__, err, report))


def missing_deps(host: str, err: ImportError, site_dir: str, doc: str) -> str:
    """pyzmq or msgpack cannot be imported in the host's Python."""
    what = err.name if getattr(err, "name", None) else "them (%s)" % err
    return ("The DragGAN plug-in needs the Python packages pyzmq and msgpack to reach the "
            "dragd daemon, and %s's Python (%d.%d) cannot import %s. Install them for the "
            "Python that %s runs: on Debian/Ubuntu 'sudo apt install python3-zmq "
            "python3-msgpack', on Fedora 'sudo dnf install python3-zmq python3-msgpack'; or "
            "put them (wheels matching that Python) into %s. See %s for Flatpak, AppImage, "
            "Windows and macOS."
            % (host, sys.version_info[0], sys.version_info[1], what, host, site_dir, doc))
