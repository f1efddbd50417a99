"""SAM 2.1's memory encoder and memory attention against Meta's ``sam2`` (random weights).

Tolerance: 1e-4 absolute on every output. Observed: memory attention below 2e-6 when it mixes
the memory before the value projection (CPU inference), 0 under autograd (Meta's order of
operations); the encoder below 5e-6 (outputs up to ~5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_sam.models.sam2.memory_attention import (
    MemoryAttention,
    rope_rotations,
    rotate,
)
from napari_sam.models.sam2.memory_encoder import MemoryEncoder

TOLERANCE = 1e-4


def _sam2_module(name: str):
    """Meta's module ``name`` built from the SAM 2.1 yaml, with every parameter randomised."""
    sam2 = pytest.importorskip("sam2")
    hydra_utils = pytest.importorskip("hydra.utils")
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.load(
        Path(sam2.__file__).parent / "configs/sam2.1/sam2.1_hiera_t.yaml")
    torch.manual_seed(0)
    module = hydra_utils.instantiate(config.model[name]).eval()
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if pname.endswith("gamma"):  # layer scale starts at 1e-6: make the blocks count
                p.copy_(0.5 * torch.randn_like(p))
            elif p.ndim == 1:  # biases and norm weights start at 0 and 1
                p.add_(0.2 * torch.randn_like(p))
            else:
                p.mul_(1.5)
    return module


@pytest.fixture(scope="module")
def attention_pair():
    reference = _sam2_module("memory_attention")
    ours = MemoryAttention().eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.fixture(scope="module")
def encoder_pair():
    reference = _sam2_module("memory_encoder")
    ours = MemoryEncoder().eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _attention_inputs(side: int, batch: int, frames: int, pointer_tokens: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    n, m = side * side, frames * side * side + pointer_tokens
    return (torch.randn(n, batch, 256, generator=g), torch.randn(m, batch, 64, generator=g),
            torch.randn(n, batch, 256, generator=g), torch.randn(m, batch, 64, generator=g))


def _max_diff(reference, ours, side, batch, frames, pointer_tokens, autograd=False) -> float:
    curr, memory, curr_pos, memory_pos = _attention_inputs(side, batch, frames, pointer_tokens)
    with torch.inference_mode():
        expected = reference(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=pointer_tokens)
    # Under autograd our cross-attention takes the fused kernel instead of mixing values first.
    with torch.inference_mode(not autograd):
        got = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=pointer_tokens)
    assert got.shape == expected.shape == curr.shape
    return (got.detach() - expected).abs().max().item()


@pytest.mark.parametrize("batch, frames, pointer_tokens",
                         [(1, 1, 0), (1, 3, 16), (2, 1, 4), (2, 7, 0), (2, 7, 64)])
def test_memory_attention_matches_sam2_on_a_16x16_grid(attention_pair, batch, frames,
                                                       pointer_tokens):
    assert _max_diff(*attention_pair, 16, batch, frames, pointer_tokens) < TOLERANCE


@pytest.mark.parametrize("batch, pointer_tokens", [(1, 0), (2, 16)])
def test_memory_attention_matches_sam2_under_autograd(attention_pair, batch, pointer_tokens):
    assert _max_diff(*attention_pair, 16, batch, 3, pointer_tokens, autograd=True) < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("batch, frames, pointer_tokens", [(1, 1, 0), (2, 7, 64)])
def test_memory_attention_matches_sam2_at_full_size(attention_pair, batch, frames,
                                                    pointer_tokens):
    # 1024 px input: a 64 x 64 grid; up to 7 memory planes and 16 object pointers of 4 tokens.
    assert _max_diff(*attention_pair, 64, batch, frames, pointer_tokens) < TOLERANCE


def test_memory_attention_takes_sam2s_list_inputs_and_gives_the_same(attention_pair):
    _, ours = attention_pair
    curr, memory, curr_pos, memory_pos = _attention_inputs(8, 1, 2, 4)
    with torch.inference_mode():
        listed = ours([curr], memory, [curr_pos], memory_pos, num_obj_ptr_tokens=4)
        plain = ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
    assert torch.equal(listed, plain)


