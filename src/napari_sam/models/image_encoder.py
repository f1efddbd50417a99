"""SAM's ViT image encoder: windowed and global attention with decomposed relative positions."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.common import LayerNorm2d, MLPBlock


def relative_position_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Look up learned relative-position embeddings for every (query, key) pair on one axis.

    Parameters
    ----------
    rel_pos : (2 * size - 1, C) tensor
        Learned embeddings, one per offset from ``-(size - 1)`` to ``size - 1``.
    size : int
        Number of positions along the axis (queries and keys alike).

    Returns
    -------
    (size, size, C) tensor
        Entry ``[i, j]`` is the embedding of the offset ``i - j``.
    """
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(
            f"relative position table has {rel_pos.shape[0]} rows, expected {2 * size - 1} for a "
            f"{size}-wide grid: the checkpoint was made for another input size"
        )
    positions = torch.arange(size, device=rel_pos.device)
    offsets = positions[:, None] - positions[None, :] + (size - 1)
    return rel_pos[offsets]


class Attention(nn.Module):
    """Multi-head self-attention over a 2D grid of tokens with decomposed relative positions.

    The relative-position terms of the height and width axes are added to the attention logits
    as a float mask of ``scaled_dot_product_attention``, which lets PyTorch use its fused kernel.

    Parameters
    ----------
    dim : int
        Token width.
    num_heads : int
        Number of attention heads.
    qkv_bias : bool
        Whether the query / key / value projection has a bias.
    use_rel_pos : bool
        Whether to add decomposed relative-position terms.
    input_size : tuple of int
        Grid size ``(H, W)`` the relative-position tables are made for.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is needed when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
        """Attend over the grid.

        Parameters
        ----------
        x : (B, H, W, C) tensor
        workspace : dict, optional
            Buffers to reuse for the attention bias, by shape (see :meth:`ImageEncoderViT.forward`).

        Returns
        -------
        (B, H, W, C) tensor
        """
        B, H, W, C = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(B, H * W, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * heads, H * W, C // heads).unbind(0)
        bias = self._relative_position_bias(q, H, W, workspace) if self.use_rel_pos else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x.view(B, heads, H, W, C // heads).permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        return self.proj(x)

    def _relative_position_bias(
        self, q: torch.Tensor, H: int, W: int, workspace: dict | None
    ) -> torch.Tensor:
        """Additive attention bias ``(B*heads, H*W, H*W)`` from the unscaled queries."""
        table_h = relative_position_table(self.rel_pos_h, H)  # (H, H, C)
        table_w = relative_position_table(self.rel_pos_w, W)  # (W, W, C)
        grid_q = q.reshape(q.shape[0], H, W, q.shape[-1])
        # Contiguous terms make the broadcast sum below come out contiguous, so the reshape
        # to the (large) mask is free instead of a copy.
        bias_h = torch.einsum("bhwc,hkc->bhwk", grid_q, table_h).contiguous()  # over key rows
        bias_w = torch.einsum("bhwc,wkc->bhwk", grid_q, table_w).contiguous()  # over key columns
        shape = (q.shape[0], H, W, H, W)
        if workspace is None or torch.is_grad_enabled():
            bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
        else:
            key = (shape, q.dtype, q.device)
            if key not in workspace:
                workspace[key] = torch.empty(shape, dtype=q.dtype, device=q.device)
            bias = torch.add(bias_h[:, :, :, :, None], bias_w[:, :, :, None, :], out=workspace[key])
        return bias.view(q.shape[0], H * W, H * W)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into ``(B * nWindows, window, window, C)``, zero-padding H and W.

    Returns the windows and the padded size, which :func:`window_unpartition` needs.
    """
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % window, (-W) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C), (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: reassemble windows and drop the padding."""
    Hp, Wp = padded
    H, W = size
    B = windows.shape[0] // ((Hp // window) * (Wp // window))
    x = windows.view(B, Hp // window, Wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :] if (Hp, Wp) != (H, W) else x


class Block(nn.Module):
    """Transformer block: (windowed or global) attention and an MLP, both pre-norm residual.

    Parameters
    ----------
    dim : int
        Token width.
    num_heads : int
        Attention heads.
    mlp_ratio : float
        Hidden width of the MLP relative to ``dim``.
    qkv_bias, use_rel_pos : bool
        See :class:`Attention`.
    window_size : int
        Attention window; 0 means global attention over the whole grid.
    input_size : tuple of int
        Grid size of the encoder, used for global attention's position tables.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor, workspace: dict | None = None) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            windows, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows, workspace), self.window_size, padded, size)
        else:
            x = self.attn(x, workspace)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's image encoder: a plain ViT with a convolutional neck.

    Parameters
    ----------
    img_size : int
        Side of the square input image.
    patch_size : int
        Side of a patch; the embedding grid is ``img_size // patch_size`` wide.
    in_chans : int
        Input channels.
    embed_dim, depth, num_heads : int
        Width, number of blocks and heads of the ViT.
    mlp_ratio : float
        MLP hidden width relative to ``embed_dim``.
    out_chans : int
        Channels of the output embedding.
    qkv_bias, use_abs_pos, use_rel_pos : bool
        Attention bias, absolute and relative position embeddings.
    window_size : int
        Window of the windowed-attention blocks.
    global_attn_indexes : tuple of int
        Blocks that attend globally.

    Examples
    --------
    >>> encoder = ImageEncoderViT(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
    ...                           out_chans=16, window_size=4, global_attn_indexes=(1,))
    >>> encoder(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 16, 8, 8])
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, grid, grid, embed_dim)) if use_abs_pos else None
        )
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed images.

        Parameters
        ----------
        x : (B, in_chans, img_size, img_size) tensor
            Normalised, padded images.

        Returns
        -------
        (B, out_chans, img_size // patch_size, img_size // patch_size) tensor
        """
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        # The attention bias of a global block is large (805 MB for vit_b); allocating it once
        # per image instead of once per block saves the cost of touching fresh memory each time.
        workspace: dict = {}
        for block in self.blocks:
            x = block(x, workspace)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens, channels last: ``(B, C, H, W) -> (B, H/p, W/p, D)``."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)
