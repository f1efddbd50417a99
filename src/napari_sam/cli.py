"""The ``napari-sam`` command: SAM on microscopy images without napari."""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from napari_sam import image_files
from napari_sam.engine.amg import SAMPLERS
from napari_sam.models.registry import MODELS, MODES
from napari_sam.volume.labels_output import FORMATS


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    User errors (bad files, settings, devices, missing optional packages) are one line on
    stderr and exit status 2; Ctrl-C says what was kept and exits with 130. Programming errors
    keep their traceback.
    """
    parser = _parser()
    args = parser.parse_args(_negative_values(sys.argv[1:] if argv is None else argv))
    started = time.time()
    try:
        if getattr(args, "device", None) is not None:
            _check_device(args.device)
        return args.run(args)
    except KeyboardInterrupt:
        kept = getattr(args, "kept", _kept_nothing)  # what a command keeps when interrupted
        print(f"napari-sam: interrupted: {kept(args, started)}", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        if error.name is None or error.name.partition(".")[0] == "napari_sam":
            raise
        package = {"PIL": "Pillow"}.get(error.name, error.name.partition(".")[0])
        print(f"napari-sam: error: this needs the package {package!r}, which is not installed: "
              f"pip install {package}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, IndexError) as error:  # OSError: files
        print(f"napari-sam: error: {error}", file=sys.stderr)
        return 2


def _negative_values(argv: list[str]) -> list[str]:
    """Join an option and a value that starts with a minus sign: ``--point -5,10`` becomes
    ``--point=-5,10``, which argparse would otherwise take for an unknown option."""
    joined: list[str] = []
    for token in argv:
        previous = joined[-1] if joined else ""
        if (re.fullmatch(r"-\.?\d.*", token) and previous.startswith("-") and "=" not in previous
                and previous != "--"):
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


def _check_device(device: str) -> None:
    """Refuse a device this machine does not have, naming the ones it has."""
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    available = ["auto", "cpu"]
    if cuda:
        available += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if mps:
        available.append("mps")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if device == "auto" or parsed is not None and (
        parsed.type == "cpu"
        or parsed.type == "cuda" and cuda and (parsed.index or 0) < torch.cuda.device_count()
        or parsed.type == "mps" and mps
    ):
        return
    why = " (this PyTorch was built without CUDA)" if (
        parsed is not None and parsed.type == "cuda" and torch.version.cuda is None) else ""
    raise ValueError(f"device {device!r} is not available here{why}: use one of "
                     f"{', '.join(available)}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-sam", description="Segment Anything for microscopy images."
    )
    commands = parser.add_subparsers(title="commands", required=True)

    segment = commands.add_parser(
        "segment",
        help="segment one object in a 2D image from point and box prompts",
        description="Segment one object in a 2D image and write its mask. Coordinates are "
        "(row, col) pixels, as napari and numpy show them.",
    )
    segment.add_argument("image", type=Path, help="2D image: .tif, .png, .jpg or .npy")
    segment.add_argument("--point", action="append", default=[], metavar="ROW,COL", type=_floats(2),
                         help="a point on the object (repeatable)")
    segment.add_argument("--negative", action="append", default=[], metavar="ROW,COL", type=_floats(2),
                         help="a point off the object (repeatable)")
    segment.add_argument("--box", metavar="MINROW,MINCOL,MAXROW,MAXCOL", type=_floats(4),
                         help="a box around the object")
    _model_options(segment)
    _scale_options(segment)
    segment.add_argument("-o", "--output", type=Path, required=True,
                         help="mask file: .tif/.npy (0/1) or .png (0/255)")
    _overwrite_option(segment)
    segment.set_defaults(run=_segment)

    auto = commands.add_parser(
        "auto",
        help="segment everything in a 2D image into a label image",
        description="Automatic segmentation, tiled, at the objects' scale, written as a uint32 "
        "label image: SAM's automatic mask generator (prompts all over the image, the good and "
        "distinct masks kept), or a model's instance decoder (AIS) and prompts from it (APG).",
    )
    auto.add_argument("image", type=Path, help="2D image: .tif, .png, .jpg or .npy")
    _model_options(auto)
    _scale_options(auto)
    auto.add_argument("-o", "--output", type=Path, required=True, help="label image (.tif or .npy)")
    _overwrite_option(auto)
    _mode_option(auto)
    auto.add_argument("--sampler", choices=SAMPLERS,
                      help="grid: Meta's point grid; boxes: one box per detected object; adaptive: "
                      "a coarse grid, then clicks only where nothing is segmented yet (default: "
                      "what suits the model)")
    auto.add_argument("--points-per-side", type=int)
    auto.add_argument("--pred-iou-thresh", type=float,
                      help="keep masks with a higher predicted IoU (default: what suits the model)")
    auto.add_argument("--stability-score-thresh", type=float,
                      help="keep masks at least this stable (default: what suits the model)")
    auto.add_argument("--crop-n-layers", type=int, help="also segment overlapping crops")
    auto.add_argument("--min-mask-region-area", type=int,
                      help="fill holes and drop islands smaller than this many pixels")
    auto.set_defaults(run=_auto)

    embed = commands.add_parser(
        "embed",
        help="compute the embeddings of a stack into a cache folder, ahead of time",
        description="Embed every plane (tile by tile) of a volume into an embedding cache, so "
        "that segment-stack and the napari plugin compute nothing again.",
    )
    embed.add_argument("source", help="zarr store, OME-zarr, tiff/OME-tiff or .npy volume")
    embed.add_argument("--cache", type=Path, required=True, help="embedding cache (a zarr group)")
    _stack_options(embed)
    embed.set_defaults(run=_embed, kept=_kept_embeddings)

    stack = commands.add_parser(
        "segment-stack",
        help="segment every plane of a volume automatically into OME-Zarr labels",
        description="Automatic segmentation of every plane (tiled if large), written plane by "
        "plane into uint32 OME-Zarr labels (or a zarr array); a killed run continues with "
        "--resume. The planes' objects are then assembled into 3D objects: one id through z, "
        "out-of-focus light and pieces in too few planes dropped. The labels of an OME-Zarr "
        "image go into its labels group by default, with its levels.",
    )
    stack.add_argument("source", help="zarr store, OME-zarr, tiff/OME-tiff or .npy volume")
    stack.add_argument("output", type=Path, nargs="?",
                       help="where to write the labels (default for an OME-Zarr image: its "
                       "labels/napari-sam)")
    _format_option(stack)
    stack.add_argument("--predicted-iou", action="store_true",
                       help="with --format ome-zarr: give each object SAM's predicted IoU "
                       "(one decoder pass per object and plane: slower)")
    _stack_options(stack)
    stack.add_argument("--cache", type=Path, help="embedding cache to reuse and fill")
    stack.add_argument("--resume", action="store_true", help="continue an earlier run into OUTPUT")
    stack.add_argument("--no-link", action="store_true",
                       help="keep the planes' objects apart (no 3D assembly)")
    stack.add_argument("--voxel-size", type=_floats(3), metavar="Z,Y,X",
                       help="voxel size, when the file's metadata lacks it or is wrong (µm)")
    stack.add_argument("--min-planes", type=int, metavar="N",
                       help="fewest planes a 3D object spans (default: from the voxel size and "
                       "the object diameter)")
    parallel = stack.add_mutually_exclusive_group()
    parallel.add_argument("--workers", type=int, help="segment planes in N local processes (dask)")
    parallel.add_argument("--scheduler", help="address of a dask.distributed scheduler")
    _mode_option(stack, ("propagate",), shipped="apg", more=". propagate: segment "
                 "--key-planes with "
                 "--key-model, then follow their objects through z with the SAM 2.1 --model "
                 "(one id per object through z, no linking)")
    stack.add_argument("--key-planes", type=_ints, metavar="Z,Z,...",
                       help="with --mode propagate: planes to segment (default: 4 spread "
                       "through the stack)")
    stack.add_argument("--key-model", choices=list(MODELS),
                       help="with --mode propagate: the model that segments the key planes "
                       "(default: the shipped one)")
    stack.add_argument("--sampler", choices=SAMPLERS, help="default: what suits the model")
    stack.add_argument("--points-per-side", type=int)
    stack.add_argument("--pred-iou-thresh", type=float)
    stack.add_argument("--stability-score-thresh", type=float)
    stack.set_defaults(run=_segment_stack, kept=_kept_planes)

    track = commands.add_parser(
        "propagate",
        help="follow seeded objects through a stack with SAM 2.1's memory into 3D labels",
        description="Objects given on some planes (a labels plane, a label volume with some "
        "planes drawn, or points) are followed up and down through the stack by SAM 2.1, each "
        "with its memory of the planes before, until it ends. The labels are written plane by "
        "plane into uint32 OME-Zarr labels (or a zarr array), with the seeds' ids.",
    )
    track.add_argument("source", help="zarr store, OME-zarr, tiff/OME-tiff or .npy volume")
    track.add_argument("seeds", help="labels (.tif, .npy, zarr) of one plane (with --plane) or "
                       "of the volume, or points (.csv: napari's axis-0,axis-1,axis-2 or z,y,x, "
                       "optional id column)")
    track.add_argument("-o", "--output", type=Path,
                       help="where to write the labels (default for an OME-Zarr image: its "
                       "labels/napari-sam)")
    _format_option(track)
    _model_options(track)
    track.add_argument("--axes", help="axes of the volume, e.g. zyx (default: guessed)")
    track.add_argument("--plane", type=int, help="the plane of a one-plane labels seed")
    track.add_argument("--cache", type=Path, help="embedding cache to reuse and fill")
    track.add_argument("--follow-absent", action="store_true",
                       help="follow every object to the end of the stack, even where the model "
                       "says it has ended (SAM 2's video behaviour; slower)")
    _overwrite_option(track)
    track.set_defaults(run=_propagate, kept=_kept_tracked)

    sample = commands.add_parser("sample", help="write a synthetic fluorescence nuclei image or stack")
    sample.add_argument("output", type=Path,
                        help="output file: .tif or .npy (uint16), or .png (16-bit grey) for one image")
    sample.add_argument("--size", type=int, help="side in pixels (default 512, or 256 for a stack)")
    sample.add_argument("--3d", dest="planes", nargs="?", type=_planes, const=16, metavar="PLANES",
                        help="a z-stack of PLANES planes (16 by default) instead of one image, "
                        f"its planes {SAMPLE_Z_STEP:g} pixels apart (a tiff says so)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--labels", type=Path, help="also write the true labels here (.tif or .npy)")
    _overwrite_option(sample)
    sample.set_defaults(run=_sample)

    fit = commands.add_parser(
        "train",
        help="fine-tune a model on labelled images",
        description="Fine-tune SAM with prompts simulated from label images. Pairs of image and "
        "label files (.tif, .npy, zarr; 2D or 3D) are given as IMAGE:LABELS.",
    )
    fit.add_argument("pairs", nargs="+", metavar="IMAGE:LABELS", type=_pair,
                     help="an image file and its label file, separated by a colon")
    _model_options(fit)
    fit.add_argument("-o", "--output", type=Path, required=True,
                     help="folder for model.pt (official layout), model.json, training_state.pt")
    fit.add_argument("--steps", type=int, default=500)
    fit.add_argument("--lr", type=float, default=1e-4)
    fit.add_argument("--images-per-step", type=int, default=4)
    fit.add_argument("--objects-per-image", type=int, default=8)
    fit.add_argument("--train-encoder", action="store_true",
                     help="also train the image encoder (frozen by default)")
    fit.add_argument("--background-clicks", type=int, default=0, metavar="N",
                     help="N clicks on background per single-click image, trained to score low, "
                     "so that automatic segmentation drops grid points on background (default 0)")
    fit.add_argument("--loss-resolution", choices=("low", "full"), default="low",
                     help="compare masks with the labels at the decoder's resolution (cheap) or "
                     "at the model's input size (sharper outlines of small objects; default low)")
    fit.add_argument("--resume", action="store_true", help="continue from OUTPUT/training_state.pt")
    fit.add_argument("--overwrite", action="store_true",
                     help="start afresh even if OUTPUT holds a model.pt, replacing it")
    fit.add_argument("--validation", type=int, default=8, metavar="N",
                     help="held-out crops for validation mIoU (default 8)")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(run=_train, kept=_kept_checkpoint)

    models = commands.add_parser("models", help="list the models napari-sam knows")
    models.set_defaults(run=_models)
    return parser


def _format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, dest="output_format",
                        help="ome-zarr: an OME-Zarr label image with levels and each object's "
                        "area and plane (default); zarr: a plain zarr array")


def _overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (never an input)")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=list(MODELS), help="model name (official weights "
                        "are downloaded once into the cache)")
    parser.add_argument("--checkpoint", type=Path, help="local checkpoint file")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")


def _mode_option(parser: argparse.ArgumentParser, extra: tuple[str, ...] = (), *,
                 shipped: str = "ais", more: str = "") -> None:
    """``--mode``; ``shipped`` is what the shipped model does by default there."""
    parser.add_argument(
        "--mode", choices=MODES + extra,
        help="amg: prompts sampled over the image and SAM's decoder (the options below); ais: "
        "the model's instance decoder, one pass; apg: prompts from the instance decoder's maps "
        "(ais and apg need a model with an instance decoder). Default: amg when an option "
        f"below is given, else the model's own (nuclei_s: {shipped}){more}")


def _amg_options(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The automatic mask generator's options given on the command line (refused with another
    mode, which would ignore them)."""
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if options and args.mode not in (None, "amg"):
        flags = ", ".join("--" + name.replace("_", "-") for name in options)
        raise ValueError(f"{flags}: options of --mode amg, not of --mode {args.mode}; leave them "
                         "out, or pass --mode amg")
    return options


