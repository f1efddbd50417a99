"""OME-Zarr labels of stack runs: in an OME-Zarr image's labels group with its levels, or a
standalone label image; read by ome-zarr's reader, validated by ome-zarr-models, opened by napari;
a killed run resumes to the same labels and levels."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_sam.volume.io import open_volume, open_zarr_array
from napari_sam.volume.ome_zarr import (
    create_labels,
    label_colour,
    labels_location,
    level_paths,
    open_labels,
    read_image_pyramid,
    write_levels,
    write_properties,
)
from napari_sam.volume.stack import RECORD, segment_stack

pytest.importorskip("ome_zarr")
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr.writer import write_image
from test_stack import SETTINGS, sphere_volume

needs_display = pytest.mark.skipif(
    sys.platform.startswith("linux") and not any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")),
    reason="needs a display: run under xvfb-run -a",
)


# sphere_volume's planes are 6 pixels apart
VOXEL_SIZE = (6.0, 1.0, 1.0)


def ome_image(path: Path, image: np.ndarray, version: str = "0.5") -> Path:
    """``image`` (z, y, x) written by ome-zarr as an OME-Zarr image of 3 levels."""
    group = zarr.open_group(path, mode="w", zarr_format=3 if version == "0.5" else 2)
    write_image(image, group, axes="zyx", scale_factors=(2, 4),
                scale=dict(zip("zyx", VOXEL_SIZE)), fmt=FormatV04() if version == "0.4" else None,
                storage_options={"chunks": (1, *image.shape[1:])})
    return path


def nearest(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``labels`` sampled at the centres of the voxels of a level of ``shape``."""
    for axis, n in enumerate(shape):
        n0 = labels.shape[axis]
        labels = np.take(labels, ((np.arange(n) + 0.5) * n0 / n).astype(int), axis=axis)
    return labels


def levels(path: Path) -> list[np.ndarray]:
    group = open_labels(path)
    return [group[p][:] for p in level_paths(group)]


def ome(path: Path) -> dict:
    """The NGFF metadata of the group at ``path`` (either version)."""
    attributes = zarr.open_group(path, mode="r").attrs.asdict()
    return attributes.get("ome", attributes)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """An OME-Zarr 0.5 image of spheres, segmented into its labels without an output given."""
    image, truth = sphere_volume()
    path = ome_image(tmp_path_factory.mktemp("ome") / "spheres.ome.zarr", image)
    return path, segment_stack(str(path), predicted_iou=True, **SETTINGS), image, truth


def test_labels_of_an_ome_zarr_image_go_into_its_labels_group_read_by_ome_zarr(run):
    path, summary, _, truth = run
    labels_path = path / "labels" / "napari-sam"
    assert Path(summary.output) == labels_path and summary.linked
    assert ome(path / "labels")["labels"] == ["napari-sam"]
    nodes = list(Reader(parse_url(str(path)))())
    label_nodes = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(label_nodes) == 1
    image_levels = [np.asarray(level) for level in nodes[0].data]
    label_levels = [np.asarray(level) for level in label_nodes[0].data]
    # the image's levels, shape for shape; each a nearest-neighbour sample of level 0
    assert [a.shape for a in label_levels] == [a.shape for a in image_levels] == \
        [(4, 192, 192), (4, 96, 96), (4, 48, 48)]
    assert all(a.dtype == np.uint32 for a in label_levels)
    for level in label_levels[1:]:
        np.testing.assert_array_equal(level, nearest(label_levels[0], level.shape))
    # every sphere found as one object through z, numbered 1, 2, ...
    assert np.unique(label_levels[0]).tolist() == list(range(truth.max() + 1))


