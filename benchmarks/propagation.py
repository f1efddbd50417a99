"""SAM 2.1 propagation through z: napari-sam's PlaneTracker against Meta's ``sam2`` video predictor.

One run, the same random weights on both sides (hiera_tiny), synthetic planes of
``--size`` x ``--size`` pixels (1024: the model's real input, so no resizing on either side):

1. Encoder per plane: sam2's ``forward_image`` against our ``Sam2.encode_image`` on the same
   normalised planes (each of the ``--planes`` planes once per side, alternately; medians).
2. Propagation per plane without the encoder: every plane's features precomputed for both
   sides (sam2's ``_get_image_feature`` patched to return them, ours through ``features_for``);
   ``--objects`` objects prompted on plane 0 (a point, then boxes), then one forward
   propagation over the ``--planes`` planes, timed plane by plane with the two propagations
   advanced alternately so that machine noise hits both alike; ``--repeats`` runs, medians.
   Per plane = the whole propagation (the prompts' memory encoding included) / planes.
   Module times (memory attention and its parts, decoder, memory encoder) come from forward
   hooks on both models during the same runs.
3. Per plane total = encoder median + propagation per plane.
4. Memory: peak RSS growth (``VmHWM`` reset through ``/proc/self/clear_refs``, else an RSS
   sampling thread) of one forward propagation of 1 object over ``--memory-planes`` planes,
   each case in a fresh subprocess, at ``--memory-size`` (512 by default: at 1024 the memory
   attention alone takes 10+ s per plane here), features generated per plane (random tensors
   of the encoder's output shapes by default, ``--memory-features encoder`` to encode synthetic
   planes instead) and not kept by the benchmark, so the growth is what each side keeps. The
   baseline is the RSS after the model is built and a 3-plane warm-up propagation has run.

Both sides follow every object to the last plane (``end_after=None``) and fill no holes: sam2
fills holes only with its CUDA extension, which is absent on a CPU-only install (it warns and
skips), so ours runs with ``fill_hole_area=0`` too; the cost of our hole filling at 8 px (the
default) is timed separately on the masks of the run. Each side runs as shipped: ours flushes
denormals while it computes (``flush_denormals``), sam2 does not; ``--ftz`` flushes them on both.

    python benchmarks/propagation.py [--planes 8] [--objects 1 2] [--size 1024] [--repeats 1]
        [--threads 2] [--memory-planes 16 64] [--memory-size 512] [--memory-sides ours sam2]
        [--memory-features synthetic] [--no-memory | --only-memory] [--profile] [--ftz]

``--profile`` only profiles our propagation of 1 object (torch.profiler operators and module
times per plane). Needs ``sam2`` (Meta's reference package) with ``hydra`` / ``omegaconf``, and
Linux (``/proc`` is read). Ratios are sam2 time / our time: above 1, ours is faster.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # sam2's propagation progress bar

import numpy as np
import torch

from napari_sam.engine.tracking import PlaneTracker, fill_holes
from napari_sam.models.sam2.model import PlaneFeatures

# The same random weights on both sides as in the parity tests (tests/sam2_reference.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sam2_reference import reference_model

# sam2 normalises 0-1 images with these (ours: the same in 0-255 units).
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
#: Submodules timed by forward hooks, under the same names on both sides.
MODULES = {
    "memory attention": "memory_attention",
    "  self-attention": "memory_attention.layers.*.self_attn",
    "  cross-attention": "memory_attention.layers.*.cross_attn_image",
    "  MLP": "memory_attention.layers.*.linear1|memory_attention.layers.*.linear2",
    "prompt encoder + mask decoder": "sam_prompt_encoder|sam_mask_decoder",
    "memory encoder": "memory_encoder",
}


# -- models and inputs ---------------------------------------------------------------------------

def synthetic_planes(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``(n, size, size)`` uint8: two bright blobs changing size through z, on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    planes = np.empty((n, size, size), np.uint8)
    for z in range(n):
        im = 200.0 * (((yy - 0.33) ** 2 + (xx - 0.33) ** 2) < (0.12 - 0.005 * abs(z - n / 2)) ** 2)
        im += 150.0 * (((yy - 0.66) ** 2 + (xx - 0.7) ** 2) < (0.08 + 0.004 * z) ** 2)
        im += rng.normal(0, 10, (size, size))
        planes[z] = np.clip(im, 0, 255)
    return planes


def normalise(planes: np.ndarray) -> torch.Tensor:
    """uint8 grey planes to sam2's normalised ``(n, 3, S, S)`` float input."""
    x = torch.from_numpy(planes).float().div(255)[:, None].expand(-1, 3, -1, -1)
    return ((x - MEAN) / STD).contiguous()


