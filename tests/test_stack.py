"""Stack segmentation: tiles and seams, 3D ids, resuming after a kill, dask, the embedding cache.

The volumes are made here: bright spheres on a dark, noisy background, some centred on the
seams between tiles, spanning several planes. The shipped model with the box sampler segments
them cleanly, so the tests can ask for whole objects with one id through z.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_sam.engine.mask_ops import paint_labels
from napari_sam.engine.tiling import segment_tiles, tile_layout
from napari_sam.volume.io import open_zarr_array
from napari_sam.volume.stack import RECORD, segment_stack

# The spheres (radius 6-8) are given a diameter of 15 px: the shipped model (30 px) sees the
# planes enlarged twice, 384 px, in tiles of its 256 px input split at 192 (96 in the plane).
SETTINGS = dict(sampler="boxes", diameter=15, tile=256, halo=32)
SCALED_SHAPE = (384, 384)
SRC = Path(__file__).resolve().parents[1] / "src"


def sphere_volume(shape=(4, 192, 192), seed=0):
    """uint16 volume and true labels: spheres of radius 6-8, four of them on tile seams (the
    tile cores of SETTINGS split the planes at 96)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    truth = np.zeros(shape, np.uint32)
    centres = [(1, 96, 96), (2, 96, 150), (1, 140, 96), (2, 96, 30), (1, 20, 20), (2, 160, 170)]
    for label, (cz, cy, cx) in enumerate(centres, 1):
        radius = 6 + label % 3
        inside = ((z - cz) * 6) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
        truth[inside] = label
    image = 200 + 1800 * (truth > 0) + rng.normal(0, 40, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), truth


@pytest.fixture(scope="module")
def volume():
    return sphere_volume()


def dominant(labels: np.ndarray, where: np.ndarray) -> tuple[int, float]:
    ids, counts = np.unique(labels[where], return_counts=True)
    return int(ids[counts.argmax()]), counts.max() / where.sum()


def assert_objects_whole_and_linked(labels: np.ndarray, truth: np.ndarray) -> None:
    seen = {}
    for label in range(1, truth.max() + 1):
        ids = set()
        for z in range(truth.shape[0]):
            where = truth[z] == label
            if where.sum() < 30:
                continue
            found, share = dominant(labels[z], where)
            assert found != 0 and share > 0.8, (label, z, share)
            predicted = labels[z] == found
            iou = (predicted & where).sum() / (predicted | where).sum()
            assert iou > 0.7, (label, z, iou)  # whole: not cut at a seam, not merged
            ids.add(found)
        assert len(ids) == 1, (label, ids)  # one id through z
        seen[label] = ids.pop()
    assert len(set(seen.values())) == len(seen)


def test_tile_layout_partitions_the_plane_into_tiles_of_the_full_size():
    tiles = tile_layout((130, 100), 64, 8)
    owned = np.zeros((130, 100), int)
    for tile in tiles:
        r0, c0, r1, c1 = tile.core
        owned[r0:r1, c0:c1] += 1
        b0, b1, b2, b3 = tile.box
        assert b2 - b0 == 64 and b3 - b1 == 64  # no tile smaller than the model input
        assert b0 <= max(0, r0 - 8) and b1 <= max(0, c0 - 8)  # at least the halo around
        assert b2 >= min(130, r1 + 8) and b3 >= min(100, c1 + 8)
        assert b0 >= 0 and b1 >= 0 and b2 <= 130 and b3 <= 100
    assert (owned == 1).all()
    assert tile_layout((300, 40), 64, 8)[0].box == (0, 0, 64, 40)  # a narrow plane: its width
    assert len(tile_layout((50, 60), 64, 8)) == 1
    # cores on the border need context on one side only: 5 x 5 tiles, not 6 x 6 of 192 px cores
    assert len(tile_layout((1024, 1024), 256, 32)) == 25
    with pytest.raises(ValueError, match="halo"):
        tile_layout((500, 500), 64, 32)


