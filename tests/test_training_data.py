"""Tests of the training data module (napari_sam.training.data)."""

import json

import numpy as np
import pytest
import tifffile
from test_volume_io import SpyArray

from napari_sam.engine.image import intensity_range, to_rgb_uint8
from napari_sam.synthetic import synthetic_nuclei
from napari_sam.training.data import LabelledSlices
from napari_sam.volume import open_volume
from napari_sam.volume.io import plane_rgb, volume_limits


@pytest.fixture(scope="module")
def vol3d():
    image, labels = synthetic_nuclei((8, 96, 96), seed=0)
    image.setflags(write=False)
    labels.setflags(write=False)
    return image, labels


@pytest.fixture(scope="module")
def img2d():
    image, labels = synthetic_nuclei((50, 90), seed=1)
    image.setflags(write=False)
    labels.setflags(write=False)
    return image, labels


class Layer:
    """Duck-typed napari layer: only ``.data`` (and a name)."""

    def __init__(self, data, name="layer"):
        self.data = data
        self.name = name


def assert_example(example, shape):
    image, labels = example
    assert image.dtype == np.uint8 and image.shape == (*shape, 3)
    assert labels.dtype == np.uint32 and labels.shape == shape
    ids = np.unique(labels)
    assert np.array_equal(ids[ids > 0], np.arange(1, labels.max() + 1))  # relabelled 1..n


def draw(data, n, seed=0):
    rng = np.random.default_rng(seed)
    return [data.sample(rng) for _ in range(n)]


# --------------------------------------------------------------------------- #
# shapes, labels, sources
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("crop, shape", [(32, (32, 32)), (256, (96, 96))])
def test_3d_crops(vol3d, crop, shape):
    data = LabelledSlices([vol3d], crop_size=crop, min_objects=2)
    for example in draw(data, 10):
        assert_example(example, shape)
        assert example[1].max() >= 2


def test_2d_crop_smaller_than_one_side(img2d):
    data = LabelledSlices([img2d], crop_size=64)
    assert data.n_slices == 1
    for example in draw(data, 5):
        assert_example(example, (50, 64))
        assert example[1].max() >= 1


def test_crop_is_taken_from_the_volume(vol3d):
    """The example is a window of one slice, with its objects renumbered one to one."""
    image, labels = vol3d
    data = LabelledSlices([vol3d], crop_size=32, foreground_fraction=1.0)
    img, lab = data.sample(np.random.default_rng(5))
    matches = []
    for z in range(8):
        for r in range(96 - 32 + 1):
            for c in range(96 - 32 + 1):
                window = labels[z, r:r + 32, c:c + 32]
                if np.array_equal(window > 0, lab > 0):
                    pairs = set(zip(lab.ravel().tolist(), window.ravel().tolist()))
                    if len(pairs) == len(np.unique(lab)) == len(np.unique(window)):
                        matches.append((z, r, c))
    assert matches
    assert any(
        np.array_equal(img, to_rgb_uint8(image[z, r:r + 32, c:c + 32], limits=data.limits[0]))
        for z, r, c in matches
    )


def test_single_pair_without_list_and_mixed_2d_3d(vol3d, img2d):
    assert LabelledSlices(vol3d).n_pairs == 1
    data = LabelledSlices([vol3d, img2d], crop_size=48)
    assert data.n_pairs == 2 and data.n_slices == 9
    shapes = {ex[0].shape[:2] for ex in draw(data, 30)}
    assert shapes == {(48, 48)}  # the 2D slice, 50 x 90, is larger than 48 too


def test_paths_tiff_npy_and_compressed_tiff(vol3d, tmp_path):
    image, labels = vol3d
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tiff", labels, compression="zlib")  # not memory-mappable
    np.save(tmp_path / "labels.npy", labels)
    from_arrays = draw(LabelledSlices([vol3d], crop_size=40), 4)
    for label_file in ("labels.tiff", "labels.npy"):
        data = LabelledSlices([(tmp_path / "image.tif", str(tmp_path / label_file))], crop_size=40)
        for (a, b), (c, d) in zip(from_arrays, draw(data, 4)):
            assert np.array_equal(a, c) and np.array_equal(b, d)
        assert data.summary()["pairs"][0]["source"]["labels"].endswith(label_file)


