"""Unit tests of plugin_common: the host-independent code the GIMP and Krita plug-ins share
(settings, arrows, the movable mask, pixels, the job model's event handling, CurveZMQ keys).

The mask tests run against the shared functions and against each plug-in's wrapper, which
words the messages for its host (GIMP: "handle of stroke", "Select > None"; Krita: "handle
(start) of arrow", "Select \u25b8 Deselect")."""
from __future__ import annotations

import pytest

from dragd.gimp_plugin import model as gimp_model
from dragd.krita_plugin import model as krita_model
from dragd.plugin_common import (OPEN_WEIGHT, Arrow, BaseDragSettings, BaseJobModel,
                                 Cancelled, MaskInfo, Outcome, UserError,
                                 check_handles_movable, fmt_point, make_mask, merge_alpha,
                                 to_rgba)
from dragd.plugin_common.keys import curve_for, keys_dir

PLUGINS = pytest.mark.parametrize("mod", [gimp_model, krita_model], ids=["gimp", "krita"])


# ---------------------------------------------------------------------------
# One implementation: the plug-ins re-export the shared objects
# ---------------------------------------------------------------------------


@PLUGINS
def test_plugins_use_the_shared_objects(mod):
    import dragd.plugin_common as common

    for name in ("Arrow", "Outcome", "UserError", "Cancelled", "merge_alpha",
                 "DEFAULT_ENDPOINT", "START_COMMAND", "PREVIEW_LAYER_NAME",
                 "CONNECT_TIMEOUT", "STOP_GRACE", "CLOSE_TIMEOUT", "OPEN_WEIGHT"):
        assert getattr(mod, name) is getattr(common, name), name
    assert issubclass(mod.DragSettings, BaseDragSettings)
    assert issubclass(mod.JobModel, BaseJobModel)
    assert issubclass(mod.MaskInfo, MaskInfo)
    assert issubclass(mod.Cancelled, UserError)


def test_the_plugins_default_endpoint_is_the_protocols():
    import dragd.plugin_common as common
    import dragd.protocol as protocol

    assert common.DEFAULT_ENDPOINT == protocol.DEFAULT_ENDPOINT


def test_both_hosts_run_the_shared_task_with_the_shared_curve_config_and_hello_check():
    from dragd.gimp_plugin import run as gimp_run
    from dragd.krita_plugin import run as krita_run
    from dragd.plugin_common import task
    from dragd.plugin_common.hello import accept_hello

    assert gimp_run.task_module() is task and krita_run.task_module() is task
    assert task.curve_for is curve_for and task.accept_hello is accept_hello