def prompts(n_objects: int, size: int) -> list[dict]:
    """Prompts on plane 0: a point on the first blob, then boxes; ``(row, col)`` pixels."""
    s = size
    out = [{"points": [[0.33 * s, 0.33 * s]]}]
    boxes = [[0.58 * s, 0.62 * s, 0.74 * s, 0.78 * s], [0.20 * s, 0.20 * s, 0.46 * s, 0.46 * s],
             [0.05 * s, 0.60 * s, 0.25 * s, 0.90 * s]]
    out += [{"box": b} for b in boxes[: n_objects - 1]]
    if n_objects > len(out):
        raise ValueError(f"at most {len(out)} objects")
    return out


def add_prompts_sam2(ref, state, n_objects: int, size: int) -> None:
    for obj_id, prompt in enumerate(prompts(n_objects, size), start=1):
        if "points" in prompt:
            (r, c), = prompt["points"]
            ref.add_new_points_or_box(state, frame_idx=0, obj_id=obj_id, points=[[c, r]],
                                      labels=[1])
        else:
            r0, c0, r1, c1 = prompt["box"]
            ref.add_new_points_or_box(state, frame_idx=0, obj_id=obj_id, box=[c0, r0, c1, r1])


def add_prompts_ours(tracker, n_objects: int, size: int) -> None:
    for obj_id, prompt in enumerate(prompts(n_objects, size), start=1):
        tracker.add_prompt(0, obj_id, **prompt)


def patch_sam2_features(ref, features_of) -> None:
    """Make sam2 read frame features from ``features_of(frame) -> (image, backbone_out)``
    instead of running its encoder (its own cache lookup and expansion still run)."""
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    def get_feature(inference_state, frame_idx, batch_size):
        inference_state["cached_features"] = {frame_idx: features_of(frame_idx)}
        return SAM2VideoPredictor._get_image_feature(ref, inference_state, frame_idx, batch_size)

    ref._get_image_feature = get_feature


def feed_sam2_frames(frames_of) -> None:
    """sam2 loads its "video" from ``frames_of()`` -> ``(n, 3, S, S)`` normalised frames."""
    import sam2.sam2_video_predictor as svp

    def load_video_frames(**kwargs):
        frames = frames_of()
        return frames, frames.shape[-2], frames.shape[-1]

    svp.load_video_frames = load_video_frames


# -- timing --------------------------------------------------------------------------------------

class ModuleTimer:
    """Wall time spent in chosen submodules, by forward pre/post hooks."""

    def __init__(self, model: torch.nn.Module, groups: dict[str, str]) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.enabled = False
        self._handles = []
        for label, patterns in groups.items():
            for pattern in patterns.split("|"):
                for name, module in model.named_modules():
                    if _match(name, pattern):
                        self._hook(module, label)

    def _hook(self, module, label: str) -> None:
        starts = []

        def pre(_module, _args):
            starts.append(time.perf_counter())

        def post(_module, _args, _out):
            start = starts.pop()
            if self.enabled:
                self.totals[label] += time.perf_counter() - start

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _match(name: str, pattern: str) -> bool:
    parts, want = name.split("."), pattern.split(".")
    return len(parts) == len(want) and all(w in ("*", p) for p, w in zip(parts, want))


