"""Automatic mask generation: edge cases, samplers, label images, exact upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam import AutomaticMaskGenerator, load_model
from napari_sam.engine.mask_ops import LogitUpsampler
from napari_sam.engine.samplers import AdaptiveSampler, PromptRound
from napari_sam.synthetic import synthetic_nuclei

NO_FILTERS = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)
NUCLEI_S_FILTERS = dict(pred_iou_thresh=0.5, stability_score_thresh=0.8)  # its IoU head tops ~0.7


@pytest.fixture(scope="module")
def nuclei_s(one_thread):
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def nuclei():
    image, labels = synthetic_nuclei((256, 256), seed=5)
    return image, labels


def assert_valid_records(records: list[dict], shape: tuple[int, int]) -> None:
    for record in records:
        mask = record["segmentation"]
        assert mask.shape == shape and mask.dtype == bool
        assert record["area"] == mask.sum()
        x, y, w, h = record["bbox"]
        if record["area"]:
            rows, cols = np.nonzero(mask)
            assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max(), rows.max())


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((40, 60), np.uint16),
        np.full((40, 60), 7.5),
        np.arange(50, dtype=np.uint8)[None, :],  # one pixel high
        np.arange(50, dtype=np.float32)[:, None],  # one pixel wide
        np.random.default_rng(0).integers(0, 255, (3, 4), dtype=np.uint8),  # < one grid cell
    ],
    ids=["zeros", "constant", "one-row", "one-column", "tiny"],
)
@pytest.mark.parametrize("sampler", ["grid", "adaptive", "boxes"])
def test_degenerate_images_give_valid_results(tiny_model, one_thread, image, sampler):
    generator = AutomaticMaskGenerator(tiny_model, points_per_side=8, sampler=sampler, **NO_FILTERS)
    records = generator.generate(image)
    assert_valid_records(records, image.shape)
    labels = generator.generate_labels(image)
    assert labels.shape == image.shape and labels.dtype == np.uint32


def test_nothing_survives_the_filters(tiny_model, one_thread, nuclei_image):
    generator = AutomaticMaskGenerator(tiny_model, points_per_side=8, pred_iou_thresh=1.0)
    assert generator.generate(nuclei_image) == []
    assert not generator.generate_labels(nuclei_image).any()
    assert generator.decoder_calls == 64


def test_label_image_keeps_small_masks_visible(nuclei_s, nuclei):
    image, _ = nuclei
    generator = AutomaticMaskGenerator(nuclei_s, points_per_side=16, box_nms_thresh=0.95,
                                       **NUCLEI_S_FILTERS)
    records = generator.generate(image)
    labels = generator.generate_labels(image)
    assert labels.dtype == np.uint32
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # 1..n, no gaps
    assert len(ids) > 10
    smallest = min(records, key=lambda r: r["area"])["segmentation"]
    assert len(np.unique(labels[smallest])) == 1  # painted last: whole and one id
    largest = max(records, key=lambda r: r["area"])["segmentation"]
    assert labels[largest].min() == 0 or labels[largest].max() > 1  # painted first, under others


def test_records_use_meta_conventions(tiny_model, one_thread):
    """point_coords (x, y), bbox (x, y, w, h): COCO/Meta conventions, not (row, col)."""

    class OnePoint:
        def rounds(self, image, layer, coverage):
            yield PromptRound(points=np.array([[10.0, 50.0]]))  # row 10, column 50

    image = np.random.default_rng(1).integers(0, 255, (40, 90), dtype=np.uint8)
    generator = AutomaticMaskGenerator(tiny_model, sampler=OnePoint(), **NO_FILTERS)
    records = generator.generate(image)
    assert generator.decoder_calls == 1
    assert records and all(r["point_coords"] == [[50.0, 10.0]] for r in records)
    assert all(r["crop_box"] == [0, 0, 90, 40] for r in records)


def test_box_sampler_calls_the_decoder_once_per_box(tiny_model, one_thread, nuclei_image):
    boxes = np.array([[5, 5, 20, 30], [10, 40, 45, 80], [0, 0, 49, 89]], dtype=float)
    seen = []

    def detector(rgb):
        seen.append(rgb.shape)
        return boxes

    generator = AutomaticMaskGenerator(tiny_model, sampler="boxes", detector=detector, **NO_FILTERS)
    records = generator.generate(nuclei_image)
    assert seen == [(50, 90, 3)]
    assert generator.decoder_calls == 3
    assert len(records) <= 3  # one mask per box
    centres = [[(b[1] + b[3]) / 2, (b[0] + b[2]) / 2] for b in boxes]
    assert all(r["point_coords"][0] in centres for r in records)


def test_box_sampler_refuses_bad_detector_output(tiny_model, nuclei_image):
    generator = AutomaticMaskGenerator(tiny_model, sampler="boxes", detector=lambda rgb: np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        generator.generate(nuclei_image)
    empty = AutomaticMaskGenerator(tiny_model, sampler="boxes", detector=lambda rgb: np.zeros((0, 4)))
    assert empty.generate(nuclei_image) == []


def test_default_box_detector_finds_nuclei(nuclei_s, nuclei):
    image, labels = nuclei
    generator = AutomaticMaskGenerator(nuclei_s, sampler="boxes", **NUCLEI_S_FILTERS)
    records = generator.generate(image)
    assert generator.decoder_calls >= 0.8 * labels.max()
    found = {np.bincount(labels[r["segmentation"]]).argmax() for r in records}
    assert len(found - {0}) >= 0.6 * labels.max()


def nuclei_found(records: list[dict], labels: np.ndarray) -> int:
    """True nuclei that some mask matches with IoU >= 0.5."""
    truth = np.stack([labels == i for i in range(1, labels.max() + 1)])
    truth = truth.reshape(len(truth), -1).astype(np.float32)
    masks = np.stack([r["segmentation"] for r in records]).reshape(len(records), -1).astype(np.float32)
    inter = masks @ truth.T
    iou = inter / (masks.sum(1)[:, None] + truth.sum(1)[None] - inter)
    return int((iou.max(0) >= 0.5).sum())


@pytest.mark.slow
def test_adaptive_finds_most_of_the_grids_nuclei_with_far_fewer_calls(nuclei_s, nuclei):
    image, labels = nuclei
    grid = AutomaticMaskGenerator(nuclei_s, points_per_side=32, **NUCLEI_S_FILTERS)
    adaptive = AutomaticMaskGenerator(nuclei_s, points_per_side=32, sampler="adaptive",
                                      **NUCLEI_S_FILTERS)
    by_grid = nuclei_found(grid.generate(image), labels)
    by_adaptive = nuclei_found(adaptive.generate(image), labels)
    assert adaptive.decoder_calls * 3.5 <= grid.decoder_calls
    assert by_adaptive >= 0.8 * by_grid


def test_adaptive_skips_flat_background():
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:30, 20:30] = 200
    sampler = AdaptiveSampler(points_per_side=16, coarse_per_side=4)
    foreground = sampler.foreground(image, 4.0)
    assert foreground[25, 25] and not foreground[60, 5]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(sampler="everywhere"), "grid"),
        (dict(output_mode="png"), "binary_mask"),
        (dict(points_per_side=None), "exactly one"),
        (dict(point_grids=[np.zeros((4, 2))]), "exactly one"),
        (dict(points_per_batch=0), "points_per_batch"),
        (dict(sampler="adaptive", points_per_side=None, point_grids=[np.zeros((4, 2))]), "adaptive"),
    ],
)
def test_bad_options_are_refused(tiny_model, options, message):
    with pytest.raises(ValueError, match=message):
        AutomaticMaskGenerator(tiny_model, **options)


@pytest.mark.parametrize(
    "input_size, original_size",
    [((64, 43), (300, 200)), ((36, 64), (50, 90)), ((64, 64), (64, 64)), ((64, 64), (20, 20))],
)
def test_windowed_upsampling_equals_postprocess(tiny_model, input_size, original_size):
    """Every pixel above the threshold is in the window, with the value postprocess_masks gives."""
    low_res = tiny_model.prompt_encoder.mask_input_size
    upsampler = LogitUpsampler(low_res, tiny_model.img_size, input_size, original_size)
    generator = torch.Generator().manual_seed(0)
    for blob in (False, True):
        logits = torch.randn(low_res, generator=generator) * 4 - 3
        if blob:  # one small object: the window is much smaller than the image
            logits = torch.full(low_res, -6.0)
            logits[3:6, 4:9] = 4.0
        full = tiny_model.postprocess_masks(logits[None, None], input_size, original_size)[0, 0]
        top, left, values = upsampler.window(logits.numpy(), -1.0)
        placed = np.full(original_size, -10.0, np.float32)
        placed[top: top + values.shape[0], left: left + values.shape[1]] = values
        above = full.numpy() > -1.0
        np.testing.assert_allclose(placed[above], full.numpy()[above], atol=1e-5)
        assert not (placed > -1.0)[~above].any()
        if blob and original_size[0] > 64:
            assert values.size < 0.2 * full.numel()
    assert upsampler.window(np.full(low_res, -5.0, np.float32), -1.0) is None