def test_the_package_imports_nothing_from_zmq_or_a_host():
    import subprocess
    import sys

    code = ("import sys; import dragd.plugin_common; "
            "bad = [m for m in ('zmq', 'msgpack', 'gi', 'krita', 'PyQt5') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------
# Settings and arrows
# ---------------------------------------------------------------------------


def test_settings_become_wire_fields():
    s = BaseDragSettings(max_steps=40, lambda_mask=12.5, space="w", inversion="fast")
    params = s.drag_params()
    assert params.pop("paste") == "detail"
    assert params.pop("method") == "dragd"           # the daemon's default drag
    assert BaseDragSettings(paste="resample").drag_params()["paste"] == "resample"
    assert params == {"max_steps": 40, "lr": None, "lambda_mask": 12.5, "space": "w",
                               "preview_every": 2, "preview_max_size": 256}
    assert s.invert_fields() == {"method": "pti", "quality": "fast"}
    assert BaseDragSettings(learning_rate=0.002).drag_params()["lr"] == 0.002
    assert BaseDragSettings(live_preview=False).drag_params()["preview_every"] == 0
    assert BaseDragSettings().align == "auto"       # the model's metadata decides


def test_outcome_says_what_face_alignment_did_and_trusts_the_daemons_domain_verdict():
    from dragd.plugin_common.jobs import alignment, domain_judged
    aligned = Outcome(None, 2, "converged", None, psnr=25.0, aligned="ffhq").summary()
    assert aligned == "converged after 2 steps; inversion 25.0 dB; face found, aligned (FFHQ)"
    assert alignment({"info": {"align": "ffhq"}}) == "ffhq"
    assert alignment({"info": {"align": "none"}}) is None and alignment({}) is None
    # The daemon judged the picture fine: its verdict, not the plug-in's PSNR rule.
    good = Outcome(None, 2, "converged", None, psnr=15.0, domain_judged=True).summary()
    assert good == "converged after 2 steps; inversion 15.0 dB"
    assert domain_judged({"info": {"domain": {"verdict": "good", "psnr": 15.0}}})
    assert not domain_judged({"info": {"tuning": {"psnr": 15.0}}})
    # Said while the drag runs, before the user waits for its end.
    m = BaseJobModel(BaseDragSettings(max_steps=10), [Arrow((1, 1), (5, 5))])
    m.connected({})
    m.opened({"info": {"align": "ffhq", "domain": {"verdict": "poor", "message": "not a face"}}})
    m.on_event("progress", {"stage": "drag", "step": 2, "total": 10, "distance": 3.0}, {})
    assert m.status() == "step 2/10, 3.0 px to go; face found, aligned (FFHQ) (not a face)"
    m.opened({"info": {"align": "none", "domain": {"verdict": "good"}}})
    assert m.status() == "step 0/10, 3.0 px to go"


def test_a_refusal_naming_alignment_off_names_the_plugins_switch():
    from dragd.plugin_common import messages
    daemon = ("no face found in this image, so it cannot be aligned for this face model; edit "
              "with alignment off (`--align none`, or the plug-in's alignment switch), or use a "
              "model made for this kind of picture")
    assert messages.refused(daemon) == (
        "The dragd daemon refused the request: no face found in this image, so it cannot be "
        "aligned for this face model; edit with alignment off (set Face alignment to Off), or "
        "use a model made for this kind of picture")
    short = "handle 1 lies outside the aligned square; select the face, or edit with alignment off"
    assert messages.refused(short).endswith(
        "or edit with alignment off (set Face alignment to Off)")
    assert messages.refused("no model 'x'") == "The dragd daemon refused the request: no model 'x'"


def test_arrow_pair_and_point_format():
    a = Arrow((1.5, 2.0), (3.0, 4.25))
    assert a.pair() == {"handle": [1.5, 2.0], "target": [3.0, 4.25]}
    assert fmt_point((1.04, 2.96)) == "(1, 3)" and fmt_point((0.25, -3.5)) == "(0.2, -3.5)"


# ---------------------------------------------------------------------------
# Mask: selection -> movable region (from tests/test_krita_glue.py and test_gimp_glue.py)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mm", [make_mask, gimp_model.make_mask, krita_model.make_mask],
                         ids=["common", "gimp", "krita"])
def test_selection_to_mask(mm):
    assert mm(None, 4, 2).whole_layer
    assert mm(b"\xff" * 8, 4, 2).whole_layer            # covers it all: same as none
    with pytest.raises(UserError, match="does not cover any of the layer 'art'"):
        mm(bytes(8), 4, 2, "art")
    with pytest.raises(ValueError):
        mm(bytes(7), 4, 2)
    m = mm(b"\x00\xff\xff\x00" * 2, 4, 2)
    assert not m.soft and m.coverage == 0.5 and m.value_at((1.5, 0.2)) == 255
    assert m.value_at((0.5, 1.5)) == 0 and m.value_at((99, 99)) == 0
    s = mm(b"\x00\x80\xff\x00" * 2, 4, 2)
    assert s.soft and s.coverage == pytest.approx((128 + 255) / (4 * 255.0))
    assert "feathered" in s.describe().lower()