def _scale_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--diameter", type=_diameter, default="auto", metavar="PX|auto|native",
                        help="typical object diameter in pixels; planes are resampled so that "
                        "objects arrive at the size the model works best at. auto (default): "
                        "estimated from the image (once per volume); native: keep the pixels")
    parser.add_argument("--tile", type=int, help="tile (resampled) planes larger than this many "
                        "pixels (default: the model's input size)")
    parser.add_argument("--halo", type=int, help="context around each tile in pixels "
                        "(default: an eighth of the tile)")


def _diameter(text: str) -> float | str | None:
    if text in ("auto", "native"):
        return None if text == "native" else text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a positive number of pixels, auto or native, got {text!r}")
    return value


def _stack_options(parser: argparse.ArgumentParser) -> None:
    _model_options(parser)
    parser.add_argument("--axes", help="axes of the volume, e.g. zyx or zcyx (default: guessed)")
    parser.add_argument("--z", type=_range, metavar="START:STOP", help="planes to process")
    _scale_options(parser)


def _planes(text: str) -> int:
    """``sample --3d``'s number of planes; a file name there was meant as the output."""
    try:
        planes = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of planes, got {text!r}; to write the stack to {text!r}, name "
            f"the file first: napari-sam sample {text} --3d") from None
    if planes < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 plane, got {planes}")
    return planes


