"""dragd wire protocol: message tables, codec and the client (pure Python: pyzmq + msgpack).

Vendored into the GIMP and Krita plug-in folders; uses only relative imports.

errors    error codes, their sentences, ProtocolError
limits    the bounds a daemon enforces (Limits)
image     pixel frames (Image)
validate  field types the message tables are built from
messages  every message, its fields and frames; PROTOCOL_VERSION
codec     frames <-> Message: encode, parse, check
client    the client library (sockets, liveness, session recovery)
"""
from .errors import ERROR_CODES, ERROR_SENTENCES, ErrorCode, ProtocolError
from .limits import DEFAULT_LIMITS, Limits
from .image import Image
from .messages import (EVENTS, JOB_TYPES, PROGRESS_FIELDS, PROTOCOL_VERSION, REQUESTS,
                       RESULTS)
from .codec import (Message, check_event, check_result, encode, encode_error, parse_reply,
                    parse_request, split_images)
from .client import (DEFAULT_ENDPOINT, SESSION_LOST, Client, CurveConfig, DaemonRefused, DaemonUnavailable,
                     Event, Job, JobTimeout, RemoteError, Session)

__all__ = [
    "PROTOCOL_VERSION", "ErrorCode", "ERROR_CODES", "ERROR_SENTENCES", "ProtocolError",
    "Limits", "DEFAULT_LIMITS", "Image", "Message", "REQUESTS", "RESULTS", "EVENTS",
    "JOB_TYPES", "PROGRESS_FIELDS", "encode", "encode_error", "parse_request", "parse_reply",
    "check_result", "check_event", "split_images", "Client", "CurveConfig",
    "DaemonRefused", "DaemonUnavailable", "Event", "Job", "JobTimeout", "RemoteError", "Session",
    "DEFAULT_ENDPOINT", "SESSION_LOST",
]
