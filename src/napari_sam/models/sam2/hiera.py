"""Hiera, the hierarchical vision transformer trunk of SAM 2.1's image encoder.

Four stages of transformer blocks over a ``(B, H, W, C)`` grid of tokens. Each stage after the
first starts with a block that halves the grid by max-pooling its queries (and its shortcut) and
doubles the width. Blocks attend within square windows, except a few with global attention.
Positions are added once, after the patch embedding: a learned background map resized to the
grid, plus a learned window-sized map repeated over it. There is no relative position bias, so
attention is the only place where the layout of the tokens matters.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling with stride 2 over the grid of a ``(N, H, W, C)`` tensor.

    An odd last row or column is dropped, as ``nn.MaxPool2d(2)`` does. The input may be a strided
    view (such as the queries cut out of a fused projection): nothing is copied before pooling.
    """
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, : 2 * h, : 2 * w]
    # Rows of pairs, then pairs within each row: (N, h, 2, w, 2, C). Pairwise maxima are exact.
    x = x.unflatten(1, (h, 2)).unflatten(3, (w, 2))
    rows = torch.maximum(x[:, :, 0], x[:, :, 1])
    return torch.maximum(rows[:, :, :, 0], rows[:, :, :, 1])


def bicubic_resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.interpolate(x, (h, w), mode="bicubic")`` of a ``(1, C, h0, w0)`` map, done as two matrix
    products (bicubic resizing is separable): several times faster for a small map.

    The weights are those of ``F.interpolate`` itself, read off by resizing unit vectors along one
    axis (the other axis keeps its size, which bicubic resizing leaves exactly unchanged).
    """
    h0, w0 = x.shape[-2:]

    def weights(n_in: int, n_out: int) -> torch.Tensor:  # (n_in, n_out)
        units = torch.eye(n_in, dtype=x.dtype, device=x.device).view(1, n_in, n_in, 1)
        return F.interpolate(units, size=(n_out, 1), mode="bicubic")[0, :, :, 0]

    return (weights(h0, h).t() @ x[0] @ weights(w0, w))[None]


def window_partition(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a ``(B, H, W, C)`` grid into ``size x size`` windows, zero-padding the bottom and right.

    Returns
    -------
    windows : (B * nh * nw, size, size, C) tensor
        Row-major order of windows within each image.
    (nh, nw) : tuple of int
        Number of windows down and across.
    """
    b, h, w, c = x.shape
    nh, nw = -(-h // size), -(-w // size)
    if nh * size != h or nw * size != w:
        x = F.pad(x, (0, 0, 0, nw * size - w, 0, nh * size - h))
    x = x.view(b, nh, size, nw, size, c).transpose(2, 3)
    return x.reshape(b * nh * nw, size, size, c), (nh, nw)


def window_unpartition(windows: torch.Tensor, grid: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nh * nw, s, s, C)`` to ``(B, H, W, C)``.

    ``grid`` is ``(nh, nw)``; the padding beyond ``hw = (H, W)`` is cut off (the result is then a
    view into a padded tensor).
    """
    (nh, nw), (h, w) = grid, hw
    n, s, _, c = windows.shape
    x = windows.view(n // (nh * nw), nh, nw, s, s, c).transpose(2, 3)
    x = x.reshape(-1, nh * s, nw * s, c)
    return x[:, :h, :w] if (nh * s, nw * s) != (h, w) else x


class PatchEmbed(nn.Module):
    """Image to tokens: a 7x7 convolution with stride 4, ``(B, 3, H, W)`` to ``(B, H/4, W/4, C)``.
    """

    def __init__(self, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class PooledAttention(nn.Module):
    """Multi-head self-attention over ``(N, h, w, C)`` grids (windows, or whole images).

    With ``q_pool`` the queries are max-pooled 2x2, so the output grid is half the input grid:
    this is how a stage hands a coarser grid to the next.

    Parameters
    ----------
    dim, dim_out : int
        Input and output token widths.
    num_heads : int
    q_pool : bool
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, *, q_pool: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        qkv = self.qkv(x)
        width = qkv.shape[-1] // 3
        q, k, v = qkv.view(n, h * w, 3, self.num_heads, -1).unbind(2)  # (N, L, heads, d) views
        if self.q_pool:
            q = max_pool2(q.view(n, h, w, width))
            h, w = q.shape[1:3]
            q = q.view(n, h * w, self.num_heads, -1)
        # (N, heads, L, d) views in and out; the output transposed back is contiguous.
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(n, h, w, width))


