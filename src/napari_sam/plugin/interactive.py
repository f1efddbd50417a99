"""Interactive segmentation: clicks and boxes on the shown slice, a live preview of the mask,
commit into a labels layer, refine an existing label, propagate an object through z.

Propagation follows the committed object with SAM 2.1's memory when the session's model is a
SAM 2.1 model (:mod:`napari_sam.plugin.memory`), else by prompting each slice with the previous
slice's mask (:func:`napari_sam.volume.propagation.propagate`).

Shortcuts (on the prompt, box and preview layers, and on the viewer):
``C`` commit, ``M`` next of the 3 masks, ``N`` positive / negative clicks, ``G`` refine the label
under the cursor, ``Ctrl+Z`` undo the last change of the labels layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_sam.engine.geometry import bounding_box
from napari_sam.engine.selection import STRATEGIES, select_mask
from napari_sam.plugin.background import CancelFlag, run_in_background
from napari_sam.plugin.disk_labels import DiskLabels
from napari_sam.plugin.layer_choice import LayerChoice
from napari_sam.plugin.layers import (
    NEGATIVE_COLOUR,
    POSITIVE_COLOUR,
    PREVIEW_COLOUR,
    box_prompt,
    check_target,
    current_slice,
    describe,
    kept_on_disk,
    new_labels_layer,
    next_label,
    point_prompts,
    slice_key,
    write_mask,
)
from napari_sam.plugin.memory import (
    MEMORY_TEXT,
    REPROMPT_TEXT,
    MemoryStep,
    MemorySummary,
    follow,
    free_pixels,
    memory_model,
)
from napari_sam.plugin.prefetch import SliceEmbedder
from napari_sam.plugin.session import ImageSource, LayerError, Session
from napari_sam.volume.propagation import propagate

PROMPTS, BOXES, PREVIEW = "SAM prompts", "SAM box", "SAM preview"
NEW_LABELS = "new labels layer"
LABELS = "SAM labels"  # the name of the labels layer made for the chosen image


@dataclass
class Answer:
    """The decoder's masks for the prompts in one slice."""

    index: tuple[int, ...]
    masks: np.ndarray  # (3, H, W) bool
    scores: np.ndarray  # (3,)
    choice: int


@dataclass(frozen=True)
class SliceObject:
    """One object of the target labels layer in one slice."""

    label: int
    index: tuple[int, ...]  # the slice
    mask: np.ndarray  # (H, W) bool


class SlicePredictor:
    """One slice of the image, as :func:`~napari_sam.volume.propagation.propagate` asks for it
    (a :class:`~napari_sam.volume.propagation.PlanePredictor`): every prediction goes through
    the session, under its lock."""

    def __init__(self, session: Session, source: ImageSource, index: tuple[int, ...]) -> None:
        self.session, self.source, self.index = session, source, index
        self.image = session.segmenter(source, index).image

    def predict(self, *, points=None, labels=None, box=None, mask=None, multimask: bool = True):
        return self.session.predict(self.source, self.index, points=points, labels=labels,
                                    box=box, mask=mask, multimask=multimask)


