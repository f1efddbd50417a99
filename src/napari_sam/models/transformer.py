"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.common import MLPBlock

# Parameter names of the MLP in the two-way blocks: SAM's checkpoints call its layers
# ``mlp.lin1`` / ``mlp.lin2``, SAM 2's ``mlp.layers.0`` / ``mlp.layers.1``; the network is the same.
MLP_LAYOUTS = ("sam", "sam2")


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last).

    Parameters
    ----------
    input_dim, hidden_dim, output_dim : int
        Widths.
    num_layers : int
        Number of linear layers.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class Attention(nn.Module):
    """Multi-head attention with an optional narrower internal width.

    Batch dimensions broadcast, so one image's keys serve a whole batch of prompts.

    Parameters
    ----------
    embedding_dim : int
        Width of inputs and output.
    num_heads : int
        Attention heads.
    downsample_rate : int
        The internal width is ``embedding_dim // downsample_rate``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the internal width {internal_dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(embedding_dim, internal_dim)
        self.v_proj = nn.Linear(embedding_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend from ``q`` ``(B, Nq, C)`` to ``k`` and ``v`` ``(B, Nk, C)``."""
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on inputs that are already projected to the internal width."""
        q, k, v = (self._split_heads(t) for t in (q, k, v))
        logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        out = logits.softmax(dim=-1) @ v
        out = out.transpose(1, 2).flatten(2)  # (B, N, heads * c)
        return self.out_proj(out)

    def tokens_to_image(
        self, tokens: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor
    ) -> torch.Tensor:
        """Same as ``forward(tokens, image_k, image_v)`` for few tokens and many image tokens.

        The image tokens ``(B, N, C)`` are never projected: each head's query is mapped back to
        the input width (``q_h W_k,h``) and the attention-weighted image tokens are projected
        after pooling (``(P_h X) W_v,h^T + b_v,h``, as the weights of a row sum to 1). The key
        bias adds a constant to a row of logits and cancels in the softmax. With ``Nq`` tokens
        this costs ``heads * Nq`` instead of ``C / downsample_rate`` products per image token.
        """
        heads, c = self.num_heads, image_k.shape[-1]
        q = self._split_heads(self.q_proj(tokens))  # (B, heads, Nq, d)
        b, _, nq, d = q.shape
        scale = d**-0.5
        q_in = (q @ self.k_proj.weight.view(heads, d, c)) * scale  # (B, heads, Nq, C)
        logits = q_in.reshape(b, heads * nq, c) @ image_k.transpose(1, 2)  # (B, heads*Nq, N)
        pooled = (logits.softmax(dim=-1) @ image_v).view(b, heads, nq, c)
        w_v = self.v_proj.weight.view(heads, d, c)
        out = pooled @ w_v.transpose(1, 2) + self.v_proj.bias.view(heads, 1, d)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def image_to_tokens(
        self,
        image_q: torch.Tensor | None,
        tokens_k: torch.Tensor,
        tokens_v: torch.Tensor,
        *,
        projected_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same as ``forward(image_q, tokens_k, tokens_v)`` for many image tokens, few tokens.

        Each head's keys are mapped back to the input width (``k_h W_q,h``, plus the query bias
        term ``k_h . b_q,h``) and the values through the output projection (``v_h W_o,h^T``)
        before they meet the image tokens, so no ``(N, C)`` projection of the image is made.
        ``projected_q``, if given, is ``q_proj(image_q)`` computed beforehand.
        """
        heads = self.num_heads
        k = self._split_heads(self.k_proj(tokens_k))  # (B, heads, Nk, d)
        v = self._split_heads(self.v_proj(tokens_v))
        b, _, nk, d = k.shape
        scale = d**-0.5
        if projected_q is not None:
            logits = k @ self._split_heads(projected_q).transpose(-2, -1)  # (B, heads, Nk, N)
            c = self.out_proj.out_features
        else:
            c = image_q.shape[-1]
            k_in = k @ self.q_proj.weight.view(heads, d, c)  # (B, heads, Nk, C)
            logits = (k_in.reshape(b, heads * nk, c) @ image_q.transpose(1, 2)).view(b, heads, nk, -1)
            logits = logits + k @ self.q_proj.bias.view(heads, d, 1)
        # Softmax over the few keys, along a non-innermost axis: ~10x faster on CPU.
        weights = (logits * scale).softmax(dim=-2).reshape(b, heads * nk, -1)
        v_out = v @ self.out_proj.weight.view(c, heads, d).permute(1, 2, 0)  # (B, heads, Nk, C)
        # Each head's weights sum to 1, so the output bias can ride on the values.
        v_out = v_out + self.out_proj.bias / heads
        return weights.transpose(1, 2) @ v_out.reshape(b, heads * nk, c)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)


