"""Image normalisation (napari_sam.engine.image) and resizing (napari_sam.engine.resize)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_sam.engine.image import channels_last, intensity_range, to_rgb_uint8
from napari_sam.engine.resize import resize_rgb, resized_shape, scale_xy


def expected_linear(values, low, high):
    """What a linear map of ``low``..``high`` to 0..255 gives, rounded and clipped."""
    scaled = (np.asarray(values, dtype=np.float64) - low) * 255.0 / (high - low)
    return np.clip(np.rint(scaled), 0, 255)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- #
# uint8 is used as it is
# --------------------------------------------------------------------------- #
def test_uint8_grey_is_repeated_into_three_unchanged_channels(rng):
    image = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (20, 30, 3)
    assert rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], image)


def test_uint8_rgb_is_unchanged(rng):
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgb = to_rgb_uint8(image)
    np.testing.assert_array_equal(rgb, image)
    assert rgb.dtype == np.uint8


def test_uint8_ignores_limits(rng):
    """``limits`` are for other types: a uint8 image is what SAM expects already."""
    image = rng.integers(0, 256, (10, 10), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(image, limits=(100, 120))[..., 0], image)


def test_rgba_drops_alpha(rng):
    image = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    image[..., 3] = 7  # an alpha that would show if kept
    np.testing.assert_array_equal(to_rgb_uint8(image), image[..., :3])


def test_rgba_uint16_drops_alpha_before_normalising(rng):
    image = rng.integers(0, 4000, (20, 30, 4), dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(image), to_rgb_uint8(image[..., :3]))


def test_bool_image_is_0_and_255():
    image = np.zeros((6, 7), bool)
    image[2:4, 3:6] = True
    rgb = to_rgb_uint8(image)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 1], np.where(image, 255, 0))


def test_input_is_not_modified(nuclei_image):
    """The fixture image is read-only: normalising must not write into the user's array."""
    before = nuclei_image.copy()
    to_rgb_uint8(nuclei_image)
    np.testing.assert_array_equal(nuclei_image, before)


# --------------------------------------------------------------------------- #
# other types: robust percentiles
# --------------------------------------------------------------------------- #
def test_uint16_percentiles_map_to_0_and_255(nuclei_image):
    image = nuclei_image
    low, high = np.percentile(image, (1, 99.8))
    grey = to_rgb_uint8(image)[..., 0].astype(int)
    assert image.dtype == np.uint16 and high > low
    assert (grey[image <= low] == 0).all()
    assert (grey[image >= high] == 255).all()
    # in between the map is linear
    inside = (image > low) & (image < high)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(grey[inside], expected_linear(image[inside], low, high), atol=1)
    # and it uses the whole 8-bit range, unlike a plain cast or a min/max stretch
    assert grey.min() == 0 and grey.max() == 255


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32, np.uint32])
def test_other_types_are_normalised(rng, dtype):
    values = rng.normal(100, 30, (40, 50))
    image = values.astype(dtype)
    low, high = np.percentile(image.astype(np.float64), (1, 99.8))
    grey = to_rgb_uint8(image)[..., 0]
    assert grey.dtype == np.uint8
    np.testing.assert_allclose(grey, expected_linear(image, low, high), atol=1)


def test_negative_float_image(rng):
    image = rng.normal(-5.0, 0.01, (30, 30))  # all negative, tiny spread
    grey = to_rgb_uint8(image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255
    assert 60 < grey.mean() < 200


def test_nan_pixels_become_zero_and_do_not_poison_limits(rng):
    image = rng.uniform(1000, 2000, (40, 40))
    nan = np.zeros(image.shape, bool)
    nan[::7, ::3] = True
    with_nan = image.copy()
    with_nan[nan] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from NaN
        grey = to_rgb_uint8(with_nan)[..., 0]
    assert (grey[nan] == 0).all()
    low, high = np.percentile(image[~nan], (1, 99.8))
    np.testing.assert_allclose(grey[~nan], expected_linear(image[~nan], low, high), atol=1)
    assert grey[~nan].max() == 255


def test_inf_pixels_are_clipped_and_ignored_by_limits(rng):
    image = rng.uniform(0, 1, (30, 30))
    image[0, 0], image[0, 1] = np.inf, -np.inf
    limits = intensity_range(image[..., None])
    assert np.isfinite(limits).all()
    grey = to_rgb_uint8(image)[..., 0]
    assert grey[0, 0] == 255 and grey[0, 1] == 0
    assert 50 < grey[1:].mean() < 200


@pytest.mark.parametrize(
    "image",
    [np.full((20, 20), 1234, np.uint16), np.full((20, 20), 0.5), np.full((20, 20), np.nan)],
    ids=["uint16", "float", "all-nan"],
)
def test_constant_image_gives_no_error(image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = to_rgb_uint8(image)
    assert rgb.shape == (20, 20, 3)
    assert np.unique(rgb).size == 1


def test_explicit_limits_override_percentiles():
    image = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    np.testing.assert_array_equal(
        to_rgb_uint8(image, limits=(0, 4000))[..., 0], [[0, 64], [128, 255]]
    )
    # values beyond the limits are clipped
    np.testing.assert_array_equal(
        to_rgb_uint8(image, limits=(1000, 2000))[..., 0], [[0, 0], [255, 255]]
    )


def test_limits_give_the_same_mapping_for_every_slice(rng):
    """Limits computed once for a stack make a slice look the same whatever its neighbours."""
    stack = rng.uniform(0, 1000, (2, 20, 20))
    stack[1] *= 0.5  # a darker slice
    limits = (0.0, 1000.0)
    dark = to_rgb_uint8(stack[1], limits=limits)[..., 0]
    np.testing.assert_allclose(dark, expected_linear(stack[1], 0, 1000), atol=1)
    assert dark.max() <= 130  # stays dark, not stretched to 255


def test_per_channel_limits(rng):
    image = rng.uniform(0, 10, (10, 10, 2))
    image[..., 1] = image[..., 0] * 100
    grey = to_rgb_uint8(image, limits=[[0, 0], [10, 1000]])
    np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1)


# --------------------------------------------------------------------------- #
# channels
# --------------------------------------------------------------------------- #
def test_channels_first_is_detected(rng):
    image = rng.integers(0, 60000, (3, 40, 50), dtype=np.uint16)
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (40, 50, 3)
    np.testing.assert_array_equal(rgb, to_rgb_uint8(np.moveaxis(image, 0, -1)))
    assert rgb.flags.c_contiguous  # Pillow and torch need that downstream


def test_channel_axis_overrides_the_guess(rng):
    image = rng.integers(0, 256, (3, 40, 4), dtype=np.uint8)  # would be read as a 3x40 RGBA
    assert to_rgb_uint8(image).shape == (3, 40, 3)
    rgb = to_rgb_uint8(image, channel_axis=0)
    assert rgb.shape == (40, 4, 3)
    np.testing.assert_array_equal(rgb, np.moveaxis(image, 0, -1))


def test_two_channels_go_to_red_and_green_with_blue_zero(rng):
    image = rng.uniform(0, 1, (30, 30, 2))
    image[..., 1] = image[..., 0] * 10  # a brighter channel: normalised separately
    rgb = to_rgb_uint8(image)
    assert rgb.shape == (30, 30, 3)
    assert (rgb[..., 2] == 0).all()
    assert rgb[..., 0].max() == 255
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1)


