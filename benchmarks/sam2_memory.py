"""SAM 2.1 memory speed: napari-sam's memory attention and encoder against Meta's ``sam2``.

Same random weights, same inputs, realistic propagation sizes: a 64 x 64 feature grid (1024 px
input), ``--frames`` memory planes and ``--pointers`` object pointers of 4 tokens each, for 1 and
2 objects. Times are medians (and minima) of ``--repeats`` runs under ``torch.inference_mode()``,
taken alternately for the two sides so that machine noise hits both alike; compare the ratios
(sam2 time / our time, above 1 = we are faster), not the seconds.

    python benchmarks/sam2_memory.py [--threads 2] [--repeats 5] [--frames 7] [--pointers 16]
                                     [--keep-denormals] [--clock cpu]

Denormal floats are flushed to zero, as the engine runs the models (``engine.denormals``).
``--clock cpu`` times the process's CPU time instead of the wall clock: with ``--threads 1``
this is the steadiest measure on a machine shared with other jobs.

Needs ``sam2`` (Meta's reference package) and its ``hydra`` / ``omegaconf`` installed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from napari_sam.models.sam2.memory_attention import MemoryAttention
from napari_sam.models.sam2.memory_encoder import MemoryEncoder


def reference_modules():
    """Meta's memory attention and encoder built from the SAM 2.1 yaml, random weights."""
    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.load(Path(sam2.__file__).parent / "configs/sam2.1/sam2.1_hiera_t.yaml")
    torch.manual_seed(0)
    modules = []
    for name in ("memory_attention", "memory_encoder"):
        module = instantiate(config.model[name]).eval()
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(0.02 * torch.randn_like(parameter))
        modules.append(module)
    return modules


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(clock, function, *args, **kwargs) -> float:
    start = clock()
    function(*args, **kwargs)
    return clock() - start


def compare(name: str, reference, ours, args: tuple, kwargs: dict, repeats: int,
            clock) -> None:
    """Print median and minimum times of both sides, their ratios and the largest difference."""
    expected, got = reference(*args, **kwargs), ours(*args, **kwargs)
    if isinstance(expected, dict):
        expected, got = expected["vision_features"], got["vision_features"]
    diff = (expected - got).abs().max().item()
    times = {"sam2": [], "ours": []}
    for _ in range(repeats):
        times["sam2"].append(timed(clock, reference, *args, **kwargs))
        times["ours"].append(timed(clock, ours, *args, **kwargs))
    med = {side: statistics.median(t) for side, t in times.items()}
    low = {side: min(t) for side, t in times.items()}
    print(f"{name:34s} {med['sam2']:8.3f} {med['ours']:8.3f} {med['sam2'] / med['ours']:6.2f} "
          f"{low['sam2'] / low['ours']:9.2f}   {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=7, help="memory planes")
    parser.add_argument("--pointers", type=int, default=16, help="object pointers (4 tokens each)")
    parser.add_argument("--grid", type=int, default=64, help="feature grid side")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="do not flush denormal floats to zero")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(not args.keep_denormals)

    ref_attention, ref_encoder = reference_modules()
    attention, encoder = MemoryAttention().eval(), MemoryEncoder().eval()
    attention.load_state_dict(ref_attention.state_dict(), strict=True)
    encoder.load_state_dict(ref_encoder.state_dict(), strict=True)

    g = torch.Generator().manual_seed(1)
    n, tokens = args.grid**2, 4 * args.pointers
    print(f"{'':34s} {'sam2 s':>8s} {'ours s':>8s} {'ratio':>6s} {'min ratio':>9s}   max |diff|")
    with torch.inference_mode():
        for batch in (1, 2):
            m = args.frames * n + tokens
            inputs = (torch.randn(n, batch, 256, generator=g), torch.randn(m, batch, 64, generator=g),
                      torch.randn(n, batch, 256, generator=g), torch.randn(m, batch, 64, generator=g))
            compare(f"memory attention B={batch} ({args.frames}x{n}+{tokens})", ref_attention,
                    attention, inputs, {"num_obj_ptr_tokens": tokens}, args.repeats, clock)
        for batch in (1, 2):
            inputs = (torch.randn(batch, 256, args.grid, args.grid, generator=g),
                      torch.randn(batch, 1, 16 * args.grid, 16 * args.grid, generator=g))
            compare(f"memory encoder B={batch}", ref_encoder, encoder, inputs, {}, args.repeats,
                    clock)


if __name__ == "__main__":
    main()
