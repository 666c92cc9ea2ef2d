"""The live view in GIMP: "Filters > Generative > Drag live (DragGAN)...", the authors'
interactive DragGAN tool as a dialog of the plug-in.

It shows the region being edited (the selection's box; once the daemon has opened the layer,
the square it works on), zoomable. A click places a handle, the next its target (drawn as an
arrow); points are dragged to move them and right-clicked to remove them; the strokes of the
selected path (else the only path) are the first points. Start runs the drag and the view
shows every preview the daemon sends, the handles where its tracker has them; Stop keeps the
state; Continue drags on from it; Reset points starts a new point set. Each finished drag is
a thumbnail in the history strip: clicking one goes back to it (the daemon's undo). Apply
writes the state shown as a new layer, named and placed as the batch filter's result, in one
undo step; Cancel leaves the image as it was. The selection is the movable region, shown
dimmed outside, with a switch to ignore it; the Brush paints it (left button adds, right
button takes away) for the next drag. The connection line is always shown; when no
daemon answers on the local default address and ``dragd`` is installed, the dialog offers to
start one and says where its log goes.

The plug-in is a process of its own: its GTK main loop runs the dialog, and a 30 ms GLib
timeout polls the session without waiting (:class:`~..plugin_common.live.LiveSession`), so
neither GIMP nor the dialog ever waits on the network.

Test hook (the host tests under Xvfb, inert otherwise): ``DRAGD_GIMP_TEST_LIVE=FILE`` runs
``FILE``'s ``main(window)`` once the dialog is shown (it drives the widgets with GTK events).
"""
from __future__ import annotations

import functools
import math
import os
import runpy
import traceback
from typing import Any, List, Optional, Tuple

from ..plugin_common import daemon_launcher
from ..plugin_common.geometry import view_crop
from ..plugin_common.loader import load_task
from ..plugin_common.mask import DIM_ALPHA
from .host import GimpHost, UndoGroup
from .model import CLIENT_NAME, DragSettings, JobModel, UserError, region_for

POLL_MS = 30
VIEW_SIZE = 560
THUMB_SIZE = 72
GRAB_RADIUS = 8.0              # view pixels: a press this close grabs a point
BRUSH_RADIUS = 14.0            # view pixels: the mask brush (zoom in for a finer one)
HANDLE_RGB = (255, 59, 48)
TARGET_RGB = (10, 132, 255)
TITLE = "Drag live (DragGAN)"
LIVE_PROCEDURE_NAME = "plug-in-dragd-live"
LIVE_MENU_LABEL = "Drag _live (DragGAN)..."


def live_module() -> Any:
    load_task("GIMP", "docs/GIMP.md")
    from ..plugin_common import live

    return live


@functools.lru_cache(maxsize=None)
def _gtk() -> Tuple[Any, Any, Any, Any]:
    # Cached: gi.require_version walks the typelib repository each time (~0.1 ms), and the
    # arrows are drawn as hundreds of small composites (57 ms of a redraw, measured in GIMP).
    import gi
    gi.require_version("Gtk", "3.0")
    gi.require_version("Gdk", "3.0")
    gi.require_version("GdkPixbuf", "2.0")
    from gi.repository import Gdk, GdkPixbuf, GLib, Gtk
    return Gtk, Gdk, GdkPixbuf, GLib


def pixbuf(img: Any) -> Any:
    """A protocol Image (RGB or RGBA) as a GdkPixbuf that owns its bytes."""
    _, _, GdkPixbuf, GLib = _gtk()
    if img is None or img.channels not in (3, 4):
        return None
    return GdkPixbuf.Pixbuf.new_from_bytes(
        GLib.Bytes.new(bytes(img.data)), GdkPixbuf.Colorspace.RGB, img.channels == 4, 8,
        img.width, img.height, img.width * img.channels)


