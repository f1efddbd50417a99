"""The napari plugin, driven as a user would in a real (headless, Xvfb) napari viewer: prompts in
layers, keys and buttons, workers that must leave the UI responsive."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import Notification, notification_manager  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402

from napari_sam.plugin.automatic import AutomaticWidget  # noqa: E402
from napari_sam.plugin.interactive import PREVIEW, InteractiveWidget  # noqa: E402
from napari_sam.plugin.model_widget import ModelWidget  # noqa: E402
from napari_sam.plugin.session import Session  # noqa: E402
from napari_sam.synthetic import synthetic_nuclei  # noqa: E402

WAIT_MS = 60_000


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stack():
    """A (16, 192, 192) nuclei stack and its truth; nuclei span several slices."""
    return synthetic_nuclei((16, 192, 192), density=0.2, radius=(9, 14), seed=11, noise=0.5)


@pytest.fixture
def viewer(make_napari_viewer, stack):
    viewer = make_napari_viewer()
    viewer.add_image(stack[0], name="nuclei")
    return viewer


@pytest.fixture
def messages():
    """Notifications shown during the test (message, severity, class)."""
    seen: list[Notification] = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(mask)
    return np.unravel_index(int(np.argmax(distance)), mask.shape)


def biggest_object(labels_plane: np.ndarray) -> int:
    ids, counts = np.unique(labels_plane[labels_plane > 0], return_counts=True)
    return int(ids[np.argmax(counts)])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def wait_idle(qtbot, widget) -> None:
    """Wait for the widget's last worker to finish."""
    qtbot.waitUntil(lambda: widget.worker is None or widget.worker.ended, timeout=WAIT_MS)


def click(widget, z: int, row: float, col: float, positive: bool = True) -> None:
    widget.positive.setChecked(positive)
    widget.points.add([[z, row, col]])


def test_manifest_lists_the_widgets_and_samples():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-sam")
    manifest.validate_imports()
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert widgets == {"Interactive segmentation", "Automatic segmentation", "Model and embeddings",
                       "Fine-tune on your labels"}
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei_3d", "nuclei_2d"}


def test_sample_data_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam", "nuclei_3d")
    image, truth = viewer.layers["nuclei 3D"], viewer.layers["nuclei 3D (truth)"]
    assert image.data.shape == truth.data.shape == (24, 256, 256)
    assert truth.data.max() > 20


def test_click_previews_cycles_and_commits(viewer, qtbot, stack, messages):
    _, truth = stack
    widget = InteractiveWidget(viewer)
    z = 5
    viewer.dims.set_current_step(0, z)
    target_id = biggest_object(truth[z])
    row, col = interior_point(truth[z] == target_id)

    click(widget, z, row, col)
    wait_idle(qtbot, widget)
    answer = widget.answer
    assert answer is not None and answer.index == (z,)
    preview = viewer.layers[PREVIEW]
    shown = preview.data.reshape(preview.data.shape[-2:]).astype(bool)
    assert iou(shown, truth[z] == target_id) > 0.6
    assert preview.translate[0] == z  # the preview sits on the shown slice only
    assert "predicted IoU" in widget.status.text()

    first = widget.answer.choice
    widget.next_mask()
    assert widget.answer.choice == (first + 1) % 3
    assert np.array_equal(preview.data.reshape(shown.shape).astype(bool),
                          widget.answer.masks[widget.answer.choice])
    widget.answer.choice = first

    assert widget.commit() == 1
    labels = viewer.layers["SAM labels"]
    assert labels.data.shape == truth.shape and labels.data.dtype == np.uint32
    assert iou(labels.data[z] == 1, truth[z] == target_id) > 0.6
    assert not labels.data[np.arange(16) != z].any()  # nothing written in other slices
    assert len(widget.points.data) == 0 and widget.answer is None  # prompts cleared

    other = [i for i in np.unique(truth[z]) if i and i != target_id][0]
    click(widget, z, *interior_point(truth[z] == other))
    wait_idle(qtbot, widget)
    assert widget.commit() == 2
    assert (labels.data[z] == 1).sum() > 0, "the first object is still there"


