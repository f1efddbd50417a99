"""Endless and finite streams of varied synthetic images of nuclei, for training and validation."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterator, Sequence

import numpy as np

from napari_sam.synthetic.arguments import check_range, check_shape
from napari_sam.synthetic.nuclei import synthetic_nuclei


def synthetic_dataset(
    n: int,
    shape: Sequence[int] = (256, 256),
    *,
    seed: int | np.random.Generator | np.random.SeedSequence | None = None,
    density: tuple[float, float] = (0.1, 0.55),
    radius: tuple[float, float] = (4.0, 22.0),
    noise: tuple[float, float] = (0.5, 3.0),
    brightness: tuple[float, float] = (150.0, 3000.0),
    blur: tuple[float, float] = (0.6, 1.8),
    edge: tuple[float, float] = (0.0, 0.0),
    **kwargs,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``n`` varied synthetic (image, labels) pairs for training.

    Every image draws its own settings from the given ranges: density and blur
    uniformly, noise and brightness log-uniformly, a radius range inside
    ``radius`` (the largest radius is 1.3 to 2.2 times the smallest), and
    elongation, irregularity, texture, spots, nucleoli, background, illumination
    and clustering from fixed realistic ranges. Image ``i`` depends only on
    ``seed`` and ``i`` (not on ``n``), so that a longer dataset starts with the
    same images.

    Parameters
    ----------
    n : int
        Number of pairs to yield (>= 0).
    shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``, as for :func:`synthetic_nuclei`.
    seed : int, numpy Generator, SeedSequence or None
        Seed of the whole dataset; None draws fresh entropy. A Generator is
        used once, to draw an integer seed.
    density : (float, float)
        Range of the covered fraction, within ``(0, 1]``.
    radius : (float, float)
        Range within which each image's radius range is drawn, in pixels.
    noise : (float, float)
        Range of the noise level (see :func:`synthetic_nuclei`).
    brightness : (float, float)
        Range of the median nucleus signal in photo-electrons.
    blur : (float, float)
        Range of the PSF sigma in pixels.
    edge : (float, float)
        Range of the width of the unlabelled fringe outside each nucleus (see
        :func:`synthetic_nuclei`), drawn uniformly per image. The default (0, 0) draws nothing,
        and the images are those of earlier versions.
    **kwargs
        Further keyword options of :func:`synthetic_nuclei`, fixed for every
        image (they override the drawn values).

    Returns
    -------
    iterator of (numpy.ndarray, numpy.ndarray)
        A generator of ``(image, labels)`` pairs: ``uint16`` images and
        ``uint32`` labels of shape ``shape``.

    Raises
    ------
    ValueError
        If ``n`` is negative, ``shape`` is invalid or a range is malformed
        (checked at once, before the first image is made).

    Examples
    --------
    >>> pairs = list(synthetic_dataset(3, (64, 64), seed=0))
    >>> len(pairs), pairs[0][0].dtype, pairs[0][1].dtype
    (3, dtype('uint16'), dtype('uint32'))
    >>> a = next(iter(synthetic_dataset(1, (64, 64), seed=0)))
    >>> bool((a[0] == pairs[0][0]).all())
    True
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative integer number of images, got {n!r}")
    shape = check_shape(shape)
    density = check_range("density", density, low=0.0, example="(0.1, 0.5)")
    if density[1] > 1.0:
        raise ValueError(f"density range must lie within (0, 1], got {density!r}; "
                         "pass e.g. density=(0.1, 0.5)")
    radius = check_range("radius", radius, low=0.0, example="(4, 22)")
    noise = check_range("noise", noise, low=0.0, low_open=False, example="(0.5, 3.0)")
    brightness = check_range("brightness", brightness, low=0.0, example="(150, 3000)")
    blur = check_range("blur", blur, low=0.0, low_open=False, example="(0.6, 1.8)")
    edge = check_range("edge", edge, low=0.0, low_open=False, example="(0.0, 3.0)")
    bad = {"shape", "seed"} & set(kwargs)
    if bad:
        raise ValueError(f"{sorted(bad)} cannot be passed as extra options; "
                         "use the shape and seed arguments of synthetic_dataset")
    known = set(inspect.signature(synthetic_nuclei).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown options {unknown} for synthetic_dataset; extra options must "
                         f"be keyword options of synthetic_nuclei: {sorted(known - bad)}")

    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**63))
    if not isinstance(seed, np.random.SeedSequence):
        seed = np.random.SeedSequence(seed)
    children = seed.spawn(n)

    def generate():
        for child in children:
            rng = np.random.default_rng(child)
            params = _draw_settings(rng, density, radius, noise, brightness, blur)
            if edge[1] > 0:  # from a stream of its own: the rest stays that of the same seed
                params["edge"] = np.random.default_rng(child.spawn(1)[0]).uniform(*edge)
            params.update(kwargs)
            yield synthetic_nuclei(shape, seed=rng, **params)

    return generate()


def _draw_settings(rng, density, radius, noise, brightness, blur) -> dict:
    """Keyword options of :func:`synthetic_nuclei` for one image, drawn with ``rng``."""
    rmin = rng.uniform(radius[0], max(radius[0], radius[1] / 1.3))
    rmax = min(rmin * rng.uniform(1.3, 2.2), radius[1])
    return dict(
        density=rng.uniform(*density),
        radius=(rmin, rmax),
        noise=_loguniform(rng, *noise),
        brightness=_loguniform(rng, *brightness),
        blur=rng.uniform(*blur),
        elongation=(1.0, rng.uniform(1.2, 2.2)),
        irregularity=rng.uniform(0.02, 0.12),
        overlap=rng.uniform(0.0, 0.25),
        clustering=rng.uniform(0.0, 0.7),
        brightness_spread=rng.uniform(0.15, 0.6),
        texture=rng.uniform(0.05, 0.45),
        spots=rng.uniform(0.0, 4.0),
        nucleoli=bool(rng.random() < 0.6),
        background=_loguniform(rng, 20.0, 250.0),
        illumination=rng.uniform(0.0, 0.5),
        offset=float(rng.choice([100.0, 100.0, 200.0, 500.0])),
        read_noise=rng.uniform(1.0, 3.0),
    )


def _loguniform(rng, lo, hi) -> float:
    """A number drawn log-uniformly in ``[lo, hi]`` (uniformly if ``lo`` is 0)."""
    if lo <= 0:
        return rng.uniform(lo, hi)
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


class SyntheticNuclei:
    """Endless training examples drawn like :func:`synthetic_dataset` (a ``TrainingData``).

    Parameters
    ----------
    shape : tuple of int
        Size of each 2D example.
    **ranges
        Parameter ranges passed to :func:`synthetic_dataset`.
    """

    def __init__(self, shape: tuple[int, int] = (256, 256), **ranges) -> None:
        self.shape = shape
        self.ranges = ranges
        synthetic_dataset(0, shape, seed=0, **ranges)  # validates the ranges now

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One ``(image, labels)`` pair drawn with ``rng``."""
        return next(synthetic_dataset(1, self.shape, seed=rng, **self.ranges))
