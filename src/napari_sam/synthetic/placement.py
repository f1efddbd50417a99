"""Placement of the nuclei in the scene: centres, sizes, shapes, orientations and depth order."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

# Placement stops (the layout is jammed) after this many rejections in a row.
_JAMMED_AFTER = 1000
# Candidates drawn per call into numpy.
_BATCH = 256
# Range of the semi-axis along Z relative to the equivalent radius (before anisotropy):
# nuclei lying on a slide are somewhat flattened.
Z_SEMI_AXIS = (0.75, 1.0)


def place_objects(rng, shape, density, radius, elongation, overlap, clustering, anisotropy,
                  stacked=0.0):
    """Draw the centres, sizes, elongations, orientations and depth order of the nuclei.

    Candidates are accepted one by one while the nuclei cover less than
    ``density`` of the image; a candidate too close to an accepted nucleus (by
    ``overlap``) is refused. In 3D a fraction ``stacked`` of the candidates is
    put right above or below an accepted nucleus, touching it (see
    :func:`_on_top`). Returns a dict of arrays with one row per nucleus,
    back to front (later nuclei are in front): ``centre`` (pixel coordinates,
    ``(n, ndim)``), ``r`` (equivalent radius), ``a`` and ``b`` (semi-axes in the
    YX plane), ``theta`` (orientation) and, in 3D, ``c`` (semi-axis along Z, in
    slices).
    """
    ndim = len(shape)
    target = density * float(np.prod(shape))
    # budgets of attempts and of nuclei, from the expected number of nuclei
    expected = target / max(_mean_size(radius, ndim, anisotropy), 1e-9)
    max_attempts = int(100 + 20 * expected)
    cap = int(16 + 4 * expected)
    hi_z = shape[0] - 0.5 if ndim == 3 else 0.0
    hi_y, hi_x = shape[-2] - 0.5, shape[-1] - 0.5
    accepted = _Accepted(max(2.0 * radius[1], 1e-6), ndim)
    stacked = stacked if ndim == 3 else 0.0
    candidates = _candidates(rng, ndim, radius, elongation, overlap, clustering, stacked,
                             (hi_z, hi_y, hi_x))
    keep_rows = []
    covered = 0.0
    attempts = 0
    failures = 0  # consecutive rejections
    shrink = 1.0 - overlap
    while (covered < target and len(keep_rows) < cap and attempts < max_attempts
           and failures < _JAMMED_AFTER):
        rt, near, jfrac, direction, dist_fac, pos, elong, cfac, on_top = next(candidates)
        attempts += 1
        failures += 1
        k = len(keep_rows)
        partner = None
        if k and on_top:
            partner = int(jfrac * k)
            z, y, x = _on_top(accepted, partner, keep_rows[partner][3], rt, cfac, direction,
                              dist_fac)
            zp = z / anisotropy
            if not (-0.5 <= zp <= hi_z and -0.5 <= y <= hi_y and -0.5 <= x <= hi_x):
                continue
        elif k and near:
            j = int(jfrac * k)
            step = (accepted.r[j] + rt) * dist_fac
            z = accepted.z[j] + step * direction[0]
            y = accepted.y[j] + step * direction[1]
            x = accepted.x[j] + step * direction[2]
            zp = z / anisotropy
            if not (-0.5 <= zp <= hi_z and -0.5 <= y <= hi_y and -0.5 <= x <= hi_x):
                continue
        else:
            zp, y, x = pos
            z = zp * anisotropy
        if accepted.conflicts(z, y, x, rt, shrink, ignore=partner):
            continue
        failures = 0
        accepted.add(z, y, x, rt)
        c_pix = (zp, y, x) if ndim == 3 else (y, x)
        keep_rows.append((c_pix, rt, elong, cfac))
        if ndim == 3:
            covered += _volume_in_stack(rt, rt * cfac / anisotropy, zp, hi_z)
        else:
            covered += math.pi * rt * rt
    n = len(keep_rows)
    centre = np.array([row[0] for row in keep_rows], dtype=float).reshape(n, ndim)
    r = np.array([row[1] for row in keep_rows], dtype=float)
    e = np.array([row[2] for row in keep_rows], dtype=float)
    objs = {
        "centre": centre,
        "r": r,
        "a": r * np.sqrt(e),
        "b": r / np.sqrt(e),
        "theta": rng.uniform(0.0, math.pi, n),
    }
    if ndim == 3:
        objs["c"] = r * np.array([row[3] for row in keep_rows], dtype=float) / anisotropy
    order = rng.permutation(n)
    return {key: val[order] for key, val in objs.items()}


def _mean_size(radius, ndim, anisotropy):
    """Expected area (volume in 3D) of one nucleus, which sets the attempt budget."""
    rmin, rmax = radius
    if ndim == 2:
        return math.pi * (rmin**2 + rmin * rmax + rmax**2) / 3
    mean_r3 = (rmax**4 - rmin**4) / (4 * (rmax - rmin)) if rmax > rmin else rmin**3
    return 4 / 3 * math.pi * mean_r3 * (sum(Z_SEMI_AXIS) / 2) / anisotropy


def _candidates(rng, ndim, radius, elongation, overlap, clustering, stacked, hi) -> Iterator[tuple]:
    """Endless candidate nuclei, drawn in batches of plain floats (fast to use one by one).

    Each is ``(r, near, jfrac, direction, dist_fac, pos, elong, cfac, on_top)``:
    radius; whether to place it next to accepted nucleus ``int(jfrac * k)`` of
    ``k``, in ``direction`` (physical z, y, x) at ``dist_fac`` times the sum of
    the radii; otherwise at ``pos`` (pixel z, y, x, below ``hi``); axis ratio; Z
    semi-axis factor; whether to stack it on that accepted nucleus instead
    (:func:`_on_top`), which overrides ``near``.
    """
    while True:
        r = rng.uniform(radius[0], radius[1], _BATCH).tolist()
        near = (rng.random(_BATCH) < clustering).tolist()
        jfrac = rng.random(_BATCH).tolist()
        direction = rng.standard_normal((_BATCH, 3))
        if ndim == 2:
            direction[:, 0] = 0.0
        else:
            direction[:, 0] *= 0.5  # neighbours mostly side by side in the stack
        direction /= np.sqrt((direction**2).sum(axis=1, keepdims=True)) + 1e-12
        dist_fac = rng.uniform(1.0 - overlap, 1.05, _BATCH).tolist()
        pos = rng.uniform(-0.5, np.array(hi), (_BATCH, 3))
        if ndim == 2:
            pos[:, 0] = 0.0
        elong = rng.uniform(elongation[0], elongation[1], _BATCH).tolist()
        cfac = rng.uniform(*Z_SEMI_AXIS, _BATCH).tolist()
        # drawn last and only when asked for, so that the other draws stay those of before
        on_top = (rng.random(_BATCH) < stacked).tolist() if stacked > 0 else [False] * _BATCH
        yield from zip(r, near, jfrac, direction.tolist(), dist_fac, pos.tolist(), elong, cfac,
                       on_top)


def _on_top(accepted, j, cfac_j, r, cfac, direction, dist_fac):
    """Physical centre of a nucleus (radius ``r``) right above or below accepted nucleus ``j``.

    The centres are the sum of the two Z semi-axes apart, shortened by up to the
    candidate's overlap (``dist_fac`` capped at 1) so that the two touch, and
    shifted sideways by at most a third of ``r``: a pair that a 3D method must
    keep apart although no background separates them. ``direction`` gives the
    side (sign of its z) and the shift.
    """
    step = (accepted.r[j] * cfac_j + r * cfac) * min(dist_fac, 1.0)
    side = 1.0 if direction[0] >= 0 else -1.0
    shift = r / 3.0
    return (accepted.z[j] + side * step, accepted.y[j] + shift * direction[1],
            accepted.x[j] + shift * direction[2])


def _volume_in_stack(r, c, z, hi_z):
    """Volume of the ellipsoid (semi-axes r, r, c) centred at slice ``z`` inside ``[-0.5, hi_z]``.

    Exact, since Z is one of its axes.
    """
    z0 = min(max(-0.5 - z, -c), c)
    z1 = min(max(hi_z - z, -c), c)
    return math.pi * r * r * ((z1 - z0) - (z1**3 - z0**3) / (3 * c * c))


class _Accepted:
    """Accepted nuclei in physical units (z scaled by anisotropy; z = 0 in 2D).

    A grid hash of them, with cells as large as the largest conflict distance,
    lets a candidate be compared with the nuclei of the neighbouring cells only.
    """

    def __init__(self, cell: float, ndim: int) -> None:
        self.z: list[float] = []
        self.y: list[float] = []
        self.x: list[float] = []
        self.r: list[float] = []
        self.cell = cell
        self.grid: dict[tuple[int, int, int], list[int]] = {}
        zoffs = (-1, 0, 1) if ndim == 3 else (0,)
        self.neighbours = [(a, b, c) for a in zoffs for b in (-1, 0, 1) for c in (-1, 0, 1)]

    def _key(self, z, y, x):
        return math.floor(z / self.cell), math.floor(y / self.cell), math.floor(x / self.cell)

    def conflicts(self, z, y, x, r, shrink, ignore=None) -> bool:
        """Whether a nucleus at (z, y, x) of radius r is nearer than ``shrink`` * a radii sum
        to an accepted nucleus other than ``ignore``."""
        kz, ky, kx = self._key(z, y, x)
        for oz, oy, ox in self.neighbours:
            for j in self.grid.get((kz + oz, ky + oy, kx + ox), ()):
                if j == ignore:
                    continue
                lim = shrink * (self.r[j] + r)
                if (self.z[j] - z) ** 2 + (self.y[j] - y) ** 2 + (self.x[j] - x) ** 2 < lim * lim:
                    return True
        return False

    def add(self, z, y, x, r) -> None:
        """Accept a nucleus."""
        self.grid.setdefault(self._key(z, y, x), []).append(len(self.r))
        self.z.append(z)
        self.y.append(y)
        self.x.append(x)
        self.r.append(r)