@dataclass
class ImageProjections:
    """Projections of the image tokens that a two-way block needs, computed once per image.

    In the first block they do not depend on the prompt (unless a mask prompt changes the image
    tokens), so an interactive session computes them once and each click skips that work.
    """

    token_to_image_k: torch.Tensor
    token_to_image_v: torch.Tensor
    image_to_token_q: torch.Tensor


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, tokens to image, MLP on tokens, image to tokens.

    Parameters
    ----------
    embedding_dim, num_heads, mlp_dim : int
        Width, heads and MLP hidden width.
    attention_downsample_rate : int
        Internal width reduction of the cross attentions.
    skip_first_layer_pe : bool
        The first block's self-attention sees no positional encoding and has no residual.
    mlp_layout : {"sam", "sam2"}
        Parameter names of the MLP, as in SAM's or SAM 2's checkpoints (same network).
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        mlp_layout: str = "sam",
    ) -> None:
        super().__init__()
        if mlp_layout not in MLP_LAYOUTS:
            raise ValueError(f"mlp_layout must be one of {MLP_LAYOUTS}, got {mlp_layout!r}")
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        if mlp_layout == "sam":
            self.mlp = MLPBlock(embedding_dim, mlp_dim, act=nn.ReLU)
        else:
            self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def project_image(self, keys: torch.Tensor, key_pe: torch.Tensor) -> ImageProjections:
        """Project the image tokens ``keys`` ``(B, N, C)`` for both cross attentions."""
        with_pe = keys + key_pe
        return ImageProjections(
            token_to_image_k=self.cross_attn_token_to_image.k_proj(with_pe),
            token_to_image_v=self.cross_attn_token_to_image.v_proj(keys),
            image_to_token_q=self.cross_attn_image_to_token.q_proj(with_pe),
        )

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        projections: ImageProjections | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update prompt tokens ``queries`` ``(B, Nq, C)`` and image tokens ``keys`` ``(B, Nk, C)``.

        ``projections`` may hold :meth:`project_image` of ``keys`` computed beforehand.
        """
        # Self-attention of the prompt tokens.
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        # Prompt tokens attend to the image.
        token_to_image = self.cross_attn_token_to_image
        if projections is not None:
            q = token_to_image.q_proj(queries + query_pe)
            attended = token_to_image.attend(q, projections.token_to_image_k, projections.token_to_image_v)
        else:
            keys_with_pe = keys + key_pe
            attended = token_to_image.tokens_to_image(queries + query_pe, keys_with_pe, keys)
        queries = self.norm2(queries + attended)

        # MLP on the prompt tokens.
        queries = self.norm3(queries + self.mlp(queries))

        # The image attends to the prompt tokens.
        image_to_token = self.cross_attn_image_to_token
        with_pe = queries + query_pe
        if projections is not None:
            attended = image_to_token.image_to_tokens(
                None, with_pe, queries, projected_q=projections.image_to_token_q
            )
        else:
            attended = image_to_token.image_to_tokens(keys_with_pe, with_pe, queries)
        keys = self.norm4(keys + attended)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """A stack of :class:`TwoWayAttentionBlock` and a final attention from tokens to the image.

    Parameters
    ----------
    depth, embedding_dim, num_heads, mlp_dim : int
        Number of blocks, width, heads and MLP hidden width.
    attention_downsample_rate : int
        Internal width reduction of the cross attentions.
    mlp_layout : {"sam", "sam2"}
        Parameter names of the blocks' MLPs, as in SAM's or SAM 2's checkpoints.
    """

    def __init__(
        self,
        *,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        mlp_layout: str = "sam",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
                mlp_layout=mlp_layout,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        first_projections: ImageProjections | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer.

        Parameters
        ----------
        image_tokens, image_pe : (B or 1, h*w, C) tensors
            Image tokens and their positional encoding.
        point_embedding : (B, N, C) tensor
            Prompt tokens.
        first_projections : ImageProjections, optional
            The first block's :meth:`~TwoWayAttentionBlock.project_image` of ``image_tokens``.

        Returns
        -------
        queries : (B, N, C) tensor
        keys : (B, h*w, C) tensor
        """
        queries, keys = point_embedding, image_tokens
        for i, layer in enumerate(self.layers):
            queries, keys = layer(
                queries,
                keys,
                query_pe=point_embedding,
                key_pe=image_pe,
                projections=first_projections if i == 0 else None,
            )
        attended = self.final_attn_token_to_image.tokens_to_image(
            queries + point_embedding, keys + image_pe, keys
        )
        queries = self.norm_final_attn(queries + attended)
        return queries, keys