def test_two_channels_uint8():
    image = np.zeros((4, 4, 2), np.uint8)
    image[..., 0], image[..., 1] = 10, 200
    rgb = to_rgb_uint8(image)
    assert (rgb[..., 0] == 10).all() and (rgb[..., 1] == 200).all() and (rgb[..., 2] == 0).all()


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((40, 50, 5), {}, r"cannot tell the channel axis .*\(40, 50, 5\)"),
        ((40, 50, 5), {"channel_axis": -1}, r"5 channels"),
        ((6, 40, 50), {"channel_axis": 0}, r"6 channels"),
        ((10, 64, 64), {}, r"3D stack"),
        ((50,), {}, r"2D image.*\(50,\)"),
        ((2, 3, 20, 20), {}, r"2D image.*\(2, 3, 20, 20\)"),
        ((0, 10), {}, r"empty"),
        ((10, 0, 3), {}, r"empty"),
    ],
)
def test_bad_shapes_are_refused_with_a_message(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(np.zeros(shape, np.uint16), **kwargs)


def test_channels_last_returns_hwc():
    assert channels_last(np.zeros((5, 6))).shape == (5, 6, 1)
    assert channels_last(np.zeros((2, 5, 6))).shape == (5, 6, 2)
    assert channels_last(np.zeros((5, 6, 3))).shape == (5, 6, 3)


def test_limits_of_wrong_channel_count_are_refused():
    with pytest.raises(ValueError, match="limits"):
        to_rgb_uint8(np.zeros((5, 5, 2)), limits=[[0, 0, 0], [1, 1, 1]])


# --------------------------------------------------------------------------- #
# resize
# --------------------------------------------------------------------------- #
def sam_rule(shape, long_side):
    """SAM's ResizeLongestSide.get_preprocess_shape, written out."""
    scale = long_side * 1.0 / max(shape)
    return int(shape[0] * scale + 0.5), int(shape[1] * scale + 0.5)


@pytest.mark.parametrize(
    "shape, long_side, expected",
    [
        ((480, 640), 1024, (768, 1024)),
        ((50, 90), 64, (36, 64)),
        ((32, 128), 64, (16, 64)),
        ((5, 128), 64, (3, 64)),  # 2.5 rounds up, as in SAM (Python's round() would give 2)
        ((20, 10), 64, (64, 32)),  # small images are enlarged
        ((1000, 1000), 64, (64, 64)),
        ((1200, 1023), 1024, (1024, 873)),
    ],
)
def test_resized_shape_follows_sam(shape, long_side, expected):
    assert resized_shape(shape, long_side) == expected == sam_rule(shape, long_side)


def test_resize_rgb_shape_and_values(rng):
    image = np.full((50, 90, 3), (10, 120, 250), np.uint8)
    out = resize_rgb(image, 64)
    assert out.shape == (36, 64, 3) and out.dtype == np.uint8
    assert (out == (10, 120, 250)).all()  # a flat image stays flat
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_rgb(noisy, 64), noisy)  # right size: untouched


def test_scale_xy_maps_corners_and_centre():
    original, resized = (50, 90), (36, 64)
    xy = np.array([[0, 0], [90, 50], [45, 25], [90, 0]], float)  # (x, y)
    np.testing.assert_allclose(
        scale_xy(xy, original, resized), [[0, 0], [64, 36], [32, 18], [64, 0]]
    )


def test_scale_xy_is_per_axis():
    # x is scaled by 64/90, y by 36/50: different factors after rounding of the resized size
    np.testing.assert_allclose(scale_xy(np.array([10.0, 10.0]), (50, 90), (36, 64)),
                               [10 * 64 / 90, 10 * 36 / 50])
