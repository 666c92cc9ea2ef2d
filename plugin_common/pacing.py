"""How often a run redraws the host's progress bar and preview layer.

The daemon reports every step (tens of times a second for a small model); redrawing the
host's widgets and layers that often would slow the host down more than the drag does.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Tuple

#: Seconds between two redraws of the progress bar (a new phase is shown at once).
PROGRESS_INTERVAL = 0.1
#: Seconds between two previews shown (the host's preview layer is rewritten each time).
PREVIEW_INTERVAL = 0.3


class Pacer:
    """Says what of a run's :class:`~.jobs.BaseJobModel` the host should draw now."""

    def __init__(self, model: Any, clock: Callable[[], float] = time.monotonic, *,
                 preview_interval: Optional[float] = None):
        self.model = model
        self.clock = clock
        # Read here, not as defaults, so that tests can set the module's values.
        self.progress_interval = PROGRESS_INTERVAL
        self.preview_interval = (PREVIEW_INTERVAL if preview_interval is None
                                 else preview_interval)
        self._shown: Optional[Tuple[float, str]] = None
        self._phase: Optional[str] = None
        self._progress_t = -1e9
        self._preview_t = -1e9

    def progress(self, force: bool = False) -> Optional[Tuple[float, str]]:
        """(fraction, text) when the bar should be redrawn, else None: when forced, at a
        new phase, or when it changed and the last redraw is long enough ago."""
        now = self.clock()
        frac, text = self.model.progress()
        shown = (round(frac, 3), text)
        new_phase = self.model.phase != self._phase
        if not (force or new_phase):
            if now - self._progress_t < self.progress_interval or shown == self._shown:
                return None
        self._shown, self._phase, self._progress_t = shown, self.model.phase, now
        return frac, text

    def preview(self) -> Any:
        """The newest preview when one should be shown, else None. None once the result
        is there: a preview must not reappear beside it."""
        m = self.model
        if not m.settings.live_preview or m.outcome is not None:
            return None
        now = self.clock()
        if now - self._preview_t < self.preview_interval:
            return None
        p = m.take_preview()
        if p is not None:
            self._preview_t = now
        return p
