"""SAM 2.1 end to end against Meta's sam2 1.1.0: the image predictor, and objects followed
through planes by the memory (video predictor), on the same random weights.

Tolerances: predicted IoU, object scores and low-resolution logits within 1e-4; masks equal on
at least 99.9% of the pixels of every plane (observed: logits within 6e-7, masks identical).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")
pytest.importorskip("hydra")

from napari_sam.engine.predictor import Predictor
from napari_sam.engine.tracking import PlaneTracker
from sam2_reference import reference_model

TOL = 1e-4
MASK_AGREEMENT = 0.999


def discs_stack(planes: int = 8, shape=(150, 180)) -> np.ndarray:
    """Two bright discs changing size through the planes, on noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    stack = []
    for z in range(planes):
        plane = rng.normal(20, 8, shape)
        plane += 200 * (((yy - 50) ** 2 + (xx - 60) ** 2) < (20 - 1.5 * abs(z - 3)) ** 2)
        plane += 150 * (((yy - 100) ** 2 + (xx - 125) ** 2) < (15 + z) ** 2)
        stack.append(np.clip(plane, 0, 255).astype(np.uint8))
    return np.stack(stack)


@pytest.fixture(scope="module")
def models_256():
    return reference_model(256)


def check_image_predictor(ref, ours, size):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    rng = np.random.default_rng(1)
    image = (rng.random((150, 210, 3)) * 80).astype(np.uint8)  # not square: stretched to size
    image[50:100, 75:130] = 220
    reference = SAM2ImagePredictor(ref)
    reference._bb_feat_sizes = [(size // 4,) * 2, (size // 8,) * 2, (size // 16,) * 2]
    reference.set_image(image)
    predictor = Predictor(ours)
    predictor.set_image(image)
    # sam2 takes (x, y), we take (row, col): the flip is part of what is tested.
    cases = [
        (dict(point_coords=np.array([[100.0, 75.0]]), point_labels=np.array([1])),
         dict(points=[[75.0, 100.0]], labels=[1])),
        (dict(box=np.array([75.0, 50.0, 130.0, 100.0])), dict(box=[50.0, 75.0, 100.0, 130.0])),
        (dict(point_coords=np.array([[100.0, 75.0], [5.0, 5.0]]), point_labels=np.array([1, 0]),
              box=np.array([75.0, 50.0, 130.0, 100.0])),
         dict(points=[[75.0, 100.0], [5.0, 5.0]], labels=[1, 0], box=[50.0, 75.0, 100.0, 130.0])),
    ]
    for theirs, mine in cases:
        for multimask in (True, False):
            masks_r, scores_r, logits_r = reference.predict(**theirs, multimask_output=multimask)
            masks, scores, logits = predictor.predict(**mine, multimask=multimask)
            np.testing.assert_allclose(scores, scores_r, atol=TOL)
            np.testing.assert_allclose(logits, logits_r, atol=TOL)
            assert (masks == masks_r).mean() >= MASK_AGREEMENT
            assert 0.05 < masks.mean() < 0.95 or not multimask  # not a trivial answer
    # A mask prompt: the logits of an answer fed back with the click.
    _, _, logits = predictor.predict(points=[[75.0, 100.0]], multimask=False)
    masks_r, scores_r, logits_r = reference.predict(
        point_coords=np.array([[100.0, 75.0]]), point_labels=np.array([1]), mask_input=logits,
        multimask_output=False)
    masks, scores, logits = predictor.predict(points=[[75.0, 100.0]], mask_input=logits[0],
                                              multimask=False)
    np.testing.assert_allclose(scores, scores_r, atol=TOL)
    np.testing.assert_allclose(logits, logits_r, atol=TOL)
    assert (masks == masks_r).mean() >= MASK_AGREEMENT


def test_image_predictor_equals_sam2(models_256):
    check_image_predictor(*models_256, 256)


@pytest.mark.slow
def test_image_predictor_equals_sam2_at_1024():
    check_image_predictor(*reference_model(1024), 1024)


def check_propagation(ref, ours, size):
    """Two objects prompted on different planes (a click, a box), followed up then down."""
    import sam2.sam2_video_predictor as video

    stack = discs_stack()
    planes, (h, w) = len(stack), stack.shape[1:]
    frames = []
    for plane in stack:  # sam2's frames: stretched to the input, 0-1, ImageNet-normalised
        x = torch.as_tensor(np.repeat(plane[..., None], 3, -1)).permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, (size, size), mode="bilinear", antialias=True)
        frames.append((x[0] / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None])
                       / torch.tensor([0.229, 0.224, 0.225])[:, None, None])
    frames = torch.stack(frames)
    original = video.load_video_frames
    video.load_video_frames = lambda **kwargs: (frames, h, w)
    try:
        with torch.inference_mode():
            state = ref.init_state("frames")
            ref.add_new_points_or_box(state, frame_idx=2, obj_id=1, points=[[60, 50]], labels=[1])
            ref.add_new_points_or_box(state, frame_idx=5, obj_id=7, box=[105, 80, 145, 120])
            expected = {}
            for reverse in (False, True):
                for plane, ids, masks in ref.propagate_in_video(state, reverse=reverse):
                    scores = []
                    for index in range(len(ids)):
                        outputs = state["output_dict_per_obj"][index]
                        out = outputs["cond_frame_outputs"].get(plane) or \
                            outputs["non_cond_frame_outputs"][plane]
                        scores.append(float(out["object_score_logits"]))
                    expected[plane, reverse] = (masks[:, 0].numpy().copy(), np.array(scores))
    finally:
        video.load_video_frames = original

    def features_for(plane):  # the same normalised frames: this compares the networks
        return ours.encode_image(frames[plane : plane + 1])

    predictor = Predictor(ours)  # and our own preprocessing gives the same frames
    predictor.set_image(stack[0])
    reference_features = ours.encode_image(frames[:1]).features
    torch.testing.assert_close(predictor.embedding.features, reference_features, atol=TOL, rtol=0)

    tracker = PlaneTracker(ours, n_planes=planes, plane_shape=(h, w), features_for=features_for,
                           fill_hole_area=0, end_after=None)
    tracker.add_prompt(2, 1, points=[[50, 60]])
    tracker.add_prompt(5, 7, box=[80, 105, 120, 145])
    found = {}
    for reverse in (False, True):
        for tracked in tracker.propagate(reverse=reverse):
            assert tracked.object_ids == [1, 7]
            found[tracked.plane, reverse] = (tracked.logits, tracked.object_scores)
    assert sorted(found) == sorted(expected)
    assert len(found) == planes + 1  # up from plane 2 to 7, then down from 2 to 0
    for key, (logits_r, scores_r) in expected.items():
        logits, scores = found[key]
        np.testing.assert_allclose(scores, scores_r, atol=TOL)
        np.testing.assert_allclose(logits, logits_r, atol=TOL)
        for k in range(2):
            assert ((logits[k] > 0) == (logits_r[k] > 0)).mean() >= MASK_AGREEMENT, key


@pytest.mark.slow  # a minute: the image predictor's test above is the fast check of the parts
def test_propagation_equals_sam2(models_256):
    check_propagation(*models_256, 256)


@pytest.mark.slow
def test_propagation_equals_sam2_at_512():
    check_propagation(*reference_model(512), 512)
