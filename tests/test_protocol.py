"""The message tables and codec: encoding, decoding and validation (no sockets needed)."""
from __future__ import annotations

import ast
import math
import pathlib
import sys

import msgpack
import pytest

from dragd.protocol import (ERROR_CODES, ERROR_SENTENCES, EVENTS, PROTOCOL_VERSION, REQUESTS,
                            RESULTS, ErrorCode, Image, Limits, ProtocolError, check_event,
                            check_result, curvekeys, encode, parse_reply, parse_request)
from dragd.protocol.client import CurveConfig, normalise_points

PROTOCOL_DIR = pathlib.Path(__file__).resolve().parents[1] / "protocol"


def img(w=4, h=3, c=4):
    return Image(bytes(range(256)) * (w * h * c // 256) + bytes(w * h * c % 256), w, h, c)


def drag_fields(**over):
    f = {"session": "s-1", "points": [{"handle": [1.0, 2.0], "target": [3.0, 4.0]}]}
    f.update(over)
    return f


def raw(header, *frames):
    return [msgpack.packb(header)] + list(frames)


def hdr(type="ping", **fields):
    h = {"v": PROTOCOL_VERSION, "id": "r-1", "type": type}
    h.update(fields)
    return h


def code_of(parts, limits=None):
    with pytest.raises(ProtocolError) as ei:
        parse_request(parts, limits or Limits())
    assert ei.value.message and ei.value.code in ERROR_CODES
    return ei.value.code


# ---------------------------------------------------------------------------
# Valid requests
# ---------------------------------------------------------------------------


def test_every_request_type_round_trips():
    samples = {
        "hello": ({"client": "gimp 3.0"}, None),
        "ping": ({"jobs": ["a-1"]}, None),
        "status": ({}, None),
        "list_models": ({}, None),
        "load_model": ({"model": "ffhq-512"}, None),
        "open_session": ({"roi": {"x": 0, "y": 0, "width": 2, "height": 2},
                          "invert": {"method": "w", "w_steps": 10}}, {"image": img()}),
        "drag": (drag_fields(params={"max_steps": 30, "space": "w", "tracking": "l2"}),
                 {"mask": img(5, 5, 1)}),
        "undo": ({"session": "s-1", "steps": 2}, None),
        "reset_points": ({"session": "s-1"}, None),
        "cancel": ({"job": "j-1"}, None),
        "close_session": ({"session": "s-1"}, None),
    }
    assert set(samples) == set(REQUESTS)
    for t, (fields, images) in samples.items():
        parts = encode(t, "id-%s" % t, fields, images)
        m = parse_request(parts)
        assert m.type == t and m.id == "id-%s" % t
        for k, v in fields.items():
            if not isinstance(v, dict):
                assert m[k] == v
        for name, im in (images or {}).items():
            got = m.images[name]
            assert (got.width, got.height, got.channels) == (im.width, im.height, im.channels)
            assert bytes(got.data) == bytes(im.data)


def test_defaults_are_filled():
    m = parse_request(encode("drag", "x", drag_fields()))
    p = m["params"]
    assert p["max_steps"] == 300 and p["lambda_mask"] == 20.0 and p["space"] == "w+"
    assert p["tracking"] == "l1" and p["preview_every"] == 0 and p["lr"] is None
    assert p["stall_steps"] == 60
    m = parse_request(encode("open_session", "x", {}, {"image": img()}))
    assert m["invert"]["method"] == "pti" and m["roi"] is None and m["model"] is None
    assert parse_request(encode("undo", "x", {"session": "s"}))["steps"] == 1


def test_pixel_frames_are_not_copied_on_encode():
    data = bytearray(4 * 3 * 4)
    parts = encode("open_session", "x", {}, {"image": Image(data, 4, 3, 4)})
    assert parts[1] is data
    m = parse_request([memoryview(p) if not isinstance(p, bytes) else p for p in parts])
    assert isinstance(m.images["image"].data, memoryview)


# ---------------------------------------------------------------------------
# Rejections, each with its code
# ---------------------------------------------------------------------------


def test_malformed_headers():
    assert code_of([b"\xc1\xc1"]) == "bad_message"               # not msgpack
    assert code_of([msgpack.packb([1, 2])]) == "bad_message"      # not a map
    assert code_of([msgpack.packb({"id": "x"}) + b"x"]) == "bad_message"   # trailing data
    assert code_of([b""]) == "bad_message"
    assert code_of([]) == "bad_message"
    assert code_of(raw({"id": "x", "type": "ping"})) == "bad_message"      # no v
    assert code_of(raw(hdr(id=""))) == "bad_message"
    assert code_of(raw(hdr(id=7))) == "bad_message"
    assert code_of(raw(hdr(id="x" * 129))) == "bad_message"
    assert code_of(raw(hdr(type=None))) == "bad_message"
    assert code_of([msgpack.packb({1: 2})]) == "bad_message"      # non-str map key


def test_version_mismatch():
    n = PROTOCOL_VERSION
    for v in (0, n - 1, n + 1, str(n), True, float(n), None):
        parts = raw(hdr(v=v))           # a float or a string is not the integer version
        with pytest.raises(ProtocolError) as ei:
            parse_request(parts)
        assert ei.value.code == "version_mismatch", v
        assert ei.value.details["id"] == "r-1"
    with pytest.raises(ProtocolError) as ei:
        parse_request(raw(hdr(v=7)))
    assert "v7" in ei.value.message and ei.value.details["got"] == 7


def test_unknown_type_and_fields():
    assert code_of(raw(hdr(type="rm_rf"))) == "unknown_type"
    assert code_of(raw(hdr(extra=1))) == "unknown_field"
    assert code_of(raw(hdr("drag", **drag_fields(params={"stepz": 3})))) == "unknown_field"
    assert code_of(raw(hdr("drag", **drag_fields(points=[
        {"handle": [1, 2], "target": [3, 4], "weight": 1}])))) == "unknown_field"
    assert code_of(raw(hdr("open_session", invert={"lr": 0.1, "magic": 1},
                           frames=[{"name": "image", "width": 1, "height": 1, "channels": 1}]),
                       b"\0")) == "unknown_field"


def test_wrong_types_and_bounds():
    assert code_of(raw(hdr("drag", **drag_fields(params={"max_steps": "10"})))) == "bad_message"
    assert code_of(raw(hdr("drag", **drag_fields(params={"max_steps": True})))) == "bad_message"
    assert code_of(raw(hdr("drag", **drag_fields(params={"max_steps": 0})))) == "bad_value"
    assert code_of(raw(hdr("drag", **drag_fields(params={"stall_steps": -1})))) == "bad_value"
    assert code_of(raw(hdr("drag", **drag_fields(params={"lr": -1.0})))) == "bad_value"
    assert code_of(raw(hdr("drag", **drag_fields(params={"lr": 0.0})))) == "bad_value"
    assert code_of(raw(hdr("drag", **drag_fields(params={"lr": math.nan})))) == "bad_value"
    assert code_of(raw(hdr("drag", **drag_fields(params={"space": "z"})))) == "bad_value"
    assert code_of(raw(hdr("drag", **drag_fields(params={"tracking": 1})))) == "bad_message"
    assert code_of(raw(hdr("drag", **drag_fields(params=[])))) == "bad_message"
    assert code_of(raw(hdr("drag", **drag_fields(session=5)))) == "bad_message"
    assert code_of(raw(hdr("drag", points=[]))) == "bad_message"          # no session
    assert code_of(raw(hdr("undo", session="s", steps=0))) == "bad_value"
    assert code_of(raw(hdr("cancel"))) == "bad_message"
    assert code_of(raw(hdr("cancel", job="j", request="r"))) == "bad_message"
    assert code_of(raw(hdr("ping", jobs="abc"))) == "bad_message"


def test_points():
    def pts(*p):
        return raw(hdr("drag", **drag_fields(points=list(p))))

    ok = {"handle": [1, 2], "target": [3, 4]}
    for bad in ([math.nan, 1], [1, math.inf], [-math.inf, 0], [1, 2, 3], [1], "ab",
                [True, 1], [None, 1], [1e12, 0]):
        assert code_of(pts({"handle": bad, "target": [1, 1]})) == "bad_points", bad
        assert code_of(pts(ok, {"handle": [1, 1], "target": bad})) == "bad_points", bad
    assert code_of(pts()) == "bad_value"                                    # none at all
    assert code_of(pts(*[ok] * 65)) == "too_large"
    assert code_of(pts(*[ok] * 5), Limits(max_points=4)) == "too_large"
    assert parse_request(pts(*[ok] * 64))["points"][63] == {"handle": [1.0, 2.0],
                                                          "target": [3.0, 4.0]}
    assert code_of(raw(hdr("drag", **drag_fields(params={"max_steps": 10 ** 6}))),
                   ) == "too_large"


def test_pixel_frames():
    d = {"name": "image", "width": 4, "height": 3, "channels": 4}
    good = bytes(48)
    assert parse_request(raw(hdr("open_session", frames=[d]), good)).images["image"].nbytes == 48
    assert code_of(raw(hdr("open_session", frames=[d]), good[:-1])) == "bad_pixels"
    assert code_of(raw(hdr("open_session", frames=[d]), good + b"\0")) == "bad_pixels"
    assert code_of(raw(hdr("open_session", frames=[d]))) == "bad_pixels"   # truncated
    assert code_of(raw(hdr("open_session", frames=[d]), good, good)) == "bad_pixels"
    assert code_of(raw(hdr("open_session"))) == "bad_pixels"               # image missing
    assert code_of(raw(hdr("open_session", frames=[d, d]), good, good)) == "bad_pixels"
    assert code_of(raw(hdr("open_session", frames=[dict(d, channels=2)]), bytes(24))
                   ) == "bad_pixels"
    assert code_of(raw(hdr("open_session", frames=[dict(d, width=0)]), b"")) == "bad_pixels"
    assert code_of(raw(hdr("open_session", frames=[dict(d, name="mask")]), good)
                   ) == "unknown_field"
    assert code_of(raw(hdr("open_session", frames=[dict(d, width=1 << 40)]), good)
                   ) == "too_large"
    assert code_of(raw(hdr("open_session", frames=[dict(d, width=20000, height=1)]), good)
                   ) == "too_large"
    assert code_of(raw(hdr("open_session", frames=[dict(d, width=9000, height=9000)]), good)
                   ) == "too_large"
    assert code_of(raw(hdr("open_session", frames=[dict(d, width="4")]), good)
                   ) == "bad_message"
    assert code_of(raw(hdr("open_session", frames=d), good)) == "bad_message"
    mask = {"name": "mask", "width": 4, "height": 3, "channels": 4}
    assert code_of(raw(hdr("drag", frames=[mask], **drag_fields()), good)) == "bad_pixels"
    assert code_of(raw(hdr("ping", frames=[mask]), good)) == "unknown_field"


def test_roi_must_fit():
    d = {"name": "image", "width": 4, "height": 3, "channels": 1}
    ok = {"x": 1, "y": 1, "width": 3, "height": 2}
    assert parse_request(raw(hdr("open_session", roi=ok, frames=[d]), bytes(12)))["roi"] == ok
    assert code_of(raw(hdr("open_session", roi=dict(ok, width=4), frames=[d]), bytes(12))
                   ) == "bad_value"
    assert code_of(raw(hdr("open_session", roi=dict(ok, width=0), frames=[d]), bytes(12))
                   ) == "bad_value"


def test_size_limits_of_the_message_itself():
    big = raw(hdr(client="x" * 150))
    assert code_of(big, Limits(max_header_bytes=100)) == "too_large"
    assert code_of(raw(hdr()) + [b""] * 6) == "too_large"


# ---------------------------------------------------------------------------
# Replies and events
# ---------------------------------------------------------------------------


def test_replies_and_events_validate():
    parts = encode("result", "r", {"session": "s", "handles": [[1, 2]], "steps": 3,
                                   "stop": "converged"}, {"image": img()},
                   request_type="drag")
    m = parse_reply(parts)
    assert m.type == "result" and m.request_type == "drag" and m.image.width == 4
    with pytest.raises(ProtocolError):               # drag result needs its image
        parse_reply(encode("result", "r", {"session": "s", "handles": [], "steps": 3,
                                           "stop": "converged"}, request_type="drag"))
    with pytest.raises(ProtocolError):
        parse_reply(encode("result", "r", {"session": "s", "surprise": 1},
                           request_type="close_session"))
    m = parse_reply(encode("progress", "r", {"job": "j", "stage": "drag", "step": 0,
                                             "losses": {"motion": math.nan}}))
    assert math.isnan(m["losses"]["motion"])
    m = parse_reply(encode("error", None, {"code": "busy", "message": "wait"}))
    assert m.id is None and m["code"] == "busy"
    with pytest.raises(ProtocolError):
        parse_reply(encode("error", "r", {"code": "no_such_code", "message": "?"}))
    with pytest.raises(ProtocolError):
        parse_reply(encode("weird", "r", {}))
    assert set(EVENTS) == {"queued", "progress", "notice", "error"}
    assert set(RESULTS) == set(REQUESTS)


def test_check_result_and_event_catch_backend_bugs():
    with pytest.raises(ProtocolError) as ei:
        check_result("drag", {"session": "s", "handles": [], "steps": 1, "stop": "done"},
                     {"image": img()})
    assert ei.value.code == "bad_value"
    with pytest.raises(ProtocolError) as ei:
        check_result("drag", {"session": "s", "handles": [], "steps": 1,
                              "stop": "converged"}, {"image": Image(b"123", 4, 4, 4)})
    assert ei.value.code == "internal"
    check_event("progress", {"job": "j", "stage": "invert", "step": 2, "total": 10})


# The imperative verbs the error sentences open their action clause with; a sentence
# whose second half is not an instruction (e.g. "The job was cancelled.") fails.
ACTION_VERBS = {"check", "close", "open", "redraw", "run", "see", "start", "try", "update",
                "use", "wait"}


def test_every_error_code_has_a_sentence_that_says_what_to_do():
    assert set(ERROR_SENTENCES) == ERROR_CODES
    for code, sentence in ERROR_SENTENCES.items():
        assert sentence[0].isupper() and sentence.endswith("."), code
        assert sentence.count("; ") == 1, (code, "want 'what happened; what to do.'")
        action = sentence.split("; ")[1]
        assert action.split()[0].strip(",") in ACTION_VERBS, (code, action)
        assert ProtocolError(code).message == sentence
    assert ProtocolError("made_up").code == ErrorCode.INTERNAL


def test_limits_round_trip():
    lim = Limits(max_side=100, max_points=3)
    d = lim.to_dict()
    assert d["max_message_bytes"] == lim.max_message_bytes
    assert Limits.from_dict(d) == lim


# ---------------------------------------------------------------------------
# Client helpers and key files
# ---------------------------------------------------------------------------


def test_normalise_points():
    want = [{"handle": [1.0, 2.0], "target": [3.0, 4.0]}]
    assert normalise_points([((1, 2), (3, 4))]) == want
    assert normalise_points([(1, 2, 3, 4)]) == want
    assert normalise_points([{"handle": (1, 2), "target": (3, 4)}]) == want


def test_key_files_round_trip(tmp_path):
    import zmq
    pub, sec = zmq.curve_keypair()
    (tmp_path / "c.key_secret").write_text(curvekeys.format_key_file(pub, sec, "c"))
    (tmp_path / "s.key").write_text(curvekeys.format_key_file(pub, None, "s"))
    assert curvekeys.read_key_file(tmp_path / "c.key_secret") == (pub, sec)
    assert curvekeys.read_key_file(tmp_path / "s.key") == (pub, None)
    cc = CurveConfig.from_files(tmp_path / "s.key", tmp_path / "c.key_secret")
    assert cc.server_public_key == pub and cc.secret_key == sec
    assert CurveConfig.from_dict({"server_public_key": pub.decode(), "public_key": pub,
                                  "secret_key": sec}).public_key == pub
    with pytest.raises(ValueError):
        CurveConfig.from_files(tmp_path / "s.key", tmp_path / "s.key")
    with pytest.raises(ValueError):
        curvekeys.normalise_key("short")
    with pytest.raises(ValueError):
        curvekeys.normalise_key('"' * 40)


# ---------------------------------------------------------------------------
# The package stays vendorable: pure Python 3.10, relative imports, no numpy/torch
# ---------------------------------------------------------------------------


def test_protocol_package_is_pure_and_vendorable():
    allowed = {"zmq", "msgpack"} | set(sys.stdlib_module_names)
    for path in sorted(PROTOCOL_DIR.glob("*.py")):
        src = path.read_text()
        tree = ast.parse(src, feature_version=(3, 10))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    assert a.name.split(".")[0] in allowed, (path.name, a.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    assert node.module.split(".")[0] in allowed, (path.name, node.module)
                    assert node.module.split(".")[0] != "dragd"
