"""Fast unit tests of the Krita plug-in without Krita: the model (shape -> arrow
conversion with resolution, transforms and layer offsets; selection -> mask; BGRA <-> RGBA;
compositing; settings; the job model's wording), the host glue against small stand-ins for
Krita's libkis objects (tests/host_fakes.py), and the run function's orchestration (DragRun
driving the shared task) against stand-ins and a real dragd server on 127.0.0.1 (a
scripted backend). The shared task itself: tests/test_plugin_task.py.

The SVG strings below are what Krita 5.2.9's Shape.toSvg() returned for shapes added with
VectorLayer.addShapesFromSvg() in a 144 dpi document (tests/test_krita_host.py proves the
whole path in a real Krita).
"""
from __future__ import annotations

import os
import time

import pytest

from dragd.krita_plugin import host, model
from dragd.krita_plugin.host import KritaHost
from dragd.krita_plugin.model import (Affine, Arrow, DragSettings, JobModel, LayerRect,
                                      ShapeInfo, UserError, arrows_from_shapes,
                                      bgra_to_rgba,
                                      parse_path_data, parse_transform, rgba_to_bgra,
                                      splice_by_mask, svg_subpaths)
from dragd.krita_plugin.run import DragRun, make_task
from daemon_fixture import free_endpoint
from dragd.protocol import Image
from host_fakes import QT, FakeNode, FakeSelection, FakeDoc, FakeShape
from stub_backend import RecordingBackend, serving

# What Krita 5.2.9 wrote (144 dpi: one local unit = 0.5 pt = 1 px).
SVG_LINE = ('<path id="shape0" transform="matrix(0.5 0 0 0.5 10 5)" fill="#000000" '
            'stroke="#0000ff" stroke-width="1" stroke-linecap="butt" stroke-linejoin="miter" '
            'stroke-miterlimit="2" d="M0 0L20 20" sodipodi:nodetypes="cc"/>')
SVG_RECT = ('<rect id="shape0" transform="matrix(0.5 0 0 0.5 0.5 1)" fill="#ff0000" '
            'stroke-opacity="0" stroke="#000000" stroke-width="0" width="5" height="6"/>')
SVG_ELLIPSE = ('<ellipse id="shape0" transform="matrix(0.5 0 0 0.5 3.5 4)" rx="3" ry="2" '
               'cx="3" cy="2" fill="#000000"/>')
SVG_POLYLINE = ('<path id="shape0" transform="matrix(0.5 0 0 0.5 0.5 0.5)" fill="none" '
                'd="M0 0L4 4L8 0" sodipodi:nodetypes="ccc"/>')
SVG_CURVE = ('<path id="shape0" transform="matrix(0.5 0 0 0.5 0.5 0.5)" fill="none" '
             'd="M0 0C4 4 9 4 19 0" sodipodi:nodetypes="cc"/>')
SVG_TWO = ('<path id="shape0" transform="matrix(0.5 0 0 0.5 1 1)" fill="none" '
           'd="M0 0L10 5M13 8L17 12" sodipodi:nodetypes="cccc"/>')
SVG_GROUP = ('<g id="group0" transform="matrix(0.5 0 0 0.5 2.5 2.5)" fill="none">\n  <path '
             'id="shape0" fill="#000000" stroke="#000000" d="M0 0L10 0" '
             'sodipodi:nodetypes="cc"/>\n </g>')


HALF = Affine(0.5, 0, 0, 0.5, 0, 0)


def shape(svg, e, f, a=0.5):
    return ShapeInfo(svg, Affine(a, 0, 0, a, e, f))


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


def test_path_data_absolute_relative_and_implicit_commands():
    sp = parse_path_data("M 2 2 l 10 5 m 3 3 l 4 4 z")
    assert [(s.points, s.closed) for s in sp] == [([(2, 2), (12, 7)], False),
                                                   ([(15, 10), (19, 14)], True)]
    (a,) = parse_path_data("M1,1 5,5 H9 v-2 h1 V0")       # pairs after M are line-tos
    assert a.points == [(1, 1), (5, 5), (9, 5), (9, 3), (10, 3), (10, 0)]
    (c,) = parse_path_data("M0 0C4 4 9 4 19 0s1 1 2 2Q0 0 3 3t1 1")
    assert c.points == [(0, 0), (19, 0), (21, 2), (3, 3), (4, 4)]
    after_z = parse_path_data("M1 1L2 2ZL5 5")
    assert after_z[0].closed and after_z[1].points == [(1, 1), (5, 5)]
    assert parse_path_data("m1e1-2.5.5.5") == parse_path_data("M10 -2.5 L10.5 -2")
    with pytest.raises(ValueError):
        parse_path_data("M0 0 L 1")
    with pytest.raises(ValueError):
        parse_path_data("0 0 L 1 1")


