"""Fast unit tests of the GIMP plug-in without GIMP: the host glue against small stand-ins
for the Gimp/Gegl API objects (tests/host_fakes.py), the model, and the run (GIMP's loop
driving the shared task) against a scripted client and against a real dragd server
(NullBackend) on 127.0.0.1.

The real-GIMP tests are in tests/test_gimp_host.py.
"""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from dragd.gimp_plugin import host as gimp_host
from dragd.gimp_plugin import model, run, ui
from dragd.gimp_plugin.model import (ARGUMENTS, Arrow, Cancelled, DragSettings, JobModel,
                                     LayerGeometry, MaskInfo, Stroke, UserError,
                                     arrows_from_strokes, bezier_anchors,
                                     make_mask, merge_alpha)
from dragd.plugin_common import pacing
from dragd.protocol import DaemonUnavailable, Image, RemoteError
from host_fakes import Buffer, FakeGegl, FakeGimp, FakeImage, Layer, Path, bezier

def make_scene(with_alpha=True, offsets=(10, 6), lw=20, lh=16):
    """A 64x48 image with a background and an offset layer 'art' of distinct pixels."""
    img = FakeImage()
    bg = Layer(img, "bg", 64, 48, "RGB", alpha=False)
    art = Layer(img, "art", lw, lh, "RGBA" if with_alpha else "RGB", alpha=with_alpha)
    art.ox, art.oy = offsets
    for i in range(lw * lh):
        art.buffer.data[4 * i:4 * i + 4] = bytes(((i * 7) % 256, (i * 3) % 256, 100,
                                                  (128 + i) % 256 if with_alpha else 255))
    img.layers = [art, bg]
    img.log.clear()
    return img, art


def host():
    return gimp_host.GimpHost(FakeGimp(), FakeGegl)


