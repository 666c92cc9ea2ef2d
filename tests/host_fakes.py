"""Stand-ins for the parts of the host APIs the plug-ins use, for the unit tests of
tests/test_gimp_glue.py and tests/test_krita_glue.py (the real hosts: tests/test_gimp_host.py,
tests/test_krita_host.py).

GIMP: ``gi.repository.Gimp`` / ``Gegl`` (:class:`FakeGimp`, :data:`FakeGegl`), images,
layers, buffers, paths and the selection; every state-changing call is logged with the
undo-group depth it happened at (:attr:`FakeImage.log`).

Krita: libkis ``Document``, ``Node``, ``Shape``, ``Selection`` (:class:`FakeDoc`,
:class:`FakeNode`, :class:`FakeShape`, :class:`FakeSelection`), ``QTransform`` /
``QRect`` (:class:`QT`, :class:`QRect`).
"""
from __future__ import annotations

from types import SimpleNamespace

# ---------------------------------------------------------------------------
# GIMP 3: gi.repository.Gimp / Gegl
# ---------------------------------------------------------------------------


class Rect:
    def __init__(self, x, y, w, h):
        self.x, self.y, self.width, self.height = x, y, w, h

    @staticmethod
    def new(x, y, w, h):
        return Rect(x, y, w, h)


FakeGegl = SimpleNamespace(Rectangle=Rect,
                           AbyssPolicy=SimpleNamespace(NONE="none", CLAMP="clamp"))

BPP = {"R'G'B'A u8": 4, "R'G'B' u8": 3, "Y u8": 1, "Y' u8": 1}


class Buffer:
    """A buffer of `channels` bytes per pixel over the rectangle (x0, y0, w, h)."""

    def __init__(self, w, h, channels, x0=0, y0=0, fill=0, image=None):
        self.x0, self.y0, self.w, self.h, self.ch = x0, y0, w, h, channels
        self.data = bytearray([fill]) * (w * h * channels)
        self.image = image

    def get(self, rect, scale, fmt, abyss):
        assert scale == 1.0 and BPP[fmt] == self.ch
        out = bytearray()
        for y in range(rect.y, rect.y + rect.height):
            for x in range(rect.x, rect.x + rect.width):
                lx, ly = x - self.x0, y - self.y0
                if 0 <= lx < self.w and 0 <= ly < self.h:
                    i = (ly * self.w + lx) * self.ch
                    out += self.data[i:i + self.ch]
                elif abyss == "clamp":
                    cx, cy = min(max(lx, 0), self.w - 1), min(max(ly, 0), self.h - 1)
                    i = (cy * self.w + cx) * self.ch
                    out += self.data[i:i + self.ch]
                else:
                    out += bytes(self.ch)
        return bytes(out)

    def set(self, rect, fmt, data):
        if self.image is not None:
            self.image.record("Buffer.set")
        data = bytes(data)
        n = BPP[fmt]
        assert len(data) == rect.width * rect.height * n
        for y in range(rect.height):
            for x in range(rect.width):
                src = data[(y * rect.width + x) * n:(y * rect.width + x + 1) * n]
                if n == 3:
                    src += b"\xff"
                i = ((rect.y + y - self.y0) * self.w + rect.x + x - self.x0) * self.ch
                self.data[i:i + self.ch] = src[:self.ch]

    def flush(self):
        pass


class Item:
    def __init__(self, image, name):
        self.image, self.name, self.parasites = image, name, {}

    def get_name(self):
        return self.name

    def set_name(self, name):
        self.name = name

    def attach_parasite(self, p):
        self.image.record("attach_parasite")
        self.parasites[p.name] = p
        return True

    def get_parasite(self, name):
        return self.parasites.get(name)


