"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from napari_sam.models.common import MLPBlock


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
        scale = q.shape[-1] ** -0.5
        if k.shape[-2] < q.shape[-2]:
            # Few keys (image attending to prompt tokens): softmax along a short axis is ~10x
            # faster on CPU when that axis is not the innermost, so work on the transpose.
            weights = ((k @ q.transpose(-2, -1)) * scale).softmax(dim=-2).transpose(-2, -1)
        else:
            weights = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
        out = weights @ v
        out = out.transpose(1, 2).flatten(2)  # (B, N, heads * c)
        return self.out_proj(out)

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
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act=nn.ReLU)
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
        if projections is None:
            projections = self.project_image(keys, key_pe)

        # Self-attention of the prompt tokens.
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        # Prompt tokens attend to the image.
        token_to_image = self.cross_attn_token_to_image
        q = token_to_image.q_proj(queries + query_pe)
        queries = self.norm2(
            queries + token_to_image.attend(q, projections.token_to_image_k, projections.token_to_image_v)
        )

        # MLP on the prompt tokens.
        queries = self.norm3(queries + self.mlp(queries))

        # The image attends to the prompt tokens.
        image_to_token = self.cross_attn_image_to_token
        with_pe = queries + query_pe
        k = image_to_token.k_proj(with_pe)
        v = image_to_token.v_proj(queries)
        keys = self.norm4(keys + image_to_token.attend(projections.image_to_token_q, k, v))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """A stack of :class:`TwoWayAttentionBlock` and a final attention from tokens to the image.

    Parameters
    ----------
    depth, embedding_dim, num_heads, mlp_dim : int
        Number of blocks, width, heads and MLP hidden width.
    attention_downsample_rate : int
        Internal width reduction of the cross attentions.
    """

    def __init__(
        self,
        *,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
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
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
