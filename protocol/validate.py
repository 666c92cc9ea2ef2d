"""Field types: each checks one value of a message and returns it normalised.

Every failure is a :class:`ProtocolError` whose message names the field (``drag.points[0]``)
and ends with the code's sentence, so a user sees what is wrong and what to do.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence

from .errors import ERROR_SENTENCES, ErrorCode, ProtocolError
from .limits import Limits

MISSING = object()


def shown(v: Any, limit: int = 40) -> str:
    """An untrusted value as an error sentence may quote it: its repr (control characters
    escaped), cut after ``limit`` characters, so no request can make a reply (or the log
    line that records it) long or unprintable."""
    if isinstance(v, (str, bytes)):
        r = repr(v[:limit])
        return r + ("...(%d long)" % len(v) if len(v) > limit else "")
    if v is None or isinstance(v, (bool, int, float)):
        r = repr(v)
        return r if len(r) <= limit else r[:limit] + "..."
    return "a %s" % type(v).__name__


def clean(s: str, limit: int = 64) -> str:
    """An untrusted name (a map key) inside a field path: non-printable characters
    escaped, cut after ``limit`` characters."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s[:limit])
    return out + ("..." if len(s) > limit else "")


def _fail(code: str, where: str, what: str) -> ProtocolError:
    """A field-level error: what is wrong where, then what the user can do."""
    return ProtocolError(code, "%s: %s. %s" % (where, what, ERROR_SENTENCES[code]),
                         {"field": where})


class T:
    """A field type. ``check`` returns the (normalised) value or raises ProtocolError."""

    name = "value"

    def check(self, v: Any, where: str, limits: Limits) -> Any:  # pragma: no cover
        raise NotImplementedError


class Int(T):
    name = "integer"

    def __init__(self, lo: Optional[int] = None, hi: Optional[int] = None,
                 code: str = ErrorCode.BAD_VALUE):
        self.lo, self.hi, self.code = lo, hi, code

    def check(self, v, where, limits):
        if isinstance(v, bool) or not isinstance(v, int):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected an integer")
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise _fail(self.code, where, "%d is outside [%s, %s]" % (v, self.lo, self.hi))
        return v


class Float(T):
    name = "number"

    def __init__(self, lo: Optional[float] = None, hi: Optional[float] = None,
                 finite: bool = True, lo_open: bool = False,
                 code: str = ErrorCode.BAD_VALUE):
        self.lo, self.hi, self.finite, self.lo_open, self.code = lo, hi, finite, lo_open, code

    def check(self, v, where, limits):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a number")
        v = float(v)
        if not math.isfinite(v):
            if self.finite:
                raise _fail(self.code, where, "must be a finite number, not %r" % v)
            return v
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            raise _fail(self.code, where, "%g is below %s%g" % (
                v, "or equal to " if self.lo_open else "", self.lo))
        if self.hi is not None and v > self.hi:
            raise _fail(self.code, where, "%g is above %g" % (v, self.hi))
        return v


class Bool(T):
    name = "boolean"

    def check(self, v, where, limits):
        if not isinstance(v, bool):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected true or false")
        return v


class Str(T):
    name = "string"

    def __init__(self, min_len: int = 0, max_len: int = 1024,
                 choices: Optional[Sequence[str]] = None):
        self.min_len, self.max_len = min_len, max_len
        self.choices = tuple(choices) if choices else None

    def check(self, v, where, limits):
        if not isinstance(v, str):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a string")
        if self.choices is not None:
            if v not in self.choices:
                raise _fail(ErrorCode.BAD_VALUE, where, "%s is not one of %s" % (
                    shown(v), ", ".join(self.choices)))
        elif not (self.min_len <= len(v) <= self.max_len):
            raise _fail(ErrorCode.BAD_VALUE, where, "length must be %d..%d" % (
                self.min_len, self.max_len))
        return v


class Nullable(T):
    def __init__(self, inner: T):
        self.inner = inner
        self.name = inner.name + " or nil"

    def check(self, v, where, limits):
        return None if v is None else self.inner.check(v, where, limits)


class ListOf(T):
    name = "list"

    def __init__(self, item: T, min_len: int = 0, max_len: Optional[int] = 1024,
                 max_len_from: Optional[Callable[[Limits], int]] = None,
                 too_many: str = ErrorCode.TOO_LARGE, what: str = "items"):
        self.item, self.min_len, self.max_len = item, min_len, max_len
        self.max_len_from, self.too_many, self.what = max_len_from, too_many, what

    def check(self, v, where, limits):
        if not isinstance(v, (list, tuple)):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a list")
        hi = self.max_len_from(limits) if self.max_len_from else self.max_len
        if hi is not None and len(v) > hi:
            raise _fail(self.too_many, where, "%d %s, at most %d allowed" % (
                len(v), self.what, hi))
        if len(v) < self.min_len:
            raise _fail(ErrorCode.BAD_VALUE, where, "needs at least %d %s" % (
                self.min_len, self.what))
        return [self.item.check(x, "%s[%d]" % (where, i), limits) for i, x in enumerate(v)]


