#!/usr/bin/env python3
"""dragd-probe: a throwaway GIMP 3 plug-in that exercises, from a real plug-in process, every
host call the dragd GIMP plug-in needs. The host tests install it and call it non-interactively.

Procedure "dragd-probe" (an image procedure on one drawable), extra arguments:
  label (str)  name of the layer it adds;  steps (int)  progress updates;  fail (bool)  return an
  execution error instead. Return values: report (str, JSON), new-layer-id (int).

It reads the first selected path (else the first path): each stroke's anchors; the drawable's
pixels and the selection mask in the drawable's own coordinates; then, inside one undo group,
adds a layer directly above the drawable holding the inverted RGB of the drawable.
"""
import json
import sys

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, GLib, GObject, Gimp  # noqa: E402

PROC = "dragd-probe"
RW = GObject.ParamFlags.READWRITE


def path_anchors(path):
    """[(stroke_id, [(x, y), ...], closed)] for a path; bezier strokes list each anchor as
    (in-handle, anchor, out-handle), so the anchor is the middle point of each triple."""
    strokes = []
    for sid in path.get_strokes():
        kind, points, closed = path.stroke_get_points(sid)
        anchors = [(points[i + 2], points[i + 3]) for i in range(0, len(points) - 5, 6)]
        strokes.append({"id": sid, "type": int(kind), "raw": list(points), "anchors": anchors,
                        "closed": bool(closed)})
    return strokes


def run(procedure, run_mode, image, drawables, config, data):
    label = config.get_property("label")
    steps = config.get_property("steps")
    if config.get_property("fail"):
        return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR,
                                           GLib.Error("dragd-probe: failing on request"))
    if len(drawables) != 1:
        return procedure.new_return_values(Gimp.PDBStatusType.CALLING_ERROR,
                                           GLib.Error("dragd-probe: select exactly one layer"))
    src = drawables[0]
    report = {"run_mode": int(run_mode), "label": label, "steps": steps,
              "drawable": src.get_name(), "n_drawables": len(drawables)}

    paths = image.get_selected_paths() or image.get_paths()
    report["paths"] = [{"name": p.get_name(), "strokes": path_anchors(p)} for p in paths[:1]]

    ok, ox, oy = src.get_offsets()
    w, h = src.get_width(), src.get_height()
    report["offsets"], report["size"] = [ox, oy], [w, h]
    rect = Gegl.Rectangle.new(0, 0, w, h)  # a layer's buffer is in layer coordinates
    pixels = bytes(src.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP))
    report["pixels_len"] = len(pixels)
    report["pixel00"] = list(pixels[:4])

    non_empty, x1, y1, x2, y2 = Gimp.Selection.bounds(image)[1:]
    report["selection_bounds"] = [non_empty, x1, y1, x2, y2]
    sel = image.get_selection()
    # The selection channel is image-sized, its buffer in image coordinates: read the drawable's
    # rectangle of it (outside the image the abyss is 0 = not selected).
    mask = bytes(sel.get_buffer().get(Gegl.Rectangle.new(ox, oy, w, h), 1.0, "Y u8",
                                      Gegl.AbyssPolicy.NONE))
    report["mask_len"] = len(mask)
    report["mask_sum"] = sum(mask)

    Gimp.progress_init("dragd probe")
    image.undo_group_start()
    try:
        for i in range(steps):
            Gimp.progress_update((i + 1) / steps)
        layer = Gimp.Layer.new(image, label, w, h, Gimp.ImageType.RGBA_IMAGE, 100.0,
                               Gimp.LayerMode.NORMAL)
        # Directly above src: same parent, src's position (0 = top of that stack).
        image.insert_layer(layer, src.get_parent(), image.get_item_position(src))
        layer.set_offsets(ox, oy)
        out = bytearray(pixels)
        for i in range(0, len(out), 4):
            out[i], out[i + 1], out[i + 2] = 255 - out[i], 255 - out[i + 1], 255 - out[i + 2]
        buf = layer.get_buffer()
        buf.set(rect, "R'G'B'A u8", bytes(out))
        buf.flush()
        layer.update(0, 0, w, h)
    finally:
        image.undo_group_end()
        Gimp.progress_end()
    report["new_layer_position"] = image.get_item_position(layer)
    report["src_position"] = image.get_item_position(src)

    # new_return_values() already holds the status plus one default value per declared return
    # value: replace those in place (remove + insert), appending would add extra values.
    retval = procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())
    for index, value in ((1, GObject.Value(GObject.TYPE_STRING, json.dumps(report))),
                         (2, GObject.Value(GObject.TYPE_INT, layer.get_id()))):
        retval.remove(index)
        retval.insert(index, value)
    return retval


class DragdProbe(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        proc.set_image_types("RGB*, GRAY*")
        proc.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        proc.set_menu_label("dragd probe")
        proc.add_menu_path("<Image>/Filters/Development/dragd")
        proc.set_documentation("dragd host-test probe", "Exercises the host API", name)
        proc.set_attribution("dragd", "dragd", "2025")
        proc.add_string_argument("label", "Label", "Name of the new layer", "probe", RW)
        proc.add_int_argument("steps", "Steps", "Progress updates", 0, 1000, 4, RW)
        proc.add_boolean_argument("fail", "Fail", "Return an execution error", False, RW)
        proc.add_string_return_value("report", "Report", "JSON report", "", RW)
        proc.add_int_return_value("new-layer-id", "New layer", "Item id", -1, 2**31 - 1, -1, RW)
        return proc


if __name__ == "__main__":
    Gimp.main(DragdProbe.__gtype__, sys.argv)
