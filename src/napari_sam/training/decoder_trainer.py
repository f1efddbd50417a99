"""Training the instance decoder (AIS) on a frozen SAM: micro-sam's targets and loss.

The image encoder does not change, so each example is embedded once without gradients and only
the decoder learns. The decoder is saved in micro-sam's layout (``decoder.pt``, a plain state
dict that :func:`napari_sam.load_decoder` and micro-sam read) with a JSON record beside it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from napari_sam.engine.instances import labels_from_maps
from napari_sam.models.instance_decoder import InstanceDecoder
from napari_sam.models.loading import resolve_device
from napari_sam.models.sam import Sam
from napari_sam.training.evaluation import instance_f1
from napari_sam.training.instance_targets import MIN_SIZE, distance_targets
from napari_sam.training.trainer import (
    TrainingData,
    TrainingHistory,
    fit_example,
    warmup_cosine,
    write_atomically,
)


@dataclass(frozen=True)
class DecoderRecipe:
    """What each step of :func:`train_decoder` does.

    Attributes
    ----------
    images_per_step : int
        Examples per optimiser step.
    lr, weight_decay, warmup : float, float, int
        AdamW learning rate (linear warm-up, then cosine decay to a tenth), decay, warm-up steps.
    min_size : int
        Objects of fewer pixels are background in the targets (micro-sam's 25).
    """

    images_per_step: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 50
    min_size: int = MIN_SIZE

    def __post_init__(self):
        if self.images_per_step < 1:
            raise ValueError(f"images_per_step must be at least 1, got {self.images_per_step}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def distance_loss(maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """micro-sam's loss of the instance decoder: a dice loss on the foreground plus dice losses on
    the two distance maps, both kept to the true foreground.

    Parameters
    ----------
    maps, targets : (B, 3, H, W) tensors
        Predicted and true foreground, centre distances and boundary distances.

    Returns
    -------
    scalar tensor
        Between 0 (perfect) and 3.
    """
    if maps.shape != targets.shape or maps.ndim != 4 or maps.shape[1] != 3:
        raise ValueError(f"maps and targets must both be (B, 3, H, W), got {tuple(maps.shape)} "
                         f"and {tuple(targets.shape)}")
    foreground = targets[:, :1]
    masked = torch.cat([maps[:, :1], maps[:, 1:] * foreground], dim=1)
    wanted = torch.cat([foreground, targets[:, 1:] * foreground], dim=1)
    per_channel = (masked * wanted).sum(dim=(0, 2, 3))
    norms = (masked * masked).sum(dim=(0, 2, 3)) + (wanted * wanted).sum(dim=(0, 2, 3))
    return (1 - 2 * per_channel / norms.clamp(min=1e-7)).sum()


def train_decoder(
    model: Sam,
    decoder: InstanceDecoder,
    data: TrainingData,
    recipe: DecoderRecipe = DecoderRecipe(),
    *,
    steps: int,
    output: str | Path | None = None,
    validation: list[tuple[np.ndarray, np.ndarray]] | None = None,
    validate_every: int = 100,
    seed: int = 0,
    device: str | torch.device = "auto",
    metadata: dict | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainingHistory:
    """Train ``decoder`` on ``model``'s frozen embeddings of labelled examples.

    Parameters
    ----------
    model : Sam
        The model whose image encoder the decoder reads; not changed.
    decoder : InstanceDecoder
        Trained in place.
    data : TrainingData
        Gives examples of at most the model's input size (smaller ones are zero-padded).
    recipe : DecoderRecipe
    steps : int
        Optimiser steps.
    output : path, optional
        Folder for ``decoder.pt`` and ``decoder.json``, written at every validation and at the
        end.
    validation : list of (image, labels), optional
        Held-out examples of the model's input size: instance F1 at IoU 0.5 of AIS every
        ``validate_every`` steps and at the end.
    seed : int
        Seeds the data sampling.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    metadata : dict, optional
        Extra fields for ``decoder.json``.
    log : callable, optional
        Receives one line per logged step.

    Returns
    -------
    TrainingHistory
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = resolve_device(device)
    model.to(device=device, dtype=torch.float32).eval()
    decoder.to(device=device, dtype=torch.float32).train()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=recipe.lr,
                                  weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup, steps))
    history = TrainingHistory()
    tic = time.perf_counter()
    for step in range(steps):
        examples = [fit_example(model.img_size, *data.sample(rng), rng)
                    for _ in range(recipe.images_per_step)]
        embeddings = _embed(model, [rgb for rgb, _ in examples])
        targets = torch.from_numpy(np.stack([distance_targets(labels, min_size=recipe.min_size)
                                             for _, labels in examples])).to(device)
        loss = distance_loss(decoder(embeddings), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.steps.append(step + 1)
        history.losses.append(float(loss.detach()))
        done = step + 1
        if log and (done % 10 == 0 or done == steps):
            rate = (time.perf_counter() - tic) / done
            log(f"step {done}/{steps} loss {np.mean(history.losses[-10:]):.4f} "
                f"lr {schedule.get_last_lr()[0]:.2e} ({rate:.2f} s/step)")
        if done % validate_every == 0 or done == steps:
            if validation:
                scores = {"step": done, **decoder_f1(model, decoder, validation)}
                history.validation.append(scores)
                if log:
                    log(f"validation at step {done}: F1 {scores['f1']:.3f}")
                decoder.train()
            if output is not None:
                save_decoder(decoder, Path(output), step=done, history=history,
                             metadata={"recipe": asdict(recipe), **(metadata or {})})
    return history


def decoder_f1(model: Sam, decoder: InstanceDecoder,
               examples: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Instance F1 at IoU 0.5 of AIS on examples of the model's input size, pooled over them."""
    decoder.eval()
    counts = np.zeros(3, dtype=int)  # matched, predicted, true
    for image, labels in examples:
        rgb, labels = fit_example(model.img_size, image, labels, np.random.default_rng(0))
        with torch.no_grad():
            maps = decoder(_embed(model, [rgb]))[0].float().cpu().numpy()
        score = instance_f1(labels_from_maps(*maps), labels)
        counts += [score["matched"], score["predicted"], score["true"]]
    matched, predicted, true = (int(n) for n in counts)
    return {"f1": 2 * matched / max(1, predicted + true), "matched": matched,
            "predicted": predicted, "true": true}


def save_decoder(decoder: InstanceDecoder, folder: Path, *, step: int, history: TrainingHistory,
                 metadata: dict | None = None) -> Path:
    """Write ``decoder.pt`` (micro-sam's decoder layout) and ``decoder.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "decoder.pt"
    state = {k: v.detach().cpu() for k, v in decoder.state_dict().items()}
    write_atomically(path, lambda p: torch.save(state, p))
    record = {"step": step, "validation": history.validation[-1] if history.validation else None,
              **(metadata or {})}
    write_atomically(folder / "decoder.json", lambda p: p.write_text(json.dumps(record, indent=2)))
    return path


def _embed(model: Sam, images: list[np.ndarray]) -> torch.Tensor:
    """Embeddings of ``(S, S, 3)`` uint8 images, without gradients."""
    batch = torch.stack([torch.from_numpy(rgb).permute(2, 0, 1) for rgb in images])
    with torch.no_grad():
        return model.image_encoder(model.preprocess(batch.to(model.device).float()))