def test_objects_on_seams_come_out_once_and_whole(one_thread, volume):
    """A stand-in generator that finds bright connected blobs, so that only the tiling is tested."""
    from scipy import ndimage

    from napari_sam.engine.geometry import WindowMask

    class Blobs:
        def generate_masks(self, rgb):
            regions, n = ndimage.label(rgb[..., 0] > 128)
            masks = []
            for index, found in enumerate(ndimage.find_objects(regions), 1):
                window = regions[found] == index
                masks.append(WindowMask(found[0].start, found[1].start, window, rgb.shape[:2]))
            return masks

        def generate_labels(self, rgb):
            return paint_labels(self.generate_masks(rgb), rgb.shape[:2])

    image, truth = volume
    rgb = np.repeat((image[1] > 1000).astype(np.uint8)[..., None] * 255, 3, axis=-1)
    labels = paint_labels(segment_tiles(Blobs(), rgb, tile_layout(rgb.shape[:2], 64, 16)),
                          rgb.shape[:2])
    assert labels.max() == len(np.unique(truth[1])) - 1
    for label in np.unique(truth[1])[1:]:
        found, share = dominant(labels, truth[1] == label)
        assert share == 1.0 and (labels == found).sum() == (truth[1] == label).sum()


def test_stack_objects_are_whole_and_keep_their_id_through_z(one_thread, volume, tmp_path):
    image, truth = volume
    summary = segment_stack(image, tmp_path / "labels.zarr", **SETTINGS)
    labels = open_zarr_array(str(tmp_path / "labels.zarr"), mode="r")[:]
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    assert summary.planes == summary.segmented == 4 and summary.linked
    assert_objects_whole_and_linked(labels, truth)


@pytest.mark.slow
def test_plane_range_and_resume_skip_finished_planes(one_thread, volume, tmp_path):
    image, _ = volume
    out = tmp_path / "labels.zarr"
    first = segment_stack(image, out, z=slice(0, 2), link=False, **SETTINGS)
    assert first.segmented == 2
    again = segment_stack(image, out, resume=True, link=False, **SETTINGS)
    assert again.skipped == 2 and again.segmented == 2
    whole = segment_stack(image, tmp_path / "whole.zarr", link=False, **SETTINGS)
    assert whole.segmented == 4
    np.testing.assert_array_equal(open_zarr_array(str(out))[:],
                                  open_zarr_array(str(tmp_path / "whole.zarr"))[:])