class Layer(Item):
    def __init__(self, image, name, w, h, type_, opacity=100.0, mode="normal", alpha=True):
        super().__init__(image, name)
        self.w, self.h, self.type, self.opacity, self.mode = w, h, type_, opacity, mode
        self.alpha = alpha
        self.ox = self.oy = 0
        self.buffer = Buffer(w, h, 4, image=image)
        self.shadow = None
        self.group, self.layer = False, True
        self.children = []

    @staticmethod
    def new(image, name, w, h, type_, opacity, mode):
        image.record("Layer.new")
        return Layer(image, name, w, h, type_, opacity, mode, alpha=type_ in ("RGBA", "GRAYA"))

    def get_offsets(self):
        return True, self.ox, self.oy

    def set_offsets(self, x, y):
        self.image.record("set_offsets")
        self.ox, self.oy = x, y

    def get_width(self):
        return self.w

    def get_height(self):
        return self.h

    def is_layer(self):
        return self.layer

    def is_group(self):
        return self.group

    def get_children(self):
        return self.children

    def has_alpha(self):
        return self.alpha

    def get_opacity(self):
        return self.opacity

    def get_mode(self):
        return self.mode

    def get_parent(self):
        return None

    def get_mask(self):
        return getattr(self, "mask", None)

    def create_mask(self, kind):
        self.image.record("create_mask")
        m = Layer(self.image, "mask", self.w, self.h, "Y")
        m.buffer = Buffer(self.w, self.h, 1, image=self.image)
        return m

    def add_mask(self, m):
        self.image.record("add_mask")
        self.mask = m
        return True

    def get_buffer(self):
        return self.buffer

    def get_shadow_buffer(self):
        if self.shadow is None:
            self.shadow = Buffer(self.w, self.h, 4, image=self.image)
        return self.shadow

    def merge_shadow(self, undo):
        """Blend the shadow in through the image's selection, like GIMP."""
        self.image.record("merge_shadow")
        sel = self.image.selection
        for y in range(self.h):
            for x in range(self.w):
                m = sel.value(x + self.ox, y + self.oy) if not sel.empty else 255
                i = (y * self.w + x) * 4
                for c in range(4):
                    a, b = self.buffer.data[i + c], self.shadow.data[i + c]
                    self.buffer.data[i + c] = (a * (255 - m) + b * m + 127) // 255
        return True

    def update(self, *a):
        self.image.record("update")

    def scale(self, w, h, local_origin):
        self.image.record("scale")
        self.w, self.h = w, h


class Path(Item):
    def __init__(self, image, name, strokes):
        super().__init__(image, name)
        self.strokes = strokes  # list of control-point lists

    def get_strokes(self):
        return list(range(1, len(self.strokes) + 1))

    def stroke_get_points(self, sid):
        return "BEZIER", list(self.strokes[sid - 1]), False


def bezier(*anchors):
    """Control points of a stroke whose anchors are `anchors` (handles on the anchors)."""
    pts = []
    for x, y in anchors:
        pts += [x, y, x, y, x, y]
    return pts


class Selection:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.buf = Buffer(w, h, 1)
        self.empty = True

    def rect(self, x, y, w, h, value=255):
        self.empty = False
        for yy in range(y, y + h):
            for xx in range(x, x + w):
                self.buf.data[yy * self.w + xx] = value

    def none(self):
        self.empty = True
        self.buf.data[:] = bytes(self.w * self.h)

    def value(self, x, y):
        if 0 <= x < self.w and 0 <= y < self.h:
            return self.buf.data[y * self.w + x]
        return 0

    def get_buffer(self):
        return self.buf


