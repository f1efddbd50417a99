"""What a commit costs in a large labels layer: the plugin's on-disk labels against the
layout they replaced.

A 4 x 4096 x 4096 uint32 labels volume (256 MB) and one committed object (a disc), written
with :func:`napari_sam.plugin.layers.write_mask` into a napari Labels layer over
``DiskLabels`` (512 x 512 tiles on disk, only the changed pixels written, one undo step),
against the layout before it: a zarr array in memory with one chunk per plane, where a commit
read and rewrote the whole plane. Prints time, peak Python memory (tracemalloc) and the chunk
bytes rewritten, each as a ratio old / new.

    python benchmarks/disk_labels.py [--size 4096] [--radius 60 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import zarr
from napari.layers import Labels

from napari_sam.plugin.disk_labels import TILE, DiskLabels
from napari_sam.plugin.layers import write_mask


def disc(size: int, radius: int) -> np.ndarray:
    rows, cols = np.ogrid[:size, :size]
    return (rows - size // 3) ** 2 + (cols - size // 2) ** 2 < radius**2


def whole_plane_commit(data, plane: int, mask: np.ndarray, value: int) -> None:
    """The commit before on-disk labels: read the plane, paint, write the plane."""
    labels = np.asarray(data[plane])
    labels[mask] = value
    data[plane] = labels


def measure(commit, repeats: int) -> tuple[float, float]:
    """Best time (s) and peak traced memory (MB) of ``commit(value)`` over ``repeats``."""
    times, peaks = [], []
    for value in range(1, repeats + 1):
        tracemalloc.start()
        start = time.perf_counter()
        commit(value)
        times.append(time.perf_counter() - start)
        peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    return min(times), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--radius", type=int, nargs="+", default=[60, 400])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (4, args.size, args.size)
    print(f"labels {shape} uint32 ({np.prod(shape) * 4 / 2**20:.0f} MB); one disc committed on "
          f"plane 1; best of {args.repeats}")
    print(f"{'radius':>6} | {'layout':<36} | {'time s':>7} | {'peak MB':>7} | {'MB rewritten':>12}")
    for radius in args.radius:
        mask = disc(args.size, radius)
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        tiles = ((rows[-1] // TILE - rows[0] // TILE + 1) * (cols[-1] // TILE - cols[0] // TILE + 1))
        with tempfile.TemporaryDirectory() as folder:
            array = zarr.create_array(store=str(Path(folder) / "labels.zarr"), shape=shape,
                                      chunks=(1, TILE, TILE), dtype="uint32", fill_value=0)
            layer = Labels(DiskLabels(array, Path(folder) / "labels.zarr"))
            new = measure(lambda v: write_mask(layer, (1,), mask, v), args.repeats)
        old_array = zarr.create_array(store={}, shape=shape, chunks=(1, args.size, args.size),
                                      dtype="uint32", fill_value=0)
        old = measure(lambda v: whole_plane_commit(old_array, 1, mask, v), args.repeats)
        plane_mb, tile_mb = args.size**2 * 4 / 2**20, TILE**2 * 4 / 2**20
        for name, (seconds, peak), written in (
                ("in-memory zarr, whole plane (before)", old, plane_mb),
                ("on disk, touched tiles (now)", new, tiles * tile_mb)):
            print(f"{radius:>6} | {name:<36} | {seconds:>7.3f} | {peak:>7.1f} | {written:>12.1f}")
        print(f"{radius:>6} | {'ratio before / now':<36} | {old[0] / new[0]:>6.1f}x | "
              f"{old[1] / new[1]:>6.1f}x | {plane_mb / (tiles * tile_mb):>11.1f}x")


if __name__ == "__main__":
    main()
