"""Parity of napari_sam's TinyViT (MobileSAM ``vit_t`` encoder) with mobilesam-mirror's."""

from __future__ import annotations

import warnings

import pytest
import torch

from napari_sam.models.tiny_vit import TinyViT
from reference import random_state

with warnings.catch_warnings():
    # The reference imports deprecated timm paths and re-registers timm model names.
    warnings.simplefilter("ignore")
    reference = pytest.importorskip("mobile_sam.modeling.tiny_vit_sam")

VIT_T = dict(
    embed_dims=(64, 128, 160, 320),
    depths=(2, 2, 6, 2),
    num_heads=(2, 4, 5, 10),
    window_sizes=(7, 7, 14, 7),
)
TOLERANCE = 1e-4


def make_reference(img_size: int) -> torch.nn.Module:
    """The reference encoder exactly as MobileSAM's ``build_sam_vit_t`` makes it."""
    return reference.TinyViT(
        img_size=img_size,
        in_chans=3,
        num_classes=1000,
        embed_dims=list(VIT_T["embed_dims"]),
        depths=list(VIT_T["depths"]),
        num_heads=list(VIT_T["num_heads"]),
        window_sizes=list(VIT_T["window_sizes"]),
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def microscopy_like_image(batch: int, size: int, seed: int) -> torch.Tensor:
    """Smooth blobs on a gradient with a little noise, per channel zero mean and unit variance."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0.0, 1.0, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(batch, 3, size, size)
    for b in range(batch):
        for c in range(3):
            centres = torch.rand(12, 2, generator=gen)
            radii = 0.02 + 0.08 * torch.rand(12, generator=gen)
            heights = 0.5 + torch.rand(12, generator=gen)
            blobs = sum(
                h * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
                for (cy, cx), r, h in zip(centres, radii, heights)
            )
            gradient = 0.5 * (c + 1) * yy - 0.3 * xx
            noise = 0.05 * torch.randn(size, size, generator=gen)
            images[b, c] = blobs + gradient + noise
    mean = images.mean(dim=(2, 3), keepdim=True)
    std = images.std(dim=(2, 3), keepdim=True)
    return (images - mean) / std


def reference_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference's ``forward``, without its hard-coded 64x64 token grid (img_size=1024 only)."""
    tokens = model.patch_embed(x)
    for layer in model.layers:
        tokens = layer(tokens)
    side = x.shape[-1] // 16
    grid = tokens.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2)
    return model.neck(grid)


def build_pair(img_size: int, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Ours and the reference with the same random weights, in eval mode.

    The reference caches its attention bias table when ``eval()`` is called, so the weights
    are loaded before switching to eval mode.
    """
    torch.manual_seed(seed)
    ref = make_reference(img_size)
    state = random_state(ref, seed)
    ref.load_state_dict(state, strict=True)
    ours = TinyViT(img_size=img_size, **VIT_T)
    ours.load_state_dict(state, strict=True)
    return ours.eval(), ref.eval()


def relative_max_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.std()).item()


def test_state_dict_keys_and_shapes_match_reference():
    ours = {k: tuple(v.shape) for k, v in TinyViT().state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in make_reference(1024).state_dict().items()}
    assert ours == ref


def test_state_dicts_load_strictly_in_both_directions():
    ours, ref = TinyViT(), make_reference(1024)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)


@pytest.mark.parametrize(
    "img_size",
    [
        224,  # windows divide every stage; stage 2 (14x14) is one window
        256,  # every attention stage needs padding
    ],
)
def test_parity_with_reference(img_size):
    """Outputs agree to max |ours - ref| <= 1e-4 * std(ref) on a microscopy-like batch."""
    ours, ref = build_pair(img_size)
    x = microscopy_like_image(2, img_size, seed=1)
    with torch.no_grad():
        expected = reference_forward(ref, x)
        actual = ours(x)
    assert actual.shape == (2, 256, img_size // 16, img_size // 16)
    assert relative_max_error(actual, expected) <= TOLERANCE


@pytest.mark.slow
def test_parity_with_reference_full_size():
    """At 1024 the reference's own ``forward`` runs; max |ours - ref| <= 1e-4 * std(ref)."""
    ours, ref = build_pair(1024, seed=2)
    x = microscopy_like_image(1, 1024, seed=3)
    with torch.no_grad():
        expected = ref(x)
        actual = ours(x)
    assert actual.shape == (1, 256, 64, 64)
    assert ours.img_size == 1024
    assert relative_max_error(actual, expected) <= TOLERANCE


def test_wrong_input_shape_is_refused():
    model = TinyViT(img_size=224).eval()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        model(torch.zeros(3, 224, 224))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(img_size=100), "multiple of 16"),
        (dict(depths=(2, 2, 6)), "differ in length"),
        (
            dict(embed_dims=(64, 128), depths=(2, 2), num_heads=(2, 4), window_sizes=(7, 7)),
            "3 stages",
        ),
        (dict(num_heads=(2, 4, 3, 10)), r"embed_dims\[2\]=160"),
        (dict(window_sizes=(7, 0, 14, 7)), "window_sizes must be positive"),
        (dict(num_classes=-1), "num_classes"),
    ],
)
def test_bad_configuration_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinyViT(**kwargs)
