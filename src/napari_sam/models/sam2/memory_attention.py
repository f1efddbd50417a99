"""SAM 2's memory attention: a plane's features attend to the memory of other planes.

Each layer has self-attention over the plane's tokens, cross-attention to the memory tokens
(the spatial memory of several planes, then object-pointer tokens) and a feed-forward MLP. Both
attentions encode positions by rotating queries and keys (2D axial RoPE): the spatial memory of
every plane is rotated like the current plane's grid, the object pointers are not rotated.

Parameter names follow Meta's ``sam2`` so that its checkpoints load unchanged. Tensors are
sequence-first at the public boundary, ``(tokens, batch, channels)``, like Meta's.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.nn import functional as F


def rope_rotations(dim: int, height: int, width: int, theta: float = 10000.0,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Rotations of the channel pairs of tokens on a ``height x width`` grid (2D axial RoPE).

    Pairs ``(2i, 2i + 1)`` of a token's ``dim`` channels are rotated together: the first half of
    the pairs by angles proportional to the token's column, the second half to its row.

    Parameters
    ----------
    dim : int
        Channels per token (per attention head), a multiple of 4.
    height, width : int
        Grid size; tokens are row-major.
    theta : float
        Longest wavelength.
    device : torch.device or str, optional
        CPU by default.

    Returns
    -------
    (height * width, dim // 2) complex64 tensor
        Unit complex numbers; on MPS, a real ``(height * width, dim // 2, 2)`` tensor of their
        cosines and sines. Shared and cached per size and device: do not modify it in place.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    return _rotations(dim, height, width, float(theta), device)


@lru_cache(maxsize=16)
def _rotations(dim: int, height: int, width: int, theta: float,
               device: torch.device) -> torch.Tensor:
    # Built outside inference mode, so that the cached tables also serve autograd later.
    with torch.inference_mode(False), torch.no_grad():
        return _build_rotations(dim, height, width, theta, device)


def _build_rotations(dim: int, height: int, width: int, theta: float,
                     device: torch.device) -> torch.Tensor:
    freqs = 1.0 / theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim)
    index = torch.arange(height * width)
    cols, rows = (index % width).float(), torch.div(index, width, rounding_mode="floor").float()
    angles = torch.cat((torch.outer(cols, freqs), torch.outer(rows, freqs)), dim=1)
    if device.type == "mps":  # complex numbers are not supported by every MPS kernel
        return torch.stack((angles.cos(), angles.sin()), dim=-1).to(device)
    return torch.polar(torch.ones_like(angles), angles).to(device)


def _pairs(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``(..., k * grid, C)`` as ``(..., k, grid, C // 2, 2)`` (a view where possible)."""
    *lead, n, c = x.shape
    return x.reshape(*lead, n // grid, grid, c // 2, 2)


def rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs of tokens by their positions' rotations.

    Parameters
    ----------
    x : (..., N, C) tensor
        Tokens: one grid (``N = L``) or several grids one after the other (``N = k L``).
    rotations : tensor
        Of :func:`rope_rotations` for this grid (``L`` tokens).

    Returns
    -------
    (..., N, C) tensor
        Computed in float32 at least, returned in ``x``'s dtype.
    """
    pairs = _pairs(x.float(), rotations.shape[0])
    if rotations.is_complex():
        out = torch.view_as_real(torch.view_as_complex(pairs) * rotations)
    else:
        cos, sin = rotations.unbind(-1)
        even, odd = pairs.unbind(-1)
        out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return out.reshape(x.shape).to(x.dtype)


# Scores computed at once by the values-first attention: 64 MB of float32.
_SCORES_PER_CHUNK = 1 << 24


def attend_values_first(q: torch.Tensor, k: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) @ values`` on the CPU, chunked over the queries.

    Used with the memory itself as ``values``, before the value projection: attention weights
    sum to 1 per query, so mixing the narrow memory tokens (64 channels) and projecting the
    mixture afterwards equals mixing projected values (256 channels), at a quarter of the cost
    of that step. Inference only (the scores are normalised in place).

    Parameters
    ----------
    q : (B, H, N, d) tensor
    k : (B, H, M, d) tensor
    values : (B, M, c) tensor
        Shared by the heads.

    Returns
    -------
    (B, H, N, c) tensor
    """
    (batch, heads, n, d), m = q.shape, k.shape[2]
    q = q * d**-0.5
    out = q.new_empty(batch, heads, n, values.shape[-1])
    rows = max(1, min(n, _SCORES_PER_CHUNK // m))
    scores = q.new_empty(rows, m)
    for b in range(batch):
        for h in range(heads):
            keys_t = k[b, h].t()
            for start in range(0, n, rows):
                s = scores[: min(rows, n - start)]
                torch.mm(q[b, h, start : start + rows], keys_t, out=s)
                torch.softmax(s, dim=-1, out=s)
                torch.mm(s, values[b], out=out[b, h, start : start + rows])
    return out


class RoPEAttention(nn.Module):
    """Attention with rotary position encoding of queries and keys.

    Parameters
    ----------
    embedding_dim : int
        Width of the queries and of the output.
    num_heads : int
        Attention heads.
    kv_in_dim : int, optional
        Width of keys and values (the memory's); ``embedding_dim`` by default.
    rope_theta : float
        Longest rotation wavelength.
    rope_k_repeat : bool
        Keys are several grids like the queries' one after the other (memory of several
        planes), each rotated like the queries.
    """

    def __init__(self, embedding_dim: int = 256, num_heads: int = 1, *,
                 kv_in_dim: int | None = None, rope_theta: float = 10000.0,
                 rope_k_repeat: bool = False) -> None:
        super().__init__()
        if embedding_dim % (4 * num_heads):
            raise ValueError(f"embedding_dim={embedding_dim} must be a multiple of 4 * num_heads")
        kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.num_heads = num_heads
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self.q_proj = nn.Linear(embedding_dim, embedding_dim)
        self.k_proj = nn.Linear(kv_in_dim, embedding_dim)
        self.v_proj = nn.Linear(kv_in_dim, embedding_dim)
        self.out_proj = nn.Linear(embedding_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                size: tuple[int, int], num_k_exclude_rope: int = 0) -> torch.Tensor:
        """Attend from ``q`` to ``k`` / ``v`` (batch-first).

        Parameters
        ----------
        q : (B, h * w, embedding_dim) tensor
            Queries on an ``h x w`` grid, row-major.
        k, v : (B, M, kv_in_dim) tensors
            Keys and values. Without ``rope_k_repeat``, ``M = h * w`` (self-attention).
        size : (int, int)
            The grid ``(h, w)``.
        num_k_exclude_rope : int
            The last keys that are not rotated (object pointers); the others must be whole grids.

        Returns
        -------
        (B, h * w, embedding_dim) tensor
        """
        q, k = self._heads(self.q_proj(q)), self._heads(self.k_proj(k))
        grid, n_rope = size[0] * size[1], k.shape[2] - num_k_exclude_rope
        if q.shape[2] != grid or n_rope % grid or (n_rope != grid and not self.rope_k_repeat):
            raise ValueError(f"{q.shape[2]} queries and {n_rope} keys to rotate on a grid of size "
                             f"{size}: both must be the grid (the keys repeated, with "
                             "rope_k_repeat)")
        rotations = rope_rotations(q.shape[-1], *size, self.rope_theta, q.device)
        q = rotate(q, rotations)
        # Every plane of the memory is rotated like the queries' grid (by broadcasting), the
        # object pointers after them are not.
        if num_k_exclude_rope:
            k = torch.cat((rotate(k[:, :, :n_rope], rotations), k[:, :, n_rope:]), dim=2)
        else:
            k = rotate(k, rotations)

        if self._values_first(q, k, v):
            # Mix the memory tokens, then project the mixture to values, head by head.
            mixed = attend_values_first(q, k, v)
            weight = self.v_proj.weight.view(self.num_heads, -1, v.shape[-1])
            out = torch.einsum("bhnc,hdc->bnhd", mixed, weight).flatten(2) + self.v_proj.bias
        else:
            out = F.scaled_dot_product_attention(q, k, self._heads(self.v_proj(v)))
            out = out.transpose(1, 2).flatten(2)
        return self.out_proj(out)

    def _values_first(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Mixing the inputs before the value projection is cheaper, and allowed here.

        On the CPU, with value inputs narrower than a head, and without autograd: elsewhere
        the fused attention kernels are faster (GPUs) or needed (gradients).
        """
        tracked = torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad
            or self.v_proj.weight.requires_grad)
        return q.device.type == "cpu" and v.shape[-1] < q.shape[-1] and not tracked


class MemoryAttentionLayer(nn.Module):
    """Self-attention, cross-attention to memory, feed-forward; each pre-normed and residual.

    Positions: the memory's encoding is added to the cross-attention keys; the plane's own
    positions enter through rotation only (as in SAM 2.1's configuration).

    Parameters
    ----------
    d_model : int
        Width of the plane's tokens.
    kv_in_dim : int
        Width of the memory tokens.
    dim_feedforward : int
        Hidden width of the feed-forward MLP (ReLU).
    num_heads : int
        Attention heads.
    """

    def __init__(self, d_model: int = 256, *, kv_in_dim: int = 64, dim_feedforward: int = 2048,
                 num_heads: int = 1, rope_theta: float = 10000.0) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads, rope_theta=rope_theta)
        self.cross_attn_image = RoPEAttention(d_model, num_heads, kv_in_dim=kv_in_dim,
                                              rope_theta=rope_theta, rope_k_repeat=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, *,
                size: tuple[int, int], num_obj_ptr_tokens: int = 0) -> torch.Tensor:
        """One layer, batch-first.

        Parameters
        ----------
        x : (B, h * w, d_model) tensor
            The plane's tokens.
        keys : (B, M, kv_in_dim) tensor
            The memory plus its position encoding.
        memory : (B, M, kv_in_dim) tensor
            The memory (values).
        size : (int, int)
            The grid ``(h, w)``.
        num_obj_ptr_tokens : int
            Object-pointer tokens at the end of the memory.
        """
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y, size=size)
        y = self.norm2(x)
        x = x + self.cross_attn_image(y, keys, memory, size=size,
                                      num_k_exclude_rope=num_obj_ptr_tokens)
        y = self.norm3(x)
        return x + self.linear2(F.relu(self.linear1(y), inplace=True))


class MemoryAttention(nn.Module):
    """Condition a plane's features on memory (Meta's ``sam2`` ``MemoryAttention``).

    Parameters
    ----------
    d_model : int
        Width of the plane's tokens.
    num_layers : int
        Layers of :class:`MemoryAttentionLayer`.
    kv_in_dim : int
        Width of the memory tokens.
    dim_feedforward, num_heads, rope_theta
        Of each layer.
    """

    def __init__(self, d_model: int = 256, num_layers: int = 4, *, kv_in_dim: int = 64,
                 dim_feedforward: int = 2048, num_heads: int = 1,
                 rope_theta: float = 10000.0) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(d_model, kv_in_dim=kv_in_dim, dim_feedforward=dim_feedforward,
                                 num_heads=num_heads, rope_theta=rope_theta)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, curr: torch.Tensor | list[torch.Tensor], memory: torch.Tensor,
                curr_pos: torch.Tensor | list[torch.Tensor] | None = None,
                memory_pos: torch.Tensor | None = None, num_obj_ptr_tokens: int = 0, *,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        """The plane's tokens after attending to each other and to the memory.

        Parameters
        ----------
        curr : (HW, B, d_model) tensor, or a list holding it
            The plane's features, sequence-first, row-major over the grid.
        memory : (M, B, kv_in_dim) tensor
            Spatial memory of one or more planes (each ``HW`` tokens), then
            ``num_obj_ptr_tokens`` object-pointer tokens.
        curr_pos : (HW, B, d_model) tensor, or a list holding it, optional
            The plane's position encoding, added (times 0.1) at the input.
        memory_pos : (M, B, kv_in_dim) tensor, optional
            The memory's position encoding, added to the cross-attention keys.
        num_obj_ptr_tokens : int
            Object-pointer tokens at the end of ``memory``, which are not rotated.
        size : (int, int), optional
            The grid ``(H, W)``; square by default, as Meta's assumes.

        Returns
        -------
        (HW, B, d_model) tensor
        """
        if isinstance(curr, list):
            (curr,) = curr
        if isinstance(curr_pos, list):
            (curr_pos,) = curr_pos
        if curr.shape[1] != memory.shape[1]:
            raise ValueError(f"curr {tuple(curr.shape)} and memory {tuple(memory.shape)} must have "
                             "the same batch size (dimension 1)")
        if size is None:
            side = round(curr.shape[0] ** 0.5)
            if side * side != curr.shape[0]:
                raise ValueError(f"{curr.shape[0]} tokens are not a square grid: pass size=(H, W)")
            size = (side, side)

        # Batch-first inside; positions added to the plane's tokens and to the memory's keys.
        x = curr if curr_pos is None else curr + 0.1 * curr_pos
        x = x.transpose(0, 1)
        memory = memory.transpose(0, 1)
        keys = memory if memory_pos is None else memory + memory_pos.transpose(0, 1)

        for layer in self.layers:
            x = layer(x, keys, memory, size=size, num_obj_ptr_tokens=num_obj_ptr_tokens)
        return self.norm(x).transpose(0, 1)