def median(values) -> float:
    return statistics.median(values)


def time_encoders(ref, ours, frames: torch.Tensor):
    """Encode every plane on both sides, alternately; the per-plane times and the features."""
    times = {"sam2": [], "ours": []}
    ref_features, our_features = [], []
    diffs = []
    for i in range(len(frames)):
        x = frames[i : i + 1]
        for side in (("sam2", "ours") if i % 2 == 0 else ("ours", "sam2")):
            with torch.inference_mode():
                start = time.perf_counter()
                if side == "sam2":
                    out = ref.forward_image(x)
                else:
                    feats = ours.encode_image(x)
                times[side].append(time.perf_counter() - start)
        ref_features.append((x, out))
        our_features.append(feats)
        diffs.append((out["backbone_fpn"][2] - feats.features).abs().max().item())
        print(f"  plane {i}: encoder sam2 {times['sam2'][-1]:6.2f} s, ours {times['ours'][-1]:6.2f} s",
              flush=True)
    return times, ref_features, our_features, max(diffs)


def time_propagation(ref, ours, ref_features, our_features, frames, n_objects: int,
                     timers) -> dict:
    """One forward propagation from plane 0 on each side, advanced plane by plane alternately."""
    n, size = len(frames), frames.shape[-1]
    feed_sam2_frames(lambda: frames)
    patch_sam2_features(ref, lambda f: ref_features[f])
    with torch.inference_mode():
        state = ref.init_state("unused")
        add_prompts_sam2(ref, state, n_objects, size)
    tracker = PlaneTracker(ours, n_planes=n, plane_shape=(size, size),
                           features_for=lambda p: our_features[p], fill_hole_area=0, end_after=None)
    add_prompts_ours(tracker, n_objects, size)
    generators = {"sam2": ref.propagate_in_video(state), "ours": tracker.propagate()}
    times = {"sam2": [], "ours": []}
    agreement, logits = [], []
    for timer in timers.values():
        timer.enabled = True
    for i in range(n):
        results = {}
        for side in (("sam2", "ours") if i % 2 == 0 else ("ours", "sam2")):
            start = time.perf_counter()
            if side == "sam2":
                _, _, masks = next(generators[side])
                results[side] = masks[:, 0].numpy()
            else:
                plane = next(generators[side])
                results[side] = plane.logits
            times[side].append(time.perf_counter() - start)
        agreement.append(((results["sam2"] > 0) == (results["ours"] > 0)).mean())
        logits.append(torch.from_numpy(np.ascontiguousarray(results["ours"][:, None])))
    for timer in timers.values():
        timer.enabled = False
    for gen in generators.values():
        gen.close()
    # Our hole filling at the default 8 px, timed on the low-resolution masks it would fill.
    lows = [out.logits for obj in tracker._objects.values() for out in obj.tracked.values()]
    hole_times = []
    for low in lows:
        start = time.perf_counter()
        fill_holes(low, 8)
        hole_times.append(time.perf_counter() - start)
    return {"times": times, "agreement": min(agreement),
            "holes_per_plane": sum(hole_times) / max(n - 1, 1)}


# -- memory (one case per subprocess) --------------------------------------------------------------

def _status(field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of ``/proc/self/status``, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakRSS:
    """Peak resident memory from now on: the kernel's ``VmHWM`` after resetting it, or a
    sampling thread (every 2 ms) where ``/proc/self/clear_refs`` is not writable."""

    def __enter__(self):
        self.base = _status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.thread = None
        except OSError:
            self.peak, self.stop = self.base, threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, _status("VmRSS"))
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.thread is None:
            self.peak = _status("VmHWM")
        else:
            self.stop.set()
            self.thread.join()
        self.kept = _status("VmRSS")


