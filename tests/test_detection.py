"""The built-in detector (napari_sam.engine.detection): boxes a user would accept as prompts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.engine.detection import detect_objects
from napari_sam.synthetic import synthetic_dataset, synthetic_nuclei

SEEDS = (0, 1, 2)


def true_boxes(labels: np.ndarray) -> np.ndarray:
    """``(min_row, min_col, max_row, max_col)`` of each label, max inclusive."""
    return np.array(
        [[s[0].start, s[1].start, s[0].stop - 1, s[1].stop - 1] for s in ndi.find_objects(labels)],
        dtype=float,
    ).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of boxes whose max is inclusive (areas count pixels)."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(high - low + 1, 0, None).prod(axis=-1)
    area_a = (a[:, 2:] - a[:, :2] + 1).prod(axis=-1)
    area_b = (b[:, 2:] - b[:, :2] + 1).prod(axis=-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def disc_image(centres, radius=12.0, shape=(64, 96), seed=0):
    """Bright blurred discs on a dark noisy background (uint16), and their labels."""
    rows, cols = np.indices(shape)
    labels = np.zeros(shape, dtype=np.uint32)
    for i, (r, c) in enumerate(centres, start=1):
        labels[((rows - r) ** 2 + (cols - c) ** 2 <= radius**2) & (labels == 0)] = i
    signal = ndi.gaussian_filter((labels > 0) * 1000.0, 1.0)
    noisy = np.random.default_rng(seed).poisson(signal + 100.0)
    return noisy.astype(np.uint16), labels


@pytest.fixture(scope="module")
def synthetic():
    """(image, labels, boxes) for a few seeded synthetic nuclei images."""
    out = []
    for seed in SEEDS:
        image, labels = synthetic_nuclei((256, 256), seed=seed)
        out.append((image, labels, detect_objects(image)))
    return out


# --------------------------------------------------------------------------- #
# quality on synthetic nuclei
# --------------------------------------------------------------------------- #
def test_finds_most_nuclei(synthetic):
    """Measured recall 0.95 to 0.97 on these seeds (box IoU >= 0.5 with a nucleus's own box)."""
    for _, labels, boxes in synthetic:
        iou = box_iou(true_boxes(labels), boxes)
        assert (iou.max(axis=1) >= 0.5).mean() >= 0.88


def test_few_boxes_miss_every_nucleus(synthetic):
    """Measured precision 0.97 to 1.0: almost every box is one nucleus."""
    for _, labels, boxes in synthetic:
        iou = box_iou(true_boxes(labels), boxes)
        assert (iou.max(axis=0) >= 0.5).mean() >= 0.9


def test_each_box_holds_most_of_its_nucleus(synthetic):
    for _, labels, boxes in synthetic:
        iou = box_iou(true_boxes(labels), boxes)
        inside = []
        for i in np.flatnonzero(iou.max(axis=1) >= 0.5):
            r0, c0, r1, c1 = boxes[iou[i].argmax()].astype(int)
            nucleus = labels == i + 1
            inside.append(nucleus[r0 : r1 + 1, c0 : c1 + 1].sum() / nucleus.sum())
        assert np.mean(inside) >= 0.95
        assert np.mean(np.array(inside) >= 0.9) >= 0.85


def test_dim_nuclei_in_photon_noise_get_one_box_each():
    """Dim images (brightness 80-200, a few photons per pixel): a first threshold passes the noise
    as hundreds of specks, which must not set the object scale. They did on images 0 and 5 here:
    3.8 and 2.4 boxes per nucleus. Measured now: 0.97 to 1.12 boxes per nucleus, 83% to 100% of
    the nuclei found."""
    for image, labels in synthetic_dataset(6, (256, 256), brightness=(80.0, 200.0), seed=7):
        truth = true_boxes(labels)
        boxes = detect_objects(image)
        assert 0.8 <= len(boxes) / len(truth) <= 1.25
        assert (box_iou(truth, boxes).max(axis=1) >= 0.5).mean() >= 0.75


def test_boxes_are_sorted_and_repeatable(synthetic):
    image, _, boxes = synthetic[0]
    assert boxes.dtype == np.float64 and boxes.shape[1] == 4
    order = np.lexsort((boxes[:, 1], boxes[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(boxes)))
    np.testing.assert_array_equal(detect_objects(image), boxes)


def test_uint16_and_float_give_the_same_boxes(synthetic):
    image, _, boxes = synthetic[0]
    np.testing.assert_array_equal(detect_objects(image.astype(np.float32)), boxes)
    np.testing.assert_array_equal(detect_objects(image.astype(np.float64)), boxes)


def test_uint8_image(synthetic):
    image, labels, _ = synthetic[0]
    scaled = np.clip(image.astype(float) / np.percentile(image, 99.8) * 255, 0, 255)
    boxes = detect_objects(scaled.astype(np.uint8))
    assert (box_iou(true_boxes(labels), boxes).max(axis=1) >= 0.5).mean() >= 0.85


# --------------------------------------------------------------------------- #
# touching objects, box geometry
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("gap", [18, 22, 24])
def test_touching_discs_give_one_box_each(gap):
    """Two discs of radius 12, centres ``gap`` apart: overlapping (18, 22) or just touching (24)."""
    image, labels = disc_image([(32, 30), (32, 30 + gap)])
    boxes = detect_objects(image)
    assert len(boxes) == 2
    assert (box_iou(true_boxes(labels), boxes).diagonal() >= 0.7).all()


def test_box_is_the_first_and_last_pixel_plus_padding():
    image = np.zeros((40, 50))
    image[10:20, 5:30] = 1.0  # rows 10..19, cols 5..29
    np.testing.assert_array_equal(detect_objects(image, padding=0), [[10, 5, 19, 29]])
    np.testing.assert_array_equal(detect_objects(image, padding=2), [[8, 3, 21, 31]])


def test_padding_stays_inside_the_image():
    image = np.zeros((40, 50))
    image[0:10, 44:50] = 1.0
    np.testing.assert_array_equal(detect_objects(image, padding=3), [[0, 41, 12, 49]])


def test_max_boxes_keeps_the_largest():
    small, _ = disc_image([(15, 15), (50, 15)], radius=7.0, shape=(70, 90))
    large, _ = disc_image([(35, 60)], radius=14.0, shape=(70, 90), seed=1)
    image = np.maximum(small, large)
    assert len(detect_objects(image)) == 3
    boxes = detect_objects(image, max_boxes=1, padding=0)
    assert boxes.shape == (1, 4)
    assert boxes[0, 1] > 40  # the large disc
    assert detect_objects(image, max_boxes=0).shape == (0, 4)


def test_min_size_drops_small_objects():
    small, _ = disc_image([(20, 20)], radius=3.0, shape=(64, 96))
    large, _ = disc_image([(32, 60)], radius=12.0, shape=(64, 96), seed=1)
    image = np.maximum(small, large)
    assert len(detect_objects(image, min_size=1)) == 2
    boxes = detect_objects(image, min_size=100)
    assert len(boxes) == 1 and boxes[0, 1] > 40


# --------------------------------------------------------------------------- #
# channels and awkward images
# --------------------------------------------------------------------------- #
def test_rgb_image_with_nuclei_in_blue():
    image, labels = disc_image([(20, 20), (40, 70)])
    grey = (image / image.max() * 255).astype(np.uint8)
    rgb = np.zeros(grey.shape + (3,), np.uint8)
    rgb[..., 2] = grey
    boxes = detect_objects(rgb)
    assert (box_iou(true_boxes(labels), boxes).diagonal() >= 0.7).all()


def test_channels_first_two_channel_image():
    image, labels = disc_image([(20, 20), (40, 70)])
    other = np.random.default_rng(1).poisson(100.0, image.shape).astype(np.uint16)
    stack = np.stack([other, image])  # (2, H, W): channels first
    for boxes in (detect_objects(stack), detect_objects(stack, channel_axis=0)):
        assert len(boxes) == 2
        assert (box_iou(true_boxes(labels), boxes).diagonal() >= 0.7).all()


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64)),
        np.full((64, 64), 1000, dtype=np.uint16),
        np.full((64, 64), np.nan),
        np.random.default_rng(0).poisson(100.0, (64, 1)).astype(np.uint16),
        np.random.default_rng(0).normal(100.0, 5.0, (1, 64)),
        np.ones((1, 1)),
    ],
    ids=["zeros", "constant", "all-nan", "one-column", "one-row", "one-pixel"],
)
def test_nothing_to_find_gives_no_boxes(image):
    boxes = detect_objects(image)
    assert boxes.shape == (0, 4)
    assert boxes.dtype == np.float64


def test_pure_noise_gives_no_boxes():
    """An empty, noisy field of view should not cost a single decoder call."""
    noise = np.random.default_rng(0).poisson(200.0, (128, 128)).astype(np.uint16)
    assert detect_objects(noise).shape == (0, 4)


def test_nan_pixels_count_as_background():
    image, labels = disc_image([(20, 20), (40, 70)])
    image = image.astype(np.float32)
    image[:, 40:50] = np.nan
    image[0, 0] = np.inf
    boxes = detect_objects(image)
    assert np.isfinite(boxes).all()
    assert (box_iou(true_boxes(labels), boxes).diagonal() >= 0.7).all()


@pytest.mark.parametrize(
    "shape, words", [((5,), "2D image"), ((2, 3, 64, 64), "2D image"), ((10, 64, 64), "2D slice")]
)
def test_not_a_2d_image_is_refused(shape, words):
    with pytest.raises(ValueError, match=words):
        detect_objects(np.zeros(shape))


@pytest.mark.parametrize(
    "options",
    [dict(padding=-1), dict(padding=float("nan")), dict(max_boxes=-1), dict(max_boxes=2.5),
     dict(min_size=-5)],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        detect_objects(np.zeros((8, 8)), **options)
