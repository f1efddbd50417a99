"""SAM 2's prompt encoder and mask decoder against Meta's ``sam2`` (random weights).

Both sides load one random state dict and see the same inputs (float32, CPU). Tolerance 1e-5:
absolute for IoU, mask tokens, object score logits and prompt embeddings; for mask logits
(which reach 10-20 here) relative to the largest of them.
"""

from __future__ import annotations

import math

import pytest
import torch

from napari_sam.models.mask_decoder import MaskDecoder
from napari_sam.models.prompt_encoder import PromptEncoder
from napari_sam.models.sam2.mask_decoder import build_sam2_heads, points_with_box
from napari_sam.models.transformer import TwoWayTransformer

sam2 = pytest.importorskip("sam2")
from sam2.modeling.sam.mask_decoder import MaskDecoder as RefMaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder as RefPromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer as RefTwoWayTransformer

TOL = 1e-5
DIM = 256
GRID = 16  # embedding side in the decoder tests (SAM 2.1 uses 64 at 1024 px; 16 keeps them fast)


def reference_heads(image_size: int = 1024, backbone_stride: int = 16):
    """sam2's prompt encoder and mask decoder, configured as SAM2Base and build_sam build them."""
    side = image_size // backbone_stride
    prompt_encoder = RefPromptEncoder(
        embed_dim=DIM, image_embedding_size=(side, side),
        input_image_size=(image_size, image_size), mask_in_chans=16,
    )
    decoder = RefMaskDecoder(
        num_multimask_outputs=3,
        transformer=RefTwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=DIM, iou_head_depth=3, iou_head_hidden_dim=256,
        use_high_res_features=True, iou_prediction_use_sigmoid=True, pred_obj_scores=True,
        pred_obj_scores_mlp=True, use_multimask_token_for_obj_ptr=True,
        dynamic_multimask_via_stability=True, dynamic_multimask_stability_delta=0.05,
        dynamic_multimask_stability_thresh=0.98,
    )
    return prompt_encoder, decoder


def random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights of a sane scale: matrices std 1/sqrt(fan_in), norm scales near 1, small
    biases; the prompt encoder's random Fourier matrix is kept (random already)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in module.state_dict().items():
        if name.endswith("positional_encoding_gaussian_matrix"):
            state[name] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=gen)
        if value.ndim >= 2:
            state[name] = noise / math.sqrt(value[0].numel())
        elif name.endswith("weight"):
            state[name] = 1.0 + 0.2 * noise
        else:
            state[name] = 0.1 * noise
    return state


def paired_decoders(seed: int = 0):
    """Our decoder and sam2's with the same random weights, in eval mode."""
    _, ref = reference_heads()
    _, ours = build_sam2_heads()
    state = random_state(ref, seed)
    ref.load_state_dict(state)
    ours.load_state_dict(state)
    return ours.eval(), ref.eval()


def decoder_inputs(batch: int, images: int, seed: int):
    """Image embedding, positional encoding, prompts and projected high-res features."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return {
        "image_embeddings": randn(images, DIM, GRID, GRID),
        "image_pe": randn(1, DIM, GRID, GRID),
        "sparse_prompt_embeddings": randn(batch, 3, DIM),
        "dense_prompt_embeddings": 0.5 * randn(batch, DIM, GRID, GRID),
        "high_res_features": [randn(images, DIM // 8, 4 * GRID, 4 * GRID),
                              randn(images, DIM // 4, 2 * GRID, 2 * GRID)],
    }


def stability(logits: torch.Tensor, delta: float = 0.05) -> torch.Tensor:
    """sam2's stability score of masks ``(B, H, W)``, written out."""
    flat = logits.flatten(1)
    inner, outer = (flat > delta).sum(1).float(), (flat > -delta).sum(1).float()
    return torch.where(outer > 0, inner / outer, torch.ones_like(outer))


def make_single_mask_unstable_for_some(ours, ref, inputs, repeat_image: bool) -> torch.Tensor:
    """Scale the single-mask hypernetwork (on both decoders) so that its mask is unstable for
    some prompts and stable for others, with a clear margin; returns the stability scores.

    The mask logits are linear in the hypernetwork's last layer, so one scale ``s`` turns the
    logits ``L`` into ``s * L``; the scale with both kinds of prompts and the largest margin to the
    threshold is chosen.
    """
    with torch.no_grad():
        logits = ref.predict_masks(repeat_image=repeat_image, **_without_multimask(inputs))[0][:, 0]
        best_scale, best_margin = None, 0.0
        for scale in torch.logspace(-2, 3, 201).tolist():
            scores = stability(scale * logits)
            stable = scores >= 0.98
            margin = (scores - 0.98).abs().min().item()
            if stable.any() and not stable.all() and margin > best_margin:
                best_scale, best_margin = scale, margin
        assert best_scale is not None, "no scale makes the single mask unstable for some prompts only"
        for decoder in (ours, ref):
            last = decoder.output_hypernetworks_mlps[0].layers[-1]
            last.weight.mul_(best_scale)
            last.bias.mul_(best_scale)
        return stability(best_scale * logits)


