"""3D objects from z stacks of nuclei: a weight-free 3D watershed against slice-by-slice SAM,
linked plane to plane or assembled in 3D (issue #20).

    python benchmarks/stack3d.py [--sets synthetic stardist] [--seeds 0 1 2]
        [--diameter auto|native|PX] [--mode amg|ais|apg] [--data DIR]

Data:

- ``synthetic``: confocal-like stacks of :func:`napari_sam.synthetic.confocal_stack` with its
  default settings (40 x 192 x 192, z step 3 pixels, radius 8-12 pixels, 3 empty planes at each
  end, nuclei stacked on one another, axially smeared, fading with depth), one per seed.
- ``stardist``: StarDist's ``test_image_nuclei_3d`` (31 x 61 x 57, 51 nuclei, synthetic as
  well), read from the StarDist wheel that ``real_nuclei.py`` fetches into ``--data``. It comes
  without a voxel size; the median extents of its labels (7 x 15 x 14) say a z step of 2.

Methods (rows):

- weight-free 3D watershed: :func:`watershed_3d` with the voxel size and the expected radius of
  the set (10 and 7 pixels: the generator's mean radius, half the median width of StarDist's
  labels);
- slice by slice + today's linking: :func:`napari_sam.volume.segment_stack` with ``nuclei_s``
  (its default automatic mode for stacks) and the set's voxel size: the planes' own labels
  (the run's fragments) through
  :func:`napari_sam.volume.linking.link_slices` with its defaults;
- slice by slice + 3D assembly: the labels of the same ``segment_stack`` run, which assembles
  its planes' labels into 3D objects (:func:`napari_sam.volume.assembly.assemble_objects`);
- true planes + 3D assembly: the true labels, cut into per-plane fragments, through the same
  assembly: what it makes of a perfect segmentation of every plane.

Columns: instance F1 at IoU 0.5 and 0.25 of the 3D objects, objects found / true ones, the
share of the found objects that lie in one plane only, and the time (for the SAM rows: the
``segment_stack`` run, segmentation and assembly, + the linking of its planes).
``--diameter`` and ``--mode`` go to ``segment_stack``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from napari_sam.synthetic import confocal_stack
from napari_sam.training.evaluation import instance_f1
from napari_sam.volume.assembly import assemble_objects
from napari_sam.volume.io import open_zarr_array
from napari_sam.volume.linking import link_slices
from napari_sam.volume.stack import FRAGMENTS, RECORD, segment_stack

sys.path.insert(0, str(Path(__file__).parent))
from real_nuclei import dsb_nuclei

STARDIST_3D = ("stardist/data/images/img3d.tif", "stardist/data/images/mask3d.tif")
# voxel size (z, y, x) in pixels and expected nucleus radius in pixels, per set
SYNTHETIC = ((3.0, 1.0, 1.0), 10.0)  # confocal_stack's defaults: anisotropy 3, radius 8-12
STARDIST = ((2.0, 1.0, 1.0), 7.0)


def stardist_3d(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The image and labels of StarDist's ``test_image_nuclei_3d``, from its wheel in ``folder``."""
    dsb_nuclei(folder)  # downloads the wheel once
    with zipfile.ZipFile(max(folder.glob("stardist-*.whl"))) as wheel:
        image, labels = (tifffile.imread(io.BytesIO(wheel.read(name))) for name in STARDIST_3D)
    return image, labels


