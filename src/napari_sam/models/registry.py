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
from napari_sam.models.sam2.image_encoder import build_hiera_encoder
from napari_sam.models.sam2.mask_decoder import build_sam2_heads
from napari_sam.models.sam2.memory_attention import MemoryAttention
from napari_sam.models.sam2.memory_encoder import MemoryEncoder
from napari_sam.models.sam2.model import Sam2
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


def build_sam2_1(size: str, img_size: int = 1024) -> Sam2:
    """SAM 2.1 with a Hiera image encoder of ``size`` ("tiny", "small", "base_plus", "large").

    ``img_size`` other than 1024 gives the same weights a smaller input (for tests; the official
    models were trained at 1024).
    """
    prompt_encoder, mask_decoder = build_sam2_heads(image_size=img_size)
    return Sam2(image_encoder=build_hiera_encoder(size, img_size=img_size),
                memory_attention=MemoryAttention(), memory_encoder=MemoryEncoder(),
                sam_prompt_encoder=prompt_encoder, sam_mask_decoder=mask_decoder)


def build_instance_decoder(
    sam: Sam, *, features: int = 64, transposed: bool = False, image_statistics: bool = True
) -> InstanceDecoder:
    """The instance decoder (AIS) for ``sam``'s image encoder, with random weights.

    Its input width is the channel count of the image embedding. Its output grid is 16 times
    the embedding's, which is the model input for every registry encoder (patch size 16);
    :meth:`Sam.postprocess_masks` maps the maps to the model input, then to the image.

    Parameters
    ----------
    sam : Sam
        The model whose image embeddings the decoder reads.
    features : int
        Width of the finest level (micro-sam's decoders: 64).
    transposed, image_statistics : bool
        Upsampling and normalisation variants, see :class:`InstanceDecoder`.
    """
    return InstanceDecoder(
        embed_dim=sam.prompt_encoder.embed_dim,
        features=features,
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
    url, known_hash : str or None
        Download address and checksum of the official checkpoint, the hash as its publisher
        gives it (``"sha256:..."``, ``"xxh128:..."``).
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
    max_enlargement : float or None
        Most the one path enlarges a noisy plane for this model (its small objects then arrive
        under ``diameter``): enlarging turns pixel noise into blobs the model never saw in
        training (:func:`~napari_sam.engine.scale.resample_factor`). None: no limit.
    decoder_url, decoder_hash : str or None
        Download address and checksum of the model's instance decoder (AIS), if it has one.
    decoder_packaged : str or None
        File name of an instance decoder shipped inside the package, if any.
    mode : {"amg", "ais", "apg"}
        The automatic mode that suits the model: prompts sampled over the image ("amg"), or,
        with an instance decoder, its maps ("ais") or prompts taken from them ("apg").
    stack_mode : {"amg", "ais", "apg"} or None
        The automatic mode that suits the model on the planes of a stack
        (:func:`~napari_sam.volume.segment_stack`, assembled into 3D objects), where it differs
        from ``mode``.
    edge_level : float or None
        For a model of fluorescent objects: the objects its automatic modes find are snapped to
        where the plane crosses this share of their contrast
        (:func:`~napari_sam.engine.outlines.snap_outlines`). None: outlines as drawn.
    """

    name: str
    build: Callable[[], Sam | Sam2]
    url: str | None
    known_hash: str | None
    description: str
    packaged: str | None = None
    automatic: Mapping[str, float | str] = field(default_factory=dict)
    diameter: float | None = None
    diameter_range: tuple[float, float] | None = None
    max_enlargement: float | None = None
    decoder_url: str | None = None
    decoder_hash: str | None = None
    decoder_packaged: str | None = None
    mode: str = "amg"
    stack_mode: str | None = None
    edge_level: float | None = None


# Meta's ViTs: embedding width, depth and heads; global attention in the last block of each
# quarter of the encoder.
META_VITS = {"vit_b": (768, 12, 12), "vit_l": (1024, 24, 16), "vit_h": (1280, 32, 16)}
BUILDERS: dict[str, Callable[[], Sam]] = {
    **{name: partial(build_sam_vit, embed_dim=dim, depth=depth, num_heads=heads,
                     global_attn_indexes=tuple(range(depth // 4 - 1, depth, depth // 4)))
       for name, (dim, depth, heads) in META_VITS.items()},
    "vit_t": build_sam_vit_t,
}
MICRO_SAM_FILES = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="nuclei_s",
            build=build_sam_nuclei_s,
            url=None,
            known_hash=None,
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
            # Noisy nuclei under 12 px enlarged to 30 px: the noise enlarged 3x into blobs, the
            # nuclei cut along them. Noisy planes enlarged at most 2.5x: automatic F1 (AIS) on
            # noisy nuclei of 8-12 px 0.600 -> 0.767, held-out synthetic sets 0.866 -> 0.919
            # (docs/benchmarks.md, "Object scale").
            max_enlargement=2.5,
            decoder_packaged="nuclei_s_decoder.pt",
            # Its decoder's one pass beats its best prompt sampling on held-out synthetic sets
            # and on the real DSB image, in a fraction of the time (docs/benchmarks.md).
            mode="ais",
            # On z stacks, its prompts drawn by SAM's decoder give whole cross-sections plane
            # after plane, which the 3D assembly needs: 3D F1@0.5 on StarDist's stack 0.849 with
            # APG, 0.793 with AIS; on the synthetic confocal stacks 0.940 and 0.955 on average
            # (docs/benchmarks.md, "3D objects from z stacks").
            stack_mode="apg",
            # Its objects drawn wide (1.23x the area of DSB's human outlines): snapped to their
            # blurred edge, F1 on the DSB image 0.798 -> 0.857 with AIS, 0.675 -> 0.808 with
            # APG, 0.646 -> 0.779 with AMG boxes (docs/benchmarks.md, "Outlines").
            edge_level=0.4,
        ),
        *(
            ModelSpec(
                name=name,
                build=BUILDERS[name],
                url=f"https://dl.fbaipublicfiles.com/segment_anything/sam_{name}_{file_hash}.pth",
                known_hash=f"sha256:{sha256}",
                description=f"Meta's SAM ViT-{name[-1].upper()} ({about})",
            )
            for name, file_hash, sha256, about in (
                ("vit_b", "01ec64",
                 "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                 "91M parameters, 375 MB"),
                ("vit_l", "0b3195",
                 "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
                 "308M parameters, 1.2 GB"),
                ("vit_h", "4b8939",
                 "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
                 "636M parameters, 2.4 GB"),
            )
        ),
        ModelSpec(
            name="vit_t",
            build=BUILDERS["vit_t"],
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            known_hash="sha256:6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            description="MobileSAM TinyViT (10M parameters, 39 MB): fast on a CPU",
        ),
        # micro-sam's models (Archit et al., Nature Methods 2025): Meta's and MobileSAM's
        # fine-tuned on light microscopy (cells, nuclei) and electron microscopy (organelles),
        # each with an instance decoder; files and xxh128 hashes as micro-sam 1.8.14 lists them.
        *(
            ModelSpec(
                name=f"{base}_{domain}",
                build=BUILDERS[base],
                url=f"{MICRO_SAM_FILES}/{record}/files/{base}.pt",
                known_hash=f"xxh128:{model_hash}",
                description=f"micro-sam's {base} for {subject}, with an instance decoder",
                decoder_url=f"{MICRO_SAM_FILES}/{record}/files/{base}_decoder.pt",
                decoder_hash=f"xxh128:{decoder_hash}",
                mode="ais",  # micro-sam's own default for a model with a decoder
            )
            for base, domain, subject, record, model_hash, decoder_hash in (
                ("vit_t", "lm", "light microscopy", "faithful-chicken/1.1",
                 "72ec5074774761a6e5c05a08942f981e", "3e914a5f397b0312cdd36813031f8823"),
                ("vit_b", "lm", "light microscopy", "diplomatic-bug/1.2",
                 "fe9252a29f3f4ea53c15a06de471e186", "708b15ac620e235f90bb38612c4929ba"),
                ("vit_l", "lm", "light microscopy", "idealistic-rat/1.2",
                 "017f20677997d628426dec80a8018f9d", "2faeafa03819dfe03e7c46a44aaac64a"),
                ("vit_t", "em_organelles", "organelles in electron microscopy", "greedy-whale/1",
                 "253474720c497cce605e57c9b1d18fd9", "8f897c7bb93174a4d1638827c4dd6f44"),
                ("vit_b", "em_organelles", "organelles in electron microscopy", "noisy-ox/1.2",
                 "f3bf2ed83d691456bae2c3f9a05fb438", "bb6398956a6b0132c26b631c14f95ce2"),
                ("vit_l", "em_organelles", "organelles in electron microscopy",
                 "humorous-crab/1.2", "810b084b6e51acdbf760a993d8619f2d",
                 "334877640bfdaaabce533e3252a17294"),
            )
        ),
        # Meta's SAM 2.1 (Ravi et al., 2024): Hiera encoders with a memory that follows objects
        # through a video, here through the planes of a stack. Meta publishes no checksums for
        # these files: a download is checked by its keys and shapes only.
        *(
            ModelSpec(
                name=f"sam2.1_hiera_{size}",
                build=partial(build_sam2_1, size),
                url=f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{size}.pt",
                known_hash=None,
                description=f"Meta's SAM 2.1 Hiera-{label} ({about}): follows objects through "
                "the planes of a stack",
            )
            for size, label, about in (
                ("tiny", "T", "39M parameters, 156 MB"),
                ("small", "S", "46M parameters, 184 MB"),
                ("base_plus", "B+", "81M parameters, 324 MB"),
                ("large", "L", "224M parameters, 898 MB"),
            )
        ),
    )
}

MODES = ("amg", "ais", "apg")


def automatic_mode(model, mode: str | None = None, *, stack: bool = False) -> str:
    """``mode``, or the automatic mode that suits a loaded ``model`` (its registry spec's; "amg"
    for a model the registry does not name), with ``stack`` on the planes of a z stack (the
    spec's ``stack_mode`` where it has one); refuses an unknown mode."""
    spec = MODELS.get(getattr(model, "name", None) or "")
    if spec is None:
        mode = mode or "amg"
    else:
        mode = mode or (stack and spec.stack_mode) or spec.mode
    if mode not in MODES:
        raise ValueError(f"unknown automatic mode {mode!r}: choose one of {', '.join(MODES)}")
    return mode


# The model used when none is named: the shipped one.
DEFAULT_MODEL = "nuclei_s"
