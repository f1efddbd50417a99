"""Automatic modes (AMG, AIS, APG): napari-sam against micro-sam 1.8.14 in one run, same weights.

    python benchmarks/automatic.py [--images 3] [--decoder FILE] [--quick]

Rows: our AMG with the grid sampler and ``nuclei_s``'s automatic thresholds, our AMG with the
model's defaults (boxes sampler), our AIS, our AIS with its outlines as the decoder draws them
(``Segmenter(snap=False)``: not moved to the objects' blurred edges), our APG, micro-sam's
``AutomaticMaskGenerator`` and micro-sam's ``InstanceSegmentationWithDecoder``.
Both sides run the shipped ``nuclei_s`` weights (micro-sam's side: Meta's ``SamPredictor`` on the
references' ``nuclei_s``, MobileSAM's TinyViT in Meta's classes, as in ``tests/reference.py``)
and the same instance decoder (micro-sam's side: torch-em's UNETR wrapped in micro-sam's
``DecoderAdapter``, as its ``get_decoder`` does, at the decoder's own width, loaded from our
decoder's state dict, which has micro-sam's layout). Both sides get the same 8-bit RGB planes
(``to_rgb_uint8``); micro-sam rescales each tile to 0-255 itself, as it always does.

Columns:

- time on one 1024 x 1024 synthetic image (a held-out seed, nuclei at the scale ``nuclei_s`` was
  trained on), embedding included, and its ratio to our AMG grid. Same pixels on both sides:
  micro-sam does not resample, so ours runs with ``diameter=None``; micro-sam's tiled classes
  run with ``tile_shape=192, halo=32`` (tiles of at most 256 px, the model input): 6 x 6 = 36
  tiles; ours with its default tiles (256 px, halo 32): 5 x 5 = 25 tiles, because a tile on the
  plane's border needs no halo beyond it (``tile_layout``). Each tile gets at least 32 px of
  context wherever the plane has any, on both sides.
- F1 at IoU 0.5 (``napari_sam.training.evaluation.instance_f1``) on that 1024 image, pooled over
  the held-out synthetic sets of ``benchmarks/default_model.py`` (``--images`` 256 x 256 images
  each) and on the real DSB 2018 image (``benchmarks/real_nuclei.py``, 512 x 512). On the 256 px
  images and the DSB image ours takes the one path with ``diameter="auto"`` (what every entry
  point does); micro-sam runs at the image's own pixels (one 256 px input; the DSB image tiled
  as above).

micro-sam's AMG runs with ``with_background=False`` (its default drops the largest object, which
``nuclei_s``, trained to reject background, does not need) and our AMG's thresholds
(``pred_iou_thresh`` 0.5, ``stability_score_thresh`` 0.8, 32 x 32 points per tile); its label
image is its own ``generate()`` output (masks painted largest first, then split into connected
components: a mask partly painted over becomes several objects). Its 1024 px
run takes about a quarter of an hour on 2 cores: ``--micro-amg-size`` times it on a centre crop
instead, and our AMG grid on the same crop, so that the ratio stays a measurement.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from default_model import HELD_OUT
from real_nuclei import dsb_nuclei
from reference import reference_nuclei_s, segment_anything

from napari_sam import Segmenter, load_decoder, load_model
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.models.registry import MODELS
from napari_sam.synthetic import synthetic_dataset
from napari_sam.training.evaluation import instance_f1

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from micro_sam import instance_segmentation as micro_sam_is
    from micro_sam import util as micro_sam_util

TIMING_SEED = 20_999  # "like training (other seeds)"; not an image of the 256 px sets
MICRO_TILE, MICRO_HALO = 192, 32  # micro-sam's tile_shape and halo: tiles of 256 px at most
THRESHOLDS = {k: v for k, v in MODELS["nuclei_s"].automatic.items() if k != "sampler"}


# -- the two sides -------------------------------------------------------------------------------

def load(decoder_file: str | None):
    """Our nuclei_s and decoder, and the same weights in the references' classes."""
    model = load_model("nuclei_s", device="cpu")
    decoder = load_decoder(model, decoder_file) if decoder_file else load_decoder(model)
    reference = reference_nuclei_s()
    reference.load_state_dict(model.state_dict())
    reference.eval()  # MobileSAM caches TinyViT's attention biases in eval(): load first
    state = {k: v.float() for k, v in decoder.state_dict().items()}
    return model, decoder, reference, micro_sam_decoder(reference.image_encoder, state)