def watershed_3d(image: np.ndarray, voxel_size, radius: float) -> np.ndarray:
    """Weight-free 3D nuclei: Otsu threshold, anisotropic distance transform, seeded watershed.

    Parameters
    ----------
    image : (Z, Y, X) array
    voxel_size : (z, y, x) floats
        In pixels of the plane, e.g. ``(3, 1, 1)`` for a z step of three pixels.
    radius : float
        Expected nucleus radius in pixels.

    Returns
    -------
    (Z, Y, X) int32 array
        Labels, 0 for background.
    """
    smooth = ndi.gaussian_filter(image.astype(np.float32), [1.0 / v for v in voxel_size])
    mask = smooth > threshold_otsu(smooth)
    distance = ndi.distance_transform_edt(mask, sampling=voxel_size)
    # seeds half a radius apart in physical units: skimage's min_distance counts voxels alike on
    # every axis, so the spacing is an ellipsoidal footprint instead
    reach = 0.5 * radius
    grid = np.ogrid[tuple(slice(-int(reach / v), int(reach / v) + 1) for v in voxel_size)]
    footprint = sum((g * v / reach) ** 2 for g, v in zip(grid, voxel_size)) <= 1
    peaks = peak_local_max(distance, footprint=footprint, labels=ndi.label(mask)[0],
                           exclude_border=False)
    # the maxima of a plateau (frequent in a distance map) are several peaks: join the peaks
    # closer than the footprint into one seed
    seeds = np.zeros(mask.shape, bool)
    seeds[tuple(peaks.T)] = True
    markers = ndi.label(ndi.binary_dilation(seeds, footprint) & mask)[0]
    return watershed(-distance, markers, mask=mask)


def plane_spans(labels: np.ndarray) -> np.ndarray:
    """The number of planes each object of a ``(Z, Y, X)`` label volume spans."""
    return np.unique(np.concatenate([np.unique(p[p > 0]) for p in labels]),
                     return_counts=True)[1]


def scores(found: np.ndarray, truth: np.ndarray) -> list[str]:
    """F1 at 0.5 and 0.25, objects found / true, share of found objects in one plane only."""
    planes = plane_spans(found)
    one_plane = float(np.mean(planes == 1)) if planes.size else 0.0
    true = len(np.unique(truth[truth > 0]))
    return [f"{instance_f1(found, truth, 0.5)['f1']:.3f}",
            f"{instance_f1(found, truth, 0.25)['f1']:.3f}",
            f"{planes.size} / {true}", f"{one_plane:.0%}"]


def slice_by_slice(image: np.ndarray, diameter, mode, voxel_size):
    """:func:`segment_stack` as a user runs it, 3D assembly included, with the set's
    ``voxel_size`` given: the planes' own labels (its fragments, unique ids, not linked), the
    3D objects, the time of the whole run and its summary."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "labels.zarr"
        start = time.perf_counter()
        summary = segment_stack(image, output, model="nuclei_s", device="cpu",
                                diameter=diameter, mode=mode, voxel_size=voxel_size,
                                output_format="zarr")
        seconds = time.perf_counter() - start
        planes = np.asarray(open_zarr_array(str(output / RECORD / FRAGMENTS)))
        objects = np.asarray(open_zarr_array(str(output)))
    return planes, objects, seconds, summary


def rows(image: np.ndarray, truth: np.ndarray, voxel_size, radius: float, diameter, mode):
    """``(row, note, labels)`` per method: the table cells after the stack's name, what the
    slice-by-slice rows did (None for the watershed), and the 3D labels found."""
    start = time.perf_counter()
    found = watershed_3d(image, voxel_size, radius)
    yield ["weight-free 3D watershed", *scores(found, truth),
           f"{time.perf_counter() - start:.1f} s"], None, found

    planes, assembled, seconds, segmented = slice_by_slice(image, diameter, mode, voxel_size)
    linked = planes.copy()
    start = time.perf_counter()
    link_slices(linked)
    yield ["slice by slice + today's linking", *scores(linked, truth),
           f"{seconds:.0f} + {time.perf_counter() - start:.1f} s"], (
        f"{segmented.objects} objects in the planes, {segmented.scale}"), linked

    yield ["slice by slice + 3D assembly", *scores(assembled, truth), f"{seconds:.0f} s"], (
        f"{segmented.objects_3d} objects in 3D"), assembled

    # what the assembly makes of perfect planes: the truth cut into per-plane fragments
    true_planes = truth.astype(np.uint32)
    offsets = (np.arange(truth.shape[0], dtype=np.uint32) + 1)[:, None, None] * np.uint32(100_000)
    true_planes = np.where(true_planes > 0, true_planes + offsets, 0).astype(np.uint32)
    start = time.perf_counter()
    summary = assemble_objects(true_planes, image, voxel_size=voxel_size)
    yield ["true planes + 3D assembly", *scores(true_planes, truth),
           f"{time.perf_counter() - start:.1f} s"], summary, true_planes


def section_figure(path: Path, image: np.ndarray, voxel_size, labels: list[np.ndarray]) -> None:
    """Save an XZ section through ``image`` (the row crossing most labelled objects of the
    first of ``labels``), drawn at its physical aspect, once bare and once under each of
    ``labels`` (distinct colours per object, outlines in white)."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    row = int(np.argmax([len(np.unique(labels[0][:, y])) for y in range(image.shape[1])]))
    stretch = max(int(round(voxel_size[0] / voxel_size[1])), 1)
    grey = image[:, row].astype(float)
    grey = np.clip((grey - np.percentile(grey, 1)) / np.ptp(np.percentile(grey, [1, 99.9])), 0, 1)
    panels = [np.dstack([grey] * 3)]
    for found in labels:
        section = found[:, row]
        ids, index = np.unique(section, return_inverse=True)
        colour = np.random.default_rng(0).uniform(0.3, 1.0, (ids.size, 3))
        colour = colour[index.reshape(section.shape)]
        panel = np.where(section[..., None] > 0, 0.5 * panels[0] + 0.5 * colour, panels[0])
        panel[find_boundaries(section)] = 1.0
        panels.append(panel)
    gap = np.ones((2, image.shape[2], 3))
    sheet = np.concatenate([p for panel in panels for p in (np.repeat(panel, stretch, axis=0),
                                                             gap)][:-1])
    imsave(path, (np.repeat(np.repeat(sheet, 2, axis=0), 2, axis=1) * 255).astype(np.uint8))


