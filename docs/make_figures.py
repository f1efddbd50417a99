"""Pictures of the default model at work, for the model card.

    python docs/make_figures.py            # writes docs/images/nuclei_s_*.png

Each panel: the image (contrast-stretched) with the clicks (white crosses) and the masks the
default model returns for them, one colour per click.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw

from napari_sam import Predictor, load_model
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.engine.geometry import centre_point
from napari_sam.synthetic import synthetic_nuclei

OUT = Path(__file__).resolve().parent / "images"
COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)])


def panel(predictor: Predictor, image: np.ndarray, points: list[tuple[int, int]]) -> Image.Image:
    """The image with the clicked masks overlaid."""
    rgb = to_rgb_uint8(image).astype(float)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict_batch(points=np.array(points, dtype=float)[:, None, :])
    best = masks[np.arange(len(points)), scores.argmax(axis=1)]
    for i, mask in enumerate(best):
        colour = COLOURS[i % len(COLOURS)]
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * colour
    picture = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for row, col in points:
        draw.line([(col - 4, row), (col + 4, row)], fill="white", width=2)
        draw.line([(col, row - 4), (col, row + 4)], fill="white", width=2)
    return picture


def main() -> None:
    OUT.mkdir(exist_ok=True)
    predictor = Predictor(load_model(device="cpu"))

    image, labels = synthetic_nuclei((256, 256), seed=123, density=0.35)
    ids = np.unique(labels)[1:][:10]
    points = [centre_point(labels == i) for i in ids]
    side = [to_rgb_uint8(image), np.asarray(panel(predictor, image, points))]
    Image.fromarray(np.concatenate(side, axis=1)).save(OUT / "nuclei_s_synthetic.png")

    coins = skimage.data.coins()  # 303 x 384, not microscopy: round objects on a textured ground
    points = [(48, 50), (120, 150), (200, 300), (250, 80), (60, 330)]
    side = [to_rgb_uint8(coins), np.asarray(panel(predictor, coins, points))]
    Image.fromarray(np.concatenate(side, axis=1)).save(OUT / "nuclei_s_coins.png")

    cell = skimage.data.cell()  # 660 x 550 phase contrast: one cell, not fluorescence
    points = [(375, 425), (200, 250)]  # on the cell, and on background
    side = [to_rgb_uint8(cell), np.asarray(panel(predictor, cell, points))]
    Image.fromarray(np.concatenate(side, axis=1)).save(OUT / "nuclei_s_cell.png")
    print(f"wrote {sorted(p.name for p in OUT.glob('nuclei_s_*.png'))}")


if __name__ == "__main__":
    main()
