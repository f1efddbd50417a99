"""The public generator of one synthetic image of nuclei and its labels, stage by stage."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from napari_sam.synthetic.arguments import check_number, check_range, check_shape
from napari_sam.synthetic.microscope import blur_image, camera, illuminate
from napari_sam.synthetic.nucleus import draw_appearance, render_fringe, render_object
from napari_sam.synthetic.occlusion import resolve_overlaps
from napari_sam.synthetic.placement import Z_SEMI_AXIS, place_objects


def synthetic_nuclei(
    shape: Sequence[int] = (256, 256),
    *,
    density: float = 0.3,
    radius: tuple[float, float] = (6.0, 14.0),
    noise: float = 1.0,
    seed: int | np.random.Generator | np.random.SeedSequence | None = None,
    elongation: tuple[float, float] = (1.0, 1.8),
    irregularity: float = 0.07,
    overlap: float = 0.15,
    clustering: float = 0.35,
    brightness: float = 900.0,
    brightness_spread: float = 0.4,
    texture: float = 0.25,
    spots: float = 2.0,
    nucleoli: bool = True,
    background: float = 80.0,
    illumination: float = 0.35,
    blur: float = 1.0,
    offset: float = 100.0,
    read_noise: float = 2.0,
    anisotropy: float = 2.0,
    min_size: int | None = None,
    stacked: float = 0.0,
    edge: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic fluorescence image of nuclei with exact instance labels.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` for a 2D image or ``(Z, Y, X)`` for a 3D stack, in which nuclei
        are ellipsoids spanning several slices.
    density : float
        Fraction of the image area (volume in 3D) to cover with nuclei, in
        ``(0, 1]``. Overlaps and nuclei cut by the border make the labelled
        fraction somewhat smaller, and in a crowded image placement jams before
        reaching it, the sooner the smaller ``overlap``.
    radius : (float, float)
        Range of the equivalent radius (geometric mean of the semi-axes) in
        pixels, in the YX plane. Drawn uniformly per nucleus; a single number
        fixes it.
    noise : float
        Noise level; 1 is a realistic camera (Poisson shot noise on
        photo-electrons, Gaussian read noise of ``read_noise`` electrons, a gain
        of one count per electron), 0 gives a noise-free image, 2 four times the
        noise variance.
    seed : int, numpy Generator, SeedSequence or None
        Seed for ``np.random.default_rng``. The same seed gives bit-identical
        outputs; None draws fresh entropy.
    elongation : (float, float)
        Range of the axis ratio (major / minor) of each nucleus, each >= 1; a
        single number fixes it.
    irregularity : float
        Amplitude of the smooth random perturbation of the outline, relative to
        the radius (0 gives exact ellipses). At most 0.3.
    overlap : float
        Largest allowed overlap of two nuclei as a fraction of the sum of their
        radii, in ``[0, 0.5]``. The nucleus in front hides the one behind.
    clustering : float
        Fraction in ``[0, 1]`` of nuclei placed right next to an existing one,
        giving touching clusters.
    brightness : float
        Median peak signal of a nucleus, in photo-electrons above background.
    brightness_spread : float
        Standard deviation of the log-normal per-nucleus brightness factor.
    texture : float
        Relative amplitude of the chromatin-like texture inside nuclei.
    spots : float
        Mean number of bright spots (chromocentres) per nucleus.
    nucleoli : bool
        Whether to draw 0-3 dim nucleoli in the nuclei.
    background : float
        Background signal in photo-electrons (autofluorescence, stray light).
    illumination : float
        Depth of the uneven illumination in ``[0, 1)``: the field goes from
        ``1 - illumination`` to 1 over the image. In 3D the signal also fades
        slightly with depth.
    blur : float
        Sigma of the Gaussian point spread function in pixels (0 for none).
        Along Z it is ``2.5 * blur / anisotropy`` slices.
    offset : float
        Camera offset in counts, added to every pixel.
    read_noise : float
        Gaussian read noise in electrons (scaled by ``noise``).
    anisotropy : float
        Z step divided by the pixel size, for 3D shapes (ignored in 2D).
    min_size : int or None
        Smallest visible object in pixels (voxels); smaller or fragmented nuclei
        are removed. None means a quarter of the smallest possible nucleus, at
        least 4.
    stacked : float
        Fraction in ``[0, 1]`` of nuclei placed right above or below an existing
        one, touching it with a small sideways shift (3D only, ignored in 2D).
    edge : float
        Width in pixels of a soft fringe of signal just outside each nucleus' labelled
        outline, falling exponentially from the nucleus' rim brightness (0, the default, for
        none). Real nuclei look like this: people outline them where the signal starts to
        fall, not where it ends. The fringe is not labelled, and it adds to the background
        only, not to other nuclei.

    Returns
    -------
    image : numpy.ndarray of uint16
        The noisy camera image, of shape ``shape``. The background is a few
        hundred counts, nuclei a few hundred to a few thousand counts above it.
    labels : numpy.ndarray of uint32
        Instance labels of shape ``shape``: 0 is background and ``1..n`` are the
        nuclei, each a single connected region (also in 3D). The label of a
        pixel is the nucleus that dominates its clean intensity.

    Raises
    ------
    ValueError
        If ``shape`` is not 2D or 3D with positive sizes, or an option is out of
        range.

    Notes
    -----
    The generator imitates a widefield or confocal image of stained nuclei:

    1. **Placement.** Nuclei are random ellipses (ellipsoids in 3D) of varied
       size, elongation and orientation with smooth random perturbations of their
       outline. Centres are drawn one after another; a candidate is refused if it
       overlaps an accepted nucleus by more than ``overlap`` of their radii, and a
       fraction ``clustering`` of candidates is placed right next to an accepted
       nucleus, so that touching and slightly overlapping clusters appear; in
       3D a fraction ``stacked`` is put on top of or under one, touching it.
       Drawing stops when the nuclei cover ``density`` of the image, or when no
       more fit.
    2. **Rendering.** Each nucleus is drawn in its own bounding box only: a
       plateau profile with a slightly dimmer rim, chromatin-like smooth texture,
       a few bright spots (chromocentres), optional dim nucleoli, and a
       per-nucleus brightness drawn from a log-normal distribution.
    3. **Overlaps.** Nuclei are painted back to front (random depth order), so
       where two overlap the one in front wins, both in the image and in the
       labels. A nucleus whose visible part is fragmented, smaller than
       ``min_size`` or less than half of its own area is removed and the scene
       repainted, so the labels are always a partition into single connected
       regions (face connectivity: 4 in 2D, 6 in 3D, hence also connected for
       8 / 26 connectivity). With ``edge``, each kept nucleus' unlabelled fringe
       is then added to the background around it.
    4. **Optics and camera.** The clean signal (photo-electrons) is blurred by a
       Gaussian point spread function with a faint broad halo of out-of-focus
       light, a background level is added, everything is multiplied by a smooth
       uneven illumination field, then Poisson shot noise, Gaussian read noise
       and a camera offset are applied and the result is rounded to ``uint16``.

    The label of a pixel is therefore exactly the nucleus that produced its
    clean intensity (before blur and noise), fringes apart; 0 is background. Only numpy and
    scipy.ndimage are used.

    Examples
    --------
    >>> image, labels = synthetic_nuclei((128, 128), density=0.3, seed=0)
    >>> image.dtype, labels.dtype, image.shape
    (dtype('uint16'), dtype('uint32'), (128, 128))
    >>> bool(image[labels > 0].mean() > image[labels == 0].mean())
    True
    >>> stack, labels3d = synthetic_nuclei((8, 64, 64), radius=(5, 8), seed=1)
    >>> labels3d.shape
    (8, 64, 64)
    """
    shape = check_shape(shape)
    ndim = len(shape)
    density = check_number("density", density, low=0.0, low_open=True, high=1.0,
                           hint="; pass a covered fraction such as density=0.3")
    radius = check_range("radius", radius, low=0.0, example="(6, 14)")
    noise = check_number("noise", noise, low=0.0, hint="; use noise=0 for a clean image")
    elongation = check_range("elongation", elongation, low=1.0, low_open=False,
                             example="(1.0, 1.8)")
    irregularity = check_number("irregularity", irregularity, low=0.0, high=0.3)
    overlap = check_number("overlap", overlap, low=0.0, high=0.5)
    clustering = check_number("clustering", clustering, low=0.0, high=1.0)
    stacked = check_number("stacked", stacked, low=0.0, high=1.0)
    brightness = check_number("brightness", brightness, low=0.0, low_open=True)
    brightness_spread = check_number("brightness_spread", brightness_spread, low=0.0, high=2.0)
    texture = check_number("texture", texture, low=0.0, high=2.0)
    spots = check_number("spots", spots, low=0.0, high=50.0)
    background = check_number("background", background, low=0.0)
    illumination = check_number("illumination", illumination, low=0.0, high=0.95)
    blur = check_number("blur", blur, low=0.0, high=50.0)
    offset = check_number("offset", offset, low=0.0, high=60000.0)
    read_noise = check_number("read_noise", read_noise, low=0.0)
    edge = check_number("edge", edge, low=0.0, high=10.0, hint="; pass a width in pixels, "
                        "such as edge=1.5, or 0 for none")
    anisotropy = check_number("anisotropy", anisotropy, low=0.0, low_open=True,
                              hint="; pass the Z step divided by the pixel size, e.g. 2.0")
    if ndim == 2:
        anisotropy = 1.0
    if min_size is None:
        rmin = radius[0]
        smallest = (math.pi * rmin**2 if ndim == 2
                    else 4 / 3 * math.pi * rmin**3 * Z_SEMI_AXIS[0] / anisotropy)
        min_size = max(4, round(0.25 * smallest))
    elif isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer or None, got {min_size!r}")
    min_size = int(min_size)

    rng = np.random.default_rng(seed)
    # independent streams, so that changing one stage does not reshuffle the others
    rng_place, rng_obj, rng_field, rng_noise = (
        np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, size=4)
    )

    objs = place_objects(rng_place, shape, density, radius, elongation, overlap, clustering,
                         anisotropy, stacked)
    app = draw_appearance(rng_obj, objs, ndim, anisotropy, irregularity=irregularity,
                          texture=texture, spots=spots, nucleoli=nucleoli,
                          brightness=brightness, brightness_spread=brightness_spread)
    sprites, drawn = [], []
    for i in range(len(objs["r"])):
        sprite = render_object(i, objs, app, shape, anisotropy)
        if sprite is not None:
            sprites.append(sprite)
            drawn.append(i)
    labels, clean, kept = resolve_overlaps(shape, sprites, min_size)
    if edge > 0:
        add_fringes(clean, labels, [drawn[k] for k in kept], objs, app, anisotropy, edge)

    signal = blur_image(clean, blur, anisotropy)
    signal += np.float32(background)
    illuminate(signal, rng_field, illumination)
    image = camera(signal, rng_noise, noise=noise, read_noise=read_noise, offset=offset)
    return image, labels


def add_fringes(clean, labels, objects, objs, app, anisotropy, width):
    """Add the fringes of ``objects`` (:func:`render_fringe`) to the background of ``clean``.

    Where fringes meet, the brighter one counts, as for light from the nearer nucleus.
    """
    fringe = np.zeros_like(clean)
    for i in objects:
        fringe_i = render_fringe(i, objs, app, clean.shape, anisotropy, width)
        if fringe_i is not None:
            box, values = fringe_i
            np.maximum(fringe[box], values, out=fringe[box])
    fringe[labels > 0] = 0
    clean += fringe
