"""Automatic mask generation: napari-sam against Meta's SamAutomaticMaskGenerator in one run.

Same weights, same image. Prints one table: time end to end (embedding included), speed-up
over Meta, decoder calls, masks kept, how many of them equal Meta's (our grid: same settings)
and the recall of Meta's masks (a mask of Meta's is found when one of ours has IoU >= 0.9 with
it; also at IoU >= 0.5, the same object with another outline) for our grid, box and adaptive
samplers. Run it on an otherwise idle machine.

    python benchmarks/amg.py                       # nuclei_s (shipped), 1024^2 nuclei image
    python benchmarks/amg.py --model vit_b --points-per-side 16 --no-filters
    python benchmarks/amg.py --checkpoint runs/nuclei_s/model.pt --iou 0.6 --stability 0.9

``--model vit_b`` uses random weights (no checkpoint can be downloaded here): a speed test
only, its masks are meaningless. Needs the test extras for Meta's implementation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import VIT_B, meta_sam, random_state, reference_nuclei_s, segment_anything  # noqa: E402

from napari_sam import AutomaticMaskGenerator, load_model  # noqa: E402
from napari_sam.engine.image import to_rgb_uint8  # noqa: E402
from napari_sam.synthetic import synthetic_nuclei  # noqa: E402


def models(name: str, checkpoint: str | None):
    """Ours and Meta's model with the same weights."""
    if name == "vit_b":
        reference = meta_sam(**VIT_B)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "vit_b.pth"
            torch.save(random_state(reference, seed=0), path)
            ours = load_model(checkpoint=path, device="cpu")
    else:
        reference = reference_nuclei_s()
        ours = load_model(checkpoint=checkpoint, device="cpu") if checkpoint else load_model(device="cpu")
    reference.load_state_dict(ours.state_dict())
    return ours, reference.eval()


def nuclei_image(size: int, seed: int) -> np.ndarray:
    """Synthetic nuclei drawn at 256 px and enlarged to ``size`` (nuclei 16-90 px across at 1024)."""
    image, _ = synthetic_nuclei((256, 256), seed=seed)
    return to_rgb_uint8(ndimage.zoom(image.astype(np.float32), size / 256, order=1))


def as_sparse(records: list[dict]) -> sparse.csr_matrix:
    masks = [r["segmentation"].ravel() for r in records]
    if not masks:
        return sparse.csr_matrix((0, 1))
    return sparse.csr_matrix(np.stack(masks), dtype=np.float32)


def best_iou(reference: list[dict], ours: list[dict]) -> np.ndarray:
    """For each of Meta's masks, its best IoU with one of ours."""
    if not reference or not ours:
        return np.zeros(len(reference))
    a, b = as_sparse(reference), as_sparse(ours)
    inter = (a @ b.T).toarray()
    union = np.asarray(a.sum(1)) + np.asarray(b.sum(1)).T - inter
    return (inter / np.maximum(union, 1)).max(1)


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["nuclei_s", "vit_b"], default="nuclei_s")
    parser.add_argument("--checkpoint", help="nuclei_s weights to use instead of the shipped ones")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=7, help="synthetic image seed")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--iou", type=float, default=0.88, help="pred_iou_thresh")
    parser.add_argument("--stability", type=float, default=0.95, help="stability_score_thresh")
    parser.add_argument("--no-filters", action="store_true", help="both thresholds 0 (keep all)")
    args = parser.parse_args()
    if args.no_filters:
        args.iou = args.stability = 0.0

    ours, reference = models(args.model, args.checkpoint)
    image = nuclei_image(args.size, args.seed)
    settings = dict(points_per_side=args.points_per_side, pred_iou_thresh=args.iou,
                    stability_score_thresh=args.stability)
    print(f"{args.model}, {args.size} x {args.size} synthetic nuclei, {settings}, "
          f"{torch.get_num_threads()} threads")

    meta = segment_anything.SamAutomaticMaskGenerator(reference, **settings)
    with torch.inference_mode():
        expected, meta_time = timed(lambda: meta.generate(image))
    rows = [("Meta (grid)", meta_time, args.points_per_side**2, expected, None)]
    for sampler in ("grid", "boxes", "adaptive"):
        generator = AutomaticMaskGenerator(ours, sampler=sampler, **settings)
        found, seconds = timed(lambda: generator.generate(image))
        rows.append((f"napari-sam ({sampler})", seconds, generator.decoder_calls, found,
                     best_iou(expected, found)))

    print()
    print("| generator | time | speed-up | decoder calls | masks | Meta's found at IoU >= 0.5 "
          "| recall of Meta's (IoU >= 0.9) | equal to Meta's (IoU >= 0.99) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, seconds, calls, found, iou in rows:
        share = ["-" if iou is None else f"{(iou >= level).mean():.1%}" if len(iou) else "n/a"
                 for level in (0.5, 0.9, 0.99)]
        print(f"| {name} | {seconds:.1f} s | {meta_time / seconds:.1f}x | {calls} | {len(found)} "
              f"| {' | '.join(share)} |")


if __name__ == "__main__":
    main()
