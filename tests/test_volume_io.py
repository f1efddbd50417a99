"""Opening volumes lazily and reading planes (napari_sam.volume.io)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from zarr.storage import LocalStore

from napari_sam.volume import Volume, intensity_limits, open_volume
from napari_sam.volume.io import guess_axes


@pytest.fixture
def stack() -> np.ndarray:
    """A (Z, Y, X) uint16 stack of 6 planes; more than 4 so that no axis looks like channels."""
    return np.random.default_rng(0).integers(0, 60000, (6, 24, 32), dtype=np.uint16)


def assert_planes(volume: Volume, expected: np.ndarray) -> None:
    """Every plane of a ``zyx`` or ``zcyx`` volume equals ``expected``, channels moved last."""
    assert volume.n_planes == len(expected)
    for z in range(len(expected)):
        want = expected[z] if expected.ndim == 3 else np.moveaxis(expected[z], 0, -1)
        np.testing.assert_array_equal(volume.plane(z), want)


def write_ome_zarr(path, levels, axes, version):
    """An OME-zarr image with one multiscales entry, metadata written by hand (NGFF 0.4 or 0.5)."""
    group = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    datasets = []
    for name, level in levels.items():
        group.create_array(name, data=level, chunks=(1,) * (level.ndim - 2) + level.shape[-2:])
        scale = [{"type": "scale", "scale": [1] * level.ndim}]
        datasets.append({"path": name, "coordinateTransformations": scale})
    multiscales = [{"version": version, "axes": [{"name": a} for a in axes], "datasets": datasets}]
    if version == "0.4":
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}


# --------------------------------------------------------------------------- #
# each kind of source
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_store(tmp_path, stack, zarr_format):
    path = tmp_path / "stack.zarr"
    zarr.create_array(path, data=stack, chunks=(1, 12, 16), zarr_format=zarr_format)
    volume = open_volume(path)
    assert isinstance(volume.data, zarr.Array)
    assert (volume.axes, volume.source, volume.shape) == ("zyx", str(path), stack.shape)
    assert volume.dtype == np.uint16
    assert (volume.plane_shape, volume.channels, volume.planes) == ((24, 32), None, (6,))
    assert_planes(volume, stack)


def test_zarr_v3_dimension_names_give_the_axes(tmp_path, stack):
    data = np.stack([stack, stack // 2])  # (C, Z, Y, X): the shape alone would guess "tzyx"
    zarr.create_array(tmp_path / "a.zarr", data=data, dimension_names=("c", "z", "y", "x"))
    volume = open_volume(tmp_path / "a.zarr")
    assert (volume.axes, volume.channels, volume.planes) == ("czyx", 2, (6,))
    np.testing.assert_array_equal(volume.plane(4), np.moveaxis(data[:, 4], 0, -1))


def test_ome_zarr_04_uses_level_0_and_its_axes(tmp_path, stack):
    level0 = np.stack([stack, stack + 1])[None]  # (T=1, C=2, Z=6, Y, X)
    levels = {"0": level0, "1": level0[..., ::2, ::2]}
    write_ome_zarr(tmp_path / "img.ome.zarr", levels, "tczyx", "0.4")
    volume = open_volume(tmp_path / "img.ome.zarr")
    assert (volume.axes, volume.shape) == ("tczyx", level0.shape)
    assert (volume.channels, volume.planes) == (2, (1, 6))
    np.testing.assert_array_equal(volume.plane((0, 3)), np.moveaxis(level0[0, :, 3], 0, -1))
    np.testing.assert_array_equal(volume.plane((0, -1)), np.moveaxis(level0[0, :, 5], 0, -1))


def test_ome_zarr_05_uses_level_0_and_its_axes(tmp_path, stack):
    levels = {"s0": stack, "s1": stack[:, ::2, ::2]}
    write_ome_zarr(tmp_path / "img.ome.zarr", levels, "zyx", "0.5")
    volume = open_volume(tmp_path / "img.ome.zarr")
    assert (volume.axes, volume.shape) == ("zyx", stack.shape)
    assert_planes(volume, stack)


def test_plain_group_with_one_array_opens_that_array(tmp_path, stack):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("raw", data=stack)
    group.create_group("notes")
    assert_planes(open_volume(tmp_path / "g.zarr"), stack)


def test_tiff_stack_is_memory_mapped(tmp_path, stack):
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    volume = open_volume(str(tmp_path / "stack.tif"))
    assert isinstance(volume.data, np.memmap)
    assert volume.axes == "zyx"
    assert_planes(volume, stack)


def test_compressed_tiff_is_read_through_zarr(tmp_path, stack):
    tifffile.imwrite(tmp_path / "stack.tif", stack, compression="zlib")
    volume = open_volume(tmp_path / "stack.tif")
    assert isinstance(volume.data, zarr.Array)
    assert_planes(volume, stack)


def test_ome_tiff_axes_come_from_its_metadata(tmp_path, stack):
    data = np.stack([stack, stack // 3], axis=1)  # (Z, C, Y, X)
    tifffile.imwrite(tmp_path / "img.ome.tif", data, ome=True, metadata={"axes": "ZCYX"})
    volume = open_volume(tmp_path / "img.ome.tif")
    assert (volume.axes, volume.channels, volume.planes) == ("zcyx", 2, (6,))
    assert isinstance(volume.data, (np.memmap, zarr.Array))
    assert_planes(volume, data)


def test_rgb_tiff_has_channels_last(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    volume = open_volume(tmp_path / "rgb.tif")
    assert (volume.axes, volume.planes, volume.n_planes) == ("yxc", (), 1)
    np.testing.assert_array_equal(volume.plane(), rgb)


def test_numpy_array_plane_is_a_copy(stack):
    volume = open_volume(stack)
    assert volume.data is stack and volume.source == "numpy array"
    assert_planes(volume, stack)
    before = stack.copy()
    volume.plane(0)[:] = 0
    np.testing.assert_array_equal(stack, before)


def test_dask_array_stays_lazy(stack):
    volume = open_volume(da.from_array(stack, chunks=(1, 24, 32)))
    assert isinstance(volume.data, da.Array) and volume.source == "dask array"
    plane = volume.plane(2)
    assert type(plane) is np.ndarray
    assert_planes(volume, stack)


def test_zarr_array_object(stack):
    array = zarr.create_array(zarr.storage.MemoryStore(), data=stack)
    volume = open_volume(array)
    assert volume.data is array and volume.source.startswith("zarr array")
    assert_planes(volume, stack)


class SpyArray:
    """An array-like, neither numpy, dask nor zarr, that records every index it is read with."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.keys = []

    def __getitem__(self, key):
        self.keys.append(key)
        return self.array[key]