def test_memory_attention_refuses_mismatched_inputs(attention_pair):
    _, ours = attention_pair
    curr, memory, curr_pos, memory_pos = _attention_inputs(8, 1, 2, 4)
    with pytest.raises(ValueError, match="batch size"):
        ours(curr, memory[:, [0, 0]], curr_pos, memory_pos[:, [0, 0]], num_obj_ptr_tokens=4)
    with pytest.raises(ValueError, match="keys to rotate"):  # pointers miscounted
        ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=3)
    with pytest.raises(ValueError, match="square"):
        ours(curr[:60], memory, curr_pos[:60], memory_pos, num_obj_ptr_tokens=4)


def test_memory_attention_runs_on_a_rectangular_grid_given_its_size(attention_pair):
    _, ours = attention_pair
    g = torch.Generator().manual_seed(2)
    curr, pos = torch.randn(2, 8 * 12, 1, 256, generator=g)
    memory, memory_pos = torch.randn(2, 3 * 8 * 12 + 4, 1, 64, generator=g)
    with torch.inference_mode():
        out = ours(curr, memory, pos, memory_pos, num_obj_ptr_tokens=4, size=(8, 12))
    assert out.shape == curr.shape and torch.isfinite(out).all()


def test_rotated_dot_products_depend_only_on_the_offset_between_tokens():
    # RoPE's defining property, on a rectangular grid: q at (r, c) against k at (r + dr, c + dc)
    # gives the same score wherever (r, c) is; columns and rows are not swapped.
    height, width, dim = 5, 7, 16
    rotations = rope_rotations(dim, height, width)
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, dim, generator=g)
    q_rot = rotate(q.expand(height * width, dim), rotations).view(height, width, dim)
    k_rot = rotate(k.expand(height * width, dim), rotations).view(height, width, dim)
    for dr, dc in [(0, 1), (1, 0), (2, 3)]:
        scores = (q_rot[: height - dr, : width - dc] * k_rot[dr:, dc:]).sum(-1)
        assert torch.allclose(scores, scores[0, 0], atol=1e-5)
    # Rows and columns differ: the offset (0, 1) scores unlike (1, 0).
    assert not torch.allclose((q_rot[0, 0] * k_rot[0, 1]).sum(), (q_rot[0, 0] * k_rot[1, 0]).sum())


def test_real_rotations_used_on_mps_equal_the_complex_ones():
    complex_rotations = rope_rotations(64, 4, 6)
    real_rotations = torch.view_as_real(complex_rotations)  # cosines and sines, as on MPS
    x = torch.randn(2, 3 * 24, 64, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(rotate(x, real_rotations), rotate(x, complex_rotations), atol=1e-6)


def test_rotations_are_cached_per_size_and_device():
    assert rope_rotations(256, 16, 16) is rope_rotations(256, 16, 16, device=torch.device("cpu"))
    assert rope_rotations(256, 64, 64).shape == (4096, 128)
    assert rope_rotations(256, 16, 16).shape == (256, 128)


@pytest.mark.parametrize("skip_mask_sigmoid", [False, True])
def test_memory_encoder_matches_sam2(encoder_pair, skip_mask_sigmoid):
    reference, ours = encoder_pair
    g = torch.Generator().manual_seed(4)
    features = torch.randn(2, 256, 16, 16, generator=g)
    masks = 4 * torch.randn(2, 1, 256, 256, generator=g)
    if skip_mask_sigmoid:
        masks = (masks > 0).float()
    with torch.inference_mode():
        expected = reference(features, masks, skip_mask_sigmoid=skip_mask_sigmoid)
        got = ours(features, masks, skip_mask_sigmoid=skip_mask_sigmoid)
    assert got.keys() == expected.keys()
    assert got["vision_features"].shape == (2, 64, 16, 16)
    assert (got["vision_features"] - expected["vision_features"]).abs().max() < TOLERANCE
    (pos,), (expected_pos,) = got["vision_pos_enc"], expected["vision_pos_enc"]
    assert torch.equal(pos, expected_pos)


def test_state_dicts_load_both_ways(attention_pair, encoder_pair):
    for reference, ours in (attention_pair, encoder_pair):
        assert ours.state_dict().keys() == reference.state_dict().keys()
        reference.load_state_dict(ours.state_dict(), strict=True)


def test_memory_attention_backpropagates_after_running_in_inference_mode(attention_pair):
    # The cached rotation tables must not be inference tensors.
    _, ours = attention_pair
    curr, memory, curr_pos, memory_pos = _attention_inputs(4, 1, 2, 4)
    with torch.inference_mode():
        ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
    ours(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4).sum().backward()
    assert ours.layers[0].cross_attn_image.k_proj.weight.grad is not None
    ours.zero_grad(set_to_none=True)
