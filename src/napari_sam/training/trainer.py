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
from dataclasses import asdict, dataclass, field
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
from napari_sam.training.evaluation import SCORES, prompt_miou
from napari_sam.training.losses import matched_sam_loss, sam_loss
from napari_sam.training.prompts import (
    PromptBatch,
    background_points,
    correction_points,
    simulate_prompts,
)
from napari_sam.training.recipes import Recipe
from napari_sam.training.targets import downsample_target, erosion_targets


class TrainingData(Protocol):
    """Where examples come from: one 2D ``(image, labels)`` pair per call."""

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class TrainingHistory:
    """What a run did: losses per step and validation results."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    best: dict | None = None  # the validation of the weights kept (with ``keep_best``)
    stopped: bool = False  # ``should_stop`` ended the run early


def train(
    model: Sam,
    data: TrainingData,
    recipe: Recipe = Recipe(),
    *,
    steps: int,
    output: str | Path | None = None,
    validation: list[tuple[np.ndarray, np.ndarray]] | None = None,
    validate_every: int = 100,
    checkpoint_every: int = 100,
    resume: bool = False,
    seed: int = 0,
    device: str | torch.device = "auto",
    mixed_precision: bool = True,
    metadata: dict | None = None,
    log: Callable[[str], None] | None = print,
    keep_best: str | None = None,
    report: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingHistory:
    """Fine-tune ``model`` with prompts simulated from ground-truth labels.

    Each step embeds ``recipe.images_per_step`` examples, simulates prompts for up to
    ``recipe.objects_per_image`` objects in each (points, boxes or both), and adds
    ``recipe.correction_rounds`` rounds of a corrective click in the largest error with the
    previous logits as mask prompt. The loss is focal + dice on the masks (for ambiguous prompts
    only the best of 3, or all 3 against multi-scale targets) plus the MSE of the predicted IoU.

    Parameters
    ----------
    model : Sam
        Trained in place.
    data : TrainingData
        Gives examples of at most the model's input size (smaller ones are zero-padded). A
        :class:`~napari_sam.training.data.LabelledSlices` without any labelled object is
        refused before training starts (see its ``check_labelled``).
    recipe : Recipe
        What each step does (:class:`~napari_sam.training.recipes.Recipe`); SAM's fine-tuning
        settings by default.
    steps : int
        Optimiser steps in total (a resumed run continues up to it).
    output : path, optional
        Folder for ``model.pt``, ``model.json`` and ``training_state.pt``.
    validation : list of (image, labels), optional
        Held-out examples; :func:`~napari_sam.training.evaluation.prompt_miou` before the first
        step (unless resumed), every ``validate_every`` steps and at the end.
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
        Extra fields for ``model.json`` (e.g. the architecture name, data summary); the recipe
        is recorded there too.
    log : callable, optional
        Receives one line per logged step.
    keep_best : str, optional
        A score of :func:`~napari_sam.training.evaluation.prompt_miou` (``"point"``, ``"box"``,
        ``"point_oracle"``); needs ``validation`` and ``output``. ``model.pt`` then holds the
        weights with the highest such validation score so far, the model as given included
        (written before the first step), instead of the latest weights; ``training_state.pt``
        keeps the latest ones for ``resume``.
    report : callable, optional
        Called after every step with ``{"step", "steps", "loss"}`` (``loss`` NaN for a step
        without any object) and after every validation with ``{"step", "steps", "validation",
        "best"}`` (``best``: this validation's weights are the ones kept).
    should_stop : callable, optional
        Checked after every step: when it returns true, the run ends there (``history.stopped``)
        after writing the checkpoint a run ending at that step would write.

    Returns
    -------
    TrainingHistory

    Raises
    ------
    ValueError
        ``steps`` below 1, a recipe that does not fit the model, training labels or validation
        examples without any labelled object (nothing would be learnt, and the scores would be
        NaN), ``keep_best`` without validation or output, or not a score.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if keep_best is not None:
        if keep_best not in SCORES:
            raise ValueError(f"keep_best must be one of {', '.join(map(repr, SCORES))}, "
                             f"got {keep_best!r}")
        if not validation or output is None:
            raise ValueError("keep_best needs validation examples and an output folder: the "
                             "best weights are chosen by validation and written there")
    radii = _erosion_radii(model, recipe)
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
        parameter.requires_grad_(recipe.train_encoder or not name.startswith("image_encoder."))
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup, steps))
    history = TrainingHistory()
    start = 0
    state_file = output / "training_state.pt" if output is not None else None
    if resume and state_file is not None and state_file.is_file():
        start, history.best = _restore(state_file, model, optimizer, schedule, rng)
        if log:
            log(f"resumed at step {start}")
    metadata = {"recipe": asdict(recipe), **({"best_by": keep_best} if keep_best else {}),
                **(metadata or {})}

    def validate(done: int) -> None:
        scores = prompt_miou(model, validation)
        history.validation.append({"step": done, **scores})
        best = keep_best is not None and (
            history.best is None or scores[keep_best] > history.best[keep_best])
        if best:
            history.best = history.validation[-1]
            save_checkpoint(model, output, step=done, history=history, metadata=metadata)
        if log:
            log(f"validation at step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        if report:
            report({"step": done, "steps": steps, "validation": scores, "best": best})
        _training_mode(model, recipe)

    if validation and start == 0:
        validate(0)

    autocast = _autocast(device, mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast.fast_dtype == torch.float16 and device.type == "cuda")
    _training_mode(model, recipe)
    tic = time.perf_counter()
    for step in range(start, steps):
        examples = [fit_example(model.img_size, *data.sample(rng), rng)
                    for _ in range(recipe.images_per_step)]
        with autocast:
            loss, parts = _step_loss(model, examples, rng, recipe, radii)
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
        history.stopped = should_stop is not None and done < steps and should_stop()
        last = done == steps or history.stopped
        if report:
            report({"step": done, "steps": steps,
                    "loss": float(loss.detach()) if loss is not None else float("nan")})
        if log and (done % 10 == 0 or last):
            rate = (time.perf_counter() - tic) / (done - start)
            log(f"step {done}/{steps} loss {np.mean(history.losses[-10:]):.4f} "
                f"miou {parts.get('miou', float('nan')):.3f} lr {schedule.get_last_lr()[0]:.2e} "
                f"({rate:.2f} s/step)")
        if validation and (done % validate_every == 0 or last):
            validate(done)
        if output is not None and (done % checkpoint_every == 0 or last):
            if keep_best is None:
                save_checkpoint(model, output, step=done, history=history, metadata=metadata)
            _save_state(state_file, optimizer, schedule, rng, done,
                        model=model if keep_best is not None else None, best=history.best)
        if history.stopped:
            break
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
    write_atomically(path, lambda p: torch.save(state, p))
    record = {
        "step": step,
        "img_size": model.img_size,
        "normalisation": "as inference: uint8 used as is; other types scaled between volume-wide "
                         "limits (napari_sam.volume.io.volume_limits)",
        "validation": history.validation[-1] if history.validation else None,
        "validation_history": history.validation,
        **(metadata or {}),
    }
    write_atomically(folder / "model.json", lambda p: p.write_text(json.dumps(record, indent=2)))
    return path


def _erosion_radii(model: Sam, recipe: Recipe) -> tuple[int, ...] | None:
    """The recipe's erosion radii in pixels of the masks the loss compares, checked against the
    model's multimask outputs; None when ambiguous prompts are trained with the best of 3."""
    if recipe.multimask_targets != "erosion":
        return None
    outputs = model.mask_decoder.num_multimask_outputs
    if len(recipe.erosion_radii) != outputs:
        raise ValueError(
            f"erosion_radii needs one radius per multimask output of the model ({outputs}), "
            f"got {recipe.erosion_radii!r}"
        )
    radii = recipe.erosion_radii
    if recipe.full_resolution:  # the radii are given in low-resolution pixels
        scale = model.img_size // model.prompt_encoder.mask_input_size[0]
        radii = tuple(radius * scale for radius in radii)
    return radii


def _step_loss(model: Sam, examples, rng, recipe: Recipe, erosion_radii):
    """Loss of one step over all examples, and the parts of the last round for logging.

    ``erosion_radii`` (from :func:`_erosion_radii`) None trains ambiguous prompts with the best
    of 3, else with matched multi-scale targets eroded by these radii.
    """
    images = torch.stack([torch.from_numpy(rgb).permute(2, 0, 1) for rgb, _ in examples])
    x = model.preprocess(images.to(model.device).float())
    with torch.set_grad_enabled(recipe.train_encoder):
        features = model.image_encoder(x)
    image_pe = model.prompt_encoder.get_dense_pe()
    low_size = model.prompt_encoder.mask_input_size

    losses, parts = [], {}
    for index, (_, labels) in enumerate(examples):
        # Half of the images get exactly one click per object: an ambiguous prompt, which trains
        # the 3 multimask outputs (best of 3). Otherwise the click count varies per object and
        # the padded batch trains the single-mask output.
        clicks = (1, 1) if rng.random() < 0.5 else recipe.n_points
        try:
            prompts = simulate_prompts(labels, recipe.objects_per_image, rng,
                                       mode=recipe.prompt_mode, n_points=clicks)
        except ValueError:  # no object large enough in this example
            continue
        if recipe.background_clicks and prompts.single_clicks:
            prompts = prompts.with_background_clicks(
                background_points(labels, recipe.background_clicks, rng))
        present = torch.from_numpy(prompts.ids != 0).to(model.device)
        if recipe.full_resolution:
            target = torch.from_numpy(prompts.masks).float().to(model.device)
        else:
            target = downsample_target(prompts.masks, low_size).to(model.device)
        multiscale = None if erosion_radii is None else erosion_targets(target, erosion_radii)
        mask_input = None
        for round_ in range(1 + recipe.correction_rounds):
            ambiguous = prompts.single_clicks
            logits, iou = _decode(model, features[index : index + 1], image_pe, prompts, mask_input, ambiguous)
            scored = _upsample(logits, labels.shape) if recipe.full_resolution else logits
            if ambiguous and multiscale is not None:
                loss, details = matched_sam_loss(scored, iou, multiscale,
                                                 focal_weight=recipe.focal_weight)
            else:
                loss, details = sam_loss(scored, iou, target, multimask=ambiguous,
                                         focal_weight=recipe.focal_weight, present=present)
            losses.append(loss)
            parts = details.as_dict()
            if round_ < recipe.correction_rounds:
                chosen = torch.arange(len(logits)), details.index
                best = logits[chosen].detach()
                if recipe.full_resolution:
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


def _training_mode(model: Sam, recipe: Recipe) -> None:
    """Training mode, but for a frozen encoder and, unless updated, BatchNorm statistics."""
    model.train()
    for module in model.image_encoder.modules():
        if not recipe.train_encoder or (isinstance(module, nn.modules.batchnorm._BatchNorm)
                                        and not recipe.update_batchnorm):
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


def fit_example(size: int, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """An example as ``(size, size, 3)`` uint8 RGB and labels: random crop if larger, zero pad."""
    rgb = to_rgb_uint8(image)
    labels = np.asarray(labels)
    h, w = labels.shape
    top = int(rng.integers(0, h - size + 1)) if h > size else 0
    left = int(rng.integers(0, w - size + 1)) if w > size else 0
    rgb, labels = rgb[top : top + size, left : left + size], labels[top : top + size, left : left + size]
    pad = ((0, size - labels.shape[0]), (0, size - labels.shape[1]))
    return np.pad(rgb, pad + ((0, 0),)), np.pad(labels, pad)


def warmup_cosine(warmup: int, steps: int) -> Callable[[int], float]:
    """Learning-rate factor of a step: linear warm-up, then cosine decay to a tenth."""
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


def _save_state(path: Path, optimizer, schedule, rng: np.random.Generator, step: int, *,
                model: Sam | None = None, best: dict | None = None) -> None:
    """What a resumed run needs; the latest weights too when ``model.pt`` holds the best ones."""
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "best": json.dumps(best),
    }
    if model is not None:
        state["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_atomically(path, lambda p: torch.save(state, p))


def _restore(path: Path, model: Sam, optimizer, schedule,
             rng: np.random.Generator) -> tuple[int, dict | None]:
    """Restore a run from its state; returns its step and its best validation (or None)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state.get("model")
    if weights is None:
        weights = torch.load(path.parent / "model.pt", map_location=model.device, weights_only=True)
    model.load_state_dict(weights)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), json.loads(state.get("best", "null"))


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(file)`` to a name beside ``path``, then renamed onto it: never a torn file."""
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    temporary.replace(path)