class FakeImage:
    def __init__(self, w=64, h=48, base="RGB"):
        self.w, self.h, self.base = w, h, base
        self.layers = []
        self.paths = []
        self.selected_paths = []
        self.selection = Selection(w, h)
        self.depth = 0
        self.groups = 0
        self.log = []          # state-changing calls, as (name, undo depth)
        self.selected_layers = []

    def record(self, call):
        self.log.append((call, self.depth))

    def get_base_type(self):
        return self.base

    def get_selection(self):
        return self.selection

    def get_paths(self):
        return list(self.paths)

    def get_selected_paths(self):
        return list(self.selected_paths)

    def get_layers(self):
        return list(self.layers)

    def get_item_position(self, item):
        return self.layers.index(item)

    def insert_layer(self, layer, parent, position):
        self.record("insert_layer")
        self.layers.insert(position, layer)

    def remove_layer(self, layer):
        self.record("remove_layer")
        self.layers.remove(layer)

    def set_selected_layers(self, layers):
        self.record("set_selected_layers")
        self.selected_layers = list(layers)

    def undo_group_start(self):
        self.depth += 1
        self.groups += 1
        return True

    def undo_group_end(self):
        assert self.depth > 0
        self.depth -= 1
        return True


class FakeGimp:
    ImageType = SimpleNamespace(RGBA_IMAGE="RGBA", RGB_IMAGE="RGB", GRAYA_IMAGE="GRAYA",
                                GRAY_IMAGE="GRAY")
    ImageBaseType = SimpleNamespace(RGB="RGB", GRAY="GRAY")
    LayerMode = SimpleNamespace(NORMAL="normal")
    Layer = Layer
    AddMaskType = SimpleNamespace(WHITE="white")
    Parasite = SimpleNamespace(new=lambda name, flags, data: SimpleNamespace(
        name=name, flags=flags, data=data, get_data=lambda: list(data)))

    def __init__(self):
        self.calls = []
        self.Selection = SimpleNamespace(is_empty=lambda image: image.selection.empty)

    def progress_init(self, text):
        self.calls.append(("init", text))

    def progress_set_text(self, text):
        self.calls.append(("text", text))

    def progress_update(self, f):
        self.calls.append(("update", f))

    def progress_end(self):
        self.calls.append(("end",))

    def displays_flush(self):
        pass


# ---------------------------------------------------------------------------
# Krita 5: libkis and the bits of Qt it hands out
# ---------------------------------------------------------------------------


class QT:
    """Stand-in for QTransform (m11, m12, m21, m22, dx, dy)."""

    def __init__(self, a, b, c, d, e, f):
        self.v = (a, b, c, d, e, f)

    def m11(self):
        return self.v[0]

    def m12(self):
        return self.v[1]

    def m21(self):
        return self.v[2]

    def m22(self):
        return self.v[3]

    def dx(self):
        return self.v[4]

    def dy(self):
        return self.v[5]


class QRect:
    def __init__(self, x, y, w, h):
        self._v = (x, y, w, h)

    def x(self):
        return self._v[0]

    def y(self):
        return self._v[1]

    def width(self):
        return self._v[2]

    def height(self):
        return self._v[3]


class FakeShape:
    def __init__(self, svg, t, kind="KoPathShape"):
        self.svg, self.t, self.kind = svg, t, kind

    def toSvg(self):
        return self.svg

    def absoluteTransformation(self):
        return QT(*self.t)

    def type(self):
        return self.kind

    def name(self):
        return ""

    def visible(self):
        return getattr(self, "shown", True)

    def setVisible(self, on):
        self.shown = bool(on)

    def update(self):
        pass


_ids = iter(range(1, 10 ** 6))


