"""SAM 2.1 image encoder speed: napari-sam's Hiera + FPN against Meta's ``sam2`` in one run.

Same random weights, same input. Times are medians (and minima) of ``--repeats`` runs under
``torch.inference_mode()``, taken alternately for the two sides so that machine noise hits both
alike; compare the ratios, not the seconds. On a shared machine the minima are the steadier, and
``--cpu-time`` (process CPU time, best with ``--threads 1``) ignores the time spent descheduled.

    python benchmarks/sam2_encoder.py [--sizes tiny] [--img-size 1024] [--threads 2] [--repeats 5]
                                      [--cpu-time]

Needs ``sam2`` (Meta's reference package) installed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_sam.models.sam2.image_encoder import build_hiera_encoder

CONFIGS = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def encoders(size: str, img_size: int):
    """Meta's and our encoder of ``size`` with the same random weights, in eval mode."""
    from sam2.build_sam import build_sam2

    reference = build_sam2(f"configs/sam2.1/sam2.1_hiera_{CONFIGS[size]}.yaml", ckpt_path=None,
                           device="cpu").image_encoder
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    ours = build_hiera_encoder(size, img_size=img_size)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def timed(encoder, x, clock=time.perf_counter) -> float:
    start = clock()
    encoder(x)
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(CONFIGS))
    parser.add_argument("--img-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter

    print(f"{'size':10s} {'sam2 s':>8s} {'ours s':>8s} {'ratio':>6s}  {'min ratio':>9s}   max |diff|")
    for size in args.sizes:
        reference, ours = encoders(size, args.img_size)
        x = torch.randn(1, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
        times = {"sam2": [], "ours": []}
        with torch.inference_mode():
            expected, got = reference(x), ours(x)  # warm-up, and the parity check
            diff = max((a - b).abs().max().item()
                       for a, b in zip(expected["backbone_fpn"], got["backbone_fpn"]))
            for _ in range(args.repeats):
                times["sam2"].append(timed(reference, x, clock))
                times["ours"].append(timed(ours, x, clock))
        theirs, mine = statistics.median(times["sam2"]), statistics.median(times["ours"])
        fastest = min(times["sam2"]) / min(times["ours"])
        print(f"{size:10s} {theirs:8.3f} {mine:8.3f} {theirs / mine:6.2f}  {fastest:9.2f}   {diff:.1e}")


if __name__ == "__main__":
    main()