def test_transforms_compose_like_svg():
    assert parse_transform("matrix(0.5 0 0 0.5 10 5)").map((20, 20)) == (20, 15)
    assert parse_transform("translate(5,5) scale(2)").map((1, 1)) == (7, 7)   # scale first
    x, y = parse_transform("rotate(90)").map((1, 0))
    assert abs(x) < 1e-12 and abs(y - 1) < 1e-12
    x, y = parse_transform("rotate(180, 10, 10)").map((11, 10))
    assert abs(x - 9) < 1e-12 and abs(y - 10) < 1e-12
    assert Affine.from_qtransform(QT(1, 2, 3, 4, 5, 6)).map((1, 1)) == (9, 12)
    t = Affine(2, 0, 0, 2, 1, 1).then(Affine(1, 0, 0, 1, 10, 0))
    assert t.map((1, 1)) == (13, 3)


def test_shape_svg_of_krita_lines_paths_and_other_shapes():
    (sp, t), = svg_subpaths(SVG_LINE)[0]
    assert sp.points == [(0, 0), (20, 20)] and t == Affine()    # own transform left out
    subs, other = svg_subpaths(SVG_RECT)
    assert subs == [] and other == ["rect"]
    assert svg_subpaths(SVG_ELLIPSE) == ([], ["ellipse"])
    (sp, t), = svg_subpaths(SVG_GROUP)[0]                       # child of the group
    assert sp.points == [(0, 0), (10, 0)] and t == Affine()
    nested = ('<g transform="matrix(1 0 0 1 0 0)"><g transform="translate(3 4)"><line x1="0" '
              'y1="0" x2="1" y2="0"/></g><polygon points="0,0 1,1 2,0"/></g>')
    subs, other = svg_subpaths(nested)
    assert subs[0][1].map((1, 0)) == (4, 4) and subs[1][0].closed
    weird = '<path foo:bar="1" d="M0 0L1 1"/>'                   # unknown prefix
    assert svg_subpaths(weird)[0][0][0].points == [(0, 0), (1, 1)]


def test_line_shape_to_layer_pixels_with_resolution_transform_and_offset():
    # 144 dpi: the Krita line from (20, 10) to (40, 30) document pixels.
    rect = LayerRect("art", 8, 4, 40, 30)
    arrows, notes = arrows_from_shapes([shape(SVG_LINE, 10, 5)], 144, 144, rect)
    assert arrows == [Arrow((12.0, 6.0), (32.0, 26.0))] and notes == []
    # The vector layer moved by (10, 5) px: absoluteTransformation() carries it (the
    # shape's own transform in toSvg() does not change).
    arrows, _ = arrows_from_shapes([shape(SVG_LINE, 15, 7.5)], 144, 144,
                                   LayerRect("art", 8, 4, 50, 40))
    assert arrows == [Arrow((22.0, 11.0), (42.0, 31.0))]
    # 300 dpi (docs/HOSTS.md): d="M0 0L100 50", matrix(0.24 0 0 0.24 4.8 2.4) -> px
    # (20, 10) -> (120, 60).
    svg = '<path transform="matrix(0.24 0 0 0.24 4.8 2.4)" d="M0 0L100 50"/>'
    arrows, _ = arrows_from_shapes([ShapeInfo(svg, Affine(0.24, 0, 0, 0.24, 4.8, 2.4))],
                                   300, 300, LayerRect("a", 0, 0, 200, 100))
    (a,) = arrows
    assert a.handle == pytest.approx((20, 10)) and a.target == pytest.approx((120, 60))
    # Anisotropic resolution: x and y scale separately.
    arrows, _ = arrows_from_shapes([ShapeInfo('<path d="M0 0L72 72"/>', Affine())],
                                   72, 144, LayerRect("a", 0, 0, 200, 200))
    assert arrows == [Arrow((0, 0), (72, 144))]


