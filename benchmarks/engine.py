"""Engine speed: napari-sam against Meta's SamPredictor (and MobileSAM's) in one run.

Same random weights, same 1024 x 1024 image, same prompts. Times are medians of ``--repeats``
runs, taken alternately for the two sides so that machine noise hits both alike; compare the
ratios, not the seconds.

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
from napari_sam.training.synthetic import synthetic_nuclei  # noqa: E402


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


def bench_model(name: str, image: np.ndarray, repeats: int, clicks: int) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / f"{name}.pth"
        ref = reference_predictor(name, checkpoint)
        ours = Predictor(load_model(checkpoint=checkpoint, device="cpu"))

    encode_ref, encode_ours = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            encode_ref.append(timed(lambda: ref.set_image(image)))
            encode_ours.append(timed(lambda: ours.set_image(image)))

    rng = np.random.default_rng(0)
    points = rng.uniform(0, image.shape[0] - 1, size=(clicks, 2))
    click_ref, click_ours = [], []
    for row, col in points:
        click_ref.append(
            timed(lambda: ref.predict(point_coords=np.array([[col, row]]), point_labels=np.array([1])))
        )
        click_ours.append(timed(lambda: ours.predict(points=[[row, col]], labels=[1])))
    return [
        (f"{name} encode 1024x1024", statistics.median(encode_ref), statistics.median(encode_ours)),
        (f"{name} one click (cached embedding)", statistics.median(click_ref), statistics.median(click_ours)),
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
    print(f"| {'operation':<38} | {'reference':>10} | {'napari-sam':>10} | {'speed-up':>8} |")
    print(f"|{'-' * 40}|{'-' * 12}|{'-' * 12}|{'-' * 10}|")
    for label, ref_time, our_time in rows:
        print(
            f"| {label:<38} | {_fmt(ref_time):>10} | {_fmt(our_time):>10} | "
            f"{ref_time / our_time:>7.2f}x |"
        )


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