def test_negative_click_and_box_prompts(viewer, qtbot, stack):
    _, truth = stack
    widget = InteractiveWidget(viewer)
    z = 4
    viewer.dims.set_current_step(0, z)
    target = truth[z] == biggest_object(truth[z])
    rows, cols = np.nonzero(target)
    corners = np.array([[z, rows.min(), cols.min()], [z, rows.min(), cols.max()],
                        [z, rows.max(), cols.max()], [z, rows.max(), cols.min()]], float)
    widget.boxes.add_rectangles(corners)
    wait_idle(qtbot, widget)
    box_mask = widget.answer.masks[widget.answer.choice]
    assert iou(box_mask, target) > 0.6

    # a negative click on the object's centre reaches the model with the box, in (row, col)
    # of the slice (this model keeps a boxed nucleus whole whatever the click: what the mask
    # does is the model's, the prompts are the plugin's)
    session, seen = Session.for_viewer(viewer), []
    predict = session.predict
    session.predict = lambda source, index, **prompts: seen.append(prompts) or predict(
        source, index, **prompts)
    row, col = interior_point(target)
    click(widget, z, row, col, positive=False)
    wait_idle(qtbot, widget)
    assert widget.points.features["positive"].tolist() == [False]
    np.testing.assert_array_equal(seen[-1]["points"], [[row, col]])
    np.testing.assert_array_equal(seen[-1]["labels"], [0])
    np.testing.assert_array_equal(seen[-1]["box"], [rows.min(), cols.min(), rows.max(), cols.max()])


def test_key_bindings_commit_and_cycle(viewer, qtbot, stack):
    _, truth = stack
    widget = InteractiveWidget(viewer)
    viewer.dims.set_current_step(0, 5)
    click(widget, 5, *interior_point(truth[5] == biggest_object(truth[5])))
    wait_idle(qtbot, widget)
    keymap = {str(k): f for k, f in widget.points.keymap.items()}
    first = widget.answer.choice
    keymap["M"](widget.points)
    assert widget.answer.choice == (first + 1) % 3
    keymap["N"](widget.points)
    assert not widget.positive.isChecked()
    keymap["C"](widget.points)
    assert viewer.layers["SAM labels"].data[5].max() == 1


def test_propagate_through_z(viewer, qtbot, stack):
    _, truth = stack
    widget = InteractiveWidget(viewer)
    # the largest object that ends inside the stack, prompted in its middle slice
    extent = {i: np.flatnonzero((truth == i).any(axis=(1, 2))) for i in np.unique(truth)[1:]}
    inside = [i for i, e in extent.items() if e[0] > 0 and e[-1] < len(truth) - 1]
    target_id = max(inside, key=lambda i: (truth == i).sum())
    areas = (truth == target_id).sum(axis=(1, 2))
    planes = np.flatnonzero(areas)
    z = int(np.argmax(areas))
    viewer.dims.set_current_step(0, z)
    click(widget, z, *interior_point(truth[z] == target_id))
    wait_idle(qtbot, widget)
    value = widget.commit()
    widget.propagate()
    wait_idle(qtbot, widget)
    labels = viewer.layers["SAM labels"].data
    substantial = np.flatnonzero(areas >= 0.3 * areas.max())  # not the thin caps
    covered = [p for p in substantial if iou(labels[p] == value, truth[p] == target_id) > 0.5]
    assert len(substantial) >= 3
    assert all(((labels[p] == value) & (truth[p] == target_id)).any() for p in substantial)
    assert len(covered) >= len(substantial) - 1, (substantial, covered)  # IoU > 0.5
    outside = [p for p in range(len(truth)) if p not in planes and (labels[p] == value).any()]
    assert len(outside) <= 1


