"""Fixed sine position encodings of SAM 2: over a feature grid, and along one axis (time or z).

Both are functions of the grid size alone, with no weights, so they are computed where needed
and cached per size and device.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def _wavelengths(pairs: int, temperature: float, device) -> torch.Tensor:
    """``temperature ** (2 * (i // 2) / pairs)`` for ``i < pairs``: each one used twice."""
    index = torch.arange(pairs, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / pairs)


@lru_cache(maxsize=16)
def _grid(channels: int, height: int, width: int, temperature: float, device: torch.device):
    pairs = channels // 2
    wavelengths = _wavelengths(pairs, temperature, device)
    eps, scale = 1e-6, 2 * math.pi

    def axis(n: int) -> torch.Tensor:
        # Positions 1..n normalised to (0, 2 pi], then sine on even and cosine on odd channels.
        pos = torch.arange(1, n + 1, dtype=torch.float32, device=device) / (n + eps) * scale
        angles = pos[:, None] / wavelengths
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    y = axis(height)[:, None, :].expand(height, width, pairs)
    x = axis(width)[None, :, :].expand(height, width, pairs)
    return torch.cat((y, x), dim=2).permute(2, 0, 1).contiguous()


def sine_grid(channels: int, height: int, width: int, device=None,
              temperature: float = 10000.0) -> torch.Tensor:
    """Sine encoding of the positions of a ``height x width`` grid.

    Parameters
    ----------
    channels : int
        Even number of channels: the first half encodes the row, the second the column.
    height, width : int
        Grid size.
    device : torch.device, optional
    temperature : float
        Longest wavelength.

    Returns
    -------
    (1, channels, height, width) float32 tensor
        Shared and cached: do not modify it in place.
    """
    if channels % 2:
        raise ValueError(f"channels must be even, got {channels}")
    device = torch.device("cpu") if device is None else torch.device(device)
    # Made outside inference mode, so that the cached tensor serves autograd later too.
    with torch.inference_mode(False):
        return _grid(channels, height, width, float(temperature), device)[None]


def sine_1d(positions: torch.Tensor, channels: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine encoding of positions along one axis (SAM 2's temporal encoding of object pointers).

    Parameters
    ----------
    positions : (N,) float tensor
    channels : int
        Output width: sines of ``channels // 2`` frequencies, then their cosines.

    Returns
    -------
    (N, channels) tensor
    """
    angles = positions[:, None] / _wavelengths(channels // 2, temperature, positions.device)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)