def test_each_host_names_its_own_deselect_command_and_describes_the_mask():
    with pytest.raises(UserError, match=r"\(Select > None lets the whole layer move\)"):
        gimp_model.make_mask(bytes(8), 4, 2, "art")
    with pytest.raises(UserError, match="\\(Select \u25b8 Deselect lets the whole layer"):
        krita_model.make_mask(bytes(8), 4, 2, "art")
    g = gimp_model.make_mask(b"\x00\x80\xff\x00" * 2, 4, 2)
    k = krita_model.make_mask(b"\x00\x80\xff\x00" * 2, 4, 2)
    assert isinstance(g, gimp_model.MaskInfo) and isinstance(k, krita_model.MaskInfo)
    assert "Feathered" in g.describe() and "soft weights" in g.describe()
    assert k.describe() == "feathered selection (38% of the layer) may move"
    hard = b"\x00\xff\xff\x00" * 2
    assert "only the selected part may move" in gimp_model.make_mask(hard, 4, 2).describe()
    assert krita_model.make_mask(hard, 4, 2).describe() == (
        "selection (50% of the layer) may move")
    assert "whole layer" in gimp_model.MaskInfo(None, 4, 2).describe()
    assert krita_model.MaskInfo(None, 4, 2).describe() == (
        "no selection: the whole layer may move")
    assert MaskInfo(None, 4, 2).describe() == "no selection: the whole layer may move"


def test_handles_must_lie_in_the_movable_region_gimp():
    m = gimp_model.make_mask(bytes([0] * 10 + [255] * 10), 10, 2)
    gimp_model.check_handles_movable([Arrow((3.5, 1.5), (0.5, 0.5))], m)  # handle in row 1
    with pytest.raises(UserError, match="handle of stroke 1.*outside the selection"):
        gimp_model.check_handles_movable([Arrow((3.5, 0.5), (3.5, 1.5))], m)
    gimp_model.check_handles_movable([Arrow((3.5, 0.5), (3.5, 1.5))],
                                       gimp_model.MaskInfo(None, 10, 2))
    with pytest.raises(UserError, match=r"or Select > None\.$"):
        gimp_model.check_handles_movable([Arrow((3.5, 0.5), (3.5, 1.5))], m)


def test_handles_must_lie_in_the_movable_region_krita():
    m = krita_model.make_mask(b"\x00\xff\xff\x00" * 2, 4, 2)
    krita_model.check_handles_movable([Arrow((1.5, 0.5), (3.5, 0.5))], m)  # target may be out
    with pytest.raises(UserError, match=r"handle \(start\) of arrow 2, .* outside the selection"):
        krita_model.check_handles_movable([Arrow((1.5, 0.5), (0, 0)),
                                             Arrow((3.5, 1.5), (2, 1))], m)
    with pytest.raises(UserError, match="or Select \u25b8 Deselect\\.$"):
        krita_model.check_handles_movable([Arrow((0.5, 0.5), (0, 0))], m)


def test_handles_must_lie_in_the_movable_region_common():
    m = make_mask(b"\x00\xff\xff\x00" * 2, 4, 2)
    check_handles_movable([Arrow((1.5, 0.5), (3.5, 0.5))], m)
    with pytest.raises(UserError, match=r"^The handle of stroke 1, at \(0.5, 0.5\) on the "
                                        r"layer, .* or Select > None\.$"):
        check_handles_movable([Arrow((0.5, 0.5), (1, 1))], m)
    with pytest.raises(UserError, match=r"^The pin 1, .* or Undo\.$"):
        check_handles_movable([Arrow((0.5, 0.5), (1, 1))], m, handle_of="pin", deselect="Undo")
    check_handles_movable([Arrow((0.5, 0.5), (1, 1))], MaskInfo(None, 4, 2))


# ---------------------------------------------------------------------------
# Pixels (from test_gimp_glue.py's test_merge_alpha_channels and test_krita_glue.py's
# test_bgra_rgba_and_channel_conversions)
# ---------------------------------------------------------------------------