def test_refine_label_under_cursor(viewer, qtbot, stack):
    _, truth = stack
    widget = InteractiveWidget(viewer)
    z = 5
    viewer.dims.set_current_step(0, z)
    target = truth[z] == biggest_object(truth[z])
    rough = np.zeros_like(target)
    rows, cols = np.nonzero(target)
    rough[rows.min():(rows.min() + rows.max()) // 2, cols.min():cols.max()] = True  # top half
    labels = viewer.add_labels(np.zeros(truth.shape, np.uint32), name="mine")
    labels.data[z][rough] = 7
    widget.target.choose(labels)
    viewer.cursor.position = (z, *np.argwhere(rough)[0])
    widget.refine_under_cursor()
    wait_idle(qtbot, widget)
    assert widget.refining.label == 7 and widget.answer is not None
    assert widget.commit() == 7
    assert iou(labels.data[z] == 7, target) > iou(rough, target)
    assert set(np.unique(labels.data)) == {0, 7}


def test_automatic_slice_and_stack_with_cancel_and_resume(viewer, qtbot, stack, tmp_path):
    widget = AutomaticWidget(viewer)
    viewer.dims.set_current_step(0, 3)
    widget.segment_slice()
    wait_idle(qtbot, widget)
    layer = viewer.layers["SAM automatic (nuclei)"]
    assert layer.data[3].max() >= 5 and not layer.data[np.arange(16) != 3].any()

    output = tmp_path / "labels.zarr"
    widget.output.setText(str(output))
    widget.link.setChecked(False)
    widget.segment_stack()
    qtbot.waitUntil(lambda: widget.progress.value() >= 3, timeout=WAIT_MS)
    widget.cancel.click()
    wait_idle(qtbot, widget)
    assert "cancelled" in widget.status.text()
    partial = np.asarray(viewer.layers["labels (nuclei)"].data)
    done = [p for p in range(16) if partial[p].any()]
    assert 3 <= len(done) < 16, done  # finished slices kept, the run stopped early

    widget.link.setChecked(True)
    widget.segment_stack()  # resumes: the finished slices are not redone
    wait_idle(qtbot, widget)
    assert "already done" in widget.status.text()
    final = np.asarray(viewer.layers["labels (nuclei)"].data)
    assert all(final[p].any() for p in range(16))


def test_automatic_mode_choice_reaches_the_engine(viewer, qtbot):
    """The mode starts as the engine's choice (the model's own for a slice, its stack mode for
    a stack); the generator's settings apply to "amg" only; the shown slice is segmented in
    the chosen mode."""
    widget = AutomaticWidget(viewer)
    assert widget.mode.currentText() == "default" and widget.options() == {}
    assert not widget.sampler.isEnabled()
    assert "ais on a slice, apg on a stack" in widget.mode.toolTip()
    widget.mode.setCurrentText("amg")
    assert widget.sampler.isEnabled() and widget.options()["sampler"] == "boxes"
    widget.mode.setCurrentText("ais")
    assert not widget.sampler.isEnabled() and not widget.iou.isEnabled()
    assert widget.options() == {"mode": "ais"}
    widget.segment_slice()
    wait_idle(qtbot, widget)
    assert viewer.layers["SAM automatic (nuclei)"].data.max() >= 5


def test_ui_stays_responsive_while_embedding(viewer, qtbot):
    session = Session.for_viewer(viewer)
    model = session.model()
    forward = model.image_encoder.forward

    def slow_forward(x):
        time.sleep(1.5)
        return forward(x)

    model.image_encoder.forward = slow_forward
    ModelWidget(viewer)
    from napari_sam.plugin.prefetch import SliceEmbedder

    embedder = SliceEmbedder.for_viewer(viewer)
    embedder.neighbours = 0
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    started = time.perf_counter()
    embedder.start()
    qtbot.waitUntil(lambda: embedder.worker.ended, timeout=WAIT_MS)
    elapsed = time.perf_counter() - started
    timer.stop()
    assert elapsed >= 1.5
    assert len(ticks) >= 0.5 * elapsed / 0.02  # the event loop kept running
    assert max(np.diff(ticks)) < 0.5  # and never stalled


def test_bad_input_is_a_message_not_a_traceback(make_napari_viewer, qtbot, messages, tmp_path):
    viewer = make_napari_viewer()
    widget = InteractiveWidget(viewer)
    assert widget.commit() is None  # nothing to commit, no image: a message
    automatic = AutomaticWidget(viewer)
    automatic.segment_slice()
    assert "no image layer" in automatic.status.text()

    viewer.add_image(np.zeros((2, 3, 4, 5, 64, 64), np.uint16), name="6d")
    automatic.image.choose(viewer.layers["6d"])
    automatic.segment_slice()
    assert "dimension" in automatic.status.text()

    viewer.add_image(np.zeros((64, 64, 2), np.uint16), name="channels last")
    automatic.image.choose(viewer.layers["channels last"])
    automatic.segment_slice()
    assert "channel" in automatic.status.text()

    viewer.layers.clear()
    image, truth = synthetic_nuclei((3, 96, 96), radius=(9, 12), seed=4)
    viewer.add_image(image, name="img")
    other = viewer.add_labels(np.ones((4, 96, 96), np.uint32), name="other shape")
    widget = InteractiveWidget(viewer)
    widget.target.choose(other)
    click(widget, 1, *interior_point(truth[1] == biggest_object(truth[1])))
    wait_idle(qtbot, widget)
    assert widget.answer.masks[widget.answer.choice].any()
    assert widget.commit() is None
    assert (other.data == 1).all(), "the existing labels are untouched"
    assert any("shape" in m.message for m in messages)

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    panel = ModelWidget(viewer)
    panel.checkpoint.setText(str(broken))
    worker = panel.load()
    qtbot.waitUntil(lambda: worker.ended, timeout=WAIT_MS)
    errors = [m for m in messages if "loading the model failed" in m.message]
    assert errors and "broken.pth" in errors[0].message
    assert all(type(m) is Notification for m in messages)  # no ErrorNotification: no traceback
    assert Session.for_viewer(viewer).settings.checkpoint is None  # the old settings stay


def test_model_panel_shows_a_checkpoint_another_widget_put_in_use(make_napari_viewer, qtbot,
                                                                  tmp_path):
    """A fine-tuned checkpoint made the session's model in a worker shows in the panel."""
    import threading

    from napari_sam.models.loading import load_model

    viewer = make_napari_viewer()
    panel = ModelWidget(viewer)
    checkpoint = tmp_path / "model.pt"
    torch.save(load_model("nuclei_s", device="cpu").state_dict(), checkpoint)
    worker = threading.Thread(target=Session.for_viewer(viewer).use_checkpoint, args=(checkpoint,))
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: panel.checkpoint.text() == str(checkpoint), timeout=WAIT_MS)
    assert panel.settings()["checkpoint"] == str(checkpoint)