def test_multi_point_paths_curves_groups_and_skipped_shapes():
    rect = LayerRect("art", 0, 0, 64, 48)
    shapes = [shape(SVG_POLYLINE, 0.5, 0.5), shape(SVG_CURVE, 0.5, 0.5),
              shape(SVG_TWO, 1, 1), shape(SVG_GROUP, 2.5, 2.5), shape(SVG_RECT, 0.5, 1),
              shape(SVG_ELLIPSE, 3.5, 4),
              shape('<path transform="matrix(0.5 0 0 0.5 0 0)" d="M0 0L4 0L4 4Z"/>', 0, 0)]
    arrows, notes = arrows_from_shapes(shapes, 144, 144, rect)
    assert arrows == [Arrow((1, 1), (9, 1)),            # polyline: first -> last anchor
                      Arrow((1, 1), (20, 1)),           # curve: end points
                      Arrow((2, 2), (12, 7)), Arrow((15, 10), (19, 14)),   # two subpaths
                      Arrow((5, 5), (15, 5))]           # the line inside a group
    assert notes == ["1 closed or single-point shape ignored",
                     "2 shapes that are not lines ignored"]


def test_arrows_off_the_layer_and_no_arrows_are_clear_messages():
    rect = LayerRect("art", 30, 20, 10, 10)
    with pytest.raises(UserError, match=r"start \(handle\) of arrow 1 .* at \(20, 10\) in the "
                                        r"image, lies outside the layer 'art' \(10x10 at 30,20\)"):
        arrows_from_shapes([shape(SVG_LINE, 10, 5)], 144, 144, rect)
    with pytest.raises(UserError, match="holds no arrows.*Line tool"):
        arrows_from_shapes([shape(SVG_RECT, 0, 0)], 144, 144, rect)
    with pytest.raises(UserError, match="holds no arrows"):
        arrows_from_shapes([], 72, 72, rect)


def test_layer_rect_is_the_content_clipped_to_the_canvas():
    assert LayerRect.clip("a", (8, 4, 20, 10), 64, 48) == LayerRect("a", 8, 4, 20, 10)
    assert LayerRect.clip("a", (-5, -5, 10, 100), 64, 48) == LayerRect("a", 0, 0, 5, 48)
    for b in ((0, 0, 0, 0), (70, 0, 10, 10), (-20, -20, 10, 10)):
        with pytest.raises(UserError, match="empty inside the canvas"):
            LayerRect.clip("a", b, 64, 48)


# ---------------------------------------------------------------------------
# Mask and pixels
# ---------------------------------------------------------------------------


def test_bgra_rgba_conversions():
    bgra = bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert bgra_to_rgba(bgra) == bytes([3, 2, 1, 4, 7, 6, 5, 8])
    assert rgba_to_bgra(bgra_to_rgba(bgra)) == bgra
    with pytest.raises(ValueError):
        bgra_to_rgba(b"123")
    # to_rgba / merge_alpha: tests/test_plugin_common.py


def test_splice_copies_native_pixels_outside_the_selection_bit_for_bit():
    # Native pixels of any size (e.g. RGBA/U16 = 8 bytes): bit-for-bit copy outside.
    inside, outside = bytes(range(24)), bytes(range(100, 124))
    assert splice_by_mask(inside, outside, b"\x00\x07\x00", 8) == (
        outside[:8] + inside[8:16] + outside[16:])
    with pytest.raises(ValueError):
        splice_by_mask(inside, outside, b"\x00\x00", 8)


# ---------------------------------------------------------------------------
# Settings and the job model
# ---------------------------------------------------------------------------


def test_settings_validate_and_become_wire_fields():
    s = DragSettings(max_steps=40, learning_rate=0.0, lambda_mask=12.5, space="w",
                     inversion="fast", endpoint=" tcp://127.0.0.1:6000 ").validate()
    assert s.endpoint == "tcp://127.0.0.1:6000"
    params = s.drag_params()
    assert params.pop("paste") == "detail"            # keeps a photo's own pixels
    assert params.pop("method") == "dragd"           # the daemon's default drag
    assert params == {"max_steps": 40, "lr": None, "lambda_mask": 12.5, "space": "w",
                               "preview_every": 2, "preview_max_size": 256}
    assert s.invert_fields() == {"method": "pti", "quality": "fast"}
    assert DragSettings(learning_rate=0.002, live_preview=False).drag_params()["lr"] == 0.002
    assert DragSettings(live_preview=False).drag_params()["preview_every"] == 0
    for bad, pat in ((dict(max_steps=0), "step limit"), (dict(learning_rate=2), "learning"),
                     (dict(space="z"), "latent"), (dict(inversion="x"), "inversion"),
                     (dict(paste="x"), "result pixels"), (dict(align="x"), "face alignment"),
                     (dict(endpoint=""), "empty"), (dict(endpoint="localhost:5557"),
                                                    "not a ZeroMQ address")):
        with pytest.raises(UserError, match=pat):
            DragSettings(**bad).validate()