class Point(T):
    """[x, y] in layer pixel coordinates: finite numbers."""

    name = "point"

    def check(self, v, where, limits):
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise _fail(ErrorCode.BAD_POINTS, where, "a point must be [x, y]")
        out = []
        for c in v:
            if isinstance(c, bool) or not isinstance(c, (int, float)):
                raise _fail(ErrorCode.BAD_POINTS, where, "coordinates must be numbers")
            c = float(c)
            if not math.isfinite(c):
                raise _fail(ErrorCode.BAD_POINTS, where,
                            "coordinate %r is not a finite number" % c)
            if abs(c) > 4 * limits.max_side:
                raise _fail(ErrorCode.BAD_POINTS, where, "coordinate %g is far outside "
                            "any layer" % c)
            out.append(c)
        return out


class Field:
    __slots__ = ("type", "required", "default")

    def __init__(self, type_: T, required: bool = False, default: Any = MISSING):
        self.type, self.required, self.default = type_, required, default


def req(t: T) -> Field:
    return Field(t, required=True)


def opt(t: T, default: Any = MISSING) -> Field:
    return Field(t, default=default)


class Map(T):
    """A map with a fixed set of fields; unknown keys are rejected."""

    name = "map"

    def __init__(self, fields: Dict[str, Field], fill_defaults: bool = True):
        self.fields, self.fill_defaults = fields, fill_defaults

    def check(self, v, where, limits):
        if not isinstance(v, dict):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a map")
        return check_fields(v, self.fields, where, limits, self.fill_defaults)


class FreeMap(T):
    """A map of string keys to values of one type (losses, free-form info)."""

    name = "map"

    def __init__(self, value: T, max_items: int = 64):
        self.value, self.max_items = value, max_items

    def check(self, v, where, limits):
        if not isinstance(v, dict):
            raise _fail(ErrorCode.BAD_MESSAGE, where, "expected a map")
        if len(v) > self.max_items:
            raise _fail(ErrorCode.TOO_LARGE, where, "too many entries")
        out = {}
        for k, x in v.items():
            if not isinstance(k, str) or not (1 <= len(k) <= 128):
                raise _fail(ErrorCode.BAD_MESSAGE, where, "keys must be short strings")
            out[k] = self.value.check(x, "%s.%s" % (where, clean(k)), limits)
        return out


class Plain(T):
    """Any msgpack scalar, list or string-keyed map, nested at most ``depth`` deep."""

    name = "plain value"

    def __init__(self, depth: int = 4):
        self.depth = depth

    def check(self, v, where, limits, _d: int = 0):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if _d >= self.depth:
            raise _fail(ErrorCode.BAD_MESSAGE, where, "nested too deeply")
        if isinstance(v, (list, tuple)):
            return [self.check(x, where, limits, _d + 1) for x in v]
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise _fail(ErrorCode.BAD_MESSAGE, where, "keys must be strings")
                out[k] = self.check(x, where, limits, _d + 1)
            return out
        raise _fail(ErrorCode.BAD_MESSAGE, where, "unsupported value type %s"
                    % type(v).__name__)


def check_fields(v: Dict[str, Any], spec: Dict[str, Field], where: str,
                 limits: Limits, fill_defaults: bool = True) -> Dict[str, Any]:
    for k in v:
        if k not in spec:
            raise ProtocolError(
                ErrorCode.UNKNOWN_FIELD,
                "%s: unknown field %s; update the plug-in and the daemon to the same "
                "dragd release" % (where, shown(k, 64)),
                {"field": "%s.%s" % (where, clean(k) if isinstance(k, str) else shown(k))})
    out: Dict[str, Any] = {}
    for name, f in spec.items():
        w = "%s.%s" % (where, name)
        if name in v:
            out[name] = f.type.check(v[name], w, limits)
        elif f.required:
            raise _fail(ErrorCode.BAD_MESSAGE, w, "required field is missing")
        elif fill_defaults and f.default is not MISSING:
            # A map-typed default ({}) is expanded so its own defaults are filled in.
            out[name] = (f.type.check(f.default, w, limits) if isinstance(f.type, Map)
                         else f.default)
    return out

