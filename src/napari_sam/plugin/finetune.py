"""Fine-tune the session's model on the objects committed in a labels layer, in a process of its
own watched by a worker that shows the loss and the validation mIoU on held-back objects as they
come; cancel keeps the best checkpoint so far. The result becomes the session's model."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_sam.engine.segmenter import AUTO
from napari_sam.plugin.background import USER_ERRORS, CancelFlag, run_in_background
from napari_sam.plugin.interactive import PREVIEW
from napari_sam.plugin.layer_choice import LayerChoice
from napari_sam.plugin.model_widget import path_row
from napari_sam.plugin.session import LayerError, Session
from napari_sam.training.annotations import fine_tune_process, receive, send
from napari_sam.training.prompts import MODES
from napari_sam.training.recipes import LOSS_RESOLUTIONS, Recipe

# A run on a CPU by default (figures in docs/plugin.md, "Fine-tuning"): the prompt encoder and
# mask decoder alone, focal:dice 1:1 and the loss at full resolution as in the shipped model's
# last stage (at the decoder's resolution, steps are 1.4x faster but outlines coarser).
DEFAULT_RECIPE = Recipe(images_per_step=2, objects_per_image=8, lr=2e-4, warmup=10,
                        focal_weight=1.0, loss_resolution="full")
DEFAULT_STEPS = 100
VALIDATE_EVERY = 20
BEST_BY = "point"  # the checkpoint kept: the best one-click mIoU on held-back objects


class FinetuneWidget(QWidget):
    """Fine-tune the session's model from the committed labels of the shown image."""

    report = Signal(object)  # the trainer's reports, emitted from the worker thread

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session.for_viewer(napari_viewer)
        self.worker = None
        self._flag: CancelFlag | None = None

        self.image = LayerChoice(napari_viewer, Image)
        self.labels = LayerChoice(napari_viewer, Labels, exclude=lambda layer: layer.name == PREVIEW)
        self.all_planes = QCheckBox("all planes with labels")
        self.all_planes.setChecked(True)
        self.first, self.last = QSpinBox(), QSpinBox()
        for box in (self.first, self.last):
            box.setRange(0, 0)
        self.all_planes.toggled.connect(self._planes_changed)
        self.steps = QSpinBox(minimum=1, maximum=100_000, value=DEFAULT_STEPS)
        self.output = QLineEdit()
        self.output.setPlaceholderText("a new folder for model.pt and model.json")

        self.held_out = QDoubleSpinBox(minimum=0.05, maximum=0.5, singleStep=0.05, value=0.15)
        self.held_out.setToolTip("share of the objects held back (never trained on) to measure "
                                 "the validation mIoU; at least 3")
        self.validate_every = QSpinBox(minimum=1, maximum=10_000, value=VALIDATE_EVERY)
        self.lr = QDoubleSpinBox(decimals=6, minimum=1e-6, maximum=1e-2, singleStep=1e-5,
                                 value=DEFAULT_RECIPE.lr)
        self.images_per_step = QSpinBox(minimum=1, maximum=64, value=DEFAULT_RECIPE.images_per_step)
        self.objects_per_image = QSpinBox(minimum=1, maximum=128,
                                          value=DEFAULT_RECIPE.objects_per_image)
        self.prompt_mode = QComboBox()
        self.prompt_mode.addItems(MODES)
        self.prompt_mode.setCurrentText(DEFAULT_RECIPE.prompt_mode)
        self.correction_rounds = QSpinBox(minimum=0, maximum=8,
                                          value=DEFAULT_RECIPE.correction_rounds)
        self.loss_resolution = QComboBox()
        self.loss_resolution.addItems(LOSS_RESOLUTIONS)
        self.loss_resolution.setCurrentText(DEFAULT_RECIPE.loss_resolution)
        self.focal_weight = QDoubleSpinBox(minimum=0.0, maximum=100.0,
                                           value=DEFAULT_RECIPE.focal_weight)
        self.train_encoder = QCheckBox("also train the image encoder (slow, needs many objects)")
        self.train_encoder.setToolTip("a model's instance decoder (automatic modes ais and apg) "
                                      "was trained on the encoder's features as they were")
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)

        self.start = QPushButton("Fine-tune")
        self.start.clicked.connect(self.run)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip("stop after the current step; the best checkpoint so far is kept")
        self.cancel.clicked.connect(lambda: self._flag and self._flag.cancel())
        self.cancel.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.history = QPlainTextEdit()
        self.history.setReadOnly(True)
        self.history.setPlaceholderText("validation mIoU on held-back objects, as it comes")
        self.history.setMaximumHeight(140)

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("labels", self.labels)
        form.addRow(self.all_planes)
        planes = QHBoxLayout()
        planes.addWidget(self.first)
        planes.addWidget(QLabel("to"))
        planes.addWidget(self.last)
        form.addRow("planes", planes)
        form.addRow("steps", self.steps)
        form.addRow("save in", path_row(self.output, self._choose_output))
        advanced = QCollapsible("Advanced")
        options = QWidget()
        more = QFormLayout(options)
        more.addRow("held back for validation", self.held_out)
        more.addRow("validate every (steps)", self.validate_every)
        more.addRow("learning rate", self.lr)
        more.addRow("images per step", self.images_per_step)
        more.addRow("objects per image", self.objects_per_image)
        more.addRow("prompts", self.prompt_mode)
        more.addRow("correction rounds", self.correction_rounds)
        more.addRow("loss resolution", self.loss_resolution)
        more.addRow("focal : dice weight", self.focal_weight)
        more.addRow(self.train_encoder)
        more.addRow("seed", self.seed)
        advanced.addWidget(options)
        self.advanced = advanced
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(advanced)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start)
        buttons.addWidget(self.cancel)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.history)
        layout.addStretch()

        self.report.connect(self._show_report)
        self.image.currentIndexChanged.connect(self._image_changed)
        self._image_changed()

    def recipe(self) -> Recipe:
        """The training settings chosen in the panel."""
        return Recipe(
            images_per_step=self.images_per_step.value(),
            objects_per_image=self.objects_per_image.value(), lr=self.lr.value(),
            warmup=min(DEFAULT_RECIPE.warmup, self.steps.value()),
            train_encoder=self.train_encoder.isChecked(),
            prompt_mode=self.prompt_mode.currentText(),
            correction_rounds=self.correction_rounds.value(),
            focal_weight=self.focal_weight.value(),
            loss_resolution=self.loss_resolution.currentText(),
        )

    def planes(self) -> list[int] | None:
        """The chosen planes (numbered through all plane axes), or None for all with labels."""
        if self.all_planes.isChecked():
            return None
        return list(range(self.first.value(), self.last.value() + 1))

    def run(self):
        """Fine-tune in a worker, save the checkpoint and make it the session's model; returns
        the worker (None when the input is refused)."""
        try:
            image, labels = self.image.layer(), self.labels.layer()
            if image is None or labels is None:
                raise LayerError("choose an image and the labels layer with its committed objects")
            source = self.session.source(image)
            output = Path(self.output.text().strip() or self._default_output())
            if (output / "model.pt").exists():
                raise LayerError(f"{output} holds a checkpoint already: choose a new folder (or "
                                 "delete it)")
        except LayerError as error:
            self.status.setText(str(error))
            show_warning(f"napari-sam: {error}")
            return None
        session, flag = self.session, CancelFlag()
        self._flag = flag
        recipe, steps, planes = self.recipe(), self.steps.value(), self.planes()
        held_out, every, seed = self.held_out.value(), self.validate_every.value(), self.seed.value()

        def job():
            settings = session.settings
            options = {
                "image": source.volume, "limits": source.limits, "labels": labels.data,
                "output": output, "model": settings.model, "checkpoint": settings.checkpoint,
                "device": settings.device, "recipe": recipe, "steps": steps, "planes": planes,
                "diameter": None if settings.diameter == AUTO else settings.diameter,
                "held_out": held_out, "validate_every": every, "keep_best": BEST_BY,
                "seed": seed, "metadata": {"image": image.name, "labels": labels.name}}
            history = self._run_process(options, flag)
            session.use_checkpoint(output / "model.pt")
            return history

        def done(history) -> None:
            first, best = history.validation[0], history.best
            how = "cancelled: " if history.stopped else ""
            self.status.setText(
                f"{how}kept step {best['step']}: point mIoU {first['point']:.3f} -> "
                f"{best['point']:.3f}, box {first['box']:.3f} -> {best['box']:.3f} on "
                f"{best['objects']} held-back objects. Saved in {output}; it is the session's "
                "model now")
            show_info(f"napari-sam: fine-tuned model saved in {output} and in use")
            self._image_changed()

        self.history.clear()
        self.progress.setMaximum(steps)
        self.progress.setValue(0)
        self.status.setText("preparing the training data…")
        self._busy(True)
        self.worker = run_in_background(job, what="fine-tuning", done=done,
                                        finished=lambda: self._busy(False))
        return self.worker

    def _run_process(self, options: dict, flag: CancelFlag):
        """:func:`~napari_sam.training.annotations.fine_tune` in a process of its own (see
        :func:`~napari_sam.training.annotations.fine_tune_process`); its reports are shown as
        they come, cancel stops it after the current step. Returns its history."""
        process = fine_tune_process()
        send(process.stdin, options)

        def stop_on_cancel() -> None:
            while process.poll() is None and not flag():
                time.sleep(0.1)
            if process.poll() is None:
                process.stdin.close()

        threading.Thread(target=stop_on_cancel, daemon=True).start()
        try:
            while True:
                try:
                    message = receive(process.stdout)
                except EOFError:
                    raise RuntimeError("the fine-tuning process ended without a result (exit "
                                       f"code {process.wait()})") from None
                if message[0] == "report":
                    self.report.emit(message[1])
                elif message[0] == "done":
                    return message[1]
                else:
                    error, text = message[1], message[2]
                    if isinstance(error, USER_ERRORS):
                        raise error
                    raise RuntimeError(f"{type(error).__name__}: {error} in the fine-tuning "
                                       f"process:\n{text}")
        finally:
            if process.poll() is None:
                process.stdin.close()
            process.wait(timeout=60)

    def _show_report(self, report: dict) -> None:
        if "split" in report:
            summary = report["split"]
            self.status.setText(
                f"{summary['objects']} objects in {len(summary['planes'])} plane(s), "
                f"{len(summary['held_out'])} held back; diameter {summary['diameter']:.1f} px, "
                f"scaled x{summary['scale_factor']:.2f}; measuring the model before training…")
        elif "validation" in report:
            scores = report["validation"]
            kept = " (best, saved)" if report["best"] else ""
            self.history.appendPlainText(f"step {report['step']}: point mIoU {scores['point']:.3f}, "
                                         f"box {scores['box']:.3f}{kept}")
        else:
            self.progress.setValue(report["step"])
            self.status.setText(f"step {report['step']}/{report['steps']}, "
                                f"loss {report['loss']:.4f}")

    def _busy(self, busy: bool) -> None:
        self.start.setEnabled(not busy)
        self.cancel.setEnabled(busy)

    def _planes_changed(self, *_) -> None:
        for box in (self.first, self.last):
            box.setEnabled(not self.all_planes.isChecked() and box.maximum() > 0)

    def _image_changed(self, *_) -> None:
        """Plane range and a free default folder for the chosen image."""
        image = self.image.layer()
        try:
            n_planes = self.session.source(image).volume.n_planes if image is not None else 1
        except LayerError:
            n_planes = 1
        for box in (self.first, self.last):
            box.setRange(0, n_planes - 1)
        self.last.setValue(n_planes - 1)
        self._planes_changed()
        self.output.setText(str(self._default_output()) if image is not None else "")

    def _default_output(self) -> Path:
        """A new folder beside the image's file, else in the user cache folder."""
        import platformdirs

        image = self.image.layer()
        name = re.sub(r"[^\w.-]+", "_", image.name if image is not None else "image")
        path = getattr(getattr(image, "source", None), "path", None)
        folder = (Path(path).parent if path else
                  Path(platformdirs.user_cache_dir("napari-sam")) / "finetuned")
        candidate, number = folder / f"{name}-finetuned", 1
        while candidate.exists():
            number += 1
            candidate = folder / f"{name}-finetuned-{number}"
        return candidate

    def _choose_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for the fine-tuned model")
        if path:
            self.output.setText(path)