def test_settings_survive_krita_string_storage():
    s = DragSettings(model="ffhq", max_steps=77, learning_rate=0.001, lambda_mask=5.0,
                     space="w", inversion="quality", endpoint="tcp://10.0.0.2:5557",
                     live_preview=False, align="none")
    assert DragSettings.from_strings(s.to_strings()) == s
    assert DragSettings.from_strings({}) == DragSettings()
    assert DragSettings.from_strings({"max_steps": "abc"}).max_steps == 300
    assert DragSettings.from_strings({"space": "nonsense"}) == DragSettings()


def test_job_model_follows_protocol_events():
    m = JobModel(DragSettings(max_steps=10), [Arrow((1, 1), (5, 5))])
    assert m.progress() == (0.0, "Connecting to tcp://127.0.0.1:5557")
    m.connected({"device": "cpu"})
    m.on_event("queued", {"position": 2}, {})
    assert m.progress()[1] == "Waiting for the daemon (2 jobs ahead in its queue)"
    m.on_event("queued", {"position": 0}, {})
    assert m.progress()[1] == "Waiting for the daemon"
    m.on_event("progress", {"stage": "invert", "step": 4, "total": 10}, {})
    f, text = m.progress()
    assert text == "Inverting the layer 5/10, part 1 of 2" and f == pytest.approx(0.4 * 0.25)
    m.on_event("progress", {"stage": "tune", "step": 9, "total": 10}, {})
    assert m.progress()[0] == pytest.approx(0.4)
    m.opened({"session": "s"})
    preview = Image(bytes(12), 1, 3, 4)
    m.on_event("progress", {"stage": "drag", "step": 0, "total": 10, "distance": 8.0,
                            "handles": [[2, 2]]}, {"preview": preview})
    m.on_event("progress", {"stage": "drag", "step": 1, "total": 10,
                            "distance": float("nan")}, {})
    m.on_event("progress", {"stage": "drag", "step": 2, "total": 10, "distance": 2.0}, {})
    f, text = m.progress()
    assert text == "Dragging: step 2/10, 2.0 px to go"
    assert f == pytest.approx(0.4 + 0.6 * 0.75)             # the distance says 75 %
    assert m.handles == [[2, 2]] and m.take_preview() is preview and m.take_preview() is None
    assert m.request_stop("keep") and not m.request_stop("keep")
    assert m.progress()[1].endswith("(stopping)")
    assert not m.request_stop("discard") and m.stop_requested == "discard"
    m.dragged(model.Outcome(None, 3, "cancelled", 1.5))
    m.closed()
    assert m.finished and m.progress() == (
        1.0, "Done: stopped after 3 steps, 1.5 px from the targets")
    m2 = JobModel(DragSettings(), [])
    m2.failed("boom")
    assert m2.finished and m2.progress() == (0.0, "Error: boom")
    with pytest.raises(ValueError):
        m2.request_stop("later")


# ---------------------------------------------------------------------------
# The host glue against stand-ins for Krita's libkis objects (tests/host_fakes.py)
# ---------------------------------------------------------------------------


ART = (8, 4, 40, 30)       # x, y, w, h of the art layer's content


def scene(res=144.0, selection=True):
    """bg, art (content at ART), a vector layer "drag" with the line (20,10)->(40,30) px."""
    doc = FakeDoc(res=res)
    bg = FakeNode(doc, "bg")
    bg.px = bytearray(bytes([50, 50, 50, 255]) * (doc.w * doc.h))
    doc.root.addChildNode(bg, None)
    art = FakeNode(doc, "art")
    x0, y0, w, h = ART
    data = bytearray()
    for y in range(h):
        for x in range(w):
            data += bytes([x * 6 % 256, y * 8 % 256, (x * y) % 256, 255 if x < 20 else 160])
    art.setPixelData(bytes(data), x0, y0, w, h)
    doc.root.addChildNode(art, bg)
    vec = FakeNode(doc, "drag", "vectorlayer")
    s = 72.0 / res            # pt per px; the shape's local unit is 1 px
    vec.shapes_ = [FakeShape('<path d="M0 0L20 20"/>', (s, 0, 0, s, 20 * s, 10 * s)),
                   FakeShape(SVG_RECT, (0.5, 0, 0, 0.5, 0, 0))]
    doc.root.addChildNode(vec, art)
    if selection:
        doc.sel = FakeSelection(doc, 16, 8, 20, 16)
    return doc, bg, art, vec


