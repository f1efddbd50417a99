"""Labels layers too large for the in-memory budget live on disk: edited in place (commit,
refine, propagation, undo, napari's brush and fill) writing only the chunks they touch, with
memory bounded by a few planes, and found again by a new viewer. The budget is made small
(``NAPARI_SAM_LABELS_IN_MEMORY_MB``) so that small volumes stand for large ones."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.key_bindings import KeyBinding  # noqa: E402
from napari.utils.notifications import Notification, notification_manager  # noqa: E402

from napari_sam.plugin import interactive  # noqa: E402
from napari_sam.plugin.disk_labels import DiskLabels  # noqa: E402
from napari_sam.plugin.interactive import Answer, InteractiveWidget  # noqa: E402
from napari_sam.plugin.prefetch import SliceEmbedder  # noqa: E402
from napari_sam.volume import ome_zarr  # noqa: E402
from napari_sam.volume.propagation import PropagatedPlane  # noqa: E402

WAIT_MS = 60_000
LABELS = "SAM labels"


@pytest.fixture(autouse=True)
def small_budget(monkeypatch, tmp_path):
    """Labels above 1 MB go to disk; labels of in-memory images under ``tmp_path``."""
    monkeypatch.setenv("NAPARI_SAM_LABELS_IN_MEMORY_MB", "1")
    monkeypatch.setenv("NAPARI_SAM_LABELS_DIR", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def no_prefetch(monkeypatch):
    """No embedding in the background: no model runs here (the tests answer for it)."""
    monkeypatch.setattr(SliceEmbedder, "schedule", lambda self, *_: None)


@pytest.fixture
def messages():
    seen: list[Notification] = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2


def stack(planes: int, side: int) -> np.ndarray:
    """A noisy uint8 stack (its content keys the labels of an in-memory image)."""
    return np.random.default_rng(0).integers(0, 50, (planes, side, side), dtype=np.uint8)


def commit(widget: InteractiveWidget, viewer, z: int, mask: np.ndarray) -> int:
    """Commit ``mask`` on slice ``z`` through the widget, as if the decoder had answered it."""
    viewer.dims.set_current_step(0, z)
    widget.answer = Answer((z,), mask[None], np.array([0.9]), 0)
    return widget.commit()


def stored_chunks(path: Path) -> set[str]:
    """The chunk files of a zarr array (chunks never written, or all 0, are not stored)."""
    return {str(p.relative_to(path / "c")) for p in (path / "c").rglob("*") if p.is_file()}


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.worker is None or widget.worker.ended, timeout=WAIT_MS)


def test_small_labels_stay_in_memory_and_large_ones_go_to_disk(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(stack(4, 128), name="small")  # 256 kB of labels
    viewer.add_image(stack(4, 1024), name="large")  # 16 MB of labels
    small = InteractiveWidget(viewer)
    small.image.setCurrentText("small")
    commit(small, viewer, 1, disc((128, 128), (60, 60), 10))
    assert isinstance(viewer.layers[LABELS].data, np.ndarray)

    viewer.layers.remove(LABELS)
    small.image.setCurrentText("large")
    value = commit(small, viewer, 1, disc((1024, 1024), (600, 600), 10))
    data = viewer.layers[LABELS].data
    assert isinstance(data, DiskLabels)
    assert data.path.is_relative_to(tmp_path / "cache")
    assert str(data.path) in small.status.text()
    assert zarr.open_array(data.path, mode="r")[1, 600, 600] == value


def test_edits_on_disk_keep_memory_bounded_and_a_new_viewer_finds_them(
        make_napari_viewer, qtbot, monkeypatch):
    """40 planes of 1024 x 1024: 160 MB of labels in memory, a few planes here."""
    planes, side = 40, 1024
    plane_bytes = side * side * 4
    image = stack(planes, side)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    widget = InteractiveWidget(viewer)
    objects = {z: disc((side, side), (200 + 15 * z, 300), 60) for z in (5, 12, 30)}
    undone = disc((side, side), (800, 800), 40)

    def fake_propagate(predictor_for, mask, plane, *, n_planes, direction, **stops):
        for z in (13, 14, 15):  # the object goes on above its slice
            yield PropagatedPlane(z, mask, 0.9)

    monkeypatch.setattr(interactive, "propagate", fake_propagate)
    tracemalloc.start()
    try:
        ids = {z: commit(widget, viewer, z, mask) for z, mask in objects.items()}
        labels = viewer.layers[LABELS]
        commit(widget, viewer, 20, undone)
        assert viewer.layers.selection.active is widget.points
        widget.points.keymap[KeyBinding.from_str("Control-Z")](widget.points)  # Ctrl+Z
        viewer.dims.set_current_step(0, 12)
        widget.committed = interactive.SliceObject(ids[12], (12,), objects[12])
        widget.propagate()
        wait_idle(qtbot, widget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # napari showing a slice takes about 7 planes' worth (data, colours, texture)
    assert peak < 10 * plane_bytes, f"peak {peak / 2**20:.0f} MB for planes of 4 MB"
    assert len(set(ids.values())) == 3
    path = labels.data.path
    del labels, widget
    viewer.close()

    # a new viewer on the same image: the widget shows the labels saved on disk
    again = make_napari_viewer()
    again.add_image(image.copy(), name="cells")
    InteractiveWidget(again)
    found = again.layers[LABELS].data
    assert isinstance(found, DiskLabels) and found.path == path
    for z, mask in objects.items():
        np.testing.assert_array_equal(found[z] == ids[z], mask)
    for z in (13, 14, 15):
        np.testing.assert_array_equal(found[z] == ids[12], objects[12])
    assert not found[20].any(), "the undone commit is not on disk"
    assert {z for z in range(planes) if found[z].any()} == {5, 12, 13, 14, 15, 30}
    assert interactive.next_label(again.layers[LABELS]) > max(ids.values())


def test_a_commit_writes_only_the_tiles_under_the_object(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(stack(2, 2048), name="wide")
    widget = InteractiveWidget(viewer)
    commit(widget, viewer, 1, disc((2048, 2048), (700, 1300), 50))  # within tile (1, 2)
    path = viewer.layers[LABELS].data.path
    assert stored_chunks(path) == {"1/1/2"}
    first = (path / "c" / "1/1/2").stat().st_ino  # chunks are replaced whole when written
    commit(widget, viewer, 1, disc((2048, 2048), (1024, 300), 30))  # across tiles (1|2, 0)
    commit(widget, viewer, 0, disc((2048, 2048), (1024, 1024), 30))  # across 4 tiles
    assert stored_chunks(path) == {"1/1/2", "1/1/0", "1/2/0",
                                   "0/1/1", "0/1/2", "0/2/1", "0/2/2"}
    assert (path / "c" / "1/1/2").stat().st_ino == first, "the first object's tile is untouched"


def test_refine_replaces_the_object_on_disk(make_napari_viewer, qtbot):
    side = 1024
    viewer = make_napari_viewer()
    viewer.add_image(stack(3, side), name="cells")
    widget = InteractiveWidget(viewer)
    first = disc((side, side), (300, 300), 50)
    value = commit(widget, viewer, 2, first)
    labels = viewer.layers[LABELS]
    viewer.cursor.position = (2, 300, 300)
    widget.request_prediction = lambda *_: None  # no model: the test answers for the decoder
    widget.refine_under_cursor()
    assert widget.refining.label == value
    smaller = disc((side, side), (310, 290), 30)
    assert commit(widget, viewer, 2, smaller) == value
    np.testing.assert_array_equal(labels.data[2] == value, smaller)
    labels.undo()
    np.testing.assert_array_equal(labels.data[2] == value, first)


def test_napari_brush_fill_and_undo_write_to_disk(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(stack(3, 1024), name="cells")
    widget = InteractiveWidget(viewer)
    value = commit(widget, viewer, 1, disc((1024, 1024), (500, 500), 40))
    labels = viewer.layers[LABELS]
    on_disk = zarr.open_array(labels.data.path, mode="r")
    labels.brush_size = 10
    labels.paint((1, 100, 900), 7)
    assert on_disk[1, 100, 900] == 7
    labels.fill((1, 500, 500), 9)
    assert on_disk[1, 500, 500] == 9 and not (on_disk[1] == value).any()
    labels.undo()
    assert on_disk[1, 500, 500] == value
    labels.undo()
    assert on_disk[1, 100, 900] == 0
    # ids painted by hand are never given to new objects
    labels.paint((1, 50, 50), 40)
    assert interactive.next_label(labels) == 41


def test_propagation_with_sam2_memory_writes_to_disk(make_napari_viewer, qtbot, monkeypatch):
    from test_plugin_sam2 import disc_stack, sam2_model, use_model

    monkeypatch.setenv("NAPARI_SAM_LABELS_IN_MEMORY_MB", "0")  # every labels layer on disk
    viewer = make_napari_viewer()
    viewer.add_image(disc_stack()[0], name="discs")
    use_model(viewer, sam2_model(present=True))
    widget = InteractiveWidget(viewer)
    value = commit(widget, viewer, 2, disc_stack()[1])
    # another object where the disc goes on: propagation must not paint over it
    labels = viewer.layers[LABELS]
    labels.paint((4, 32, 30), 50)
    widget.direction.setCurrentText("up")
    widget.propagate()
    wait_idle(qtbot, widget)
    on_disk = zarr.open_array(labels.data.path, mode="r")
    assert [z for z in range(on_disk.shape[0]) if (on_disk[z] == value).any()] == [2, 3, 4, 5]
    assert on_disk[4, 32, 30] == 50


def test_labels_beside_an_image_file(make_napari_viewer, tmp_path):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, stack(4, 1024), photometric="minisblack")
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari")
    widget = InteractiveWidget(viewer)
    value = commit(widget, viewer, 3, disc((1024, 1024), (100, 100), 20))
    beside = tmp_path / "cells.tif.napari-sam-labels.zarr" / "sam-labels"
    assert viewer.layers[LABELS].data.path == beside
    assert zarr.open_array(beside, mode="r")[3, 100, 100] == value


def ome_zarr_image(path: Path, planes: int, side: int) -> None:
    """An OME-Zarr image (NGFF 0.5) with two levels."""
    group = zarr.open_group(path, mode="w")
    image = stack(planes, side)
    group.create_array("0", data=image, chunks=(1, side, side))
    group.create_array("1", data=image[:, ::2, ::2], chunks=(1, side // 2, side // 2))
    axes = [{"name": "z", "type": "space"}, {"name": "y", "type": "space"},
            {"name": "x", "type": "space"}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}]},
    ]}]}


def test_labels_of_an_ome_zarr_image_are_its_label_image(make_napari_viewer, qtbot, tmp_path):
    path = tmp_path / "cells.ome.zarr"
    ome_zarr_image(path, 3, 1024)
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-ome-zarr")
    widget = InteractiveWidget(viewer)
    value = commit(widget, viewer, 1, disc((1024, 1024), (400, 600), 50))
    labels = path / "labels" / "sam-labels"
    assert viewer.layers[LABELS].data.path == labels
    group = zarr.open_group(labels, mode="r")
    assert group.attrs["ome"]["multiscales"][0]["datasets"][1]["path"] == "1"
    assert zarr.open_group(path / "labels", mode="r").attrs["ome"]["labels"] == ["sam-labels"]
    assert group["0"][1, 400, 600] == value
    # the lower level follows the edit, in the background
    qtbot.waitUntil(lambda: group["1"][1, 200, 300] == value, timeout=WAIT_MS)
    viewer.layers[LABELS].undo()
    assert group["0"][1, 400, 600] == 0
    qtbot.waitUntil(lambda: group["1"][1, 200, 300] == 0, timeout=WAIT_MS)


def test_a_label_image_made_elsewhere_is_reopened_and_its_ids_kept(make_napari_viewer,
                                                                   tmp_path):
    path = tmp_path / "cells.ome.zarr"
    ome_zarr_image(path, 3, 1024)
    pyramid = ome_zarr.read_image_pyramid(path)
    made = ome_zarr.create_labels(path / "labels" / "sam-labels", shape=(3, 1024, 1024),
                                  chunks=(1, 1024, 1024), pyramid=pyramid)
    made["0"][2, 10:20, 10:20] = 12
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-ome-zarr")
    widget = InteractiveWidget(viewer)
    assert viewer.layers[LABELS].data[2, 15, 15] == 12  # shown when the widget opens
    assert commit(widget, viewer, 0, disc((1024, 1024), (400, 600), 50)) == 13


def test_labels_that_do_not_fit_are_refused_and_kept(make_napari_viewer, tmp_path, messages):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, stack(4, 1024), photometric="minisblack")
    beside = tmp_path / "cells.tif.napari-sam-labels.zarr" / "sam-labels"
    zarr.create_array(beside, shape=(2, 64, 64), dtype="uint32")[:] = 3
    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari")
    widget = InteractiveWidget(viewer)
    assert "have shape (2, 64, 64)" in widget.status.text()
    assert commit(widget, viewer, 1, disc((1024, 1024), (100, 100), 20)) is None
    assert any("move or delete that folder" in str(m.message) for m in messages)
    assert (zarr.open_array(beside, mode="r")[:] == 3).all()


def test_a_budget_that_is_not_a_number_is_named(make_napari_viewer, monkeypatch, messages):
    monkeypatch.setenv("NAPARI_SAM_LABELS_IN_MEMORY_MB", "lots")
    viewer = make_napari_viewer()
    viewer.add_image(stack(2, 64), name="cells")
    widget = InteractiveWidget(viewer)
    assert commit(widget, viewer, 1, disc((64, 64), (30, 30), 5)) is None
    assert any("NAPARI_SAM_LABELS_IN_MEMORY_MB='lots'" in str(m.message) for m in messages)


def test_levels_left_behind_by_a_crash_catch_up_when_the_labels_are_reopened(tmp_path):
    path = tmp_path / "labels.ome.zarr"
    group = ome_zarr.create_labels(path, shape=(3, 1024, 1024), chunks=(1, 512, 512), axes="zyx")
    level0, level1 = (group[p] for p in ome_zarr.level_paths(group))
    data = DiskLabels(level0, path, levels=group)
    data[1, 100:200, 300:400] = 4  # the session ends before its levels are written
    assert data.levels_behind and (level1[1] == 0).all()

    def reopened() -> DiskLabels:
        group = ome_zarr.open_labels(path, mode="r+")
        return DiskLabels(group[ome_zarr.level_paths(group)[0]], path, levels=group)

    again = reopened()
    assert again.levels_behind and again.max_label == 4
    again.write_levels()
    assert (level1[1, 50:100, 150:200] == 4).all()
    assert not reopened().levels_behind
