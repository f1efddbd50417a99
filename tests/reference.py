"""Meta's and MobileSAM's reference models for parity tests, and random weights for both."""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch

segment_anything = pytest.importorskip("segment_anything")
with warnings.catch_warnings():
    # MobileSAM imports deprecated timm paths and re-registers timm model names.
    warnings.simplefilter("ignore")
    mobile_sam = pytest.importorskip("mobile_sam")

# Small ViT configurations of our builder (napari_sam.models.registry.build_sam_vit).
SMALL_VIT = dict(
    embed_dim=96, depth=4, num_heads=4, global_attn_indexes=(1, 3), img_size=256, window_size=7
)
VIT_B = dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))


def meta_sam(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
    img_size: int = 1024,
    patch_size: int = 16,
    window_size: int = 14,
    prompt_embed_dim: int = 256,
    decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8,
    iou_head_hidden_dim: int = 256,
):
    """Meta's ``Sam`` configured like ``build_sam_vit(**same arguments)``."""
    encoder = segment_anything.modeling.ImageEncoderViT(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4,
        out_chans=prompt_embed_dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=global_attn_indexes,
    )
    return meta_sam_around(
        encoder,
        embedding_size=img_size // patch_size,
        prompt_embed_dim=prompt_embed_dim,
        decoder_mlp_dim=decoder_mlp_dim,
        decoder_heads=decoder_heads,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )


def meta_sam_around(
    encoder: torch.nn.Module,
    *,
    embedding_size: int,
    prompt_embed_dim: int = 256,
    decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8,
    iou_head_hidden_dim: int = 256,
):
    """Meta's ``Sam`` (prompt encoder, mask decoder) around any image encoder, like ``build_sam``."""
    modeling = segment_anything.modeling
    img_size = encoder.img_size
    return modeling.Sam(
        image_encoder=encoder,
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=2, embedding_dim=prompt_embed_dim, mlp_dim=decoder_mlp_dim, num_heads=decoder_heads
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


class _AnySizeTinyViT(mobile_sam.modeling.TinyViT):
    """MobileSAM's TinyViT; only the final reshape, which MobileSAM writes for a 64 x 64 grid
    (1024 px input), follows the input size. Every stage and the neck are MobileSAM's."""

    def forward_features(self, x):
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        side = self.img_size // 16
        return self.neck(x.view(x.shape[0], side, side, -1).permute(0, 3, 1, 2))


def reference_nuclei_s():
    """The shipped default model's architecture from the references' classes.

    MobileSAM's TinyViT configured like ``build_sam_nuclei_s`` (3 stages at 256 px input), in
    Meta's ``Sam`` with Meta's prompt encoder and mask decoder.
    """
    encoder = _AnySizeTinyViT(img_size=256, embed_dims=[48, 96, 192], depths=[2, 2, 2],
                              num_heads=[1, 3, 6], window_sizes=[7, 8, 8], num_classes=0)
    return meta_sam_around(encoder, embedding_size=16, decoder_mlp_dim=1024, iou_head_hidden_dim=128)


def mobile_sam_vit_t():
    """MobileSAM's ``vit_t`` built by its own registry."""
    return mobile_sam.sam_model_registry["vit_t"]()


def random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every float tensor of ``model``'s state dict replaced by random values of a sane scale.

    Weights get std 1/sqrt(fan_in), norm scales 1 + noise, biases and running means noise,
    running variances uniform in [0.5, 2], attention biases unit normal, absolute position
    embeddings std 0.02. The random Fourier matrix of the prompt encoder is kept: it is random
    already, at the scale the model expects.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        if not value.is_floating_point() or name.endswith("positional_encoding_gaussian_matrix"):
            state[name] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=gen)
        if name.endswith("running_var"):
            state[name] = 0.5 + 1.5 * torch.rand(value.shape, generator=gen)
        elif name.endswith("attention_biases"):
            state[name] = noise
        elif name.endswith("pos_embed"):
            state[name] = 0.02 * noise
        elif value.ndim >= 2:
            state[name] = noise / math.sqrt(value[0].numel())
        elif name.endswith("weight"):
            state[name] = 1.0 + 0.2 * noise
        else:
            state[name] = 0.1 * noise
    return state
