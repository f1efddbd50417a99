"""Training targets of the 3 multimask outputs: SAM's best of 3 against matched erosion targets.

    python benchmarks/multimask_targets.py [--steps 800] [--images 24] [--output runs/multimask]
        [--init WEIGHTS --lr 1e-4]

Trains the ``nuclei_s`` architecture from scratch with the ``nuclei_s`` recipe (same seed, same
data stream) once for each ``train(multimask_targets=...)`` option, then clicks once at the centre
of every object of the held-out synthetic sets of ``benchmarks/default_model.py`` and prints one
markdown table of point mIoU: the mask with the highest predicted IoU (``score``, the ``point``
of the other benchmarks), the best of the 3 (oracle), and the masks the other ``select_mask``
strategies pick. Training logs go to stderr. On 2 CPU cores the default 800 steps take about 40
minutes per option. With ``--init`` both options fine-tune the same weights (e.g. the shipped
model) instead of starting from scratch.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from default_model import HELD_OUT

from napari_sam import Predictor, select_mask
from napari_sam.engine.geometry import centre_point, iou
from napari_sam.engine.selection import STRATEGIES
from napari_sam.models.registry import MODELS
from napari_sam.synthetic import SyntheticNuclei, synthetic_dataset
from napari_sam.training.recipes import MULTIMASK_TARGETS
from napari_sam.training.recipes.nuclei_s import NAME, RECIPE, SEED
from napari_sam.training.trainer import train

RECIPE_STEPS = 800  # the recipe's --steps default
MAX_OBJECTS, MIN_AREA = 32, 16  # as prompt_miou: the 32 largest objects of at least 16 pixels
COLUMNS = ("score", "best of 3", *(s for s in STRATEGIES if s != "score"))


def train_option(option: str, steps: int, output: Path | None, init: Path | None, lr: float):
    """The nuclei_s architecture trained by the recipe with this option, from ``init`` or scratch."""
    torch.manual_seed(SEED)
    model = MODELS[NAME].build()
    if init is not None:
        model.load_state_dict({k: v.float() for k, v in torch.load(init, weights_only=True).items()})
    train(
        model, SyntheticNuclei((256, 256)), replace(RECIPE, lr=lr, multimask_targets=option),
        steps=steps, seed=SEED, device="auto", output=None if output is None else output / option,
        checkpoint_every=steps, log=lambda line: print(f"[{option}] {line}", file=sys.stderr),
        metadata={"architecture": NAME, "seed": SEED, "init": None if init is None else str(init)},
    )
    return model


def click_ious(model, examples) -> dict[str, list[float]]:
    """IoU of every object's answer to a click at its centre, per column of the table."""
    predictor = Predictor(model)
    ious: dict[str, list[float]] = {column: [] for column in COLUMNS}
    for image, labels in examples:
        ids, areas = np.unique(labels[labels > 0], return_counts=True)
        ids = ids[areas >= MIN_AREA][np.argsort(-areas[areas >= MIN_AREA])][:MAX_OBJECTS]
        if len(ids) == 0:
            continue
        predictor.set_image(image)
        truths = np.stack([labels == i for i in ids])
        points = np.array([[centre_point(truth)] for truth in truths], dtype=float)
        masks, scores, _ = predictor.predict_batch(points=points, multimask=True)
        every = iou(masks, truths[:, None])  # (objects, 3)
        ious["best of 3"] += list(every.max(axis=1))
        for strategy in STRATEGIES:
            picks = [select_mask(m, s, strategy) for m, s in zip(masks, scores)]
            ious[strategy] += list(every[np.arange(len(ids)), picks])
    return ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=RECIPE_STEPS, help="training steps per option")
    parser.add_argument("--images", type=int, default=24, help="images per held-out set")
    parser.add_argument("--output", type=Path, help="keep each option's checkpoint in OUTPUT/<option>")
    parser.add_argument("--init", type=Path, help="fine-tune these weights instead of training from scratch")
    parser.add_argument("--lr", type=float, default=RECIPE["lr"], help="peak learning rate")
    args = parser.parse_args()

    held_out = {label: list(synthetic_dataset(args.images, (256, 256), **options))
                for label, options in HELD_OUT.items()}
    rows = []
    for option in MULTIMASK_TARGETS:
        model = train_option(option, args.steps, args.output, args.init, args.lr)
        pooled: dict[str, list[float]] = {column: [] for column in COLUMNS}
        for label, examples in held_out.items():
            ious = click_ious(model, examples)
            rows.append((option, label, ious))
            for column in COLUMNS:
                pooled[column] += ious[column]
        rows.append((option, "all sets", pooled))

    start = f"fine-tuning {args.init} at lr {args.lr}" if args.init else "from scratch"
    print(f"\n{args.steps} steps of the {NAME} recipe per option ({start}), one click at each "
          "object's centre, point mIoU:\n")
    print(f"| targets | {'held-out set':<30} | objects | " + " | ".join(f"{c:>9}" for c in COLUMNS) + " |")
    print(f"|---------|{'-' * 32}|---------|" + "|".join("-" * 11 for _ in COLUMNS) + "|")
    for option, label, ious in rows:
        values = " | ".join(f"{np.mean(ious[c]) if ious[c] else float('nan'):>9.3f}" for c in COLUMNS)
        print(f"| {option:<7} | {label:<30} | {len(ious['score']):>7} | {values} |")


if __name__ == "__main__":
    main()