def test_rgb_image_is_segmented(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, truth = synthetic_nuclei((160, 160), radius=(9, 13), seed=2)
    rgb = np.stack([image, image // 2, np.zeros_like(image)], axis=-1)
    viewer.add_image(rgb, rgb=True, name="rgb")
    widget = InteractiveWidget(viewer)
    target = truth == biggest_object(truth)
    widget.points.add([interior_point(target)])
    wait_idle(qtbot, widget)
    assert iou(widget.answer.masks[widget.answer.choice], target) > 0.5
    assert widget.commit() == 1
    assert viewer.layers["SAM labels"].data.shape == (160, 160)


def test_model_panel_fills_the_disk_cache_and_reuses_it(make_napari_viewer, qtbot, stack,
                                                        tmp_path):
    from napari_sam.engine.embeddings import EmbeddingStore

    cache = tmp_path / "embeddings.zarr"
    statuses = []
    for _ in range(2):  # a second viewer (a new session) finds the slices in the cache
        viewer = make_napari_viewer()
        viewer.add_image(stack[0], name="nuclei")
        viewer.dims.set_current_step(0, 4)
        panel = ModelWidget(viewer)
        panel.cache.setText(str(cache))
        panel.neighbours.setValue(1)
        worker = panel.load()
        qtbot.waitUntil(lambda: worker.ended, timeout=WAIT_MS)
        assert panel.status.text().startswith("model ready")
        qtbot.waitUntil(lambda: panel.embedder.worker is not None and panel.embedder.worker.ended,
                        timeout=WAIT_MS)
        assert panel.progress.value() == panel.progress.maximum() == 3  # slice 4, then 5 and 3
        statuses.append(panel.status.text())
    session = Session.for_viewer(viewer)
    tiles = len(session.segmenter(session.source(viewer.layers["nuclei"]), (4,)).tiles)
    assert len(EmbeddingStore(cache)) == 3 * tiles  # every tile of slices 4, 5 and 3
    assert "embedded (3/3)" in statuses[0] and "ready (cached) (3/3)" in statuses[1]


def test_large_slice_is_tiled_at_the_model_scale(make_napari_viewer, qtbot):
    """A 512 px sample slice with the 256 px model: by default it is resampled to the model's
    object size and cut into tiles of the model's input size, not shrunk to it (which halves
    the nuclei and spoils the masks)."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sam", "nuclei_2d")
    truth = viewer.layers["nuclei 2D (truth)"].data
    widget = InteractiveWidget(viewer)
    assert widget.image.layer().name == "nuclei 2D"
    segmenter = Session.for_viewer(viewer).segmenter(
        Session.for_viewer(viewer).source(widget.image.layer()), ())
    assert (segmenter.tile, segmenter.halo) == (256, 32)
    ious = []
    for object_id in np.unique(truth)[1::25]:
        widget.clear()
        target = truth == object_id
        widget.points.add([interior_point(target)])
        wait_idle(qtbot, widget)
        ious.append(iou(widget.answer.masks[widget.answer.choice], target))
    assert len(ious) >= 8 and np.mean(ious) > 0.6, ious


def test_embeddings_from_the_command_line_are_found_by_the_plugin(make_napari_viewer, stack,
                                                                   tmp_path):
    """`napari-sam embed` and the plugin take the same path (limits, diameter, tiles): a slice
    embedded by the command line is computed again by neither."""
    import tifffile

    from napari_sam.cli import main

    tifffile.imwrite(tmp_path / "stack.tif", stack[0])
    cache = tmp_path / "embeddings.zarr"
    assert main(["embed", str(tmp_path / "stack.tif"), "--cache", str(cache), "--z", "3:6",
                 "--device", "cpu"]) == 0
    viewer = make_napari_viewer()
    layer = viewer.add_image(tifffile.imread(tmp_path / "stack.tif"), name="nuclei")
    session = Session.for_viewer(viewer)
    session.configure(cache=str(cache), device="cpu")
    source = session.source(layer)
    assert sum(session.embed(source, (z,)) for z in (3, 4, 5)) == 0
    assert session.embed(source, (7,)) > 0  # a slice it did not embed is computed


def test_layer_scale_is_the_voxel_size_of_the_stack(make_napari_viewer):
    """A scale set on the layer (by a reader, or by hand) reaches the 3D assembly; napari's
    default scale of ones is no measurement."""
    from napari_sam.plugin.session import ImageSource

    viewer = make_napari_viewer()
    data = np.zeros((4, 32, 32), np.uint16)
    scaled = viewer.add_image(data, scale=(2.0, 0.5, 0.5), name="scaled")
    plain = viewer.add_image(data, name="plain")
    assert ImageSource.from_layer(scaled).volume.voxel_size == (2.0, 0.5, 0.5)
    assert ImageSource.from_layer(plain).volume.voxel_size is None