def _range(text: str) -> slice:
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            return slice(int(text), int(text) + 1)
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP plane numbers, got {text!r}") from None


def _progress(description: str):
    """A tqdm progress bar as a ``progress(done, total)`` callback."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=done, desc=description, unit="plane")
        else:
            bar.update(done - bar.n)
        if done == total:
            bar.close()

    return update


def _embed(args: argparse.Namespace) -> int:
    from napari_sam.volume.stack import embed_stack

    start = time.perf_counter()
    computed, reused, scale = embed_stack(
        args.source, args.cache, model=args.model, checkpoint=args.checkpoint, device=args.device,
        axes=args.axes, z=args.z, diameter=args.diameter, tile=args.tile, halo=args.halo,
        progress=_progress("embed"),
    )
    print(f"{args.cache}: {computed} tiles embedded, {reused} already there; {scale} "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


def _output_labels(args: argparse.Namespace) -> None:
    """Resolve ``--format`` (OME-Zarr by default) and the labels' path: an OME-Zarr image's
    own labels group when none is given."""
    from napari_sam.volume.io import open_volume
    from napari_sam.volume.labels_output import default_output

    args.output_format = args.output_format or "ome-zarr"
    if args.output is None and args.output_format == "ome-zarr":
        args.output = default_output(open_volume(args.source, axes=args.axes))
    elif args.output is None:
        raise ValueError("--format zarr: give the OUTPUT array to write")


def _segment_stack(args: argparse.Namespace) -> int:
    from napari_sam.volume.stack import segment_stack

    if args.mode == "propagate":
        return _segment_and_track(args)
    _output_labels(args)
    if args.key_planes is not None or args.key_model is not None:
        raise ValueError("--key-planes, --key-model: options of --mode propagate")
    options = _amg_options(args, ("sampler", "points_per_side", "pred_iou_thresh",
                                  "stability_score_thresh"))
    summary = segment_stack(
        args.source, args.output, model=args.model, checkpoint=args.checkpoint, device=args.device,
        axes=args.axes, z=args.z, diameter=args.diameter, tile=args.tile, halo=args.halo,
        cache=args.cache, resume=args.resume, link=not args.no_link, voxel_size=args.voxel_size,
        min_planes=args.min_planes, workers=args.workers, scheduler=args.scheduler,
        progress=_progress("segment"), mode=args.mode, output_format=args.output_format,
        predicted_iou=args.predicted_iou, **options,
    )
    linked = f", {summary.objects_3d} objects in 3D" if summary.linked else ""
    print(f"{args.output}: {summary.segmented} planes segmented, {summary.skipped} already done, "
          f"{summary.objects} objects in them{linked}; {summary.scale}; {summary.method} "
          f"({summary.seconds:.0f} s)")
    return 0


def _segment_and_track(args: argparse.Namespace) -> int:
    from napari_sam.volume.tracking import segment_and_track

    unused = [flag for flag, value in (
        ("--resume", args.resume), ("--no-link", args.no_link), ("--workers", args.workers),
        ("--scheduler", args.scheduler), ("--voxel-size", args.voxel_size),
        ("--min-planes", args.min_planes), ("--z", args.z), ("--sampler", args.sampler),
        ("--points-per-side", args.points_per_side), ("--pred-iou-thresh", args.pred_iou_thresh),
        ("--stability-score-thresh", args.stability_score_thresh),
        ("--predicted-iou", args.predicted_iou)) if value]
    if unused:
        raise ValueError(f"{', '.join(unused)}: not options of --mode propagate; leave them out")
    _output_labels(args)
    summary = segment_and_track(
        args.source, args.output, model=args.model, checkpoint=args.checkpoint,
        device=args.device, axes=args.axes, key_planes=args.key_planes, key_model=args.key_model,
        cache=args.cache, output_format=args.output_format, progress=_progress("key planes"))
    print(f"{args.output}: {summary.objects} objects found on the key planes and followed "
          f"through {summary.planes} planes ({summary.seconds:.0f} s)")
    return 0


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected plane numbers like 5,20,35, got {text!r}") from None


def _propagate(args: argparse.Namespace) -> int:
    from napari_sam.volume.tracking import track_stack

    _output_labels(args)
    summary = track_stack(
        args.source, args.seeds, args.output, model=args.model, checkpoint=args.checkpoint,
        device=args.device, axes=args.axes, plane=args.plane, cache=args.cache,
        overwrite=args.overwrite, end_after=None if args.follow_absent else 2,
        output_format=args.output_format, progress=_progress("propagate"))
    print(f"{args.output}: {summary.objects} objects followed through {summary.planes} planes "
          f"({summary.seconds:.0f} s)")
    return 0


def _floats(count: int):
    def parse(text: str) -> tuple[float, ...]:
        parts = text.split(",")
        try:
            values = tuple(float(part) for part in parts)
        except ValueError:
            values = ()
        if len(values) != count or not all(math.isfinite(value) for value in values):
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
        return values

    return parse


def _segmenter(args: argparse.Namespace, **automatic):
    """The one path (:class:`~napari_sam.Segmenter`) with the command line's settings."""
    from napari_sam import Segmenter, load_model

    return Segmenter(load_model(args.model, args.checkpoint, args.device), diameter=args.diameter,
                     tile=args.tile, halo=args.halo, automatic=automatic)


