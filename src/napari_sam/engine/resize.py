"""Resizing an image to the model input, and mapping coordinates along with it."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resized_shape(shape: tuple[int, int], long_side: int) -> tuple[int, int]:
    """Size ``(h, w)`` of an image of ``shape`` scaled so that its longer side is ``long_side``
    (at least one pixel on each side, for very thin images)."""
    scale = long_side / max(shape)
    return max(1, int(shape[0] * scale + 0.5)), max(1, int(shape[1] * scale + 0.5))


def resize_rgb(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 so that the longer side is ``long_side`` (bilinear, antialiased).

    Pillow's resampling is used because it is what SAM was trained with (through torchvision),
    so embeddings equal the reference ones.
    """
    h, w = resized_shape(image.shape[:2], long_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def scale_xy(coords: np.ndarray, original: tuple[int, int], resized: tuple[int, int]) -> np.ndarray:
    """Map ``(..., 2)`` ``(x, y)`` pixel coordinates from the original to the resized image."""
    factors = np.array([resized[1] / original[1], resized[0] / original[0]])
    return np.asarray(coords, dtype=np.float64) * factors
