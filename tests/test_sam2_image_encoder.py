"""SAM 2.1's image encoder (Hiera + FPN neck) against Meta's ``sam2`` on random weights."""

from __future__ import annotations

import copy
import importlib.resources

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.sam2.hiera import (
    bicubic_resize,
    max_pool2,
    window_partition,
    window_unpartition,
)
from napari_sam.models.sam2.image_encoder import Sam2ImageEncoder, build_hiera_encoder

# Largest absolute difference allowed between our outputs and sam2's (float32, features of
# magnitude ~40: a few float32 rounding steps through the attention blocks).
TOLERANCE = 1e-4

# One thread: on a shared CPU, every op of a small model waits for a descheduled second thread.
pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG_NAMES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def reference_encoder(size: str, monkeypatch=None):
    """Meta's image encoder of ``size``, built from sam2's own config file.

    With ``monkeypatch``, linear and convolution weights are left uninitialised (fast, for
    comparing layouts only)."""
    sam2 = pytest.importorskip("sam2")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = importlib.resources.files(sam2) / f"configs/sam2.1/sam2.1_hiera_{CONFIG_NAMES[size]}.yaml"
    if monkeypatch is not None:
        monkeypatch.setattr(nn.Linear, "reset_parameters", lambda self: None)
        monkeypatch.setattr(nn.Conv2d, "reset_parameters", lambda self: None)
    return instantiate(OmegaConf.load(path).model.image_encoder)


def randomised_pair(size: str, seed: int = 0):
    """sam2's and our encoder of ``size`` with the same random weights, in eval mode.

    Every parameter is moved noticeably off its initial value (the position embeddings start
    at zero, the layer norms at one and zero)."""
    torch.manual_seed(seed)  # sam2's own initialisation
    reference = reference_encoder(size)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    ours = build_hiera_encoder(size)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.fixture(scope="module")
def tiny_pair():
    return randomised_pair("tiny")


@pytest.fixture(scope="module")
def small_pair():
    return randomised_pair("small")


def max_differences(expected: dict, got: dict) -> dict:
    """Largest absolute difference of every output, by name."""
    assert set(got) == set(expected) == {"vision_features", "vision_pos_enc", "backbone_fpn"}
    out = {"vision_features": (got["vision_features"] - expected["vision_features"]).abs().max()}
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(got[key]) == len(expected[key]) == 3
        for level, (a, b) in enumerate(zip(expected[key], got[key])):
            assert a.shape == b.shape and a.dtype == b.dtype
            out[f"{key}[{level}]"] = (a - b).abs().max()
    return {key: float(value) for key, value in out.items()}


def assert_parity(pair, shape: tuple[int, ...]):
    reference, ours = pair
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = reference(x), ours(x)
    differences = max_differences(expected, got)
    assert max(differences.values()) < TOLERANCE, differences
    b, _, h, w = shape
    assert got["vision_features"].shape == (b, 256, h // 16, w // 16)
    assert [t.shape[-2:] for t in got["backbone_fpn"]] == [(h // s, w // s) for s in (4, 8, 16)]
    assert got["vision_features"] is got["backbone_fpn"][-1]


@pytest.mark.parametrize("size", sorted(CONFIG_NAMES))
def test_state_dict_layout_is_sam2s_for_every_size(size, monkeypatch):
    reference = reference_encoder(size, monkeypatch)
    with torch.device("meta"):
        ours = build_hiera_encoder(size)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in ours.state_dict().items()} == expected
    # The real loading path (assign: no copy of the weights).
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    assert ours.trunk.channel_list == reference.trunk.channel_list
    assert ours.neck.backbone_channel_list == reference.neck.backbone_channel_list


@pytest.mark.parametrize("shape", [
    (2, 3, 256, 256),  # the late stages' windows need padding (grids 16 and 8)
    (1, 3, 256, 384),  # not square
])
def test_tiny_outputs_equal_sam2s_on_random_weights(tiny_pair, shape):
    assert_parity(tiny_pair, shape)


def test_small_outputs_equal_sam2s_on_random_weights(small_pair):
    assert_parity(small_pair, (1, 3, 256, 256))


@pytest.mark.slow
@pytest.mark.parametrize("side", [512, 1024])
def test_tiny_outputs_equal_sam2s_at_full_size(tiny_pair, side):
    assert_parity(tiny_pair, (1, 3, side, side))


def test_gradients_equal_sam2s(tiny_pair):
    # In float64: max pooling sends each gradient to the largest of four values, and in float32
    # near-ties among random activations could be resolved differently by the two sides.
    pair = [copy.deepcopy(model).double().train() for model in tiny_pair]
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weights = [torch.randn(1, 256, 64 // s, 64 // s, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(s)) for s in (4, 8, 16)]
    for model in pair:
        loss = sum((f * w).sum() for f, w in zip(model(x)["backbone_fpn"], weights))
        loss.backward()
    for (name, expected), (our_name, got) in zip(*(m.named_parameters() for m in pair)):
        assert our_name == name and got.grad is not None
        # (sam2 upsamples the top-down path in float32, hence not 1e-12.)
        scale = expected.grad.abs().max()
        assert (got.grad - expected.grad).abs().max() <= 1e-5 * (1 + scale), name


def test_bfloat16_runs():
    torch.manual_seed(0)
    encoder = build_hiera_encoder("tiny", img_size=128).eval().to(torch.bfloat16)
    with torch.inference_mode():
        out = encoder(torch.randn(1, 3, 128, 128, dtype=torch.bfloat16))
    assert out["vision_features"].dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in out["backbone_fpn"] + out["vision_pos_enc"])
    assert torch.isfinite(out["vision_features"].float()).all()


def test_builder_settings_and_errors():
    encoder = build_hiera_encoder("tiny", img_size=512)
    assert isinstance(encoder, Sam2ImageEncoder) and encoder.img_size == 512
    with pytest.raises(ValueError, match="unknown SAM 2.1 size"):
        build_hiera_encoder("huge")
    with pytest.raises(ValueError, match="multiple of 32"):
        build_hiera_encoder("tiny", img_size=1000)
    with pytest.raises(ValueError, match="multiples of 32"), torch.inference_mode():
        encoder(torch.zeros(1, 3, 96, 80))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 5, 2)])
def test_max_pool2_is_max_pool2d(shape):
    x = torch.randn(shape)
    expected = nn.MaxPool2d(2)(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.equal(max_pool2(x), expected)


def test_window_partition_round_trip_with_padding():
    x = torch.randn(2, 10, 13, 3)
    windows, grid = window_partition(x, 4)
    assert windows.shape == (2 * 3 * 4, 4, 4, 3) and grid == (3, 4)
    assert torch.equal(windows[5], x[0, 4:8, 4:8])  # second row of windows, second column
    assert torch.equal(window_unpartition(windows, grid, (10, 13)), x)


def test_bicubic_resize_is_interpolate():
    x = torch.randn(1, 5, 7, 6)
    expected = F.interpolate(x, size=(32, 24), mode="bicubic")
    assert torch.allclose(bicubic_resize(x, 32, 24), expected, atol=1e-5)