def _segment(args: argparse.Namespace) -> int:
    if not (args.point or args.negative or args.box):
        raise ValueError("give at least one prompt: --point ROW,COL, --negative ROW,COL or --box")
    image_files.check_output(args.output, image_files.MASK_FORMATS, what="the mask",
                             inputs=(args.image, args.checkpoint), overwrite=args.overwrite)
    image = image_files.read_image(args.image)
    start = time.perf_counter()
    segmenter = _segmenter(args)
    segmenter.set_image(image)
    points = args.point + args.negative
    masks, scores, _ = segmenter.predict(
        points=points or None,
        labels=[1] * len(args.point) + [0] * len(args.negative) if points else None,
        box=args.box,
        multimask=len(points) == 1 and args.box is None,  # one click is ambiguous
    )
    best = int(np.argmax(scores))
    image_files.write_mask(args.output, masks[best])
    print(
        f"{args.output}: {int(masks[best].sum())} pixels, predicted IoU {scores[best]:.3f}; "
        f"{segmenter.describe_scale()} ({time.perf_counter() - start:.1f} s)"
    )
    return 0


def _auto(args: argparse.Namespace) -> int:
    image_files.check_output(args.output, image_files.LABEL_FORMATS, what="the labels",
                             inputs=(args.image, args.checkpoint), overwrite=args.overwrite)
    image = image_files.read_image(args.image)
    start = time.perf_counter()
    segmenter_options = _amg_options(args, (
        "pred_iou_thresh", "stability_score_thresh", "sampler", "points_per_side",
        "crop_n_layers", "min_mask_region_area"))
    segmenter = _segmenter(args, **segmenter_options)
    segmenter.set_image(image)
    labels = segmenter.segment_all(mode=args.mode or ("amg" if segmenter_options else None))
    image_files.write_array(args.output, labels)
    print(f"{args.output}: {labels.max()} objects; {segmenter.describe_scale()} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def _pair(text: str) -> tuple[Path, Path]:
    image, sep, labels = text.rpartition(":")
    if not sep or not image or not labels:
        raise argparse.ArgumentTypeError(f"expected IMAGE:LABELS, got {text!r}")
    return Path(image), Path(labels)


#: What ``train`` writes into its output folder.
TRAINING_FILES = ("model.pt", "model.json", "training_state.pt")


def _check_training_output(args: argparse.Namespace) -> None:
    """Refuse to replace an earlier model or an input with the files ``train`` writes."""
    folder = args.output
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"{str(folder)!r} is a file: -o takes a folder for {', '.join(TRAINING_FILES)}")
    # With --resume the run continues from its own model.pt, which may also be the checkpoint.
    inputs = [path for pair in args.pairs for path in pair]
    if not args.resume and args.checkpoint is not None:
        inputs.append(args.checkpoint)
    for name in TRAINING_FILES:
        for source in inputs:
            if image_files.same_file(folder / name, source):
                raise ValueError(
                    f"{str(source)!r} is an input of this command and would be replaced by the "
                    f"{name} it writes: choose another output folder (or --resume the run that "
                    "wrote it)"
                )
    if (folder / "model.pt").exists() and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"{str(folder / 'model.pt')!r} exists (an earlier fine-tuned model): pass --resume to "
            "continue its training, --overwrite to replace it, or choose another folder"
        )