def micro_sam_decoder(encoder, state):
    """micro-sam's ``get_decoder`` for a decoder of any width: its ``get_unetr`` builds torch-em's
    UNETR at the default width (64 initial features) only; ``nuclei_s``'s decoder has 16."""
    from torch_em.model import UNETR

    unetr = UNETR(backbone="sam", encoder=encoder, out_channels=3, use_sam_stats=True,
                  final_activation="Sigmoid", use_skip_connection=False, resize_input=True,
                  use_conv_transpose=any(".block." in k for k in state if k.startswith("decoder.samplers")),
                  initial_features=state["out_conv.weight"].shape[1])
    missing = unetr.load_state_dict(state, strict=False).missing_keys
    assert all(k.startswith("encoder") for k in missing), missing
    return micro_sam_is.DecoderAdapter(unetr)


def micro_sam_predictor(reference):
    predictor = segment_anything.SamPredictor(reference)
    predictor.model_type = predictor.model_name = "nuclei_s"  # what micro-sam's loader records
    return predictor


def micro_sam_embeddings(predictor, rgb, tiles: dict):
    """micro-sam's embeddings of one RGB plane (``ndim=2``: by default micro-sam takes an
    (H, W, 3) array for a stack of 3D data)."""
    return micro_sam_util.precompute_image_embeddings(predictor, rgb, ndim=2, verbose=False, **tiles)


def tiling(rgb: np.ndarray, model) -> dict:
    """micro-sam's tiled classes where the image is larger than the model input."""
    if max(rgb.shape[:2]) <= model.img_size:
        return {}
    return {"tile_shape": (MICRO_TILE, MICRO_TILE), "halo": (MICRO_HALO, MICRO_HALO)}


# -- one function per row kind: (rgb, diameter) -> labels, the embedding included ---------------

def ours_amg(model, rgb, diameter, sampler: str | None = None) -> np.ndarray:
    segmenter = Segmenter(model, diameter=diameter)
    segmenter.set_image(rgb)
    settings = {} if sampler is None else dict(sampler=sampler, **THRESHOLDS)
    return segmenter.segment_all("amg", **settings)


def ours_decoder_mode(model, decoder, rgb, diameter, mode: str, snap: bool = True) -> np.ndarray:
    segmenter = Segmenter(model, diameter=diameter, decoder=decoder, snap=snap)
    segmenter.set_image(rgb)
    return segmenter.segment_all(mode)


def micro_sam_amg(reference, rgb) -> np.ndarray:
    tiles = tiling(rgb, reference.image_encoder)
    cls = micro_sam_is.TiledAutomaticMaskGenerator if tiles else micro_sam_is.AutomaticMaskGenerator
    predictor = micro_sam_predictor(reference)
    generator = cls(predictor, points_per_side=32)
    generator.initialize(rgb, micro_sam_embeddings(predictor, rgb, tiles), **tiles)
    labels = generator.generate(**THRESHOLDS, with_background=False)
    return np.asarray(labels)


def micro_sam_ais(reference, their_decoder, rgb) -> np.ndarray:
    tiles = tiling(rgb, reference.image_encoder)
    cls = (micro_sam_is.TiledInstanceSegmentationWithDecoder if tiles
           else micro_sam_is.InstanceSegmentationWithDecoder)
    predictor = micro_sam_predictor(reference)
    generator = cls(predictor, their_decoder)
    generator.initialize(rgb, micro_sam_embeddings(predictor, rgb, tiles), **tiles)
    return np.asarray(generator.generate())


def rows(model, decoder, reference, their_decoder) -> dict:
    """Row name -> function(rgb, ours_diameter) -> labels."""
    found = {
        "ours AMG grid": lambda rgb, d: ours_amg(model, rgb, d, sampler="grid"),
        "ours AMG boxes (the model's AMG settings)": lambda rgb, d: ours_amg(model, rgb, d),
        "ours AIS": lambda rgb, d: ours_decoder_mode(model, decoder, rgb, d, "ais"),
        "ours AIS, outlines as drawn": lambda rgb, d: ours_decoder_mode(model, decoder, rgb, d,
                                                                        "ais", snap=False),
        "ours APG": lambda rgb, d: ours_decoder_mode(model, decoder, rgb, d, "apg"),
        "micro-sam AMG": lambda rgb, d: micro_sam_amg(reference, rgb),
        "micro-sam AIS": lambda rgb, d: micro_sam_ais(reference, their_decoder, rgb),
    }
    return found


def describe(decoder_file: str | None) -> str:
    """The decoder file, with the training step of a checkpoint that has a decoder.json beside it."""
    if not decoder_file:
        return "nuclei_s's shipped decoder"
    info = Path(decoder_file).with_name("decoder.json")
    if info.exists():
        import json

        validation = json.loads(info.read_text()).get("validation", {})
        return (f"{decoder_file} (step {validation.get('step')}, validation F1 "
                f"{validation.get('f1', float('nan')):.3f})")
    return decoder_file


# -- measuring ----------------------------------------------------------------------------------

