"""A python-fu-eval batch script (run by tests/hosts/chroot.run_gimp_script) that proves the GIMP
3.0 API facts of docs/HOSTS.md and calls the dragd-probe plug-in. It writes a JSON report to
$DRAGD_RESULT. Runs inside python-eval.py's globals: Gimp is imported, __name__ == "__main__".
"""
import json
import os

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, GLib, Gimp  # noqa: E402

R = {"version": Gimp.version()}
W, H = 64, 48          # image
LW, LH = 40, 30        # layer
OX, OY = 10, 6         # layer offset

image = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
R["undo_enabled_new_image"] = image.undo_is_enabled()
bg = Gimp.Layer.new(image, "bg", W, H, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(bg, None, 0)
layer = Gimp.Layer.new(image, "art", LW, LH, Gimp.ImageType.RGBA_IMAGE, 100.0,
                       Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)        # parent None = top level, position 0 = top
layer.set_offsets(OX, OY)
R["offsets"] = list(layer.get_offsets())   # [True, OX, OY]

# Pixels: a layer's buffer is in layer coordinates; "R'G'B'A u8" = sRGB bytes, RGBA order.
src = bytearray(LW * LH * 4)
for y in range(LH):
    for x in range(LW):
        i = (y * LW + x) * 4
        src[i:i + 4] = bytes((x * 6, y * 8, 100, 255 if x < 20 else 128))
rect = Gegl.Rectangle.new(0, 0, LW, LH)
buf = layer.get_buffer()
buf.set(rect, "R'G'B'A u8", bytes(src))
buf.flush()
layer.update(0, 0, LW, LH)
got = layer.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP)
R["get_type"] = type(got).__name__
R["pixels_roundtrip"] = bytes(got) == bytes(src)
R["buffer_extent"] = [layer.get_buffer().get_extent().x, layer.get_buffer().get_extent().y,
                      layer.get_buffer().get_extent().width, layer.get_buffer().get_extent().height]

# A path with one stroke of two anchors: handle (15, 12) -> target (30, 20), image coordinates.
path = Gimp.Path.new(image, "arrow")
image.insert_path(path, None, 0)
sid = path.bezier_stroke_new_moveto(15.0, 12.0)
path.bezier_stroke_lineto(sid, 30.0, 20.0)
path2 = Gimp.Path.new(image, "arrow2")
image.insert_path(path2, None, 0)
sid2 = path2.stroke_new_from_points(Gimp.PathStrokeType.BEZIER,
                                    [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 9.0, 7.0, 9.0, 7.0, 9.0, 7.0],
                                    False)
image.set_selected_paths([path])
R["selected_paths"] = [p.get_name() for p in image.get_selected_paths()]
R["all_paths"] = [p.get_name() for p in image.get_paths()]
kind, pts, closed = path.stroke_get_points(path.get_strokes()[0])
R["strokes"] = list(path.get_strokes())
R["stroke_points"] = [int(kind), list(pts), closed]
R["stroke_points_from_points"] = list(path2.stroke_get_points(sid2)[1])

# Selections; the selection channel's buffer is image-sized, in image coordinates.
sel = image.get_selection()
image.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 10, 10, 8)
R["rect_bounds"] = list(Gimp.Selection.bounds(image))
lrect = Gegl.Rectangle.new(OX, OY, LW, LH)   # the layer's rectangle, in image coordinates
mask = bytes(sel.get_buffer().get(lrect, 1.0, "Y u8", Gegl.AbyssPolicy.NONE))
R["rect_mask_len"] = len(mask)
R["rect_mask_sum"] = sum(mask)
R["rect_mask_first_on"] = [mask.index(255) % LW, mask.index(255) // LW]  # in layer coordinates
R["mask_intersect"] = list(layer.mask_intersect())
Gimp.Selection.feather(image, 6.0)
mask = bytes(sel.get_buffer().get(lrect, 1.0, "Y u8", Gegl.AbyssPolicy.NONE))
R["feather_distinct_values"] = len(set(mask))
R["feather_mask_sum"] = sum(mask)
R["feather_value_center"] = Gimp.Selection.value(image, 25, 14)
Gimp.Selection.none(image)
R["empty_after_none"] = Gimp.Selection.is_empty(image)
R["mask_sum_after_none"] = sum(bytes(sel.get_buffer().get(lrect, 1.0, "Y u8",
                                                          Gegl.AbyssPolicy.NONE)))
image.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, 20, 20)

# Inserting above another layer: same parent, the other layer's position.
above = Gimp.Layer.new(image, "above-bg", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0,
                       Gimp.LayerMode.NORMAL)
image.insert_layer(above, bg.get_parent(), image.get_item_position(bg))
R["stack_after_insert"] = [lyr.get_name() for lyr in image.get_layers()]
image.remove_layer(above)

# Undo: no PDB procedure counts or performs undo steps in 3.0, only these switches.
R["undo_calls"] = [image.undo_group_start(), image.undo_group_end(), image.undo_freeze(),
                   image.undo_thaw(), image.undo_is_enabled()]
R["dirty"] = image.is_dirty()

# Progress from a batch script: accepted, no display needed.
R["progress"] = [Gimp.progress_init("probe"), Gimp.progress_update(0.5), Gimp.progress_end()]

# Calling the installed probe plug-in non-interactively, with extra arguments.
pdb = Gimp.get_pdb()
R["probe_exists"] = pdb.procedure_exists("dragd-probe")
if R["probe_exists"]:
    image.set_selected_layers([layer])
    proc = pdb.lookup_procedure("dragd-probe")
    R["probe_args"] = [a.name for a in proc.get_arguments()]
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    config.set_property("label", "dragged")
    config.set_property("steps", 3)
    result = proc.run(config)
    R["probe_status"] = result.index(0).value_nick
    R["probe_nvalues"] = result.length()
    R["probe_values"] = [result.index(i) for i in range(1, result.length())]
    R["probe_report"] = json.loads(result.index(1))
    R["probe_layer_id"] = result.index(2)
    new = Gimp.Layer.get_by_id(result.index(2))
    R["probe_new_layer_name"] = new.get_name()
    R["probe_new_layer_offsets"] = list(new.get_offsets())[1:]
    inv = bytes(new.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP))
    R["probe_new_layer_inverted"] = all(inv[i] == 255 - src[i] for i in range(0, len(src), 4))
    R["stack_after_probe"] = [lyr.get_name() for lyr in image.get_layers()]
    config = proc.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    config.set_property("fail", True)
    result = proc.run(config)
    R["fail_status"] = result.index(0).value_nick
    R["fail_message"] = result.index(1) if result.length() > 1 else None
    R["fail_last_error"] = [pdb.get_last_status().value_nick, pdb.get_last_error()]

with open(os.environ["DRAGD_RESULT"], "w") as f:
    json.dump(R, f)
image.delete()