def test_killed_run_resumes_to_the_labels_of_an_uninterrupted_run(one_thread, volume, tmp_path):
    image, _ = volume
    source = tmp_path / "volume.npy"
    np.save(source, image)
    out = tmp_path / "killed.zarr"
    script = (
        "import sys, time, torch; torch.set_num_threads(1)\n"
        "from napari_sam.volume.stack import segment_stack\n"
        "slow = lambda done, total: time.sleep(1.5)\n"
        f"segment_stack(sys.argv[1], sys.argv[2], progress=slow, **{SETTINGS!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    process = subprocess.Popen([sys.executable, "-c", script, str(source), str(out)], env=env)
    done = out / RECORD / "done"
    deadline = time.monotonic() + 120
    while not (done.is_dir() and len(list(done.iterdir())) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended too early"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(done.iterdir()))
    assert 2 <= finished < 4
    resumed = segment_stack(source, out, resume=True, **SETTINGS)
    assert resumed.skipped == finished
    expected = segment_stack(source, tmp_path / "uninterrupted.zarr", **SETTINGS)
    assert expected.segmented == 4
    np.testing.assert_array_equal(open_zarr_array(str(out))[:],
                                  open_zarr_array(str(tmp_path / "uninterrupted.zarr"))[:])


def test_assembly_stopped_midway_and_planes_added_later_resume_to_the_same_labels(
        one_thread, volume, tmp_path, monkeypatch):
    """The output is assembled from the fragments kept in the run record: a run stopped while
    writing the 3D objects, or one that segments more planes into an assembled output, ends
    with the labels of one uninterrupted run."""
    from napari_sam.volume import stack

    image, _ = volume
    expected = segment_stack(image, tmp_path / "uninterrupted.zarr", **SETTINGS)
    out = tmp_path / "labels.zarr"
    segment_stack(image, out, z=slice(0, 2), **SETTINGS)  # assembled with two planes only

    assemble = stack.assemble_objects

    class Killed(Exception):
        pass

    class StopsAfterTwoPlanes:
        def __init__(self, array):
            self.array, self.left = array, 2
            self.shape, self.dtype = array.shape, array.dtype

        def __setitem__(self, z, plane):
            if self.left == 0:
                raise Killed
            self.left -= 1
            self.array[z] = plane

    def stopping(fragments, image, *, out, **settings):
        return assemble(fragments, image, out=StopsAfterTwoPlanes(out), **settings)

    monkeypatch.setattr(stack, "assemble_objects", stopping)
    with pytest.raises(Killed):
        segment_stack(image, out, resume=True, **SETTINGS)
    monkeypatch.setattr(stack, "assemble_objects", assemble)
    resumed = segment_stack(image, out, resume=True, **SETTINGS)
    assert resumed.skipped == 4 and resumed.objects_3d == expected.objects_3d
    np.testing.assert_array_equal(open_zarr_array(str(out))[:],
                                  open_zarr_array(str(tmp_path / "uninterrupted.zarr"))[:])


@pytest.mark.slow
def test_dask_cluster_equals_serial_run(one_thread, volume, tmp_path):
    distributed = pytest.importorskip("distributed")
    image, _ = volume
    source = tmp_path / "volume.npy"
    np.save(source, image)
    serial = segment_stack(source, tmp_path / "serial.zarr", **SETTINGS)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        parallel = segment_stack(source, tmp_path / "dask.zarr", scheduler=cluster.scheduler_address,
                                 **SETTINGS)
    assert parallel.objects == serial.objects
    np.testing.assert_array_equal(open_zarr_array(str(tmp_path / "dask.zarr"))[:],
                                  open_zarr_array(str(tmp_path / "serial.zarr"))[:])
    local = segment_stack(source, tmp_path / "local.zarr", workers=2, **SETTINGS)  # no cluster
    assert local.objects == serial.objects
    np.testing.assert_array_equal(open_zarr_array(str(tmp_path / "local.zarr"))[:],
                                  open_zarr_array(str(tmp_path / "serial.zarr"))[:])


def test_second_run_with_a_cache_computes_no_embedding(one_thread, volume, tmp_path, monkeypatch):
    from napari_sam.models.tiny_vit import TinyViT  # the default model's encoder

    calls = []
    forward = TinyViT.forward
    monkeypatch.setattr(TinyViT, "forward", lambda self, x: calls.append(1) or forward(self, x))
    image, _ = volume
    image = (image[:2] // 16).astype(np.uint8)  # uint8 is used as is: no intensity scaling
    cache = tmp_path / "cache.zarr"
    tiles = len(tile_layout(SCALED_SHAPE, SETTINGS["tile"], SETTINGS["halo"]))
    first = segment_stack(image, tmp_path / "a.zarr", cache=cache, **SETTINGS)
    assert len(calls) == 2 * tiles
    calls.clear()
    second = segment_stack(image, tmp_path / "b.zarr", cache=cache, **SETTINGS)
    assert calls == [] and second.objects == first.objects
    changed = image.copy()
    changed[1, 5:10, 5:10] = 90  # a few pixels in the corner tile of one plane
    segment_stack(changed, tmp_path / "c.zarr", cache=cache, **SETTINGS)
    assert len(calls) == 1


def test_existing_output_is_refused_and_left_untouched(one_thread, volume, tmp_path):
    image, _ = volume
    out = tmp_path / "labels.zarr"
    segment_stack(image[:2], out, link=False, **SETTINGS)
    before = open_zarr_array(str(out))[:]
    with pytest.raises(FileExistsError, match="resume"):
        segment_stack(image[:2], out, **SETTINGS)
    with pytest.raises(FileExistsError, match="shape"):
        segment_stack(image[:3], out, resume=True, **SETTINGS)
    with pytest.raises(FileExistsError, match="settings"):
        segment_stack(image[:2], out, resume=True, sampler="grid", tile=80, halo=24)
    np.testing.assert_array_equal(open_zarr_array(str(out))[:], before)


def test_bad_sources_and_outputs_are_refused(tmp_path, volume):
    image, _ = volume
    with pytest.raises(FileNotFoundError):
        segment_stack(tmp_path / "missing.zarr", tmp_path / "out.zarr", **SETTINGS)
    with pytest.raises(ValueError, match="dimensions"):
        segment_stack(np.zeros(10), tmp_path / "out.zarr", **SETTINGS)
    with pytest.raises(OSError):
        segment_stack(image[:1], "/proc/napari_sam_labels.zarr", **SETTINGS)
    assert not (tmp_path / "out.zarr").exists()


def test_tiled_predictor_completes_objects_cut_by_a_seam(one_thread):
    """Tiles of 100 px with a 2 px halo split the plane at 96: discs (30 px across, the size
    the model works at) on that seam are cut in either tile, and must come back whole from a
    tile centred on them."""
    from napari_sam import load_model
    from napari_sam.engine.image import to_rgb_uint8
    from napari_sam.engine.tiling import TiledPredictor

    rows, cols = np.indices((192, 192))
    truth = np.zeros((192, 192), int)
    for label, (row, col) in enumerate([(96, 40), (40, 96), (96, 96), (150, 97)], 1):
        truth[(rows - row) ** 2 + (cols - col) ** 2 <= 225] = label
    noise = np.random.default_rng(0).normal(0, 40, truth.shape)
    plane = to_rgb_uint8(np.clip(200 + 1800 * (truth > 0) + noise, 0, None).astype(np.uint16))
    tiled = TiledPredictor(load_model(device="cpu"), tile=100, halo=2)
    tiled.set_image(plane)
    assert [t.core[2] for t in tiled.tiles[:2]] == [96, 96]
    layout = {t.box for t in tiled.tiles}
    for label in range(1, 5):
        target = truth == label
        r, c = np.nonzero(target)
        masks, _, _ = tiled.predict(box=[r.min(), c.min(), r.max(), c.max()], multimask=False)
        assert (masks[0] & target).sum() / (masks[0] | target).sum() > 0.7, label
    assert any(box not in layout for box in tiled._embeddings)  # some were answered again


def test_tiled_predictor_answers_from_the_tile_of_the_prompt(one_thread, volume):
    from napari_sam import Segmenter, load_model
    from napari_sam.engine.image import to_rgb_uint8

    image, truth = volume
    model = load_model(device="cpu")
    plane = to_rgb_uint8(image[1])
    segmenter = Segmenter(model, diameter=SETTINGS["diameter"], tile=SETTINGS["tile"],
                          halo=SETTINGS["halo"])
    segmenter.set_image(plane)
    tiled = segmenter._tiled
    for label in np.unique(truth[1])[1:]:
        target = truth[1] == label
        if target.sum() < 30:
            continue
        rows, cols = np.nonzero(target)
        box = [rows.min(), cols.min(), rows.max(), cols.max()]
        masks, scores, _ = segmenter.predict(box=box, multimask=False)
        assert masks.shape == (1, *plane.shape[:2])
        iou = (masks[0] & target).sum() / (masks[0] | target).sum()
        assert iou > 0.7, (label, iou)  # whole, also for the spheres on seams
    assert len(tiled._embeddings) < len(tiled.tiles) + 4  # only the tiles prompts needed
    with pytest.raises(ValueError, match="positive point or a box"):
        segmenter.predict(points=[[5, 5]], labels=[0])


def test_every_plane_of_a_noisy_stack_is_enlarged_alike(one_thread):
    """Small nuclei in a stack whose planes lie on both sides of the noise threshold: one
    noise figure for the volume, so that every plane is enlarged by the same factor (as with
    the one diameter estimate), not some 2.5x and others 5x."""
    from napari_sam.engine.detection import noise_to_contrast
    from napari_sam.synthetic import synthetic_nuclei
    from napari_sam.volume.io import Volume
    from napari_sam.volume.stack import _job, volume_noise
    from conftest import make_tiny_model

    planes = [synthetic_nuclei((40, 60), radius=(3, 4), brightness=b, seed=0)[0]
              for b in (3000, 60, 60)]  # one clean plane, two in shot noise
    assert noise_to_contrast(planes[0]) < 0.2 < noise_to_contrast(planes[1])
    volume = Volume(np.stack(planes).astype(np.uint16), "zyx")
    model = make_tiny_model()
    model.name = "nuclei_s"  # its diameter (30 px) and limit (2.5x)
    job = _job(volume, "", model=model, checkpoint=None, device="cpu", diameter=6.0, tile=None,
               halo=None, cache=None, options={}, keep_model=True, mode="amg")
    assert job.noise == pytest.approx(volume_noise(volume, job.limits)) and job.noise > 0.2
    segmenter = job.segmenter()
    factors = set()
    for z in range(3):
        segmenter.set_image(volume.plane(z), limits=job.limits)
        factors.add(segmenter.factor)
    assert factors == {2.5}