def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def pooled_f1(counts: list[dict]) -> float:
    matched = sum(c["matched"] for c in counts)
    return 2 * matched / max(sum(c["predicted"] + c["true"] for c in counts), 1)


def centre_crop(image, labels, size):
    r0, c0 = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[r0:r0 + size, c0:c0 + size], labels[r0:r0 + size, c0:c0 + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="256 x 256 images per held-out set")
    parser.add_argument("--decoder", help="instance decoder file (default: nuclei_s's shipped one)")
    parser.add_argument("--size", type=int, default=1024, help="side of the timing image")
    parser.add_argument("--micro-amg-size", type=int,
                        help="time micro-sam's AMG (and ours, for the ratio) on a centre crop of "
                             "this side instead of the whole timing image")
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "napari-sam" / "dsb2018")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's); 1 when another job uses a core")
    parser.add_argument("--rows", nargs="+", help="only the rows whose names start with these")
    parser.add_argument("--quick", action="store_true",
                        help="a fast check: 1 image per set, a 512 px timing image, micro-sam's "
                             "AMG timed on a 256 px crop")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size = 1, 512
        args.micro_amg_size = args.micro_amg_size or 256
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/automatic.py " + shlex.join(sys.argv[1:])

    model, decoder, reference, their_decoder = load(args.decoder)
    kinds = rows(model, decoder, reference, their_decoder)
    if args.rows:
        kinds = {n: f for n, f in kinds.items()
                 if n == "ours AMG grid" or any(n.startswith(r) for r in args.rows)}
    big = next(iter(synthetic_dataset(1, (args.size, args.size), seed=TIMING_SEED)))
    big = to_rgb_uint8(big[0]), big[1]
    sets = {name: [(to_rgb_uint8(i), l) for i, l in synthetic_dataset(args.images, (256, 256), **o)]
            for name, o in HELD_OUT.items()}
    dsb_image, dsb_labels = dsb_nuclei(args.data)
    dsb = to_rgb_uint8(dsb_image), dsb_labels
    print(f"{torch.get_num_threads()} threads; decoder: {describe(args.decoder)}; "
          f"timing image {args.size} px, {big[1].max()} nuclei; {args.images} x 256 px per set",
          flush=True)

    results, per_set = {}, {}
    crop = None
    if args.micro_amg_size and args.micro_amg_size < args.size and "micro-sam AMG" in kinds:
        crop = centre_crop(*big, args.micro_amg_size)
    for name, run in kinds.items():
        labels, seconds = (None, None) if (crop is not None and name == "micro-sam AMG") \
            else timed(run, big[0], None)
        f1_big = instance_f1(labels, big[1])["f1"] if labels is not None else None
        crop_seconds = None
        if crop is not None and name in ("ours AMG grid", "micro-sam AMG"):
            _, crop_seconds = timed(run, crop[0], None)
        counts = {s: [instance_f1(run(i, "auto"), l) for i, l in pairs] for s, pairs in sets.items()}
        per_set[name] = {s: pooled_f1(c) for s, c in counts.items()}
        f1_dsb = instance_f1(run(dsb[0], "auto"), dsb[1])["f1"]
        results[name] = {"seconds": seconds, "crop_seconds": crop_seconds, "f1_big": f1_big,
                         "f1_sets": pooled_f1([c for cs in counts.values() for c in cs]),
                         "f1_dsb": f1_dsb}
        print(f"  {name}: {results[name]}", flush=True)

    base = results["ours AMG grid"]
    print(f"\n`{command}`\n")
    print(f"| method | time {args.size}² | vs ours AMG grid | F1 {args.size}² "
          f"| F1 held-out 256² (4 sets x {args.images}) | F1 DSB |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        if r["seconds"] is None:  # micro-sam's AMG timed on the crop only
            ratio = base["crop_seconds"] / r["crop_seconds"]
            time_cell = f"({r['crop_seconds']:.1f} s on {args.micro_amg_size}²)"
            big_cell = "-"
        else:
            ratio = base["seconds"] / r["seconds"]
            time_cell, big_cell = f"{r['seconds']:.1f} s", f"{r['f1_big']:.3f}"
        print(f"| {name} | {time_cell} | {ratio:.2f}x | {big_cell} | {r['f1_sets']:.3f} "
              f"| {r['f1_dsb']:.3f} |")
    if crop is not None:
        print(f"\nmicro-sam's AMG timed on a {args.micro_amg_size}² centre crop; its ratio is to "
              f"ours AMG grid on the same crop ({base['crop_seconds']:.1f} s).")
    print("\nF1 per held-out set:\n")
    print("| method | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    for name, f1 in per_set.items():
        print(f"| {name} | " + " | ".join(f"{f1[s]:.3f}" for s in sets) + " |")


if __name__ == "__main__":
    main()
