"""TinyViT image encoder of MobileSAM (``vit_t``).

A hierarchical encoder: a convolutional stem reduces the image by 4, a stage of inverted
residual convolutions follows, then stages of window attention. Patch merging between stages
halves the resolution until the features are at 1/16 of the image, the resolution SAM's prompt
encoder and mask decoder expect; a neck projects them to the prompt embedding width.

Module and parameter names follow MobileSAM's ``TinyViT`` so that ``mobile_sam.pt`` (prefix
``image_encoder.``) loads with ``load_state_dict(strict=True)``. Training-only parts of the
original (stochastic depth, dropout, gradient checkpointing, layer-wise learning rates) are left
out: they hold no parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.common import LayerNorm2d

# SAM's prompt encoder and mask decoder work on embeddings at 1/16 of the input image.
EMBEDDING_STRIDE = 16
# The convolutional stem (two stride-2 convolutions) reduces the image by this factor.
STEM_STRIDE = 4


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by batch normalisation (children ``c`` and ``bn``).

    Padding is ``kernel_size // 2``, so with stride 1 the spatial size is kept.

    Parameters
    ----------
    in_chans, out_chans : int
        Input and output channels.
    kernel_size : int
        Square kernel size.
    stride : int
        Convolution stride.
    groups : int
        Convolution groups (``in_chans`` for a depthwise convolution).
    bn_weight_init : float
        Initial batch-norm scale; 0 makes a residual branch start as the identity.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        *,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(
                in_chans,
                out_chans,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        self.add_module("bn", bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        # In evaluation the normalisation is an affine map per channel: fold it into the
        # convolution's weights and bias, which spares a pass over the activations.
        conv, bn = self.c, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class PatchEmbed(nn.Module):
    """Convolutional stem: two stride-2 3x3 convolutions, ``(B, C, H, W) -> (B, D, H/4, W/4)``.

    Parameters
    ----------
    in_chans : int
        Image channels.
    embed_dim : int
        Output channels ``D``; the intermediate width is ``D // 2``.
    """

    def __init__(self, *, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, kernel_size=3, stride=2),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: expand (1x1), depthwise 3x3, project (1x1), add, activate.

    Parameters
    ----------
    dim : int
        Input and output channels.
    expand_ratio : float
        Hidden width as a multiple of ``dim``.
    """

    def __init__(self, *, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, kernel_size=3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``; the activation comes after the residual sum."""
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Change the width between stages and downsample: 1x1, depthwise 3x3 (strided), 1x1.

    Parameters
    ----------
    dim, out_dim : int
        Input and output channels.
    stride : int
        Stride of the depthwise convolution: 2 halves the resolution, 1 keeps it.
    """

    def __init__(self, *, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, kernel_size=3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, dim, H, W) -> (B, out_dim, H / stride, W / stride)``."""
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class ConvStage(nn.Module):
    """First stage: ``depth`` MBConv blocks, then an optional patch merging.

    Parameters
    ----------
    dim : int
        Channels of the blocks.
    depth : int
        Number of MBConv blocks.
    expand_ratio : float
        Hidden width of the MBConv blocks as a multiple of ``dim``.
    downsample : PatchMerging or None
        Applied after the blocks.
    """

    def __init__(
        self, *, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MBConv(dim=dim, expand_ratio=expand_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C', H', W')``."""
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


def relative_offset_index(window_size: int) -> torch.Tensor:
    """Index of the absolute offset ``(|dy|, |dx|)`` between every pair of window positions.

    Returns
    -------
    (N, N) LongTensor, N = window_size**2
        ``|dy| * window_size + |dx|`` for positions numbered row by row, which is the order in
        which MobileSAM numbers the distinct offsets (so its ``attention_biases`` columns match).
    """
    # An index table: computed on the CPU even while a model is built on the meta device for
    # its shapes (see models.weights._ShapesOnly), then moved with the module.
    positions = torch.arange(window_size, device="cpu")
    rows, cols = torch.meshgrid(positions, positions, indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    return dy * window_size + dx


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per head and offset.

    The input is layer-normalised first. ``qkv`` produces, for each head in turn, its query,
    key and value (head-major, not q/k/v-major), as in MobileSAM's checkpoints.

    Parameters
    ----------
    dim : int
        Token width; must be divisible by ``num_heads``.
    num_heads : int
        Number of heads.
    window_size : int
        Side of the square window; the bias table has ``window_size**2`` offsets per head.
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size**2))
        self.register_buffer(
            "attention_bias_idxs", relative_offset_index(window_size), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, C) -> (N, L, C)`` for ``N`` windows of ``L = window_size**2`` tokens."""
        n, length, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(n, length, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, L, L)
        # A mask given for every window lets PyTorch use its fused CPU kernel; a broadcast one
        # falls back to the unfused path, 2-3x slower here.
        bias = bias.to(q.dtype).expand(n, -1, -1, -1).contiguous()
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.head_dim**-0.5)
        return self.proj(x.transpose(1, 2).reshape(n, length, dim))


class NormMLP(nn.Module):
    """Layer norm, then ``fc1`` -> GELU -> ``fc2``.

    Parameters
    ----------
    dim : int
        Input and output width.
    hidden_dim : int
        Hidden width.
    """

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Window attention (residual), depthwise convolution (not residual), MLP (residual).

    Parameters
    ----------
    dim : int
        Token width.
    num_heads : int
        Attention heads.
    window_size : int
        Side of the square attention windows.
    mlp_ratio : float
        MLP hidden width as a multiple of ``dim``.
    local_conv_size : int
        Kernel size of the depthwise convolution between attention and MLP.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim=dim, num_heads=num_heads, window_size=window_size)
        self.mlp = NormMLP(dim=dim, hidden_dim=int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, kernel_size=local_conv_size, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        # Attention in windows
        x = x + self._attend_in_windows(x)
        # Depthwise convolution, on a channels-last view (no copy)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        # MLP
        return x + self.mlp(x)

    def _attend_in_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Split ``(B, H, W, C)`` into windows, attend within each, put them back."""
        b, h, w, c = x.shape
        size = self.window_size
        pad_h, pad_w = -h % size, -w % size
        if pad_h or pad_w:
            # As in MobileSAM, the padding tokens are zeros that are not masked out: after the
            # attention's layer norm they equal its bias and take part as keys and values.
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        rows, cols = (h + pad_h) // size, (w + pad_w) // size
        windows = (
            x.reshape(b, rows, size, cols, size, c)
            .transpose(2, 3)
            .reshape(b * rows * cols, size * size, c)
        )
        windows = self.attn(windows)
        x = (
            windows.reshape(b, rows, cols, size, size, c)
            .transpose(2, 3)
            .reshape(b, rows * size, cols * size, c)
        )
        return x[:, :h, :w] if pad_h or pad_w else x