def memory_child(side: str, n_planes: int, size: int, features: str) -> None:
    """Print the RSS growth of one propagation of 1 object over ``n_planes`` (JSON)."""
    ref, ours = reference_model(size)
    planes = synthetic_planes(4, size, seed=1)  # cycled: content does not change memory
    x = normalise(planes)
    with torch.inference_mode():
        pos = ref.forward_image(x[:1])["vision_pos_enc"]  # sam2's (constant) position maps

    def backbone(plane: int) -> dict:
        """Random features of the encoder's shapes for a plane, made when asked, not kept."""
        g = torch.Generator().manual_seed(plane)
        s = size // 16
        fpn = [torch.randn(1, 32, 4 * s, 4 * s, generator=g),
               torch.randn(1, 64, 2 * s, 2 * s, generator=g),
               torch.randn(1, 256, s, s, generator=g)]
        return {"backbone_fpn": fpn, "vision_pos_enc": list(pos)}

    if side == "sam2":
        n_frames = [3]
        feed_sam2_frames(lambda: normalise(synthetic_planes(n_frames[0], size, seed=2)))

        def run(n):
            n_frames[0] = n
            with torch.inference_mode():
                state = ref.init_state("unused")
                add_prompts_sam2(ref, state, 1, size)
                for _ in ref.propagate_in_video(state):
                    pass
            return state
    else:
        def features_for(plane):
            if features == "synthetic":
                fpn = backbone(plane)["backbone_fpn"]
                return PlaneFeatures(fpn[2], tuple(fpn[:2]))
            with torch.inference_mode():
                return ours.encode_image(x[plane % len(x)][None])

        def run(n):
            tracker = PlaneTracker(ours, n_planes=n, plane_shape=(size, size),
                                   features_for=features_for, fill_hole_area=0, end_after=None)
            add_prompts_ours(tracker, 1, size)
            for _ in tracker.propagate():
                pass
            return tracker

    if side == "sam2" and features == "synthetic":
        # _get_image_feature expands the image; with synthetic features there is none.
        from sam2.sam2_video_predictor import SAM2VideoPredictor

        original = SAM2VideoPredictor._get_image_feature

        def get_feature(inference_state, frame_idx, batch_size):
            inference_state["cached_features"] = {
                frame_idx: (inference_state["images"][frame_idx][None], backbone(frame_idx))}
            return original(ref, inference_state, frame_idx, batch_size)

        ref._get_image_feature = get_feature

    kept = run(3)  # warm-up: allocator pools, thread pools, cached tables
    del kept
    gc.collect()
    start = time.perf_counter()
    with PeakRSS() as rss:
        kept = run(n_planes)  # alive until the RSS is read on leaving the block
    elapsed = time.perf_counter() - start
    del kept
    print(json.dumps({"side": side, "planes": n_planes, "size": size, "base": rss.base,
                      "peak_growth": rss.peak - rss.base, "kept_growth": rss.kept - rss.base,
                      "seconds": elapsed}))


def measure_memory(args) -> list[dict]:
    results = []
    for n in args.memory_planes:
        for side in args.memory_sides:
            cmd = [sys.executable, __file__, "--memory-child", side, str(n),
                   "--memory-size", str(args.memory_size), "--threads", str(args.threads),
                   "--memory-features", args.memory_features] + (["--ftz"] if args.ftz else [])
            # Large blocks mmapped, so that freed memory leaves the RSS (glibc would otherwise
            # keep the warm-up's freed blocks and hide the run's working memory).
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                raise RuntimeError(f"memory case {side} {n} failed")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {side} {n} planes: peak growth {result['peak_growth'] / 2**20:7.1f} MB, kept "
                  f"{result['kept_growth'] / 2**20:7.1f} MB ({result['seconds']:.0f} s)", flush=True)
            results.append(result)
    return results


