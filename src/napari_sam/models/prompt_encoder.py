"""SAM's prompt encoder: points, boxes and masks to sparse and dense embeddings.

Coordinates here are SAM's ``(x, y)`` in pixels of the model input; the flip from the public
``(row, col)`` order happens in :mod:`napari_sam.engine.prompts`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_sam.models.common import LayerNorm2d

# Point labels understood by the network. PAD marks padding tokens, which get no position;
# SAM 2 gives a box as two points labelled TOP_LEFT and BOTTOM_RIGHT.
PAD, NEGATIVE, POSITIVE, TOP_LEFT, BOTTOM_RIGHT = -1, 0, 1, 2, 3


class RandomFourierPositions(nn.Module):
    """Positional encoding of normalised coordinates with random Fourier features.

    Parameters
    ----------
    num_pos_feats : int
        Half the output width: each feature gives a sine and a cosine.
    scale : float
        Standard deviation of the random projection.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats)
        )

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode ``(..., 2)`` coordinates in ``[0, 1]`` into ``(..., 2 * num_pos_feats)``.

        Computed in float32 whatever the model's precision: bfloat16 would round a position
        on a 1024-pixel input to steps of 4 pixels.
        """
        matrix = self.positional_encoding_gaussian_matrix
        projected = (2 * coords.float() - 1) @ matrix.float()
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1).to(matrix.dtype)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every pixel centre of an ``(h, w)`` grid, as ``(C, h, w)``."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        ones = torch.ones((h, w), device=matrix.device)
        y = (ones.cumsum(dim=0) - 0.5) / h
        x = (ones.cumsum(dim=1) - 0.5) / w
        return self.encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode ``(..., 2)`` pixel coordinates ``(x, y)`` of an image of size ``(h, w)``."""
        h, w = image_size
        scale = coords.new_tensor([1.0 / w, 1.0 / h])
        return self.encode(coords * scale)


class PromptEncoder(nn.Module):
    """Embed prompts for SAM's mask decoder.

    Parameters
    ----------
    embed_dim : int
        Width of the prompt embeddings.
    image_embedding_size : tuple of int
        Spatial size ``(h, w)`` of the image embedding.
    input_image_size : tuple of int
        Padded input size ``(H, W)`` of the image encoder.
    mask_in_chans : int
        Hidden channels used to downscale mask prompts.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = RandomFourierPositions(embed_dim // 2)
        # Learned embeddings of: negative point, positive point, box top-left, box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, ``(1, embed_dim, h, w)``."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of prompts.

        Parameters
        ----------
        points : tuple of (B, N, 2) and (B, N) tensors, optional
            Point coordinates ``(x, y)`` in input pixels and labels (1 positive, 0 negative,
            -1 padding; 2 and 3 the top-left and bottom-right corners of a box, as SAM 2 gives
            boxes).
        boxes : (B, 4) tensor, optional
            Boxes ``(x0, y0, x1, y1)`` in input pixels.
        masks : (B, 1, 4h, 4w) tensor, optional
            Low-resolution mask logits.

        Returns
        -------
        sparse : (B, N', embed_dim) tensor
            One token per point and two per box.
        dense : (B, embed_dim, h, w) tensor
        """
        batch = _batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        tokens = [weight.new_empty((batch, 0, self.embed_dim))]
        if points is not None:
            coords, labels = points
            tokens.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        sparse = torch.cat(tokens, dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        coords = coords + 0.5  # to pixel centres
        if pad:  # without a box, a padding token stands in for the box corners
            coords = torch.cat([coords, coords.new_zeros((coords.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PAD)], dim=1)
        embedding = self.pe_layer.points(coords, self.input_image_size)
        # Rows for the labels PAD, NEGATIVE, POSITIVE, TOP_LEFT, BOTTOM_RIGHT, in that order.
        label_embedding = torch.cat(
            [self.not_a_point_embed.weight] + [e.weight for e in self.point_embeddings]
        )[(labels - PAD).long()]
        is_pad = (labels == PAD).unsqueeze(-1)
        return torch.where(is_pad, label_embedding, embedding + label_embedding)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.points(corners, self.input_image_size)
        corner_embedding = torch.cat(
            [self.point_embeddings[TOP_LEFT].weight, self.point_embeddings[BOTTOM_RIGHT].weight]
        )
        return embedding + corner_embedding


def _batch_size(
    points: tuple[torch.Tensor, torch.Tensor] | None,
    boxes: torch.Tensor | None,
    masks: torch.Tensor | None,
) -> int:
    if points is not None:
        return points[0].shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if masks is not None:
        return masks.shape[0]
    return 1
