"""The physical voxel size of a volume, read from its file or given (napari_sam.volume.io)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam.volume import Volume, open_volume

STACK = np.zeros((6, 8, 10), np.uint16)  # (Z, Y, X), more than 4 planes so none look like channels


def write_ome_zarr(path, data, axes, version, scale, level_scale=None, units=None):
    """An OME-zarr image of one level, metadata written by hand: NGFF 0.4 (zarr v2) or 0.5
    (zarr v3, under "ome"), with a translation after the dataset's scale as NGFF allows."""
    group = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    group.create_array("0", data=data)
    transforms = [{"type": "scale", "scale": scale},
                  {"type": "translation", "translation": [7.0] * data.ndim}]
    units = units or [None] * len(axes)
    image = {
        "version": version,
        "axes": [{"name": a, **({"unit": u} if u else {})} for a, u in zip(axes, units)],
        "datasets": [{"path": "0", "coordinateTransformations": transforms}],
    }
    if level_scale is not None:
        image["coordinateTransformations"] = [{"type": "scale", "scale": level_scale}]
    if version == "0.4":
        group.attrs["multiscales"] = [image]
    else:
        group.attrs["ome"] = {"version": version, "multiscales": [image]}
    return path


# --------------------------------------------------------------------------- #
# tiff files
# --------------------------------------------------------------------------- #
def test_imagej_hyperstack_gives_z_spacing_and_pixel_size(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(1 / 0.4, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    volume = open_volume(path)
    assert volume.axes == "zyx"
    assert volume.voxel_size == pytest.approx((2.0, 0.5, 0.4))  # (z, y, x): y and x not swapped
    assert volume.anisotropy == pytest.approx(2.0 / 0.45)


@pytest.mark.parametrize(("unit", "micrometres"), [
    ("micron", 1.0), ("\\u00B5m", 1.0), ("nm", 1e-3), ("mm", 1e3), ("parsec", 1.0),
])
def test_imagej_units_become_micrometres(tmp_path, unit, micrometres):
    """ImageJ writes µm escaped; an unknown unit keeps the numbers, so the ratios still hold."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(1 / 50, 1 / 50),
                     metadata={"spacing": 200.0, "unit": unit, "axes": "ZYX"})
    assert open_volume(path).voxel_size == pytest.approx(
        (200 * micrometres, 50 * micrometres, 50 * micrometres))


def test_imagej_sizes_go_to_z_y_x_of_a_five_dimensional_hyperstack(tmp_path):
    path = tmp_path / "hyper.tif"
    data = np.zeros((2, 6, 2, 8, 10), np.uint8)
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.4, 1 / 0.5),
                     metadata={"spacing": 3.0, "unit": "um", "axes": "TZCYX"})
    volume = open_volume(path)
    assert volume.axes == "tzcyx"
    assert volume.voxel_size == pytest.approx((3.0, 0.5, 0.4))


def test_imagej_tiff_without_calibration_has_no_voxel_size(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, imagej=True, metadata={"axes": "ZYX"})
    volume = open_volume(path)
    assert (volume.voxel_size, volume.anisotropy) == (None, None)


def test_ome_tiff_physical_sizes(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5})
    assert open_volume(path).voxel_size == pytest.approx((1.5, 0.3, 0.25))


def test_ome_tiff_units_become_micrometres(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 100, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 100, "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.002,
        "PhysicalSizeZUnit": "mm"})
    assert open_volume(path).voxel_size == pytest.approx((2.0, 0.1, 0.1))


def test_a_partial_size_is_none(tmp_path):
    """An OME-TIFF stack without PhysicalSizeZ: y and x alone would mislead 3D users."""
    stack, image = tmp_path / "stack.ome.tif", tmp_path / "image.ome.tif"
    sizes = {"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
    tifffile.imwrite(stack, STACK, ome=True, metadata={"axes": "ZYX", **sizes})
    tifffile.imwrite(image, STACK[0], ome=True, metadata={"axes": "YX", **sizes})
    assert open_volume(stack).voxel_size is None
    assert open_volume(image).voxel_size == pytest.approx((0.25, 0.25))


def test_plain_tiff_resolution_tags_give_y_x_only(tmp_path):
    image, stack = tmp_path / "image.tif", tmp_path / "stack.tif"
    for path, data in ((image, STACK[0]), (stack, STACK)):
        tifffile.imwrite(path, data, resolution=(2, 4), resolutionunit="CENTIMETER")
    assert open_volume(image).voxel_size == pytest.approx((2500.0, 5000.0))  # cm -> µm, (y, x)
    assert open_volume(stack, axes="zyx").voxel_size is None  # no z step in a plain tiff


def test_plain_tiff_with_default_resolution_has_no_voxel_size(tmp_path):
    """tifffile writes XResolution = YResolution = 1/1 by default: that says nothing."""
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, STACK[0])
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].tags["XResolution"].value == (1, 1)
    assert open_volume(path).voxel_size is None


# --------------------------------------------------------------------------- #
# OME-zarr
# --------------------------------------------------------------------------- #
def test_ome_zarr_04_multiplies_dataset_and_multiscale_scales(tmp_path):
    path = write_ome_zarr(tmp_path / "image.zarr", STACK, "zyx", "0.4", scale=[2.0, 0.5, 0.4],
                          level_scale=[1.0, 2.0, 2.0], units=["micrometer"] * 3)
    assert (tmp_path / "image.zarr" / ".zattrs").is_file()  # really the zarr v2 layout of 0.4
    volume = open_volume(path)
    assert volume.voxel_size == pytest.approx((2.0, 1.0, 0.8))
    assert volume.anisotropy == pytest.approx(2.0 / 0.9)


def test_ome_zarr_05_nanometres_and_non_spatial_axes(tmp_path):
    data = np.zeros((2, 2, 6, 8, 10), np.uint8)
    path = write_ome_zarr(tmp_path / "image.zarr", data, "tczyx", "0.5",
                          scale=[30.0, 1.0, 500.0, 100.0, 120.0],
                          units=["second", None, "nanometer", "nanometer", "nanometer"])
    assert (tmp_path / "image.zarr" / "zarr.json").is_file()
    volume = open_volume(path)
    assert volume.axes == "tczyx"
    assert volume.voxel_size == pytest.approx((0.5, 0.1, 0.12))


def test_ome_zarr_without_units_keeps_the_numbers(tmp_path):
    path = write_ome_zarr(tmp_path / "image.zarr", STACK, "zyx", "0.4", scale=[4.0, 1.0, 1.0])
    assert open_volume(path).voxel_size == pytest.approx((4.0, 1.0, 1.0))


def test_plain_zarr_and_arrays_have_no_voxel_size(tmp_path):
    path = tmp_path / "plain.zarr"
    zarr.create_array(path, data=STACK)
    assert open_volume(path).voxel_size is None
    assert open_volume(STACK).voxel_size is None


# --------------------------------------------------------------------------- #
# given by the caller
# --------------------------------------------------------------------------- #
def test_explicit_voxel_size_overrides_metadata(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(2, 2),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    assert open_volume(path, voxel_size=(5, 1, 1)).voxel_size == (5.0, 1.0, 1.0)


def test_explicit_voxel_size_of_an_array_is_stored_as_floats():
    volume = open_volume(STACK, voxel_size=[np.float32(3.0), 1, 1])
    assert volume.voxel_size == (3.0, 1.0, 1.0)
    assert all(type(size) is float for size in volume.voxel_size)
    assert volume.anisotropy == 3.0
    assert "voxel_size=(3.0, 1.0, 1.0)" in repr(volume)


def test_axes_given_by_the_caller_pick_sizes_by_position(tmp_path):
    """A ZYX ImageJ stack read as a time series keeps its pixel size, not its z step."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(1 / 0.4, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"})
    volume = open_volume(path, axes="tyx")
    assert volume.voxel_size == pytest.approx((0.5, 0.4))
    assert volume.anisotropy is None


