"""The DragGAN docker: settings, Run / Stop / Cancel, a progress bar, the live preview and
a status line (each document's own: switching documents shows that document's last run).

Settings -> Dockers -> DragGAN. The Run button calls :func:`~.run.start_drag` on the
active document; everything after that happens from a QTimer, so Krita stays responsive
while the daemon inverts and drags. The settings are kept in kritarc ([dragd] group).
"""
from __future__ import annotations

from typing import Any, Optional

from krita import DockWidget, Krita
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QImage, QPixmap
from PyQt5.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout,
                             QLabel, QLineEdit, QProgressBar, QPushButton, QSizePolicy,
                             QSpinBox, QToolButton, QVBoxLayout, QWidget)

from ..plugin_common.loader import preload
from .model import ALIGN_SWITCH, DEFAULT_ENDPOINT, DragSettings, UserError
from .run import DragRun, make_probe, start_drag

DOCKER_ID = "dragd_krita_docker"
DOCKER_TITLE = "DragGAN"
SETTINGS_GROUP = "dragd"
#: The docker shows previews up to this size (the daemon's default preview_max_size).
PREVIEW_SIZE = 256
PREVIEW_HINT = "The preview of a run appears here."
#: The preview's area is never smaller than this, however little room the docker has.
PREVIEW_MIN_HEIGHT = 128

SPACE_ITEMS = (("W+ (one latent per layer)", "w+"), ("W (one shared latent)", "w"))
METHOD_ITEMS = (("DragGAN, arrived handles held", "dragd"), ("DragGAN as published", "draggan"),
                ("FreeDrag (no point tracking)", "freedrag"))
PASTE_ITEMS = (("Keep the photo's detail", "detail"), ("Generated pixels", "resample"))
ALIGN_ITEMS = (("Automatic (what the model wants)", "auto"), ("Off", "none"))
INVERSION_ITEMS = (("Fast", "fast"), ("Balanced", "balanced"), ("Best quality (slow)", "quality"))


def load_settings() -> DragSettings:
    app = Krita.instance()
    keys = DragSettings().to_strings()
    return DragSettings.from_strings({k: app.readSetting(SETTINGS_GROUP, k, "") for k in keys})


def save_settings(s: DragSettings) -> None:
    app = Krita.instance()
    for k, v in s.to_strings().items():
        app.writeSetting(SETTINGS_GROUP, k, v)


class DragDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(DOCKER_TITLE)
        self.current_run: Optional[DragRun] = None
        self.last_run: Optional[DragRun] = None
        self._probe: Any = None
        self._probe_timer: Optional[QTimer] = None

        root = QWidget(self)
        form = QFormLayout()

        self.model_box = QComboBox()
        self.model_box.setEditable(True)
        self.model_box.setToolTip("Model on the daemon; empty: the model it has loaded")
        self.model_box.lineEdit().setPlaceholderText("(the daemon's loaded model)")
        self.refresh_button = QToolButton()
        self.refresh_button.setText("\u21bb")
        self.refresh_button.setToolTip("Ask the daemon for its models")
        self.refresh_button.clicked.connect(self.refresh_models)
        row = QHBoxLayout()
        row.addWidget(self.model_box, 1)
        row.addWidget(self.refresh_button)
        form.addRow("Model", row)

        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 5000)
        self.steps_spin.setToolTip("Most optimisation steps; the drag usually stops earlier, "
                                   "when every handle reached its target")
        form.addRow("Step limit", self.steps_spin)

        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setRange(0.0, 1.0)
        self.lr_spin.setDecimals(4)
        self.lr_spin.setSingleStep(0.0005)
        self.lr_spin.setSpecialValueText("model default")
        self.lr_spin.setToolTip("Adam learning rate; 0: the model's default (2e-3 for faces, "
                                "cats, cars; 1e-3 otherwise)")
        form.addRow("Learning rate", self.lr_spin)

        self.lambda_spin = QDoubleSpinBox()
        self.lambda_spin.setRange(0.0, 1e6)
        self.lambda_spin.setDecimals(1)
        self.lambda_spin.setToolTip("How strongly the unselected part is held in place "
                                    "(the paper's \u03bb, 20)")
        form.addRow("\u03bb (keep outside)", self.lambda_spin)

        self.space_box = _choice_box(SPACE_ITEMS)
        form.addRow("Latent space", self.space_box)
        self.method_box = _choice_box(
            METHOD_ITEMS, "The drag's rules: DragGAN with handles that arrived held in place while the "
            "others are pulled, DragGAN as published, or FreeDrag (adaptive feature templates, no "
            "point tracking)")
        form.addRow("Drag method", self.method_box)
        self.inversion_box = _choice_box(
            INVERSION_ITEMS, "How hard the daemon works to reproduce the layer before dragging (PTI)")
        form.addRow("Inversion", self.inversion_box)
        self.paste_box = _choice_box(
            PASTE_ITEMS, "How the edit goes back into the layer: the layer's own pixels moved along "
            "the generator's correspondence (keeps a photo sharp), or the generated image scaled up "
            "to the selection")
        form.addRow("Result pixels", self.paste_box)
        self.align_box = _choice_box(
            ALIGN_ITEMS, "Automatic: for a face model (FFHQ) the daemon finds the face and aligns it "
            "as the model's training faces before editing; Off: edit the selection's square as it is")
        form.addRow(ALIGN_SWITCH, self.align_box)

        self.endpoint_edit = QLineEdit()
        self.endpoint_edit.setPlaceholderText(DEFAULT_ENDPOINT)
        self.endpoint_edit.setToolTip("ZeroMQ address of the dragd daemon (start it with: "
                                      "dragd serve)")
        form.addRow("Daemon", self.endpoint_edit)

        self.preview_check = QCheckBox("Live preview")
        self.preview_check.setToolTip("Show the drag as it happens here, in the docker: the "
                                      "region being edited as the result will show it")
        form.addRow("", self.preview_check)

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Drag the selected paint layer along the arrows of the "
                                   "vector layer 'drag' (only the selection may move)")
        self.run_button.clicked.connect(self.run)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the drag and keep what it reached so far")
        self.stop_button.clicked.connect(lambda: self.stop("keep"))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop and leave the image unchanged")
        self.cancel_button.clicked.connect(lambda: self.stop("discard"))
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.cancel_button)
        self.live_button = QPushButton("Live view\u2026")
        self.live_button.setToolTip("Drag interactively: click handles and targets on the "
                                    "picture, watch it follow, go back, Apply")
        self.live_button.clicked.connect(self.open_live)
        buttons.addWidget(self.live_button)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.status_label = QLabel("Draw arrows as lines on a vector layer named 'drag' "
                                   "above the paint layer, select what may move, then Run.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        # The preview's area asks for the same minimum whatever it shows, and takes the
        # docker's free space: a docker whose minimum size grows when the first preview
        # comes relays out Krita's window, and that held the UI thread 103 ms on a
        # 6000x4000 document (the next previews 0.2 ms). Previews are fitted into it.
        self.preview_label = QLabel(PREVIEW_HINT)
        self.preview_label.setAlignment(Qt.AlignCenter)
        self.preview_label.setWordWrap(True)
        self.preview_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Ignored)
        self.preview_label.setMinimumHeight(PREVIEW_MIN_HEIGHT)
        self._idle_text = self.status_label.text()
        self._status_by_doc: list = []     # [document, (fraction, text) of its last run]
        self._doc: Any = None

        box = QVBoxLayout()
        box.addLayout(form)
        box.addLayout(buttons)
        box.addWidget(self.progress_bar)
        box.addWidget(self.preview_label, 1)
        box.addWidget(self.status_label)
        root.setLayout(box)
        self.setWidget(root)
        self.set_settings(load_settings())
        self._set_running(False)
        preload()

    # -- Krita -------------------------------------------------------------------

    def canvasChanged(self, canvas: Any) -> None:
        """Another document (or view) became active: show its own last status."""
        doc = None
        try:
            doc = canvas.view().document() if canvas is not None else None
        except Exception:
            pass        # a canvas without a view: fall back to the active document
        if doc is None:
            doc = Krita.instance().activeDocument()
        if _same_doc(doc, self._doc):
            return
        self._doc = doc
        running = self.current_run is not None and _same_doc(self.current_run.doc, doc)
        if not running:
            self._clear_preview()
            known = [st for d, st in self._status_by_doc if _same_doc(d, doc)]
            fraction, text = known[0] if known else (0.0, self._idle_text)
            self._show(fraction, text, remember=False)

    # -- settings ------------------------------------------------------------------

    def settings(self) -> DragSettings:
        return DragSettings(
            model=self.model_box.currentText().strip(),
            max_steps=self.steps_spin.value(),
            learning_rate=self.lr_spin.value(),
            lambda_mask=self.lambda_spin.value(),
            space=self.space_box.currentData(),
            method=self.method_box.currentData(),
            inversion=self.inversion_box.currentData(),
            paste=self.paste_box.currentData(),
            align=self.align_box.currentData(),
            endpoint=self.endpoint_edit.text().strip() or DEFAULT_ENDPOINT,
            live_preview=self.preview_check.isChecked())

    def set_settings(self, s: DragSettings) -> None:
        self.model_box.setEditText(s.model)
        self.steps_spin.setValue(int(s.max_steps))
        self.lr_spin.setValue(float(s.learning_rate))
        self.lambda_spin.setValue(float(s.lambda_mask))
        self.space_box.setCurrentIndex(max(0, self.space_box.findData(s.space)))
        self.method_box.setCurrentIndex(max(0, self.method_box.findData(s.method)))
        self.inversion_box.setCurrentIndex(max(0, self.inversion_box.findData(s.inversion)))
        self.paste_box.setCurrentIndex(max(0, self.paste_box.findData(s.paste)))
        self.align_box.setCurrentIndex(max(0, self.align_box.findData(s.align)))
        self.endpoint_edit.setText(s.endpoint)
        self.preview_check.setChecked(bool(s.live_preview))

    # -- actions -------------------------------------------------------------------

    def run(self) -> Optional[DragRun]:
        """The Run button."""
        if self.current_run is not None and not self.current_run.finished:
            return self.current_run
        s = self._valid_settings()
        if s is None:
            return None
        self._set_running(True)
        self._show(0.0, "Starting\u2026")
        self._doc = Krita.instance().activeDocument()
        self._clear_preview()
        run = start_drag(self._doc, s, on_update=self._on_update,
                         on_finished=self._on_finished, on_preview=self._on_preview)
        if not run.finished:
            self.current_run = run
        return run

    def open_live(self) -> Any:
        """The Live view button: the interactive view on the active document."""
        from .live import open_live_view

        s = self._valid_settings()
        if s is None:
            return None
        return open_live_view(Krita.instance().activeDocument(), s, self)

    def _valid_settings(self) -> Optional[DragSettings]:
        """The docker's settings, saved for next time; None (and why, shown) when they are
        not valid."""
        s = self.settings()
        try:
            s.validate()
        except UserError as e:
            self._show(0.0, str(e))
            return None
        save_settings(s)
        return s

    def stop(self, how: str) -> None:
        if self.current_run is not None:
            self.current_run.stop(how)

    def refresh_models(self) -> None:
        if self._probe is not None:
            return
        endpoint = self.endpoint_edit.text().strip() or DEFAULT_ENDPOINT
        try:
            probe = make_probe(endpoint)
        except UserError as e:             # pyzmq or msgpack missing
            self._show(0.0, str(e))
            return
        probe.start()
        self._probe = probe
        timer = QTimer(self)
        timer.setInterval(50)

        def tick() -> None:
            if probe.done or not probe.tick():
                timer.stop()
                self._probe = None
                if not probe.error:
                    current = self.model_box.currentText()
                    self.model_box.clear()
                    self.model_box.addItems([""] + probe.models)
                    self.model_box.setEditText(current)
                self._show(0.0, probe.describe())

        timer.timeout.connect(tick)
        timer.start()
        self._probe_timer = timer

    # -- callbacks -------------------------------------------------------------------

    def _on_update(self, run: DragRun) -> None:
        self._show(run.fraction, run.message, run.doc)

    def _on_finished(self, run: DragRun) -> None:
        self.last_run = run
        self.current_run = None
        self._set_running(False)
        self._show(run.fraction, run.message, run.doc)

    def _on_preview(self, img: Any) -> None:
        """The daemon's preview as it comes (RGB, at most PREVIEW_SIZE): a small region
        shown larger by whole pixels, and fitted into the preview's area."""
        if img.channels not in (3, 4):
            return
        fmt = QImage.Format_RGB888 if img.channels == 3 else QImage.Format_RGBA8888
        data = bytes(img.data)
        qimg = QImage(data, img.width, img.height, img.width * img.channels, fmt).copy()
        pix = QPixmap.fromImage(qimg)
        k = PREVIEW_SIZE // max(img.width, img.height)
        if k >= 2:       # a small region: shown larger (it is small, so this is cheap)
            pix = pix.scaled(img.width * k, img.height * k)
        room = self.preview_label.size()
        if pix.width() > room.width() or pix.height() > room.height():
            pix = pix.scaled(room, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        self.preview_label.setPixmap(pix)

    def _clear_preview(self) -> None:
        self.preview_label.clear()
        self.preview_label.setText(PREVIEW_HINT)

    def _show(self, fraction: float, text: str, doc: Any = None, remember: bool = True) -> None:
        """Show a status; a run's status is remembered for its document, and shown only
        while that document is the active one."""
        if remember and doc is not None:
            self._status_by_doc = [e for e in self._status_by_doc if not _same_doc(e[0], doc)]
            self._status_by_doc.append([doc, (fraction, text)])
            if self._doc is not None and not _same_doc(doc, self._doc):
                return
        self.progress_bar.setValue(int(round(1000 * max(0.0, min(1.0, fraction)))))
        self.status_label.setText(text)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.cancel_button.setEnabled(running)


def _choice_box(items, tooltip: str = "") -> QComboBox:
    """A drop-down of (label, value) items, the setting's value as each item's data."""
    box = QComboBox()
    for label, value in items:
        box.addItem(label, value)
    if tooltip:
        box.setToolTip(tooltip)
    return box


def _same_doc(a: Any, b: Any) -> bool:
    """One document (libkis hands out a new wrapper each time; its == compares the
    documents)."""
    if a is None or b is None:
        return a is b
    try:
        return bool(a == b)
    except Exception:
        return a is b


def find_docker(window: Any) -> Optional[DragDocker]:
    """The DragGAN docker of a Krita window (its objectName is the factory id)."""
    if window is None:
        return None
    for d in window.dockers():
        if d.objectName() == DOCKER_ID:
            return d
    return None