def test_merge_alpha_channels():
    src = bytes([1, 2, 3, 40, 5, 6, 7, 80])
    assert merge_alpha(bytes([9, 9, 9, 0, 8, 8, 8, 0]), 4, src) == bytes(
        [9, 9, 9, 40, 8, 8, 8, 80])
    assert merge_alpha(bytes([9, 9, 9, 8, 8, 8]), 3, src) == bytes([9, 9, 9, 40, 8, 8, 8, 80])
    assert merge_alpha(bytes([9, 8]), 1, src) == bytes([9, 9, 9, 40, 8, 8, 8, 80])
    with pytest.raises(ValueError):
        merge_alpha(bytes(5), 3, src)
    with pytest.raises(ValueError):                       # fewer pixels than the source
        merge_alpha(bytes(3), 3, src)
    with pytest.raises(ValueError):
        merge_alpha(bytes(4), 2, bytes(8))
    assert merge_alpha(bytes([9, 8, 7]), 3, bytes([0, 0, 0, 77])) == bytes([9, 8, 7, 77])
    assert merge_alpha(bytes([9, 8, 7, 1]), 4, bytes([0, 0, 0, 77])) == bytes([9, 8, 7, 77])


def test_channel_conversions():
    assert to_rgba(bytes([9, 8, 7]), 3) == bytes([9, 8, 7, 255])
    assert to_rgba(bytes([5, 6]), 1) == bytes([5, 5, 5, 255, 6, 6, 6, 255])
    assert to_rgba(bytes([1, 2, 3, 4]), 4) == bytes([1, 2, 3, 4])
    with pytest.raises(ValueError):
        to_rgba(bytes(4), 2)


# ---------------------------------------------------------------------------
# The job model's shared part (each host's progress text: its glue tests)
# ---------------------------------------------------------------------------


def test_base_job_model_follows_protocol_events():
    m = BaseJobModel(BaseDragSettings(max_steps=10), [Arrow((1, 1), (5, 5))])
    assert m.phase == "connecting" and m.handles == [[1, 1]] and m.summary() == "1 drag point"
    m.connected({"device": "cpu"})
    assert m.phase == "opening" and m.daemon == {"device": "cpu"}
    m.on_event("queued", {"position": 2}, {})
    assert m.stage == "queued" and m.message == "waiting for the daemon (position 2 in its queue)"
    m.on_event("notice", {"message": "loading"}, {})
    assert m.notice == "loading"
    m.on_event("progress", {"stage": "invert", "step": 4, "total": 10}, {})
    assert m.stage_fraction() == pytest.approx(0.5) and m.open_fraction() == pytest.approx(0.25)
    m.on_event("progress", {"stage": "tune", "step": 9, "total": 10}, {})
    assert m.open_fraction() == pytest.approx(1.0)
    m.on_event("progress", {"stage": "load"}, {})
    assert m.open_fraction() == 0.0 and OPEN_WEIGHT == 0.4
    m.opened({"session": "s"})
    assert (m.phase, m.stage, m.step, m.total) == ("dragging", "drag", 0, 10)
    m.on_event("progress", {"stage": "drag", "step": 0, "distance": 8.0,
                            "handles": [[2, 2]]}, {"preview": "P"})
    for bad in (float("nan"), float("inf"), None, "x"):
        m.on_event("progress", {"stage": "drag", "step": 1, "distance": bad}, {})
    assert m.distance == 8.0 and m.first_distance == 8.0 and m.handles == [[2, 2]]
    m.on_event("progress", {"stage": "drag", "step": 2, "distance": 2}, {})
    assert m.distance == 2.0 and m.first_distance == 8.0 and m.total == 10
    assert m.take_preview() == "P" and m.take_preview() is None and m.previews_seen == 1
    assert m.request_stop("keep", "time limit") and not m.request_stop("keep")
    assert m.stop_reason == "time limit" and m.stop_requested == "keep"
    assert not m.request_stop("discard") and m.stop_requested == "discard"
    with pytest.raises(ValueError):
        m.request_stop("later")
    m.failed("boom")
    assert m.phase == "failed" and m.error == "boom"
    assert BaseJobModel(BaseDragSettings(), [Arrow((0, 0), (1, 1))] * 2).summary() == (
        "2 drag points")
    assert krita_model.JobModel(krita_model.DragSettings(), []).summary() == "0 arrows"
    o = Outcome("img", 3, "cancelled", 1.5)
    assert o.handles == [] and o.steps == 3