@pytest.mark.parametrize(("voxel_size", "problem"), [
    ((0.0, 1.0, 1.0), "not positive finite"),
    ((-2.0, 1.0, 1.0), "not positive finite"),
    ((float("nan"), 1.0, 1.0), "not positive finite"),
    ((float("inf"), 1.0, 1.0), "not positive finite"),
    (("2", 1.0, 1.0), "not positive finite"),
    ((True, 1.0, 1.0), "not positive finite"),
    ((0.5, 0.5), "has 2 value"),
    (0.5, "not a sequence"),
])
def test_bad_voxel_sizes_are_refused_with_the_fix(voxel_size, problem):
    with pytest.raises(ValueError, match=problem) as error:
        open_volume(STACK, voxel_size=voxel_size)
    assert "one positive size (in micrometres) per axis among z, y, x" in str(error.value)
    with pytest.raises(ValueError, match=problem):
        Volume(STACK, "zyx", voxel_size=voxel_size)


def test_voxel_size_of_a_2d_image_has_two_values():
    with pytest.raises(ValueError, match="axes 'yx' have 2 spatial axes"):
        Volume(STACK[0], "yx", voxel_size=(2.0, 0.5, 0.5))
    assert Volume(STACK[0], "yx", voxel_size=(0.5, 0.5)).anisotropy is None


def test_fingerprint_does_not_depend_on_voxel_size():
    """A run resumed with a corrected voxel size still recognises its volume."""
    data = np.random.default_rng(0).integers(0, 1000, STACK.shape, dtype=np.uint16)
    assert (Volume(data, "zyx").fingerprint()
            == Volume(data, "zyx", voxel_size=(2.0, 0.5, 0.5)).fingerprint())
