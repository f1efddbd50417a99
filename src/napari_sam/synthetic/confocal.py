"""A synthetic confocal z stack of nuclei: anisotropic, axially smeared, fading with depth, with
out-of-focus planes above and below the sample and nuclei stacked on one another."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from napari_sam.synthetic.arguments import check_number, check_shape
from napari_sam.synthetic.microscope import blur_image, camera, illuminate
from napari_sam.synthetic.nuclei import synthetic_nuclei


def confocal_stack(
    shape: Sequence[int] = (40, 192, 192),
    *,
    seed: int | np.random.Generator | np.random.SeedSequence | None = None,
    anisotropy: float = 3.0,
    radius: tuple[float, float] = (8.0, 12.0),
    density: float = 0.03,
    stacked: float = 0.3,
    clustering: float = 0.2,
    empty_planes: int | tuple[int, int] = (3, 3),
    depth_fade: float = 0.5,
    blur: float = 1.5,
    axial_blur: float = 3.0,
    brightness: float = 900.0,
    background: float = 40.0,
    illumination: float = 0.2,
    noise: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic confocal z stack of nuclei with exact 3D instance labels.

    Parameters
    ----------
    shape : (int, int, int)
        ``(Z, Y, X)`` of the stack.
    seed : int, numpy Generator, SeedSequence or None
        Seed for ``np.random.default_rng``; the same seed gives bit-identical outputs.
    anisotropy : float
        Z step divided by the pixel size.
    radius : (float, float)
        Range of the nuclei's equivalent radius in pixels (see :func:`synthetic_nuclei`).
    density : float
        Fraction of the sample's volume covered with nuclei, in ``(0, 1]``.
    stacked : float
        Fraction in ``[0, 1]`` of nuclei put right above or below another one, touching it.
    clustering : float
        Fraction in ``[0, 1]`` of nuclei put right next to another one.
    empty_planes : int or (int, int)
        Planes without sample at the top and at the bottom of the stack (one number: both).
    depth_fade : float
        The signal falls linearly with depth to ``1 - depth_fade`` in the last plane, in
        ``[0, 1)``.
    blur : float
        Lateral sigma of the point spread function in pixels, > 0.
    axial_blur : float
        Axial sigma of the point spread function over the lateral one, in physical units.
    brightness, background, illumination, noise : float
        As in :func:`synthetic_nuclei`.

    Returns
    -------
    image : (Z, Y, X) numpy.ndarray of uint16
        The noisy stack.
    labels : (Z, Y, X) numpy.ndarray of uint32
        ``1..n`` for the nuclei, each one region connected through faces, 0 elsewhere (the
        empty planes included).

    Raises
    ------
    ValueError
        If ``shape`` is not 3D, leaves no plane for the sample, or an option is out of range.

    Notes
    -----
    The sample is a slab that fills the middle planes: its nuclei are those of
    :func:`synthetic_nuclei` (the noise-free, unblurred signal, in whole photo-electrons),
    nearly spheres in physical space that span about ``2 * radius / anisotropy`` planes,
    ``stacked`` of them on top of one another. The ``empty_planes`` above and below hold no
    nucleus. The signal fades with depth (absorption and scattering), then the whole stack is
    blurred by a confocal's point spread function, ``axial_blur`` times longer along z than
    across, which carries light of the nuclei into the empty planes and into the planes
    above and below each nucleus. Background, uneven illumination and camera noise follow as
    in :func:`synthetic_nuclei`.

    Examples
    --------
    >>> image, labels = confocal_stack(seed=0)
    >>> image.shape, image.dtype, labels.dtype
    ((40, 192, 192), dtype('uint16'), dtype('uint32'))
    >>> int(labels[:3].max()), int(labels[-3:].max())
    (0, 0)
    """
    shape = check_shape(shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), got {shape!r}; pass e.g. shape=(40, 192, 192)")
    top, bottom = _check_empty_planes(empty_planes)
    planes = shape[0] - top - bottom
    if planes < 1:
        raise ValueError(f"empty_planes {(top, bottom)} leave no plane of the {shape[0]} for the "
                         "sample; use fewer empty planes or a deeper stack")
    depth_fade = check_number("depth_fade", depth_fade, low=0.0, high=1.0)
    if depth_fade == 1.0:
        raise ValueError("depth_fade must be < 1: the last plane would get no light")
    blur = check_number("blur", blur, low=0.0, low_open=True, high=50.0)
    axial_blur = check_number("axial_blur", axial_blur, low=0.0, low_open=True, high=20.0)
    background = check_number("background", background, low=0.0)
    illumination = check_number("illumination", illumination, low=0.0, high=0.95)
    noise = check_number("noise", noise, low=0.0, hint="; use noise=0 for a clean stack")

    rng = np.random.default_rng(seed)
    scene_seed, field_seed, noise_seed = (int(s) for s in rng.integers(0, 2**63, size=3))
    # the sample alone: the nuclei's clean signal and labels, none of the optics
    clean, sample = synthetic_nuclei(
        (planes, *shape[1:]), seed=scene_seed, anisotropy=anisotropy, radius=radius,
        density=density, stacked=stacked, clustering=clustering, brightness=brightness,
        noise=0.0, blur=0.0, background=0.0, illumination=0.0, offset=0.0)
    labels = np.zeros(shape, dtype=np.uint32)
    labels[top:top + planes] = sample
    signal = np.zeros(shape, dtype=np.float32)
    signal[top:top + planes] = clean
    signal *= 1.0 - depth_fade * np.linspace(0.0, 1.0, shape[0], dtype=np.float32)[:, None, None]

    signal = blur_image(signal, blur, anisotropy, axial=axial_blur)
    signal += np.float32(background)
    illuminate(signal, np.random.default_rng(field_seed), illumination)
    image = camera(signal, np.random.default_rng(noise_seed), noise=noise, read_noise=2.0,
                   offset=100.0)
    return image, labels


def _check_empty_planes(empty_planes) -> tuple[int, int]:
    """``empty_planes`` as (top, bottom) non-negative ints, or a ValueError."""
    if isinstance(empty_planes, numbers.Integral) and not isinstance(empty_planes, bool):
        empty_planes = (empty_planes, empty_planes)
    if (not isinstance(empty_planes, Sequence | np.ndarray) or len(empty_planes) != 2
            or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0
                   for n in empty_planes)):
        raise ValueError("empty_planes must be a non-negative integer or a (top, bottom) pair "
                         f"of them, got {empty_planes!r}; pass e.g. empty_planes=(3, 3)")
    return int(empty_planes[0]), int(empty_planes[1])
