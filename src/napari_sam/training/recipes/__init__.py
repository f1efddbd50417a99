"""How a model is trained: :class:`Recipe`, the settings of each step, and reproducible recipes
as scripts (``python -m napari_sam.training.recipes.<name>``)."""

from __future__ import annotations

from dataclasses import dataclass

from napari_sam.training.prompts import MODES
from napari_sam.training.targets import DEFAULT_EROSION_RADII, check_erosion_radii

MULTIMASK_TARGETS = ("best", "erosion")
LOSS_RESOLUTIONS = ("low", "full")


@dataclass(frozen=True)
class Recipe:
    """What each training step does: the batch, the optimiser, the prompts and the loss.

    The run itself (steps, output folder, validation, seed, device) is given to
    :func:`~napari_sam.training.trainer.train`; a recipe is checked when it is made.

    Attributes
    ----------
    images_per_step, objects_per_image : int
        Batch size in images, and objects prompted per image.
    lr, weight_decay, warmup : float, float, int
        AdamW learning rate (linear warm-up, then cosine decay to a tenth), decay, warm-up steps.
    train_encoder : bool
        Also train the image encoder (by default it is frozen: fine-tuning adapts the decoder).
    update_batchnorm : bool
        With ``train_encoder``: let the encoder's BatchNorm layers (TinyViT: ``vit_t``,
        ``nuclei_s``) update their running statistics from each small batch, as when training
        from scratch. Off by default: fine-tuning then trains their weights but keeps the
        statistics the model was trained with, which suits small batches (docs/model_card.md).
    prompt_mode : {"mixed", "point", "box", "point+box"}
        Prompts simulated per image.
    n_points : tuple of int
        Range of clicks per object in point modes.
    correction_rounds : int
        Extra rounds per step with a corrective click and the previous mask as prompt.
    background_clicks : int
        For each image prompted with single clicks, this many more single clicks on background
        (:func:`~napari_sam.training.prompts.background_points`) with an empty target and a true
        IoU of 0, so that the predicted IoU tells objects from background; automatic
        segmentation then drops the masks of grid points on background. 0 (SAM's recipe) by
        default.
    focal_weight : float
        Weight of the focal loss against the dice loss (1); SAM's 20 by default.
    loss_resolution : {"low", "full"}
        Where masks are compared with the ground truth. ``"low"``: at the decoder's resolution
        (a quarter of the input), against the ground truth area-averaged and binarised to it;
        cheap, but the outline can then only follow the low-resolution pixels. ``"full"``: the
        logits are upsampled bilinearly to the input size, as :class:`~napari_sam.Predictor`
        does before thresholding, and compared with the exact ground truth, so the model learns
        to place outlines between low-resolution pixels. Worth it for small objects (nuclei of
        a few low-resolution pixels); costs memory in proportion to the input area.
    multimask_targets : {"best", "erosion"}
        How the 3 outputs for an ambiguous prompt (one click) are trained. ``"best"`` (SAM's
        rule): only the output closest to the object gets the mask loss. ``"erosion"``: each
        object gives 3 targets, its mask eroded by ``erosion_radii``
        (:func:`~napari_sam.training.targets.erosion_targets`), matched one to one to the
        outputs by optimal assignment, and the matched losses are summed
        (:func:`~napari_sam.training.losses.matched_sam_loss`).
    erosion_radii : tuple of int
        With ``"erosion"``: strictly increasing disk radii, one per multimask output, in pixels
        of the low-resolution logits (a quarter of an embedding cell: 4 input pixels for
        ``nuclei_s`` and SAM's ViTs).

    Raises
    ------
    ValueError
        A setting out of range, or two settings that do not go together.
    """

    images_per_step: int = 4
    objects_per_image: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 50
    train_encoder: bool = False
    update_batchnorm: bool = False
    prompt_mode: str = "mixed"
    n_points: tuple[int, int] = (1, 3)
    correction_rounds: int = 1
    background_clicks: int = 0
    focal_weight: float = 20.0
    loss_resolution: str = "low"
    multimask_targets: str = "best"
    erosion_radii: tuple[int, ...] = DEFAULT_EROSION_RADII

    def __post_init__(self):
        for name in ("n_points", "erosion_radii"):  # lists when read back from model.json
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.images_per_step < 1 or self.objects_per_image < 1:
            raise ValueError("images_per_step and objects_per_image must be at least 1")
        if self.background_clicks < 0:
            raise ValueError(f"background_clicks must be 0 or more, got {self.background_clicks}")
        _check_choice("prompt_mode", self.prompt_mode, MODES)
        _check_choice("multimask_targets", self.multimask_targets, MULTIMASK_TARGETS)
        _check_choice("loss_resolution", self.loss_resolution, LOSS_RESOLUTIONS)
        if self.multimask_targets == "erosion":
            if self.background_clicks:
                raise ValueError("background_clicks needs multimask_targets='best': eroded "
                                 "targets of an empty mask are empty, and would be scored as "
                                 "perfect")
            object.__setattr__(self, "erosion_radii", check_erosion_radii(self.erosion_radii))

    @property
    def full_resolution(self) -> bool:
        """Whether the loss compares masks at the input size (``loss_resolution="full"``)."""
        return self.loss_resolution == "full"


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
