"""The live view in Krita: the authors' interactive DragGAN tool as a window opened from the
docker's "Live view" button.

It shows the region being edited (the selection's box; once the daemon has opened the layer,
the square it works on), zoomable. A click places a handle, the next its target (drawn as an
arrow); points are dragged to move them and right-clicked to remove them; the lines already
drawn on the arrows' vector layer are the first points. Start runs the drag and the view
shows every preview the daemon sends, the handles where its tracker has them; Stop keeps
the state; Continue drags on from it with the points as they are; Reset points starts a new
point set. Each finished drag is a thumbnail in the history strip: clicking one goes back to
it (the daemon's undo). Apply writes the state shown as a new layer, named and placed as the
Run button's result (one undo step in Krita); Cancel leaves the image as it was. The
selection is the movable region, shown dimmed outside, with a switch to ignore it; the Brush
paints it (left button adds, right button takes away) for the next drag. The connection line
is always shown; when no daemon answers on the local default address and ``dragd`` is
installed, the window offers to start one and says where its log goes.

Everything runs from one 30 ms QTimer that polls the session without waiting
(:class:`~..plugin_common.live.LiveSession`) and reads or writes at most one band of pixels
(:class:`~.host.PixelReader`, :class:`~.host.ResultWriter`), so Krita never waits on the
network or on pixels.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

from PyQt5.QtCore import QPointF, QSize, Qt, QTimer
from PyQt5.QtGui import QBrush, QColor, QIcon, QImage, QPainter, QPen, QPixmap, QPolygonF
from PyQt5.QtWidgets import (QCheckBox, QDialog, QHBoxLayout, QLabel, QListView,
                             QListWidget, QListWidgetItem, QPushButton, QScrollArea,
                             QToolButton, QVBoxLayout, QWidget)

from ..plugin_common import daemon_launcher
from ..plugin_common.geometry import region_box, view_crop
from ..plugin_common.loader import load_task
from ..plugin_common.mask import DIM_ALPHA
from .host import PAINT, KritaHost
from .model import CLIENT_NAME, DragSettings, JobModel, UserError

POLL_INTERVAL_MS = 30
#: The view's longest side when it opens (view pixels); the zoom buttons change it.
VIEW_SIZE = 560
THUMB_SIZE = 72
#: A press this close to a point (view pixels) grabs it instead of placing a new one.
GRAB_RADIUS = 8.0
#: The mask brush's radius in view pixels (zoom in for a finer brush).
BRUSH_RADIUS = 14.0
HANDLE_COLOUR = QColor(255, 59, 48)
TARGET_COLOUR = QColor(10, 132, 255)
WINDOW_TITLE = "DragGAN live view"

_open: List["LiveDialog"] = []          # open windows (and their timers) stay alive


def live_module() -> Any:
    """The live session's module; a UserError saying how to install pyzmq and msgpack when
    Krita's Python lacks them."""
    load_task("Krita", "docs/KRITA.md")
    from ..plugin_common import live

    return live


class LiveInputs:
    """What the view edits, read out of the document: the paint layer (the active one, or
    the one below the arrows' vector layer), its rectangle, the arrows already drawn (none
    is fine here), the selection, and a banded reader of its pixels."""

    def __init__(self, host: KritaHost, doc: Any):
        if doc is None:
            raise UserError("No document is open. Open an image first.")
        active = doc.activeNode()
        source = active if active is not None and active.type() == PAINT else None
        try:
            source, vector = host.find_targets(doc, source)
        except UserError:
            if source is None:
                raise
            vector = None       # no arrows yet: the user clicks them in the view
        self.host, self.doc, self.source, self.vector = host, doc, source, vector
        self.rect = host.layer_rect(doc, source)
        self.arrows: list = []
        if vector is not None:
            try:
                self.arrows, _ = host.read_arrows(doc, vector, self.rect)
            except UserError:
                pass        # an arrows layer without arrows yet: they are clicked here
        self.mask = host.read_mask(doc, self.rect)
        self.reader = host.pixel_reader(doc, source, self.rect)


