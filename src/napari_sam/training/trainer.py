"""Fine-tuning: simulated prompts on labelled images, the seed's losses, resumable checkpoints.

Checkpoints are written in the official key layout (``model.pt``, readable by every SAM loader)
with a JSON record beside it (``model.json``); ``training_state.pt`` holds what a resumed run
needs (optimizer, step, random states).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.engine.image import to_rgb_uint8
from napari_sam.models.loading import resolve_device
from napari_sam.models.sam import Sam
from napari_sam.training.data import LabelledSlices
from napari_sam.training.evaluation import prompt_miou
from napari_sam.training.losses import downsample_target, matched_sam_loss, sam_loss
from napari_sam.training.prompts import (
    PromptBatch,
    background_points,
    correction_points,
    simulate_prompts,
)
from napari_sam.training.targets import (
    DEFAULT_EROSION_RADII,
    check_erosion_radii,
    erosion_targets,
)

MULTIMASK_TARGETS = ("best", "erosion")
LOSS_RESOLUTIONS = ("low", "full")


class TrainingData(Protocol):
    """Where examples come from: one 2D ``(image, labels)`` pair per call."""

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class TrainingHistory:
    """What a run did: losses per step and validation results."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)


def train(
    model: Sam,
    data: TrainingData,
    *,
    steps: int,
    output: str | Path | None = None,
    images_per_step: int = 4,
    objects_per_image: int = 8,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup: int = 50,
    train_encoder: bool = False,
    update_batchnorm: bool = False,
    prompt_mode: str = "mixed",
    n_points: tuple[int, int] = (1, 3),
    correction_rounds: int = 1,
    background_clicks: int = 0,
    focal_weight: float = 20.0,
    loss_resolution: str = "low",
    multimask_targets: str = "best",
    erosion_radii: tuple[int, ...] = DEFAULT_EROSION_RADII,
    validation: list[tuple[np.ndarray, np.ndarray]] | None = None,
    validate_every: int = 100,
    checkpoint_every: int = 100,
    resume: bool = False,
    seed: int = 0,
    device: str | torch.device = "auto",
    mixed_precision: bool = True,
    metadata: dict | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainingHistory:
    """Fine-tune ``model`` with prompts simulated from ground-truth labels.

    Each step embeds ``images_per_step`` examples, simulates prompts for up to
    ``objects_per_image`` objects in each (points, boxes or both), and adds ``correction_rounds``
    rounds of a corrective click in the largest error with the previous logits as mask prompt.
    The loss is 20 focal + 1 dice on the low-resolution masks (for ambiguous prompts only the
    best of 3, or all 3 against multi-scale targets) plus the MSE of the predicted IoU.

    Parameters
    ----------
    model : Sam
        Trained in place.
    data : TrainingData
        Gives examples of at most the model's input size (smaller ones are zero-padded). A
        :class:`~napari_sam.training.data.LabelledSlices` without any labelled object is
        refused before training starts (see its ``check_labelled``).
    steps : int
        Optimiser steps in total (a resumed run continues up to it).
    output : path, optional
        Folder for ``model.pt``, ``model.json`` and ``training_state.pt``.
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
        statistics the model was trained with (measured on ``nuclei_s``, 150 encoder steps at lr
        3e-5: validation point mIoU 0.835 -> 0.840 with them kept, -> 0.816 with them updated).
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
        ``nuclei_s`` and SAM's ViTs); ``(0, 1, 2)`` by default.
    validation : list of (image, labels), optional
        Held-out examples; :func:`~napari_sam.training.evaluation.prompt_miou` every
        ``validate_every`` steps and at the end.
    validate_every, checkpoint_every : int
        Intervals in steps.
    resume : bool
        Continue from ``output/training_state.pt`` if it exists.
    seed : int
        Seeds the prompt and data sampling and any random initialisation.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    mixed_precision : bool
        Use bfloat16/float16 autocast on CUDA (ignored elsewhere).
    metadata : dict, optional
        Extra fields for ``model.json`` (e.g. the architecture name, data summary).
    log : callable, optional
        Receives one line per logged step.

    Returns
    -------
    TrainingHistory

    Raises
    ------
    ValueError
        A setting out of range; training labels or validation examples without any labelled
        object (nothing would be learnt, and the scores would be NaN).
    """
    if steps < 1 or images_per_step < 1 or objects_per_image < 1:
        raise ValueError("steps, images_per_step and objects_per_image must be at least 1")
    if background_clicks < 0:
        raise ValueError(f"background_clicks must be 0 or more, got {background_clicks}")
    if multimask_targets not in MULTIMASK_TARGETS:
        raise ValueError(
            f"multimask_targets must be one of {', '.join(map(repr, MULTIMASK_TARGETS))}; "
            f"got {multimask_targets!r}"
        )
    if loss_resolution not in LOSS_RESOLUTIONS:
        raise ValueError(
            f"loss_resolution must be one of {', '.join(map(repr, LOSS_RESOLUTIONS))}; "
            f"got {loss_resolution!r}"
        )
    full_resolution = loss_resolution == "full"
    radii = None  # of the multi-scale targets; None: best of 3
    if multimask_targets == "erosion" and background_clicks:
        raise ValueError("background_clicks needs multimask_targets='best': eroded targets of "
                         "an empty mask are empty, and would be scored as perfect")
    if multimask_targets == "erosion":
        radii = check_erosion_radii(erosion_radii)
        outputs = model.mask_decoder.num_multimask_outputs
        if len(radii) != outputs:
            raise ValueError(
                f"erosion_radii needs one radius per multimask output of the model ({outputs}), "
                f"got {erosion_radii!r}"
            )
        if full_resolution:  # the radii are given in low-resolution pixels
            scale = model.img_size // model.prompt_encoder.mask_input_size[0]
            radii = tuple(radius * scale for radius in radii)
    if isinstance(data, LabelledSlices):
        data.check_labelled()
    if validation is not None and not any(np.any(labels) for _, labels in validation):
        raise ValueError(
            f"none of the {len(validation)} validation examples holds a labelled object, so "
            "their scores would be NaN: give examples with objects, or validation=None"
        )
    device = resolve_device(device)
    model.to(device=device, dtype=torch.float32)
    output = Path(output) if output is not None else None
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    for name, parameter in model.named_parameters():
        parameter.requires_grad_(train_encoder or not name.startswith("image_encoder."))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(warmup, steps))
    history = TrainingHistory()
    start = 0
    state_file = output / "training_state.pt" if output is not None else None
    if resume and state_file is not None and state_file.is_file():
        start = _restore(state_file, model, optimizer, schedule, rng)
        if log:
            log(f"resumed at step {start}")

    autocast = _autocast(device, mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast.fast_dtype == torch.float16 and device.type == "cuda")
    _training_mode(model, train_encoder=train_encoder, update_batchnorm=update_batchnorm)
    tic = time.perf_counter()
    for step in range(start, steps):
        examples = [_fit(model.img_size, *data.sample(rng), rng) for _ in range(images_per_step)]
        with autocast:
            loss, parts = _step_loss(model, examples, rng, objects_per_image=objects_per_image,
                                     prompt_mode=prompt_mode, n_points=n_points,
                                     correction_rounds=correction_rounds,
                                     background_clicks=background_clicks, train_encoder=train_encoder,
                                     focal_weight=focal_weight, erosion_radii=radii,
                                     full_resolution=full_resolution)
        optimizer.zero_grad(set_to_none=True)
        if loss is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            scaler.step(optimizer)
            scaler.update()
            history.steps.append(step + 1)
            history.losses.append(float(loss.detach()))
        schedule.step()

        done = step + 1
        if log and (done % 10 == 0 or done == steps):
            rate = (time.perf_counter() - tic) / (done - start)
            log(f"step {done}/{steps} loss {np.mean(history.losses[-10:]):.4f} "
                f"miou {parts.get('miou', float('nan')):.3f} lr {schedule.get_last_lr()[0]:.2e} "
                f"({rate:.2f} s/step)")
        if validation and (done % validate_every == 0 or done == steps):
            scores = prompt_miou(model, validation)
            history.validation.append({"step": done, **scores})
            if log:
                log(f"validation at step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
            _training_mode(model, train_encoder=train_encoder, update_batchnorm=update_batchnorm)
        if output is not None and (done % checkpoint_every == 0 or done == steps):
            save_checkpoint(model, output, step=done, history=history, metadata=metadata)
            _save_state(state_file, optimizer, schedule, rng, done)
    return history


def save_checkpoint(
    model: Sam, folder: Path, *, step: int, history: TrainingHistory, metadata: dict | None = None
) -> Path:
    """Write ``model.pt`` (official key layout) and ``model.json`` (what made it) into ``folder``.

    Files are written to a temporary name and renamed, so a killed run never leaves a torn
    checkpoint behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic(path, lambda p: torch.save(state, p))
    record = {
        "step": step,
        "img_size": model.img_size,
        "normalisation": "uint8 used as is; other types scaled between the 1st and 99.8th percentiles",
        "validation": history.validation[-1] if history.validation else None,
        **(metadata or {}),
    }
    _atomic(folder / "model.json", lambda p: p.write_text(json.dumps(record, indent=2)))
    return path


def _step_loss(model: Sam, examples, rng, *, objects_per_image, prompt_mode, n_points,
               correction_rounds, background_clicks, train_encoder, focal_weight, erosion_radii,
               full_resolution):
    """Loss of one step over all examples, and the parts of the last round for logging.

    ``erosion_radii`` None trains ambiguous prompts with the best of 3, else with matched
    multi-scale targets eroded by these radii. ``full_resolution`` compares logits upsampled to
    the input size with the exact masks, instead of low-resolution logits with downsampled masks.
    """
    images = torch.stack([torch.from_numpy(rgb).permute(2, 0, 1) for rgb, _ in examples])
    x = model.preprocess(images.to(model.device).float())
    with torch.set_grad_enabled(train_encoder):
        features = model.image_encoder(x)
    image_pe = model.prompt_encoder.get_dense_pe()
    low_size = model.prompt_encoder.mask_input_size

    losses, parts = [], {}
    for index, (_, labels) in enumerate(examples):
        # Half of the images get exactly one click per object: an ambiguous prompt, which trains
        # the 3 multimask outputs (best of 3). Otherwise the click count varies per object and
        # the padded batch trains the single-mask output.
        clicks = (1, 1) if rng.random() < 0.5 else n_points
        try:
            prompts = simulate_prompts(labels, objects_per_image, rng, mode=prompt_mode, n_points=clicks)
        except ValueError:  # no object large enough in this example
            continue
        if background_clicks and prompts.single_clicks:
            prompts = prompts.with_background_clicks(background_points(labels, background_clicks, rng))
        present = torch.from_numpy(prompts.ids != 0).to(model.device)
        if full_resolution:
            target = torch.from_numpy(prompts.masks).float().to(model.device)
        else:
            target = downsample_target(prompts.masks, low_size).to(model.device)
        multiscale = None if erosion_radii is None else erosion_targets(target, erosion_radii)
        mask_input = None
        for round_ in range(1 + correction_rounds):
            ambiguous = prompts.single_clicks
            logits, iou = _decode(model, features[index : index + 1], image_pe, prompts, mask_input, ambiguous)
            scored = _upsample(logits, labels.shape) if full_resolution else logits
            if ambiguous and multiscale is not None:
                loss, details = matched_sam_loss(scored, iou, multiscale, focal_weight=focal_weight)
            else:
                loss, details = sam_loss(scored, iou, target, multimask=ambiguous,
                                         focal_weight=focal_weight, present=present)
            losses.append(loss)
            parts = details.as_dict()
            if round_ < correction_rounds:
                chosen = torch.arange(len(logits)), details.index
                best = logits[chosen].detach()
                if full_resolution:
                    full = scored[chosen]
                else:
                    full = _upsample(best[:, None], labels.shape)[:, 0]
                outline = full.detach().cpu().numpy() > 0
                points, point_labels = correction_points(outline, prompts.masks, rng)
                prompts = prompts.with_points(points, point_labels)
                mask_input = best[:, None]
    if not losses:
        return None, parts
    return torch.stack(losses).mean(), parts


def _training_mode(model: Sam, *, train_encoder: bool, update_batchnorm: bool) -> None:
    """Training mode, but for a frozen encoder and, unless updated, BatchNorm statistics."""
    model.train()
    for module in model.image_encoder.modules():
        if not train_encoder or (isinstance(module, nn.modules.batchnorm._BatchNorm)
                                 and not update_batchnorm):
            module.eval()


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Low-resolution logits ``(B, K, h, w)`` at the input size, as the predictor upsamples them."""
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def _decode(model: Sam, features, image_pe, prompts: PromptBatch, mask_input, multimask: bool):
    device = model.device
    points = None
    if prompts.points is not None:
        points = (torch.from_numpy(prompts.points_xy()).to(device), torch.from_numpy(prompts.labels).to(device))
    boxes = torch.from_numpy(prompts.boxes_xy()).to(device) if prompts.boxes is not None else None
    sparse, dense = model.prompt_encoder(points, boxes, mask_input)
    return model.mask_decoder(features, image_pe, sparse, dense, multimask)


def _fit(size: int, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """An example as ``(size, size, 3)`` uint8 RGB and labels: random crop if larger, zero pad."""
    rgb = to_rgb_uint8(image)
    labels = np.asarray(labels)
    h, w = labels.shape
    top = int(rng.integers(0, h - size + 1)) if h > size else 0
    left = int(rng.integers(0, w - size + 1)) if w > size else 0
    rgb, labels = rgb[top : top + size, left : left + size], labels[top : top + size, left : left + size]
    pad = ((0, size - labels.shape[0]), (0, size - labels.shape[1]))
    return np.pad(rgb, pad + ((0, 0),)), np.pad(labels, pad)


def _warmup_cosine(warmup: int, steps: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _save_state(path: Path, optimizer, schedule, rng: np.random.Generator, step: int) -> None:
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
    }
    _atomic(path, lambda p: torch.save(state, p))


def _restore(path: Path, model: Sam, optimizer, schedule, rng: np.random.Generator) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = torch.load(path.parent / "model.pt", map_location=model.device, weights_only=True)
    model.load_state_dict(weights)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    temporary.replace(path)
