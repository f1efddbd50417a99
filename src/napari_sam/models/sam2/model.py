"""The SAM 2.1 model: its networks and the steps that carry an object from plane to plane.

:class:`Sam2` holds the networks with the parameter names of Meta's checkpoints and offers the
steps of SAM 2's tracking as plain functions of tensors: encode a plane, decode prompts on it,
condition a plane on the memory of other planes, and encode a plane's mask into memory. Which
planes' memories to use is decided by the caller (:mod:`napari_sam.engine.tracking`), so the
model keeps no state between calls.

All settings are those of the SAM 2.1 checkpoints (Meta's ``sam2.1_hiera_*.yaml`` with the
post-processing its video predictor switches on); they are constants here, not options.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from napari_sam.models.sam import (  # SAM 2's too (in 0-1 units there)
    PIXEL_MEAN,
    PIXEL_STD,
)
from napari_sam.models.sam2.positions import sine_1d, sine_grid
from napari_sam.models.transformer import MLP

#: Memory slots: the prompted planes plus the 6 planes before the current one.
MEMORY_SLOTS = 7
#: Object pointers from at most this many planes (the prompted ones and the nearest others).
MAX_POINTERS = 16
#: Logits given to a mask prompt used as it is (inside, outside): sigmoid(-10) = 4.5e-5.
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0
#: Mask logits of an object the model says is absent from a plane.
ABSENT_LOGIT = -1024.0


@dataclass
class PlaneFeatures:
    """What the image encoder gives for one plane.

    Attributes
    ----------
    features : (B, C, h, w) tensor
        The lowest-resolution level (C = 256, h = w = input / 16), before any memory.
    high_res : tuple of two tensors
        The finer levels as the mask decoder uses them: ``(B, C/8, 4h, 4w)`` and
        ``(B, C/4, 2h, 2w)``.
    """

    features: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]

    def expand(self, batch: int) -> PlaneFeatures:
        """The same plane for ``batch`` objects (views, no copy)."""
        return PlaneFeatures(self.features.expand(batch, -1, -1, -1),
                             tuple(x.expand(batch, -1, -1, -1) for x in self.high_res))


@dataclass
class Decoded:
    """The mask decoder's answer for ``B`` objects on one plane.

    Attributes
    ----------
    multimask_logits : (B, k, 4h, 4w) tensor
        Low-resolution logits of all ``k`` masks (k = 3 with multimask output, else 1); set to
        :data:`ABSENT_LOGIT` where the object is absent.
    scores : (B, k) tensor
        Predicted IoU of each mask.
    logits : (B, 1, 4h, 4w) tensor
        The chosen mask: the best scored of the ``k``.
    pointer : (B, C) tensor
        The object pointer that the memory of later planes attends to.
    object_logits : (B, 1) tensor
        Whether the object is in the plane (> 0) or absent.
    """

    multimask_logits: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    pointer: torch.Tensor
    object_logits: torch.Tensor


@dataclass
class PlaneMemory:
    """What one plane leaves in memory for ``B`` objects.

    Attributes
    ----------
    features : (B, C_mem, h, w) tensor
        The memory encoder's output in bfloat16, as SAM 2 keeps it (used in float).
    pointer : (B, C) tensor
        The object pointer of the plane's mask.
    """

    features: torch.Tensor
    pointer: torch.Tensor


class Sam2(nn.Module):
    """SAM 2.1: Hiera image encoder, SAM-style prompt heads, memory encoder and attention.

    Parameters
    ----------
    image_encoder : nn.Module
        Maps ``(B, 3, S, S)`` normalised images to a dict with ``"backbone_fpn"`` (three levels,
        finest first) and ``"vision_pos_enc"``; has ``img_size``.
    memory_attention : nn.Module
        ``(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens)`` in sequence-first layout.
    memory_encoder : nn.Module
        ``(pix_feat, masks, skip_mask_sigmoid)`` to a dict with ``"vision_features"`` and
        ``"vision_pos_enc"``.
    sam_prompt_encoder, sam_mask_decoder : nn.Module
        SAM 2's prompt encoder and mask decoder (object score, high-resolution skips).

    Notes
    -----
    The state dict has exactly the keys of Meta's SAM 2.1 checkpoints (their ``"model"``
    entry). ``prompt_encoder`` and ``mask_decoder`` name the heads as :class:`~napari_sam.Sam`
    does, so the engine serves both models through one interface.
    """

    mask_threshold: float = 0.0
    #: Registry name (set by :func:`napari_sam.load_model`; None for a model built by hand).
    name: str | None = None

    def __init__(self, *, image_encoder: nn.Module, memory_attention: nn.Module,
                 memory_encoder: nn.Module, sam_prompt_encoder: nn.Module,
                 sam_mask_decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        dim = sam_prompt_encoder.embed_dim
        mem_dim = memory_encoder.out_proj.weight.shape[0]
        self.hidden_dim, self.mem_dim = dim, mem_dim
        # Temporal encoding of the memory slots, and stand-ins for "no memory" and "no object".
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(MEMORY_SLOTS, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, dim))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, dim))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        # A mask prompt (at input resolution) to the decoder's mask-logit scale, stride 4.
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        # The decoder's output token to an object pointer, and a pointer's distance in planes
        # to an encoding of the memory's width.
        self.obj_ptr_proj = MLP(dim, dim, dim, 3)
        self.obj_ptr_tpos_proj = nn.Linear(dim, mem_dim)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)

    # -- the interface the engine shares with SAM ------------------------------------------

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.sam_mask_decoder

    @property
    def img_size(self) -> int:
        """Side of the square model input."""
        return self.image_encoder.img_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.no_mem_embed.dtype

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, 3, h, w)`` 0-255 RGB and zero-pad bottom/right to the model input.

        SAM 2 resizes images to the square input without padding; the engine does so, and pads
        only tiles smaller than the input.
        """
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, int],
                          original_size: tuple[int, int]) -> torch.Tensor:
        """Upscale ``(B, K, h, w)`` low-resolution logits to the original image.

        An image resized to the whole input (SAM 2's way) is interpolated to its size in one
        step, as Meta's predictor does; a padded one first to the input, then cropped.
        """
        side = self.img_size
        if tuple(input_size) != (side, side):
            masks = F.interpolate(masks, (side, side), mode="bilinear", align_corners=False)
            masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(masks.shape[-2:]) == tuple(original_size):
            return masks
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    # -- tracking steps ------------------------------------------------------------------------

    def encode_image(self, x: torch.Tensor) -> PlaneFeatures:
        """Features of a batch of preprocessed images (see :meth:`preprocess`)."""
        levels = self.image_encoder(x)["backbone_fpn"]
        return PlaneFeatures(levels[2], self.sam_mask_decoder.project_high_res(levels[0], levels[1]))

    @staticmethod
    def _positions(channels: int, grid: torch.Tensor) -> torch.Tensor:
        """Sine encoding of ``grid``'s ``(h, w)`` positions in sequence-first layout ``(hw, 1, C)``."""
        h, w = grid.shape[-2:]
        return sine_grid(channels, h, w, grid.device).flatten(2).permute(2, 0, 1).to(grid.dtype)

    def decode(self, features: torch.Tensor, high_res: tuple[torch.Tensor, torch.Tensor], *,
               coords: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               mask_logits: torch.Tensor | None = None, multimask: bool) -> Decoded:
        """Run the prompt encoder and mask decoder on (memory-conditioned) features.

        Parameters
        ----------
        features : (B, C, h, w) tensor
        high_res : tuple of tensors
            The plane's finer levels (:class:`PlaneFeatures`).
        coords, labels : (B, N, 2) float and (B, N) int tensors, optional
            Points ``(x, y)`` in input pixels; labels 1 positive, 0 negative, 2 and 3 box
            corners, -1 padding. Without points, one padding point is used.
        mask_logits : (B, 1, H, W) tensor, optional
            A mask prompt, resized to the decoder's mask size if needed.
        multimask : bool
            Three masks (the best scored is chosen) or one.
        """
        batch, device = features.shape[0], features.device
        if coords is None:
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)
        prompt_encoder = self.sam_prompt_encoder
        if mask_logits is not None and tuple(mask_logits.shape[-2:]) != prompt_encoder.mask_input_size:
            mask_logits = F.interpolate(mask_logits.float(), prompt_encoder.mask_input_size,
                                        mode="bilinear", align_corners=False, antialias=True)
        sparse, dense = prompt_encoder(points=(coords, labels), boxes=None, masks=mask_logits)
        masks, scores, tokens, object_logits = self.sam_mask_decoder(
            image_embeddings=features, image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask, repeat_image=False, high_res_features=list(high_res))
        present = object_logits > 0
        masks = torch.where(present[:, None, None], masks, ABSENT_LOGIT).float()
        token = tokens[:, 0]
        best = masks
        if multimask:
            index = torch.arange(batch, device=device)
            choice = scores.argmax(dim=-1)
            best = masks[index, choice].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[index, choice]
        pointer = self._pointer(self.obj_ptr_proj(token), present.float())
        return Decoded(masks, scores, best, pointer, object_logits)

    def _pointer(self, pointer: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The pointer of a present object, the learnt "no object" pointer of an absent one."""
        return present * pointer + (1 - present) * self.no_obj_ptr

    def mask_as_output(self, plane: PlaneFeatures, mask: torch.Tensor) -> Decoded:
        """Take a mask prompt ``(B, 1, S, S)`` (0/1 at input resolution) as the answer itself.

        Its pointer comes from the decoder given the mask, on the plane's own features.
        """
        full = mask.float() * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        low = F.interpolate(full, (full.shape[-2] // 4, full.shape[-1] // 4), mode="bilinear",
                            align_corners=False, antialias=True)
        decoded = self.decode(plane.features, plane.high_res,
                              mask_logits=self.mask_downsample(mask.float()), multimask=False)
        present = (mask.flatten(1).float() > 0).any(dim=1, keepdim=True).float()
        pointer = self._pointer(decoded.pointer, present)
        object_logits = MASK_LOGIT_SCALE * present + MASK_LOGIT_BIAS
        return Decoded(low, mask.new_ones(mask.shape[0], 1).float(), low, pointer, object_logits)

    def condition(self, features: torch.Tensor, memories: list[tuple[int, PlaneMemory]],
                  pointers: list[tuple[float, torch.Tensor]], max_pointers: int) -> torch.Tensor:
        """A plane's features conditioned on the memory of other planes.

        Parameters
        ----------
        features : (B, C, h, w) tensor
            The plane's raw features.
        memories : list of (slot, PlaneMemory)
            Slot 0 for prompted planes, 1 (farthest) to 6 (the neighbour) for the others.
            Empty: the plane is a first prompted plane, conditioned on "no memory".
        pointers : list of (signed distance in planes, (B, C) pointer)
        max_pointers : int
            The pointer count that normalises distances (min of the plane count and 16).
        """
        batch, dim, h, w = features.shape
        if not memories:
            return features + self.no_mem_embed.view(1, dim, 1, 1)
        tokens, positions = [], []
        grid = None
        for slot, memory in memories:
            mem = memory.features.to(device=features.device, dtype=features.dtype)
            tokens.append(mem.flatten(2).permute(2, 0, 1))
            if grid is None:
                grid = self._positions(self.mem_dim, mem)
            positions.append(grid + self.maskmem_tpos_enc[MEMORY_SLOTS - slot - 1])
        n_pointer_tokens = 0
        if pointers:
            distances = torch.tensor([d for d, _ in pointers], device=features.device)
            stacked = torch.stack([p for _, p in pointers])  # (N, B, C)
            encoding = sine_1d(distances / (max_pointers - 1), dim)
            encoding = self.obj_ptr_tpos_proj(encoding).unsqueeze(1).expand(-1, batch, self.mem_dim)
            split = dim // self.mem_dim  # a pointer is split into tokens of the memory's width
            stacked = stacked.reshape(-1, batch, split, self.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
            tokens.append(stacked)
            positions.append(encoding.repeat_interleave(split, dim=0))
            n_pointer_tokens = stacked.shape[0]
        current = features.flatten(2).permute(2, 0, 1)
        out = self.memory_attention(
            curr=[current], curr_pos=[self._positions(dim, features).expand(-1, batch, -1)],
            memory=torch.cat(tokens), memory_pos=torch.cat(positions),
            num_obj_ptr_tokens=n_pointer_tokens)
        return out.permute(1, 2, 0).reshape(batch, dim, h, w)

    def encode_memory(self, features: torch.Tensor, mask_logits: torch.Tensor,
                      object_logits: torch.Tensor, *, binarize: bool) -> torch.Tensor:
        """Encode a plane's mask into memory.

        Parameters
        ----------
        features : (B, C, h, w) tensor
            The plane's raw features.
        mask_logits : (B, 1, S, S) tensor
            The mask at input resolution.
        object_logits : (B, 1) tensor
        binarize : bool
            Encode the thresholded mask (prompted planes, as the user saw it) instead of its
            probabilities.

        Returns
        -------
        (B, C_mem, h, w) bfloat16 tensor
            SAM 2 keeps memories in bfloat16 (half the space); they are used in float.
        """
        mask = (mask_logits > 0).float() if binarize else torch.sigmoid(mask_logits)
        mask = mask * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        memory = self.memory_encoder(features, mask, skip_mask_sigmoid=True)["vision_features"]
        absent = 1 - (object_logits > 0).float()
        memory = memory + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return memory.to(torch.bfloat16)
