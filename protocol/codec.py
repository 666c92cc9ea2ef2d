"""Frames to messages and back: encoding, decoding and validating whole messages.

A message is a list of frames: the msgpack header, then the raw pixel buffers in the
order of the header's ``frames`` descriptors, each exactly ``width * height * channels``
bytes. Pixel buffers pass through as zero-copy buffers, never inside msgpack.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import msgpack

from .errors import ErrorCode, ProtocolError
from .image import Image, buffer_nbytes
from .limits import DEFAULT_LIMITS, Limits
from .messages import (ENVELOPE, EVENTS, FINAL_TYPES, FRAME_DESC, MAX_ERROR_CHARS,
                       MAX_ID_LEN, PROTOCOL_VERSION, REQUESTS, RESULTS, FrameSpec)
from .validate import check_fields, shown


class Message:
    """A decoded message: ``type``, ``id``, ``fields`` (header minus envelope) and
    ``images`` (name -> :class:`Image`, data are zero-copy buffers of the frames).
    For ``result`` messages ``request_type`` names the request it answers."""

    __slots__ = ("type", "id", "fields", "images", "request_type")

    def __init__(self, type: str, id: Optional[str], fields: Dict[str, Any],
                 images: Optional[Dict[str, Image]] = None,
                 request_type: Optional[str] = None):
        self.type, self.id, self.fields = type, id, fields
        self.images = images or {}
        self.request_type = request_type

    def __getitem__(self, k: str) -> Any:
        return self.fields[k]

    def get(self, k: str, default: Any = None) -> Any:
        return self.fields.get(k, default)

    @property
    def image(self) -> Optional[Image]:
        return self.images.get("image")

    @property
    def final(self) -> bool:
        return self.type in FINAL_TYPES

    def __repr__(self) -> str:
        return "Message(%s id=%r %r %r)" % (self.type, self.id, self.fields, self.images)


def pack_header(header: Dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def encode(type: str, id: Optional[str], fields: Optional[Dict[str, Any]] = None,
           images: Optional[Dict[str, Image]] = None,
           request_type: Optional[str] = None) -> List[Any]:
    """Build the frames of a message: [header, *pixel buffers]."""
    header: Dict[str, Any] = {"v": PROTOCOL_VERSION, "id": id, "type": type}
    if request_type is not None:
        header["for"] = request_type
    if fields:
        for k, v in fields.items():
            if k in ENVELOPE:
                raise ValueError("field name %r is reserved" % k)
            header[k] = v
    parts: List[Any] = [b""]
    if images:
        descs = []
        for name, img in images.items():
            n = buffer_nbytes(img.data)
            if n != img.nbytes:
                raise ProtocolError(ErrorCode.BAD_PIXELS, "image %r holds %d bytes, but "
                                    "%dx%dx%d needs %d" % (name, n, img.width, img.height,
                                                           img.channels, img.nbytes))
            descs.append(img.descriptor(name))
            parts.append(img.data)
        header["frames"] = descs
    parts[0] = pack_header(header)
    return parts


def error_fields(err: ProtocolError, job: Optional[str] = None) -> Dict[str, Any]:
    f = err.fields()
    # Within the error event's bound, so a client can always read why it was refused.
    f["message"] = f["message"][:MAX_ERROR_CHARS]
    if job is not None:
        f["job"] = job
    return f


def encode_error(id: Optional[str], err: ProtocolError, job: Optional[str] = None) -> List[Any]:
    return encode("error", id, error_fields(err, job))


def unpack_header(raw: Any, limits: Limits = DEFAULT_LIMITS) -> Dict[str, Any]:
    n = buffer_nbytes(raw)
    if n > limits.max_header_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, "the message header is %d bytes; at most %d "
                            "are allowed" % (n, limits.max_header_bytes))
    try:
        h = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the message header is not valid "
                            "msgpack (%s); update the plug-in and the daemon to the same "
                            "dragd release" % type(e).__name__)
    if not isinstance(h, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the message header must be a msgpack map")
    return h


def peek_id(h: Any) -> Optional[str]:
    """The request id of a (possibly invalid) header, if it is a usable one."""
    if isinstance(h, dict):
        rid = h.get("id")
        if isinstance(rid, str) and 1 <= len(rid) <= MAX_ID_LEN:
            return rid
    return None


def _check_version(h: Dict[str, Any]) -> None:
    if "v" not in h:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the message has no protocol version "
                            "('v'); update the plug-in and the daemon to the same release")
    v = h["v"]
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.VERSION_MISMATCH,
                            "this message speaks dragd protocol v%s but v%d is expected; "
                            "update the plug-in and the daemon to the same dragd release"
                            % (v if type(v) is int else shown(v, 20), PROTOCOL_VERSION),
                            {"expected": PROTOCOL_VERSION,
                             "got": v if isinstance(v, int) and not isinstance(v, bool)
                             else None})


def _decode_frames(h: Dict[str, Any], parts: Sequence[Any], specs: Dict[str, FrameSpec],
                   where: str, limits: Limits) -> Dict[str, Image]:
    descs = h.get("frames", [])
    if not isinstance(descs, list):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "%s.frames: expected a list" % where)
    if len(descs) > limits.max_frames:
        raise ProtocolError(ErrorCode.TOO_LARGE, "%s: %d pixel frames declared, at most %d"
                            % (where, len(descs), limits.max_frames))
    images: Dict[str, Image] = {}
    for i, d in enumerate(descs):
        w = "%s.frames[%d]" % (where, i)
        d = FRAME_DESC.check(d, w, limits)
        name = d["name"]
        if name not in specs:
            raise ProtocolError(ErrorCode.UNKNOWN_FIELD, "%s: %s does not take a pixel frame "
                                "named %r" % (w, where, name[:32]), {"field": w})
        if name in images:
            raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: pixel frame %r declared twice"
                                % (w, name))
        width, height, ch = d["width"], d["height"], d["channels"]
        if ch not in specs[name].channels:
            raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: %r must have %s channel(s), not %d"
                                % (w, name, " or ".join(map(str, specs[name].channels)), ch),
                                {"field": w})
        if width < 1 or height < 1:
            raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: %r is %dx%d; an image needs at "
                                "least one pixel" % (w, name, width, height), {"field": w})
        if width > limits.max_side or height > limits.max_side \
                or width * height > limits.max_pixels:
            raise ProtocolError(ErrorCode.TOO_LARGE,
                                "%s: %r is %dx%d; the daemon accepts at most %d pixels a side "
                                "and %d pixels in all; use a region of interest or scale the "
                                "layer down" % (w, name, width, height, limits.max_side,
                                                limits.max_pixels),
                                {"field": w, "max_side": limits.max_side,
                                 "max_pixels": limits.max_pixels})
        images[name] = Image(None, width, height, ch)
    if len(parts) - 1 != len(descs):
        raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: the header declares %d pixel frame(s) "
                            "but %d arrived" % (where, len(descs), len(parts) - 1))
    for (name, img), part in zip(images.items(), parts[1:]):
        n = buffer_nbytes(part)
        if n != img.nbytes:
            raise ProtocolError(ErrorCode.BAD_PIXELS,
                                "%s: pixel frame %r holds %d bytes but %dx%dx%d needs %d"
                                % (where, name, n, img.width, img.height, img.channels,
                                   img.nbytes), {"frame": name})
        img.data = part
    for name, fs in specs.items():
        if fs.required and name not in images:
            raise ProtocolError(ErrorCode.BAD_PIXELS, "%s: the %r pixel frame is missing"
                                % (where, name), {"frame": name})
    return images


def parse_request(parts: Sequence[Any], limits: Limits = DEFAULT_LIMITS,
                  arrived: Optional[int] = None) -> Message:
    """Validate a request (list of frames: header + pixel buffers). Raises ProtocolError;
    ``err.details['id']`` is the request id when one could be read. ``arrived``: how many
    frames came, where the caller kept only the first of a message with too many."""
    if not parts:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty message")
    rid = None
    n = len(parts) if arrived is None else arrived
    try:
        if n > 1 + limits.max_frames:
            raise ProtocolError(ErrorCode.TOO_LARGE, "the message has %d frames; at most %d "
                                "are allowed" % (n, 1 + limits.max_frames))
        h = unpack_header(parts[0], limits)
        rid = peek_id(h)
        _check_version(h)
        t = h.get("type")
        if not isinstance(t, str):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "the message has no 'type'")
        spec = REQUESTS.get(t)
        if spec is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "unknown request type %s; update the "
                                "plug-in and the daemon to the same dragd release" % shown(t))
        if rid is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "%s: 'id' must be a string of 1 to %d "
                                "characters" % (t, MAX_ID_LEN))
        body = {k: v for k, v in h.items() if k not in ("v", "id", "type", "frames")}
        fields = check_fields(body, spec.fields, t, limits)
        images = _decode_frames(h, parts, spec.frames, t, limits)
        m = Message(t, rid, fields, images)
        if spec.check is not None:
            spec.check(m, limits)
        return m
    except ProtocolError as e:
        if rid is not None:
            e.details.setdefault("id", rid)
        raise


def parse_reply(parts: Sequence[Any], request_type: Optional[str] = None,
                limits: Optional[Limits] = None) -> Message:
    """Validate a reply or event from the daemon. ``request_type`` is the type of the
    request it answers (needed to check a ``result``; taken from the header's ``for``
    when not given)."""
    limits = limits or Limits(max_header_bytes=64 * 1024 * 1024, max_frames=64,
                              max_side=1 << 20, max_pixels=1 << 40)
    if not parts:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "empty reply")
    h = unpack_header(parts[0], limits)
    _check_version(h)
    t = h.get("type")
    rid = h.get("id")
    if rid is not None and not (isinstance(rid, str) and len(rid) <= MAX_ID_LEN):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "reply id must be a string or nil")
    rt = h.get("for")
    if request_type is None:
        request_type = rt if isinstance(rt, str) else None
    if t == "result":
        spec = RESULTS.get(request_type or "")
        if spec is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "result for unknown request type %s"
                                % shown(request_type))
        where = "%s result" % request_type
    elif isinstance(t, str) and t in EVENTS:
        spec, where = EVENTS[t], t
    else:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "unknown reply type %s" % shown(t))
    body = {k: v for k, v in h.items() if k not in ENVELOPE}
    fields = check_fields(body, spec.fields, where, limits, fill_defaults=False)
    images = _decode_frames(h, parts, spec.frames, where, limits)
    return Message(t, rid, fields, images, request_type=request_type)


def check_result(request_type: str, fields: Dict[str, Any],
                 images: Optional[Dict[str, Image]] = None) -> Dict[str, Any]:
    """Validate the fields of a result the daemon is about to send (backend output)."""
    spec = RESULTS[request_type]
    lim = Limits(max_side=1 << 20, max_pixels=1 << 40, max_frames=64)
    out = check_fields(fields, spec.fields, "%s result" % request_type, lim,
                       fill_defaults=False)
    _check_images(images or {}, spec.frames, "%s result" % request_type)
    return out


def check_event(type: str, fields: Dict[str, Any],
                images: Optional[Dict[str, Image]] = None) -> Dict[str, Any]:
    spec = EVENTS[type]
    lim = Limits(max_side=1 << 20, max_pixels=1 << 40, max_frames=64)
    out = check_fields(fields, spec.fields, type, lim, fill_defaults=False)
    _check_images(images or {}, spec.frames, type)
    return out


def _check_images(images: Dict[str, Image], specs: Dict[str, FrameSpec], where: str) -> None:
    for name, img in images.items():
        if name not in specs:
            raise ProtocolError(ErrorCode.INTERNAL, "%s: unexpected image %r" % (where, name))
        if not isinstance(img, Image):
            raise ProtocolError(ErrorCode.INTERNAL, "%s: %r is not an Image" % (where, name))
        if img.channels not in specs[name].channels or img.width < 1 or img.height < 1:
            raise ProtocolError(ErrorCode.INTERNAL, "%s: bad image shape %r" % (where, img))
        if buffer_nbytes(img.data) != img.nbytes:
            raise ProtocolError(ErrorCode.INTERNAL, "%s: image %r holds %d bytes, %r needs %d"
                                % (where, name, buffer_nbytes(img.data), img, img.nbytes))
    for name, fs in specs.items():
        if fs.required and name not in images:
            raise ProtocolError(ErrorCode.INTERNAL, "%s: image %r missing" % (where, name))


def split_images(d: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Image]]:
    """Separate Image values (pixel frames) from the plain fields of a dict."""
    fields, images = {}, {}
    for k, v in d.items():
        if isinstance(v, Image):
            images[k] = v
        else:
            fields[k] = v
    return fields, images