def test_targets_active_paint_layer_active_vector_layer_or_the_drag_layer():
    doc, bg, art, vec = scene()
    h = KritaHost()
    assert h.find_targets(doc) == (art, vec)               # no active node: "drag" + below
    doc.active = bg
    assert h.find_targets(doc) == (bg, vec)                # active paint layer wins
    other = FakeNode(doc, "arrows", "vectorlayer")
    doc.root.addChildNode(other, None)
    doc.active = other
    assert h.find_targets(doc) == (art, other)             # the nearest paint layer below
    other.remove()
    doc.root.children.insert(0, other)                     # at the bottom of the stack
    other.parent = doc.root
    with pytest.raises(UserError, match="no paint layer below the arrows layer 'arrows'"):
        h.find_targets(doc)
    doc.active = None
    vec.setName("lines")
    with pytest.raises(UserError, match="2 vector layers and none is selected"):
        h.find_targets(doc)
    other.remove()
    assert h.find_targets(doc) == (art, vec)               # the only vector layer
    vec.remove()
    with pytest.raises(UserError, match="Select the paint layer to drag"):
        h.find_targets(doc)
    doc.active = art
    with pytest.raises(UserError, match="No arrows found.*'drag'"):
        h.find_targets(doc)
    grp = FakeNode(doc, "grp", "grouplayer")
    with pytest.raises(UserError, match="'grp' is a grouplayer, not a paint layer"):
        h.find_targets(doc, source=grp, vector=vec)
    with pytest.raises(UserError, match="No document"):
        h.find_targets(None)


@pytest.mark.parametrize("res", [72.0, 144.0, 300.0])
def test_host_reads_rect_pixels_arrows_and_mask_in_layer_coordinates(res):
    doc, bg, art, vec = scene(res=res)
    h = KritaHost()
    rect = h.layer_rect(doc, art)
    assert rect == LayerRect("art", *ART)
    rgba, native = h.read_pixels(doc, art, rect)
    assert native is None and len(rgba) == 40 * 30 * 4
    assert rgba[:4] == bgra_to_rgba(art.pixelData(8, 4, 1, 1))
    arrows, notes = h.read_arrows(doc, vec, rect)
    a, = arrows
    assert a.handle == pytest.approx((12, 6)) and a.target == pytest.approx((32, 26))
    assert notes == ["1 shape that is not lines ignored"]
    mask = h.read_mask(doc, rect)
    assert mask.data == doc.sel.pixelData(8, 4, 40, 30) and mask.coverage == 320 / 1200
    doc.sel = FakeSelection(doc, 0, 0, 0, 0)               # an empty Selection object
    assert h.read_mask(doc, rect).whole_layer
    doc.sel = None
    assert h.read_mask(doc, rect).whole_layer


def test_only_the_selections_box_is_read_and_the_mask_is_the_same(monkeypatch):
    """A small selection on a large layer: Krita is asked for the selection's bounding box
    (clipped to the layer), not for the layer's whole rectangle; the mask is what reading
    all of it gives, also for a selection reaching outside the layer."""
    doc, bg, art, vec = scene()
    h = KritaHost()
    rect = h.layer_rect(doc, art)                                  # (8, 4) 40x30
    for box in ((16, 8, 20, 16), (0, 0, 12, 9), (40, 30, 24, 18)):
        doc.sel = FakeSelection(doc, *box)
        asked = []
        real = doc.sel.pixelData
        monkeypatch.setattr(doc.sel, "pixelData", lambda *a: asked.append(a) or real(*a))
        mask = h.read_mask(doc, rect)
        assert mask.data == real(rect.x, rect.y, rect.width, rect.height), box
        x0, y0 = max(8, box[0]), max(4, box[1])
        assert asked == [(x0, y0, min(48, box[0] + box[2]) - x0,
                          min(34, box[1] + box[3]) - y0)], (box, asked)


def write_all(writer):
    n = 0
    while not writer.step():
        n += 1
        assert n < 10000
    return writer.layer


