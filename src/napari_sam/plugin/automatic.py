"""Automatic segmentation of the shown slice, or of the whole stack into an OME-Zarr label image
or a zarr array (tiled, resumable, linked in 3D) that napari reads lazily, in a worker with
progress and cancel.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_warning
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
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_sam.engine.amg import SAMPLERS
from napari_sam.models.registry import MODELS, MODES
from napari_sam.plugin.background import CancelFlag, Cancelled, run_in_background
from napari_sam.plugin.layer_choice import LayerChoice
from napari_sam.plugin.layers import (
    current_slice,
    describe,
    new_labels_layer,
    next_label,
    slice_key,
)
from napari_sam.plugin.model_widget import path_row
from napari_sam.plugin.session import LayerError, Session
from napari_sam.volume.io import open_zarr_array
from napari_sam.volume.labels_output import FORMATS, default_output
from napari_sam.volume.ome_zarr import level_paths, open_labels
from napari_sam.volume.stack import segment_stack

DEFAULT_MODE = "default"  # the mode choice that leaves it to the engine

SLICE_LAYER = "SAM automatic"


class AutomaticWidget(QWidget):
    """Run the automatic mask generator on the shown slice or on the whole stack."""

    stack_progress = Signal(int, int)  # emitted from the worker thread, handled on the UI thread

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session.for_viewer(napari_viewer)
        self.worker = None
        self._flag: CancelFlag | None = None
        spec = MODELS[self.session.settings.model]
        defaults = spec.automatic  # what suits the model

        # "default": the mode that suits the model, which may differ for a slice and a stack
        self._amg_default = spec.mode == (spec.stack_mode or spec.mode) == "amg"
        self.mode = QComboBox()
        self.mode.addItems((DEFAULT_MODE, *MODES))
        self.mode.setCurrentText(DEFAULT_MODE)
        self.mode.setToolTip(f"default: what suits the model ({spec.mode} on a slice, "
                             f"{spec.stack_mode or spec.mode} on a stack); amg: prompts sampled "
                             "over the image and SAM's decoder (the settings below); ais: the "
                             "model's instance decoder, one pass; apg: prompts from the instance "
                             "decoder's maps (ais and apg need a model with an instance decoder)")
        self.mode.currentTextChanged.connect(self._mode_changed)

        self.image = LayerChoice(napari_viewer, Image)
        self.sampler = QComboBox()
        self.sampler.addItems(SAMPLERS)
        self.sampler.setCurrentText(defaults.get("sampler", "grid"))
        self.points_per_side = QSpinBox(minimum=1, maximum=128, value=32)
        self.iou = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05,
                                  value=defaults.get("pred_iou_thresh", 0.88))
        self.stability = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05,
                                        value=defaults.get("stability_score_thresh", 0.95))
        self.min_area = QSpinBox(minimum=0, maximum=10**6, value=0)
        self.output_format = QComboBox()
        self.output_format.addItems(FORMATS)
        self.output_format.setToolTip("ome-zarr: an OME-Zarr label image with a pyramid and each "
                                      "object's area and plane (in an OME-Zarr image's labels by "
                                      "default); zarr: a plain zarr array")
        self.predicted_iou = QCheckBox("each object's predicted IoU (slower)")
        self.predicted_iou.setToolTip("ome-zarr: SAM's predicted IoU of each object in its "
                                      "properties (one decoder pass per object and slice)")
        self.output_format.currentTextChanged.connect(
            lambda text: self.predicted_iou.setEnabled(text == "ome-zarr"))
        self.output = QLineEdit()
        self.output.setPlaceholderText("a new .zarr folder for the stack's labels")
        self.resume = QCheckBox("resume a run with the same settings")
        self.resume.setChecked(True)
        self.link = QCheckBox("assemble 3D objects through z")
        self.link.setToolTip("one id per object through z; out-of-focus light and pieces in too "
                             "few slices dropped (uses the layer's scale as voxel size)")
        self.link.setChecked(True)
        self.run_slice = QPushButton("Segment shown slice")
        self.run_slice.clicked.connect(self.segment_slice)
        self.run_stack = QPushButton("Segment whole stack")
        self.run_stack.clicked.connect(self.segment_stack)
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(lambda: self._flag and self._flag.cancel())
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("mode", self.mode)
        form.addRow("sampler", self.sampler)
        form.addRow("points per side", self.points_per_side)
        form.addRow("min predicted IoU", self.iou)
        form.addRow("min stability", self.stability)
        form.addRow("min region area (px)", self.min_area)
        form.addRow("stack format", self.output_format)
        form.addRow(self.predicted_iou)
        form.addRow("stack output", path_row(self.output, self._choose_output))
        form.addRow(self.resume)
        form.addRow(self.link)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        buttons = QHBoxLayout()
        for button in (self.run_slice, self.run_stack, self.cancel):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch()
        self.stack_progress.connect(self._stack_progress)
        self.image.currentIndexChanged.connect(self._default_output)
        self._default_output()
        self._mode_changed(self.mode.currentText())

    def options(self) -> dict:
        """The automatic mode and, for "amg", the generator settings chosen in the panel; no
        mode for "default" (the engine's choice for a slice or a stack)."""
        mode = self.mode.currentText()
        chosen = {} if mode == DEFAULT_MODE else dict(mode=mode)
        if mode != "amg" and not (mode == DEFAULT_MODE and self._amg_default):
            return chosen
        return dict(chosen, sampler=self.sampler.currentText(),
                    points_per_side=self.points_per_side.value(),
                    pred_iou_thresh=self.iou.value(), stability_score_thresh=self.stability.value(),
                    min_mask_region_area=self.min_area.value())

    def _mode_changed(self, mode: str) -> None:
        """The generator's settings apply to "amg" only."""
        amg = mode == "amg" or (mode == DEFAULT_MODE and self._amg_default)
        for widget in (self.sampler, self.points_per_side, self.iou, self.stability,
                       self.min_area):
            widget.setEnabled(amg)

    def _source(self):
        image = self.image.layer()
        if image is None:
            raise LayerError("no image layer: open an image (or File > Open Sample > napari-sam)")
        return image, self.session.source(image)

    def _busy(self, busy: bool) -> None:
        self.run_slice.setEnabled(not busy)
        self.run_stack.setEnabled(not busy)

    # --- the shown slice ----------------------------------------------------------------------

    def segment_slice(self):
        """Segment the shown slice into the "SAM automatic" labels layer; returns the worker."""
        try:
            image, source = self._source()
            index = current_slice(self.viewer, image, source)
        except LayerError as error:
            self.status.setText(str(error))
            show_warning(f"napari-sam: {error}")
            return None
        session, options, flag = self.session, self.options(), CancelFlag()
        self._flag = flag

        def job():
            with session.lock:  # the same tiles and scale as prompts
                segmenter = session.segmenter(source, index)
                labels = segmenter.segment_all(**options)
            flag.check()  # a cancelled slice is not written
            return labels, segmenter.describe_scale()

        def done(result) -> None:
            labels, scale = result
            name = f"{SLICE_LAYER} ({image.name})"
            layer = (self.viewer.layers[name] if name in self.viewer.layers
                     else new_labels_layer(self.viewer, image, source, name))
            offset = next_label(layer) - 1  # ids stay unique across slices
            layer.data[slice_key(index)] = np.where(labels > 0, labels + offset, 0)
            layer.refresh()
            self.status.setText(f"{describe(index)}: {int(labels.max())} objects; {scale}")

        self.status.setText(f"segmenting {describe(index)}…")
        self._busy(True)
        self.worker = run_in_background(job, what="automatic segmentation", done=done,
                                        finished=lambda: self._busy(False))
        return self.worker

    # --- the whole stack ----------------------------------------------------------------------

    def segment_stack(self):
        """Segment every slice into the zarr folder given, shown as a lazy labels layer while
        it fills; cancel keeps the finished slices (and a rerun resumes). Returns the worker."""
        try:
            image, source = self._source()
            output = self.output.text().strip()
            if not output:
                raise LayerError("choose a folder for the stack's labels (stack output)")
        except LayerError as error:
            self.status.setText(str(error))
            show_warning(f"napari-sam: {error}")
            return None
        session, settings, flag = self.session, self.session.settings, CancelFlag()
        self._flag = flag
        resume = self.resume.isChecked() and Path(output).exists()
        link, options = self.link.isChecked(), self.options()
        output_format = self.output_format.currentText()
        predicted_iou = self.predicted_iou.isEnabled() and self.predicted_iou.isChecked()
        volume = _with_file(source.volume, image)

        def progress(done: int, total: int) -> None:
            self.stack_progress.emit(done, total)
            flag.check()

        def job():
            try:  # the session's model: one copy in memory, and the weights prompts use
                return segment_stack(
                    volume, output, model=session.model(), output_format=output_format,
                    predicted_iou=predicted_iou,
                    diameter=settings.diameter, tile=settings.tile, halo=settings.halo,
                    cache=settings.cache, resume=resume, link=link, progress=progress, **options)
            except Cancelled:
                return None

        def done(summary) -> None:
            self._show_stack(image, output)
            if summary is None:
                self.status.setText("cancelled: the finished slices are kept; run again to resume")
            else:
                objects = summary.objects_3d if summary.objects_3d is not None else summary.objects
                self.status.setText(
                    f"{summary.segmented} slice(s) segmented, {summary.skipped} already done, "
                    f"{objects} objects, {summary.seconds:.0f} s; {summary.scale}; "
                    f"{summary.method}")

        self.status.setText("segmenting the stack…")
        self._busy(True)
        self._stack_image = image
        self.worker = run_in_background(job, what="automatic segmentation of the stack",
                                        done=done, finished=lambda: self._busy(False))
        return self.worker

    def _stack_progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)
        self._show_stack(self._stack_image, self.output.text().strip())

    def _show_stack(self, image, output: str) -> None:
        """Show (or refresh) the output as a labels layer, all levels of an OME-Zarr label
        image; napari reads it lazily."""
        if not Path(output).exists():
            return
        name = f"{Path(output).name.removesuffix('.zarr').removesuffix('.ome')} ({image.name})"
        if self.output_format.currentText() == "ome-zarr":
            group = open_labels(output)
            data = [group[path] for path in level_paths(group)]
            data = data if len(data) > 1 else data[0]
        else:
            data = open_zarr_array(output)
        if name in self.viewer.layers:
            self.viewer.layers[name].data = data
        else:
            self.viewer.add_labels(data, name=name, scale=image.scale, translate=image.translate)

    def _default_output(self, *_) -> None:
        """The labels group of the image's OME-Zarr file, else a folder in ~/napari-sam."""
        image = self.image.layer()
        if image is None or self.output.text():
            return
        try:  # metadata only
            output = default_output(image.source.path) if image.source.path else None
        except (ValueError, OSError):
            output = None
        output = output or Path.home() / "napari-sam" / f"{image.name}-labels.ome.zarr"
        self.output.setText(str(output))

    def _choose_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Labels output (.zarr folder)", "",
                                              "Zarr (*.zarr)")
        if path:
            self.output.setText(path if path.endswith(".zarr") else path + ".zarr")


def _with_file(volume, image):
    """``volume`` of the layer ``image`` with the path of the OME-Zarr image it was read from,
    so that the stack's labels take that image's levels (none for other files)."""
    path = image.source.path
    if path is None or not Path(path).is_dir():
        return volume
    return replace(volume, path=str(path))