class LiveWindow:
    """The dialog over one layer. :meth:`run` shows it until Apply, Cancel or closing;
    ``applied`` is then the result layer (None: the image is unchanged)."""

    def __init__(self, GimpUi: Any, host: GimpHost, image: Any, layer: Any,
                 settings: DragSettings):
        self.Gtk, self.Gdk, self.GdkPixbuf, self.GLib = _gtk()
        self.host, self.image, self.layer, self.settings = host, image, layer, settings
        live_module()
        self.geometry = host.geometry(layer)
        self.pixels = host.read_pixels(layer)
        self.mask = host.read_mask(image, layer)
        self.arrows: list = []
        self.arrows_note = ""
        if list(image.get_paths() or []):
            try:
                self.arrows, _ = host.read_arrows(image, layer)
            except UserError as e:
                self.arrows_note = str(e)
        self.region = region_for(self.mask, self.arrows, host.result_tag(layer))
        self.live: Any = None
        self.launcher: Any = None
        self.applied: Any = None
        self.scale = 1.0
        self.clicks = 0
        self._held: Optional[Tuple[int, str]] = None
        self._brushing: Optional[bool] = None      # True: adding, False: taking away
        self._brushed_at: Tuple[float, float] = (0.0, 0.0)
        self._cache: dict = {}
        self._shown: Any = None
        self._history_shown: Any = None
        self._offered: Any = None          # the failed session the offer was made for
        g = self.geometry
        self.base = pixbuf(live_module().Image(self.pixels, g.width, g.height, 4))
        self._build(GimpUi)
        self._start_session()
        self.fit()

    # -- layout -----------------------------------------------------------------------

    def _build(self, GimpUi: Any) -> None:
        Gtk, Gdk = self.Gtk, self.Gdk
        d = GimpUi.Dialog(title=TITLE, role="dragd-live")
        d.connect("delete-event", lambda *a: self.cancel() or True)
        box = d.get_content_area()
        box.set_spacing(6)
        box.set_border_width(10)
        self.connection_label = _label(Gtk)
        box.pack_start(self.connection_label, False, False, 0)
        offer = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.offer_label = _label(Gtk)
        self.offer_button = Gtk.Button(label="Start the daemon")
        self.offer_button.connect("clicked", lambda b: self.start_daemon())
        self.retry_button = Gtk.Button(label="Connect again")
        self.retry_button.connect("clicked", lambda b: self.reconnect())
        offer.pack_start(self.offer_label, True, True, 0)
        offer.pack_start(self.offer_button, False, False, 0)
        offer.pack_start(self.retry_button, False, False, 0)
        box.pack_start(offer, False, False, 0)

        # The picture is composed into a pixbuf shown by a Gtk.Image: Debian's GIMP 3 does not
        # bring pycairo (python3-gi-cairo), without which a DrawingArea cannot draw from Python.
        self.picture = Gtk.Image()
        self.area = Gtk.EventBox()
        self.area.add(self.picture)
        for w in (self.picture, self.area):
            w.set_halign(Gtk.Align.START)
            w.set_valign(Gtk.Align.START)
        self.area.add_events(Gdk.EventMask.BUTTON_PRESS_MASK | Gdk.EventMask.BUTTON_RELEASE_MASK
                             | Gdk.EventMask.BUTTON1_MOTION_MASK
                             | Gdk.EventMask.BUTTON3_MOTION_MASK)
        self.area.add_events(Gdk.EventMask.SCROLL_MASK)
        self.area.connect("scroll-event", self._scroll)
        self.area.connect("button-press-event", self._press)
        self.area.connect("motion-notify-event", self._motion)
        self.area.connect("button-release-event", self._release)
        scroll = Gtk.ScrolledWindow()
        scroll.set_size_request(VIEW_SIZE + 24, VIEW_SIZE + 24)
        scroll.add(self.area)
        box.pack_start(scroll, True, True, 0)

        tools = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=4)
        for text, tip, fn in (("\u2212", "Zoom out (or Ctrl + wheel)",
                               lambda b: self.zoom(1 / 1.5)),
                              ("Fit", "Fit the region to the window", lambda b: self.fit()),
                              ("+", "Zoom in", lambda b: self.zoom(1.5))):
            b = Gtk.Button(label=text)
            b.set_tooltip_text(tip)
            b.connect("clicked", fn)
            tools.pack_start(b, False, False, 0)
            if text == "Fit":
                self.zoom_fit = b
        self.mask_check = Gtk.CheckButton(label="Only the selection may move")
        self.mask_check.set_tooltip_text("The selection is the movable region (the rest is "
                                         "shown dimmed); off: everything may move")
        has_sel = self.mask.data is not None
        self.mask_check.set_active(has_sel)
        self.mask_check.set_sensitive(has_sel)
        self.mask_check.connect("toggled", self._mask_toggled)
        tools.pack_end(self.mask_check, False, False, 0)
        self.brush_check = Gtk.CheckButton(label="Brush")
        self.brush_check.set_tooltip_text("Paint the movable region on the picture: left "
                                          "button adds, right button takes away (a soft "
                                          "round brush)")
        tools.pack_end(self.brush_check, False, False, 0)
        box.pack_start(tools, False, False, 0)

        buttons = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.start_button = _button(Gtk, "Start", "Drag the handles (red) to the targets "
                                    "(blue); after a drag, Continue drags on from where it "
                                    "ended", self.start_drag)
        self.stop_button = _button(Gtk, "Stop", "Stop the drag and keep what it reached",
                                   self.stop_drag)
        self.reset_button = _button(Gtk, "Reset points", "Remove the points and start a new "
                                    "set from this picture", self.reset_points)
        self.apply_button = _button(Gtk, "Apply", "Write the picture shown as a new layer "
                                    "above the source (one undo step)", self.apply)
        self.cancel_button = _button(Gtk, "Cancel", "Close the live view and leave the image "
                                     "as it was", self.cancel)
        for b in (self.start_button, self.stop_button, self.reset_button):
            buttons.pack_start(b, False, False, 0)
        for b in (self.cancel_button, self.apply_button):
            buttons.pack_end(b, False, False, 0)
        box.pack_start(buttons, False, False, 0)

        box.pack_start(_label(Gtk, "History"), False, False, 0)
        self.history_box = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=4)
        strip = Gtk.ScrolledWindow()
        strip.set_policy(Gtk.PolicyType.AUTOMATIC, Gtk.PolicyType.NEVER)
        strip.set_size_request(-1, THUMB_SIZE + 40)
        strip.add(self.history_box)
        box.pack_start(strip, False, False, 0)
        self.history_buttons: List[Any] = []
        self.status_label = _label(Gtk)
        self.status_label.set_selectable(True)
        box.pack_start(self.status_label, False, False, 0)
        d.show_all()
        self.dialog = d
        self._set_offer()

    # -- running ----------------------------------------------------------------------

    def run(self) -> Any:
        """The dialog's main loop, until it closes; returns the result layer or None."""
        self.timer_id = self.GLib.timeout_add(POLL_MS, self._tick)
        script = os.environ.get("DRAGD_GIMP_TEST_LIVE")
        if script:
            self.GLib.idle_add(self._run_test, script)
        self.Gtk.main()
        return self.applied

    def _run_test(self, script: str) -> bool:
        try:
            runpy.run_path(script, run_name="dragd_gimp_live_test")["main"](self)
        except Exception:
            traceback.print_exc()
            self.cancel()
        return False

    def _start_session(self) -> None:
        mod = live_module()
        g = self.geometry
        old = self.live.points if self.live is not None else None
        self.live = mod.LiveSession(self.settings, mod.Image(self.pixels, g.width, g.height, 4),
                                    self.mask, arrows=self.arrows, region=self.region,
                                    client_name=CLIENT_NAME,
                                    too_many_points=JobModel.TOO_MANY_POINTS)
        if old:
            self.live.points = old
        self.live.set_use_mask(self.mask_check.get_active())
        self._cache.clear()
        self.live.start()

    def _tick(self) -> bool:
        if self.dialog is None:
            return False
        try:
            if self.launcher is not None and not self.launcher.tick():
                done, self.launcher = self.launcher, None
                if done.state == "ready":
                    self._start_session()
                else:
                    self.status_label.set_text(done.message)
            before = self.live.view_box
            self.live.tick(0)
            if self.live.view_box != before:
                self.fit()
            if self.live.state == "failed" and self._offered is not self.live:
                self._offered = self.live          # looks for dragd once per failure
                self._set_offer()
            self.refresh()
        except Exception as e:     # nothing may escape the timer into GTK's loop
            self._bug(e)
        return True

    def _bug(self, e: Exception) -> None:
        """Say an unexpected error; as the session's notice the status line keeps it until
        the next action (a label text would be replaced at the next tick)."""
        from ..plugin_common.messages import bug

        traceback.print_exc()
        message = str(e) if isinstance(e, UserError) else bug(e, " with GIMP's error output")
        if self.live is not None:
            self.live.notice = message
        self.status_label.set_text(message)

    # -- the buttons ------------------------------------------------------------------

    def start_drag(self) -> None:
        self.live.start_drag()
        self.refresh()

    def stop_drag(self) -> None:
        self.live.stop()
        self.refresh()

    def reset_points(self) -> None:
        self.live.reset_points()
        self.refresh()

    def go_to(self, index: int) -> bool:
        ok = self.live.go_to(index)
        self.refresh()
        return ok

    def apply(self) -> None:
        """The state shown as the result layer, in one undo group, then close."""
        live = self.live
        if not live.can_apply():
            return
        undo = UndoGroup(self.image)
        try:
            undo.ensure()
            rgba = self.host.result_pixels(live.result, self.pixels)
            layer = self.host.write_result(self.image, self.layer, rgba, live.region)
            try:
                self.image.set_selected_layers([layer])
            except Exception:
                pass     # selecting the result is a courtesy; it is written
        except Exception as e:     # the view stays open: the user may try again or cancel
            self._bug(e)
            return
        finally:
            undo.end()
        self.host.flush()
        self.applied = layer
        self._close()

    def cancel(self) -> None:
        self._close()

    def start_daemon(self) -> None:
        command = daemon_launcher.find_dragd()
        if command is None:
            return
        self.launcher = daemon_launcher.DaemonStart(command)
        self.launcher.start()
        self._set_offer()
        self.status_label.set_text(self.launcher.message)

    def reconnect(self) -> None:
        self._start_session()
        self._set_offer()

    def _close(self) -> None:
        """Apply, Cancel and the window's close button end here: the daemon session is
        closed (a later view on the result layer continues the edit)."""
        if self.dialog is None:
            return
        self.live.close()
        self.dialog.destroy()
        self.dialog = None
        self.Gtk.main_quit()

    # -- the view ---------------------------------------------------------------------

    def fit(self) -> None:
        x0, y0, x1, y1 = self.live.view_box
        self.set_scale(VIEW_SIZE / max(1.0, x1 - x0, y1 - y0))

    def zoom(self, factor: float) -> None:
        self.set_scale(self.scale * factor)

    def set_scale(self, scale: float) -> None:
        self.scale = max(0.05, min(64.0, scale))
        x0, y0, x1, y1 = self.live.view_box
        self.view_size = (max(1, int(round((x1 - x0) * self.scale))),
                          max(1, int(round((y1 - y0) * self.scale))))
        self.area.set_size_request(*self.view_size)
        self._cache.clear()
        self.redraw()

    def to_layer(self, x: float, y: float) -> Tuple[float, float]:
        x0, y0, _, _ = self.live.view_box
        return (x0 + x / self.scale, y0 + y / self.scale)

    def to_view(self, p: Any) -> Tuple[float, float]:
        x0, y0, _, _ = self.live.view_box
        return ((p[0] - x0) * self.scale, (p[1] - y0) * self.scale)

    def _scaled(self, key: tuple, make: Any, box: Tuple[float, float, float, float]) -> Any:
        """The pixbuf ``make()`` gives (covering the layer box ``box``) cut to the view's box
        and scaled to the view, made once per key and zoom: (x, y, pixbuf) or None."""
        if key in self._cache:
            return self._cache[key]
        pb = make()
        if pb is None:
            return None
        if key[0] == "frame":
            for k in [k for k in self._cache if k[0] == "frame"]:
                del self._cache[k]
        crop = view_crop(self.live.view_box, box, (pb.get_width(), pb.get_height()),
                         self.scale)
        if crop is None:
            return None
        cut, (x, y), size = crop
        interp = (self.GdkPixbuf.InterpType.NEAREST if self.scale >= 2
                  else self.GdkPixbuf.InterpType.BILINEAR)
        out = (x, y, pb.new_subpixbuf(*cut).scale_simple(*size, interp))
        self._cache[key] = out
        return out

    def _overlay(self) -> Any:
        """The unselected part dimmed: black with the selection's bytes inverted as alpha."""
        if "overlay" not in self._cache:
            m = self.live.mask
            rgba = bytearray(4 * m.width * m.height)
            rgba[3::4] = m.data.translate(DIM_ALPHA)
            img = live_module().Image(bytes(rgba), m.width, m.height, 4)
            self._cache["overlay"] = pixbuf(img)
        return self._cache["overlay"]

    def redraw(self) -> None:
        """Compose the view: the layer, the newest frame, the dimmed unselected part, the
        arrows (pixbuf composites, each a C call)."""
        GdkPixbuf = self.GdkPixbuf
        w, h = self.view_size
        dest = GdkPixbuf.Pixbuf.new(GdkPixbuf.Colorspace.RGB, True, 8, w, h)
        dest.fill(0x292929FF)
        g = self.geometry
        layer_box = (0.0, 0.0, float(g.width), float(g.height))
        layers = [self._scaled(("base",), lambda: self.base, layer_box)]
        frame = self.live.frame
        if frame is not None and frame.serial > 1:      # 1 is the layer itself
            layers.append(self._scaled(("frame", frame.serial), lambda: pixbuf(frame.image),
                                       frame.box))
        if self.live.use_mask:
            layers.append(self._scaled(("mask",), self._overlay, layer_box))
        for item in layers:
            if item is not None:
                x, y, pb = item
                _paste(dest, pb, x, y)
        for handle, target in self.live.shown_points():
            self._draw_point(dest, handle, target)
        self.picture.set_from_pixbuf(dest)

    def _dot(self, rgb: Tuple[int, int, int], radius: int) -> Any:
        """A filled disc (black rim) as a small RGBA pixbuf, made once per colour."""
        key = ("dot", rgb, radius)
        if key not in self._cache:
            n = 2 * radius + 1
            px = bytearray(4 * n * n)
            for y in range(n):
                for x in range(n):
                    d = math.hypot(x - radius, y - radius)
                    if d <= radius + 0.5:
                        c = rgb if d < radius - 0.7 or radius < 2 else (0, 0, 0)
                        px[4 * (y * n + x):4 * (y * n + x) + 4] = bytes((*c, 255))
            self._cache[key] = pixbuf(live_module().Image(bytes(px), n, n, 4))
        return self._cache[key]

    def _draw_point(self, dest: Any, handle: Any, target: Any) -> None:
        hx, hy = self.to_view(handle)
        if target is not None:
            tx, ty = self.to_view(target)
            pen = self._dot((255, 255, 255), 1)
            _line(dest, pen, hx, hy, tx, ty)
            n = math.hypot(tx - hx, ty - hy)
            if n >= 1:
                ux, uy = (tx - hx) / n, (ty - hy) / n
                for sx, sy in ((0.87 * ux - 0.5 * uy, 0.87 * uy + 0.5 * ux),
                               (0.87 * ux + 0.5 * uy, 0.87 * uy - 0.5 * ux)):
                    _line(dest, pen, tx, ty, tx - 10 * sx, ty - 10 * sy)
            _paste(dest, self._dot(TARGET_RGB, 5), int(tx) - 5, int(ty) - 5)
        _paste(dest, self._dot(HANDLE_RGB, 5), int(hx) - 5, int(hy) - 5)

    # -- the mouse --------------------------------------------------------------------

    def _press(self, area: Any, ev: Any) -> bool:
        pt = self.to_layer(ev.x, ev.y)
        if self.brush_check.get_active():
            self._brushing, self._brushed_at = ev.button == 1, pt
            self.live.brush(pt, BRUSH_RADIUS / self.scale, grow=self._brushing)
            self.refresh()
            return True
        hit = self.live.grab(pt, GRAB_RADIUS / self.scale)
        if ev.button == 3:
            if hit is not None:
                self.live.remove(hit[0])
        elif ev.button == 1:
            if hit is not None:
                self._held = hit
            else:
                self.live.click(pt)
                self.clicks += 1
        self.refresh()
        return True

    def _scroll(self, area: Any, ev: Any) -> bool:
        """Ctrl + wheel zooms (the wheel alone scrolls)."""
        if not ev.state & self.Gdk.ModifierType.CONTROL_MASK:
            return False
        if ev.direction == self.Gdk.ScrollDirection.UP:
            self.zoom(1.25)
        elif ev.direction == self.Gdk.ScrollDirection.DOWN:
            self.zoom(0.8)
        return True

    def _motion(self, area: Any, ev: Any) -> bool:
        if self._brushing is not None:
            pt = self.to_layer(ev.x, ev.y)
            self.live.brush_line(self._brushed_at, pt, BRUSH_RADIUS / self.scale,
                                 grow=self._brushing)
            self._brushed_at = pt
            self.refresh()
        elif self._held is not None:
            self.live.move(self._held[0], self._held[1], self.to_layer(ev.x, ev.y))
            self.redraw()
        return True

    def _release(self, area: Any, ev: Any) -> bool:
        self._held = self._brushing = None
        self.refresh()
        return True

    def _mask_toggled(self, check: Any) -> None:
        self.live.set_use_mask(check.get_active())
        self.redraw()

    # -- showing the state ------------------------------------------------------------

    def _set_offer(self) -> None:
        live = self.live
        failed = live is not None and live.state == "failed" and self.launcher is None
        offer = daemon_launcher.offer(self.settings.endpoint, failed and not live.connected)
        self.offer_label.set_text(offer or "")
        for w, on in ((self.offer_label, bool(offer)), (self.offer_button, bool(offer)),
                      (self.retry_button, failed)):
            w.set_visible(on)

    def refresh(self) -> None:
        live = self.live
        if self.dialog is None or live is None:
            return
        self.connection_label.set_text(("\u25cf " if live.connected else "\u25cb ")
                                       + live.connection_line())
        if self.launcher is None:
            text = live.status_line()
            if self.arrows_note and live.state in ("connecting", "opening"):
                text += " (" + self.arrows_note + ")"
            self.status_label.set_text(text)
        idle = live.state == "idle"
        self.start_button.set_label("Continue" if live.position > 0 else "Start")
        self.start_button.set_sensitive(idle and live.can_start())
        self.stop_button.set_sensitive(live.state == "dragging")
        self.reset_button.set_sensitive(idle)
        self.apply_button.set_sensitive(idle and live.can_apply())
        shown = (live.frame.serial if live.frame else 0, live.state,
                 tuple(live.shown_points()), live.use_mask, live.mask_serial)
        if shown != self._shown:
            if self._shown is not None and self._shown[-1] != live.mask_serial:
                for key in ("overlay", ("mask",)):     # the brush changed the region
                    self._cache.pop(key, None)
                self.mask_check.handler_block_by_func(self._mask_toggled)
                self.mask_check.set_sensitive(live.mask is not None
                                              and live.mask.data is not None)
                self.mask_check.set_active(live.use_mask)
                self.mask_check.handler_unblock_by_func(self._mask_toggled)
            self._shown = shown
            self.redraw()
        hist = (tuple(e.index for e in live.history), live.position)
        if hist != self._history_shown:
            self._history_shown = hist
            self._show_history()

    def _show_history(self) -> None:
        Gtk = self.Gtk
        for b in self.history_buttons:
            self.history_box.remove(b)
        self.history_buttons = []
        for e in self.live.history:
            pb = pixbuf(e.frame.image) if e.frame is not None and e.frame.serial > 1 \
                else self.base
            w, h = pb.get_width(), pb.get_height()
            k = THUMB_SIZE / float(max(w, h))
            thumb = pb.scale_simple(max(1, int(w * k)), max(1, int(h * k)),
                                    self.GdkPixbuf.InterpType.BILINEAR)
            b = Gtk.ToggleButton()
            inner = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
            inner.pack_start(Gtk.Image.new_from_pixbuf(thumb), False, False, 0)
            inner.pack_start(Gtk.Label(label=e.label()), False, False, 0)
            b.add(inner)
            b.set_active(e.index == self.live.position)
            b.set_tooltip_text("Go back to this state")
            b.connect("clicked", lambda _b, i=e.index: self.go_to(i))
            b.show_all()
            self.history_box.pack_start(b, False, False, 0)
            self.history_buttons.append(b)


