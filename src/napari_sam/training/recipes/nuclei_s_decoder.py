"""Train the instance decoder (AIS) of ``nuclei_s`` on synthetic nuclei, the encoder frozen.

    python -m napari_sam.training.recipes.nuclei_s_decoder --output runs/nuclei_s_decoder
        [--steps 600] [--export src/napari_sam/weights/nuclei_s_decoder.pt]

Seeded: the same command on the same machine gives the same weights. The decoder has micro-sam's
layout at a quarter of its width (``features=16``): ``nuclei_s``'s 16 x 16 embedding holds
little to decode, and the small decoder trains within the time budget of a CPU.

The nuclei have a soft unlabelled fringe of 0 to ``EDGE`` pixels outside their outlines
(``synthetic_nuclei(edge=...)``), as real nuclei have outside the outlines people draw: trained
on sharp-edged nuclei only, the decoder drew the DSB image's nuclei 1.6x their labelled area.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from napari_sam.models.loading import load_model
from napari_sam.models.registry import build_instance_decoder
from napari_sam.synthetic import SyntheticNuclei, synthetic_dataset
from napari_sam.training.decoder_trainer import DecoderRecipe, train_decoder
from napari_sam.training.recipes.nuclei_s import NAME, VALIDATION_SEED, half

SEED = 0
FEATURES = 16
RECIPE = DecoderRecipe(images_per_step=4, lr=1e-3, weight_decay=0.01, warmup=50)
STEPS = 1800
EDGE = (0.0, 3.5)
# Down to 60 photo-electrons (synthetic_dataset's default starts at 150): dim nuclei in shot
# noise are where the decoder drew noise as objects.
BRIGHTNESS = (60.0, 3000.0)
DATA = dict(edge=EDGE, brightness=BRIGHTNESS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs") / f"{NAME}_decoder")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--export", type=Path, help="also write float16 weights here")
    args = parser.parse_args(argv)

    model = load_model(NAME, device="auto")
    torch.manual_seed(SEED)
    decoder = build_instance_decoder(model, features=FEATURES)
    validation = list(synthetic_dataset(8, (256, 256), seed=VALIDATION_SEED, **DATA))
    history = train_decoder(
        model, decoder, SyntheticNuclei((256, 256), **DATA), RECIPE, steps=args.steps,
        output=args.output, validation=validation, validate_every=100, seed=SEED, device="auto",
        metadata={"model": NAME, "features": FEATURES, "seed": SEED,
                  "data": "synthetic fluorescence nuclei, napari_sam.synthetic, 256 x 256, "
                          f"{DATA}"},
    )
    (args.output / "history.json").write_text(json.dumps(history.__dict__))
    if args.export:
        final = torch.load(args.output / "decoder.pt", map_location="cpu", weights_only=True)
        args.export.parent.mkdir(parents=True, exist_ok=True)
        torch.save(half(final), args.export)
        print(f"exported {args.export}")


if __name__ == "__main__":
    main()
