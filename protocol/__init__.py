"""dragd wire protocol: message schema and the client (pure Python: pyzmq + msgpack).

Vendored into the GIMP and Krita plug-in folders; uses only relative imports.
"""
from .schema import (DEFAULT_LIMITS, ERROR_SENTENCES, PROTOCOL_VERSION, ErrorCode, Image,
                     Limits, Message, ProtocolError)
from .client import (DEFAULT_ENDPOINT, SESSION_LOST, Client, CurveConfig, DaemonUnavailable,
                     Event, Job, JobTimeout, RemoteError, Session)

__all__ = [
    "PROTOCOL_VERSION", "ErrorCode", "ERROR_SENTENCES", "ProtocolError", "Limits",
    "DEFAULT_LIMITS", "Image", "Message", "Client", "CurveConfig", "DaemonUnavailable",
    "Event", "Job", "JobTimeout", "RemoteError", "Session", "DEFAULT_ENDPOINT",
    "SESSION_LOST",
]
