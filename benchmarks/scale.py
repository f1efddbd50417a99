"""Object scale: the same nuclei at 0.5x, 1x and 2x, through the path every entry point takes.

    python benchmarks/scale.py [--images 4] [--data DIR] [--sets all]

For the held-out synthetic sets of ``benchmarks/default_model.py`` and the real DSB 2018 image
(``benchmarks/real_nuclei.py``), each image and its labels are resampled to 0.5x, 1x and 2x
(bilinear / nearest), and a non-square crop is added. Each is segmented by
:class:`napari_sam.Segmenter` (what ``napari-sam segment``, ``napari-sam auto``,
``segment-stack`` and the plugin run) with ``diameter="auto"`` and with the true diameter (the
median equivalent diameter of the true nuclei), and, for comparison, by the path the command
line took before (the whole plane at its own pixels as one tile: shrunk to the model input when
larger, ``diameter=None, tile=plane``).

Prints point mIoU (one click at each nucleus's most interior pixel, the best-scored of three
masks) and the instance F1 at IoU 0.5 of automatic segmentation with the model's settings.

``--sweep`` instead measures the model on nuclei of one size at a time, seen at their own pixels
(256 px images, one tile): how the preferred diameter of ``nuclei_s`` was chosen.

``--small`` instead measures the model's enlargement limit (``ModelSpec.max_enlargement``) on
nuclei of 3-7 px radius (plain, dim, noisy; seeds apart from the held-out sets) and on the
held-out dim set: point mIoU and F1 with the limit and without it, ``diameter="auto"``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from skimage.transform import resize

from napari_sam import Segmenter, load_model
from napari_sam.engine.geometry import centre_point, iou
from napari_sam.engine.scale import estimate_diameter, object_diameters
from napari_sam.models.registry import MODELS
from napari_sam.synthetic import synthetic_dataset, synthetic_nuclei
from napari_sam.training.evaluation import instance_f1

sys.path.insert(0, str(Path(__file__).parent))
from default_model import HELD_OUT  # noqa: E402
from real_nuclei import dsb_nuclei  # noqa: E402

SCALES = (0.5, 1.0, 2.0)


def true_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of the labelled objects."""
    areas = np.bincount(labels.ravel())[1:]
    return float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))


def resampled(image: np.ndarray, labels: np.ndarray, factor: float):
    """Image (bilinear, anti-aliased when shrinking) and labels (nearest) at ``factor``."""
    if factor == 1:
        return image, labels
    shape = tuple(round(n * factor) for n in image.shape)
    small = resize(image.astype(np.float32), shape, order=1, preserve_range=True,
                   anti_aliasing=factor < 1).astype(image.dtype)
    return small, resize(labels, shape, order=0, preserve_range=True,
                         anti_aliasing=False).astype(labels.dtype)


def scores(model, examples, diameter: str) -> tuple[float, float]:
    """Point mIoU and pooled instance F1 on ``(image, labels)`` pairs with ``diameter`` "auto",
    "true" (each image's) or "before" (the whole plane shrunk to the model input)."""
    ious, matched, total = [], 0, 0
    for image, labels in examples:
        if diameter == "before":
            segmenter = Segmenter(model, diameter=None, tile=max(image.shape))
        else:
            segmenter = Segmenter(model, diameter=true_diameter(labels) if diameter == "true" else "auto")
        segmenter.set_image(image)
        for i in np.unique(labels[labels > 0]):
            truth = labels == i
            if truth.sum() < 4:  # a nucleus resampled away to a few pixels
                continue
            masks, predicted, _ = segmenter.predict(points=[centre_point(truth)])
            best = masks[int(np.argmax(predicted))]
            ious.append(iou(best, truth))
        f1 = instance_f1(segmenter.segment_all(), labels)
        matched += f1["matched"]
        total += f1["predicted"] + f1["true"]
    return float(np.mean(ious)), 2 * matched / max(total, 1)


def sweep(model, radii=(4, 6, 8, 10, 13, 17, 22, 28, 35), images: int = 4) -> None:
    """Point mIoU and F1 of ``model`` on nuclei of radius ``r`` +- 15%, at their own pixels."""
    print("| nucleus radius | median diameter | point mIoU | F1 |")
    print("|---|---|---|---|")
    for radius in radii:
        pairs = [synthetic_nuclei((256, 256), radius=(0.85 * radius, 1.15 * radius), density=0.3,
                                  seed=100 + i) for i in range(images)]
        point, f1 = scores(model, pairs, "before")
        print(f"| {radius} | {np.median([true_diameter(l) for _, l in pairs]):.1f} | {point:.3f} "
              f"| {f1:.3f} |", flush=True)