class TransformerStage(nn.Module):
    """A stage of ``depth`` TinyViT blocks, then an optional patch merging.

    Parameters
    ----------
    dim : int
        Token width of the blocks.
    depth : int
        Number of blocks.
    num_heads, window_size, mlp_ratio, local_conv_size
        Passed to every :class:`TinyViTBlock`.
    downsample : PatchMerging or None
        Applied after the blocks.
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(
                dim=dim,
                num_heads=num_heads,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                local_conv_size=local_conv_size,
            )
            for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C', H', W')``; the blocks work on a ``(B, H, W, C)`` view."""
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class TinyViT(nn.Module):
    """MobileSAM's TinyViT image encoder; the defaults are the ``vit_t`` configuration.

    Parameters
    ----------
    img_size : int
        Side of the square input image; a positive multiple of 16.
    in_chans : int
        Image channels.
    embed_dims, depths, num_heads, window_sizes : tuple of int
        Per stage (at least 3 stages): width, number of blocks, attention heads, window side.
        The first stage is convolutional, so ``num_heads[0]`` and ``window_sizes[0]`` are unused.
    mlp_ratio : float
        MLP hidden width of the attention blocks, as a multiple of their width.
    mbconv_expand_ratio : float
        Hidden width of the MBConv blocks of the first stage, as a multiple of their width.
    local_conv_size : int
        Kernel size of the depthwise convolution in the attention blocks.
    num_classes : int
        Outputs of the classification ``head``, which the encoder never uses (0: no head).
    out_chans : int
        Channels of the output embedding (SAM's prompt embedding width).

    Notes
    -----
    Each patch merging halves the resolution until the features are at 1/16 of the image and
    keeps it from then on. For ``vit_t`` that gives strides 2, 2, 1, exactly like MobileSAM
    (which decides by the output width: stride 1 when it is 320, 448 or 576).

    Examples
    --------
    >>> encoder = TinyViT(img_size=256).eval()
    >>> encoder(torch.zeros(1, 3, 256, 256)).shape
    torch.Size([1, 256, 16, 16])
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        num_classes: int = 1000,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        _validate_config(
            img_size=img_size,
            embed_dims=embed_dims,
            depths=depths,
            num_heads=num_heads,
            window_sizes=window_sizes,
            num_classes=num_classes,
        )
        self.img_size = img_size
        self.in_chans = in_chans

        self.patch_embed = PatchEmbed(in_chans=in_chans, embed_dim=embed_dims[0])
        self.layers = nn.ModuleList()
        stride = STEM_STRIDE  # of the current stage, relative to the image
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            downsample = None
            if i + 1 < len(embed_dims):
                step = 2 if stride < EMBEDDING_STRIDE else 1
                downsample = PatchMerging(dim=dim, out_dim=embed_dims[i + 1], stride=step)
                stride *= step
            if i == 0:
                stage = ConvStage(
                    dim=dim, depth=depth, expand_ratio=mbconv_expand_ratio, downsample=downsample
                )
            else:
                stage = TransformerStage(
                    dim=dim,
                    depth=depth,
                    num_heads=num_heads[i],
                    window_size=window_sizes[i],
                    mlp_ratio=mlp_ratio,
                    local_conv_size=local_conv_size,
                    downsample=downsample,
                )
            self.layers.append(stage)

        # Unused by the encoder: they exist only so that official checkpoints load strictly.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.apply(_init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed images.

        Parameters
        ----------
        x : (B, in_chans, img_size, img_size) Tensor
            Images, normalised as SAM expects.

        Returns
        -------
        (B, out_chans, img_size / 16, img_size / 16) Tensor
        """
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"TinyViT expects images of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}; resize and pad the images to img_size first."
            )
        # Channels-last activations: oneDNN's convolutions run ~1.5x faster on CPU, and the
        # attention stages' (B, H, W, C) views of them need no copy.
        x = x.contiguous(memory_format=torch.channels_last)
        # Stem: 1/4 of the image
        x = self.patch_embed(x)
        # Convolutional then attention stages, down to 1/16
        for stage in self.layers:
            x = stage(x)
        # Neck: project to the prompt embedding width
        return self.neck(x).contiguous()


