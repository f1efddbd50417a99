"""Small building blocks shared by the SAM networks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of a ``(B, C, H, W)`` tensor.

    Parameters
    ----------
    num_channels : int
        Number of channels ``C``.
    eps : float
        Added to the variance for numerical stability.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise channels-last with the fused kernel, then move channels back.
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them (``lin1`` -> act -> ``lin2``).

    Parameters
    ----------
    embedding_dim : int
        Input and output width.
    mlp_dim : int
        Hidden width.
    act : type of nn.Module
        Activation class, GELU by default.
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))