def test_result_layer_is_a_copy_above_the_source_written_in_bands(monkeypatch):
    """The daemon's pixels as they are (it blended them through the selection), the
    source's alpha, a band of rows per step; added in the step after the last band."""
    from dragd.krita_plugin import host as krita_host

    monkeypatch.setattr(krita_host, "BAND_BYTES", 40 * 4 * 7)          # 7 rows a step
    doc, bg, art, vec = scene()
    h = KritaHost()
    rect = h.layer_rect(doc, art)
    before = bytes(art.px)
    src, _ = h.read_pixels(doc, art, rect)
    result = Image(bytes([1, 2, 3]) * (rect.width * rect.height), rect.width, rect.height, 3)
    w = h.result_writer(doc, art, rect, result, src, None, None)
    assert not w.step()
    assert [n.name() for n in doc.root.childNodes()] == ["bg", "art", "drag"]   # not yet
    new = write_all(w)
    assert w.steps == 6                              # 30 rows, 7 a step; then the add
    assert [n.name() for n in doc.root.childNodes()] == ["bg", "art", "art (dragged)", "drag"]
    assert bytes(art.px) == before
    assert new.pixelData(8, 4, 1, 1) == bytes([3, 2, 1]) + art.pixelData(8, 4, 1, 1)[3:]
    assert new.pixelData(47, 33, 1, 1)[:3] == bytes([3, 2, 1])
    assert new.pixelData(0, 0, 1, 1) == art.pixelData(0, 0, 1, 1)     # outside the rect
    # Again on the source, then on the result: above the earlier results, one clean name.
    second = write_all(h.result_writer(doc, art, rect, result, src, None, None))
    third = write_all(h.result_writer(doc, new, rect, result, src, None, None))
    names = [n.name() for n in doc.root.childNodes()]
    assert names == ["bg", "art"] + ["art (dragged)"] * 3 + ["drag"]
    assert doc.root.childNodes()[2:5] == [new, second, third]


def test_layer_pixels_are_read_a_band_per_step(monkeypatch):
    from dragd.krita_plugin import host as krita_host

    monkeypatch.setattr(krita_host, "BAND_BYTES", 40 * 4 * 8)          # 8 rows a step
    doc, bg, art, vec = scene()
    h = KritaHost()
    rect = h.layer_rect(doc, art)
    reader = h.pixel_reader(doc, art, rect)
    steps = 0
    while not reader.step():
        steps += 1
    assert reader.steps == 4 and reader.native is None                 # 30 rows
    assert reader.rgba == h.read_pixels(doc, art, rect)[0]


def test_arrows_are_redrawn_thin_from_the_handles_new_positions():
    doc, bg, art, vec = scene(res=144.0)
    h = KritaHost()
    rect = h.layer_rect(doc, art)
    (a,), _ = h.read_arrows(doc, vec, rect)
    moved = Arrow((a.handle[0] + 3.0, a.handle[1] + 1.5), a.target)
    assert h.redraw_arrows(doc, vec, rect, [moved]) == 1
    shapes = [sh for sh in vec.shapes() if sh.visible()]
    assert len(shapes) == 2 and shapes[0].toSvg() == SVG_RECT       # the rectangle stays
    assert 'stroke-width="1"' in shapes[1].toSvg()                  # 64 px / 400, at least 1
    assert len(vec.shapes()) == 3                                   # the old line: hidden
    (b,), _ = h.read_arrows(doc, vec, rect)
    assert b.handle == pytest.approx(moved.handle) and b.target == pytest.approx(a.target)
    svg = model.arrows_svg([moved], rect, (4000, 3000))
    assert 'stroke-width="7.5"' in svg and 'marker-end="url(#dragd-head)"' in svg


def test_stale_previews_of_earlier_versions_are_removed():
    doc, bg, art, vec = scene()
    stale = FakeNode(doc, model.PREVIEW_LAYER_NAME)
    doc.root.addChildNode(stale, None)
    assert KritaHost().remove_stale_previews(doc) == 1 and stale.parent is None


@pytest.fixture(scope="module")
def server():
    backend = RecordingBackend()
    with serving(backend) as endpoint:
        yield endpoint, backend


# ---------------------------------------------------------------------------
# The run function's orchestration (DragRun) with stand-ins and the real server
# ---------------------------------------------------------------------------


def run_to_end(run, timeout=20.0):
    end = time.monotonic() + timeout
    while run.step():
        assert time.monotonic() < end
        time.sleep(0.01)


