"""Optics and camera: what the microscope makes of the clean signal of the nuclei."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# Relative weight and size (in units of the PSF sigma) of the out-of-focus halo.
_HALO_WEIGHT = 0.12
_HALO_SCALE = 6.0


def blur_image(clean, blur, anisotropy, axial=2.5):
    """``clean`` blurred by a gaussian PSF of sigma ``blur`` plus a faint broad halo.

    Along Z the sigma is ``axial * blur / anisotropy`` slices (``axial`` times the
    lateral sigma in physical units); ``blur`` 0 returns ``clean`` itself.
    """
    if blur <= 0:
        return clean
    sigma = (axial * blur / anisotropy, blur, blur) if clean.ndim == 3 else (blur, blur)
    sharp = ndi.gaussian_filter(clean, sigma, mode="nearest", truncate=3.0)
    size = [max(round(_HALO_SCALE * s), 1) | 1 for s in sigma]
    halo = ndi.uniform_filter(sharp, size, mode="nearest")
    halo = ndi.uniform_filter(halo, size, mode="nearest")
    return (1.0 - _HALO_WEIGHT) * sharp + _HALO_WEIGHT * halo


def illuminate(signal, rng, illumination):
    """Multiply ``signal`` in place by a smooth uneven illumination field of depth ``illumination``.

    In 3D the signal also fades slightly with depth.
    """
    field = 1.0 - illumination * _smooth_field_2d(rng, signal.shape[-2], signal.shape[-1])
    if signal.ndim == 3:
        depth = 1.0 - 0.3 * illumination * (np.arange(signal.shape[0], dtype=np.float32)
                                            / max(signal.shape[0] - 1, 1))
        signal *= depth[:, None, None]
    signal *= field


def camera(signal, rng, *, noise, read_noise, offset):
    """The ``uint16`` camera image of ``signal`` (photo-electrons): shot and read noise, offset."""
    if noise > 0:
        s = max(noise * noise, 1e-6)  # keeps the Poisson means finite for tiny noise
        counts = rng.poisson(signal.astype(np.float64) / s).astype(np.float32) * np.float32(s)
        if read_noise > 0:
            counts += rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(
                read_noise * noise)
    else:
        counts = signal
    counts += np.float32(offset)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def _smooth_field_2d(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency field in [0, 1]: off-centre vignetting plus random waves.

    Built from separable outer products only, so that it costs a few operations
    per pixel.
    """
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    x = (np.arange(w, dtype=np.float32) + 0.5) / w
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    field = ((y - cy) ** 2)[:, None] + ((x - cx) ** 2)[None, :]
    for _ in range(3):
        fy, fx = rng.uniform(-1.0, 1.0, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.02, 0.08)
        ay = 2 * np.pi * fy * y + phase
        ax = 2 * np.pi * fx * x
        # cos(ay + ax) = cos ay cos ax - sin ay sin ax
        field += amp * (np.cos(ay)[:, None] * np.cos(ax)[None, :]
                        - np.sin(ay)[:, None] * np.sin(ax)[None, :])
    lo, hi = float(field.min()), float(field.max())
    return ((field - lo) / (hi - lo + 1e-12)).astype(np.float32)
