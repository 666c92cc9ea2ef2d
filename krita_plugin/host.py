"""Host glue: the only code of the plug-in that touches Krita's documents.

Everything is reached through the objects Krita's Python API (libkis) hands out —
``Document``, ``Node``, ``VectorLayer``, ``Shape``, ``Selection`` — duck-typed, so the unit
tests run this code against small stand-ins; PyQt5 is not needed here. Previews are shown
in the docker (:mod:`.ui`), never as layers: a layer the size of a large picture costs
Krita's UI thread seconds to scale and write.
Krita 5.2 facts used (checked in a real Krita 5.2.9, see docs/HOSTS.md and docs/KRITA.md):

* ``Node.pixelData(x, y, w, h)`` / ``setPixelData(bytes, x, y, w, h)`` work in DOCUMENT
  pixel coordinates (a moved layer's offset is already applied) and give BGRA bytes for
  an RGBA/U8 layer; ``Node.bounds()`` is the layer content's exact bounding box, which may
  reach outside the canvas; locking a layer does not stop ``setPixelData``;
* ``Node.duplicate()`` copies a layer (pixels, opacity, blending mode, masks);
  ``setColorSpace(model, depth, profile)`` converts a layer, attached or not;
* ``Selection.pixelData`` is 1 byte per pixel (0..255) in document coordinates, 0
  outside the selection and outside the canvas; ``Document.selection()`` is None when
  nothing is selected (an empty Selection object after ``setSelection(Selection())``);
* shapes live in points (1/72 in): ``Shape.toSvg()`` holds the outline in the shape's
  local coordinates, ``absoluteTransformation()`` maps those to document points (the
  vector layer's own offset included); document pixels = points x ``xRes()`` / 72;
* ``Node.childNodes()`` lists children bottom to top; ``addChildNode(child, above)``
  inserts ``child`` directly above ``above``.

The layer that is edited is a rectangle of a paint layer (:class:`~.model.LayerRect`):
its content bounds clipped to the canvas. Layer coordinates on the wire are document
pixels minus that rectangle's top-left corner.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from .model import (ARROWS_LAYER_NAME, PREVIEW_LAYER_NAME, SRGB_PROFILE, Affine, LayerRect,
                    MaskInfo, ShapeInfo, UserError, arrows_from_shapes, arrows_svg,
                    bgra_to_rgba, bgra_to_rgba_array, is_arrow_shape, make_mask, merge_alpha,
                    result_name, rgba_to_bgra, splice_by_mask)

PAINT = "paintlayer"
VECTOR = "vectorlayer"
GROUP = "grouplayer"

# Bytes per pixel of Krita's colour models / depths (for splicing native pixels).
_CHANNELS = {"RGBA": 4, "GRAYA": 2, "CMYKA": 5, "LABA": 4, "XYZA": 4, "YCbCrA": 4, "A": 1}
_DEPTH_BYTES = {"U8": 1, "U16": 2, "F16": 2, "F32": 4, "F64": 8}


def native_pixel_size(model: str, depth: str) -> Optional[int]:
    c, b = _CHANNELS.get(model), _DEPTH_BYTES.get(depth)
    return c * b if c and b else None


class NativeFormat:
    """A layer's colour space when it is not RGBA/U8 (pixels are converted)."""

    def __init__(self, model: str, depth: str, profile: str):
        self.model, self.depth, self.profile = model, depth, profile

    def __repr__(self) -> str:
        return "%s/%s (%s)" % (self.model, self.depth, self.profile)


def _same(a: Any, b: Any) -> bool:
    """Two libkis wrappers of the same node (each call returns a new wrapper)."""
    if a is b:
        return True
    try:
        return a.uniqueId() == b.uniqueId()
    except Exception:
        return False


def walk_nodes(root: Any) -> List[Any]:
    """Every node below root, top to bottom (as the Layers docker lists them)."""
    out: List[Any] = []
    for n in reversed(list(root.childNodes())):
        out.append(n)
        out.extend(walk_nodes(n))
    return out