class LiveCanvas(QWidget):
    """The picture with the points; mouse clicks edit them. ``scale``: view pixels per layer
    pixel."""

    def __init__(self, dialog: "LiveDialog"):
        super().__init__()
        self.dialog = dialog
        self.scale = 1.0
        self.setMouseTracking(False)
        self._held: Optional[Tuple[int, str]] = None
        self._brushing: Optional[bool] = None    # True: adding, False: taking away
        self._brushed_at: Tuple[float, float] = (0.0, 0.0)
        self._cache: dict = {}

    # -- coordinates ------------------------------------------------------------------

    def box(self) -> Tuple[float, float, float, float]:
        live = self.dialog.live
        if live is not None:
            return live.view_box
        r = self.dialog.inputs.mask.region() if self.dialog.inputs else None
        return region_box(r, *self.dialog.layer_size())

    def fit(self, longest: int = VIEW_SIZE) -> None:
        x0, y0, x1, y1 = self.box()
        self.set_scale(longest / max(1.0, x1 - x0, y1 - y0))

    def set_scale(self, scale: float) -> None:
        self.scale = max(0.05, min(64.0, scale))
        x0, y0, x1, y1 = self.box()
        self.setFixedSize(QSize(max(1, int(round((x1 - x0) * self.scale))),
                                max(1, int(round((y1 - y0) * self.scale)))))
        self._cache.clear()
        self.update()

    def to_layer(self, pos: Any) -> Tuple[float, float]:
        x0, y0, _, _ = self.box()
        return (x0 + pos.x() / self.scale, y0 + pos.y() / self.scale)

    def to_view(self, p: Any) -> QPointF:
        x0, y0, _, _ = self.box()
        return QPointF((p[0] - x0) * self.scale, (p[1] - y0) * self.scale)

    # -- drawing ----------------------------------------------------------------------

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(40, 40, 40))
        live = self.dialog.live
        frame = live.frame if live is not None else None
        base = self._pixmap(("base",), self.dialog.base_image, self.dialog.layer_box())
        if base is not None:
            p.drawPixmap(*base)
        if frame is not None and frame.serial > 1:      # 1 is the layer itself
            shown = self._pixmap(("frame", frame.serial), _qimage(frame.image), frame.box)
            if shown is not None:
                p.drawPixmap(*shown)
        if live is not None and live.use_mask:
            over = self._pixmap(("mask",), self.dialog.mask_overlay(), self.dialog.layer_box())
            if over is not None:
                p.drawPixmap(*over)
        p.setRenderHint(QPainter.Antialiasing)
        points = live.shown_points() if live is not None else []
        for handle, target in points:
            self._draw_point(p, handle, target)
        p.end()

    def _pixmap(self, key: tuple, img: Optional[QImage], box: Tuple[float, float, float, float]
                ) -> Optional[Tuple[int, int, QPixmap]]:
        """``img`` (covering the layer box ``box``) cut to the view's box and scaled to the
        view, made once per key and zoom: a repaint only blits it."""
        if img is None or img.isNull():
            return None
        if key in self._cache:
            return self._cache[key]
        if key[0] == "frame":          # keep one frame: the next one replaces it
            for k in [k for k in self._cache if k[0] == "frame"]:
                del self._cache[k]
        crop = view_crop(self.box(), box, (img.width(), img.height()), self.scale)
        if crop is None:
            return None
        cut, (x, y), (w, h) = crop
        mode = Qt.FastTransformation if self.scale >= 2 else Qt.SmoothTransformation
        out = (x, y, QPixmap.fromImage(img.copy(*cut).scaled(w, h, Qt.IgnoreAspectRatio, mode)))
        self._cache[key] = out
        return out

    def _draw_point(self, p: QPainter, handle: Any, target: Any) -> None:
        h = self.to_view(handle)
        if target is not None:
            t = self.to_view(target)
            p.setPen(QPen(QColor(255, 255, 255), 2))
            p.drawLine(h, t)
            _arrowhead(p, h, t)
            p.setPen(QPen(QColor(0, 0, 0), 1))
            p.setBrush(QBrush(TARGET_COLOUR))
            p.drawEllipse(t, 5, 5)
        p.setPen(QPen(QColor(0, 0, 0), 1))
        p.setBrush(QBrush(HANDLE_COLOUR))
        p.drawEllipse(h, 5, 5)

    # -- the mouse --------------------------------------------------------------------

    def mousePressEvent(self, event: Any) -> None:
        live = self.dialog.live
        if live is None:
            return
        pt = self.to_layer(event.pos())
        if self.dialog.brush_check.isChecked():
            self._brushing = event.button() == Qt.LeftButton
            self._brushed_at = pt
            live.brush(pt, BRUSH_RADIUS / self.scale, grow=self._brushing)
            self.dialog.refresh()
            return
        hit = live.grab(pt, GRAB_RADIUS / self.scale)
        if event.button() == Qt.RightButton:
            if hit is not None:
                live.remove(hit[0])
        elif event.button() == Qt.LeftButton:
            if hit is not None:
                self._held = hit
            else:
                live.click(pt)
                self.dialog.clicks += 1
        self.dialog.refresh()

    def mouseMoveEvent(self, event: Any) -> None:
        live = self.dialog.live
        if live is not None and self._brushing is not None:
            pt = self.to_layer(event.pos())
            live.brush_line(self._brushed_at, pt, BRUSH_RADIUS / self.scale,
                            grow=self._brushing)
            self._brushed_at = pt
            self.dialog.refresh()
        elif live is not None and self._held is not None:
            live.move(self._held[0], self._held[1], self.to_layer(event.pos()))
            self.update()

    def wheelEvent(self, event: Any) -> None:
        """Ctrl + wheel zooms (the wheel alone scrolls)."""
        if event.modifiers() & Qt.ControlModifier:
            self.set_scale(self.scale * (1.25 if event.angleDelta().y() > 0 else 0.8))
            event.accept()
        else:
            event.ignore()

    def mouseReleaseEvent(self, event: Any) -> None:
        self._held = None
        self._brushing = None
        self.dialog.refresh()