def test_any_array_like_is_read_a_plane_at_a_time(stack):
    spy = SpyArray(stack)
    volume = open_volume(spy)
    assert (volume.axes, volume.source) == ("zyx", "SpyArray array")
    assert spy.keys == []
    assert_planes(volume, stack)
    assert [key[0] for key in spy.keys] == list(range(len(stack)))


def test_sample_reads_the_sample_planes(stack):
    spy = SpyArray(np.concatenate([stack] * 10))  # 60 planes
    volume = open_volume(spy)
    volume.sample()
    assert [key[0] for key in spy.keys] == volume.sample_planes().tolist()
    assert volume.sample_planes().tolist() == [3, 11, 18, 26, 33, 41, 48, 56]  # not the ends
    assert volume.sample_planes(max_planes=100).tolist() == list(range(60))


def test_a_window_of_a_plane_and_planes_numbered_through_all_plane_axes(stack):
    data = stack.reshape(2, 3, 24, 32)
    volume = open_volume(data, axes="tzyx")
    rows, cols = slice(2, 20, 3), slice(5, 9)
    for number in range(6):
        t, z = divmod(number, 3)
        np.testing.assert_array_equal(volume.plane(number), data[t, z])
        np.testing.assert_array_equal(volume.plane(number, rows=rows, cols=cols),
                                      data[t, z, rows, cols])
    np.testing.assert_array_equal(volume.plane(-1), data[1, 2])
    channels = open_volume(np.stack([stack, stack // 2], axis=1))  # zcyx
    np.testing.assert_array_equal(channels.plane(4, rows=slice(0, 1), cols=slice(3, 4)),
                                  [[[stack[4, 0, 3], stack[4, 0, 3] // 2]]])
    with pytest.raises(IndexError, match="or one plane number below 6"):
        volume.plane(6)


def test_opening_reads_no_chunk_and_a_plane_only_its_own(tmp_path, monkeypatch):
    path = tmp_path / "big.zarr"
    array = zarr.create_array(path, shape=(16, 64, 64), chunks=(1, 32, 32), dtype="uint16")
    array[:] = np.broadcast_to(np.arange(16, dtype=np.uint16)[:, None, None], array.shape)
    keys = []
    get = LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        keys.append(key)
        return await get(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    volume = open_volume(path)
    assert [k for k in keys if k.startswith("c/")] == []
    assert (volume.plane(5) == 5).all()
    chunks = sorted(k for k in keys if k.startswith("c/"))
    assert chunks == ["c/5/0/0", "c/5/0/1", "c/5/1/0", "c/5/1/1"]


# --------------------------------------------------------------------------- #
# axes: guesses and overrides
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((20, 30), "yx"),
        ((5, 20, 30), "zyx"),
        ((20, 30, 3), "yxc"),
        ((20, 30, 4), "yxc"),
        ((20, 30, 5), "zyx"),
        ((10, 2, 20, 30), "zcyx"),
        ((10, 4, 20, 30), "zcyx"),
        ((10, 5, 20, 30), "tzyx"),
        ((3, 2, 20, 30), "tzyx"),
        ((2, 3, 4, 20, 30), "tczyx"),
    ],
)
def test_axis_guess(shape, axes):
    assert guess_axes(shape) == axes
    assert open_volume(np.zeros(shape, np.uint8)).axes == axes


def test_axes_override_that_fits():
    volume = open_volume(np.zeros((3, 20, 30), np.uint16), axes="CYX")
    assert (volume.axes, volume.channels, volume.planes) == ("cyx", 3, ())
    assert volume.plane().shape == (20, 30, 3)
    volume = open_volume(np.zeros((2, 5, 20, 30)), axes="tzyx")
    assert volume.planes == (2, 5) and volume.n_planes == 10
    assert volume.plane((1, 4)).shape == (20, 30)
    assert volume.sample(max_planes=3).shape == (3 * 20 * 30,)


def test_axes_override_beats_metadata(tmp_path, stack):
    tifffile.imwrite(tmp_path / "img.ome.tif", stack, ome=True, metadata={"axes": "ZYX"})
    assert open_volume(tmp_path / "img.ome.tif", axes="tyx").planes == (6,)
    assert open_volume(tmp_path / "img.ome.tif", axes="tyx").axes == "tyx"


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ("zyx", "axes 'zyx' has 3 letters but the array has 4 dimensions (shape (10, 2, 20, 30)); "
                "give 4 letters from 'tczyx'"),
        ("zqyx", "letters ['q'] outside 'tczyx'"),
        ("zzyx", "repeats ['z']"),
        ("tczy", "lacks 'y' or 'x'"),
    ],
)
def test_axes_override_that_does_not_fit(axes, message):
    with pytest.raises(ValueError, match="e.g. 'zcyx'") as error:
        open_volume(np.zeros((10, 2, 20, 30)), axes=axes)
    assert message in str(error.value)


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.zarr"):
        open_volume(tmp_path / "nothing.zarr")


def test_group_that_is_not_an_image_lists_its_contents(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("a", shape=(4, 4), dtype="u1")
    group.create_array("b", shape=(4, 4), dtype="u1")
    with pytest.raises(ValueError, match=r"arrays \['a', 'b'\] and groups \[\].*e\.g\..*a"):
        open_volume(tmp_path / "g.zarr")
    zarr.open_group(tmp_path / "empty.zarr", mode="w")
    with pytest.raises(ValueError, match="holds nothing"):
        open_volume(tmp_path / "empty.zarr")


def test_ome_zarr_axes_outside_tczyx(tmp_path, stack):
    write_ome_zarr(tmp_path / "img.zarr", {"0": stack}, ["angle", "y", "x"], "0.4")
    with pytest.raises(ValueError, match=r"\['angle', 'y', 'x'\].*pass axes="):
        open_volume(tmp_path / "img.zarr")
    assert open_volume(tmp_path / "img.zarr", axes="zyx").axes == "zyx"


@pytest.mark.parametrize("shape", [(), (7,)])
def test_fewer_than_two_dimensions(shape):
    with pytest.raises(ValueError, match=r"needs at least 2 dimensions \(y, x\)"):
        open_volume(np.zeros(shape))


def test_more_than_five_dimensions_and_empty_arrays():
    with pytest.raises(ValueError, match="at most 5"):
        open_volume(np.zeros((1,) * 4 + (2, 2)))
    with pytest.raises(ValueError, match="is empty"):
        open_volume(np.zeros((0, 4, 4)))


def test_file_neither_zarr_nor_tiff(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder").mkdir()
    for path in (tmp_path / "notes.txt", tmp_path / "folder"):
        with pytest.raises(ValueError, match="not a zarr store|neither a zarr store") as error:
            open_volume(path)
        assert "supported: a zarr store" in str(error.value) and "tiff" in str(error.value)


def test_unsupported_object():
    with pytest.raises(TypeError, match="cannot open a list"):
        open_volume([[1, 2], [3, 4]])


@pytest.mark.parametrize("index", [6, -7, (1, 2), 1.0, [1]])
def test_plane_index_out_of_range(stack, index):
    with pytest.raises(IndexError, match=r"planes of shape \(6,\)"):
        open_volume(stack).plane(index)


# --------------------------------------------------------------------------- #
# intensity limits from a sample
# --------------------------------------------------------------------------- #
def test_intensity_limits_match_percentiles_of_the_whole_volume():
    rng = np.random.default_rng(2)
    grey = rng.normal(1000, 100, (40, 64, 64)).astype(np.uint16)
    limits = intensity_limits(open_volume(grey))
    assert limits.shape == (2,)
    np.testing.assert_allclose(limits, np.percentile(grey, (1, 99.8)), rtol=0.02)

    two = np.stack([grey, grey * 10], axis=1)  # (Z, C, Y, X)
    limits = intensity_limits(open_volume(two), percentiles=(5, 95))
    assert limits.shape == (2, 2)
    whole = np.percentile(np.moveaxis(two, 1, -1).reshape(-1, 2), (5, 95), axis=0)
    np.testing.assert_allclose(limits, whole, rtol=0.02)


def test_sample_stays_within_max_pixels():
    volume = open_volume(np.zeros((40, 64, 64), np.float32))
    assert 500 < len(volume.sample(max_pixels=1000)) <= 1000
    assert volume.sample(max_pixels=10**9, max_planes=2).shape == (2 * 64 * 64,)
    assert open_volume(np.zeros((64, 64, 3))).sample().shape == (64 * 64, 3)
