"""Image embeddings: what the encoder computed for one image, and the sizes to map back."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Embedding:
    """The encoder's output for one 2D image.

    Attributes
    ----------
    features : (1, C, h, w) tensor
        Image embedding.
    original_size : tuple of int
        ``(H, W)`` of the image the user gave.
    input_size : tuple of int
        ``(H', W')`` of the image after resizing to the model input, before padding.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