class InteractiveWidget(QWidget):
    """Segment one object at a time on the shown slice of an image layer."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session.for_viewer(napari_viewer)
        self.embedder = SliceEmbedder.for_viewer(napari_viewer)
        self.points = self.boxes = self.preview = None
        self.answer: Answer | None = None
        self.refining: SliceObject | None = None  # the label that commit replaces
        self.committed: SliceObject | None = None  # what propagate carries through z
        self.worker = None
        self._ticket = 0
        self._flag: CancelFlag | None = None

        ours = lambda layer: layer.name in (PROMPTS, BOXES, PREVIEW)  # noqa: E731
        self.image = LayerChoice(napari_viewer, Image)
        self.target = LayerChoice(napari_viewer, Labels, new=NEW_LABELS, exclude=ours)
        self.positive = QPushButton()
        self.positive.setCheckable(True)
        self.positive.setChecked(True)
        self.positive.toggled.connect(self._show_polarity)
        self.select = QComboBox()
        self.select.addItems(STRATEGIES)
        self.select.setToolTip("which of the 3 masks is shown first")
        self.status = QLabel("add a positive click or a box on the image")
        self.status.setWordWrap(True)
        buttons = {
            "Next mask (M)": self.next_mask, "Commit (C)": self.commit, "Clear": self.clear,
            "Refine label under cursor (G)": self.refine_under_cursor,
            "Undo in the labels (Ctrl+Z)": self.undo,
        }
        self.min_score = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, value=0.5)
        self.min_overlap = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, value=0.3)
        self.min_contrast = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, value=0.4)
        self.min_contrast.setToolTip(
            "stop where the object is less than this fraction as bright against its "
            "surroundings as in the committed slice (0: off)")
        self.direction = QComboBox()
        self.direction.addItems(["both", "up", "down"])
        self.propagate_button = QPushButton("Propagate last object through z")
        self.propagate_button.clicked.connect(self.propagate)
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(lambda: self._flag and self._flag.cancel())
        self.progress = QProgressBar()
        self.method = QLabel()
        self.method.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("labels", self.target)
        form.addRow("clicks", self.positive)
        form.addRow("first mask", self.select)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for text, slot in buttons.items():
            button = QPushButton(text)
            button.clicked.connect(slot)
            layout.addWidget(button)
        layout.addWidget(self.status)
        box = QGroupBox("Propagation")
        propagation = QFormLayout(box)
        propagation.addRow(self.method)
        propagation.addRow("stop below score", self.min_score)
        propagation.addRow("stop below overlap", self.min_overlap)
        propagation.addRow("stop below contrast", self.min_contrast)
        propagation.addRow("direction", self.direction)
        row = QHBoxLayout()
        row.addWidget(self.propagate_button)
        row.addWidget(self.cancel)
        propagation.addRow(row)
        propagation.addRow(self.progress)
        layout.addWidget(box)
        layout.addStretch()

        self.image.currentIndexChanged.connect(self.setup_layers)
        napari_viewer.dims.events.current_step.connect(self.request_prediction)
        self.shortcuts = {"c": self.commit, "m": self.next_mask, "n": self.toggle_polarity,
                          "g": self.refine_under_cursor, "Control-z": self.undo}
        for key, action in self.shortcuts.items():
            napari_viewer.bind_key(key, _key(action), overwrite=True)
        self._show_polarity(True)
        self.setup_layers()
        # the model panel may load another model at any time: keep the propagation settings
        # in step with it
        self._method_timer = QTimer(self)
        self._method_timer.setInterval(500)
        self._method_timer.timeout.connect(self.show_method)
        self._method_timer.start()
        self.show_method()

    # --- layers -------------------------------------------------------------------------------

    def setup_layers(self, *_) -> None:
        """Make (or adapt) the prompt, box and preview layers for the chosen image."""
        image = self.image.layer()
        if image is None:
            return
        self.embedder.layer = image
        frame = dict(scale=image.scale, translate=image.translate)
        layers = self.viewer.layers
        if self.points is None or self.points not in layers or self.points.ndim != image.ndim:
            for name in (PROMPTS, BOXES, PREVIEW):
                if name in layers:
                    layers.remove(name)
            self.preview = self.viewer.add_labels(
                np.zeros((1,) * image.ndim, np.uint8), name=PREVIEW, opacity=0.6, **frame,
                colormap=DirectLabelColormap(color_dict={None: "transparent", 1: PREVIEW_COLOUR}))
            self.boxes = self.viewer.add_shapes(
                ndim=image.ndim, name=BOXES, edge_color="#00e5ff", face_color="transparent",
                edge_width=2, **frame)
            self.points = self.viewer.add_points(
                np.empty((0, image.ndim)), ndim=image.ndim, name=PROMPTS, size=8,
                features={"positive": np.empty(0, bool)}, border_color="white", **frame)
            for layer in (self.points, self.boxes, self.preview):
                for key, action in self.shortcuts.items():
                    layer.bind_key(key, _key(action), overwrite=True)
            self.points.events.data.connect(self.request_prediction)
            self.boxes.events.data.connect(self.request_prediction)
            self.boxes.mode = "add_rectangle"
            self.points.mode = "add"
            self._show_polarity(self.positive.isChecked())
        else:
            for layer in (self.points, self.boxes, self.preview):
                layer.scale, layer.translate = image.scale, image.translate
        self.open_saved_labels(image)
        self.viewer.layers.selection.active = self.points

    def open_saved_labels(self, image) -> None:
        """Show and choose the labels an earlier session kept on disk for ``image``, when the
        target is a new layer."""
        if self.target.layer() is not None:
            return
        try:
            source = self.session.source(image)
            if kept_on_disk(image, source, LABELS):
                self.target.choose(new_labels_layer(self.viewer, image, source, LABELS))
        except LayerError as error:
            self.status.setText(str(error))

    def source(self):
        """The chosen image as an :class:`ImageSource` and its shown slice.

        Raises
        ------
        LayerError
        """
        image = self.image.layer()
        if image is None:
            raise LayerError("no image layer: open an image (or File > Open Sample > napari-sam)")
        source = self.session.source(image)
        return source, current_slice(self.viewer, image, source)

    def target_layer(self, source) -> Labels:
        """The chosen labels layer, checked against the image; a new one if so chosen."""
        layer = self.target.layer()
        if layer is None:
            layer = new_labels_layer(self.viewer, self.image.layer(), source, LABELS)
            self.target.choose(layer)
            self.viewer.layers.selection.active = self.points
        check_target(layer, source)
        return layer

    def _checked_target(self):
        """``(source, shown slice, target labels layer)``, or None after a warning that says
        what is wrong."""
        try:
            source, index = self.source()
            return source, index, self.target_layer(source)
        except LayerError as error:
            show_warning(f"napari-sam: {error}")
            return None

    # --- prompts to preview -------------------------------------------------------------------

    def request_prediction(self, *_) -> None:
        """Re-run the decoder for the prompts in the shown slice, in a worker; the newest
        request wins."""
        if self.points is None:
            return
        try:
            source, index = self.source()
        except LayerError as error:
            self.status.setText(str(error))
            return
        points, labels = point_prompts(self.points, index)
        box = box_prompt(self.boxes, index)
        mask = self.refining.mask if self.refining and self.refining.index == index else None
        if mask is not None and box is None:
            box = np.array(bounding_box(mask), float)
        self._ticket += 1
        ticket = self._ticket
        if not (labels == 1).any() and box is None:
            self._show(None)
            self.status.setText("add a positive click or a box on the image")
            return
        prompts = dict(points=points if len(points) else None,
                       labels=labels if len(points) else None, box=box, mask=mask)
        self.status.setText("segmenting…")

        def done(result) -> None:
            if ticket != self._ticket:
                return  # the prompts changed meanwhile
            masks, scores, _ = result
            choice = select_mask(masks, scores, self.select.currentText())
            self._show(Answer(index, masks, np.asarray(scores, float), int(choice)))

        self.worker = run_in_background(functools.partial(self.session.predict, **prompts),
                                        source, index, what="segmentation", done=done)

    def _show(self, answer: Answer | None) -> None:
        self.answer = answer
        if answer is None:
            self.preview.data = np.zeros((1,) * self.preview.ndim, np.uint8)
            return
        mask = answer.masks[answer.choice]
        image = self.image.layer()
        lead = len(answer.index)
        self.preview.data = mask.astype(np.uint8).reshape((1,) * lead + mask.shape)
        self.preview.translate = np.asarray(image.translate) + np.r_[
            np.asarray(answer.index) * np.asarray(image.scale)[:lead], [0, 0]]
        scores = " · ".join(f"{s:.2f}" for s in answer.scores)
        self.status.setText(
            f"mask {answer.choice + 1}/{len(answer.scores)}, predicted IoU "
            f"{answer.scores[answer.choice]:.2f} (all: {scores}); C commits, M next mask")

    def next_mask(self) -> None:
        """Show the next of the 3 candidate masks."""
        if self.answer is not None:
            self.answer.choice = (self.answer.choice + 1) % len(self.answer.scores)
            self._show(self.answer)

    def toggle_polarity(self) -> None:
        """Switch new clicks between on the object (positive) and off it (negative)."""
        self.positive.setChecked(not self.positive.isChecked())

    def _show_polarity(self, positive: bool) -> None:
        self.positive.setText("positive (on the object) — N" if positive
                              else "negative (off the object) — N")
        if self.points is not None:
            self.points.feature_defaults["positive"] = positive
            self.points.current_face_color = POSITIVE_COLOUR if positive else NEGATIVE_COLOUR

    def clear(self) -> None:
        """Remove all prompts and the preview, and stop refining."""
        self.refining = None
        if self.points is not None:
            self.points.data = np.empty((0, self.points.ndim))
            self.boxes.data = []
        self._ticket += 1
        self._show(None)

    # --- commit, refine, propagate ------------------------------------------------------------

    def commit(self) -> int | None:
        """Write the shown mask into the labels layer with a new id (or the refined one's).

        Returns the id, or None when there was nothing to commit.
        """
        answer = self.answer
        if answer is None or not answer.masks[answer.choice].any():
            show_info("napari-sam: nothing to commit: add a click or a box first")
            return None
        checked = self._checked_target()
        if checked is None:
            return None
        target = checked[2]
        mask = answer.masks[answer.choice]
        refined = (self.refining if self.refining and self.refining.index == answer.index
                   else None)
        value = refined.label if refined else next_label(target)
        write_mask(target, answer.index, mask, value,
                   clear=refined.mask if refined else None)
        self.committed = SliceObject(value, answer.index, mask)
        self.clear()
        where = (f" on disk in {target.data.path}" if isinstance(target.data, DiskLabels)
                 else "")
        self.status.setText(
            f"object {value} written into {target.name!r}{where} ({describe(answer.index)})")
        return value

    def undo(self) -> None:
        """Undo the last change of the chosen labels layer (a commit, one slice of a
        propagation, a brush stroke), as napari's Ctrl+Z does when the labels layer is the
        active one; on disk, only the chunks that change are written."""
        layer = self.target.layer()
        if layer is None:
            show_info("napari-sam: no labels layer chosen: nothing to undo")
            return
        layer.undo()
        self.status.setText(f"undone in {layer.name!r}")

    def refine_under_cursor(self) -> None:
        """Take the label under the mouse as a mask prompt; commit then replaces it."""
        checked = self._checked_target()
        if checked is None:
            return
        _, index, target = checked
        row, col = np.round(target.world_to_data(self.viewer.cursor.position)[-2:]).astype(int)
        plane = np.asarray(target.data[slice_key(index)])
        if not (0 <= row < plane.shape[0] and 0 <= col < plane.shape[1]) or not plane[row, col]:
            show_info("napari-sam: no label under the cursor to refine")
            return
        value = int(plane[row, col])
        self.clear()
        self.refining = SliceObject(value, index, plane == value)
        self.status.setText(f"refining object {value}: add clicks, then C")
        self.request_prediction()

    def show_method(self) -> bool | None:
        """Say which propagation the session's model gives, and enable the stop settings only
        where they apply (SAM); returns whether it is SAM 2.1's memory (None: not known until
        the model loads)."""
        memory = memory_model(self.session)
        self.method.setText(MEMORY_TEXT if memory else REPROMPT_TEXT if memory is False
                            else "the model decides on loading: SAM 2.1 follows objects with "
                            "its memory, SAM re-prompts each slice")
        for spin in (self.min_score, self.min_overlap, self.min_contrast):
            spin.setEnabled(not memory)
        return memory

    def propagate(self):
        """Carry the last committed object through the neighbouring slices, in a worker: with
        SAM 2.1's memory when the model is a SAM 2.1 model, else slice by slice.

        Returns the worker, or None when there is nothing to propagate.
        """
        committed = self.committed
        if committed is None:
            show_info("napari-sam: commit an object first, then propagate it")
            return None
        value, index = committed.label, committed.index
        checked = self._checked_target()
        if checked is None:
            return None
        source, _, target = checked
        if not index:
            show_info("napari-sam: the image is 2D: there is nothing to propagate through")
            return None
        lead, plane = index[:-1], index[-1]
        flag = self._flag = CancelFlag()
        n_planes = source.volume.planes[-1]
        direction = self.direction.currentText()
        stops = {"min_score": self.min_score.value(), "min_overlap": self.min_overlap.value(),
                 "min_contrast": self.min_contrast.value()}
        session = self.session
        memory = self.show_method()

        def predictor_for(z: int) -> SlicePredictor:
            return SlicePredictor(session, source, (*lead, z))

        def job():
            uses_memory = memory
            if uses_memory is None:  # a checkpoint not loaded yet: load it to know what it is
                with session.lock:
                    session.model()
                    uses_memory = memory_model(session)
            if uses_memory:
                return (yield from follow(session, source, index, committed.mask, value,
                                          direction=direction, should_stop=flag))
            yield from propagate(predictor_for, committed.mask, plane, n_planes=n_planes,
                                 direction=direction, should_stop=flag, **stops)
            return None

        visited, written = [], []
        summary: list[MemorySummary] = []

        def yielded(step) -> None:
            visited.append(step.plane)
            self.progress.setValue(len(visited))
            if isinstance(step, MemoryStep):
                if step.present:
                    where = (*lead, step.plane)
                    write_mask(target, where, free_pixels(target, where, step.mask, value), value)
                    written.append(step.plane)
                    found = f"object score {step.score:.2f}"
                else:
                    found = "absent"
                self.status.setText(f"object {value}, SAM 2.1 memory: slice {step.plane} "
                                    f"({found})")
                return
            write_mask(target, (*lead, step.plane), step.mask, value)
            written.append(step.plane)
            self.status.setText(f"object {value}: slice {step.plane} (score {step.score:.2f})")

        def done(result) -> None:
            if isinstance(result, MemorySummary):
                summary.append(result)

        def finished() -> None:
            self.propagate_button.setEnabled(True)
            self.progress.setValue(self.progress.maximum())
            stopped = " (cancelled)" if flag() else ""
            if summary:
                self.status.setText(
                    f"object {value} propagated with SAM 2.1 memory to {len(written)} more "
                    f"slice(s){stopped}: {summary[0].describe(plane)}")
            else:
                self.status.setText(f"object {value} propagated to {len(written)} more "
                                    f"slice(s){stopped}")

        total = {"up": n_planes - 1 - plane, "down": plane}.get(direction, n_planes - 1)
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(0)
        self.propagate_button.setEnabled(False)
        how = ("SAM 2.1 memory" if memory else "SAM, slice by slice" if memory is False
               else "loading the model")
        self.status.setText(f"propagating object {value} ({direction}) with {how}…")
        self.worker = run_in_background(job, what="propagation", yielded=yielded, done=done,
                                        finished=finished)
        return self.worker


def _key(action):
    """A napari key binding (called with the viewer or layer) running ``action()``."""
    def binding(_viewer_or_layer):
        action()
    return binding
