"""A kritarunner module (run by tests/hosts/chroot.run_krita_module) that proves the Krita 5.2
API facts of docs/HOSTS.md. kritarunner calls __main__(args); it always exits 0, so the result
goes to the JSON file named by $DRAGD_RESULT.
"""
import json
import os
import sys
import time
import traceback


def shape_points_px(shape, doc):
    """The on-curve points of a path shape in document pixels: toSvg()'s path data is in the
    shape's local coordinates; absoluteTransformation() maps them to document points (pt);
    pixels = pt * resolution / 72."""
    import re

    from PyQt5.QtCore import QPointF

    d = re.search(r' d="([^"]*)"', shape.toSvg()).group(1)
    nums = [float(v) for v in re.findall(r"-?[0-9.]+(?:e-?[0-9]+)?", d)]
    t = shape.absoluteTransformation()
    sx, sy = doc.xRes() / 72.0, doc.yRes() / 72.0
    pts = []
    for x, y in zip(nums[0::2], nums[1::2]):
        p = t.map(QPointF(x, y))
        pts.append([round(p.x() * sx, 3), round(p.y() * sy, 3)])
    return pts


def _line_shape_facts(doc_res):
    from krita import Krita

    app = Krita.instance()
    from PyQt5.QtCore import QEventLoop, QTimer

    W, H = 600, 300
    doc = app.createDocument(W, H, "vec", "RGBA", "U8", "", doc_res)
    root = doc.rootNode()
    vl = doc.createVectorLayer("arrows")
    root.addChildNode(vl, None)
    # A line from (20, 10) to (120, 60) in the SVG's own user units, sized in pt.
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="200pt" height="100pt" '
           'viewBox="0 0 200 100">'
           '<path d="M20,10 L120,60" stroke="#ff0000" stroke-width="2" fill="none"/></svg>')
    added = vl.addShapesFromSvg(svg)
    out = {"added": len(added), "shapes": []}
    for shape in vl.shapes():
        t = shape.transformation()
        bb = shape.boundingBox()
        out["shapes"].append({
            "type": shape.type(), "name": shape.name(),
            "position": [shape.position().x(), shape.position().y()],
            "bbox": [bb.x(), bb.y(), bb.width(), bb.height()],
            "transform": [t.m11(), t.m12(), t.m21(), t.m22(), t.dx(), t.dy()],
            "svg": shape.toSvg(),
        })
    # Where Krita rasterised it, in pixels. Vector layers render asynchronously: spin the event
    # loop, then waitForDone() + refreshProjection(), until pixels appear.
    xs = []
    for attempt in range(30):
        loop = QEventLoop()
        QTimer.singleShot(50, loop.quit)
        loop.exec_()
        doc.waitForDone()
        doc.refreshProjection()
        data = bytes(vl.projectionPixelData(0, 0, W, H))
        xs = [(i // 4) % W for i in range(3, len(data), 4) if data[i] > 128]
        ys = [(i // 4) // W for i in range(3, len(data), 4) if data[i] > 128]
        if xs:
            break
    out["raster_bounds"] = [min(xs), min(ys), max(xs), max(ys)] if xs else None
    out["raster_wait_ms"] = 50 * (attempt + 1)
    out["doc_resolution"] = doc.resolution()
    # Unitless SVG (no width/height/viewBox): one user unit = one document pixel.
    vl2 = doc.createVectorLayer("arrows-px")
    root.addChildNode(vl2, None)
    vl2.addShapesFromSvg('<svg xmlns="http://www.w3.org/2000/svg"><line x1="20" y1="10" '
                         'x2="120" y2="60" stroke="#0000ff" stroke-width="1"/></svg>')
    s2 = vl2.shapes()[0]
    bb2 = s2.boundingBox()
    out["px_shape_bbox_pt"] = [bb2.x(), bb2.y(), bb2.width(), bb2.height()]
    out["px_shape_svg"] = s2.toSvg()
    out["px_shape_endpoints_px"] = shape_points_px(s2, doc)
    out["pt_shape_endpoints_px"] = shape_points_px(vl.shapes()[0], doc)
    doc.close()
    return out


def _facts(args):
    from krita import Krita, Selection
    from PyQt5.QtCore import QByteArray, QCoreApplication, QEventLoop, QTimer

    R = {"args": list(args), "args_type": type(args).__name__,
         "argv": list(sys.argv), "python": sys.version.split()[0], "sys_path": list(sys.path)}
    app = Krita.instance()
    R["krita_version"] = app.version()
    R["qapp"] = type(QCoreApplication.instance()).__name__
    W, H = 64, 48
    doc = app.createDocument(W, H, "facts", "RGBA", "U8", "", 300.0)
    R["documents_after_create"] = len(app.documents())
    R["active_document_after_create"] = app.activeDocument() is not None
    app.setActiveDocument(doc)
    ad = app.activeDocument()
    R["active_document_after_set"] = None if ad is None else ad.name()
    R["windows"] = len(app.windows())
    R["color"] = [doc.colorModel(), doc.colorDepth(), doc.resolution()]
    root = doc.rootNode()
    R["initial_children"] = [(n.name(), n.type()) for n in root.childNodes()]

    # Paint layer; setPixelData takes bytes in BGRA order for RGBA/U8, at image coordinates.
    bg = doc.createNode("bg", "paintlayer")
    root.addChildNode(bg, None)
    art = doc.createNode("art", "paintlayer")
    root.addChildNode(art, None)          # None = on top
    w, h, ox, oy = 20, 10, 8, 4
    px = bytearray(w * h * 4)
    for i in range(0, len(px), 4):
        px[i:i + 4] = bytes((10, 20, 200, 255))   # B=10 G=20 R=200 A=255 -> red-ish
    art.setPixelData(QByteArray(bytes(px)), ox, oy, w, h)
    R["art_bounds_before_refresh"] = list(art.bounds().getRect())
    R["art_pixel_readback"] = list(bytes(art.pixelData(ox, oy, 1, 1)))
    R["projection_before_refresh"] = list(bytes(doc.pixelData(ox, oy, 1, 1)))
    doc.waitForDone()
    R["projection_after_waitfordone"] = list(bytes(doc.pixelData(ox, oy, 1, 1)))
    doc.refreshProjection()
    R["projection_after_refresh"] = list(bytes(doc.pixelData(ox, oy, 1, 1)))
    img = doc.projection(0, 0, W, H)
    c = img.pixelColor(ox, oy)
    R["projection_qimage_rgba"] = [c.red(), c.green(), c.blue(), c.alpha()]
    R["node_projection_pixel"] = list(bytes(art.projectionPixelData(ox, oy, 1, 1)))

    # Stack order: childNodes() is bottom -> top; addChildNode(child, above) puts child just
    # above `above`.
    mid = doc.createNode("above-bg", "paintlayer")
    R["add_above_ok"] = root.addChildNode(mid, bg)
    R["stack"] = [n.name() for n in root.childNodes()]
    R["remove_ok"] = mid.remove()
    R["stack_after_remove"] = [n.name() for n in root.childNodes()]
    doc.setActiveNode(art)
    active = doc.activeNode()   # None without a view (kritarunner opens no window)
    R["active"] = None if active is None else active.name()

    # Selections: 1 byte per pixel (0..255), document coordinates.
    R["selection_initially"] = doc.selection() is None
    sel = Selection()
    sel.select(10, 5, 12, 6, 255)
    doc.setSelection(sel)
    s = doc.selection()
    R["selection_bounds"] = [s.x(), s.y(), s.width(), s.height()]
    mask = bytes(s.pixelData(0, 0, W, H))
    R["mask_len"], R["mask_sum"] = len(mask), sum(mask)
    R["mask_first_on"] = [mask.index(255) % W, mask.index(255) // W]
    sel2 = Selection()
    sel2.select(10, 5, 12, 6, 255)
    sel2.feather(3)
    doc.setSelection(sel2)
    fm = bytes(doc.selection().pixelData(0, 0, W, H))
    R["feather_distinct_values"] = len(set(fm))
    R["feather_sum"] = sum(fm)
    doc.setSelection(Selection())
    R["selection_after_clear"] = doc.selection() is None
    empty = doc.selection()
    R["empty_selection_sum"] = None if empty is None else sum(bytes(empty.pixelData(0, 0, W, H)))

    # Event loop: a repeating QTimer driven by a QEventLoop (what a docker's socket poll uses).
    ticks = []
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    QTimer.singleShot(300, loop.quit)
    t0 = time.monotonic()
    loop.exec_()
    timer.stop()
    R["qeventloop_ticks"] = len(ticks)
    R["qeventloop_s"] = round(time.monotonic() - t0, 3)
    ticks.clear()
    timer.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.2:
        QCoreApplication.processEvents(QEventLoop.AllEvents, 20)
        time.sleep(0.005)
    timer.stop()
    R["processevents_ticks"] = len(ticks)

    R["extensions"] = [type(e).__name__ for e in app.extensions()]
    R["line_72dpi"] = _line_shape_facts(72.0)
    R["line_300dpi"] = _line_shape_facts(300.0)
    # The plug-in package: kritarunner does not load pykrita plug-ins (not even enabled ones), but
    # ~/.local/share/kritarunner/pykrita is on its sys.path, and PYTHONPATH works too.
    R["preloaded_from_profile"] = "dragd_krita_probe" in sys.modules
    try:
        import dragd_krita_probe as pkg
        R["pkg_import"] = pkg.hello()
        R["pkg_file"] = pkg.__file__
        R["extensions_after_import"] = [type(e).__name__ for e in app.extensions()]
    except ImportError as exc:
        R["pkg_import"] = "ImportError: %s" % exc
        pkg = None
    # A QTimer-driven ZeroMQ poll against an endpoint the test serves on the host.
    endpoints = [a[4:] for a in args if a.startswith("zmq=")]
    if pkg is not None and endpoints:
        poller = pkg.Poller(endpoints[0], b"ping-from-krita")
        loop = QEventLoop()
        check = QTimer()
        check.setInterval(10)
        check.timeout.connect(lambda: poller.done is not None and loop.quit())
        check.start()
        QTimer.singleShot(10000, loop.quit)
        loop.exec_()
        check.stop()
        R["zmq_reply"] = None if poller.done is None else [f.decode() for f in poller.done]
        R["zmq_ticks"] = poller.ticks
    doc.close()
    return R


def __main__(args):
    try:
        result = _facts(args)
    except Exception:
        result = {"error": traceback.format_exc()}
    with open(os.environ["DRAGD_RESULT"], "w") as f:
        json.dump(result, f)