def test_outcome_summary_words_each_stop_and_advises_after_a_stall():
    assert Outcome(None, 1, "converged", 0.4).summary() == "converged after 1 step, 0.4 px from the targets"
    assert (Outcome(None, 300, "max_steps", None).summary()
            == "step limit reached after 300 steps")
    assert Outcome(None, 3, "cancelled", None).summary() == "stopped after 3 steps"
    assert Outcome(None, 2, "converged", None, psnr=24.06).summary() == (
        "converged after 2 steps; inversion 24.1 dB")
    poor = Outcome(None, 2, "converged", None, psnr=15.0).summary()
    assert poor.startswith("converged after 2 steps; inversion 15.0 dB (too poor to edit well")
    assert Outcome(None, 2, "converged", None, psnr=15.0, continued=True).summary() == (
        "converged after 2 steps; continued the earlier edit")
    judged = Outcome(None, 2, "converged", None, psnr=25.0, poor_domain="the model x cannot "
                     "represent this picture").summary()
    assert judged == ("converged after 2 steps; inversion 25.0 dB (the model x cannot "
                      "represent this picture)")
    stalled = Outcome(None, 61, "stalled", 12.25).summary()
    assert stalled.startswith("stalled after 61 steps, 12.2 px from the targets")
    assert "detailed areas" in stalled


def test_inversion_psnr_from_the_open_reply():
    from dragd.plugin_common.jobs import inversion_psnr
    assert inversion_psnr({"info": {"pivot": {"psnr": 17.0}, "tuning": {"psnr": 21.5}}}) == 21.5
    assert inversion_psnr({"info": {"pivot": {"psnr": 17.0}, "tuning": None}}) == 17.0
    assert inversion_psnr({"info": {"inversion": "none"}}) is None and inversion_psnr({}) is None
    from dragd.plugin_common.jobs import poor_domain
    assert poor_domain({"info": {"domain": {"verdict": "poor", "message": "m"}}}) == "m"
    assert poor_domain({"info": {"domain": {"verdict": "good"}}}) is None
    assert poor_domain({}) is None


def test_result_names_and_tags():
    from dragd.plugin_common.results import decode_result_tag, encode_result_tag, result_name
    assert result_name("art") == "art (dragged)"
    assert result_name("art (dragged)") == "art (dragged)"
    assert result_name("art (dragged) #2 (dragged)") == "art (dragged)"
    assert result_name("art #3") == "art (dragged)" and result_name(" (dragged)") == " (dragged)"
    r = {"x": 1, "y": 2, "width": 3, "height": 4}
    assert decode_result_tag(encode_result_tag(r)) == {"region": r}
    assert decode_result_tag(encode_result_tag(None)) == {"region": None}
    for bad in (b"", b"\xff", b"[]", b'{"region": {"x": -1, "y": 0, "width": 1, "height": 1}}',
                b'{"other": 1}'):
        assert decode_result_tag(bad) is None, bad