class Mlp(nn.Module):
    """Two linear layers with a GELU between (``layers.0``, ``layers.1``, as in SAM 2)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.layers[0](x)
        # In place when no gradient is recorded: the widest tensor of the block is not copied.
        hidden = F.gelu(hidden) if hidden.requires_grad else torch.ops.aten.gelu_(hidden)
        return self.layers[1](hidden)


class HieraBlock(nn.Module):
    """Pre-norm transformer block on a ``(B, H, W, C)`` grid.

    Parameters
    ----------
    dim, dim_out : int
        Input and output widths; when they differ, the shortcut is a linear projection (``proj``)
        of the normalised input.
    num_heads : int
    window_size : int
        Side of the attention windows; 0 for global attention.
    q_pool : bool
        Halve the grid (queries and shortcut max-pooled 2x2); windows then shrink to half size.
    mlp_ratio : float
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, *, window_size: int = 0,
                 q_pool: bool = False, mlp_ratio: float = 4.0):
        super().__init__()
        self.window_size = window_size
        self.q_pool = q_pool
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PooledAttention(dim, dim_out, num_heads, q_pool=q_pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: torch.Tensor, *, partitioned: bool = False) -> torch.Tensor:
        """``(B, H, W, dim)`` to ``(B, H', W', dim_out)``, ``H' = H // 2`` with ``q_pool``.

        With ``partitioned``, ``x`` holds this block's windows as separate items
        ``(B * nh * nw, s, s, dim)`` (see :func:`window_partition`), and so does the output.
        """
        normed = self.norm1(x)

        # Shortcut: the input itself, or its projection to the new width (pooled with the queries).
        shortcut = x
        if self.proj is not None:
            shortcut = self.proj(normed)
        if self.q_pool:
            shortcut = max_pool2(shortcut)

        # Attention within windows (or over the whole grid), back to the shortcut's grid.
        if self.window_size and not partitioned:
            windows, grid = window_partition(normed, self.window_size)
            attended = window_unpartition(self.attn(windows), grid, shortcut.shape[1:3])
        else:
            attended = self.attn(normed)
        # Residuals added in place into fresh outputs (whose values no gradient needs).
        x = attended.add_(shortcut)
        return self.mlp(self.norm2(x)).add_(x)