def _label(Gtk: Any, text: str = "") -> Any:
    lab = Gtk.Label(label=text)
    lab.set_xalign(0.0)
    lab.set_line_wrap(True)
    lab.set_max_width_chars(80)
    return lab


def _button(Gtk: Any, text: str, tip: str, fn: Any) -> Any:
    b = Gtk.Button(label=text)
    b.set_tooltip_text(tip)
    b.connect("clicked", lambda _b: fn())
    return b


def _paste(dest: Any, pb: Any, x: int, y: int) -> None:
    """Composite ``pb`` onto ``dest`` with its top-left corner at (x, y), clipped."""
    x0, y0 = max(0, x), max(0, y)
    x1 = min(dest.get_width(), x + pb.get_width())
    y1 = min(dest.get_height(), y + pb.get_height())
    if x1 > x0 and y1 > y0:
        pb.composite(dest, x0, y0, x1 - x0, y1 - y0, x, y, 1.0, 1.0,
                     _gtk()[2].InterpType.NEAREST, 255)


def _line(dest: Any, pen: Any, x0: float, y0: float, x1: float, y1: float) -> None:
    """A line of ``pen`` (a small disc) from (x0, y0) to (x1, y1)."""
    r = pen.get_width() // 2
    n = max(1, int(math.hypot(x1 - x0, y1 - y0) / 1.5))
    for i in range(n + 1):
        t = i / float(n)
        _paste(dest, pen, int(x0 + t * (x1 - x0)) - r, int(y0 + t * (y1 - y0)) - r)


def run_live(GimpUi: Any, host: GimpHost, image: Any, layer: Any, settings: DragSettings
             ) -> Any:
    """Open the live view on ``layer`` and return the result layer once it closes (None
    when nothing was applied). Raises UserError when the layer cannot be edited."""
    settings.validate()
    return LiveWindow(GimpUi, host, image, layer, settings).run()


__all__ = ["LIVE_MENU_LABEL", "LIVE_PROCEDURE_NAME", "LiveWindow", "run_live"]
