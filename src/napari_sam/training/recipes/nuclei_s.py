"""Train ``nuclei_s``, the shipped default model, from scratch on synthetic nuclei.

    python -m napari_sam.training.recipes.nuclei_s --output runs/nuclei_s [--steps 2400]
        [--background-steps 200] [--outline-steps 300] [--resume]
        [--start outline --init weights.pt] [--export src/napari_sam/weights/nuclei_s.pt]

Three stages: the whole model from scratch (``OUTPUT/scratch``); then the prompt encoder and
mask decoder alone with clicks on background added (``OUTPUT/background``), which teaches the
IoU head to score a click on no object low; then the decoder again with the loss at full
resolution (``OUTPUT/outline``), which teaches it to place outlines between its low-resolution
pixels. Seeded: the same command on the same machine gives the same weights; ``--resume``
continues any stage; ``--start`` skips the stages before the named one and begins from the
weights given by ``--init``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from napari_sam.models.loading import load_model
from napari_sam.models.registry import MODELS
from napari_sam.synthetic import SyntheticNuclei, synthetic_dataset
from napari_sam.training.recipes import Recipe
from napari_sam.training.trainer import train

NAME = "nuclei_s"
SEED = 0
VALIDATION_SEED = 10_000  # held out: the training stream never draws from it
RECIPE = Recipe(images_per_step=4, objects_per_image=8, lr=4e-4, weight_decay=0.01, warmup=50,
                train_encoder=True, update_batchnorm=True, prompt_mode="mixed", n_points=(1, 3),
                correction_rounds=1,
                # From scratch, SAM's 20:1 focal:dice mix collapses to empty masks (the loss
                # stays flat); with 1:1 the masks grow from the start.
                focal_weight=1.0)
# Stage 2, from the weights of stage 1, image encoder frozen: the same prompts plus 4 clicks on
# background per image of single clicks, scored with an empty target and a true IoU of 0.
BACKGROUND_SEED = 1
BACKGROUND = replace(RECIPE, lr=1e-4, warmup=10, train_encoder=False, background_clicks=4)
BACKGROUND_STEPS = 200
# Stage 3, image encoder frozen: stage 2's prompts with the loss at full resolution. Stages 1
# and 2 compare 64 x 64 logits with binarised 64 x 64 masks, so outlines follow 4-pixel steps,
# which caps the mask quality of small nuclei (figures in docs/model_card.md). Stage 3 starts
# from stage 2's weights rounded to float16, as ``--export`` writes them, so that the whole
# recipe and stage 3 alone (``--start outline``) from exported weights give the same model.
OUTLINE_SEED = 2
OUTLINE = replace(BACKGROUND, lr=2e-4, loss_resolution="full")
OUTLINE_STEPS = 300
STAGES = ("scratch", "background", "outline")


def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its floating-point tensors as float16 (half the size; loads as float32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs") / NAME)
    parser.add_argument("--steps", type=int, default=2400, help="steps of stage 1")
    parser.add_argument("--background-steps", type=int, default=BACKGROUND_STEPS,
                        help="steps of stage 2")
    parser.add_argument("--outline-steps", type=int, default=OUTLINE_STEPS,
                        help="steps of stage 3")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--start", choices=STAGES, default=STAGES[0],
                        help="first stage to run (later than scratch: needs --init)")
    parser.add_argument("--init", type=Path, help="weights to start --start from")
    parser.add_argument("--export", type=Path, help="also write float16 weights here")
    args = parser.parse_args(argv)
    if (args.start != STAGES[0]) != (args.init is not None):
        parser.error("--init goes with --start background or --start outline (and only with them)")

    torch.manual_seed(SEED)
    model = MODELS[NAME].build()
    if args.init is not None:
        model.load_state_dict(load_model(NAME, checkpoint=args.init, device="cpu").state_dict())
    data = SyntheticNuclei((256, 256))
    validation = list(synthetic_dataset(8, (256, 256), seed=VALIDATION_SEED))
    metadata = {"architecture": NAME,
                "data": "synthetic fluorescence nuclei, napari_sam.synthetic, 256 x 256"}
    stages = [("scratch", args.steps, SEED, RECIPE),
              ("background", args.background_steps, BACKGROUND_SEED, BACKGROUND),
              ("outline", args.outline_steps, OUTLINE_SEED, OUTLINE)]
    for folder, steps, seed, recipe in stages[STAGES.index(args.start):]:
        if folder == "outline":
            model.load_state_dict(half(model.state_dict()))
        history = train(
            model, data, recipe, steps=steps, output=args.output / folder, resume=args.resume,
            seed=seed, validation=validation, validate_every=100, checkpoint_every=50,
            device="auto", metadata={**metadata, "stage": folder, "seed": seed},
        )
        if history.steps:  # a resumed stage that was already complete keeps its history
            (args.output / folder / "history.json").write_text(json.dumps(history.__dict__))
    if args.export:
        final = torch.load(args.output / stages[-1][0] / "model.pt", map_location="cpu",
                           weights_only=True)
        args.export.parent.mkdir(parents=True, exist_ok=True)
        torch.save(half(final), args.export)
        print(f"exported {args.export}")


if __name__ == "__main__":
    main()