def _train(args: argparse.Namespace) -> int:
    from napari_sam import load_model
    from napari_sam.training.data import LabelledSlices
    from napari_sam.training.recipes import Recipe
    from napari_sam.training.trainer import train

    _check_training_output(args)
    model = load_model(args.model, args.checkpoint, args.device)
    data = LabelledSlices(args.pairs, crop_size=model.img_size)
    validation = data.held_out(args.validation, seed=args.seed + 1) if args.validation else None
    start = time.perf_counter()
    recipe = Recipe(lr=args.lr, images_per_step=args.images_per_step,
                    objects_per_image=args.objects_per_image, train_encoder=args.train_encoder,
                    background_clicks=args.background_clicks,
                    loss_resolution=args.loss_resolution)
    history = train(
        model, data, recipe, steps=args.steps, output=args.output, resume=args.resume,
        seed=args.seed, validation=validation, device=args.device,
        metadata={"base": args.model or str(args.checkpoint), "data": data.summary()},
    )
    final = history.validation[-1] if history.validation else {}
    print(f"{args.output / 'model.pt'}: {args.steps} steps in {time.perf_counter() - start:.0f} s"
          + (f", validation point mIoU {final['point']:.3f}, box mIoU {final['box']:.3f}" if final else ""))
    return 0


