"""The shipped default model on a real fluorescence image with ground truth.

    python benchmarks/real_nuclei.py [--checkpoint runs/nuclei_s/model.pt] [--data DIR]
        [--figure docs/images/nuclei_s_dsb.png]

The image is the one StarDist ships as ``test_image_nuclei_2d``: 512 x 512 pixels, 125 nuclei of
the 2018 Data Science Bowl (Caicedo et al., Nature Methods 16, 2019), with their label image.
Nothing here downloads it at runtime of the package: the script fetches the StarDist wheel
from PyPI once (``pip download stardist==0.9.2 --no-deps``) into ``--data`` and reads the two
TIFF files out of it.

Prints point mIoU (one click at each nucleus's most interior pixel, the mask with the highest
predicted IoU), box mIoU (its exact bounding box) and the instance F1 at IoU 0.5 of automatic
segmentation with each sampler, through :class:`napari_sam.Segmenter` (the path of the command
line and the plugin): with the estimated object diameter (the default), at the slice's native
scale (tiles of the model's input size), and with the whole slice shrunk to the model's input.
``--figure`` saves the image with the true outlines (left) and those of the default automatic
segmentation with the model's own sampler (right).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage.segmentation import find_boundaries

from napari_sam import Segmenter, load_model
from napari_sam.engine.geometry import bounding_box, centre_point, iou
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.models.registry import MODELS
from napari_sam.training.evaluation import instance_f1

WHEEL = "stardist==0.9.2"
MEMBERS = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")


def dsb_nuclei(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The image and labels of StarDist's ``test_image_nuclei_2d``, from its wheel in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("stardist-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", str(folder)],
                       check=True)
        wheels = sorted(folder.glob("stardist-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        image, labels = (tifffile.imread(io.BytesIO(wheel.read(name))) for name in MEMBERS)
    return image, labels


def prompt_scores(predictor, labels: np.ndarray) -> tuple[float, float]:
    """Point and box mIoU over every nucleus of ``labels``."""
    point, box = [], []
    for i in np.unique(labels[labels > 0]):
        truth = labels == i
        masks, scores, _ = predictor.predict(points=[centre_point(truth)], labels=[1])
        point.append(iou(masks[int(np.argmax(scores))], truth))
        masks, _, _ = predictor.predict(box=bounding_box(truth), multimask=False)
        box.append(iou(masks[0], truth))
    return float(np.mean(point)), float(np.mean(box))


def save_figure(path: Path, rgb: np.ndarray, truth: np.ndarray, found: np.ndarray) -> None:
    """The image twice, with the outlines of ``truth`` and of ``found``."""
    sides = []
    for labels, colour in ((truth, (60, 220, 90)), (found, (240, 60, 200))):
        side = rgb.copy()
        side[find_boundaries(labels, mode="inner")] = colour
        sides.append(side)
    Image.fromarray(np.concatenate(sides, axis=1)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="evaluate this file instead of the shipped weights")
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "napari-sam" / "dsb2018")
    parser.add_argument("--figure", type=Path, help="save the outlines picture here")
    args = parser.parse_args()

    image, labels = dsb_nuclei(args.data)
    model = load_model(checkpoint=args.checkpoint, device="cpu") if args.checkpoint else load_model(device="cpu")
    settings = dict(MODELS["nuclei_s"].automatic)
    print(f"image {image.shape}, {len(np.unique(labels[labels > 0]))} nuclei; automatic segmentation "
          f"settings {settings}\n")
    print("| scale | point mIoU | box mIoU | F1 grid | F1 boxes | F1 adaptive |")
    print("|---|---|---|---|---|---|")
    default = {}  # sampler -> label image of the default path, for the figure
    for name, options in (("diameter auto (the default path)", {}),
                          ("native, tiles of the model input", dict(diameter=None)),
                          ("whole slice shrunk to the input", dict(diameter=None, tile=max(image.shape)))):
        segmenter = Segmenter(model, **options)
        segmenter.set_image(image)
        point, box = prompt_scores(segmenter, labels)
        found = {s: segmenter.segment_all(sampler=s) for s in ("grid", "boxes", "adaptive")}
        default = default or found
        f1 = [instance_f1(found[s], labels)["f1"] for s in ("grid", "boxes", "adaptive")]
        print(f"| {name} | {point:.3f} | {box:.3f} | {f1[0]:.3f} | {f1[1]:.3f} | {f1[2]:.3f} |")
    if args.figure:
        save_figure(args.figure, to_rgb_uint8(image), labels, default[settings["sampler"]])


if __name__ == "__main__":
    main()