SMALL = {
    "small (radius 3-7)": dict(seed=70_000, radius=(3.0, 7.0)),
    "small, dim (brightness 80-200)": dict(seed=71_000, radius=(3.0, 7.0),
                                           brightness=(80.0, 200.0)),
    "small, noisier (noise 3-5)": dict(seed=72_000, radius=(3.0, 7.0), noise=(3.0, 5.0)),
    "dim (brightness 80-200)": HELD_OUT["dim (brightness 80-200)"],
}


def small_nuclei(model, images: int) -> None:
    """Point mIoU and F1 on small nuclei, planes enlarged at most the model's limit, or fully."""
    spec = MODELS["nuclei_s"]
    print(f"| set | true diameter | point: at most x{spec.max_enlargement:g} | point: no limit "
          f"| F1: at most x{spec.max_enlargement:g} | F1: no limit |")
    print("|---|---|---|---|---|---|")
    for name, options in SMALL.items():
        pairs = list(synthetic_dataset(images, (256, 256), **options))
        limited = scores(model, pairs, "auto")
        MODELS["nuclei_s"] = replace(spec, max_enlargement=None)
        unlimited = scores(model, pairs, "auto")
        MODELS["nuclei_s"] = spec
        truth = [true_diameter(labels) for _, labels in pairs]
        print(f"| {name} | {np.min(truth):.1f}-{np.max(truth):.1f} | {limited[0]:.3f} | "
              f"{unlimited[0]:.3f} | {limited[1]:.3f} | {unlimited[1]:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images per synthetic set")
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "napari-sam" / "dsb2018")
    parser.add_argument("--checkpoint", help="evaluate this file instead of the shipped weights")
    parser.add_argument("--model-diameter", type=float,
                        help="try another preferred diameter for the model (default: its spec's)")
    parser.add_argument("--sweep", action="store_true", help="one nucleus size at a time instead")
    parser.add_argument("--small", action="store_true",
                        help="small nuclei with and without the model's enlargement limit instead")
    parser.add_argument("--sets", nargs="+", help="only these sets (first words of their names)")
    args = parser.parse_args()
    if args.sweep:
        sweep(load_model(device="cpu"))
        return
    if args.small:
        small_nuclei(load_model(device="cpu"), args.images)
        return
    if args.model_diameter:
        MODELS["nuclei_s"] = replace(MODELS["nuclei_s"], diameter=args.model_diameter)

    model = load_model(checkpoint=args.checkpoint, device="cpu") if args.checkpoint else load_model(device="cpu")
    sets = {name: list(synthetic_dataset(args.images, (256, 256), **options))
            for name, options in HELD_OUT.items()}
    sets["DSB 2018 (real)"] = [dsb_nuclei(args.data)]
    if args.sets:
        sets = {name: pairs for name, pairs in sets.items() if name.split()[0] in args.sets}
    print("| set | scale | true diameter | estimate / true | point: auto | point: true | point: "
          "before | F1: auto | F1: true | F1: before |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, examples in sets.items():
        variants = [(f"{factor:g}x", [resampled(i, l, factor) for i, l in examples])
                    for factor in SCALES]
        variants.append(("1x, crop", [(i[: i.shape[0] * 3 // 5, : i.shape[1] // 3 + 17],
                                       l[: l.shape[0] * 3 // 5, : l.shape[1] // 3 + 17])
                                      for i, l in examples]))
        for label, pairs in variants:
            truth = [true_diameter(l) for _, l in pairs]
            ratio = [(estimate_diameter(object_diameters(i)) or np.nan) / t
                     for (i, _), t in zip(pairs, truth)]
            auto, true, before = (scores(model, pairs, kind) for kind in ("auto", "true", "before"))
            print(f"| {name} | {label} | {np.median(truth):.1f} | {np.nanmedian(ratio):.2f} "
                  f"({np.nanmin(ratio):.2f}-{np.nanmax(ratio):.2f}) | {auto[0]:.3f} | "
                  f"{true[0]:.3f} | {before[0]:.3f} | {auto[1]:.3f} | {true[1]:.3f} | "
                  f"{before[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