# planes of the sample stack lie 2 pixels apart, as in the plugin's sample stack; a tiff
# says so, so that segment-stack knows the voxel size without --voxel-size
SAMPLE_Z_STEP = 2.0


def _sample(args: argparse.Namespace) -> int:
    from napari_sam.synthetic import synthetic_nuclei

    if args.planes is None:
        shape, formats = (args.size or 512,) * 2, image_files.IMAGE_FORMATS
    else:
        shape, formats = (args.planes, *(args.size or 256,) * 2), image_files.STACK_FORMATS
    image_files.check_output(args.output, formats, what="a uint16 image" if args.planes is None
                             else "a stack", overwrite=args.overwrite)
    if args.labels is not None:
        image_files.check_output(args.labels, image_files.LABEL_FORMATS, what="the labels",
                                 inputs=(args.output,), overwrite=args.overwrite)
    image, labels = synthetic_nuclei(shape, seed=args.seed, anisotropy=SAMPLE_Z_STEP)
    z_step = None if args.planes is None else SAMPLE_Z_STEP
    image_files.write_array(args.output, image, z_step=z_step)
    if args.labels is not None:
        image_files.write_array(args.labels, labels)
    step = ""
    if z_step is not None and args.output.suffix.lower() in (".tif", ".tiff"):
        step = f", z step {z_step:g} px in the file"
    elif z_step is not None:
        step = (f", z step {z_step:g} px (not in a {args.output.suffix} file: give "
                f"segment-stack --voxel-size {z_step:g},1,1)")
    print(f"{args.output}: {image.shape} {image.dtype}, {labels.max()} nuclei{step}")
    return 0