def profile_ours(ours, our_features, size: int, rows: int = 14) -> None:
    """torch.profiler over our propagation of 1 object (features precomputed): the operators
    taking the most time, per plane."""
    from torch.profiler import ProfilerActivity, profile

    n = len(our_features)
    tracker = PlaneTracker(ours, n_planes=n, plane_shape=(size, size),
                           features_for=lambda p: our_features[p], fill_hole_area=0, end_after=None)
    add_prompts_ours(tracker, 1, size)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in tracker.propagate():
            pass
    elapsed = time.perf_counter() - start
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\nOur propagation of 1 object over {n} planes under torch.profiler: {elapsed / n:.2f} s "
          "per plane (wall); operators by self time, per plane:\n")
    print("| operator | calls per plane | s per plane | share |\n|---|---|---|---|")
    for e in events[:rows]:
        print(f"| {e.key} | {e.count / n:.0f} | {e.self_cpu_time_total / 1e6 / n:.2f} | "
              f"{e.self_cpu_time_total / total:.0%} |")


# -- report --------------------------------------------------------------------------------------

def memory_table(args, memory: list[dict]) -> list[str]:
    by = {(m["side"], m["planes"]): m for m in memory}
    lo, hi = min(args.memory_planes), max(args.memory_planes)

    def mb(side, n, key):
        return f"{by[side, n][key] / 2**20:.1f} MB" if (side, n) in by else "-"

    def growth(side):
        if (side, hi) not in by or (side, lo) not in by:
            return "-"
        return f"{by[side, hi]['peak_growth'] / max(by[side, lo]['peak_growth'], 1):.2f}"

    lines = ["", (f"Memory, 1 object, {args.memory_size} x {args.memory_size} planes "
                  f"({args.memory_features} features): RSS growth over the model and a warm-up"),
             "", "| planes | sam2 peak | ours peak | sam2 kept | ours kept |",
             "|---|---|---|---|---|"]
    for n in args.memory_planes:
        lines.append(f"| {n} | {mb('sam2', n, 'peak_growth')} | {mb('ours', n, 'peak_growth')} "
                     f"| {mb('sam2', n, 'kept_growth')} | {mb('ours', n, 'kept_growth')} |")
    lines.append(f"| {hi} / {lo} (peak) | {growth('sam2')} | {growth('ours')} (target <= 1.10) "
                 "| | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=1024, help="plane side = model input")
    parser.add_argument("--repeats", type=int, default=1, help="propagation runs per object count")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-planes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--memory-size", type=int, default=512)
    parser.add_argument("--memory-features", choices=("synthetic", "encoder"), default="synthetic")
    parser.add_argument("--memory-sides", nargs="+", choices=("ours", "sam2"),
                        default=["ours", "sam2"])
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--only-memory", action="store_true", help="only the memory measurement")
    parser.add_argument("--profile", action="store_true",
                        help="only profile our propagation of 1 object (torch.profiler)")
    parser.add_argument("--ftz", action="store_true", help="flush denormals on both sides")
    parser.add_argument("--memory-child", nargs=2, metavar=("SIDE", "PLANES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
    if args.ftz:
        torch.set_flush_denormal(True)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.memory_size,
                     args.memory_features)
        return

    print(f"torch {torch.__version__}, {args.threads} threads, hiera_tiny at {args.size} px, "
          f"{args.planes} planes", flush=True)
    if args.only_memory:
        print(f"4. memory ({args.memory_size} px, {args.memory_features} features, 1 object)",
              flush=True)
        print("\n".join(memory_table(args, measure_memory(args))))
        return
    ref, ours = reference_model(args.size)
    frames = normalise(synthetic_planes(args.planes, args.size))
    if args.profile:
        with torch.inference_mode():
            our_features = [ours.encode_image(frames[i : i + 1]) for i in range(args.planes)]
        timer = ModuleTimer(ours, MODULES)
        timer.enabled = True
        profile_ours(ours, our_features, args.size)
        print("\nModules (forward hooks, s per plane): " + ", ".join(
            f"{name.strip()} {t / args.planes:.2f}" for name, t in timer.totals.items()))
        return

    print("1. encoder", flush=True)
    enc_times, ref_features, our_features, enc_diff = time_encoders(ref, ours, frames)
    enc = {side: median(t) for side, t in enc_times.items()}

    print("2. propagation (features precomputed)", flush=True)
    timers = {"sam2": ModuleTimer(ref, MODULES), "ours": ModuleTimer(ours, MODULES)}
    prop, per_plane_log, agreement, holes = {}, {}, {}, {}
    for k in args.objects:
        runs = {"sam2": [], "ours": []}
        for timer in timers.values():
            timer.totals.clear()
        for r in range(args.repeats):
            result = time_propagation(ref, ours, ref_features, our_features, frames, k, timers)
            for side, times in runs.items():
                times.append(sum(result["times"][side]) / args.planes)
            per_plane_log[k] = result["times"]
            agreement[k] = min(agreement.get(k, 1.0), result["agreement"])
            holes[k] = result["holes_per_plane"]
            print(f"  {k} object(s), run {r + 1}: per plane sam2 {runs['sam2'][-1]:.2f} s, ours "
                  f"{runs['ours'][-1]:.2f} s; planes sam2 "
                  + " ".join(f"{t:.1f}" for t in result["times"]["sam2"]) + " | ours "
                  + " ".join(f"{t:.1f}" for t in result["times"]["ours"]), flush=True)
        prop[k] = {side: median(v) for side, v in runs.items()}
        prop[k]["modules"] = {side: {name: t / (args.repeats * args.planes)
                                     for name, t in timers[side].totals.items()}
                              for side in runs}

    memory = [] if args.no_memory else None
    if not args.no_memory:
        print(f"4. memory ({args.memory_size} px, {args.memory_features} features, 1 object)",
              flush=True)
        memory = measure_memory(args)

    # -- tables
    def row(label, a, b, target=""):
        return f"| {label} | {a:.2f} s | {b:.2f} s | {a / b:.2f}x | {target} |"

    lines = ["", (f"hiera_tiny, {args.size} x {args.size} planes, {args.threads} threads, "
                  f"{args.planes} planes, {args.repeats} run(s); ratio = sam2 / ours "
                  "(> 1: ours faster)"),
             "", "| per plane | sam2 | ours | ratio | target |", "|---|---|---|---|---|",
             row(f"encoder (median of {args.planes} planes)", enc["sam2"], enc["ours"])]
    for k in args.objects:
        lines.append(row(f"propagation, {k} object{'s' if k > 1 else ''}, no encoder",
                         prop[k]["sam2"], prop[k]["ours"]))
    for k in args.objects:
        lines.append(row(f"**total, {k} object{'s' if k > 1 else ''}** (encoder + propagation)",
                         enc["sam2"] + prop[k]["sam2"], enc["ours"] + prop[k]["ours"], ">= 1.5x"))
    if memory:
        lines += memory_table(args, memory)
    for k in args.objects:
        mods = prop[k]["modules"]
        lines += ["", (f"Where the propagation time goes, {k} object{'s' if k > 1 else ''} "
                       "(seconds per plane, forward hooks):"), "",
                  "| module | sam2 | ours | ratio |", "|---|---|---|---|"]
        for name in MODULES:
            a, b = mods["sam2"].get(name, 0.0), mods["ours"].get(name, 0.0)
            lines.append(f"| {name} | {a:.2f} | {b:.2f} | {a / b if b else float('nan'):.2f}x |")
        rest = {s: prop[k][s] - sum(v for n, v in mods[s].items() if not n.startswith("  "))
                for s in ("sam2", "ours")}
        lines.append(f"| rest (interpolation, resizing to the plane, Python) | {rest['sam2']:.2f} | "
                     f"{rest['ours']:.2f} | |")
        lines.append(f"| (not in the run) our hole filling at 8 px | - | {holes[k]:.3f} | |")
    lines += ["", f"Checks: encoder features max |diff| {enc_diff:.1e}; masks agree on at least "
              + ", ".join(f"{agreement[k]:.4%} ({k} obj.)" for k in args.objects)
              + " of pixels on every plane"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
