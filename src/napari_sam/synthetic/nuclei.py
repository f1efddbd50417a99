"""Synthetic fluorescence microscopy images of nuclei with exact instance labels.

The generator imitates a widefield or confocal image of stained nuclei:

1. **Placement.** Nuclei are random ellipses (ellipsoids in 3D) of varied size,
   elongation and orientation with smooth random perturbations of their outline.
   Centres are drawn one after another; a candidate is refused if it overlaps an
   accepted nucleus by more than ``overlap`` of their radii, and a fraction
   ``clustering`` of candidates is placed right next to an accepted nucleus, so
   that touching and slightly overlapping clusters appear. Drawing stops when the
   nuclei cover ``density`` of the image, or when no more fit (about 0.7).
2. **Rendering.** Each nucleus is drawn in its own bounding box only: a plateau
   profile with a slightly dimmer rim, chromatin-like smooth texture, a few bright
   spots (chromocentres), optional dim nucleoli, and a per-nucleus brightness drawn
   from a log-normal distribution.
3. **Overlaps.** Nuclei are painted back to front (random depth order), so where
   two overlap the one in front wins, both in the image and in the labels. A
   nucleus whose visible part is fragmented, smaller than ``min_size`` or less
   than half of its own area is removed and the scene repainted, so the labels are
   always a partition into single connected regions (face connectivity: 4 in 2D,
   6 in 3D, hence also connected for 8 / 26 connectivity).
4. **Optics and camera.** The clean signal (photo-electrons) is blurred by a
   Gaussian point spread function with a faint broad halo of out-of-focus light,
   a background level is added, everything is multiplied by a smooth uneven
   illumination field, then Poisson shot noise, Gaussian read noise and a camera
   offset are applied and the result is rounded to ``uint16``.

The label of a pixel is therefore exactly the nucleus that produced its clean
intensity (before blur and noise); 0 is background.

Only numpy and scipy.ndimage are used, and everything is deterministic for a
given ``seed``: the same seed gives bit-identical arrays.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["synthetic_nuclei", "synthetic_dataset"]

# A nucleus that keeps less than this fraction of its own (in-image) area after
# occlusion by nuclei in front of it is removed: thin crescents look unnatural.
_MIN_VISIBLE_FRACTION = 0.5
# Placement stops (the layout is jammed) after this many rejections in a row.
_JAMMED_AFTER = 1000
# Number of random cosine terms in the smooth outline perturbation.
_N_OUTLINE_TERMS = 4
# Relative weight and size (in units of the PSF sigma) of the out-of-focus halo.
_HALO_WEIGHT = 0.12
_HALO_SCALE = 6.0
# Period of the texture tile in pixels (per axis, Y and X; Z uses half of it).
_TEXTURE_TILE = 64


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) or not isinstance(shape, Sequence | np.ndarray):
        raise ValueError(
            f"shape must be a tuple of 2 (Y, X) or 3 (Z, Y, X) positive integers, got {shape!r}; "
            "pass e.g. shape=(256, 256) or shape=(16, 256, 256)"
        )
    shape_t = tuple(shape)
    if len(shape_t) not in (2, 3):
        raise ValueError(
            f"shape must have 2 (Y, X) or 3 (Z, Y, X) dimensions, got {len(shape_t)}: {shape_t!r}; "
            "pass e.g. shape=(256, 256) or shape=(16, 256, 256)"
        )
    out = []
    for s in shape_t:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or int(s) < 1:
            raise ValueError(
                f"shape must contain positive integers, got {shape_t!r}; "
                "every axis needs at least 1 pixel, e.g. shape=(256, 256)"
            )
        out.append(int(s))
    return tuple(out)


def _check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, hint: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}{hint}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        op = ">" if low_open else ">="
        raise ValueError(f"{name} must be {op} {low:g}, got {v:g}{hint}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high:g}, got {v:g}{hint}")
    return v


def _check_range(name: str, value, *, low: float, low_open: bool = True,
                 example: str = "") -> tuple[float, float]:
    hint = f"; pass e.g. {name}={example}" if example else ""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, Sequence | np.ndarray) or len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}{hint}")
    lo = _check_number(f"{name}[0] (min)", value[0], low=low, low_open=low_open, hint=hint)
    hi = _check_number(f"{name}[1] (max)", value[1], low=low, low_open=low_open, hint=hint)
    if lo > hi:
        raise ValueError(
            f"{name} minimum must not exceed its maximum, got {name}=({lo:g}, {hi:g}); "
            f"swap them: {name}=({hi:g}, {lo:g})"
        )
    return lo, hi


# --------------------------------------------------------------------------- #
# smooth random fields
# --------------------------------------------------------------------------- #
def _texture_tile(rng: np.random.Generator, ndim: int, anisotropy: float) -> np.ndarray:
    """Periodic smooth noise (zero mean, unit std) mixing a fine and a coarse scale."""
    t = _TEXTURE_TILE
    shape = (max(t // 2, 8), t, t) if ndim == 3 else (t, t)
    white = rng.standard_normal(shape).astype(np.float32)

    def smooth(sigma: float) -> np.ndarray:
        s = (sigma / anisotropy, sigma, sigma) if ndim == 3 else sigma
        f = ndi.gaussian_filter(white, s, mode="wrap")
        return f / (f.std() + 1e-12)

    tile = 0.75 * smooth(1.0) + 0.45 * smooth(3.0)
    tile -= tile.mean()
    tile /= tile.std() + 1e-12
    return tile.astype(np.float32)


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


# --------------------------------------------------------------------------- #
# object placement
# --------------------------------------------------------------------------- #
def _place_objects(rng, shape, density, radius, elongation, overlap, clustering, anisotropy):
    """Draw centres, sizes, elongations and orientations of the nuclei.

    Candidates are drawn in batches (fewer calls into numpy) and accepted one by
    one. Returns a dict of arrays with one row per nucleus: ``centre`` (pixel
    coordinates, ``(n, ndim)``), ``r`` (equivalent radius), ``a`` and ``b``
    (semi-axes in the YX plane), ``theta`` (orientation) and, in 3D, ``c``
    (semi-axis along Z, in slices).
    """
    ndim = len(shape)
    target = density * float(np.prod(shape))
    rmin, rmax = radius
    # expected size of one nucleus (for the attempt budget only)
    mean_r3 = (rmax**4 - rmin**4) / (4 * (rmax - rmin)) if rmax > rmin else rmin**3
    mean_size = (math.pi * (rmin**2 + rmin * rmax + rmax**2) / 3 if ndim == 2
                 else 4 / 3 * math.pi * mean_r3 * 0.875 / anisotropy)
    expected = target / max(mean_size, 1e-9)
    max_attempts = int(100 + 20 * expected)
    cap = int(16 + 4 * expected)
    # Accepted nuclei, in physical units (z scaled by anisotropy; z = 0 in 2D), and
    # a grid hash of them with cells as large as the largest conflict distance, so
    # that a candidate is compared with the nuclei of the neighbouring cells only.
    cz: list[float] = []
    cy: list[float] = []
    cx: list[float] = []
    radii: list[float] = []
    cell = max(2.0 * rmax, 1e-6)
    grid: dict[tuple[int, int, int], list[int]] = {}
    zoffs = (-1, 0, 1) if ndim == 3 else (0,)
    neighbours = [(a, b, c) for a in zoffs for b in (-1, 0, 1) for c in (-1, 0, 1)]
    hi_z = shape[0] - 0.5 if ndim == 3 else 0.0
    hi_y, hi_x = shape[-2] - 0.5, shape[-1] - 0.5
    keep_rows = []
    covered = 0.0
    attempts = 0
    failures = 0  # consecutive rejections: the layout is jammed when this grows large
    batch = 256
    shrink = 1.0 - overlap
    while covered < target and len(radii) < cap and attempts < max_attempts:
        r = rng.uniform(rmin, rmax, batch).tolist()
        near = (rng.random(batch) < clustering).tolist()
        jfrac = rng.random(batch).tolist()
        direction = rng.standard_normal((batch, 3))
        if ndim == 2:
            direction[:, 0] = 0.0
        else:
            direction[:, 0] *= 0.5  # neighbours mostly side by side in the stack
        direction /= np.sqrt((direction**2).sum(axis=1, keepdims=True)) + 1e-12
        direction = direction.tolist()
        dist_fac = rng.uniform(1.0 - overlap, 1.05, batch).tolist()
        pos = rng.uniform(-0.5, np.array([hi_z, hi_y, hi_x]), (batch, 3))
        if ndim == 2:
            pos[:, 0] = 0.0
        pos = pos.tolist()
        elong = rng.uniform(elongation[0], elongation[1], batch).tolist()
        cfac = rng.uniform(0.75, 1.0, batch).tolist()
        for t in range(batch):
            attempts += 1
            k = len(radii)
            if (covered >= target or k >= cap or attempts > max_attempts
                    or failures >= _JAMMED_AFTER):
                break
            failures += 1
            rt = r[t]
            if k and near[t]:
                j = int(jfrac[t] * k)
                step = (radii[j] + rt) * dist_fac[t]
                dz, dy, dx = direction[t]
                z = cz[j] + step * dz
                y = cy[j] + step * dy
                x = cx[j] + step * dx
                zp = z / anisotropy
                if not (-0.5 <= zp <= hi_z and -0.5 <= y <= hi_y and -0.5 <= x <= hi_x):
                    continue
            else:
                zp, y, x = pos[t]
                z = zp * anisotropy
            kz, ky, kx = math.floor(z / cell), math.floor(y / cell), math.floor(x / cell)
            conflict = False
            for oz, oy, ox in neighbours:
                for j in grid.get((kz + oz, ky + oy, kx + ox), ()):
                    lim = shrink * (radii[j] + rt)
                    if (cz[j] - z) ** 2 + (cy[j] - y) ** 2 + (cx[j] - x) ** 2 < lim * lim:
                        conflict = True
                        break
                if conflict:
                    break
            if conflict:
                continue
            failures = 0
            grid.setdefault((kz, ky, kx), []).append(k)
            cz.append(z)
            cy.append(y)
            cx.append(x)
            radii.append(rt)
            c_pix = (zp, y, x) if ndim == 3 else (y, x)
            keep_rows.append((c_pix, rt, elong[t], cfac[t]))
            if ndim == 3:
                # volume of the ellipsoid inside the stack's Z range (exact: Z is an axis)
                c = rt * cfac[t] / anisotropy
                z0 = min(max(-0.5 - zp, -c), c)
                z1 = min(max(hi_z - zp, -c), c)
                covered += math.pi * rt * rt * ((z1 - z0) - (z1**3 - z0**3) / (3 * c * c))
            else:
                covered += math.pi * rt * rt
        if failures >= _JAMMED_AFTER:
            break
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
    return objs


# --------------------------------------------------------------------------- #
# appearance of each nucleus
# --------------------------------------------------------------------------- #
def _outline_tables(amps, freqs, phases, ndim):
    """Radial perturbation ``delta(n) = sum_j A_j cos(w_j . n + phi_j)`` on an angle grid.

    For all objects at once: 2D tables are indexed by azimuth bin (``n_az + 1``
    entries, the last one closing the circle), 3D tables by (elevation bin,
    azimuth bin). Direction components are ordered (w, u, v) in 3D, (u, v) in 2D.
    """
    n_az, n_el = _angle_bins(ndim)
    az = (np.arange(n_az + 1) + 0.5) * (2 * math.pi / n_az) - math.pi
    if ndim == 3:
        el = (np.arange(n_el + 1) + 0.5) * (math.pi / n_el) - math.pi / 2
        ce = np.cos(el)[:, None]
        dirs = np.stack(np.broadcast_arrays(np.sin(el)[:, None], ce * np.cos(az)[None],
                                            ce * np.sin(az)[None]), axis=-1)
        dirs = dirs.reshape(-1, 3)
    else:
        dirs = np.stack([np.cos(az), np.sin(az)], axis=-1)
    # (n, angles, terms) -> (n, angles)
    dots = np.matmul(dirs, freqs.transpose(0, 2, 1)) + phases[:, None, :]
    tables = np.matmul(np.cos(dots), amps[:, :, None])[..., 0]
    tables = np.clip(tables, -0.35, 0.35).astype(np.float32)
    if ndim == 3:
        tables = tables.reshape(len(amps), n_el + 1, n_az + 1)
    return tables


def _angle_bins(ndim):
    """(azimuth bins, elevation bins) of the tabulated outline perturbation."""
    return (128, 0) if ndim == 2 else (64, 24)


def _points_in_objects(rng, objs, owner, fraction, ndim):
    """Random points inside the ellipses / ellipsoids ``owner`` (scaled by ``fraction``).

    Returns pixel offsets from the centres, shape (len(owner), ndim), ordered
    (dz?, dy, dx).
    """
    m = len(owner)
    v = rng.standard_normal((m, ndim))
    v /= np.sqrt((v**2).sum(axis=1, keepdims=True)) + 1e-12
    v *= (fraction * rng.random(m) ** (1.0 / ndim))[:, None]
    ct, st = np.cos(objs["theta"][owner]), np.sin(objs["theta"][owner])
    u = v[:, -2] * objs["a"][owner]  # along the major axis
    w = v[:, -1] * objs["b"][owner]  # along the minor axis
    out = np.empty((m, ndim))
    out[:, -1] = u * ct - w * st
    out[:, -2] = u * st + w * ct
    if ndim == 3:
        out[:, 0] = v[:, 0] * objs["c"][owner]
    return out


def _draw_appearance(rng, objs, ndim, tex_shape, *, irregularity, texture, spots, nucleoli,
                     brightness, brightness_spread):
    """All random per-nucleus appearance parameters, drawn in a fixed order."""
    n = len(objs["r"])
    J = _N_OUTLINE_TERMS
    amps = irregularity * rng.standard_normal((n, J)) / math.sqrt(J)
    freqs = rng.standard_normal((n, J, ndim))
    freqs *= rng.uniform(2.0, 4.5, (n, J, 1)) / (
        np.sqrt((freqs**2).sum(axis=2, keepdims=True)) + 1e-12)
    phases = rng.uniform(0.0, 2 * math.pi, (n, J))
    app = {
        "tables": _outline_tables(amps, freqs, phases, ndim),
        "reach": 1.02 + np.minimum(np.abs(amps).sum(axis=1), 0.35),
        "tex_offset": rng.integers(0, np.array(tex_shape), (n, ndim)),
        "tex_amp": texture * rng.uniform(0.5, 1.5, n),
        "level": brightness * np.exp(brightness_spread * rng.standard_normal(n)
                                     - 0.5 * brightness_spread**2),
    }
    # nucleoli: 0-3 dim smooth-edged blobs (multiplicative)
    n_nuc = np.minimum(rng.poisson(0.9, n), 3) if nucleoli else np.zeros(n, dtype=np.intp)
    owner = np.repeat(np.arange(n), n_nuc)
    app["nuc_start"] = np.concatenate([[0], np.cumsum(n_nuc)])
    app["nuc_pos"] = _points_in_objects(rng, objs, owner, 0.55, ndim)
    app["nuc_r"] = objs["r"][owner] * rng.uniform(0.12, 0.25, len(owner))
    app["nuc_depth"] = rng.uniform(0.25, 0.5, len(owner))
    # bright spots (chromocentres): additive gaussians
    n_spots = rng.poisson(spots, n) if spots > 0 else np.zeros(n, dtype=np.intp)
    owner = np.repeat(np.arange(n), n_spots)
    app["spot_start"] = np.concatenate([[0], np.cumsum(n_spots)])
    app["spot_pos"] = _points_in_objects(rng, objs, owner, 0.75, ndim)
    app["spot_sigma"] = rng.uniform(0.7, 1.5, len(owner)) * np.maximum(objs["r"][owner] / 10, 0.5)
    app["spot_amp"] = rng.uniform(0.3, 1.0, len(owner))
    return app


def _render_object(i, objs, app, shape, tex_tile, anisotropy):
    """Draw nucleus ``i`` in its (image-clipped) bounding box.

    Returns ``(slices, mask, intensity)`` with ``mask`` and ``intensity`` of the
    size of the box, or None if nothing of the nucleus lies in the image.
    """
    ndim = len(shape)
    centre = objs["centre"][i]
    cy, cx = float(centre[-2]), float(centre[-1])
    a, b, theta = float(objs["a"][i]), float(objs["b"][i]), float(objs["theta"][i])
    ct, st = math.cos(theta), math.sin(theta)
    reach = float(app["reach"][i])
    half = [math.sqrt((a * st) ** 2 + (b * ct) ** 2) * reach,
            math.sqrt((a * ct) ** 2 + (b * st) ** 2) * reach]
    ctr = [cy, cx]
    if ndim == 3:
        cz, c = float(centre[0]), float(objs["c"][i])
        half.insert(0, c * reach)
        ctr.insert(0, cz)
    lo = [max(int(math.floor(p - h)), 0) for p, h in zip(ctr, half)]
    hi = [min(int(math.ceil(p + h)) + 1, s) for p, h, s in zip(ctr, half, shape)]
    if any(l >= h for l, h in zip(lo, hi)):
        return None
    slices = tuple(slice(l, h) for l, h in zip(lo, hi))

    # open grids of offsets from the centre, and normalised ellipse coordinates
    dy = np.arange(lo[-2], hi[-2], dtype=np.float32) - np.float32(cy)
    dx = np.arange(lo[-1], hi[-1], dtype=np.float32) - np.float32(cx)
    if ndim == 3:
        dz = np.arange(lo[0], hi[0], dtype=np.float32) - np.float32(cz)
        dyg, dxg = dy[None, :, None], dx[None, None, :]
    else:
        dyg, dxg = dy[:, None], dx[None, :]
    un = dxg * np.float32(ct / a) + dyg * np.float32(st / a)
    vn = dyg * np.float32(ct / b) - dxg * np.float32(st / b)
    rho2_uv = un * un + vn * vn
    # smooth irregular outline: radius scaled by (1 + delta(direction))
    n_az, n_el = _angle_bins(ndim)
    phi = np.arctan2(vn, un)  # in [-pi, pi]
    ia = ((phi + np.float32(math.pi)) * np.float32(n_az / (2 * math.pi))).astype(np.intp)
    if ndim == 3:
        wn = (dz * np.float32(1.0 / c))[:, None, None]
        rho = np.sqrt(rho2_uv + wn * wn)
        psi = np.arctan2(wn, np.sqrt(rho2_uv))  # elevation in [-pi/2, pi/2]
        ie = ((psi + np.float32(math.pi / 2)) * np.float32(n_el / math.pi)).astype(np.intp)
        delta = app["tables"][i][ie, ia]
    else:
        rho = np.sqrt(rho2_uv)
        delta = app["tables"][i][ia]
    rr = rho / (1.0 + delta)
    mask = rr <= 1.0
    if not mask.any():
        return None

    # plateau with a dimmer rim, times chromatin texture
    flat = np.float32(0.62 if ndim == 2 else 0.8)
    q = np.maximum(1.0 - rr * rr, 0.0)
    inten = flat + (1.0 - flat) * np.sqrt(q)
    tshape = tex_tile.shape
    offs = app["tex_offset"][i]
    idx = [(np.arange(l, h) + o) % t for l, h, o, t in zip(lo, hi, offs, tshape)]
    tex = tex_tile[np.ix_(*idx)]
    inten *= np.maximum(1.0 + np.float32(app["tex_amp"][i]) * tex, 0.3)

    # nucleoli: dim smooth-edged blobs
    n0, n1 = app["nuc_start"][i], app["nuc_start"][i + 1]
    for p, rn, depth in zip(app["nuc_pos"][n0:n1], app["nuc_r"][n0:n1], app["nuc_depth"][n0:n1]):
        d2 = ((dy - np.float32(p[-2])) ** 2)[:, None] + ((dx - np.float32(p[-1])) ** 2)[None, :]
        if ndim == 3:
            d2 = d2[None] + (((dz - np.float32(p[0])) * np.float32(anisotropy)) ** 2)[:, None, None]
        d2 *= np.float32(1.0 / (rn * rn))
        inten *= 1.0 - np.float32(depth) * np.exp(-(d2 * d2))

    # bright spots: sum of separable gaussians, as one small matrix product
    s0, s1 = app["spot_start"][i], app["spot_start"][i + 1]
    if s1 > s0:
        pos = app["spot_pos"][s0:s1].astype(np.float32)
        inv2s2 = (0.5 / app["spot_sigma"][s0:s1] ** 2).astype(np.float32)[:, None]
        gy = np.exp(-((dy[None, :] - pos[:, -2:-1]) ** 2) * inv2s2)
        gx = np.exp(-((dx[None, :] - pos[:, -1:]) ** 2) * inv2s2)
        gy *= app["spot_amp"][s0:s1].astype(np.float32)[:, None]
        if ndim == 3:
            gz = np.exp(-((dz[None, :] - pos[:, :1]) ** 2) * (inv2s2 * np.float32(anisotropy**2)))
            gyx = (gy[:, :, None] * gx[:, None, :]).reshape(len(gy), -1)
            inten += (gz.T @ gyx).reshape(inten.shape)
        else:
            inten += gy.T @ gx

    inten *= np.float32(app["level"][i])
    return slices, mask, inten


# --------------------------------------------------------------------------- #
# occlusion
# --------------------------------------------------------------------------- #
def _paint(shape, sprites, keep):
    """Paint kept sprites back to front; returns (labels, clean), ids = index + 1."""
    labels = np.zeros(shape, dtype=np.uint32)
    clean = np.zeros(shape, dtype=np.float32)
    for i in keep:
        sl, mask, inten = sprites[i]
        labels[sl][mask] = i + 1
        clean[sl][mask] = inten[mask]
    return labels, clean


def _resolve_overlaps(shape, sprites, min_size):
    """Painter's algorithm, removing fragmented, tiny or mostly hidden nuclei.

    After a removal the scene is repainted and only the nuclei whose visible
    region changed are checked again, until nothing changes.
    """
    ndim = len(shape)
    structure = ndi.generate_binary_structure(ndim, 1)
    full_size = np.array([int(np.count_nonzero(m)) for _, m, _ in sprites], dtype=np.int64)
    keep = [i for i in range(len(sprites)) if full_size[i] >= min_size]
    check = keep
    labels, clean = _paint(shape, sprites, keep)
    for _ in range(50):
        boxes = ndi.find_objects(labels, max_label=len(sprites))
        drop = set()
        for i in check:
            box = boxes[i]
            if box is None:
                drop.add(i)
                continue
            sub = labels[box] == i + 1
            size = int(np.count_nonzero(sub))
            if size < min_size or size < _MIN_VISIBLE_FRACTION * full_size[i]:
                drop.add(i)
            elif ndi.label(sub, structure=structure)[1] != 1:
                drop.add(i)
        if not drop:
            break
        keep = [i for i in keep if i not in drop]
        new_labels, clean = _paint(shape, sprites, keep)
        changed = np.unique(new_labels[new_labels != labels])
        labels = new_labels
        check = [int(v) - 1 for v in changed if v]
    else:  # pragma: no cover - never seen; fall back to an empty, valid partition
        keep = []
        labels, clean = _paint(shape, sprites, keep)
    # contiguous ids 1..n in placement order
    lut = np.zeros(len(sprites) + 1, dtype=np.uint32)
    lut[np.array(keep, dtype=np.intp) + 1] = np.arange(1, len(keep) + 1, dtype=np.uint32)
    return lut[labels], clean


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
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
        fraction somewhat smaller; above about 0.6 placement saturates.
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
    shape = _check_shape(shape)
    ndim = len(shape)
    density = _check_number("density", density, low=0.0, low_open=True, high=1.0,
                            hint="; pass a covered fraction such as density=0.3")
    radius = _check_range("radius", radius, low=0.0, example="(6, 14)")
    noise = _check_number("noise", noise, low=0.0, hint="; use noise=0 for a clean image")
    elongation = _check_range("elongation", elongation, low=1.0, low_open=False,
                              example="(1.0, 1.8)")
    irregularity = _check_number("irregularity", irregularity, low=0.0, high=0.3)
    overlap = _check_number("overlap", overlap, low=0.0, high=0.5)
    clustering = _check_number("clustering", clustering, low=0.0, high=1.0)
    brightness = _check_number("brightness", brightness, low=0.0, low_open=True)
    brightness_spread = _check_number("brightness_spread", brightness_spread, low=0.0, high=2.0)
    texture = _check_number("texture", texture, low=0.0, high=2.0)
    spots = _check_number("spots", spots, low=0.0, high=50.0)
    background = _check_number("background", background, low=0.0)
    illumination = _check_number("illumination", illumination, low=0.0, high=0.95)
    blur = _check_number("blur", blur, low=0.0, high=50.0)
    offset = _check_number("offset", offset, low=0.0, high=60000.0)
    read_noise = _check_number("read_noise", read_noise, low=0.0)
    anisotropy = _check_number("anisotropy", anisotropy, low=0.0, low_open=True,
                               hint="; pass the Z step divided by the pixel size, e.g. 2.0")
    if ndim == 2:
        anisotropy = 1.0
    if min_size is None:
        rmin = radius[0]
        smallest = (math.pi * rmin**2 if ndim == 2
                    else 4 / 3 * math.pi * rmin**3 * 0.75 / anisotropy)
        min_size = max(4, int(round(0.25 * smallest)))
    elif isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer or None, got {min_size!r}")
    min_size = int(min_size)

    rng = np.random.default_rng(seed)
    # independent streams, so that changing one stage does not reshuffle the others
    rng_place, rng_obj, rng_field, rng_noise = (
        np.random.default_rng(int(s)) for s in rng.integers(0, 2**63, size=4)
    )

    objs = _place_objects(rng_place, shape, density, radius, elongation, overlap,
                          clustering, anisotropy)
    # random depth order: later nuclei are in front
    order = rng_place.permutation(len(objs["r"]))
    objs = {key: val[order] for key, val in objs.items()}
    tex_tile = _texture_tile(rng_obj, ndim, anisotropy)
    app = _draw_appearance(rng_obj, objs, ndim, tex_tile.shape, irregularity=irregularity,
                           texture=texture, spots=spots, nucleoli=nucleoli,
                           brightness=brightness, brightness_spread=brightness_spread)
    sprites = []
    for i in range(len(objs["r"])):
        sprite = _render_object(i, objs, app, shape, tex_tile, anisotropy)
        if sprite is not None:
            sprites.append(sprite)
    labels, clean = _resolve_overlaps(shape, sprites, min_size)

    # optics: gaussian PSF plus a faint broad halo of out-of-focus light
    if blur > 0:
        sigma = (2.5 * blur / anisotropy, blur, blur) if ndim == 3 else (blur, blur)
        sharp = ndi.gaussian_filter(clean, sigma, mode="nearest", truncate=3.0)
        size = [max(int(round(_HALO_SCALE * s)), 1) | 1 for s in sigma]
        halo = ndi.uniform_filter(sharp, size, mode="nearest")
        halo = ndi.uniform_filter(halo, size, mode="nearest")
        signal = (1.0 - _HALO_WEIGHT) * sharp + _HALO_WEIGHT * halo
    else:
        signal = clean
    signal += np.float32(background)

    field = 1.0 - illumination * _smooth_field_2d(rng_field, shape[-2], shape[-1])
    if ndim == 3:
        depth = 1.0 - 0.3 * illumination * (np.arange(shape[0], dtype=np.float32)
                                            / max(shape[0] - 1, 1))
        signal *= depth[:, None, None]
    signal *= field

    # camera: shot noise on photo-electrons, read noise, offset
    if noise > 0:
        s = max(noise * noise, 1e-6)  # keeps the Poisson means finite for tiny noise
        counts = rng_noise.poisson(signal.astype(np.float64) / s).astype(np.float32) * np.float32(s)
        if read_noise > 0:
            counts += rng_noise.standard_normal(shape, dtype=np.float32) * np.float32(
                read_noise * noise)
    else:
        counts = signal
    counts += np.float32(offset)
    image = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    return image, labels


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
    shape = _check_shape(shape)
    density = _check_range("density", density, low=0.0, example="(0.1, 0.5)")
    if density[1] > 1.0:
        raise ValueError(f"density range must lie within (0, 1], got {density!r}; "
                         "pass e.g. density=(0.1, 0.5)")
    radius = _check_range("radius", radius, low=0.0, example="(4, 22)")
    noise = _check_range("noise", noise, low=0.0, low_open=False, example="(0.5, 3.0)")
    brightness = _check_range("brightness", brightness, low=0.0, example="(150, 3000)")
    blur = _check_range("blur", blur, low=0.0, low_open=False, example="(0.6, 1.8)")
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

    def loguniform(rng, lo, hi):
        if lo <= 0:
            return rng.uniform(lo, hi)
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def generate():
        for child in children:
            rng = np.random.default_rng(child)
            rmin = rng.uniform(radius[0], max(radius[0], radius[1] / 1.3))
            rmax = min(rmin * rng.uniform(1.3, 2.2), radius[1])
            params = dict(
                density=rng.uniform(*density),
                radius=(rmin, rmax),
                noise=loguniform(rng, *noise),
                brightness=loguniform(rng, *brightness),
                blur=rng.uniform(*blur),
                elongation=(1.0, rng.uniform(1.2, 2.2)),
                irregularity=rng.uniform(0.02, 0.12),
                overlap=rng.uniform(0.0, 0.25),
                clustering=rng.uniform(0.0, 0.7),
                brightness_spread=rng.uniform(0.15, 0.6),
                texture=rng.uniform(0.05, 0.45),
                spots=rng.uniform(0.0, 4.0),
                nucleoli=bool(rng.random() < 0.6),
                background=loguniform(rng, 20.0, 250.0),
                illumination=rng.uniform(0.0, 0.5),
                offset=float(rng.choice([100.0, 100.0, 200.0, 500.0])),
                read_noise=rng.uniform(1.0, 3.0),
            )
            params.update(kwargs)
            yield synthetic_nuclei(shape, seed=rng, **params)

    return generate()


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
        next(synthetic_dataset(0, shape, seed=0, **ranges), None)  # validate the ranges now

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One ``(image, labels)`` pair drawn with ``rng``."""
        return next(synthetic_dataset(1, self.shape, seed=rng, **self.ranges))
