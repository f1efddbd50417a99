"""The model / embeddings panel: which model, where it runs, tiling, the disk cache, and the
background embedding of the shown slice."""

from __future__ import annotations

from napari.utils.notifications import show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam.engine.segmenter import AUTO
from napari_sam.models.registry import MODELS
from napari_sam.plugin.background import run_in_background
from napari_sam.plugin.prefetch import SliceEmbedder
from napari_sam.plugin.session import ModelSettings, Session

DEVICES = ("auto", "cpu", "cuda", "mps")


def path_row(edit: QLineEdit, choose) -> QWidget:
    """A line edit with a "…" button that opens a file or folder dialog."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    button = QPushButton("…")
    button.setMaximumWidth(30)
    button.clicked.connect(choose)
    layout.addWidget(edit)
    layout.addWidget(button)
    return row


class ModelWidget(QWidget):
    """Choose the model and compute embeddings of the shown slice in the background.

    Settings take effect with "Apply": the model is loaded in a worker, and a model that does
    not load is reported and leaves the previous settings in place. The panel shows the
    session's settings, also when another widget changes them (a fine-tuned model put in use).
    """

    _settings_changed = Signal(object)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session.for_viewer(napari_viewer)
        self.embedder = SliceEmbedder.for_viewer(napari_viewer)

        self.model = QComboBox()
        self.model.addItems(list(MODELS))
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("registry weights (or choose a .pth file)")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(0, 4096)
        self.diameter.setDecimals(1)
        self.diameter.setSpecialValueText("auto")
        self.diameter.setToolTip("typical object width in pixels: slices are resampled so that "
                                 "objects arrive at the size the model works best at; auto "
                                 "estimates it once per image (shown below once embedded)")
        self.tile = QSpinBox()
        self.tile.setRange(0, 16384)
        self.tile.setSingleStep(256)
        self.tile.setSpecialValueText("model input")
        self.tile.setToolTip("resampled slices larger than this are embedded in tiles; the "
                             "model's input size keeps objects at the scale it was trained at")
        self.halo = QSpinBox()
        self.halo.setRange(-1, 4096)
        self.halo.setSpecialValueText("tile / 8")
        self.cache = QLineEdit()
        self.cache.setPlaceholderText("none (memory only)")
        self.neighbours = QSpinBox()
        self.neighbours.setRange(0, 10)
        self.neighbours.setValue(self.embedder.neighbours)
        self.neighbours.valueChanged.connect(lambda n: setattr(self.embedder, "neighbours", n))
        self.apply = QPushButton("Apply")
        self.apply.clicked.connect(self.load)
        self.status = QLabel("no model loaded yet")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(self.embedder.cancel)
        embed_now = QPushButton("Embed shown slice")
        embed_now.clicked.connect(self.embedder.start)

        form = QFormLayout()
        form.addRow("model", self.model)
        form.addRow("checkpoint", path_row(self.checkpoint, self._choose_checkpoint))
        form.addRow("device", self.device)
        form.addRow("object diameter (px)", self.diameter)
        form.addRow("tile (px)", self.tile)
        form.addRow("halo (px)", self.halo)
        form.addRow("cache folder", path_row(self.cache, self._choose_cache))
        form.addRow("prefetch ± slices", self.neighbours)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.apply)
        buttons = QHBoxLayout()
        buttons.addWidget(embed_now)
        buttons.addWidget(self.cancel)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch()

        self.embedder.progress.connect(self._progress)
        self.embedder.status.connect(self.status.setText)
        # the session may change in a worker (a fine-tuned checkpoint put in use): shown here
        # through a queued Qt signal, on the GUI thread
        self._settings_changed.connect(self.show_settings)
        session, forward = self.session, self._settings_changed.emit
        session.changed.connect(forward)
        self.destroyed.connect(lambda *_: session.changed.disconnect(forward, missing_ok=True))
        self.show_settings(self.session.settings)

    def show_settings(self, settings: ModelSettings) -> None:
        """Show ``settings`` (the session's) in the panel."""
        self.model.setCurrentText(settings.model)
        self.checkpoint.setText(settings.checkpoint or "")
        self.device.setCurrentText(settings.device)
        self.diameter.setValue(0 if isinstance(settings.diameter, str) else settings.diameter)
        self.tile.setValue(settings.tile or 0)
        self.halo.setValue(-1 if settings.halo is None else settings.halo)
        self.cache.setText(settings.cache or "")

    def settings(self) -> dict:
        """The panel's choices as :class:`~napari_sam.plugin.session.ModelSettings` fields."""
        return dict(
            model=self.model.currentText(), checkpoint=self.checkpoint.text().strip() or None,
            device=self.device.currentText(), diameter=self.diameter.value() or AUTO,
            tile=self.tile.value() or None,
            halo=None if self.halo.value() < 0 else self.halo.value(),
            cache=self.cache.text().strip() or None,
        )

    def load(self):
        """Apply the settings and load the model in a worker; returns the worker."""
        session, previous, wanted = self.session, self.session.settings, self.settings()
        self.apply.setEnabled(False)
        self.status.setText("loading the model…")

        def job():
            session.configure(**wanted)
            try:
                model = session.model()
            except Exception:
                session.configure(**previous.__dict__)  # keep what worked
                raise
            encoder = type(model.image_encoder).__name__
            return f"{encoder}, {model.img_size} px input, {model.device}"

        def done(description: str) -> None:
            self.status.setText(f"model ready: {description}")
            show_info(f"napari-sam: model ready ({description})")
            self.embedder.schedule()

        def finished() -> None:
            self.apply.setEnabled(True)
            if self.status.text() == "loading the model…":
                self.status.setText("the model did not load: see the message")

        return run_in_background(job, what="loading the model", done=done, finished=finished)

    def _progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)

    def _choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "",
                                              "Checkpoints (*.pth *.pt)")
        if path:
            self.checkpoint.setText(path)

    def _choose_cache(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Embedding cache folder")
        if path:
            self.cache.setText(path)