def test_napari_layers_duck_typed(img2d):
    image, labels = img2d
    data = LabelledSlices([(Layer(image, "nuclei"), Layer(labels, "masks"))], crop_size=32)
    assert_example(data.sample(np.random.default_rng(0)), (32, 32))
    assert data.summary()["pairs"][0]["source"]["image"] == "napari layer 'nuclei'"


def test_reads_only_slices(vol3d):
    """Every read indexes one z slice: the whole volume is never loaded."""
    image, labels = SpyArray(vol3d[0]), SpyArray(vol3d[1])
    data = LabelledSlices([(image, labels)], crop_size=32)
    draw(data, 5)
    data.summary()
    assert image.keys and labels.keys
    assert len(image.keys) <= 8 + 5  # 8 slices for the limits, then one crop per example
    for key in image.keys + labels.keys:
        assert isinstance(key[0], int)


def test_channels_last_and_first(vol3d):
    image, labels = vol3d
    rgb = np.stack([image, image // 2, image // 4], axis=-1)
    last = LabelledSlices([(rgb, labels)], crop_size=32)
    first = LabelledSlices([(np.moveaxis(rgb, -1, 0), labels)], crop_size=32)
    explicit = LabelledSlices([(np.moveaxis(rgb, -1, 0), labels)], crop_size=32, axes="CZYX")
    assert last.summary()["pairs"][0]["axes"] == "zyxc"
    assert first.summary()["pairs"][0]["axes"] == "czyx"
    for (a, b), (c, d), (e, f) in zip(draw(last, 3), draw(first, 3), draw(explicit, 3)):
        assert np.array_equal(a, c) and np.array_equal(b, d)
        assert np.array_equal(a, e) and np.array_equal(b, f)
    assert last.limits[0].shape == (2, 3)


@pytest.mark.parametrize(
    "shape, axes",
    [((2, 50, 90), "cyx"), ((50, 90, 2), "yxc"), ((2, 8, 50, 90), "czyx"),
     ((8, 50, 90, 2), "zyxc")],
)
def test_a_channel_axis_beside_the_labels_axes_is_found(shape, axes):
    """The labels tell which axis of the image holds channels, where the shape alone cannot."""
    labels = np.ones(tuple(n for n, a in zip(shape, axes) if a != "c"), np.uint32)
    data = LabelledSlices([(np.ones(shape, np.float32), labels)], crop_size=32)
    assert data.summary()["pairs"][0]["axes"] == axes


def test_labels_with_two_plane_axes_give_one_slice_per_plane():
    image, labels = synthetic_nuclei((6, 40, 40), seed=3)
    data = LabelledSlices([(image.reshape(2, 3, 40, 40), labels.reshape(2, 3, 40, 40))],
                          axes="tzyx", crop_size=40)
    assert data.n_slices == 6
    rgb = [plane_rgb(open_volume(image), z, data.limits[0]) for z in range(6)]
    for img, lab in draw(data, 6):
        z = next(z for z in range(6) if np.array_equal(img, rgb[z]))
        assert np.array_equal(lab > 0, labels[z] > 0)


def test_uint8_images_are_used_as_they_are(img2d):
    image, labels = img2d
    image8 = (image // 64).astype(np.uint8)
    data = LabelledSlices([(image8, labels)], crop_size=256)
    assert data.limits == [None]
    out, _ = data.sample(np.random.default_rng(0))
    assert np.array_equal(out[..., 0], image8) and np.array_equal(out[..., 2], image8)
    rgb = np.repeat(image8[..., None], 3, axis=-1)
    rgb.setflags(write=False)
    out, _ = LabelledSlices([(rgb, labels)], crop_size=256).sample(np.random.default_rng(0))
    assert np.array_equal(out, rgb) and out.flags.writeable and not np.shares_memory(out, rgb)


def test_min_objects_on_sparse_volume(vol3d):
    image, labels = vol3d
    sparse = labels.copy()
    sparse[::2] = 0  # half of the slices have no object
    data = LabelledSlices([(image, sparse)], crop_size=32, min_objects=1, foreground_fraction=0)
    assert all(lab.max() >= 1 for _, lab in draw(data, 20))


def test_min_objects_impossible_still_returns(img2d):
    image, labels = img2d
    data = LabelledSlices([(image, np.zeros_like(labels))], crop_size=32, min_objects=3)
    img, lab = data.sample(np.random.default_rng(0))
    assert img.shape == (32, 32, 3) and lab.max() == 0


# --------------------------------------------------------------------------- #
# normalisation, determinism, summary
# --------------------------------------------------------------------------- #
def test_limits_are_per_volume():
    """A bright and a dim slice of one volume keep their relative brightness."""
    image, labels = synthetic_nuclei((64, 64), seed=2)
    volume = np.stack([image, image * 3]).astype(np.float32)
    data = LabelledSlices([(volume, np.stack([labels, labels]))], crop_size=64)
    means = sorted({float(img.mean()) for img, _ in draw(data, 12)})
    assert len(means) == 2 and means[1] > 1.8 * means[0]
    expected = intensity_range(volume.reshape(-1, 1), (1.0, 99.8))[:, 0]
    np.testing.assert_allclose(data.limits[0], expected, rtol=1e-6)


def bright_ends(n=40):
    """A uint16 stack whose end planes are much brighter than all others: limits taken from the
    end planes would differ from those of planes spread through the volume."""
    image = np.random.default_rng(4).integers(100, 1000, (n, 32, 32)).astype(np.uint16)
    image[[0, -1]] *= 60
    return image


@pytest.mark.parametrize(
    "image, axes",
    [
        (bright_ends(), "zyx"),
        (np.random.default_rng(5).normal(0, 1, (12, 32, 32, 4)).astype(np.float32), "zyxc"),
        (np.random.default_rng(6).normal(0, 1, (2, 12, 32, 32)), "czyx"),
        (np.random.default_rng(7).random((12, 32, 32)) > 0.5, "zyx"),
        (np.random.default_rng(8).integers(0, 256, (12, 32, 32), dtype=np.uint8), "zyx"),
    ],
    ids=["uint16-bright-ends", "float32-rgba", "float64-channels-first", "bool", "uint8"],
)
def test_a_plane_is_normalised_for_training_as_for_inference(image, axes):
    """Each example is the RGB image inference makes of its plane, with the same limits."""
    volume = open_volume(image, axes=axes)
    labels = np.ones((*volume.planes, *volume.plane_shape), np.uint32)
    data = LabelledSlices([(image, labels)], crop_size=32)
    limits = volume_limits(volume)
    if limits is None:
        assert data.limits == [None]
    else:
        np.testing.assert_array_equal(data.limits[0], limits)
    inference = {plane_rgb(volume, z, limits).tobytes() for z in range(volume.n_planes)}
    assert all(img.tobytes() in inference for img, _ in draw(data, 20))


def test_end_planes_do_not_set_the_limits_of_a_stack():
    data = LabelledSlices([(bright_ends(), np.ones((40, 32, 32), np.uint8))], crop_size=32)
    assert data.limits[0][1] < 1000  # from planes spread through the stack, not its ends


def test_deterministic(vol3d):
    data = LabelledSlices([vol3d], crop_size=40)
    for (a, b), (c, d) in zip(draw(data, 5, seed=7), draw(data, 5, seed=7)):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    other = draw(data, 5, seed=8)
    assert any(not np.array_equal(a, c) for (a, _), (c, _) in zip(draw(data, 5, seed=7), other))
    held = data.held_out(4, seed=3)
    again = LabelledSlices([vol3d], crop_size=40).held_out(4, seed=3)
    assert len(held) == 4
    assert all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(held, again))


def test_summary_is_json(vol3d, img2d):
    summary = LabelledSlices([vol3d, img2d], crop_size=32).summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["n_pairs"] == 2 and summary["n_slices"] == 9
    first = summary["pairs"][0]
    assert first["image_shape"] == [8, 96, 96] and first["labels_dtype"] == "uint32"
    assert first["axes"] == "zyx" and first["n_slices"] == 8
    assert sum(first["objects_in_sampled_slices"]) > 0


# --------------------------------------------------------------------------- #
# other array types
# --------------------------------------------------------------------------- #
def test_zarr_array_and_store(vol3d, tmp_path):
    zarr = pytest.importorskip("zarr")
    image, labels = vol3d
    z_image = zarr.open(str(tmp_path / "image.zarr"), mode="w", shape=image.shape,
                        chunks=(1, 48, 48), dtype=image.dtype)
    z_image[:] = image
    group = zarr.open_group(str(tmp_path / "labels.zarr"), mode="w")
    z_labels = group.create_array("0", shape=labels.shape, chunks=(1, 96, 96), dtype=labels.dtype)
    z_labels[:] = labels
    expected = draw(LabelledSlices([vol3d], crop_size=40), 3)
    for pair in [(z_image, z_labels), (tmp_path / "image.zarr", tmp_path / "labels.zarr")]:
        got = draw(LabelledSlices([pair], crop_size=40), 3)
        for (a, b), (c, d) in zip(expected, got):
            assert np.array_equal(a, c) and np.array_equal(b, d)


def test_dask_array(vol3d):
    da = pytest.importorskip("dask.array")
    image, labels = vol3d
    pair = (da.from_array(image, chunks=(1, 96, 96)), da.from_array(labels, chunks=(1, 96, 96)))
    for (a, b), (c, d) in zip(draw(LabelledSlices([vol3d], crop_size=40), 3),
                              draw(LabelledSlices([pair], crop_size=40), 3)):
        assert np.array_equal(a, c) and np.array_equal(b, d)


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
def test_mismatched_shapes(vol3d, img2d):
    with pytest.raises(ValueError, match=r"pair 1: image shape \(50, 90\).*labels shape \(8, 96, 96\)"):
        LabelledSlices([vol3d, (img2d[0], vol3d[1])])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda im, lab: (im, lab.astype(np.float32)), "integer label image"),
        (lambda im, lab: (im, lab > 0), "skimage.measure.label"),
        (lambda im, lab: (im[0, 0], lab[0, 0]), r"pair 0, image: .*at least 2 dimensions"),
        (lambda im, lab: (im[:, :0], lab[:, :0]), "empty"),
        (lambda im, lab: (im.astype(np.complex64), lab), "real number"),
    ],
)
def test_bad_arrays(vol3d, make, match):
    with pytest.raises(ValueError, match=match):
        LabelledSlices([make(*vol3d)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(crop_size=8), "crop_size"),
        (dict(min_objects=-1), "min_objects"),
        (dict(foreground_fraction=1.5), "foreground_fraction"),
        (dict(percentiles=(99, 1)), "percentiles"),
        (dict(axes="ZXX"), "axes"),
        (dict(axes=["ZYX", "ZYX"]), "one per pair"),
    ],
)
def test_bad_settings(vol3d, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelledSlices([vol3d], **kwargs)


def test_bad_pairs_and_files(vol3d, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        LabelledSlices([])
    with pytest.raises(ValueError, match="pair 0 must be"):
        LabelledSlices([vol3d[0]])
    with pytest.raises(FileNotFoundError, match="pair 0, image: .*missing.tif"):
        LabelledSlices([(tmp_path / "missing.tif", vol3d[1])])
    (tmp_path / "image.png").write_bytes(b"")
    with pytest.raises(ValueError, match="supported"):
        LabelledSlices([(tmp_path / "image.png", vol3d[1])])
    negative = vol3d[1].astype(np.int32)
    negative[:] = -1
    with pytest.raises(ValueError, match="negative"):
        LabelledSlices([(vol3d[0], negative)]).sample(np.random.default_rng(0))


def test_bad_channels_and_labels_with_channels(vol3d):
    image, labels = vol3d
    with pytest.raises(ValueError, match=r"pair 0: the image has 5 channels.*at most 4"):
        LabelledSlices([(np.stack([image] * 5, axis=-1), labels)], axes="zyxc")
    with pytest.raises(ValueError, match=r"pair 0: labels .* with a channel axis.*pass"):
        LabelledSlices([(image[..., :3], labels[..., :3])])


def test_ome_zarr_pair_reads_its_full_resolution_dataset(vol3d, tmp_path):
    """The dataset named by the multiscales metadata, as in inference, whatever its name."""
    zarr = pytest.importorskip("zarr")
    image, labels = vol3d
    group = zarr.open_group(tmp_path / "image.ome.zarr", mode="w")
    group.create_array("s0", data=image)
    group.create_array("s1", data=image[:, ::2, ::2])
    axes = [{"name": a} for a in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes,
                                   "datasets": [{"path": "s0"}, {"path": "s1"}]}]
    expected = draw(LabelledSlices([vol3d], crop_size=40), 3)
    got = draw(LabelledSlices([(tmp_path / "image.ome.zarr", labels)], crop_size=40), 3)
    for (a, b), (c, d) in zip(expected, got):
        assert np.array_equal(a, c) and np.array_equal(b, d)