class KritaHost:
    """Reads the edit's inputs out of a document and writes its result back."""

    # -- which layers ------------------------------------------------------------

    def find_targets(self, doc: Any, source: Any = None, vector: Any = None
                     ) -> Tuple[Any, Any]:
        """(paint layer to edit, vector layer with the arrows).

        The arrows: ``vector``, else the active node when it is a vector layer, else a
        vector layer named "drag" (any case), else the document's only vector layer.
        The paint layer: ``source``, else the active node when it is a paint layer, else
        the nearest paint layer below the arrows layer in the same group."""
        if doc is None:
            raise UserError("No document is open. Open an image first.")
        active = None
        try:
            active = doc.activeNode()
        except Exception:
            pass
        atype = active.type() if active is not None else None
        if vector is None and atype == VECTOR:
            vector = active
        if vector is None:
            vector = self._named_vector_layer(doc)
        if source is None and atype == PAINT:
            source = active
        if source is None:
            if vector is None:
                raise UserError(
                    "Select the paint layer to drag in the Layers docker, and draw the "
                    "arrows on a vector layer named %r above it." % ARROWS_LAYER_NAME)
            source = self._paint_layer_below(vector)
        if source.type() != PAINT:
            raise UserError("%r is a %s, not a paint layer. Select the paint layer that holds "
                            "the picture." % (source.name(), source.type()))
        if vector is None:
            raise UserError(
                "No arrows found. Add a vector layer named %r (or select one) and draw each "
                "drag as a straight line on it: from the handle (what to move) to the target "
                "(where it should go)." % ARROWS_LAYER_NAME)
        if vector.type() != VECTOR:
            raise UserError("%r is not a vector layer; the arrows must be lines on a vector "
                            "layer." % vector.name())
        return source, vector

    def _named_vector_layer(self, doc: Any) -> Any:
        vectors = [n for n in walk_nodes(doc.rootNode()) if n.type() == VECTOR]
        named = [n for n in vectors
                 if str(n.name()).strip().lower() == ARROWS_LAYER_NAME.lower()]
        if named:
            return named[0]
        if len(vectors) == 1:
            return vectors[0]
        if len(vectors) > 1:
            raise UserError(
                "The document has %d vector layers and none is selected or named %r. Select "
                "the vector layer that holds the arrows, or rename it to %r."
                % (len(vectors), ARROWS_LAYER_NAME, ARROWS_LAYER_NAME))
        return None

    def _paint_layer_below(self, vector: Any) -> Any:
        parent = vector.parentNode()
        siblings = list(parent.childNodes()) if parent is not None else []
        idx = next((i for i, n in enumerate(siblings) if _same(n, vector)), None)
        if idx is not None:
            for n in reversed(siblings[:idx]):
                if n.type() == PAINT:
                    return n
        raise UserError(
            "There is no paint layer below the arrows layer %r. Put the arrows layer directly "
            "above the paint layer to drag, or select that paint layer." % vector.name())

    # -- reading -----------------------------------------------------------------

    def layer_rect(self, doc: Any, node: Any) -> LayerRect:
        b = node.bounds()
        return LayerRect.clip(str(node.name()), (b.x(), b.y(), b.width(), b.height()),
                              doc.width(), doc.height())

    def read_pixels(self, doc: Any, node: Any, rect: LayerRect
                    ) -> Tuple[bytes, Optional[NativeFormat]]:
        """RGBA bytes of the rectangle. A layer that is not RGBA/U8 is converted (a
        detached copy, to 8-bit sRGB) and its format returned for the way back."""
        model, depth = str(node.colorModel()), str(node.colorDepth())
        native: Optional[NativeFormat] = None
        src = node
        if (model, depth) != ("RGBA", "U8"):
            native = NativeFormat(model, depth, str(node.colorProfile()))
            if native_pixel_size(model, depth) is None:
                raise UserError("The layer %r is %s/%s, a colour model the plug-in cannot "
                                "convert. Convert the image to RGB/Alpha 8-bit (Image \u25b8 "
                                "Convert Image Color Space)." % (rect.name, model, depth))
            src = node.duplicate()
            if src is None or not src.setColorSpace("RGBA", "U8", SRGB_PROFILE):
                raise UserError("Krita could not convert the layer %r from %s/%s to RGB 8-bit. "
                                "Convert the image to RGB/Alpha 8-bit (Image \u25b8 Convert "
                                "Image Color Space)." % (rect.name, model, depth))
        data = bytes(src.pixelData(rect.x, rect.y, rect.width, rect.height))
        if len(data) != rect.width * rect.height * 4:
            raise UserError("Krita returned %d bytes for the %dx%d layer %r; expected %d."
                            % (len(data), rect.width, rect.height, rect.name,
                               rect.width * rect.height * 4))
        return bgra_to_rgba(data), native

    def pixel_reader(self, doc: Any, node: Any, rect: LayerRect) -> "PixelReader":
        """A :class:`PixelReader` of the rectangle (RGBA bytes, read a band per step)."""
        return PixelReader(self, doc, node, rect)

    def read_shapes(self, vector: Any) -> List[ShapeInfo]:
        out = []
        for s in self._visible_shapes(vector):
            out.append(ShapeInfo(str(s.toSvg()), Affine.from_qtransform(
                s.absoluteTransformation()), str(s.type()), str(s.name())))
        return out

    def read_arrows(self, doc: Any, vector: Any, rect: LayerRect):
        return arrows_from_shapes(self.read_shapes(vector), doc.xRes(), doc.yRes(), rect,
                                  str(vector.name()))

    def redraw_arrows(self, doc: Any, vector: Any, rect: LayerRect, arrows: List[Any]) -> int:
        """Replace the shapes the arrows came from by thin arrows with arrowheads
        (``arrows``: handle -> target in layer pixels, e.g. from the handles' new
        positions after a drag, so that the next Run continues from where the points
        are). Other shapes stay. The old lines are hidden, not deleted (hidden shapes are
        not read as arrows): ``Shape.remove()`` crashes Krita 5.2.9 in a document without
        a view (kritarunner, measured). Returns the number of shapes replaced."""
        old = [sh for sh in self._visible_shapes(vector) if is_arrow_shape(str(sh.toSvg()))]
        if not old or not arrows:
            return 0
        vector.addShapesFromSvg(arrows_svg(arrows, rect, (doc.width(), doc.height())))
        for sh in old:
            sh.setVisible(False)
            sh.update()
        return len(old)

    def _visible_shapes(self, vector: Any) -> List[Any]:
        return [sh for sh in vector.shapes() if sh.visible()]

    def read_mask(self, doc: Any, rect: LayerRect) -> MaskInfo:
        """The selection over the layer rectangle. Only the selection's bounding box is
        read from Krita (the rest is 0): reading all of a 6000x4000 layer's selection
        held the UI thread 0.1 s when a 600x600 part of it was selected."""
        sel = doc.selection()
        # Each of these asks Krita for the selection's exact bounds: once each.
        sw, sh = (sel.width(), sel.height()) if sel is not None else (0, 0)
        if sw <= 0 or sh <= 0:
            return make_mask(None, rect.width, rect.height, rect.name)
        sx, sy = sel.x(), sel.y()
        x0, y0 = max(rect.x, sx), max(rect.y, sy)
        x1, y1 = min(rect.x + rect.width, sx + sw), min(rect.y + rect.height, sy + sh)
        rw = rect.width
        if x1 <= x0 or y1 <= y0:
            return make_mask(bytes(rw * rect.height), rw, rect.height, rect.name)
        w = x1 - x0
        box = bytes(sel.pixelData(x0, y0, w, y1 - y0))
        left, right = bytes(x0 - rect.x), bytes(rect.x + rw - x1)
        rows = [bytes(rw * (y0 - rect.y))]
        rows += [left + box[i:i + w] + right for i in range(0, len(box), w)]
        rows.append(bytes(rw * (rect.y + rect.height - y1)))
        return make_mask(b"".join(rows), rw, rect.height, rect.name)

    # -- writing -----------------------------------------------------------------

    def result_writer(self, doc: Any, source: Any, rect: LayerRect, result: Any,
                      source_rgba: bytes, native: Optional[NativeFormat],
                      mask: Optional[MaskInfo]) -> "ResultWriter":
        """A :class:`ResultWriter` for the daemon's ``result`` (a protocol Image)."""
        return ResultWriter(doc, source, rect, result, source_rgba, native, mask)

    # -- previews ------------------------------------------------------------------

    def stale_previews(self, doc: Any) -> List[Any]:
        """Preview layers earlier versions of the plug-in left behind (Krita closed or
        crashed mid-run)."""
        return [n for n in walk_nodes(doc.rootNode())
                if str(n.name()) == PREVIEW_LAYER_NAME and n.type() == PAINT]

    def remove_stale_previews(self, doc: Any) -> int:
        stale = self.stale_previews(doc)
        for n in stale:
            n.remove()
        return len(stale)


