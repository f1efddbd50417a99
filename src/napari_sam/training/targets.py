"""Ground truth for the mask decoder's outputs: brought to the logits' resolution, and the
multi-scale targets of the multimask outputs (the ground truth and eroded versions of it)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["downsample_target", "erosion_targets", "check_erosion_radii", "DEFAULT_EROSION_RADII"]

# In pixels of the low-resolution logits (4 per embedding cell: 64 x 64 for nuclei_s, 4 input
# pixels each; 256 x 256 for SAM's ViTs). Chosen for logits at 2 input pixels, where training
# nuclei have radii of 2-11 such pixels: radius 4 would erase most of them (their targets would
# fall back and coincide), while 1 and 2 leave three distinct nested targets for almost all.
DEFAULT_EROSION_RADII = (0, 1, 2)


def erosion_targets(target, radii=DEFAULT_EROSION_RADII) -> torch.Tensor:
    """One target per multimask output: each ground-truth mask eroded by growing disks.

    Target ``j`` of an object is its mask eroded by a disk of radius ``radii[j]`` (the pixels
    within Euclidean distance ``radii[j]`` of the centre, like ``skimage.morphology.disk``; pixels
    outside the image count as background, as in ``scipy.ndimage.binary_erosion``). An erosion
    that would leave nothing is replaced by the previous target (the full mask for the first), so
    the targets are nested and none is empty unless the mask itself is.

    Parameters
    ----------
    target : (B, H, W) bool or float tensor
        Ground truth at the logits' resolution (see
        :func:`downsample_target`); ``> 0.5`` is foreground.
    radii : sequence of int
        Strictly increasing radii >= 0 in pixels of ``target``, one per multimask output; the
        default ``(0, 1, 2)`` keeps the full mask first.

    Returns
    -------
    (B, len(radii), H, W) float32 tensor
        Targets of 0 and 1, on the device of ``target``.

    Raises
    ------
    ValueError
        If ``target`` is not ``(B, H, W)`` or ``radii`` is invalid.

    Examples
    --------
    >>> mask = torch.zeros(1, 9, 9)
    >>> mask[0, 1:8, 1:8] = 1
    >>> erosion_targets(mask, (0, 1, 4)).sum(dim=(-2, -1))  # radius 4 erases it: radius 1 again
    tensor([[49., 25., 25.]])
    """
    radii = check_erosion_radii(radii)
    if not isinstance(target, torch.Tensor) or target.ndim != 3:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be a (B, H, W) tensor, got {shape}; use mask[None] for one mask")
    full = (target > 0.5).float()
    previous, targets = full, []
    for radius in radii:
        eroded = _erode(full, radius)
        previous = torch.where(eroded.sum(dim=(-2, -1), keepdim=True) > 0, eroded, previous)
        targets.append(previous)
    return torch.stack(targets, dim=1)


def check_erosion_radii(radii) -> tuple[int, ...]:
    """``radii`` as a tuple of ints, or a ValueError saying what is wrong."""
    values = tuple(radii) if isinstance(radii, (tuple, list, np.ndarray)) else ()
    if not (
        values
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
        and values[0] >= 0
        and all(b > a for a, b in zip(values, values[1:]))
    ):
        raise ValueError(
            f"erosion_radii must be strictly increasing integers >= 0, one per multimask output, "
            f"e.g. {DEFAULT_EROSION_RADII}; got {radii!r}"
        )
    return tuple(int(v) for v in values)


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of ``(B, H, W)`` 0/1 masks by a disk, as a convolution counting neighbours."""
    if radius == 0:
        return mask
    offsets = np.arange(-radius, radius + 1)
    disk = torch.from_numpy(offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2)
    kernel = disk.to(device=mask.device, dtype=mask.dtype)[None, None]
    inside = F.conv2d(mask[:, None], kernel, padding=radius)[:, 0]
    return (inside > kernel.sum() - 0.5).float()


def downsample_target(mask, size, *, threshold: float | None = 0.5) -> torch.Tensor:
    """Bring ground-truth masks to the low-resolution size of the logits.

    Each output pixel is the **area average** of the input pixels it covers
    (``torch.nn.functional.interpolate(mode="area")``, i.e. adaptive average pooling: exact box
    averages for integer factors, slightly overlapping windows otherwise), then binarised with
    ``> threshold``. With the default 0.5 an output pixel is foreground when more than half of
    it is; ``threshold=None`` keeps the fractions as soft targets in ``[0, 1]`` (fine for the
    focal and dice terms; the IoU binarises them at 0.5).

    The mask must already be in the model's input frame (resized like the image and padded to
    the square input); downsampling is then ``input_size / (4h)`` per axis, e.g. 1024 -> 256.

    Parameters
    ----------
    mask : (H, W), (B, H, W) or (B, 1, H, W) bool / numeric tensor or numpy array
        Ground-truth masks (nonzero or ``True`` = foreground for bool / integer input; float
        input is taken as a fraction in ``[0, 1]``).
    size : int or (int, int)
        Output ``(h, w)``, e.g. ``logits.shape[-2:]``.
    threshold : float in [0, 1) or None
        Binarisation threshold on the area fraction; None returns the fractions.

    Returns
    -------
    float32 tensor
        The same leading layout as ``mask`` with the last two axes of size ``size``, values 0/1
        (or fractions), on the mask's device (CPU for numpy input).

    Raises
    ------
    ValueError
        If ``mask`` has a wrong number of dimensions or ``size`` / ``threshold`` are invalid.
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a torch.Tensor or numpy array, got {type(mask).__name__}")
    if mask.ndim not in (2, 3, 4) or (mask.ndim == 4 and mask.shape[1] != 1):
        raise ValueError(f"mask must have shape (H, W), (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        size = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or an (h, w) pair of positive ints, got {size!r}") from None
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be an int or an (h, w) pair of positive ints, got {size!r}")
    if threshold is not None and not (0 <= float(threshold) < 1):
        raise ValueError(f"threshold must lie in [0, 1) or be None, got {threshold!r}")
    if mask.is_floating_point():
        frac = mask.float()
    else:
        frac = (mask != 0).float()
    shape = frac.shape
    x = frac.reshape(-1, 1, shape[-2], shape[-1])
    if tuple(shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="area")
    if threshold is not None:
        x = (x > threshold).float()
    return x.reshape(tuple(shape[:-2]) + size)