def test_region_for_a_rerun_keeps_the_earlier_region_when_everything_fits():
    from dragd.plugin_common.results import region_for
    w, h = 10, 10
    sel = bytearray(w * h)
    sel[3 * w + 3] = 255                                   # box (3, 3, 1, 1)
    mask = make_mask(bytes(sel), w, h)
    whole = make_mask(None, w, h)
    inside = [Arrow((3.5, 3.5), (4.0, 4.0))]
    earlier = {"region": {"x": 2, "y": 2, "width": 5, "height": 5}}
    assert region_for(mask, inside, None) == {"x": 3, "y": 3, "width": 1, "height": 1}
    assert region_for(whole, inside, None) is None
    assert region_for(mask, inside, earlier) == earlier["region"]
    assert region_for(whole, inside, earlier) == earlier["region"]
    assert region_for(whole, [Arrow((3.5, 3.5), (9.0, 4.0))], earlier) is None
    assert region_for(mask, inside, {"region": None}) is None
    sel[8 * w + 8] = 255                                   # the box now reaches (9, 9)
    assert region_for(make_mask(bytes(sel), w, h), inside, earlier) == {
        "x": 3, "y": 3, "width": 6, "height": 6}


def test_errors():
    assert issubclass(Cancelled, UserError) and issubclass(UserError, Exception)


# ---------------------------------------------------------------------------
# CurveZMQ keys (from test_gimp_glue.py's test_loopback_and_curve_keys and
# test_krita_glue.py's test_curve_keys_only_for_remote_daemons)
# ---------------------------------------------------------------------------