def test_label_metadata_follows_the_ngff_spec(run):
    path, _, _, _ = run
    labels_path = path / "labels" / "napari-sam"
    metadata = ome(labels_path)
    assert metadata["version"] == "0.5"
    multiscale = metadata["multiscales"][0]
    image_multiscale = ome(path)["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert [d["coordinateTransformations"] for d in multiscale["datasets"]] == \
        [d["coordinateTransformations"] for d in image_multiscale["datasets"]]
    assert metadata["image-label"]["source"] == {"image": "../.."}
    assert zarr.open_group(labels_path).metadata.zarr_format == 3
    assert list(open_zarr_array(labels_path).metadata.dimension_names) == ["z", "y", "x"]
    models = pytest.importorskip("ome_zarr_models")
    image = models.open_ome_zarr(zarr.open_group(path, mode="r"))
    assert type(image).__module__.startswith("ome_zarr_models.v05")
    labels = models.open_ome_zarr(zarr.open_group(path / "labels", mode="r"))
    assert labels.ome_attributes.labels == ["napari-sam"]


def test_each_object_has_its_area_plane_predicted_iou_and_a_stable_colour(run):
    path, _, _, _ = run
    labels = open_zarr_array(path / "labels" / "napari-sam")[:]
    image_label = ome(path / "labels" / "napari-sam")["image-label"]
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    properties = {p["label-value"]: p for p in image_label["properties"]}
    assert sorted(properties) == ids.tolist()
    for value, count in zip(ids.tolist(), counts.tolist()):
        per_plane = (labels == value).sum(axis=(1, 2))
        entry = properties[value]
        assert entry["area"] == count and entry["plane"] == int(per_plane.argmax())
        # the spheres are clear objects: SAM is confident of each
        assert 0.7 < entry["predicted_iou"] <= 1.05, entry
    assert image_label["colors"] == [{"label-value": v, "rgba": label_colour(v)} for v in ids]
    assert len({tuple(label_colour(v)) for v in ids}) == len(ids)


def test_the_labels_are_those_of_a_plain_zarr_run(run, one_thread, tmp_path):
    path, _, image, _ = run
    plain = segment_stack(image, tmp_path / "plain.zarr", output_format="zarr",
                          voxel_size=VOXEL_SIZE, **SETTINGS)
    array = zarr.open(tmp_path / "plain.zarr", mode="r")
    assert isinstance(array, zarr.Array) and plain.linked
    ids, renumbered = np.unique(array[:], return_inverse=True)  # OME-Zarr ids are 1, 2, ...
    assert ids[0] == 0
    np.testing.assert_array_equal(renumbered.reshape(image.shape),
                                  open_zarr_array(path / "labels" / "napari-sam")[:])


def test_killed_run_into_an_ome_zarr_resumes_to_the_same_labels_and_levels(run, one_thread,
                                                                          tmp_path):
    path, _, image, _ = run
    source = ome_image(tmp_path / "again.ome.zarr", image)

    class Killed(Exception):
        pass

    def kill_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        segment_stack(source, progress=kill_after_two, predicted_iou=True, **SETTINGS)
    out = source / "labels" / "napari-sam"
    assert len(list((out / RECORD / "done").iterdir())) == 2
    resumed = segment_stack(source, resume=True, predicted_iou=True, **SETTINGS)
    assert resumed.skipped == 2 and resumed.segmented == 2
    for got, expected in zip(levels(out), levels(path / "labels" / "napari-sam"), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert ome(out)["image-label"] == ome(path / "labels" / "napari-sam")["image-label"]
    assert ome(source / "labels")["labels"] == ["napari-sam"]


def test_run_killed_while_writing_the_levels_resumes_to_the_same_labels_and_levels(
        run, one_thread, tmp_path, monkeypatch):
    from napari_sam.volume import stack

    path, _, image, _ = run
    source = ome_image(tmp_path / "again.ome.zarr", image)
    write_levels_of_plane = stack.write_levels
    calls = []

    class Killed(Exception):
        pass

    def killed_in_the_final_pass(group, plane=None):
        calls.append(plane)
        if len(calls) == 4 + 2:  # 4 planes segmented, then 2 planes of the final pass
            raise Killed
        write_levels_of_plane(group, plane)

    monkeypatch.setattr(stack, "write_levels", killed_in_the_final_pass)
    with pytest.raises(Killed):
        segment_stack(source, predicted_iou=True, **SETTINGS)
    monkeypatch.setattr(stack, "write_levels", write_levels_of_plane)
    out = source / "labels" / "napari-sam"
    assert "properties" not in ome(out)["image-label"]  # written last
    resumed = segment_stack(source, resume=True, predicted_iou=True, **SETTINGS)
    assert resumed.skipped == 4
    for got, expected in zip(levels(out), levels(path / "labels" / "napari-sam"), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert ome(out)["image-label"] == ome(path / "labels" / "napari-sam")["image-label"]


def test_ngff_04_image_gets_04_labels_on_zarr_2(one_thread, tmp_path):
    image, _ = sphere_volume()
    source = ome_image(tmp_path / "old.ome.zarr", image, version="0.4")
    summary = segment_stack(source, z=slice(1, 3), link=False, **SETTINGS)
    out = Path(summary.output)
    assert out == source / "labels" / "napari-sam"
    attributes = json.loads((out / ".zattrs").read_text())
    assert attributes["multiscales"][0]["version"] == "0.4"
    assert attributes["image-label"]["version"] == "0.4"
    assert json.loads((source / "labels" / ".zattrs").read_text()) == {"labels": ["napari-sam"]}
    nodes = list(Reader(parse_url(str(source)))())
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    shapes = [np.asarray(level).shape for level in label.data]
    assert shapes == [(4, 192, 192), (4, 96, 96), (4, 48, 48)]
    data = [np.asarray(level) for level in label.data]
    assert data[0][1].any() and not data[0][0].any()  # planes 1 and 2 only
    for level in data[1:]:
        np.testing.assert_array_equal(level, nearest(data[0], level.shape))
    models = pytest.importorskip("ome_zarr_models")
    labels = models.open_ome_zarr(zarr.open_group(source / "labels", mode="r"))
    assert labels.ome_attributes.labels == ["napari-sam"]


def test_standalone_labels_halve_the_planes_and_keep_the_voxel_size(tmp_path):
    path = tmp_path / "cells.ome.zarr"
    group = create_labels(path, shape=(2, 1100, 600), chunks=(1, 1100, 600), axes="zyx",
                          voxel_size=(2.0, 0.5, 0.5))
    assert [group[p].shape for p in level_paths(group)] == \
        [(2, 1100, 600), (2, 550, 300), (2, 275, 150)]  # down to 512 pixels or less
    datasets = ome(path)["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == \
        [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    plane = np.random.default_rng(0).integers(0, 5, (1100, 600), dtype=np.uint32)
    group["0"][1] = plane
    write_levels(group, 1)  # only the planes that sample plane 1
    np.testing.assert_array_equal(group["1"][1], plane[1::2, 1::2])
    np.testing.assert_array_equal(group["2"][1], plane[2::4, 2::4])
    assert not group["1"][0].any()
    write_properties(group, [{"label-value": 3, "area": 10}])
    assert ome(path)["image-label"]["colors"] == [{"label-value": 3, "rgba": label_colour(3)}]
    assert open_volume(path).voxel_size == (2.0, 0.5, 0.5)
    assert read_image_pyramid(path) is None  # a label image is not an image to label


def test_stack_from_an_array_writes_a_standalone_label_image(one_thread, tmp_path):
    image, _ = sphere_volume()
    summary = segment_stack(image, tmp_path / "labels.ome.zarr", voxel_size=(3.0, 0.5, 0.5),
                            z=slice(1, 2), link=False, **SETTINGS)
    node = next(iter(Reader(parse_url(summary.output))()))
    assert any(isinstance(s, Multiscales) for s in node.specs)
    assert any(isinstance(s, Label) for s in node.specs)
    image_label = ome(tmp_path / "labels.ome.zarr")["image-label"]
    assert "source" not in image_label
    assert image_label["properties"] and all(set(p) == {"label-value", "area", "plane"}
                                             for p in image_label["properties"])
    assert open_volume(summary.output).voxel_size == (3.0, 0.5, 0.5)


def test_missing_output_or_unknown_format_is_refused_before_anything_is_written(tmp_path):
    image, _ = sphere_volume(shape=(2, 64, 64))
    with pytest.raises(ValueError, match="give an output"):
        segment_stack(image, **SETTINGS)
    with pytest.raises(ValueError, match="give an output"):
        segment_stack(image, output_format="zarr", **SETTINGS)
    with pytest.raises(ValueError, match="predicted_iou is a property of OME-Zarr labels"):
        segment_stack(image, tmp_path / "x.zarr", output_format="zarr", predicted_iou=True,
                      **SETTINGS)
    with pytest.raises(ValueError, match="'ome-zarr' for an OME-Zarr label image"):
        segment_stack(image, tmp_path / "x.zarr", output_format="tiff", **SETTINGS)
    source = ome_image(tmp_path / "image.ome.zarr", image)
    with pytest.raises(ValueError, match="inside the source"):
        segment_stack(source, source / "elsewhere", **SETTINGS)
    assert not (tmp_path / "x.zarr").exists() and not (source / "labels").exists()
    assert not (source / "elsewhere").exists()


def test_read_only_image_gets_its_labels_beside_it(tmp_path, monkeypatch):
    image = tmp_path / "cells.ome.zarr"
    image.mkdir()
    assert labels_location(image) == image / "labels" / "napari-sam"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert labels_location(image, "nuclei") == tmp_path / "cells.nuclei.ome.zarr"


def test_command_line_writes_into_the_images_labels_or_a_plain_array(one_thread, tmp_path,
                                                                      capsys):
    from napari_sam.cli import main

    image, _ = sphere_volume()
    source = ome_image(tmp_path / "image.ome.zarr", image)
    options = ["--diameter", "15", "--tile", "256", "--halo", "32", "--sampler", "boxes",
               "--z", "1:2", "--no-link"]
    assert main(["segment-stack", str(source), *options]) == 0
    assert str(source / "labels" / "napari-sam") in capsys.readouterr().out
    assert open_zarr_array(source / "labels" / "napari-sam")[1].any()
    plain = tmp_path / "plain.zarr"
    assert main(["segment-stack", str(source), str(plain), "--format", "zarr", *options]) == 0
    assert isinstance(zarr.open(plain, mode="r"), zarr.Array)
    assert main(["segment-stack", str(tmp_path / "plain.zarr"), "--format", "zarr"]) == 2
    assert "give the OUTPUT" in capsys.readouterr().err


@needs_display
def test_napari_opens_the_image_with_its_labels_and_the_plugin_defaults_to_them(
        run, make_napari_viewer):
    pytest.importorskip("napari_ome_zarr")
    from napari_sam.plugin.automatic import AutomaticWidget

    path, _, _, _ = run
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-ome-zarr")
    labels = [layer for layer in viewer.layers if layer._type_string == "labels"]
    assert len(labels) == 1 and len(viewer.layers) == 2
    layer = labels[0]
    assert layer.multiscale and [level.shape for level in layer.data] == \
        [(4, 192, 192), (4, 96, 96), (4, 48, 48)]
    np.testing.assert_array_equal(np.asarray(layer.data[0]),
                                  open_zarr_array(path / "labels" / "napari-sam")[:])
    assert {"area", "plane"} <= set(layer.features.columns)
    image = next(layer for layer in viewer.layers if layer._type_string == "image")
    viewer.layers.selection.active = image
    widget = AutomaticWidget(viewer)
    widget.image.setCurrentIndex(widget.image.findText(image.name))
    widget.output.setText("")
    widget._default_output()
    assert widget.output.text() == str(path / "labels" / "napari-sam")
