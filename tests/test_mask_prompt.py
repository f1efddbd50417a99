"""Mask prompts: a mask of the image becomes low-resolution logits in the decoder's frame."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam import Predictor, load_model
from napari_sam.engine.predictor import MASK_PROMPT_LOGIT
from napari_sam.synthetic import synthetic_nuclei
from napari_sam.engine.tiling import TiledPredictor

pytestmark = pytest.mark.usefixtures("one_thread")

# Measured 2026-11-26 on the 52 nuclei of at least 100 px below: mean IoU 0.756 with the exact
# box, 0.827 with the box and the true mask as mask prompt.
TOLERANCE = 0.02


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("shape", [(100, 200), (200, 100)])
def test_logits_follow_the_resized_and_padded_image(model, shape):
    """A mask of the first half of the long side of a non-square image: positive exactly in the
    first half of the resized region of the low-resolution grid, negative in the rest of it and
    in the padding. Resizing, padding at bottom/right and downsampling must all match the
    image's path to the model for this to hold pixel for pixel."""
    image, _ = synthetic_nuclei(shape, seed=0)
    predictor = Predictor(model)
    embedding = predictor.set_image(image)
    long_axis = int(np.argmax(shape))
    mask = np.zeros(shape, bool)
    mask[(slice(None),) * long_axis + (slice(0, shape[long_axis] // 2),)] = True

    logits = predictor.mask_prompt(mask)

    low = model.prompt_encoder.mask_input_size
    assert logits.shape == low == (64, 64)  # nuclei_s: 4 x its 16 x 16 embedding
    assert logits.dtype == np.float32
    factor = model.img_size // low[0]
    region = tuple(n // factor for n in embedding.input_size)  # the resized image, not padding
    assert region == ((32, 64) if shape == (100, 200) else (64, 32))
    expected = np.zeros(low, bool)
    inside = [slice(0, region[0]), slice(0, region[1])]
    inside[long_axis] = slice(0, region[long_axis] // 2)
    expected[tuple(inside)] = True
    np.testing.assert_array_equal(logits > 0, expected)
    assert (logits != 0).all()
    padding = np.ones(low, bool)
    padding[: region[0], : region[1]] = False
    assert (logits[padding] == -MASK_PROMPT_LOGIT).all()
    assert logits.max() == MASK_PROMPT_LOGIT


def test_mask_prompt_refines_a_box(model):
    """The true mask as mask prompt, with its box, is at least as good as the box alone."""
    image, labels = synthetic_nuclei((256, 256), seed=0, radius=(8, 14))
    predictor = Predictor(model)
    predictor.set_image(image)
    with_box, with_both = [], []
    for label in range(1, labels.max() + 1):
        truth = labels == label
        if truth.sum() < 100:
            continue
        rows, cols = np.nonzero(truth)
        box = [rows.min(), cols.min(), rows.max(), cols.max()]
        masks, _, _ = predictor.predict(box=box, multimask=False)
        with_box.append(iou(masks[0], truth))
        masks, _, _ = predictor.predict(box=box, mask_input=predictor.mask_prompt(truth),
                                        multimask=False)
        with_both.append(iou(masks[0], truth))
    assert len(with_box) > 30
    assert np.mean(with_both) >= np.mean(with_box) - TOLERANCE, (with_both, with_box)


def test_mask_prompt_errors(model):
    predictor = Predictor(model)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.mask_prompt(np.zeros((100, 200), bool))
    image, _ = synthetic_nuclei((100, 200), seed=0)
    predictor.set_image(image)
    with pytest.raises(ValueError, match=r"\(50, 60\).*\(100, 200\)"):
        predictor.mask_prompt(np.zeros((50, 60), bool))
    with pytest.raises(ValueError, match=r"\(1, 100, 200\)"):
        predictor.mask_prompt(np.zeros((1, 100, 200), bool))


def test_tiled_predictor_takes_a_whole_plane_mask(model):
    """A mask of the whole plane is cut to the answering tile; a mask alone chooses the tile
    holding the centre of its bounding box."""
    image, labels = synthetic_nuclei((512, 512), seed=2, radius=(8, 14))
    tiled = TiledPredictor(model, tile=256, halo=32)
    tiled.set_image(image)
    far = [t for t in tiled.tiles if t.core[0] > 0 and t.core[1] > 0][0]  # not the first tile
    ids, counts = np.unique(labels[far.core[0] + 40: far.core[2] - 40,
                                   far.core[1] + 40: far.core[3] - 40], return_counts=True)
    truth = labels == ids[1:][np.argmax(counts[1:])]
    rows, cols = np.nonzero(truth)
    box = [rows.min(), cols.min(), rows.max(), cols.max()]

    tiled.predict(mask=truth, multimask=False)
    assert next(iter(tiled._embeddings)) == far.box

    masks, _, _ = tiled.predict(box=box, mask=truth, multimask=False)
    assert masks.shape == (1, 512, 512)
    assert iou(masks[0], truth) > 0.7

    with pytest.raises(ValueError, match=r"\(256, 256\).*\(512, 512\)"):
        tiled.predict(box=box, mask=truth[:256, :256])
    with pytest.raises(ValueError, match="positive point or a box"):
        tiled.predict(mask=np.zeros((512, 512), bool))