@pytest.fixture(autouse=True)
def no_ui_throttling(monkeypatch):
    """Show every progress text and preview (the run paces them in real time)."""
    monkeypatch.setattr(pacing, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setattr(pacing, "PREVIEW_INTERVAL", 0.0)


# ---------------------------------------------------------------------------
# Points: path -> arrows
# ---------------------------------------------------------------------------


def test_bezier_anchors_take_the_middle_of_each_triple():
    pts = [0, 0, 1, 2, 5, 5, 7, 7, 3, 4, 9, 9]
    assert bezier_anchors(pts) == [(1.0, 2.0), (3.0, 4.0)]
    with pytest.raises(UserError, match="multiple of 6"):
        bezier_anchors([1, 2, 3])


def test_path_strokes_become_arrows_in_layer_coordinates():
    img, art = make_scene(offsets=(10, 6))
    img.paths = [Path(img, "arrows", [bezier((15, 12), (18, 14)),
                                      bezier((20.5, 7.25), (22, 9), (26, 19))])]
    arrows, name = host().read_arrows(img, art)
    assert name == "arrows"
    # image coordinates minus the layer offsets; first anchor = handle, last = target
    assert arrows == [Arrow((5.0, 6.0), (8.0, 8.0)), Arrow((10.5, 1.25), (16.0, 13.0))]
    assert arrows[0].pair() == {"handle": [5.0, 6.0], "target": [8.0, 8.0]}


def test_the_selected_path_wins_else_the_only_one():
    img, art = make_scene(offsets=(0, 0))
    a = Path(img, "a", [bezier((1, 1), (2, 2))])
    b = Path(img, "b", [bezier((3, 3), (4, 4))])
    img.paths = [a, b]
    img.selected_paths = [b]
    assert host().read_arrows(img, art)[0] == [Arrow((3.0, 3.0), (4.0, 4.0))]
    img.selected_paths = []
    with pytest.raises(UserError, match="2 paths and none is selected"):
        host().read_arrows(img, art)
    img.selected_paths = [a, b]
    with pytest.raises(UserError, match="2 paths are selected"):
        host().read_arrows(img, art)
    img.paths, img.selected_paths = [a], []
    assert host().read_arrows(img, art)[0] == [Arrow((1.0, 1.0), (2.0, 2.0))]


def test_no_path_is_a_clear_message():
    img, art = make_scene()
    with pytest.raises(UserError) as e:
        host().read_arrows(img, art)
    msg = str(e.value)
    assert "no path" in msg and "Paths tool" in msg and "handle" in msg and "target" in msg


def test_a_stroke_with_one_anchor_is_a_clear_message():
    img, art = make_scene(offsets=(0, 0))
    img.paths = [Path(img, "pts", [bezier((1, 1), (2, 2)), bezier((5, 5))])]
    with pytest.raises(UserError) as e:
        host().read_arrows(img, art)
    msg = str(e.value)
    assert "Stroke 2" in msg and "'pts'" in msg and "only one anchor" in msg


def test_an_empty_path_and_points_off_the_layer_are_clear_messages():
    g = LayerGeometry("art", 20, 16, 10, 6)
    with pytest.raises(UserError, match="no strokes"):
        arrows_from_strokes([], g, "p")
    # on the layer's far edge is fine (continuous coordinates 0..W)
    assert arrows_from_strokes([Stroke(((10, 6), (30, 22)))], g)[0].target == (20.0, 16.0)
    with pytest.raises(UserError) as e:
        arrows_from_strokes([Stroke(((12, 8), (31, 10)))], g, "p")
    assert "target of stroke 1" in str(e.value) and "(31, 10)" in str(e.value)
    assert "'art' (20x16 at 10,6)" in str(e.value)


# ---------------------------------------------------------------------------
# Mask: selection -> bytes in layer coordinates
# ---------------------------------------------------------------------------


def test_no_selection_means_the_whole_layer_moves():
    img, art = make_scene()
    m = host().read_mask(img, art)
    assert m.data is None and m.whole_layer and (m.width, m.height) == (20, 16)
    assert "whole layer" in m.describe()


def test_rectangular_selection_becomes_mask_bytes_in_layer_coordinates():
    img, art = make_scene(offsets=(10, 6))
    img.selection.rect(20, 10, 5, 4)          # image coordinates
    m = host().read_mask(img, art)
    assert len(m.data) == 20 * 16 and not m.soft
    on = [(i % 20, i // 20) for i, v in enumerate(m.data) if v]
    assert min(on) == (10, 4) and max(on) == (14, 7) and len(on) == 20
    assert set(m.data) == {0, 255}
    assert m.coverage == pytest.approx(20 / 320)
    assert "only the selected part may move" in m.describe()


def test_selection_partly_outside_the_layer_and_outside_the_image():
    img, art = make_scene(offsets=(-4, -2), lw=20, lh=16)   # layer hangs off the image
    img.selection.rect(0, 0, 3, 3)
    m = host().read_mask(img, art)
    on = [(i % 20, i // 20) for i, v in enumerate(m.data) if v]
    assert on[0] == (4, 2) and len(on) == 9        # outside the image: abyss = 0


def test_feathered_selection_is_soft_weights():
    img, art = make_scene(offsets=(0, 0))
    img.selection.rect(2, 2, 10, 10, 255)
    img.selection.rect(2, 2, 10, 1, 128)             # a soft edge
    m = host().read_mask(img, art)
    assert m.soft and 128 in m.data
    assert "Feathered" in m.describe() and "soft weights" in m.describe()


def test_selection_missing_the_layer_or_covering_all_of_it():
    img, art = make_scene(offsets=(40, 30), lw=10, lh=10)
    img.selection.rect(0, 0, 10, 10)
    with pytest.raises(UserError, match="does not cover any of the layer 'art'"):
        host().read_mask(img, art)
    img, art = make_scene(offsets=(0, 0), lw=10, lh=10)
    img.selection.rect(0, 0, 30, 30)
    assert host().read_mask(img, art).data is None    # fully selected = no mask


# ---------------------------------------------------------------------------
# Layers: source checks, pixels, result, preview, undo
# ---------------------------------------------------------------------------


def test_source_layer_checks():
    img, art = make_scene()
    h = host()
    assert h.source_layer([art]) is art
    with pytest.raises(UserError, match="No layer is selected"):
        h.source_layer([])
    with pytest.raises(UserError, match="2 layers are selected"):
        h.source_layer([art, art])
    art.group = True
    with pytest.raises(UserError, match="layer group"):
        h.source_layer([art])
    art.group, art.layer = False, False
    with pytest.raises(UserError, match="not a layer"):
        h.source_layer([art])


def test_read_pixels_is_rgba_of_the_layer():
    img, art = make_scene()
    px = host().read_pixels(art)
    assert px == bytes(art.buffer.data) and len(px) == 20 * 16 * 4


def test_result_layer_above_source_same_offsets_source_untouched():
    img, art = make_scene(offsets=(10, 6))
    h = host()
    src = h.read_pixels(art)
    before = bytes(art.buffer.data)
    rgb = bytes(255 - b for i, b in enumerate(src) if i % 4 != 3)       # 3-channel result
    result = Image(rgb, 20, 16, 3)
    out = h.result_pixels(result, src)
    new = h.write_result(img, art, out)
    assert img.layers == [new, art, img.layers[2]]
    assert new.get_offsets() == (True, 10, 6) and (new.w, new.h) == (20, 16)
    assert new.name == "art (dragged)" and new.type == "RGBA"
    assert bytes(art.buffer.data) == before
    got = bytes(new.buffer.data)
    assert got[3::4] == src[3::4]                           # the layer keeps its alpha
    assert got[0::4] == bytes(255 - b for b in src[0::4])


def test_result_is_written_as_the_daemon_made_it_and_tagged_with_its_region():
    """The daemon blended the edit through the selection already: the layer holds its
    pixels exactly (blending them through the selection again would change feathered
    pixels, and a rerun would no longer be on the daemon's own result)."""
    img, art = make_scene(offsets=(10, 6))
    img.selection.rect(15, 8, 6, 5)
    h = host()
    src = h.read_pixels(art)
    out = bytes(255 - b if i % 4 != 3 else b for i, b in enumerate(src))
    region = {"x": 5, "y": 2, "width": 6, "height": 5}
    new = h.write_result(img, art, out, region)
    assert bytes(new.buffer.data) == out
    assert h.result_tag(new) == {"region": region} and h.result_tag(art) is None


def test_result_goes_above_the_earlier_results_of_its_source_with_a_clean_name():
    img, art = make_scene()
    h = host()
    src = h.read_pixels(art)
    first = h.write_result(img, art, src, None)
    second = h.write_result(img, art, src, None)         # a rerun on the source
    assert img.layers[:3] == [second, first, art]
    third = h.write_result(img, first, src, None)        # a rerun on the first result
    assert img.layers[:4] == [third, second, first, art]
    assert {first.name, third.name} == {"art (dragged)"}


def test_gray_image_and_layer_without_alpha_get_matching_layer_types():
    img, art = make_scene(with_alpha=False)
    img.base = "GRAY"
    h = host()
    src = h.read_pixels(art)
    new = h.write_result(img, art, src)
    assert new.type == "GRAY"


# ---------------------------------------------------------------------------
# Settings and the job model
# ---------------------------------------------------------------------------


def test_dialog_info_names_the_path_used_and_says_when_others_are_not():
    arrows = [Arrow((1, 1), (2, 2))]
    one = model.dialog_info(arrows, "arrows", make_mask(None, 4, 4), "art", 1, "Daemon ...")
    assert one[0].startswith("Layer 'art': 1 drag point from path 'arrows'")
    assert "paths" not in one[0] and one[2] == "Daemon ..."
    two = model.dialog_info(arrows * 2, "Path #2", make_mask(None, 4, 4), "art", 2, "")
    assert "2 drag points from path 'Path #2'" in two[0]
    assert "The image has 2 paths: only this one" in two[0]


def test_arguments_cover_the_settings():
    names = [a.name for a in ARGUMENTS]
    assert names == ["model", "max-steps", "learning-rate", "lambda-mask", "latent-space", "method",
                     "inversion", "paste", "face-alignment", "daemon", "time-limit",
                     "live-preview"]
    s = DragSettings()
    for a in ARGUMENTS:
        assert hasattr(s, a.attr)
        if a.kind == "choice":
            assert a.default in [c[0] for c in a.choices]


def test_settings_from_config_values():
    s = DragSettings.from_values({"model": " ffhq ", "max-steps": 40, "learning-rate": 0.0,
                                  "lambda-mask": 5.0, "latent-space": "w",
                                  "inversion": "fast", "daemon": "tcp://10.0.0.2:5557",
                                  "time-limit": 60, "live-preview": False})
    assert s.model == "ffhq" and s.space == "w" and s.endpoint == "tcp://10.0.0.2:5557"
    p = s.drag_params()
    assert p["lr"] is None and p["max_steps"] == 40 and p["space"] == "w"
    assert p["lambda_mask"] == 5.0 and p["preview_every"] == 0
    assert s.invert_fields() == {"method": "pti", "quality": "fast"}
    assert DragSettings.from_values({"learning-rate": 0.002}).drag_params()["lr"] == 0.002
    assert DragSettings.from_values({"latent-space": "w-plus"}).space == "w+"
    assert s.align == "auto" and DragSettings.from_values({"face-alignment": "off"}).align == "none"
    assert model.ARG_BY_NAME["face-alignment"].label == "_Face alignment"     # what refusals name
    with pytest.raises(UserError, match="face-alignment"):
        DragSettings.from_values({"face-alignment": "ffhq"})
    with pytest.raises(UserError, match="not a ZeroMQ address"):
        DragSettings.from_values({"daemon": "localhost:5557"})
    with pytest.raises(UserError, match="latent-space"):
        DragSettings.from_values({"latent-space": "z"})
    with pytest.raises(UserError, match="max-steps"):
        DragSettings.from_values({"max-steps": 0})


def test_job_model_progress_follows_protocol_events():
    m = JobModel(DragSettings(max_steps=100), [Arrow((1, 1), (5, 5))])
    assert m.progress() == (0.0, "DragGAN: connecting to tcp://127.0.0.1:5557")
    m.connected({"models": ["x"]})
    m.on_event("queued", {"job": "j", "position": 2}, {})
    assert "position 2" in m.progress()[1]
    m.on_event("progress", {"stage": "invert", "step": 59, "total": 60}, {})
    f, text = m.progress()
    assert text == "DragGAN: inverting 60/60, part 1 of 2" and f == pytest.approx(0.4 * 0.5)
    m.on_event("progress", {"stage": "tune", "step": 9, "total": 80}, {})
    f, text = m.progress()
    assert text == "DragGAN: tuning 10/80, part 2 of 2" and f == pytest.approx(0.4 * (0.5 + 0.5 / 8))
    m.opened({"session": "s"})
    m.on_event("progress", {"stage": "drag", "step": 4, "total": 100, "distance": 8.0,
                            "handles": [[2, 2]]}, {"preview": "P1"})
    m.on_event("progress", {"stage": "drag", "step": 9, "total": 100, "distance": 2.0},
               {"preview": "P2"})
    f, text = m.progress()
    assert text == "DragGAN: step 9/100, 2.0 px to go"
    assert f == pytest.approx(0.4 + 0.6 * 0.75)       # distance-based: 1 - 2/8
    assert m.take_preview() == "P2" and m.take_preview() is None
    assert m.handles == [[2, 2]] and m.previews_seen == 2
    assert m.request_stop("keep") and not m.request_stop("keep")
    assert m.request_stop("discard") is False and m.stop_requested == "discard"
    assert "(stopping)" in m.progress()[1]


# ---------------------------------------------------------------------------
# The run (GIMP's loop over the shared task) against a scripted client
# ---------------------------------------------------------------------------


class Msg:
    def __init__(self, fields, image=None):
        self.fields, self.image = fields, image

    def get(self, k, d=None):
        return self.fields.get(k, d)

    def __getitem__(self, k):
        return self.fields[k]


class FakeJob:
    def __init__(self, type_, fields):
        self.type, self.fields = type_, fields
        self.done, self.result, self.error = False, None, None
        self.session = None


class FakeClient:
    """Plays a script: for each request type, a list of (kind, fields, images) events."""

    def __init__(self, endpoint, script, **kw):
        self.endpoint, self.script, self.kw = endpoint, script, kw
        self.sent, self.cancelled, self.closed = [], [], False
        self.limits = None
        self.queue = []
        self.on_cancel = None

    def start(self, type_, fields=None, images=None):
        job = FakeJob(type_, fields or {})
        self.sent.append((type_, fields, images))
        for ev in self.script.get(type_, []):
            self.queue.append((job, ev))
        return job

    def start_open_session(self, image, roi=None, invert=None, model=None, align=None,
                           reconstruction=None):
        job = self.start("open_session", {"roi": roi, "invert": invert, "model": model,
                                          "align": align, "reconstruction": reconstruction},
                         {"image": image})
        job.session = SimpleNamespace(id="sess-1")
        return job

    def start_drag(self, session, points, mask=None, **params):
        self.drag_args = (session, points, mask, params)
        return self.start("drag", {"points": points, "params": params}, {"mask": mask})

    def cancel(self, job, wait=True):
        self.cancelled.append(job.type)
        if self.on_cancel:
            self.on_cancel(self, job)

    def poll(self, timeout_ms=0):
        out = []
        if self.queue:
            job, (kind, fields, images) = self.queue.pop(0)
            ev = SimpleNamespace(job=job, kind=kind, fields=fields, images=images or {},
                                 error=None)
            if kind == "result":
                job.result = Msg(fields, images.get("image") if images else None)
                job.done = True
            elif kind == "error":
                job.error = fields
                ev.error = fields
                job.done = True
            out.append(ev)
        else:
            time.sleep(timeout_ms / 1000.0 / 4)
        return out

    def close(self):
        self.closed = True


def make_request(w=8, h=6):
    return Image(bytes((i * 3) % 256 for i in range(w * h * 4)), w, h, 4)


def good_script(w=8, h=6, steps=3):
    result = Image(bytes([7]) * (w * h * 4), w, h, 4)
    drag = [("queued", {"job": "j2", "position": 0}, None)]
    for s in range(steps):
        drag.append(("progress", {"stage": "drag", "step": s, "total": 50,
                                  "distance": 5.0 - s},
                     {"preview": Image(bytes(12), 2, 2, 3)}))
    drag.append(("result", {"steps": steps, "stop": "converged", "distance": 0.4,
                            "handles": [[5, 5]]}, {"image": result}))
    return {
        "hello": [("result", {"models": ["toy"], "loaded_model": "toy",
                              "limits": {"max_points": 4}}, None)],
        "open_session": [("progress", {"stage": "invert", "step": 0, "total": 2}, None),
                         ("result", {"session": "sess-1"}, None)],
        "drag": drag,
        "close_session": [("result", {"session": "sess-1"}, None)],
    }


class RecUi(run.NullUi):
    def __init__(self, stop=None, stop_after=0):
        self.texts, self.previews, self.stop, self.stop_after = [], [], stop, stop_after
        self.pumps = 0

    def progress(self, f, text):
        self.texts.append((f, text))

    def preview(self, img):
        self.previews.append(img)

    def pump(self):
        self.pumps += 1

    def stop_requested(self):
        return self.stop if self.pumps >= self.stop_after else None


def run_fake(script, settings=None, ui=None, mask=None, arrows=None, **kw):
    clients = []

    def factory(endpoint, **ckw):
        c = FakeClient(endpoint, script, **ckw)
        clients.append(c)
        return c
    settings = settings or DragSettings(inversion="fast", max_steps=50)
    arrows = arrows or [Arrow((1, 1), (5, 5))]
    mask = mask or MaskInfo(None, 8, 6)
    task = run.make_task(settings, arrows, make_request(), mask, client_factory=factory, **kw)
    try:
        return task, run.drive(task, ui or RecUi()), clients[0]
    except UserError as e:
        e.client = clients[0] if clients else None
        e.task = task
        raise


def test_run_success_sends_points_mask_params_and_closes():
    ui = RecUi()
    mask = make_mask(bytes([255] * 24 + [0] * 24), 8, 6)
    r, out, c = run_fake(good_script(), ui=ui, mask=mask)
    assert out.steps == 3 and out.stop == "converged" and out.image.width == 8
    assert [t for t, _, _ in c.sent] == ["hello", "open_session", "drag", "close_session"]
    assert c.sent[1][1]["invert"] == {"method": "pti", "quality": "fast"}
    assert c.sent[1][1]["align"] == "auto"
    session, points, mask_img, params = c.drag_args
    assert points == [{"handle": [1, 1], "target": [5, 5]}]
    assert mask_img.channels == 1 and bytes(mask_img.data) == mask.data
    assert params["max_steps"] == 50 and params["preview_every"] > 0
    assert c.closed and c.kw["timeout"] == session_timeout()
    texts = [t for _, t in ui.texts]
    assert texts[0].startswith("DragGAN: connecting")
    assert any("inverting" in t for t in texts) and any("step 2/50" in t for t in texts)
    assert texts[-1] == "DragGAN: converged after 3 steps, 0.4 px from the targets"
    assert len(ui.previews) >= 1 and ui.pumps > 0
    assert r.model.phase == "done"


def session_timeout():
    return model.CONNECT_TIMEOUT


def test_run_daemon_unavailable_is_a_user_error_naming_the_start_command():
    script = {"hello": [("error", DaemonUnavailable("tcp://127.0.0.1:1"), None)]}
    with pytest.raises(UserError) as e:
        run_fake(script)
    assert "dragd serve" in str(e.value) and "tcp://127.0.0.1:1" in str(e.value)
    assert e.value.task.model.phase == "failed"
    assert e.value.client.closed


def test_run_model_not_on_daemon_and_too_many_points():
    script = good_script()
    with pytest.raises(UserError, match="has no model 'cats'.*toy"):
        run_fake(script, settings=DragSettings(model="cats"))
    arrows = [Arrow((1, 1), (2, 2))] * 5
    with pytest.raises(UserError, match="5 strokes.*at most 4"):
        run_fake(good_script(), arrows=arrows)


def test_run_remote_error_is_shown():
    script = good_script()
    script["drag"] = [("error", RemoteError("bad_points", "the handle of point 1 lies "
                                            "outside"), None)]
    with pytest.raises(UserError, match="refused the request: the handle of point 1"):
        run_fake(script)


def test_run_stop_keep_cancels_and_keeps_the_partial_drag():
    script = good_script(steps=40)
    drag = script["drag"]
    final = drag.pop()
    script["drag"] = drag[:3]              # the daemon would go on; stop arrives first

    def on_cancel(client, job):
        client.queue.append((job, ("result", dict(final[1], stop="cancelled", steps=2),
                                   final[2])))
    ui = RecUi(stop="keep", stop_after=6)
    clients = []

    def factory(endpoint, **kw):
        c = FakeClient(endpoint, script, **kw)
        c.on_cancel = on_cancel
        clients.append(c)
        return c
    task = run.make_task(DragSettings(), [Arrow((1, 1), (5, 5))], make_request(),
                         MaskInfo(None, 8, 6), client_factory=factory)
    out = run.drive(task, ui)
    assert clients[0].cancelled == ["drag"] and out.stop == "cancelled" and out.steps == 2


def test_run_cancel_discard_raises_cancelled():
    script = good_script()
    script["drag"] = script["drag"][:2]

    def factory(endpoint, **kw):
        c = FakeClient(endpoint, script, **kw)
        c.on_cancel = lambda cl, job: cl.queue.append(
            (job, ("error", RemoteError("cancelled"), None)))
        return c
    task = run.make_task(DragSettings(), [Arrow((1, 1), (5, 5))], make_request(),
                         MaskInfo(None, 8, 6), client_factory=factory)
    with pytest.raises(Cancelled):
        run.drive(task, RecUi(stop="discard", stop_after=4))


def test_run_time_limit_during_inversion_fails_with_advice():
    script = good_script()
    script["open_session"] = [("progress", {"stage": "invert", "step": 0, "total": 9}, None)]
    now = [0.0]

    def clock():
        now[0] += 0.5
        return now[0]
    with pytest.raises(UserError, match="time limit of 5 s ran out while the daemon was "
                       "inverting"):
        run_fake(script, settings=DragSettings(time_limit=5), clock=clock)


def test_run_stop_without_answer_is_bounded():
    script = good_script()
    script["drag"] = script["drag"][:2]
    now = [0.0]

    def clock():
        now[0] += 0.25
        return now[0]
    with pytest.raises(UserError, match="did not stop the drag within 3 s"):
        run_fake(script, ui=RecUi(stop="keep", stop_after=3), clock=clock, stop_grace=3.0)


def test_run_bad_endpoint():
    def factory(endpoint, **kw):
        raise ValueError("Invalid argument")
    task = run.make_task(DragSettings(endpoint="tcp://nohost"), [Arrow((1, 1), (2, 2))],
                         make_request(), MaskInfo(None, 8, 6), client_factory=factory)
    with pytest.raises(UserError, match="Cannot use the daemon address 'tcp://nohost'"):
        run.drive(task)


# ---------------------------------------------------------------------------
# The whole run on a layer with stand-ins: one undo group, previews removed
# ---------------------------------------------------------------------------


def scripted(script):
    """A task factory for run_on_layer whose client plays ``script``."""
    def factory(endpoint, **kw):
        return FakeClient(endpoint, script, **kw)
    return lambda *a, **kw: run.make_task(*a, client_factory=factory, **kw)


def test_run_on_layer_writes_one_undo_group_after_the_drag_with_no_preview_layer():
    """Previews go to the dialog (the HostUi), never into the image: the only image changes
    are the result's, in one undo group opened when the result is there; the selection's
    box is the region sent; the result is the daemon's image."""
    img, art = make_scene(offsets=(10, 6), lw=8, lh=6)
    img.selection.rect(10, 6, 4, 6)
    h = host()
    arrows = [Arrow((1, 1), (3, 2))]
    mask = h.read_mask(img, art)
    before = bytes(art.buffer.data)
    script = good_script()
    daemon_result = script["drag"][-1][2]["image"]
    sent = []
    factory = scripted(script)

    def recording(*a, **kw):
        t = factory(*a, **kw)
        sent.append(t)
        return t
    dialog = RecUi()
    dialog.show_preview = dialog.previews.append
    dialog.test_step = lambda *a: None
    dialog.close = lambda: None
    out, new = run.run_on_layer(h, DragSettings(), img, art, arrows, mask,
                                dialog_factory=lambda: dialog, task_factory=recording)
    assert img.groups == 1 and img.depth == 0
    assert img.log and all(depth == 1 for _, depth in img.log), img.log
    assert [c for c, _ in img.log][:2] == ["Layer.new", "insert_layer"]
    assert "scale" not in [c for c, _ in img.log]
    names = [lyr.name for lyr in img.layers]
    assert names == ["art (dragged)", "art", "bg"]
    assert bytes(art.buffer.data) == before
    assert bytes(new.buffer.data)[0::4] == bytes(daemon_result.data)[0::4]
    assert bytes(new.buffer.data)[3::4] == before[3::4]            # the source's alpha
    assert sent[0].region == {"x": 0, "y": 0, "width": 4, "height": 6}
    assert h.result_tag(new) == {"region": sent[0].region}
    assert len(dialog.previews) >= 1
    calls = [c[0] for c in h.Gimp.calls]
    assert calls[0] == "init" and calls[-1] == "end" and "update" in calls
    assert img.selected_layers == [new]


def test_a_rerun_on_a_result_keeps_its_region_so_the_daemon_continues_the_edit():
    """After a run with a selection, a run on the result with no selection (or a smaller
    one) sends the same region: the daemon sees its own result with the same region and
    continues instead of inverting again."""
    img, art = make_scene(offsets=(0, 0), lw=8, lh=6)
    img.selection.rect(2, 1, 4, 4)
    h = host()
    sent = []
    factory = scripted(good_script())

    def recording(*a, **kw):
        t = factory(*a, **kw)
        sent.append(t.region)
        return t
    arrows = [Arrow((3, 2), (4, 3))]
    _, first = run.run_on_layer(h, DragSettings(), img, art, arrows, h.read_mask(img, art),
                                task_factory=recording)
    img.selection.none()
    run.run_on_layer(h, DragSettings(), img, first, arrows, h.read_mask(img, first),
                     task_factory=recording)
    img.selection.rect(3, 2, 2, 2)
    run.run_on_layer(h, DragSettings(), img, first, arrows, h.read_mask(img, first),
                     task_factory=recording)
    # a point outside the earlier region: that region cannot hold the drag
    run.run_on_layer(h, DragSettings(), img, first, [Arrow((3, 2), (7.5, 5))],
                     h.read_mask(img, first), task_factory=recording)
    box = {"x": 2, "y": 1, "width": 4, "height": 4}
    assert sent[:3] == [box, box, box]
    assert sent[3] == {"x": 3, "y": 2, "width": 2, "height": 2}


def test_run_on_layer_error_changes_nothing_and_opens_no_group():
    img, art = make_scene(lw=8, lh=6)
    script = {"hello": [("error", DaemonUnavailable("tcp://127.0.0.1:9"), None)]}
    with pytest.raises(UserError, match="dragd serve"):
        run.run_on_layer(host(), DragSettings(), img, art, [Arrow((1, 1), (3, 2))],
                         MaskInfo(None, 8, 6), task_factory=scripted(script))
    assert img.groups == 0 and img.log == [] and len(img.layers) == 2


def test_run_on_layer_removes_previews_earlier_versions_left_inside_the_group():
    img, art = make_scene(lw=8, lh=6)
    h = host()
    stale = Layer(img, "old preview", 8, 6, "RGBA")
    stale.parasites[model.PREVIEW_PARASITE] = object()
    img.layers.insert(0, stale)
    run.run_on_layer(h, DragSettings(live_preview=False), img, art, [Arrow((1, 1), (3, 2))],
                     MaskInfo(None, 8, 6), task_factory=scripted(good_script()))
    assert stale not in img.layers and img.groups == 1
    assert all(depth == 1 for _, depth in img.log)


# ---------------------------------------------------------------------------
# The run against a real dragd server (NullBackend) on 127.0.0.1
# ---------------------------------------------------------------------------


@pytest.fixture
def null_server():
    from dragd.daemon.service.backend import NullBackend
    from dragd.daemon.service.server import Server, ServerConfig

    srv = Server(NullBackend(), ServerConfig(endpoint="tcp://127.0.0.1:0",
                                             shutdown_timeout=3.0)).start()
    yield srv
    srv.stop()


def test_run_with_a_real_server(null_server):
    w, h = 12, 10
    src = Image(bytes((i * 5) % 256 for i in range(w * h * 4)), w, h, 4)
    ui = RecUi()
    out = run.run_drag(DragSettings(endpoint=null_server.endpoint, model=""),
                          [Arrow((2.5, 3.0), (6.0, 4.0))], src,
                          make_mask(bytes([255] * 60 + [0] * 60), w, h), ui)
    assert (out.image.width, out.image.height) == (w, h)
    assert bytes(out.image.data) == bytes(src.data)       # NullBackend: unchanged
    assert out.stop == "converged" and ui.texts[-1][1].startswith("DragGAN: converged")


def test_run_daemon_down_fails_fast_with_the_start_command():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        run.run_drag(DragSettings(endpoint="tcp://127.0.0.1:%d" % port),
                     [Arrow((1, 1), (2, 2))], make_request(), MaskInfo(None, 8, 6),
                     connect_timeout=1.0)
    elapsed = time.monotonic() - t0
    assert "dragd serve" in str(e.value) and str(port) in str(e.value)
    assert elapsed < 4.0, elapsed


def test_probe_daemon_gives_the_model_list_or_a_fallback_within_its_timeout(null_server):
    probe = run.probe_daemon(null_server.endpoint)
    line = probe.describe()
    assert line.startswith("Daemon at %s" % null_server.endpoint) and "null" in line
    items, note = model.model_choices("", probe.models, probe.loaded_model)
    assert items == [("", "The daemon's loaded model (null)"), ("null", "null")]
    assert note == ""
    t0 = time.monotonic()
    probe = run.probe_daemon("tcp://127.0.0.1:1", timeout=0.5)
    assert "not reachable" in probe.describe() and "dragd serve" in probe.describe()
    assert time.monotonic() - t0 < 3.0
    assert probe.error and probe.models == []


def test_model_choices_keep_the_last_used_model_and_say_why():
    # unreachable: the default and the last used model, with words saying so
    items, note = model.model_choices("ffhq", None, None)
    assert items == [("", "The model the daemon has loaded"), ("ffhq", "ffhq")]
    assert "could not be fetched" in note and "'ffhq'" in note
    items, note = model.model_choices("", None, None)
    assert [v for v, _ in items] == [""] and "loaded model is used" in note
    # the last used model is not on this daemon: kept, marked, and said
    items, note = model.model_choices("gone", ["a", "b"], "a")
    assert items == [("", "The daemon's loaded model (a)"), ("a", "a"), ("b", "b"),
                     ("gone", "gone (not on this daemon)")]
    assert "not on this daemon" in note


class _FakeWidget:
    def __init__(self, *a, **kw):
        self.children, self.calls, self.items, self.active = [], [], [], None

    def __getattr__(self, name):          # setters the dialog calls for looks
        return lambda *a, **kw: self.calls.append(name)

    def pack_start(self, child, *a):
        self.children.append(child)

    def get_children(self):
        return list(self.children)

    def reorder_child(self, child, at):
        self.children.remove(child)
        self.children.insert(at, child)

    def append(self, value, label):
        self.items.append((value, label))

    def set_active_id(self, value):
        self.active = value if any(v == value for v, _ in self.items) else None
        return self.active is not None

    def get_active_id(self):
        return self.active


class _FakeLabel(_FakeWidget):
    def __init__(self, label=""):
        super().__init__()
        self.text = label

    @classmethod
    def new_with_mnemonic(cls, text):
        return cls(text)


class _FakeGtk:
    ComboBoxText, Box, Label = _FakeWidget, _FakeWidget, _FakeLabel
    Orientation = SimpleNamespace(HORIZONTAL=0, VERTICAL=1)
    ResponseType = SimpleNamespace(OK=-5)


class _FakeConfig:
    def __init__(self, **values):
        self.values = values

    def get_property(self, name):
        return self.values.get(name)

    def set_property(self, name, value):
        self.values[name] = value

    def find_property(self, name):
        return SimpleNamespace(get_nick=lambda: "_Model", get_blurb=lambda: "blurb",
                               value_type=SimpleNamespace(name="gchararray"))


class _FakeProcedureDialog(_FakeWidget):
    choose = None          # what the "user" picks in the Model list before the answer
    answer = True

    def __init__(self, **kw):
        super().__init__()
        self.area = _FakeWidget()
        self.filled = None
        self.labels = {}

    def get_label(self, wid, text, *a):
        self.labels[wid] = _FakeLabel(text)
        self.labels[wid].get_parent = lambda: self.area
        return self.labels[wid]

    def fill(self, ids):
        self.filled = list(ids)
        # GIMP's content area holds a widget of its own before the filled ones
        self.area.children = ["gimp's own"] + [self.labels.get(i, "widget:" + i) for i in ids]

    def get_content_area(self):
        return self.area

    def combo(self):
        return self.area.children[4].children[0].children[1]

    def run(self):
        if self.choose is not None:
            self.combo().set_active_id(self.choose)
        return self.answer


def test_settings_dialog_offers_the_daemons_models_and_saves_the_choice(monkeypatch):
    """The Model argument is a list of the daemon's models (asked to go after the info
    lines, before the other arguments); the last used model is chosen when the dialog opens and the
    chosen one goes into the config on OK, not on Cancel. The test hook chooses in the
    list as a user would."""
    monkeypatch.setattr(ui, "_gtk", lambda: (_FakeGtk, SimpleNamespace(timeout_add=None)))
    monkeypatch.delenv("DRAGD_GIMP_TEST_DIALOG", raising=False)
    made = []

    def dialog(**kw):
        made.append(_FakeProcedureDialog(**kw))
        return made[-1]
    GimpUi = SimpleNamespace(ProcedureDialog=dialog)
    config = _FakeConfig(model="b")
    models = model.model_choices("b", ["a", "b"], "a")
    assert ui.settings_dialog(GimpUi, None, config, ["info", "more", "daemon"],
                              ["model", "max-steps"], models=models)
    assert made[-1].filled == ["dragd-info-0", "dragd-info-1", "dragd-info-2", "max-steps"]
    assert made[-1].area.children[5] == "widget:max-steps"      # the list sits before it
    assert made[-1].combo().items == [("", "The daemon's loaded model (a)"), ("a", "a"),
                                      ("b", "b")]
    assert config.values["model"] == "b"                         # preselected, kept
    monkeypatch.setattr(_FakeProcedureDialog, "choose", "")
    monkeypatch.setattr(_FakeProcedureDialog, "answer", False)
    assert not ui.settings_dialog(GimpUi, None, config, ["i", "j", "k"], ["model"],
                                  models=models)
    assert config.values["model"] == "b"                         # Cancel: unchanged
    monkeypatch.setattr(_FakeProcedureDialog, "answer", True)
    assert ui.settings_dialog(GimpUi, None, config, ["i", "j", "k"], ["model"],
                                  models=models)
    assert config.values["model"] == ""                          # the loaded model
    ui._test_answer(made[-1], config, ["model=a"], 1, made[-1].combo())
    assert made[-1].combo().get_active_id() == "a"


def test_gimp_plugin_package_imports_nothing_from_gimp_or_zmq():
    """plugin.py must register even when pyzmq is missing (it reports it when run); the
    model, the host glue and the run import neither gi nor zmq."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import dragd.gimp_plugin, dragd.gimp_plugin.model, dragd.gimp_plugin.host, "
            "dragd.gimp_plugin.run\n"
            "bad = [m for m in ('zmq', 'gi', 'msgpack') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_entry_script_paths(tmp_path):
    """The installed entry script imports dragd.gimp_plugin from its own folder (first on
    sys.path) and searches a site-packages folder beside it last (plugin_common says
    where: the folder the missing-pyzmq message names)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import dragd.gimp_plugin as pkg
    import dragd.plugin_common as common

    root = tmp_path / "dragd-gimp"
    (root / "dragd" / "gimp_plugin").mkdir(parents=True)
    (root / "site-packages").mkdir()
    shutil.copytree(Path(common.__file__).parent, root / "dragd" / "plugin_common")
    shutil.copy(Path(pkg.__file__).parent / "entry.py", root / "dragd-gimp.py")
    (root / "dragd" / "gimp_plugin" / "__init__.py").write_text("")
    (root / "dragd" / "gimp_plugin" / "plugin.py").write_text(
        "import json, sys\n"
        "def main(argv):\n"
        "    print(json.dumps({'path': sys.path, 'file': __file__, 'argv': argv}))\n")
    out = subprocess.run([sys.executable, "-S", str(root / "dragd-gimp.py"), "-gimp", "x"],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    info = json.loads(out.stdout)
    assert info["file"] == str(root / "dragd" / "gimp_plugin" / "plugin.py")
    assert info["path"][0] == str(root)
    assert info["path"][-1] == str(root / "site-packages")
    assert info["argv"][1:] == ["-gimp", "x"]


def test_large_layer_helpers_are_fast():
    """Layers of any size: the pure-Python work per run is C-speed slicing and counting."""
    w, h = 3000, 2000
    src = bytes(range(256)) * (w * h * 4 // 256)
    soft = (bytes([0]) * (w * h // 2) + bytes([128]) * (w * 20)       # a 20-row feather
            + bytes([255]) * (w * h // 2 - w * 20))
    t0 = time.perf_counter()
    m = make_mask(soft, w, h)
    out = merge_alpha(bytes(w * h * 3), 3, src)
    elapsed = time.perf_counter() - t0
    assert m.soft and len(out) == len(src) and out[3::4] == src[3::4]
    assert elapsed < 3.0, elapsed


def test_result_layer_gets_a_copy_of_the_source_layer_mask():
    img, art = make_scene(lw=4, lh=2)
    art.mask = Layer(img, "mask", 4, 2, "Y")
    art.mask.buffer = Buffer(4, 2, 1)
    art.mask.buffer.data[:] = bytes([0, 50, 100, 255, 255, 0, 7, 9])
    h = host()
    src = h.read_pixels(art)
    new = h.write_result(img, art, src)
    assert bytes(new.mask.buffer.data) == bytes([0, 50, 100, 255, 255, 0, 7, 9])
    assert bytes(art.mask.buffer.data) == bytes([0, 50, 100, 255, 255, 0, 7, 9])


def test_run_hands_curve_keys_to_the_client(tmp_path, monkeypatch):
    """(keys_dir, curve_for and is_loopback_endpoint: tests/test_plugin_common.py)"""
    import zmq

    from dragd.plugin_common.keys import curve_for
    from dragd.protocol.curvekeys import format_key_file

    monkeypatch.setenv("DRAGD_KEYS_DIR", str(tmp_path))
    spub, _ = zmq.curve_keypair()
    cpub, csec = zmq.curve_keypair()
    (tmp_path / "server.key").write_text(format_key_file(spub))
    (tmp_path / "client.key_secret").write_text(format_key_file(cpub, csec))
    cfg, _ = curve_for("tcp://10.0.0.5:5557")
    assert cfg.server_public_key == spub and cfg.secret_key == csec
    # the run hands the keys to the client, and adds the hint when it cannot connect
    seen = {}

    def factory(endpoint, **kw):
        seen.update(kw)
        return FakeClient(endpoint, {"hello": [
            ("error", DaemonUnavailable(endpoint), None)]}, **kw)
    task = run.make_task(DragSettings(endpoint="tcp://10.0.0.5:5557"),
                         [Arrow((1, 1), (2, 2))], make_request(), MaskInfo(None, 8, 6),
                         client_factory=factory)
    with pytest.raises(UserError) as e:
        run.drive(task)
    assert seen["curve"] is cfg or seen["curve"].public_key == cpub
    assert "dragd serve" in str(e.value) and "CurveZMQ keys" in str(e.value)
