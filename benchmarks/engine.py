"""Engine speed: napari-sam against Meta's SamPredictor (and MobileSAM's) in one run.

Same random weights, same 1024 x 1024 image, same prompts. Times are medians of ``--repeats``
runs, taken alternately for the two sides so that machine noise hits both alike; compare the
ratios, not the seconds. Run it on an otherwise idle machine: PyTorch's worker threads wait for
each other, so another busy process slows small operations (a click) out of all proportion.

    python benchmarks/engine.py [--models vit_b vit_t] [--repeats 3] [--clicks 20]

Needs the test extras (``pip install -e .[testing]``) for the reference implementations.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import meta_sam, mobile_sam, mobile_sam_vit_t, random_state, segment_anything, VIT_B  # noqa: E402

from napari_sam import Predictor, load_model  # noqa: E402
from napari_sam.engine.image import to_rgb_uint8  # noqa: E402
from napari_sam.synthetic import synthetic_nuclei  # noqa: E402


def reference_predictor(name: str, checkpoint: Path):
    """The reference predictor with random weights saved to ``checkpoint``."""
    model = mobile_sam_vit_t() if name == "vit_t" else meta_sam(**VIT_B)
    torch.save(random_state(model, seed=0), checkpoint)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    package = mobile_sam if name == "vit_t" else segment_anything
    return package.SamPredictor(model)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# The first clicks of a session are slow on both sides (kernel set-up, first memory use).
WARMUP_CLICKS = 3


def flushed(function):
    """``function`` run with denormal floats flushed to zero (what napari-sam does internally)."""

    def run():
        torch.set_flush_denormal(True)
        try:
            return function()
        finally:
            torch.set_flush_denormal(False)

    return run


def bench_model(name: str, image: np.ndarray, repeats: int, clicks: int) -> list[tuple[str, list[float]]]:
    """Median times of: reference, reference with denormals flushed, napari-sam."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / f"{name}.pth"
        ref = reference_predictor(name, checkpoint)
        ours = Predictor(load_model(checkpoint=checkpoint, device="cpu"))

    encode = [[], [], []]
    with torch.inference_mode():
        for _ in range(repeats):
            encode[0].append(timed(lambda: ref.set_image(image)))
            encode[1].append(timed(flushed(lambda: ref.set_image(image))))
            encode[2].append(timed(lambda: ours.set_image(image)))

    rng = np.random.default_rng(0)
    points = rng.uniform(0, image.shape[0] - 1, size=(clicks + WARMUP_CLICKS, 2))
    click = [[], [], []]
    for row, col in points:
        def ref_click():
            return ref.predict(point_coords=np.array([[col, row]]), point_labels=np.array([1]))

        click[0].append(timed(ref_click))
        click[1].append(timed(flushed(ref_click)))
        click[2].append(timed(lambda: ours.predict(points=[[row, col]], labels=[1])))
    return [
        (f"{name} encode 1024x1024", [statistics.median(t) for t in encode]),
        (f"{name} one click (cached embedding)", [statistics.median(t[WARMUP_CLICKS:]) for t in click]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_b", "vit_t"], choices=["vit_b", "vit_t"])
    parser.add_argument("--repeats", type=int, default=3, help="encoder runs per side")
    parser.add_argument("--clicks", type=int, default=20, help="decoder calls per side")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    image = to_rgb_uint8(synthetic_nuclei((1024, 1024), seed=0)[0])  # the reference takes uint8 RGB
    rows = []
    for name in args.models:
        rows += bench_model(name, image, args.repeats, args.clicks)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print("reference: Meta's segment-anything (vit_b) or MobileSAM (vit_t); FTZ: the same with")
    print("torch.set_flush_denormal(True), which napari-sam sets while it runs")
    print(_row(("operation", "reference", "ref. + FTZ", "napari-sam", "vs ref.", "vs ref.+FTZ")))
    print("|" + "|".join("-" * (w + 2) for w in WIDTHS) + "|")
    for label, (ref_time, ftz_time, our_time) in rows:
        print(_row((label, _fmt(ref_time), _fmt(ftz_time), _fmt(our_time),
                    f"{ref_time / our_time:.2f}x", f"{ftz_time / our_time:.2f}x")))


def _row(cells) -> str:
    """A markdown table row: the first cell left-aligned, the others right-aligned."""
    first, *rest = cells
    return "| " + " | ".join([f"{first:<{WIDTHS[0]}}"] + [f"{c:>{w}}" for c, w in zip(rest, WIDTHS[1:])]) + " |"


WIDTHS = (36, 10, 10, 10, 8, 11)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