class Hiera(nn.Module):
    """The Hiera trunk: patch embedding, positions, and four stages of :class:`HieraBlock`.

    Parameters
    ----------
    embed_dim : int
        Token width of the first stage; doubled at each later stage, as is the number of heads.
    num_heads : int
        Heads in the first stage.
    stages : tuple of int
        Blocks per stage.
    global_blocks : tuple of int
        Indices (over all blocks) of the blocks with global attention.
    window_sizes : tuple of int
        Attention window of each stage. The first block of a stage still uses the previous
        stage's window (on the finer grid it pools from).
    background_size : tuple of int
        Size of the learned background position map ``pos_embed``, resized bicubically to the
        token grid.
    q_pool_stages : int
        How many stage transitions pool the grid (3: every one).

    Notes
    -----
    Input sides must be multiples of 32 (with first-stage windows of 8): the grid after the patch
    embedding (a quarter of the image) must hold a whole number of first-stage windows
    (``pos_embed_window``) and be halved three times.
    """

    def __init__(self, *, embed_dim: int = 96, num_heads: int = 1,
                 stages: tuple[int, ...] = (2, 3, 16, 3),
                 global_blocks: tuple[int, ...] = (12, 16, 20),
                 window_sizes: tuple[int, ...] = (8, 4, 14, 7),
                 background_size: tuple[int, int] = (14, 14), q_pool_stages: int = 3):
        super().__init__()
        if len(stages) != len(window_sizes):
            raise ValueError(f"one window size per stage: {len(stages)} stages, "
                             f"{len(window_sizes)} window sizes")
        if not 0 <= q_pool_stages < len(stages):
            raise ValueError(f"q_pool_stages must be in [0, {len(stages) - 1}]")
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *background_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, window_sizes[0], window_sizes[0]))

        # Blocks; the first block of stage s > 0 widens, and pools if s <= q_pool_stages.
        starts = [sum(stages[:s]) for s in range(len(stages))]
        self.stage_ends = [sum(stages[: s + 1]) - 1 for s in range(len(stages))]
        self.blocks = nn.ModuleList()
        dim, heads, window = embed_dim, num_heads, window_sizes[0]
        for stage, depth in enumerate(stages):
            for i in range(starts[stage], starts[stage] + depth):
                dim_out = dim
                if stage > 0 and i == starts[stage]:
                    dim_out, heads = 2 * dim, 2 * heads
                self.blocks.append(HieraBlock(
                    dim, dim_out, heads,
                    window_size=0 if i in global_blocks else window,
                    q_pool=0 < stage <= q_pool_stages and i == starts[stage]))
                dim, window = dim_out, window_sizes[stage]
        # Widths of the stage outputs, coarsest first (the order of sam2's ``channel_list``).
        self.channel_list = [embed_dim * 2 ** s for s in reversed(range(len(stages)))]

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """``(1, h, w, C)`` positions: background resized to the grid plus the tiled window map."""
        background = bicubic_resize(self.pos_embed, h, w)
        c, s = self.pos_embed_window.shape[1], self.pos_embed_window.shape[-1]
        tiled = background.view(1, c, h // s, s, w // s, s) + self.pos_embed_window.view(
            1, c, 1, s, 1, s)
        return tiled.view(1, c, h, w).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images ``(B, 3, H, W)`` to the four stage outputs, finest first.

        Returns
        -------
        list of 4 tensors ``(B, C_s, H / 2 ** (s + 2), W / 2 ** (s + 2))``
            Channels-first views of channels-last memory.
        """
        side = 4 * math.lcm(self.pos_embed_window.shape[-1], 8)
        if x.shape[-2] % side or x.shape[-1] % side:
            raise ValueError(f"image sides must be multiples of {side}, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        x = x.add_(self.position_embedding(*x.shape[1:3]))  # into the fresh convolution output

        # Blocks. Where a block's windows tile the grid exactly, the grid is cut into windows once
        # and kept so while the following blocks use the same windows (halved by pooling): every
        # token op is per token, so only attention needs the windows, and this saves two copies
        # of the grid per block. ``grid`` is (nh, nw) while ``x`` holds windows.
        hw, grid, outputs = tuple(x.shape[1:3]), None, []
        for i, block in enumerate(self.blocks):
            size = block.window_size
            if grid is not None and size != x.shape[1]:
                x, grid = window_unpartition(x, grid, hw), None
            if grid is None and size and _tiles(hw, size, block.q_pool):
                x, grid = window_partition(x, size)
            x = block(x, partitioned=grid is not None)
            if block.q_pool:
                hw = (hw[0] // 2, hw[1] // 2)
            if i in self.stage_ends:
                spatial = x if grid is None else window_unpartition(x, grid, hw)
                outputs.append(spatial.permute(0, 3, 1, 2))
        return outputs


def _tiles(hw: tuple[int, int], size: int, pooled: bool) -> bool:
    """Whether ``size`` windows tile an ``hw`` grid without padding (and pool evenly)."""
    return hw[0] % size == 0 and hw[1] % size == 0 and not (pooled and size % 2)
