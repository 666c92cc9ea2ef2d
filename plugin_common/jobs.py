"""The job model: the state of one run (connect, invert, drag, close), driven by protocol
events. Both hosts share the transitions, the event handling and the progress maths; each
words its status line through a few class attributes and :meth:`BaseJobModel.line` (GIMP
puts "DragGAN: " before it, Krita capitalises it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .geometry import Arrow
from .messages import CANCELLED, TOO_MANY_POINTS, aligned

# Where each stage of opening a session starts and ends on the opening part of the bar.
OPEN_STAGES = {"load": (0.0, 0.0), "invert": (0.0, 0.5), "tune": (0.5, 1.0)}
OPEN_WEIGHT = 0.4            # share of the progress bar taken by opening (inversion)
OPEN_STAGE_NUMBER = {"invert": 1, "tune": 2}


@dataclass
class Outcome:
    image: Any                       # protocol Image: the edited layer
    steps: int
    stop: str
    distance: Optional[float]
    handles: List[List[float]] = field(default_factory=list)
    #: How well the model reproduced the region before the drag (PSNR, dB; None when the
    #: daemon did not say), and whether the run continued an earlier edit instead.
    psnr: Optional[float] = None
    continued: bool = False
    #: The daemon's sentence when it judged the picture outside the model's domain (its
    #: domain check); None when it judged it fine or did not judge.
    poor_domain: Optional[str] = None
    #: Whether the daemon judged the domain at all: when it did, its verdict replaces the
    #: plug-in's own PSNR rule (POOR_PSNR), which stays for daemons that do not judge.
    domain_judged: bool = False
    #: The face alignment the daemon applied (open_session's info ``align``, e.g. "ffhq");
    #: None when it applied none.
    aligned: Optional[str] = None

    def summary(self) -> str:
        """'converged after 5 steps, 0.8 px from the targets; inversion 24.1 dB', with what
        to do after a stall or a poor inversion."""
        text = "%s after %d step%s" % (STOP_WORDS.get(self.stop, self.stop.replace("_", " ")),
                                       self.steps, "" if self.steps == 1 else "s")
        if self.distance is not None:
            text += ", %.1f px from the targets" % self.distance
        if self.stop == "stalled":
            text += (" (the handles stopped following: put them on detailed areas, "
                     "or drag a shorter way and continue)")
        if self.continued:
            text += "; continued the earlier edit"
        elif self.psnr is not None:
            text += "; inversion %.1f dB" % self.psnr
            if self.poor_domain:
                text += " (%s)" % self.poor_domain
            elif not self.domain_judged and self.psnr < POOR_PSNR:
                text += (" (too poor to edit well: the model hardly reproduces this region; "
                         "select just the part to move, or use a model made for such images)")
        if self.aligned:
            text += "; " + aligned(self.aligned)
        return text


#: Below this reconstruction PSNR (dB) the edit shows the model more than the image (said
#: when the daemon gives no domain verdict of its own).
POOR_PSNR = 18.0
STOP_WORDS = {"max_steps": "step limit reached", "cancelled": "stopped"}


def poor_domain(fields: Dict[str, Any]) -> Optional[str]:
    """The daemon's sentence when its domain check found the picture poor, else None."""
    d = (fields.get("info") or {}).get("domain")
    if isinstance(d, dict) and d.get("verdict") == "poor":
        return str(d.get("message") or "the model cannot represent this picture well")
    return None


def domain_judged(fields: Dict[str, Any]) -> bool:
    """Whether open_session's reply carries the daemon's domain verdict."""
    d = (fields.get("info") or {}).get("domain")
    return isinstance(d, dict) and d.get("verdict") in ("good", "poor")


def alignment(fields: Dict[str, Any]) -> Optional[str]:
    """The face alignment open_session applied ("ffhq"), None when none."""
    a = (fields.get("info") or {}).get("align")
    return str(a) if a and a != "none" else None


def inversion_psnr(fields: Dict[str, Any]) -> Optional[float]:
    """The reconstruction PSNR open_session reported (after tuning, else of the pivot)."""
    info = fields.get("info") or {}
    for phase in ("tuning", "pivot"):
        d = info.get(phase)
        if isinstance(d, dict) and isinstance(d.get("psnr"), (int, float)):
            return float(d["psnr"])
    return None