class FakeNode:
    """A layer: BGRA pixels over the document canvas (4 bytes per pixel, RGBA/U8)."""

    def __init__(self, doc, name, kind="paintlayer"):
        self.doc, self._name, self.kind = doc, name, kind
        self.px = bytearray(doc.w * doc.h * 4)
        self.children, self.parent = [], None
        self._locked = False
        self.shapes_ = []
        self.uid = next(_ids)
        self.model = ("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc")
        self.writes = 0

    # identity / tree
    def uniqueId(self):
        return self.uid

    def name(self):
        return self._name

    def setName(self, n):
        self._name = n

    def type(self):
        return self.kind

    def parentNode(self):
        return self.parent

    def childNodes(self):
        return list(self.children)

    def addChildNode(self, child, above):
        if child.parent is not None:
            child.parent.children.remove(child)
        i = len(self.children) if above is None else self.children.index(above) + 1
        self.children.insert(i, child)
        child.parent = self
        return True

    def remove(self):
        self.parent.children.remove(self)
        self.parent = None
        return True

    # pixels
    def bounds(self):
        w = self.doc.w
        xs = [i // 4 % w for i in range(3, len(self.px), 4) if self.px[i]]
        ys = [i // 4 // w for i in range(3, len(self.px), 4) if self.px[i]]
        if not xs:
            return QRect(0, 0, 0, 0)
        return QRect(min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1)

    def pixelData(self, x, y, w, h):
        out = bytearray()
        for yy in range(y, y + h):
            for xx in range(x, x + w):
                if 0 <= xx < self.doc.w and 0 <= yy < self.doc.h:
                    i = 4 * (yy * self.doc.w + xx)
                    out += self.px[i:i + 4]
                else:
                    out += bytes(4)
        return bytes(out)

    def setPixelData(self, data, x, y, w, h):
        data = bytes(data)
        assert len(data) == 4 * w * h
        for yy in range(h):
            for xx in range(w):
                if 0 <= x + xx < self.doc.w and 0 <= y + yy < self.doc.h:
                    i = 4 * ((y + yy) * self.doc.w + x + xx)
                    j = 4 * (yy * w + xx)
                    self.px[i:i + 4] = data[j:j + 4]
        self.writes += 1

    def duplicate(self):
        n = FakeNode(self.doc, self._name + " copy", self.kind)
        n.px = bytearray(self.px)
        n.model = self.model
        return n

    def colorModel(self):
        return self.model[0]

    def colorDepth(self):
        return self.model[1]

    def colorProfile(self):
        return self.model[2]

    def setColorSpace(self, m, d, p):
        self.model = (m, d, p)
        return True

    def setLocked(self, v):
        self._locked = bool(v)

    def locked(self):
        return self._locked

    def shapes(self):
        for sh in self.shapes_:
            sh.layer = self
        return list(self.shapes_)

    def addShapesFromSvg(self, svg):
        """Like Krita: the SVG's user units are document pixels (shapes keep points)."""
        import xml.etree.ElementTree as ET
        s = 72.0 / self.doc.res
        added = []
        for el in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}line"):
            d = "M%s %s L%s %s" % (el.get("x1"), el.get("y1"), el.get("x2"), el.get("y2"))
            sh = FakeShape('<path d="%s" stroke-width="%s"/>' % (d, el.get("stroke-width")),
                           (s, 0, 0, s, 0, 0))
            sh.layer = self
            added.append(sh)
        self.shapes_.extend(added)
        return added


class FakeSelection:
    def __init__(self, doc, x, y, w, h, value=255):
        self.doc = doc
        self.rect = (x, y, w, h)
        self.value = value

    def x(self):
        return self.rect[0]

    def y(self):
        return self.rect[1]

    def width(self):
        return self.rect[2]

    def height(self):
        return self.rect[3]

    def pixelData(self, x, y, w, h):
        sx, sy, sw, sh = self.rect
        return bytes(self.value if sx <= xx < sx + sw and sy <= yy < sy + sh
                     and 0 <= xx < self.doc.w and 0 <= yy < self.doc.h else 0
                     for yy in range(y, y + h) for xx in range(x, x + w))


class FakeDoc:
    def __init__(self, w=64, h=48, res=144.0):
        self.w, self.h, self.res = w, h, res
        self.root = FakeNode(self, "root", "grouplayer")
        self.active = None
        self.sel = None

    def width(self):
        return self.w

    def height(self):
        return self.h

    def xRes(self):
        return self.res

    def yRes(self):
        return self.res

    def rootNode(self):
        return self.root

    def activeNode(self):
        return self.active

    def setActiveNode(self, n):
        self.active = n

    def selection(self):
        return self.sel

    def createNode(self, name, kind):
        return FakeNode(self, name, kind)

    def colorModel(self):
        return "RGBA"

    def colorDepth(self):
        return "U8"