def test_keys_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAGD_KEYS_DIR", str(tmp_path / "k"))
    assert keys_dir() == str(tmp_path / "k")
    monkeypatch.delenv("DRAGD_KEYS_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert keys_dir() == str(tmp_path / "cfg" / "dragd" / "keys")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys_dir() == str(tmp_path / "home" / ".config" / "dragd" / "keys")


def test_loopback_and_curve_keys(tmp_path, monkeypatch):
    import zmq

    from dragd.protocol.curvekeys import format_key_file
    from dragd.protocol.endpoint import is_loopback_endpoint

    assert is_loopback_endpoint("tcp://127.0.0.1:5557") and is_loopback_endpoint("ipc:///tmp/d")
    assert is_loopback_endpoint("tcp://localhost:5557") and is_loopback_endpoint("tcp://[::1]:1")
    assert not is_loopback_endpoint("tcp://10.0.0.5:5557")
    assert not is_loopback_endpoint("tcp://gpu-box:5557")
    monkeypatch.setenv("DRAGD_KEYS_DIR", str(tmp_path))
    assert curve_for("tcp://127.0.0.1:5557") == (None, "")
    cfg, hint = curve_for("tcp://10.0.0.5:5557")
    assert cfg is None and str(tmp_path) in hint and "server.key" in hint
    cfg, hint = curve_for("tcp://10.1.2.3:5557")
    assert cfg is None and str(tmp_path) in hint
    spub, _ = zmq.curve_keypair()
    cpub, csec = zmq.curve_keypair()
    (tmp_path / "server.key").write_text(format_key_file(spub))
    (tmp_path / "client.key_secret").write_text(format_key_file(cpub, csec))
    cfg, _ = curve_for("tcp://10.0.0.5:5557")
    assert cfg.server_public_key == spub and cfg.secret_key == csec
    (tmp_path / "server.key").write_text("garbage")
    with pytest.raises(UserError, match="Cannot read the CurveZMQ keys"):
        curve_for("tcp://10.0.0.5:5557")


# ---------------------------------------------------------------------------
# The daemon's hello: limits, models, whether the request fits
# ---------------------------------------------------------------------------


def test_accept_hello_reads_limits_and_checks_model_points_and_size():
    from types import SimpleNamespace

    from dragd.plugin_common.hello import accept_hello
    from dragd.protocol import Limits

    ep = "tcp://127.0.0.1:5557"
    hello = {"models": ["ffhq", "cat"], "loaded_model": "ffhq",
             "limits": {"max_points": 2, "max_side": 100, "max_pixels": 5000}}

    def check(fields=hello, model="", n=1, size=(10, 10), **kw):
        c = SimpleNamespace(limits=Limits())
        accept_hello(c, dict(fields), model=model, endpoint=ep, n_points=n, size=size, **kw)
        return c

    c = check()
    assert (c.limits.max_points, c.limits.max_side, c.limits.max_pixels) == (2, 100, 5000)
    assert check(model="cat").limits.max_points == 2
    assert check({"loaded_model": "x"}).limits == Limits()          # no limits: defaults
    with pytest.raises(UserError, match=r"has no model 'dog'\. Its models: ffhq, cat\."):
        check(model="dog")
    with pytest.raises(UserError, match="has no model. Install or load one"):
        check({})
    check({"models": ["a"]})                     # none loaded, but one to load
    with pytest.raises(UserError, match=r"^There are 3 drag points; the daemon takes at most 2"):
        check(n=3)
    with pytest.raises(UserError, match=r"^The path has 3 strokes; .* at most 2 drag points"):
        check(n=3, too_many_points="The path has %d strokes; the daemon takes at most %d "
                                   "drag points.")
    with pytest.raises(UserError, match=r"^The layer is 101x10; .* 100 pixels a side and 5000 "
                                        r"pixels in all\. Scale the layer down or crop it\.$"):
        check(size=(101, 10))
    with pytest.raises(UserError, match=r"Scale the image down"):
        check(size=(80, 80), scale_what="image")


# ---------------------------------------------------------------------------
# Vendoring: both installed layouts (and the Krita zip) carry the package
# ---------------------------------------------------------------------------


def test_installed_layouts_and_zip_vendor_plugin_common(tmp_path):
    import subprocess
    import sys
    import zipfile

    from dragd.daemon.cli.install_plugins import (build_krita_zip, install_gimp, install_krita,
                                             uninstall_gimp, uninstall_krita)

    groot = install_gimp(tmp_path / "gimp")
    kroot = install_krita(tmp_path / "pykrita", tmp_path / "kritarc") / "dragd_krita"
    for root, host in ((groot, "gimp_plugin"), (kroot, "krita_plugin")):
        for name in ("__init__.py", "mask.py", "jobs.py", "keys.py"):
            assert (root / "dragd" / "plugin_common" / name).is_file(), (root, name)
        assert not list((root / "dragd" / "plugin_common").rglob("__pycache__"))
        # -I -S: neither this checkout nor the installed dragd may be found instead.
        code = ("import sys; sys.path.insert(0, %r); import dragd.%s.model as s, "
                "dragd.plugin_common as c; print(c.__file__); "
                "print(s.MaskInfo.__mro__[1].__module__)" % (str(root), host))
        r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                           text=True, cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr
        out = r.stdout.split("\n")
        assert out[0] == str(root / "dragd" / "plugin_common" / "__init__.py")
        assert out[1] == "dragd.plugin_common.mask"
    names = zipfile.ZipFile(build_krita_zip(tmp_path / "z.zip")).namelist()
    assert "dragd_krita/dragd/plugin_common/mask.py" in names
    assert "dragd_krita/dragd/plugin_common/" in names
    uninstall_gimp(tmp_path / "gimp")
    uninstall_krita(tmp_path / "pykrita")
    assert not (tmp_path / "gimp" / "dragd-gimp").exists()
    assert list((tmp_path / "pykrita").iterdir()) == []


def test_an_antialiased_ellipse_is_a_selection_a_feathered_one_is_feathered():
    import math
    w = h = 200

    def ellipse(feather):
        data = bytearray(w * h)
        for y in range(h):
            for x in range(w):
                d = math.hypot((x + 0.5 - 100) / 75, (y + 0.5 - 100) / 95) - 1
                edge = max(feather, 1.0) / 85        # antialiasing: about one pixel
                data[y * w + x] = int(round(255 * min(1.0, max(0.0, 0.5 - d / edge))))
        return make_mask(bytes(data), w, h)
    sharp, soft = ellipse(0), ellipse(20)
    assert not sharp.soft and "feathered" not in sharp.describe().lower()
    assert soft.soft and "feathered" in soft.describe().lower()
    assert sharp.coverage == pytest.approx(math.pi * 75 * 95 / (w * h), rel=0.02)