class BaseJobModel:
    """State of one run: ``phase`` goes connecting -> opening -> dragging -> closing ->
    done, or ends failed / cancelled. Fed with protocol events (:meth:`on_event`);
    :meth:`progress` gives the bar and the status line, :meth:`take_preview` the latest
    preview, :meth:`end_text` what to tell the user at the end.

    Subclasses word the status line: :attr:`ITEM` (what one arrow is called),
    :attr:`STAGE_TEXT`, :attr:`DRAG_TEXT`, :attr:`DONE_TEXT`, :meth:`queued_text` and
    :meth:`line`; and the hello check's sentences: :attr:`TOO_MANY_POINTS` and what to
    scale down when the layer is too large (:attr:`SCALE_WHAT`)."""

    TERMINAL = ("done", "failed", "cancelled")
    ITEM = "drag point"
    STAGE_TEXT = {"load": "loading the model", "invert": "inverting", "tune": "tuning",
                  "drag": "dragging", "undo": "undoing"}
    DRAG_TEXT = "step %d/%d"          # % (step, total)
    DONE_TEXT = "%s"                  # % the outcome's summary
    TOO_MANY_POINTS = TOO_MANY_POINTS
    SCALE_WHAT = "layer"

    def __init__(self, settings: Any, arrows: Sequence[Arrow]):
        self.settings = settings
        self.arrows = list(arrows)
        self.phase = "connecting"
        self.stage: Optional[str] = None
        self.step = 0
        self.total: Optional[int] = None
        self.distance: Optional[float] = None
        self.first_distance: Optional[float] = None
        self.handles: List[List[float]] = [list(a.handle) for a in self.arrows]
        self.message: Optional[str] = None
        self.notice: Optional[str] = None
        self.daemon: Dict[str, Any] = {}
        self.session_info: Dict[str, Any] = {}
        self.stop_requested: Optional[str] = None    # None | "keep" | "discard"
        self.stop_reason: Optional[str] = None
        self.outcome: Optional[Outcome] = None
        self.error: Optional[str] = None
        self._preview: Any = None
        self.previews_seen = 0

    @property
    def finished(self) -> bool:
        return self.phase in self.TERMINAL

    # -- transitions ------------------------------------------------------

    def connected(self, hello: Dict[str, Any]) -> None:
        self.daemon = dict(hello)
        self.phase = "opening"
        self.stage, self.step, self.total = None, 0, None

    def opened(self, fields: Dict[str, Any]) -> None:
        self.session_info = dict(fields)
        self.phase = "dragging"
        self.stage, self.step, self.total = "drag", 0, int(self.settings.max_steps)

    def dragged(self, outcome: Outcome) -> None:
        """The drag's result arrived; the session is being closed."""
        self.outcome = outcome
        self.phase = "closing"
        self.step = outcome.steps
        if outcome.distance is not None:
            self.distance = outcome.distance

    def closed(self) -> None:
        if self.outcome is None:
            raise RuntimeError("closed() before the drag finished")
        self.phase = "done"

    def failed(self, message: str) -> None:
        self.error = message
        self.phase = "failed"

    def cancelled(self, message: str = CANCELLED) -> None:
        self.error = message
        self.phase = "cancelled"

    def request_stop(self, how: str, why: str = "stopped") -> bool:
        """Ask to stop: "keep" keeps the drag so far, "discard" drops it. Returns True
        the first time (when a cancel must be sent)."""
        if how not in ("keep", "discard"):
            raise ValueError(how)
        first = self.stop_requested is None
        if first or how == "discard":
            self.stop_requested = how
        if first:
            self.stop_reason = why
        return first

    # -- events -----------------------------------------------------------

    def queued_text(self, fields: Dict[str, Any]) -> str:
        return ("waiting for the daemon (position %d in its queue)"
                % fields.get("position", 0))

    def on_event(self, kind: str, fields: Dict[str, Any], images: Dict[str, Any]) -> None:
        if kind == "queued":
            self.stage = "queued"
            self.message = self.queued_text(fields)
        elif kind == "notice":
            self.notice = str(fields.get("message", ""))
        elif kind == "progress":
            self.stage = str(fields.get("stage") or self.stage or "")
            self.step = int(fields.get("step", self.step))
            total = fields.get("total")
            self.total = int(total) if total is not None else self.total
            self.message = fields.get("message") or None
            if fields.get("handles"):
                self.handles = [list(h) for h in fields["handles"]]
            d = fields.get("distance")
            if isinstance(d, (int, float)) and math.isfinite(d):
                self.distance = float(d)
                if self.first_distance is None:
                    self.first_distance = self.distance
            prev = images.get("preview") if images else None
            if prev is not None:
                self._preview = prev
                self.previews_seen += 1

    def take_preview(self) -> Any:
        p, self._preview = self._preview, None
        return p

    # -- display ----------------------------------------------------------

    def stage_fraction(self) -> float:
        """How far the current stage is, 0..1 (0 while its length is unknown)."""
        if not self.total:
            return 0.0
        return min(1.0, max(0.0, (self.step + 1) / float(self.total)))

    def open_fraction(self) -> float:
        """How far opening (load, invert, tune) is, 0..1."""
        if self.stage in OPEN_STAGES:
            lo, hi = OPEN_STAGES[self.stage]
            return lo + (hi - lo) * self.stage_fraction()
        return 0.0

    def fraction(self) -> float:
        """The progress bar, 0..1: opening takes the first OPEN_WEIGHT of it, the drag the
        rest; the drag is as far as its steps or, when further, as the handles have come
        towards their targets."""
        if self.phase == "opening":
            return OPEN_WEIGHT * self.open_fraction()
        if self.phase == "dragging":
            f = self.stage_fraction()
            if self.first_distance and self.distance is not None:
                f = max(f, 1.0 - self.distance / self.first_distance)
            return OPEN_WEIGHT + (1.0 - OPEN_WEIGHT) * min(1.0, max(0.0, f))
        return 1.0 if self.phase in ("closing", "done") else 0.0

    def status(self) -> str:
        """The status line before the host's :meth:`line` words it."""
        stopping = " (stopping)" if self.stop_requested else ""
        if self.phase == "connecting":
            return "connecting to %s" % self.settings.endpoint
        if self.phase == "opening":
            if self.stage == "queued" and self.message:
                return self.message + stopping
            text = self.STAGE_TEXT.get(self.stage or "", "opening the layer")
            if self.total:
                text += " %d/%d" % (min(self.step + 1, self.total), self.total)
            if self.stage in OPEN_STAGE_NUMBER:
                # The bar counts both stages and the drag: say which part this count is.
                text += ", part %d of 2" % OPEN_STAGE_NUMBER[self.stage]
            return text + stopping
        if self.phase == "dragging":
            text = self.DRAG_TEXT % (self.step, self.total or self.settings.max_steps)
            if self.distance is not None:
                text += ", %.1f px to go" % self.distance
            return text + self.opened_words() + stopping
        if self.phase in ("closing", "done"):
            return self.DONE_TEXT % self.outcome.summary() if self.outcome else "done"
        if self.phase == "cancelled":
            return self.error or CANCELLED
        return "error: %s" % (self.error or "failed")

    def opened_words(self) -> str:
        """What opening found, said while the drag runs so the user need not wait for it:
        the face alignment applied, and the daemon's sentence when the picture is outside
        the model's domain."""
        text = ""
        kind = alignment(self.session_info)
        if kind:
            text += "; " + aligned(kind)
        poor = poor_domain(self.session_info)
        if poor:
            text += " (%s)" % poor
        return text

    def line(self, text: str) -> str:
        """``text`` as the host shows it."""
        return text

    def progress(self) -> Tuple[float, str]:
        """(fraction 0..1, status line) for the host's progress bar."""
        return self.fraction(), self.line(self.status())

    def end_text(self) -> str:
        """What to tell the user once the run is over: the outcome, the cancellation or
        the error (whose sentence is shown as it is)."""
        if self.phase == "failed":
            return self.error or "failed"
        if self.phase == "cancelled":
            return self.line(self.error or CANCELLED) + "."
        return self.line(self.status())

    def summary(self) -> str:
        n = len(self.arrows)
        return "%d %s%s" % (n, self.ITEM, "" if n == 1 else "s")
