"""Memory and time of stack segmentation: does peak memory stay flat as the stack grows?

Writes synthetic uint16 zarr volumes (nuclei, one plane at a time, never the whole volume in
memory) of 10 and 40 planes, segments each in a fresh process with ``segment_stack`` and prints
the peak resident memory (RSS) and the time. Peak RSS must not grow with the number of planes
(within 10%) and must stay under 2 GB beyond the model.

    python benchmarks/stack.py [--size 4096] [--planes 10 40] [--tile 1024] [--halo 128]
        [--sampler boxes] [--points-per-side 32] [--mode amg|ais|apg] [--voxel-size Z,Y,X]

``--mode ais`` or ``apg`` with a ``--voxel-size`` labels each plane with its neighbours' maps
(z context): three planes' embeddings and maps are held at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

from napari_sam.synthetic import synthetic_nuclei


def write_volume(path: Path, planes: int, size: int) -> None:
    """A (planes, size, size) uint16 zarr volume of nuclei, written plane by plane."""
    volume = zarr.create_array(store=str(path), shape=(planes, size, size), chunks=(1, size, size),
                               dtype="uint16")
    base, _ = synthetic_nuclei((512, 512), seed=0)
    for z in range(planes):
        tile = np.roll(base, 37 * z, axis=1).astype(np.float32)
        volume[z] = ndimage.zoom(tile, size / 512, order=1).astype(np.uint16)


def measure(source: Path, output: Path, tile: int, halo: int, settings: dict) -> dict:
    """Run segment_stack in a fresh process with ``settings``; its peak RSS (maxrss of the
    child) and time."""
    code = (
        "import json, resource, sys, time\n"
        "from napari_sam import load_model\n"
        "load_model(device='cpu')\n"
        "model_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "from napari_sam.volume.stack import segment_stack\n"
        "start = time.perf_counter()\n"
        f"summary = segment_stack(sys.argv[1], sys.argv[2], tile={tile}, halo={halo}, "
        f"device='cpu', **{settings!r})\n"
        "print(json.dumps({'seconds': time.perf_counter() - start, 'objects': summary.objects,\n"
        "                  'model_mb': model_rss / 1024,\n"
        "                  'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(source), str(output)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="plane side in pixels")
    parser.add_argument("--planes", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--halo", type=int, default=128)
    parser.add_argument("--sampler", default="boxes", choices=["grid", "boxes", "adaptive"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--mode", default="amg", choices=["amg", "ais", "apg"])
    parser.add_argument("--voxel-size", type=lambda text: tuple(map(float, text.split(","))))
    args = parser.parse_args()
    if args.mode == "amg":
        settings = dict(sampler=args.sampler, points_per_side=args.points_per_side)
    else:
        settings = dict(mode=args.mode)
    if args.voxel_size:
        settings["voxel_size"] = args.voxel_size

    print(f"{args.size} x {args.size} uint16 planes, tile {args.tile}, halo {args.halo}, "
          f"{settings}, shipped model on the CPU\n")
    print("| planes | volume | time | per plane | objects | peak RSS | beyond the model |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for planes in args.planes:
            source = Path(folder) / f"volume{planes}.zarr"
            write_volume(source, planes, args.size)
            result = measure(source, Path(folder) / f"labels{planes}.zarr", args.tile, args.halo,
                             settings)
            gigabytes = planes * args.size**2 * 2 / 1e9
            print(f"| {planes} | {gigabytes:.1f} GB | {result['seconds']:.0f} s | "
                  f"{result['seconds'] / planes:.1f} s | {result['objects']} | "
                  f"{result['peak_mb']:.0f} MB | {result['peak_mb'] - result['model_mb']:.0f} MB |")
    print(f"\n(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
