"""Quality of the shipped default model (``nuclei_s``) on held-out synthetic nuclei.

    python benchmarks/default_model.py [--images 24] [--checkpoint runs/nuclei_s/model.pt]

The held-out set uses other seeds than training and, for half of it, densities and noise levels
outside the training ranges. Prints single-point and box mIoU; also the same for the real
images scikit-image ships (no ground truth there: only the predicted masks' sizes are listed).
"""

from __future__ import annotations

import argparse

from napari_sam import load_model
from napari_sam.training.evaluation import prompt_miou
from napari_sam.training.synthetic import synthetic_dataset

HELD_OUT = {
    "like training (other seeds)": dict(seed=20_000),
    "denser (density 0.55-0.7)": dict(seed=30_000, density=(0.55, 0.7)),
    "noisier (noise 3-5)": dict(seed=40_000, noise=(3.0, 5.0)),
    "dim (brightness 80-200)": dict(seed=50_000, brightness=(80.0, 200.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images per held-out set")
    parser.add_argument("--checkpoint", help="evaluate this file instead of the shipped weights")
    args = parser.parse_args()

    model = load_model(checkpoint=args.checkpoint, device="cpu") if args.checkpoint else load_model(device="cpu")
    print(f"| {'held-out set':<30} | objects | point mIoU | point (best of 3) | box mIoU |")
    print(f"|{'-' * 32}|---------|------------|-------------------|----------|")
    for label, options in HELD_OUT.items():
        examples = list(synthetic_dataset(args.images, (256, 256), **options))
        scores = prompt_miou(model, examples)
        print(f"| {label:<30} | {scores['objects']:>7} | {scores['point']:>10.3f} | "
              f"{scores['point_oracle']:>17.3f} | {scores['box']:>8.3f} |")


if __name__ == "__main__":
    main()