def _arrowhead(p: QPainter, h: QPointF, t: QPointF) -> None:
    dx, dy = t.x() - h.x(), t.y() - h.y()
    n = math.hypot(dx, dy)
    if n < 1:
        return
    ux, uy = dx / n, dy / n
    size = 9.0
    left = QPointF(t.x() - size * ux + size * 0.5 * uy, t.y() - size * uy - size * 0.5 * ux)
    right = QPointF(t.x() - size * ux - size * 0.5 * uy, t.y() - size * uy + size * 0.5 * ux)
    p.setBrush(QBrush(QColor(255, 255, 255)))
    p.drawPolygon(QPolygonF([t, left, right]))


def _qimage(img: Any) -> Optional[QImage]:
    """A protocol Image (RGB or RGBA, 8 bit) as a QImage that owns its pixels."""
    if img is None or img.channels not in (3, 4):
        return None
    fmt = QImage.Format_RGB888 if img.channels == 3 else QImage.Format_RGBA8888
    data = bytes(img.data)
    return QImage(data, img.width, img.height, img.width * img.channels, fmt).copy()


class LiveDialog(QDialog):
    """The live view's window over one document's paint layer."""

    def __init__(self, doc: Any, settings: DragSettings, parent: Any = None, *,
                 host: Any = None):
        super().__init__(parent)
        self.setWindowTitle(WINDOW_TITLE)
        self.doc = doc
        self.settings = settings
        self.host = host or KritaHost()
        self.inputs: Optional[LiveInputs] = None
        self.live: Any = None
        self.launcher: Any = None
        self.writer: Any = None
        self.applied: Any = None          # the result layer, once Apply wrote it
        self.base_image: Optional[QImage] = None
        self.clicks = 0
        self._source_rgba = b""
        self._native: Any = None
        self._overlay: Optional[QImage] = None
        self._shown: Any = None
        self._history_shown: Any = None
        self._offered: Any = None         # the failed session the offer was made for
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.tick)

    # -- layout -----------------------------------------------------------------------

    def _build(self) -> None:
        self.connection_label = QLabel()
        self.connection_label.setWordWrap(True)
        self.offer_label = QLabel()
        self.offer_label.setWordWrap(True)
        self.offer_button = QPushButton("Start the daemon")
        self.offer_button.clicked.connect(self.start_daemon)
        self.retry_button = QPushButton("Connect again")
        self.retry_button.clicked.connect(self.reconnect)
        offer = QHBoxLayout()
        offer.addWidget(self.offer_label, 1)
        offer.addWidget(self.offer_button)
        offer.addWidget(self.retry_button)

        self.canvas = LiveCanvas(self)
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.canvas)
        self.scroll.setAlignment(Qt.AlignCenter)
        self.scroll.setMinimumSize(VIEW_SIZE + 24, VIEW_SIZE + 24)

        self.zoom_out = _tool("\u2212", "Zoom out (or Ctrl + wheel)",
                              lambda: self.zoom(1 / 1.5))
        self.zoom_fit = _tool("Fit", "Fit the region to the window",
                              lambda: self.canvas.fit())
        self.zoom_in = _tool("+", "Zoom in", lambda: self.zoom(1.5))
        self.mask_check = QCheckBox("Only the selection may move")
        self.mask_check.setToolTip("The selection is the movable region (the rest is shown "
                                   "dimmed); off: everything may move")
        self.mask_check.toggled.connect(self._mask_toggled)
        tools = QHBoxLayout()
        for w in (self.zoom_out, self.zoom_fit, self.zoom_in):
            tools.addWidget(w)
        tools.addStretch(1)
        self.brush_check = QCheckBox("Brush")
        self.brush_check.setToolTip("Paint the movable region on the picture: left button "
                                    "adds, right button takes away (a soft round brush)")
        tools.addWidget(self.brush_check)
        tools.addWidget(self.mask_check)

        self.start_button = _button("Start", "Drag the handles (red) to the targets (blue); "
                                    "after a drag, Continue drags on from where it ended",
                                    self.start_drag)
        self.stop_button = _button("Stop", "Stop the drag and keep what it reached",
                                   self.stop_drag)
        self.reset_button = _button("Reset points", "Remove the points and start a new set "
                                    "from this picture", self.reset_points)
        self.apply_button = _button("Apply", "Write the picture shown as a new layer above "
                                    "the source", self.apply)
        self.cancel_button = _button("Cancel", "Close the live view and leave the image as it "
                                     "was", self.reject)
        buttons = QHBoxLayout()
        for w in (self.start_button, self.stop_button, self.reset_button):
            buttons.addWidget(w)
        buttons.addStretch(1)
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.cancel_button)

        self.history_list = QListWidget()
        self.history_list.setViewMode(QListView.IconMode)
        self.history_list.setFlow(QListView.LeftToRight)
        self.history_list.setWrapping(False)
        self.history_list.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.history_list.setFixedHeight(THUMB_SIZE + 44)
        self.history_list.setToolTip("Each finished drag; click one to go back to it")
        self.history_list.itemClicked.connect(self._history_clicked)

        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)

        box = QVBoxLayout()
        box.addWidget(self.connection_label)
        box.addLayout(offer)
        box.addWidget(self.scroll, 1)
        box.addLayout(tools)
        box.addLayout(buttons)
        box.addWidget(QLabel("History"))
        box.addWidget(self.history_list)
        box.addWidget(self.status_label)
        self.setLayout(box)

    # -- opening ----------------------------------------------------------------------

    def load(self) -> bool:
        """Read the document and connect; False (the reason in the status line) when there
        is nothing to edit."""
        try:
            self.settings.validate()
            live_module()
            self.inputs = LiveInputs(self.host, self.doc)
        except UserError as e:
            self.status_label.setText(str(e))
            self._set_offer(None)
            self.refresh()
            return False
        has_sel = self.inputs.mask.data is not None
        self.mask_check.setEnabled(has_sel)
        self.mask_check.setChecked(has_sel)
        self.status_label.setText("Reading the layer\u2026")
        self._set_offer(None)
        self.canvas.fit()
        self.timer.start()
        return True

    def layer_size(self) -> Tuple[int, int]:
        r = self.inputs.rect if self.inputs else None
        return (r.width, r.height) if r else (1, 1)

    def layer_box(self) -> Tuple[float, float, float, float]:
        w, h = self.layer_size()
        return (0.0, 0.0, float(w), float(h))

    def mask_overlay(self) -> Optional[QImage]:
        """The unselected part dimmed: the selection's bytes inverted as alpha, made once."""
        m = self.live.mask if self.live is not None else None
        if m is None or m.data is None:
            return None
        if self._overlay is None:
            alpha = m.data.translate(DIM_ALPHA)
            img = QImage(alpha, m.width, m.height, m.width, QImage.Format_Alpha8)
            self._overlay = img.convertToFormat(QImage.Format_ARGB32_Premultiplied)
        return self._overlay

    def _start_session(self) -> None:
        inp = self.inputs
        mod = live_module()
        image = mod.Image(self._source_rgba, inp.rect.width, inp.rect.height, 4)
        old_points = self.live.points if self.live is not None else None
        self.live = mod.LiveSession(self.settings, image, inp.mask, arrows=inp.arrows,
                                    client_name=CLIENT_NAME,
                                    too_many_points=JobModel.TOO_MANY_POINTS)
        if old_points:
            self.live.points = old_points
        self.canvas._cache.clear()          # the new session numbers its frames afresh
        self.live.set_use_mask(self.mask_check.isChecked())
        self.live.start()

    # -- the timer --------------------------------------------------------------------

    def tick(self) -> None:
        """The timer's callback: nothing may escape it into Krita."""
        try:
            self._tick()
            self.refresh()
        except Exception as e:
            from ..plugin_common.messages import bug

            self.writer = None
            self._say(str(e) if isinstance(e, UserError) else bug(e))

    def _say(self, message: str) -> None:
        """A sentence that stays: as the session's notice the status line keeps it until
        the next action (it would replace a label text at the next tick)."""
        if self.live is not None:
            self.live.notice = message
        self.status_label.setText(message)

    def _tick(self) -> None:
        inp = self.inputs
        if inp is not None and inp.reader is not None:
            if inp.reader.step():
                self._source_rgba, self._native = inp.reader.rgba, inp.reader.native
                inp.reader = None
                w, h = self.layer_size()
                self.base_image = QImage(self._source_rgba, w, h, w * 4,
                                         QImage.Format_RGBA8888).copy()
                self._start_session()
                self.canvas.fit()
            return
        if self.launcher is not None and not self.launcher.tick():
            done, self.launcher = self.launcher, None
            if done.state == "ready":
                self._start_session()
            else:
                self.status_label.setText(done.message)
        if self.live is not None:
            before = self.live.view_box
            self.live.tick(0)
            if self.live.view_box != before:
                self.canvas.fit()
            if self.live.state == "failed" and self._offered is not self.live:
                self._offered = self.live          # looks for dragd once per failure
                self._set_offer(self.live)
        if self.writer is not None and self.writer.step():
            self._applied(self.writer.layer)

    # -- what the buttons do -------------------------------------------------------------

    def start_drag(self) -> None:
        if self.live is not None:
            self.live.start_drag()
        self.refresh()

    def stop_drag(self) -> None:
        if self.live is not None:
            self.live.stop()
        self.refresh()

    def reset_points(self) -> None:
        if self.live is not None:
            self.live.reset_points()
        self.refresh()

    def zoom(self, factor: float) -> None:
        self.canvas.set_scale(self.canvas.scale * factor)

    def go_to(self, index: int) -> bool:
        ok = self.live is not None and self.live.go_to(index)
        self.refresh()
        return ok

    def apply(self) -> None:
        live, inp = self.live, self.inputs
        if live is None or not live.can_apply() or self.writer is not None:
            return
        self.writer = self.host.result_writer(self.doc, inp.source, inp.rect, live.result,
                                              self._source_rgba, self._native,
                                              live.mask if live.use_mask else None)
        self.status_label.setText("Writing the result layer\u2026")

    def start_daemon(self) -> None:
        command = daemon_launcher.find_dragd()
        if command is None:
            return
        self.launcher = daemon_launcher.DaemonStart(command)
        self.launcher.start()
        self._set_offer(None)
        self.status_label.setText(self.launcher.message)

    def reconnect(self) -> None:
        if self.inputs is not None and self.inputs.reader is None:
            self._set_offer(None)
            self._start_session()

    def _applied(self, layer: Any) -> None:
        self.writer = None
        self.applied = layer
        try:
            self.doc.setActiveNode(layer)
        except Exception:
            pass        # selecting the result is a courtesy; it is written
        self.accept()

    def _sync_mask_check(self) -> None:
        """The switch as the session has it (the brush makes a region where none was)."""
        live = self.live
        self.mask_check.blockSignals(True)
        self.mask_check.setEnabled(live.mask is not None and live.mask.data is not None)
        self.mask_check.setChecked(live.use_mask)
        self.mask_check.blockSignals(False)

    def _mask_toggled(self, on: bool) -> None:
        if self.live is not None:
            self.live.set_use_mask(on)
        self.canvas.update()

    def _history_clicked(self, item: QListWidgetItem) -> None:
        self.go_to(int(item.data(Qt.UserRole)))

    # -- closing ----------------------------------------------------------------------

    def done(self, result: int) -> None:
        """Apply, Cancel and the window's close button all end here: the daemon session
        is closed (a later view on the result layer continues the edit)."""
        self.timer.stop()
        if self.live is not None:
            self.live.close()
        if self in _open:
            _open.remove(self)
        super().done(result)

    # -- showing the state ------------------------------------------------------------

    def _set_offer(self, live: Any) -> None:
        """Offer to start a daemon when none answers on the local default address and
        dragd is installed here; else, after a failure, to connect again."""
        failed = live is not None and live.state == "failed"
        offer = daemon_launcher.offer(self.settings.endpoint, failed and not live.connected)
        self.offer_label.setText(offer or "")
        self.offer_label.setVisible(bool(offer))
        self.offer_button.setVisible(bool(offer))
        self.retry_button.setVisible(failed)

    def refresh(self) -> None:
        live = self.live
        if live is None:
            self._buttons(False, False, False, False)
            self.connection_label.setText(
                "Starting the daemon\u2026" if self.launcher is not None else
                "Not connected yet.")
            return
        conn = live.connection_line()
        self.connection_label.setText(("\u25cf " if live.connected else "\u25cb ") + conn)
        if self.writer is None and self.launcher is None:
            self.status_label.setText(live.status_line())
        idle = live.state == "idle" and self.writer is None
        self.start_button.setText("Continue" if live.position > 0 else "Start")
        self._buttons(idle and live.can_start(), live.state == "dragging", idle,
                      idle and live.can_apply())
        shown = (live.frame.serial if live.frame else 0, live.state,
                 tuple(live.shown_points()), live.use_mask, live.mask_serial)
        if shown != self._shown:
            if self._shown is not None and self._shown[-1] != live.mask_serial:
                self._overlay = None                 # the brush changed the region
                self.canvas._cache.pop(("mask",), None)
                self._sync_mask_check()
            self._shown = shown
            self.canvas.update()
        hist = (tuple(e.index for e in live.history), live.position)
        if hist != self._history_shown:
            self._history_shown = hist
            self._show_history()

    def _buttons(self, start: bool, stop: bool, reset: bool, apply: bool) -> None:
        self.start_button.setEnabled(start)
        self.stop_button.setEnabled(stop)
        self.reset_button.setEnabled(reset)
        self.apply_button.setEnabled(apply)

    def _show_history(self) -> None:
        self.history_list.clear()
        for e in self.live.history:
            item = QListWidgetItem(e.label())
            img = _qimage(e.frame.image) if e.frame is not None else None
            if img is not None and e.frame.serial > 1:
                item.setIcon(QIcon(QPixmap.fromImage(img.scaled(
                    THUMB_SIZE, THUMB_SIZE, Qt.KeepAspectRatio, Qt.SmoothTransformation))))
            elif self.base_image is not None:
                item.setIcon(QIcon(QPixmap.fromImage(self.base_image.scaled(
                    THUMB_SIZE, THUMB_SIZE, Qt.KeepAspectRatio, Qt.SmoothTransformation))))
            item.setData(Qt.UserRole, e.index)
            self.history_list.addItem(item)
            if e.index == self.live.position:
                item.setSelected(True)


def _button(text: str, tip: str, fn: Any) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(tip)
    b.clicked.connect(fn)
    return b


def _tool(text: str, tip: str, fn: Any) -> QToolButton:
    b = QToolButton()
    b.setText(text)
    b.setToolTip(tip)
    b.clicked.connect(fn)
    return b


def open_live_view(doc: Any, settings: DragSettings, parent: Any = None) -> LiveDialog:
    """Open the live view on ``doc``'s paint layer (the docker's Live view button) and
    return it at once; the window says itself when there is nothing to edit."""
    dialog = LiveDialog(doc, settings, parent)
    _open.append(dialog)
    dialog.load()
    dialog.show()
    return dialog


__all__ = ["LiveDialog", "open_live_view"]
