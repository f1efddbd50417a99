"""Quality of the shipped default model (``nuclei_s``) on held-out synthetic nuclei.

    python benchmarks/default_model.py [--images 24] [--checkpoint runs/nuclei_s/model.pt]

The held-out set uses other seeds than training and, for half of it, densities and noise levels
outside the training ranges. Prints single-point and box mIoU, and the instance F1 (IoU 0.5) of
automatic segmentation with each prompt sampler, with the settings the registry gives the model.
"""

from __future__ import annotations

import argparse

from napari_sam import AutomaticMaskGenerator, load_model
from napari_sam.models.registry import MODELS
from napari_sam.training.evaluation import instance_f1, prompt_miou
from napari_sam.synthetic import synthetic_dataset

HELD_OUT = {
    "like training (other seeds)": dict(seed=20_000),
    "denser (density 0.55-0.7)": dict(seed=30_000, density=(0.55, 0.7)),
    "noisier (noise 3-5)": dict(seed=40_000, noise=(3.0, 5.0)),
    "dim (brightness 80-200)": dict(seed=50_000, brightness=(80.0, 200.0)),
}


def automatic_f1(model, examples, sampler: str, settings: dict) -> float:
    """Instance F1 at IoU 0.5 of the automatic label images, pooled over the images."""
    generator = AutomaticMaskGenerator(model, **{**settings, "sampler": sampler})
    matched = predicted = true = 0
    for image, labels in examples:
        scores = instance_f1(generator.generate_labels(image), labels)
        matched, predicted, true = (matched + scores["matched"], predicted + scores["predicted"],
                                    true + scores["true"])
    return 2 * matched / max(1, predicted + true)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images per held-out set")
    parser.add_argument("--checkpoint", help="evaluate this file instead of the shipped weights")
    parser.add_argument("--auto-images", type=int, default=6,
                        help="images per held-out set for automatic segmentation (slower)")
    parser.add_argument("--iou", type=float, help="pred_iou_thresh (default: the model's setting)")
    parser.add_argument("--stability", type=float, help="stability_score_thresh (likewise)")
    args = parser.parse_args()

    model = load_model(checkpoint=args.checkpoint, device="cpu") if args.checkpoint else load_model(device="cpu")
    settings = dict(MODELS["nuclei_s"].automatic)
    if args.iou is not None:
        settings["pred_iou_thresh"] = args.iou
    if args.stability is not None:
        settings["stability_score_thresh"] = args.stability
    print(f"automatic segmentation: {settings}, instance F1 at IoU 0.5 on the first "
          f"{args.auto_images} images of each set\n")
    print(f"| {'held-out set':<30} | objects | point mIoU | point (best of 3) | box mIoU "
          f"| F1 grid | F1 boxes | F1 adaptive |")
    print(f"|{'-' * 32}|---------|------------|-------------------|----------|---------|----------|-------------|")
    for label, options in HELD_OUT.items():
        examples = list(synthetic_dataset(args.images, (256, 256), **options))
        scores = prompt_miou(model, examples)
        f1 = [automatic_f1(model, examples[: args.auto_images], sampler, settings)
              for sampler in ("grid", "boxes", "adaptive")]
        print(f"| {label:<30} | {scores['objects']:>7} | {scores['point']:>10.3f} | "
              f"{scores['point_oracle']:>17.3f} | {scores['box']:>8.3f} | {f1[0]:>7.3f} "
              f"| {f1[1]:>8.3f} | {f1[2]:>11.3f} |")


if __name__ == "__main__":
    main()
