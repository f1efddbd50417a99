"""The models napari-sam knows: architectures, and where their official weights live."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from torch import nn

from napari_sam.models.image_encoder import ImageEncoderViT
from napari_sam.models.instance_decoder import InstanceDecoder
from napari_sam.models.mask_decoder import MaskDecoder
from napari_sam.models.prompt_encoder import PromptEncoder
from napari_sam.models.sam import Sam
from napari_sam.models.tiny_vit import TinyViT
from napari_sam.models.transformer import TwoWayTransformer


def build_sam(
    image_encoder: nn.Module,
    *,
    embedding_size: int,
    prompt_embed_dim: int = 256,
    decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8,
    iou_head_hidden_dim: int = 256,
) -> Sam:
    """Compose a :class:`Sam` around an image encoder.

    Parameters
    ----------
    image_encoder : nn.Module
        Has ``img_size`` and returns ``(B, prompt_embed_dim, embedding_size, embedding_size)``.
    embedding_size : int
        Side of the image embedding grid.
    prompt_embed_dim, decoder_mlp_dim, decoder_heads, iou_head_hidden_dim : int
        Width of prompt and decoder tokens, decoder MLP width and heads, IoU head width.
    """
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_encoder.img_size, image_encoder.img_size),
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=prompt_embed_dim,
                num_heads=decoder_heads,
                mlp_dim=decoder_mlp_dim,
            ),
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
    )


def build_sam_vit(
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
) -> Sam:
    """A SAM with a ViT image encoder (Meta's vit_b/l/h, or a smaller configuration)."""
    encoder = ImageEncoderViT(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        out_chans=prompt_embed_dim,
        window_size=window_size,
        global_attn_indexes=global_attn_indexes,
    )
    return build_sam(
        encoder,
        embedding_size=img_size // patch_size,
        prompt_embed_dim=prompt_embed_dim,
        decoder_mlp_dim=decoder_mlp_dim,
        decoder_heads=decoder_heads,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )


def build_sam_nuclei_s() -> Sam:
    """The project's small default model: a 4.8M-parameter SAM at 256 x 256 input.

    A 3-stage TinyViT encoder (widths 48 / 96 / 192, two blocks each: a convolutional stage at
    1/4 of the image, attention stages with 8 x 8 windows at 1/8 and 1/16) gives a 16 x 16
    embedding for SAM's prompt encoder and mask decoder (width 256, decoder MLP 1024, IoU head
    128). MobileSAM's TinyViT and Meta's prompt encoder and mask decoder configure to exactly
    this architecture (the parity tests do), so its checkpoint loads in both.
    """
    encoder = TinyViT(img_size=256, embed_dims=(48, 96, 192), depths=(2, 2, 2), num_heads=(1, 3, 6),
                      window_sizes=(7, 8, 8), num_classes=0)
    return build_sam(encoder, embedding_size=16, decoder_mlp_dim=1024, iou_head_hidden_dim=128)


def build_sam_vit_t() -> Sam:
    """MobileSAM: the TinyViT encoder with SAM's prompt encoder and mask decoder."""
    return build_sam(TinyViT(img_size=1024), embedding_size=64)


def build_instance_decoder(
    sam: Sam, *, transposed: bool = False, image_statistics: bool = True
) -> InstanceDecoder:
    """The instance decoder (AIS) for ``sam``'s image encoder, with random weights.

    Its input width is the channel count of the image embedding. Its output grid is 16 times
    the embedding's, which is the model input for every registry encoder (patch size 16);
    :meth:`Sam.postprocess_masks` maps the maps to the model input, then to the image.

    Parameters
    ----------
    sam : Sam
        The model whose image embeddings the decoder reads.
    transposed, image_statistics : bool
        Upsampling and normalisation variants, see :class:`InstanceDecoder`.
    """
    return InstanceDecoder(
        embed_dim=sam.prompt_encoder.embed_dim,
        transposed=transposed,
        image_statistics=image_statistics,
    )


@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it and where its official checkpoint lives.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"vit_b"``.
    build : callable
        Returns the network with random weights.
    url, sha256 : str or None
        Download address and checksum of the official checkpoint.
    description : str
        One line for menus and ``--help``.
    packaged : str or None
        File name of weights shipped inside the package (``napari_sam/weights``), if any.
    automatic : dict
        :class:`~napari_sam.AutomaticMaskGenerator` settings that suit this model where they
        differ from Meta's defaults (tuned for vit_h), the sampler included; the one path
        (:class:`~napari_sam.Segmenter`: the command line, the plugin, stacks) uses them unless
        told otherwise.
    diameter : float or None
        Object diameter, in pixels of the model input, that the model segments best: the one
        path resamples planes so that their objects arrive at this size. None: the model has no
        preferred size, and planes keep their pixels.
    diameter_range : (float, float) or None
        The diameters the model was trained on (informative).
    """

    name: str
    build: Callable[[], Sam]
    url: str | None
    sha256: str | None
    description: str
    packaged: str | None = None
    automatic: Mapping[str, float | str] = field(default_factory=dict)
    diameter: float | None = None
    diameter_range: tuple[float, float] | None = None


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="nuclei_s",
            build=build_sam_nuclei_s,
            url=None,
            sha256=None,
            description="napari-sam's own small model for fluorescence nuclei (4.8M parameters, "
            "shipped, runs offline)",
            packaged="nuclei_s.pt",
            # Chosen on validation images (docs/model_card.md): one box per detected nucleus
            # segments them far better than a grid, which keeps parts and near-duplicates at
            # every threshold.
            automatic=dict(pred_iou_thresh=0.5, stability_score_thresh=0.8, sampler="boxes"),
            # Trained on nuclei of radius 4-22 px; on held-out nuclei of one size, point mIoU and
            # automatic F1 rise with the diameter up to about 40 px and fall beyond the training
            # range (docs/benchmarks.md, "Object scale"): 30 px leaves room for larger nuclei.
            diameter=30.0,
            diameter_range=(8.0, 44.0),
        ),
        *(
            ModelSpec(
                name=f"vit_{size}",
                # global attention in the last block of each quarter of the encoder
                build=partial(build_sam_vit, embed_dim=dim, depth=depth, num_heads=heads,
                              global_attn_indexes=tuple(range(depth // 4 - 1, depth, depth // 4))),
                url=f"https://dl.fbaipublicfiles.com/segment_anything/sam_vit_{size}_{file_hash}.pth",
                sha256=sha256,
                description=f"Meta's SAM ViT-{size.upper()} ({about})",
            )
            for size, dim, depth, heads, file_hash, sha256, about in (
                ("b", 768, 12, 12, "01ec64",
                 "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                 "91M parameters, 375 MB"),
                ("l", 1024, 24, 16, "0b3195",
                 "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
                 "308M parameters, 1.2 GB"),
                ("h", 1280, 32, 16, "4b8939",
                 "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
                 "636M parameters, 2.4 GB"),
            )
        ),
        ModelSpec(
            name="vit_t",
            build=build_sam_vit_t,
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            description="MobileSAM TinyViT (10M parameters, 39 MB): fast on a CPU",
        ),
    )
}

# The model used when none is named: the shipped one.
DEFAULT_MODEL = "nuclei_s"
