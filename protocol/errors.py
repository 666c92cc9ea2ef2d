"""Error codes, the sentence each one shows a user, and the exception that carries them.

Validation never raises anything but :class:`ProtocolError`; the daemon sends it as a
value (an ``error`` reply), never as a traceback.
"""
from __future__ import annotations

from typing import Any, Dict, Optional


class ErrorCode:
    BAD_MESSAGE = "bad_message"
    VERSION_MISMATCH = "version_mismatch"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_FIELD = "unknown_field"
    BAD_VALUE = "bad_value"
    BAD_POINTS = "bad_points"
    BAD_PIXELS = "bad_pixels"
    TOO_LARGE = "too_large"
    UNKNOWN_SESSION = "unknown_session"
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_MODEL = "unknown_model"
    NO_MODEL = "no_model"
    BAD_STATE = "bad_state"
    BUSY = "busy"
    CANCELLED = "cancelled"
    MODEL_ERROR = "model_error"
    OUT_OF_MEMORY = "out_of_memory"
    INTERNAL = "internal"
    SHUTTING_DOWN = "shutting_down"
    # Raised on the client side only (never sent by the daemon):
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"


ERROR_SENTENCES: Dict[str, str] = {
    "bad_message": "The daemon could not read this request; update the plug-in and "
                   "the daemon to the same dragd release.",
    "version_mismatch": "The plug-in and the daemon speak different dragd protocol "
                        "versions; update both to the same dragd release.",
    "unknown_type": "The daemon does not know this request; update the plug-in and "
                    "the daemon to the same dragd release.",
    "unknown_field": "The request has a field the daemon does not know; update the "
                     "plug-in and the daemon to the same dragd release.",
    "bad_value": "A setting of the request is out of range; check the values and "
                 "try again.",
    "bad_points": "A handle or target point is invalid or lies outside the layer; "
                  "redraw the points and try again.",
    "bad_pixels": "The pixel data does not match its declared size; try again, and "
                  "report a bug if it keeps happening.",
    "too_large": "The request is larger than the daemon allows; use a smaller layer, "
                 "a region of interest, or fewer points.",
    "unknown_session": "The daemon no longer has this editing session; open the "
                       "layer again.",
    "unknown_job": "The job is neither queued nor running (it may have finished "
                   "already); wait for its result, or start it again.",
    "unknown_model": "The daemon has no model of that name; see the known models and "
                     "which are downloaded with: dragd models list.",
    "no_model": "No model is loaded; start the daemon with one: dragd serve --model NAME.",
    "bad_state": "That is not possible in the session's current state (e.g. there is "
                 "nothing to undo); run a drag first, or open the layer again.",
    "busy": "The daemon is busy with other jobs; try again in a moment.",
    "cancelled": "The job was cancelled; run it again to get its result.",
    "model_error": "The model failed; see the daemon log for details.",
    "out_of_memory": "The daemon ran out of memory; close other sessions, use a "
                     "smaller layer or region of interest, and try again.",
    "internal": "The daemon hit an internal error; see the daemon log and report "
                "a bug.",
    "shutting_down": "The daemon is shutting down; start it again with: dragd serve.",
    "unavailable": "The dragd daemon is not reachable; start it with: dragd serve.",
    "timeout": "The daemon did not finish the job in time; try again with fewer steps "
               "or a smaller layer or region of interest.",
}

# Derived from the class, not from the sentences, so a code without a sentence is caught
# (tests/test_protocol.py) instead of silently not existing.
ERROR_CODES = frozenset(v for k, v in vars(ErrorCode).items() if k.isupper())


class ProtocolError(Exception):
    """A protocol-level failure with a stable ``code`` and a user-facing sentence."""

    def __init__(self, code: str, message: Optional[str] = None,
                 details: Optional[Dict[str, Any]] = None):
        if code not in ERROR_CODES:
            code = ErrorCode.INTERNAL
        self.code = code
        self.message = message or ERROR_SENTENCES[code]
        self.details = dict(details) if details else {}
        super().__init__(self.message)

    def __repr__(self) -> str:
        return "%s(%r, %r)" % (type(self).__name__, self.code, self.message)

    def fields(self) -> Dict[str, Any]:
        f: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            f["details"] = self.details
        return f