@pytest.fixture(scope="module")
def blending_server():
    """The stand-in backend blending its result through the mask, as the real daemon."""
    backend = RecordingBackend(honour_mask=True)
    with serving(backend) as endpoint:
        yield endpoint, backend


def test_run_writes_the_daemons_result_as_a_new_layer_and_sends_previews_on(blending_server):
    endpoint, backend = blending_server
    doc, bg, art, vec = scene()
    before = bytes(art.px)
    updates, finished, previews = [], [], []
    run = DragRun(KritaHost(), doc,
                  DragSettings(endpoint=endpoint, max_steps=20, inversion="fast"),
                  on_update=lambda r: updates.append((r.fraction, r.message)),
                  on_finished=finished.append, on_preview=previews.append)
    stacks = []
    assert run.start()
    end = time.monotonic() + 20
    while run.step():
        stacks.append([n.name() for n in doc.root.childNodes()])
        assert time.monotonic() < end
        time.sleep(0.01)
    assert run.state == "done", run.message
    assert finished == [run] and run.message.startswith("Done: converged after 5 steps")
    assert "(1 shape that is not lines ignored)" in run.message
    assert previews and previews[0].width == 4 and run.previews == len(previews)
    assert all(st == ["bg", "art", "drag"] for st in stacks), stacks      # no preview layer
    assert [n.name() for n in doc.root.childNodes()] == ["bg", "art", "art (dragged)", "drag"]
    assert backend.opened[-1]["roi"] == {"x": 8, "y": 4, "width": 20, "height": 16}
    # the arrow now starts where the daemon says the handle went (the stand-in: the target)
    (moved,), _ = run.host.read_arrows(doc, vec, run.rect)
    assert moved.handle == pytest.approx((32.0, 26.0)) == moved.target
    assert bytes(art.px) == before and doc.active is run.new_layer
    assert any("Dragging" in m for _, m in updates)
    # the longest UI-thread time of each kind of work, for finding what stalls Krita
    ui = {k for k in run.timings if k.startswith("ui_")}
    assert {"ui_start", "ui_read", "ui_send", "ui_poll_dragging", "ui_writer", "ui_write",
            "ui_added", "ui_tick"} <= ui, run.timings
    assert run.timings["ui_tick"] >= max(run.timings[k] for k in ui - {"ui_start"})
    # What the daemon got: the arrow in layer pixels, the selection over the layer rect.
    sent = backend.drags[-1]
    assert sent["points"] == [[[12.0, 6.0], [32.0, 26.0]]]
    assert sent["mask"] == doc.sel.pixelData(*ART)
    new = run.new_layer
    x0, y0, w, h = ART
    changed = inside = 0
    for y in range(y0, y0 + h):
        for x in range(x0, x0 + w):
            s, n = art.pixelData(x, y, 1, 1), new.pixelData(x, y, 1, 1)
            assert n[3] == s[3]                                     # alpha kept
            if 16 <= x < 36 and 8 <= y < 24:
                inside += 1
                changed += n[:3] != s[:3]
            else:
                assert n == s, (x, y)                               # outside: exact
    assert inside == 320 and changed == inside


def test_run_that_cannot_start_reports_once_and_changes_nothing(server):
    endpoint, _ = server
    doc, bg, art, vec = scene()
    vec.shapes_ = []
    finished = []
    run = DragRun(KritaHost(), doc, DragSettings(endpoint=endpoint),
                  on_finished=finished.append)
    assert not run.start() and run.finished and finished == [run]
    assert run.state == "failed" and "holds no arrows" in run.message
    assert [n.name() for n in doc.root.childNodes()] == ["bg", "art", "drag"]
    doc, bg, art, vec = scene()
    doc.sel = FakeSelection(doc, 40, 30, 5, 5)        # the handle (20, 10) is not selected
    run = DragRun(KritaHost(), doc, DragSettings(endpoint=endpoint))
    assert not run.start() and "outside the selection" in run.message


