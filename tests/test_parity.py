"""Parity of the whole engine with Meta's ``SamPredictor`` (and MobileSAM's for ``vit_t``).

Both sides load the same random weights from one checkpoint file and see the same images and
prompts. Tolerances: predicted IoU within 1e-4 (absolute); low-resolution logits within 1e-4 of
the largest logit; binary masks identical on at least 99.99% of pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from napari_sam import Predictor, load_model
from napari_sam.models.registry import build_sam_vit
from napari_sam.models.weights import load_weights, read_state_dict
from reference import (
    SMALL_VIT,
    VIT_B,
    meta_sam,
    mobile_sam,
    mobile_sam_vit_t,
    random_state,
    reference_nuclei_s,
    segment_anything,
)

SCORE_TOL = 1e-4
LOGIT_TOL = 1e-4
MASK_AGREEMENT = 0.9999


def sample_images() -> dict[str, np.ndarray]:
    """Real images of different sizes and aspect ratios, as uint8 RGB (what the reference takes)."""
    coins = skimage.data.coins()  # 303 x 384 grey: many round objects
    cell = skimage.data.cell()  # 660 x 550 grey, phase contrast
    ihc = skimage.data.immunohistochemistry()  # 512 x 512 RGB
    return {
        "coins": np.repeat(coins[..., None], 3, axis=-1),
        "cell": np.repeat(cell[..., None], 3, axis=-1),
        "ihc": ihc,
    }


def random_prompts(image_shape: tuple[int, int], seed: int, count: int):
    """Random prompts in (row, col) order: points, boxes, both, with 1 to 4 points."""
    rng = np.random.default_rng(seed)
    h, w = image_shape
    for i in range(count):
        kind = ("points", "box", "points+box")[i % 3]
        points = labels = box = None
        if "points" in kind:
            n = rng.integers(1, 5)
            points = np.stack([rng.uniform(0, h - 1, n), rng.uniform(0, w - 1, n)], axis=1)
            labels = rng.integers(0, 2, n)
            labels[0] = 1
        if "box" in kind:
            rows = np.sort(rng.uniform(0, h - 1, 2))
            cols = np.sort(rng.uniform(0, w - 1, 2))
            box = np.array([rows[0], cols[0], rows[1], cols[1]])
        yield points, labels, box


def reference_predict(predictor, points, labels, box, mask_input, multimask):
    """Meta's predictor, called with SAM's (x, y) coordinates."""
    return predictor.predict(
        point_coords=None if points is None else points[:, ::-1].copy(),
        point_labels=labels,
        box=None if box is None else box[[1, 0, 3, 2]],
        mask_input=mask_input,
        multimask_output=multimask,
    )


def assert_same_answers(ours, ref):
    masks, scores, logits = ours
    ref_masks, ref_scores, ref_logits = ref
    assert masks.shape == ref_masks.shape and masks.dtype == bool
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=SCORE_TOL)
    assert np.abs(logits - ref_logits).max() <= LOGIT_TOL * np.abs(ref_logits).max()
    assert (masks == ref_masks).mean() >= MASK_AGREEMENT


def compare(ours: Predictor, ref, images: dict[str, np.ndarray], prompts_per_image: int):
    """Embed each image on both sides and compare many prompts, with and without mask input."""
    for index, image in enumerate(images.values()):
        ours.set_image(image)
        ref.set_image(image)
        ours_features = ours.embedding.features
        assert torch.allclose(ours_features, ref.features, rtol=0, atol=1e-4 * ref.features.abs().max())
        for j, (points, labels, box) in enumerate(random_prompts(image.shape[:2], index, prompts_per_image)):
            multimask = j % 2 == 0
            answer = ours.predict(points=points, labels=labels, box=box, multimask=multimask)
            expected = reference_predict(ref, points, labels, box, None, multimask)
            assert_same_answers(answer, expected)
            # Refine with the previous low-resolution logits as mask prompt.
            mask_input = expected[2][np.argmax(expected[1])][None]
            answer = ours.predict(points=points, labels=labels, box=box, mask_input=mask_input, multimask=False)
            expected = reference_predict(ref, points, labels, box, mask_input, False)
            assert_same_answers(answer, expected)


def save_random_checkpoint(reference_model, path, seed: int):
    torch.manual_seed(seed)
    torch.save(random_state(reference_model, seed), path)
    reference_model.load_state_dict(torch.load(path, weights_only=True))
    return reference_model.eval()


def test_small_vit_matches_meta(tmp_path):
    path = tmp_path / "small.pth"
    ref = save_random_checkpoint(meta_sam(**SMALL_VIT), path, seed=0)
    ours = build_sam_vit(**SMALL_VIT)
    load_weights(ours, read_state_dict(path), name="small", source="test checkpoint")
    compare(Predictor(ours), segment_anything.SamPredictor(ref), sample_images(), prompts_per_image=12)


def test_default_model_architecture_matches_the_references(tmp_path):
    """nuclei_s = MobileSAM's TinyViT configured small, with Meta's prompt encoder and decoder."""
    path = tmp_path / "nuclei_s.pt"
    # MobileSAM caches TinyViT's attention biases in eval(): load first, then eval.
    ref = save_random_checkpoint(reference_nuclei_s(), path, seed=0)
    ours = load_model(checkpoint=path, device="cpu")  # recognised as nuclei_s from its keys
    assert ours.image_encoder.img_size == 256
    compare(Predictor(ours), segment_anything.SamPredictor(ref), sample_images(), prompts_per_image=12)


@pytest.mark.slow
def test_vit_b_matches_meta(tmp_path):
    path = tmp_path / "vit_b.pth"
    ref = save_random_checkpoint(meta_sam(**VIT_B), path, seed=1)
    ours = load_model(checkpoint=path, device="cpu")  # recognised as vit_b from its keys
    images = sample_images()
    compare(Predictor(ours), segment_anything.SamPredictor(ref), {"coins": images["coins"]}, prompts_per_image=18)


@pytest.mark.slow
def test_vit_t_matches_mobile_sam(tmp_path):
    path = tmp_path / "mobile_sam.pt"
    # MobileSAM caches TinyViT's attention biases in eval(): load first, then eval (as its README does).
    ref = save_random_checkpoint(mobile_sam_vit_t(), path, seed=2)
    ours = load_model(checkpoint=path, device="cpu")
    images = sample_images()
    compare(Predictor(ours), mobile_sam.SamPredictor(ref), {"cell": images["cell"]}, prompts_per_image=12)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "nuclei_s"])
def test_state_dict_layout_equals_meta(name):
    from napari_sam.models.weights import expected_shapes

    if name == "nuclei_s":
        ref = reference_nuclei_s()  # small; MobileSAM's TinyViT cannot be built on the meta device
    else:
        with torch.device("meta"):
            ref = segment_anything.sam_model_registry[name]()
    assert expected_shapes(name) == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_checkpoints_load_both_ways(tmp_path):
    """Our checkpoint loads strictly into Meta's Sam, and Meta's into ours, unchanged."""
    ours = build_sam_vit(**SMALL_VIT)
    ref = meta_sam(**SMALL_VIT)
    torch.save(ours.state_dict(), tmp_path / "ours.pth")
    ref.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True), strict=True)
    torch.save(random_state(ref, 3), tmp_path / "meta.pth")
    load_weights(ours, read_state_dict(tmp_path / "meta.pth"), name="small", source="meta")
    for key, value in ours.state_dict().items():
        assert torch.equal(value, torch.load(tmp_path / "meta.pth", weights_only=True)[key])