def diameter_argument(text: str):
    """``--diameter`` as ``segment_stack`` takes it: "auto", None (native) or pixels."""
    if text in ("auto", "native"):
        return None if text == "native" else text
    return float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=["synthetic", "stardist"],
                        default=["synthetic", "stardist"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the synthetic stacks")
    parser.add_argument("--diameter", type=diameter_argument, default="auto",
                        help="object diameter for segment_stack: auto, native or pixels")
    parser.add_argument("--mode", choices=["amg", "ais", "apg"],
                        help="automatic mode for segment_stack (default: the model's)")
    parser.add_argument("--figure", type=Path,
                        help="save an XZ section of the first stack (image, truth, then each "
                        "method's objects) to this PNG")
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "napari-sam" / "dsb2018",
                        help="folder of the StarDist wheel")
    args = parser.parse_args()

    data = []
    if "synthetic" in args.sets:
        data += [(f"synthetic, seed {seed}", *confocal_stack(seed=seed), *SYNTHETIC)
                 for seed in args.seeds]
    if "stardist" in args.sets:
        data.append(("StarDist 3D", *stardist_3d(args.data), *STARDIST))

    print(f"segment_stack: nuclei_s on the CPU, diameter {args.diameter}, mode "
          f"{args.mode or 'the model default'}\n")
    print("| stack | method | F1@0.5 | F1@0.25 | found / true | in one plane | time |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for index, (name, image, truth, voxel_size, radius) in enumerate(data):
        found = [truth]
        for row, note, labels in rows(image, truth, voxel_size, radius, args.diameter, args.mode):
            print(f"| {name} | " + " | ".join(row) + " |", flush=True)
            if note is not None:
                notes.append(f"- {name}, {row[0]}: {note}")
            found.append(labels)
        if args.figure and index == 0:
            section_figure(args.figure, image, voxel_size, found)
            notes.append(f"- {args.figure}: XZ section of {name}: image, truth, "
                         "watershed, today's linking, 3D assembly, true planes assembled")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
