"""Appearance of the nuclei (outline, texture, nucleoli, spots, brightness) and drawing of one."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

# Number of random cosine terms in the smooth outline perturbation.
_N_OUTLINE_TERMS = 4
# Largest relative change of the radius by that perturbation.
_MAX_OUTLINE_CHANGE = 0.35
# Period of the texture tile in pixels (per axis, Y and X; Z uses half of it).
_TEXTURE_TILE = 64


def draw_appearance(rng, objs, ndim, anisotropy, *, irregularity, texture, spots, nucleoli,
                    brightness, brightness_spread):
    """All random appearance parameters of the nuclei ``objs``, drawn in a fixed order.

    Returns a dict for :func:`render_object`; per nucleus ``i``, its nucleoli are
    rows ``nuc_start[i]:nuc_start[i + 1]`` of the ``nuc_*`` arrays, and likewise
    its spots of the ``spot_*`` arrays.
    """
    tex_tile = _texture_tile(rng, ndim, anisotropy)
    n = len(objs["r"])
    terms = _N_OUTLINE_TERMS
    amps = irregularity * rng.standard_normal((n, terms)) / math.sqrt(terms)
    freqs = rng.standard_normal((n, terms, ndim))
    freqs *= rng.uniform(2.0, 4.5, (n, terms, 1)) / (
        np.sqrt((freqs**2).sum(axis=2, keepdims=True)) + 1e-12)
    phases = rng.uniform(0.0, 2 * math.pi, (n, terms))
    app = {
        "tex_tile": tex_tile,
        "tables": _outline_tables(amps, freqs, phases, ndim),
        # outermost extent of the perturbed outline, relative to the ellipse, with a margin
        "reach": 1.02 + np.minimum(np.abs(amps).sum(axis=1), _MAX_OUTLINE_CHANGE),
        "tex_offset": rng.integers(0, np.array(tex_tile.shape), (n, ndim)),
        "tex_amp": texture * rng.uniform(0.5, 1.5, n),
        "level": brightness * np.exp(brightness_spread * rng.standard_normal(n)
                                     - 0.5 * brightness_spread**2),
    }
    # nucleoli: 0-3 dim smooth-edged blobs (multiplicative)
    n_nuc = np.minimum(rng.poisson(0.9, n), 3) if nucleoli else np.zeros(n, dtype=np.intp)
    app["nuc_start"], owner, app["nuc_pos"] = _points_in_objects(rng, objs, n_nuc, 0.55, ndim)
    app["nuc_r"] = objs["r"][owner] * rng.uniform(0.12, 0.25, len(owner))
    app["nuc_depth"] = rng.uniform(0.25, 0.5, len(owner))
    # bright spots (chromocentres): additive gaussians
    n_spots = rng.poisson(spots, n) if spots > 0 else np.zeros(n, dtype=np.intp)
    app["spot_start"], owner, app["spot_pos"] = _points_in_objects(rng, objs, n_spots, 0.75, ndim)
    app["spot_sigma"] = rng.uniform(0.7, 1.5, len(owner)) * np.maximum(objs["r"][owner] / 10, 0.5)
    app["spot_amp"] = rng.uniform(0.3, 1.0, len(owner))
    return app


def render_object(i, objs, app, shape, anisotropy):
    """Draw nucleus ``i`` in its (image-clipped) bounding box.

    Returns ``(slices, mask, intensity)`` with ``mask`` and ``intensity`` of the
    size of the box, or None if nothing of the nucleus lies in the image.
    """
    box = _bounding_box(i, objs, float(app["reach"][i]), shape)
    if box is None:
        return None
    # offsets of the box's pixels from the centre, per axis (dz?, dy, dx)
    offsets = [np.arange(s.start, s.stop, dtype=np.float32) - np.float32(p)
               for s, p in zip(box, objs["centre"][i])]
    rr = _relative_radius(i, objs, app["tables"][i], offsets)
    mask = rr <= 1.0
    if not mask.any():
        return None

    # plateau with a dimmer rim, times chromatin texture
    flat = np.float32(_rim_level(len(shape)))
    q = np.maximum(1.0 - rr * rr, 0.0)
    inten = flat + (1.0 - flat) * np.sqrt(q)
    tile = app["tex_tile"]
    idx = [(np.arange(s.start, s.stop) + o) % t
           for s, o, t in zip(box, app["tex_offset"][i], tile.shape)]
    inten *= np.maximum(1.0 + np.float32(app["tex_amp"][i]) * tile[np.ix_(*idx)], 0.3)

    n0, n1 = app["nuc_start"][i], app["nuc_start"][i + 1]
    _dim_nucleoli(inten, offsets, app["nuc_pos"][n0:n1], app["nuc_r"][n0:n1],
                  app["nuc_depth"][n0:n1], anisotropy)
    s0, s1 = app["spot_start"][i], app["spot_start"][i + 1]
    if s1 > s0:
        _add_spots(inten, offsets, app["spot_pos"][s0:s1], app["spot_sigma"][s0:s1],
                   app["spot_amp"][s0:s1], anisotropy)
    inten *= np.float32(app["level"][i])
    return box, mask, inten


def render_fringe(i, objs, app, shape, anisotropy, width):
    """The unlabelled fringe of signal just outside nucleus ``i``'s outline, ``width`` px wide.

    Real nuclei (the DSB image's, for instance) keep about half of their brightness a pixel
    outside the outline a person draws, and a third two pixels out; a nucleus drawn as a sharp
    step keeps a quarter and a twentieth. The fringe falls from the nucleus' rim level
    exponentially with the distance from the outline, over up to ``3 * width`` pixels (slices
    count ``anisotropy`` pixels). Returns ``(slices, values)``, or None if nothing of it lies in
    the image.
    """
    reach = 3.0 * width
    shortest = max(min(float(objs["a"][i]), float(objs["b"][i])), 1e-6)
    grown = float(app["reach"][i]) + reach / shortest
    box = _bounding_box(i, objs, grown, shape)
    if box is None:
        return None
    offsets = [np.arange(s.start, s.stop, dtype=np.float32) - np.float32(p)
               for s, p in zip(box, objs["centre"][i])]
    inside = _relative_radius(i, objs, app["tables"][i], offsets) <= 1.0
    if not inside.any():
        return None
    sampling = (anisotropy, 1.0, 1.0) if len(shape) == 3 else None
    outside = ndi.distance_transform_edt(~inside, sampling=sampling).astype(np.float32)
    rim = np.float32(_rim_level(len(shape)) * app["level"][i])
    values = rim * np.exp(-outside / np.float32(width))
    values[inside | (outside > reach)] = 0
    return box, values


def _rim_level(ndim):
    """Brightness of a nucleus at its outline, relative to its centre, before texture."""
    return 0.62 if ndim == 2 else 0.8


def _texture_tile(rng: np.random.Generator, ndim: int, anisotropy: float) -> np.ndarray:
    """Periodic smooth noise (zero mean, unit std) mixing a fine and a coarse scale."""
    t = _TEXTURE_TILE
    shape = (t // 2, t, t) if ndim == 3 else (t, t)
    white = rng.standard_normal(shape).astype(np.float32)

    def smooth(sigma: float) -> np.ndarray:
        s = (sigma / anisotropy, sigma, sigma) if ndim == 3 else sigma
        f = ndi.gaussian_filter(white, s, mode="wrap")
        return f / (f.std() + 1e-12)

    tile = 0.75 * smooth(1.0) + 0.45 * smooth(3.0)
    tile -= tile.mean()
    tile /= tile.std() + 1e-12
    return tile.astype(np.float32)


def _angle_bins(ndim):
    """(azimuth bins, elevation bins) of the tabulated outline perturbation."""
    return (128, 0) if ndim == 2 else (64, 24)


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
    tables = np.clip(tables, -_MAX_OUTLINE_CHANGE, _MAX_OUTLINE_CHANGE).astype(np.float32)
    if ndim == 3:
        tables = tables.reshape(len(amps), n_el + 1, n_az + 1)
    return tables


def _points_in_objects(rng, objs, counts, fraction, ndim):
    """``counts[i]`` random points inside each ellipse / ellipsoid ``i`` scaled by ``fraction``.

    Returns ``(start, owner, offsets)``: the points of nucleus ``i`` are rows
    ``start[i]:start[i + 1]``, ``owner`` is the nucleus of each point and
    ``offsets`` its pixel offset from that centre, ``(m, ndim)`` ordered (dz?, dy, dx).
    """
    owner = np.repeat(np.arange(len(counts)), counts)
    start = np.concatenate([[0], np.cumsum(counts)])
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
    return start, owner, out


def _bounding_box(i, objs, reach, shape):
    """Slices of nucleus ``i``'s box clipped to the image, or None if it lies outside.

    The box is that of the ellipse (ellipsoid) enlarged by ``reach``.
    """
    centre = [float(p) for p in objs["centre"][i]]
    a, b, theta = float(objs["a"][i]), float(objs["b"][i]), float(objs["theta"][i])
    ct, st = math.cos(theta), math.sin(theta)
    half = [math.sqrt((a * st) ** 2 + (b * ct) ** 2) * reach,
            math.sqrt((a * ct) ** 2 + (b * st) ** 2) * reach]
    if len(shape) == 3:
        half.insert(0, float(objs["c"][i]) * reach)
    lo = [max(math.floor(p - h), 0) for p, h in zip(centre, half)]
    hi = [min(math.ceil(p + h) + 1, s) for p, h, s in zip(centre, half, shape)]
    if any(start >= stop for start, stop in zip(lo, hi)):
        return None
    return tuple(slice(start, stop) for start, stop in zip(lo, hi))


def _relative_radius(i, objs, table, offsets):
    """Distance of each box pixel from the centre of nucleus ``i``, relative to its outline.

    The outline is the ellipse (ellipsoid) with its radius scaled by
    ``1 + delta(direction)`` from ``table``; pixels at most 1 are inside.
    """
    ndim = len(offsets)
    a, b, theta = float(objs["a"][i]), float(objs["b"][i]), float(objs["theta"][i])
    ct, st = math.cos(theta), math.sin(theta)
    dy, dx = offsets[-2:]
    if ndim == 3:
        dyg, dxg = dy[None, :, None], dx[None, None, :]
    else:
        dyg, dxg = dy[:, None], dx[None, :]
    # normalised ellipse coordinates
    un = dxg * np.float32(ct / a) + dyg * np.float32(st / a)
    vn = dyg * np.float32(ct / b) - dxg * np.float32(st / b)
    rho2_uv = un * un + vn * vn
    n_az, n_el = _angle_bins(ndim)
    phi = np.arctan2(vn, un)  # in [-pi, pi]
    ia = ((phi + np.float32(math.pi)) * np.float32(n_az / (2 * math.pi))).astype(np.intp)
    if ndim == 3:
        wn = (offsets[0] * np.float32(1.0 / float(objs["c"][i])))[:, None, None]
        rho = np.sqrt(rho2_uv + wn * wn)
        psi = np.arctan2(wn, np.sqrt(rho2_uv))  # elevation in [-pi/2, pi/2]
        ie = ((psi + np.float32(math.pi / 2)) * np.float32(n_el / math.pi)).astype(np.intp)
        delta = table[ie, ia]
    else:
        rho = np.sqrt(rho2_uv)
        delta = table[ia]
    return rho / (1.0 + delta)


def _dim_nucleoli(inten, offsets, positions, radii, depths, anisotropy):
    """Darken ``inten`` in place by smooth-edged blobs (nucleoli) at pixel ``positions``."""
    dy, dx = offsets[-2:]
    for p, rn, depth in zip(positions, radii, depths):
        d2 = ((dy - np.float32(p[-2])) ** 2)[:, None] + ((dx - np.float32(p[-1])) ** 2)[None, :]
        if len(offsets) == 3:
            dz2 = ((offsets[0] - np.float32(p[0])) * np.float32(anisotropy)) ** 2
            d2 = d2[None] + dz2[:, None, None]
        d2 *= np.float32(1.0 / (rn * rn))
        inten *= 1.0 - np.float32(depth) * np.exp(-(d2 * d2))


def _add_spots(inten, offsets, positions, sigmas, amplitudes, anisotropy):
    """Add gaussian bright spots to ``inten`` in place, as one small matrix product."""
    dy, dx = offsets[-2:]
    pos = positions.astype(np.float32)
    inv2s2 = (0.5 / sigmas**2).astype(np.float32)[:, None]
    gy = np.exp(-((dy[None, :] - pos[:, -2:-1]) ** 2) * inv2s2)
    gx = np.exp(-((dx[None, :] - pos[:, -1:]) ** 2) * inv2s2)
    gy *= amplitudes.astype(np.float32)[:, None]
    if len(offsets) == 3:
        dz = offsets[0]
        gz = np.exp(-((dz[None, :] - pos[:, :1]) ** 2) * (inv2s2 * np.float32(anisotropy**2)))
        gyx = (gy[:, :, None] * gx[:, None, :]).reshape(len(gy), -1)
        inten += (gz.T @ gyx).reshape(inten.shape)
    else:
        inten += gy.T @ gx
