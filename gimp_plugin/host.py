"""Host glue: the only code of the plug-in that touches GIMP.

Reads the source layer's pixels, the drag arrows (path strokes) and the selection (the
movable mask) in layer coordinates and writes the result as a new layer above the source
(and above the results made from it before), in ONE undo group. Previews are shown in the
progress dialog (:mod:`.ui`), never as layers: a layer the size of a large photo costs GIMP
seconds to scale and write, in which the plug-in could not answer the daemon.

The GIMP modules are passed in (``GimpHost(Gimp, Gegl)``) so the unit tests can run this
code against small stand-ins. GIMP 3.0 facts used (checked against a real GIMP 3.0.4):

* a layer's buffer is in layer coordinates; ``"R'G'B'A u8"`` reads/writes sRGB bytes, RGBA;
* the selection is an image-sized channel; its buffer is in image coordinates and reading
  the layer's rectangle of it as ``"Y u8"`` gives the coverage 0..255 per layer pixel
  (outside the image the abyss is 0); a feathered selection gives intermediate values;
* ``path.stroke_get_points(id)`` -> (type, control points, closed): bezier anchors come
  as (in-handle, anchor, out-handle) triples;
* parasites attached to a layer stay with it (and, persistent, in the XCF file);
* undo: ``undo_group_start/end``; no PDB call counts or performs undo steps.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from .model import (PREVIEW_PARASITE, RESULT_PARASITE, LayerGeometry, MaskInfo, Stroke,
                    UserError, arrows_from_strokes, bezier_anchors, decode_result_tag,
                    encode_result_tag, make_mask, merge_alpha, pick_path, result_name)

RGBA = "R'G'B'A u8"
PERSISTENT = 1          # GIMP_PARASITE_PERSISTENT: saved with the XCF file
RGB = "R'G'B' u8"
MASK = "Y u8"
FORMATS = {4: RGBA, 3: RGB, 1: "Y' u8"}


class GimpHost:
    def __init__(self, Gimp: Any = None, Gegl: Any = None):
        if Gimp is None or Gegl is None:
            import gi
            gi.require_version("Gimp", "3.0")
            gi.require_version("Gegl", "0.4")
            from gi.repository import Gegl as _Gegl, Gimp as _Gimp
            Gimp, Gegl = Gimp or _Gimp, Gegl or _Gegl
        self.Gimp = Gimp
        self.Gegl = Gegl

    # -- reading ---------------------------------------------------------------

    def source_layer(self, drawables: List[Any]) -> Any:
        if not drawables:
            raise UserError("No layer is selected. Select the layer to drag in the Layers "
                            "dialog.")
        if len(drawables) > 1:
            raise UserError("%d layers are selected. Select only the layer to drag."
                            % len(drawables))
        d = drawables[0]
        if not d.is_layer():
            raise UserError("%r is not a layer (a layer mask or channel is active). Click "
                            "the layer's thumbnail in the Layers dialog." % d.get_name())
        if d.is_group():
            raise UserError("%r is a layer group. Select a pixel layer inside it, or merge "
                            "the group first." % d.get_name())
        return d

    def geometry(self, layer: Any) -> LayerGeometry:
        ok, ox, oy = layer.get_offsets()
        return LayerGeometry(layer.get_name(), layer.get_width(), layer.get_height(),
                             int(ox), int(oy))

    def read_strokes(self, path: Any) -> List[Stroke]:
        strokes = []
        for sid in path.get_strokes():
            kind, points, closed = path.stroke_get_points(sid)
            strokes.append(Stroke(tuple(bezier_anchors(points)), bool(closed)))
        return strokes

    def read_arrows(self, image: Any, layer: Any) -> Tuple[list, str]:
        path = pick_path(list(image.get_selected_paths() or []),
                         list(image.get_paths() or []), lambda p: p.get_name())
        name = path.get_name()
        arrows = arrows_from_strokes(self.read_strokes(path), self.geometry(layer), name)
        return arrows, name

    def read_mask(self, image: Any, layer: Any) -> MaskInfo:
        g = self.geometry(layer)
        if self.Gimp.Selection.is_empty(image):
            return make_mask(None, g.width, g.height, g.name)
        rect = self.Gegl.Rectangle.new(g.offset_x, g.offset_y, g.width, g.height)
        sel = image.get_selection()
        data = bytes(sel.get_buffer().get(rect, 1.0, MASK, self.Gegl.AbyssPolicy.NONE))
        return make_mask(data, g.width, g.height, g.name)

    def read_pixels(self, layer: Any) -> bytes:
        w, h = layer.get_width(), layer.get_height()
        rect = self.Gegl.Rectangle.new(0, 0, w, h)
        data = bytes(layer.get_buffer().get(rect, 1.0, RGBA, self.Gegl.AbyssPolicy.CLAMP))
        if len(data) != w * h * 4:
            raise UserError("GIMP returned %d bytes for the %dx%d layer; expected %d."
                            % (len(data), w, h, w * h * 4))
        return data

    # -- progress --------------------------------------------------------------

    def progress_start(self, text: str) -> None:
        self.Gimp.progress_init(text)

    def progress(self, fraction: float, text: str) -> None:
        self.Gimp.progress_set_text(text)
        self.Gimp.progress_update(max(0.0, min(1.0, fraction)))

    def progress_end(self) -> None:
        self.Gimp.progress_end()

    def flush(self) -> None:
        self.Gimp.displays_flush()

    # -- writing ---------------------------------------------------------------

    def _layer_type(self, image: Any, alpha: bool) -> Any:
        T = self.Gimp.ImageType
        gray = image.get_base_type() == self.Gimp.ImageBaseType.GRAY
        if gray:
            return T.GRAYA_IMAGE if alpha else T.GRAY_IMAGE
        return T.RGBA_IMAGE if alpha else T.RGB_IMAGE

    def _write(self, buffer: Any, w: int, h: int, data: bytes, fmt: str = RGBA) -> None:
        buffer.set(self.Gegl.Rectangle.new(0, 0, w, h), fmt, data)
        buffer.flush()

    def write_result(self, image: Any, source: Any, result_rgba: bytes,
                     region: Optional[dict] = None) -> Any:
        """A new layer holding the result (same size, offsets, mode, opacity, layer mask as
        ``source``), named after the source ("art (dragged)", never "art (dragged)
        (dragged)"), directly above the source and above the results made from it before,
        so it shows. The daemon's image is written as it is: it already blended the edit
        through the selection (unselected pixels are the source's, bit for bit), and a
        rerun on these exact pixels continues the edit. ``region`` (the inversion region
        used) is remembered on the layer for that rerun. Call inside the undo group."""
        g = self.geometry(source)
        layer = self.Gimp.Layer.new(image, result_name(g.name), g.width, g.height,
                                    self._layer_type(image, source.has_alpha()),
                                    source.get_opacity(), source.get_mode())
        image.insert_layer(layer, source.get_parent(), self._result_position(image, source))
        layer.set_offsets(g.offset_x, g.offset_y)
        self._write(layer.get_buffer(), g.width, g.height, result_rgba)
        layer.update(0, 0, g.width, g.height)
        self._copy_layer_mask(source, layer, g.width, g.height)
        try:
            layer.attach_parasite(self.Gimp.Parasite.new(
                RESULT_PARASITE, PERSISTENT, list(encode_result_tag(region))))
        except Exception:
            pass       # without the tag a rerun inverts again; the result is written
        return layer

    def _result_position(self, image: Any, source: Any) -> int:
        """Above the source and the earlier results stacked directly on it."""
        pos = image.get_item_position(source)
        siblings = list(source.get_parent().get_children() if source.get_parent() is not None
                        else image.get_layers())
        while pos > 0 and self.result_tag(siblings[pos - 1]) is not None:
            pos -= 1
        return pos

    def result_tag(self, layer: Any) -> Optional[dict]:
        """What an earlier run remembered on ``layer`` (``{"region": ...}``), None for a
        layer no run made."""
        try:
            p = layer.get_parasite(RESULT_PARASITE)
        except Exception:
            return None
        return None if p is None else decode_result_tag(bytes(p.get_data()))

    def _copy_layer_mask(self, source: Any, layer: Any, w: int, h: int) -> None:
        """Give the new layer the source's layer mask, so it shows the same part."""
        src_mask = source.get_mask()
        if src_mask is None:
            return
        rect = self.Gegl.Rectangle.new(0, 0, w, h)
        data = bytes(src_mask.get_buffer().get(rect, 1.0, MASK, self.Gegl.AbyssPolicy.CLAMP))
        mask = layer.create_mask(self.Gimp.AddMaskType.WHITE)
        layer.add_mask(mask)
        self._write(mask.get_buffer(), w, h, data, MASK)
        mask.update(0, 0, w, h)

    def result_pixels(self, result: Any, source_rgba: bytes) -> bytes:
        """The daemon's image as RGBA bytes with the source's alpha."""
        return merge_alpha(bytes(result.data), result.channels, source_rgba)

    # -- stale previews --------------------------------------------------------

    def is_preview_layer(self, layer: Any) -> bool:
        try:
            return layer.get_parasite(PREVIEW_PARASITE) is not None
        except Exception:
            return False

    def stale_previews(self, image: Any) -> List[Any]:
        """Preview layers that earlier versions of the plug-in left behind (GIMP's
        progress-bar cancel ended them before they could clean up)."""
        found = []

        def walk(layers: List[Any]) -> None:
            for lyr in layers:
                if self.is_preview_layer(lyr):
                    found.append(lyr)
                elif lyr.is_group():
                    walk(list(lyr.get_children()))
        walk(list(image.get_layers()))
        return found


class UndoGroup:
    """One undo group for every change of the run, opened on the first change."""

    def __init__(self, image: Any):
        self.image = image
        self.opened = False
        self.count = 0          # groups opened (for tests and diagnostics)

    def ensure(self) -> None:
        if not self.opened:
            self.image.undo_group_start()
            self.opened = True
            self.count += 1

    def end(self) -> None:
        if self.opened:
            self.image.undo_group_end()
            self.opened = False