def _models(args: argparse.Namespace) -> int:
    width = max(map(len, MODELS))
    for spec in MODELS.values():
        print(f"{spec.name:{width}} {spec.description}")
    return 0


# --------------------------------------------------------------------------- #
# what an interrupted command leaves behind
# --------------------------------------------------------------------------- #
def _kept_nothing(args: argparse.Namespace, started: float) -> str:
    return "nothing was written"  # every file is written whole under a temporary name


def _kept_planes(args: argparse.Namespace, started: float) -> str:
    from napari_sam.volume.stack import RECORD

    if args.output is None:
        return "nothing was written"
    done = args.output / RECORD / "done"
    if not done.is_dir():
        return "nothing was written" if not args.output.exists() else (
            f"{str(args.output)!r} is incomplete: delete it and run the same command again")
    finished = sum(1 for marker in done.iterdir() if marker.name.isdigit())
    return (f"{finished} planes of {str(args.output)!r} are finished and kept; run the same "
            "command with --resume to continue")


def _kept_tracked(args: argparse.Namespace, started: float) -> str:
    if not args.output.exists() or args.output.stat().st_mtime < started:
        return "nothing was written"
    return (f"the planes finished so far are in {str(args.output)!r}; run the same command with "
            "--overwrite to propagate again")


def _kept_embeddings(args: argparse.Namespace, started: float) -> str:
    if not args.cache.exists():
        return "nothing was written"
    return (f"the tiles embedded so far are kept in {str(args.cache)!r}; run the same command "
            "again to embed the rest")


def _kept_checkpoint(args: argparse.Namespace, started: float) -> str:
    state = args.output / "training_state.pt"
    if not state.is_file() or state.stat().st_mtime < started:
        return "nothing was written"
    return (f"the last checkpoint is kept in {str(args.output)!r}; run the same command with "
            "--resume to continue")


if __name__ == "__main__":
    sys.exit(main())
