"""Linking a stack's planes into 3D objects: the assembly's greedy agglomeration against
``python-elf``'s multicut, the one micro-sam merges its slices with (issue #20).

    python benchmarks/linking_multicut.py [--sets synthetic stardist] [--seeds 0 1 2 3 4]
        [--betas 0.3 0.5 0.7] [--data DIR]

Each stack of ``stack3d.py`` (the confocal-like synthetic stacks, StarDist's 3D stack) is
segmented once by :func:`~napari_sam.volume.segment_stack` as a user runs it (``nuclei_s``, its
defaults, the set's voxel size). The same planes' objects (its fragments) are then linked into
3D objects by (rows):

- micro-sam's merge: :func:`micro_sam.multi_dimensional_segmentation.merge_instance_segmentation_3d`
  as ``automatic_3d_segmentation`` calls it (elf's multicut over the overlap graph of
  neighbouring planes, no minimum extent); then with ``min_z_extent`` set to the assembly's
  ``min_planes``, which drops pieces in too few planes as the assembly does;
- the assembly: :func:`~napari_sam.volume.assembly.assemble_objects`, the shipped steps
  (greedy agglomeration, split, trim, minimum extent); this is ``segment_stack``'s output;
- the assembly with elf's multicut as step 1: elf's Kernighan-Lin multicut (through
  ``multicut_decomposition``) over the assembly's own overlap graph, each edge's cost from its
  IoU (``compute_edge_costs(1 - IoU, beta)``: attractive above an IoU of ``1 - beta``); the
  greedy step then merges only fragments the multicut puts together, so that a chain still
  holds one fragment per plane, which the later steps (split, trim) read along z.

Tables: instance F1 at IoU 0.5 of the 3D objects with objects found / true, F1 at IoU 0.25,
and the median number of planes an object spans (the true objects' first). micro-sam and
python-elf (with its ``bioimage-cpp`` graph backend) are test extras
(``tools/install-test-deps.sh``), used here as references only.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
from skimage.segmentation import relabel_sequential

from napari_sam.synthetic import confocal_stack
from napari_sam.volume import assembly

sys.path.insert(0, str(Path(__file__).parent))
from stack3d import STARDIST, SYNTHETIC, plane_spans, scores, slice_by_slice, stardist_3d


def micro_sam_merge(planes: np.ndarray, min_z_extent: int | None) -> np.ndarray:
    """The planes' objects merged by micro-sam's slice merging."""
    from micro_sam.multi_dimensional_segmentation import merge_instance_segmentation_3d

    fragments = relabel_sequential(planes)[0]  # its graph has a node per id up to the largest
    return merge_instance_segmentation_3d(fragments, min_z_extent=min_z_extent, verbose=False)


def multicut_link(beta: float):
    """A replacement of the assembly's step 1 (``assembly._link``) that agglomerates only
    within the clusters of elf's multicut over the same overlap graph."""
    from bioimage_cpp.graph import UndirectedGraph
    from elf.segmentation.multicut import compute_edge_costs, multicut_decomposition

    greedy = assembly._link

    def link(f):
        i, j = f.edges.T
        covered = f.overlap >= assembly._COVER * np.minimum(f.area[i], f.area[j])
        if not covered.any():
            return greedy(f)
        iou = f.overlap / (f.area[i] + f.area[j] - f.overlap)
        graph = UndirectedGraph(f.ids.size)
        graph.insert_edges(f.edges[covered].astype(np.uint64))
        costs = compute_edge_costs(np.clip(1 - iou[covered], 1e-3, 1 - 1e-3), beta=beta)
        cluster = np.asarray(multicut_decomposition(graph, costs))
        together = cluster[i] == cluster[j]
        return greedy(replace(f, edges=f.edges[together], overlap=f.overlap[together]))

    return link


def linkings(image: np.ndarray, voxel_size, betas):
    """``(method, labels)`` for each way of linking one ``segment_stack`` run's planes."""
    planes, assembled, _, _ = slice_by_slice(image, "auto", None, voxel_size)
    again = planes.copy()
    summary = assembly.assemble_objects(again, image, voxel_size=voxel_size)
    if not np.array_equal(again, assembled):  # the benchmark must link what the run linked
        raise RuntimeError("assembling the run's fragments again gave other objects")
    yield "micro-sam's merge (its defaults)", micro_sam_merge(planes, None)
    yield (f"micro-sam's merge, min_z_extent={summary.min_planes}",
           micro_sam_merge(planes, summary.min_planes))
    yield "assembly, greedy step 1 (shipped)", assembled
    for beta in betas:
        linked = planes.copy()
        with mock.patch.object(assembly, "_link", multicut_link(beta)):
            assembly.assemble_objects(linked, image, voxel_size=voxel_size)
        yield f"assembly, elf multicut step 1, beta {beta}", linked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=["synthetic", "stardist"],
                        default=["synthetic", "stardist"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                        help="multicut boundary biases (elf's beta) for step 1")
    parser.add_argument("--data", type=Path,
                        default=Path.home() / ".cache" / "napari-sam" / "dsb2018",
                        help="folder of the StarDist wheel")
    args = parser.parse_args()

    data = []
    if "synthetic" in args.sets:
        data += [(f"seed {seed}", *confocal_stack(seed=seed), SYNTHETIC[0])
                 for seed in args.seeds]
    if "stardist" in args.sets:
        data.append(("StarDist", *stardist_3d(args.data), STARDIST[0]))

    cells: dict[str, list[list[str]]] = {}
    true_extents = []
    for name, image, truth, voxel_size in data:
        true_extents.append(median_extent(truth))
        for method, labels in linkings(image, voxel_size, args.betas):
            at_half, at_quarter, found, _ = scores(labels, truth)
            cells.setdefault(method, []).append(
                [f"{at_half} ({found.replace(' ', '')})", at_quarter, median_extent(labels)])
        print(f"{name}: done", file=sys.stderr, flush=True)

    names = [name for name, *_ in data]
    print("One segment_stack run's planes per stack, linked into 3D objects each way.")
    for column, title in enumerate(["F1 at IoU 0.5 (objects found/true)", "F1 at IoU 0.25",
                                    "Median number of planes an object spans"]):
        print(f"\n{title}\n")
        print("| linking | " + " | ".join(names) + (" | mean |" if column < 2 else " |"))
        print("|---|" + "---|" * (len(names) + (column < 2)))
        if column == 2:
            print("| truth | " + " | ".join(true_extents) + " |")
        for method, row in cells.items():
            values = [r[column] for r in row]
            mean = f" {np.mean([float(v.split()[0]) for v in values]):.3f} |" if column < 2 else ""
            print(f"| {method} | " + " | ".join(values) + " |" + mean)


def median_extent(labels: np.ndarray) -> str:
    """The median number of planes the objects of ``labels`` span."""
    spans = plane_spans(labels)
    return f"{np.median(spans):.0f}" if spans.size else "-"


if __name__ == "__main__":
    main()