#: Most bytes one step of a :class:`PixelReader` or :class:`ResultWriter` reads or writes
#: and converts: a few ms of Krita's UI thread (a 6000x4000 layer is ~25 steps).
BAND_BYTES = 4 << 20


class PixelReader:
    """Reads a layer rectangle as RGBA bytes a band of rows per :meth:`step`, so that
    reading a huge layer never holds Krita's UI thread for long (the caller steps it from
    its timer). A layer that is not RGBA/U8 is converted in one step
    (:meth:`KritaHost.read_pixels`). ``rgba`` and ``native`` once :attr:`done`."""

    def __init__(self, host: KritaHost, doc: Any, node: Any, rect: LayerRect):
        self.host, self.doc, self.node, self.rect = host, doc, node, rect
        self.native_format = (str(node.colorModel()), str(node.colorDepth())) != ("RGBA", "U8")
        self.rows = max(1, BAND_BYTES // (4 * max(1, rect.width)))
        self.y = 0
        self.steps = 0
        # Grown a band at a time: joining the bands at the end held the UI thread 0.1 s for
        # a 6000x4000 layer (a 96 MB copy), and so did allocating it at once.
        self._buf = bytearray()
        self.rgba: Any = b""
        self.native: Optional[NativeFormat] = None
        self.done = False

    def step(self) -> bool:
        if self.done:
            return True
        self.steps += 1
        r = self.rect
        if self.native_format:
            self.rgba, self.native = self.host.read_pixels(self.doc, self.node, r)
            self.done = True
            return True
        y0, y1 = self.y, min(r.height, self.y + self.rows)
        data = bytes(self.node.pixelData(r.x, r.y + y0, r.width, y1 - y0))
        if len(data) != r.width * (y1 - y0) * 4:
            raise UserError("Krita returned %d bytes for %d rows of the %dx%d layer %r; "
                            "expected %d." % (len(data), y1 - y0, r.width, r.height, r.name,
                                              r.width * (y1 - y0) * 4))
        self._buf += bgra_to_rgba_array(data)
        self.y = y1
        if self.y >= r.height:
            self.rgba, self._buf = self._buf, bytearray()
            self.done = True
        return self.done


class ResultWriter:
    """Writes the daemon's result as a new layer, a band of rows per :meth:`step`, so that
    the UI thread never spends long on it whatever the layer's size (the caller steps it
    from its timer, between events). The daemon already blended the edit through the
    selection (unselected pixels are the source's, bit for bit): the pixels are written
    as they come, with the source's alpha, so a rerun on the result continues the edit.

    The new layer is a copy of the source (opacity, blending mode, masks, colour space),
    named after it ("art (dragged)", never "art (dragged) (dragged)"), added in the step
    after the last band: directly above the source and above the results made from it
    before. That step is Krita's floor: ``addChildNode`` waits for the whole image to be
    recomposited, an empty layer too, and the canvas then updates all of it at once (for
    6000x4000 on 2 busy cores: 0.04-0.12 s with the QPainter canvas, 0.2-0.4 s with the
    OpenGL one on a software renderer; docs/HOSTS.md). A layer
    that is not RGBA/U8 is converted back in one step (rare: 8-bit RGBA is what Krita's
    documents are by default) with the unselected pixels copied from the source bit for
    bit."""

    def __init__(self, doc: Any, source: Any, rect: LayerRect, result: Any,
                 source_rgba: bytes, native: Optional[NativeFormat],
                 mask: Optional[MaskInfo]):
        self.doc, self.source, self.rect = doc, source, rect
        self.result, self.source_rgba, self.native, self.mask = result, source_rgba, native, mask
        self.rows = max(1, BAND_BYTES // (4 * rect.width))
        self.y = 0
        self.steps = 0
        self.layer: Any = None
        new = source.duplicate()
        if new is None:
            raise UserError("Krita could not copy the layer %r." % rect.name)
        new.setName(result_name(str(source.name())))
        self.new = new

    @property
    def done(self) -> bool:
        return self.layer is not None

    def step(self) -> bool:
        """Write the next band (all of it for a converted layer). True once the layer is
        in the document."""
        if self.done:
            return True
        self.steps += 1
        r = self.rect
        if self.y >= r.height:
            self._add()            # a step of its own: Krita's share of adding is not small
        elif self.native is not None:
            self.new.setPixelData(self._native_pixels(), r.x, r.y, r.width, r.height)
            self.y = r.height
        else:
            y0, y1 = self.y, min(r.height, self.y + self.rows)
            ch = self.result.channels
            res = bytes(memoryview(self.result.data)[y0 * r.width * ch:y1 * r.width * ch])
            src = self.source_rgba[y0 * r.width * 4:y1 * r.width * 4]
            self.new.setPixelData(rgba_to_bgra(merge_alpha(res, ch, src)), r.x, r.y + y0,
                                  r.width, y1 - y0)
            self.y = y1
        return self.done

    def _native_pixels(self) -> bytes:
        r, native = self.rect, self.native
        rgba = merge_alpha(bytes(self.result.data), self.result.channels, self.source_rgba)
        tmp = self.doc.createNode("dragd conversion", PAINT)
        tmp.setColorSpace("RGBA", "U8", SRGB_PROFILE)
        tmp.setPixelData(rgba_to_bgra(rgba), r.x, r.y, r.width, r.height)
        if not tmp.setColorSpace(native.model, native.depth, native.profile):
            raise UserError("Krita could not convert the result back to %r." % native)
        data = bytes(tmp.pixelData(r.x, r.y, r.width, r.height))
        if self.mask is not None and self.mask.data is not None:
            size = native_pixel_size(native.model, native.depth) or 0
            src = bytes(self.source.pixelData(r.x, r.y, r.width, r.height))
            if size and len(src) == len(data) == size * len(self.mask.data):
                data = splice_by_mask(data, src, self.mask.data, size)
        return data

    def _add(self) -> None:
        parent = self.source.parentNode()
        siblings = list(parent.childNodes())
        idx = next((i for i, n in enumerate(siblings) if _same(n, self.source)), None)
        above = self.source
        name = str(self.new.name())
        if idx is not None:
            # childNodes() is bottom to top: step over the earlier results on the source
            while idx + 1 < len(siblings) and str(siblings[idx + 1].name()) == name \
                    and siblings[idx + 1].type() == PAINT:
                idx += 1
                above = siblings[idx]
        if not parent.addChildNode(self.new, above):
            raise UserError("Krita refused to add the result layer above %r." % self.rect.name)
        self.layer = self.new