def _init_linear_and_norm(module: nn.Module) -> None:
    """Initialise like MobileSAM for training from scratch (checkpoints overwrite it)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _validate_config(
    *,
    img_size: int,
    embed_dims: Sequence[int],
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_sizes: Sequence[int],
    num_classes: int,
) -> None:
    """Raise ValueError with the offending argument if the configuration cannot work."""
    if img_size <= 0 or img_size % EMBEDDING_STRIDE:
        raise ValueError(f"img_size must be a positive multiple of 16, got {img_size}.")
    per_stage = {
        "embed_dims": embed_dims,
        "depths": depths,
        "num_heads": num_heads,
        "window_sizes": window_sizes,
    }
    lengths = {name: len(values) for name, values in per_stage.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"embed_dims, depths, num_heads and window_sizes differ in length: {lengths}."
        )
    if lengths["embed_dims"] < 3:
        raise ValueError(
            "TinyViT needs at least 3 stages to reach 1/16 of the image, "
            f"got {lengths['embed_dims']} (embed_dims={tuple(embed_dims)})."
        )
    for name, values in per_stage.items():
        if any(v <= 0 for v in values):
            raise ValueError(f"{name} must be positive, got {tuple(values)}.")
    for i in range(1, len(embed_dims)):
        if embed_dims[i] % num_heads[i]:
            raise ValueError(
                f"embed_dims[{i}]={embed_dims[i]} is not divisible by "
                f"num_heads[{i}]={num_heads[i]}."
            )
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}.")