def _without_multimask(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "multimask_output"}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0


def masks_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Mask logits within ``TOL`` of the largest logit (or of 1)."""
    return max_diff(a, b) <= TOL * max(1.0, b.abs().max().item())


def test_state_dicts_have_the_keys_and_shapes_of_sam2():
    ref_prompt, ref_decoder = reference_heads()
    prompt, decoder = build_sam2_heads()

    def layout(module):
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}

    # The prompt encoder is SAM's, unchanged; the decoder's transformer names its MLPs as SAM 2.
    assert layout(prompt) == layout(ref_prompt)
    assert layout(decoder) == layout(ref_decoder)
    ref_transformer = RefTwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=2048, num_heads=8)
    ours_transformer = TwoWayTransformer(depth=2, embedding_dim=DIM, num_heads=8, mlp_dim=2048,
                                         mlp_layout="sam2")
    assert layout(ours_transformer) == layout(ref_transformer)
    assert layout(TwoWayTransformer(depth=2, embedding_dim=DIM, num_heads=8, mlp_dim=2048)) != layout(
        ref_transformer
    )


@pytest.mark.parametrize("repeat_image", [True, False])
@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_matches_sam2(multimask, repeat_image):
    torch.manual_seed(0)
    ours, ref = paired_decoders(seed=1)
    batch = 4
    inputs = decoder_inputs(batch, images=1 if repeat_image else batch, seed=2)
    if not multimask:
        scores = make_single_mask_unstable_for_some(ours, ref, inputs, repeat_image)
        assert (scores >= 0.98).any() and (scores < 0.98).any()
    with torch.no_grad():
        expected = ref(multimask_output=multimask, repeat_image=repeat_image, **inputs)
        answer = ours(multimask_output=multimask, repeat_image=repeat_image, **inputs)
    k = 3 if multimask else 1
    assert answer[0].shape == (batch, k, 4 * GRID, 4 * GRID)
    assert answer[1].shape == (batch, k) and answer[2].shape == (batch, k, DIM)
    assert answer[3].shape == (batch, 1)
    assert masks_close(answer[0], expected[0])
    for name, a, b in zip(("iou_pred", "sam_tokens_out", "object_score_logits"), answer[1:], expected[1:]):
        assert max_diff(a, b) <= TOL, name
    # The outputs are not trivial: logits of both signs, IoU away from 0 and 1.
    assert (expected[0] > 0).any() and (expected[0] < 0).any()
    assert expected[1].std() > 0.01 and expected[3].std() > 0.01
    if not multimask:
        # Where the fallback triggered, the answer is a multimask one, not mask 0.
        with torch.no_grad():
            all_masks = ref.predict_masks(repeat_image=repeat_image, **inputs)[0]
        unstable = scores < 0.98
        assert masks_close(answer[0][~unstable, 0], all_masks[~unstable, 0])
        assert (answer[0][unstable, 0] - all_masks[unstable, 0]).abs().max() > 1.0


def test_split_api_gives_the_answer_of_forward():
    ours, ref = paired_decoders(seed=3)
    batch = 5
    inputs = decoder_inputs(batch, images=1, seed=4)
    stable = make_single_mask_unstable_for_some(ours, ref, inputs, repeat_image=True) >= 0.98
    index = torch.tensor([0, 2, 3])
    assert stable[index].any() and not stable[index].all()
    with torch.no_grad():
        for multimask in (True, False):
            masks, iou, tokens, objects = ours(multimask_output=multimask, repeat_image=True, **inputs)
            context = ours.image_context(
                inputs["image_embeddings"], inputs["image_pe"],
                inputs["dense_prompt_embeddings"], inputs["high_res_features"],
            )
            # IoU first (as the automatic mask generator asks), then masks of some prompts.
            outputs = ours.transform(context, inputs["sparse_prompt_embeddings"])
            assert max_diff(ours.predict_iou(outputs, multimask), iou) <= TOL
            assert masks_close(ours.predict_masks(outputs, multimask, index), masks[index])
            assert max_diff(outputs.object_score_logits, objects) <= TOL
            assert max_diff(ours.sam_tokens(outputs, multimask), tokens) <= TOL
            # A subset with no full pass before; then masks before IoU (as the predictor asks).
            outputs = ours.transform(context, inputs["sparse_prompt_embeddings"])
            assert masks_close(ours.predict_masks(outputs, multimask, index), masks[index])
            assert masks_close(ours.predict_masks(outputs, multimask), masks)
            assert max_diff(ours.predict_iou(outputs, multimask), iou) <= TOL


def test_high_res_features_per_prompt_are_indexed_with_the_prompts():
    ours, _ = paired_decoders(seed=5)
    inputs = decoder_inputs(3, images=3, seed=6)
    index = torch.tensor([2, 0])
    with torch.no_grad():
        masks = ours(multimask_output=True, repeat_image=False, **inputs)[0]
        context = ours.image_context(inputs["image_embeddings"], inputs["image_pe"],
                                     inputs["dense_prompt_embeddings"], inputs["high_res_features"])
        outputs = ours.transform(context, inputs["sparse_prompt_embeddings"])
        assert masks_close(ours.predict_masks(outputs, True, index), masks[index])


def test_training_mode_answers_with_the_single_mask_token_as_sam2():
    ours, ref = paired_decoders(seed=7)
    inputs = decoder_inputs(2, images=2, seed=8)
    make_single_mask_unstable_for_some(ours, ref, inputs, repeat_image=False)
    ours.train(), ref.train()
    with torch.no_grad():
        expected = ref(multimask_output=False, repeat_image=False, **inputs)
        answer = ours(multimask_output=False, repeat_image=False, **inputs)
    assert masks_close(answer[0], expected[0])
    for a, b in zip(answer[1:], expected[1:]):
        assert max_diff(a, b) <= TOL


def test_decoders_refuse_missing_or_unexpected_high_res_features():
    ours, _ = paired_decoders()
    inputs = decoder_inputs(2, images=1, seed=9)
    inputs["high_res_features"] = None
    with pytest.raises(ValueError, match="high_res_features"):
        ours(multimask_output=True, repeat_image=True, **inputs)
    inputs = decoder_inputs(2, images=1, seed=9)
    inputs["high_res_features"] = inputs["high_res_features"][::-1]  # levels swapped
    with pytest.raises(ValueError, match="must be"):
        ours(multimask_output=True, repeat_image=True, **inputs)
    inputs = decoder_inputs(2, images=2, seed=9)
    with pytest.raises(ValueError, match="repeat_image"):
        ours(multimask_output=True, repeat_image=True, **inputs)
    sam1 = MaskDecoder(transformer_dim=DIM, transformer=TwoWayTransformer(
        depth=2, embedding_dim=DIM, num_heads=8, mlp_dim=2048))
    with pytest.raises(ValueError, match="no high_res_features"):
        sam1.image_context(inputs["image_embeddings"], inputs["image_pe"],
                           inputs["dense_prompt_embeddings"], inputs["high_res_features"])


def paired_prompt_encoders(seed: int):
    ref, _ = reference_heads()
    ours = PromptEncoder(embed_dim=DIM, image_embedding_size=(64, 64),
                         input_image_size=(1024, 1024), mask_in_chans=16)
    state = random_state(ref, seed)
    ref.load_state_dict(state)
    ours.load_state_dict(state)
    return ours.eval(), ref.eval()


@pytest.mark.parametrize("with_masks", [False, True])
def test_prompt_encoder_matches_sam2_for_box_corners_clicks_and_padding(with_masks):
    ours, ref = paired_prompt_encoders(seed=10)
    gen = torch.Generator().manual_seed(11)
    batch = 4
    # SAM 2's layout: a box as two corner points (labels 2, 3) before the clicks, -1 padding.
    boxes = torch.sort(torch.rand(batch, 2, 2, generator=gen) * 1023, dim=1).values.reshape(batch, 4)
    clicks = torch.rand(batch, 3, 2, generator=gen) * 1023
    click_labels = torch.randint(-1, 2, (batch, 3), generator=gen)
    click_labels[0] = torch.tensor([-1, 0, 1])  # every label at least once
    coords, labels = points_with_box(clicks, click_labels, boxes)
    assert (labels[:, :2] == torch.tensor([2, 3])).all() and (labels[:, 2:] == click_labels).all()
    assert (coords[:, :2].reshape(batch, 4) == boxes).all()
    labels[1, :2] = -1  # no box for this object: its corner slots are padding
    masks = torch.randn(batch, 1, 256, 256, generator=gen) * 5 if with_masks else None
    with torch.no_grad():
        for points_labels in (labels, labels.float()):
            sparse, dense = ours((coords, points_labels), None, masks)
            ref_sparse, ref_dense = ref((coords, points_labels), None, masks)
            assert sparse.shape == (batch, 6, DIM)  # 5 points and the padding token
            assert max_diff(sparse, ref_sparse) <= TOL
            assert max_diff(dense, ref_dense) <= TOL
        assert max_diff(ours.get_dense_pe(), ref.get_dense_pe()) <= TOL
        # A box alone, and a mask alone (no sparse tokens, as sam2's image predictor gives).
        box_points = points_with_box(None, None, boxes)
        for points in (box_points, None):
            sparse, dense = ours(points, None, masks)
            ref_sparse, ref_dense = ref(points, None, masks)
            assert max_diff(sparse, ref_sparse) <= TOL and max_diff(dense, ref_dense) <= TOL
        assert points_with_box(None, None, None) is None