def test_run_daemon_down_and_cancel(server):
    endpoint, _ = server
    doc, bg, art, vec = scene()
    factory = lambda *a: make_task(*a, connect_timeout=1.0)   # noqa: E731
    run = DragRun(KritaHost(), doc, DragSettings(endpoint=free_endpoint()),
                  task_factory=factory)
    t0 = time.monotonic()
    assert run.start()
    run_to_end(run)
    assert run.state == "failed" and "dragd serve" in run.message
    assert time.monotonic() - t0 < 4
    run = DragRun(KritaHost(), doc, DragSettings(endpoint=endpoint,
                                                              max_steps=2000))
    assert run.start()
    end = time.monotonic() + 20
    while run.step():
        if run.task.model.phase == "dragging" and run.task.model.step >= 1:
            run.stop("discard")
        assert time.monotonic() < end
        time.sleep(0.01)
    assert run.state == "cancelled" and "not changed" in run.message
    assert [n.name() for n in doc.root.childNodes()] == ["bg", "art", "drag"]


# ---------------------------------------------------------------------------
# Packaging
# ---------------------------------------------------------------------------


def test_krita_plugin_core_imports_nothing_from_krita_qt_or_zmq():
    import subprocess
    import sys

    code = ("import sys; import dragd.krita_plugin, dragd.krita_plugin.model, "
            "dragd.krita_plugin.host, dragd.krita_plugin.run; "
            "bad = [m for m in ('krita', 'PyQt5', 'zmq', 'msgpack') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_installed_layout_and_zip_match_what_krita_loads_and_imports(tmp_path):
    import zipfile

    from dragd.daemon.cli.install_plugins import build_krita_zip, install_krita, uninstall_krita

    rc = tmp_path / "kritarc"
    rc.write_text("TopLevelKey=1\nweird:key=a:b\n\n[python]\nenable_other=true\n\n[x]\ny=\\\\0\n")
    root = install_krita(tmp_path / "pykrita", rc)
    assert (root / "dragd_krita.desktop").is_file()
    entry = os.path.join(os.path.dirname(host.__file__), "entry.py")
    with open(entry) as fh:
        assert (root / "dragd_krita" / "__init__.py").read_text() == fh.read()
    for rel in ("dragd/krita_plugin/run.py", "dragd/krita_plugin/model.py",
                "dragd/plugin_common/jobs.py", "dragd/protocol/client.py"):
        assert (root / "dragd_krita" / rel).is_file(), rel
    assert not (root / "dragd").exists()
    assert not list((root / "dragd_krita").rglob("*.desktop"))
    assert rc.read_text() == ("TopLevelKey=1\nweird:key=a:b\n\n[python]\nenable_other=true\n"
                              "enable_dragd_krita=true\n\n[x]\ny=\\\\0\n")
    install_krita(tmp_path / "pykrita", rc)                    # idempotent
    assert rc.read_text().count("enable_dragd_krita=true") == 1
    z = build_krita_zip(tmp_path / "dragd_krita.zip")
    names = zipfile.ZipFile(z).namelist()
    assert "dragd_krita.desktop" in names and "dragd_krita/" in names
    assert "dragd_krita/__init__.py" in names
    assert "dragd_krita/dragd/protocol/messages.py" in names
    assert "dragd_krita/dragd/plugin_common/mask.py" in names
    assert [n for n in names if n.endswith(".desktop")] == ["dragd_krita.desktop"]
    assert all(n.startswith(("dragd_krita/", "dragd_krita.desktop")) for n in names)
    assert not [n for n in names if "__pycache__" in n]
    uninstall_krita(tmp_path / "pykrita")
    assert list((tmp_path / "pykrita").iterdir()) == []


def test_entry_module_puts_its_folder_first_and_site_packages_last(tmp_path):
    import subprocess
    import sys

    from dragd.daemon.cli.install_plugins import install_krita

    root = install_krita(tmp_path / "pykrita", tmp_path / "kritarc")
    (root / "dragd_krita" / "site-packages").mkdir()
    # Replace the Krita-only part (registering with Krita) by a marker.
    code = ("import sys, types; ext = types.ModuleType('dragd.krita_plugin.plugin'); "
            "ext.register = lambda: print('registered'); "
            "sys.modules['dragd.krita_plugin.plugin'] = ext; "
            "sys.path.insert(0, %r); import dragd_krita, dragd.krita_plugin.model as s; "
            "print(s.__file__); print(sys.path[0]); print(sys.path[-1])"
            % str(root))
    # -I -S: neither this checkout nor the installed dragd may be found instead.
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("\n")
    assert out[0] == "registered"
    assert out[1] == str(root / "dragd_krita" / "dragd" / "krita_plugin" / "model.py")
    assert out[2] == str(root / "dragd_krita")
    assert out[3] == str(root / "dragd_krita" / "site-packages")
