"""Automatic segmentation of a whole stack into a zarr label volume: resumable, tiled, linked in
3D, serial or on dask.

Every plane is segmented (tiled if large) and written into its own chunk of the output. In the
modes with an instance decoder ("ais", "apg"), where an object spans at least :data:`CONTEXT`
planes, a plane is labelled from its decoder maps averaged with those of the planes above and
below it: a nucleus seen in consecutive planes is then drawn alike in each, which the 3D
assembly needs (see :func:`context_planes`). A plane's labels still depend on nothing but the
source and the settings, whichever planes a run segments, in whatever order or process.

Plane ``p`` numbers its objects from ``p * stride + 1``, so ids are unique in the volume and do
not depend on the order in which planes finish. A plane counts as done only once a
marker file is written after its chunk, so a run killed at any moment resumes where it stopped
and loses no finished plane. The planes' objects (fragments) are also kept apart, in the run
record, and assembled from there into the 3D objects of the output
(:func:`napari_sam.volume.assembly.assemble_objects`): an assembly stopped at any moment is
made again whole by a resume, and planes added later are assembled with the others.

Everything that can be checked is checked before the output is created, and the output is
created whole (array and run record in a hidden sibling folder, then renamed into place), so a
failed or killed start leaves nothing behind. The run record identifies the source by content
and the model by its weights: a resume from other data or with other weights is refused.
Worker processes end with the process that started them.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.amg import AutomaticMaskGenerator
from napari_sam.engine.detection import noise_to_contrast
from napari_sam.engine.embeddings import EmbeddingStore, model_fingerprint
from napari_sam.engine.geometry import iou
from napari_sam.engine.scale import (
    check_diameter,
    enlargement_limited,
    estimate_diameter,
    object_diameters,
)
from napari_sam.engine.segmenter import AUTO, Segmenter
from napari_sam.models.loading import load_model
from napari_sam.models.registry import MODELS, automatic_mode
from napari_sam.volume.assembly import assemble_objects
from napari_sam.volume.io import (
    Volume,
    open_volume,
    open_zarr_array,
    plane_rgb,
    volume_limits,
)
from napari_sam.volume.labels_output import (
    check_format,
    create_volume_labels,
    default_output,
    object_properties,
)
from napari_sam.volume.ome_zarr import (
    level_paths,
    open_labels,
    read_image_pyramid,
    register_labels,
    write_levels,
    write_properties,
)

# Planes whose instance maps are averaged to label one plane, where objects span that many. On
# benchmarks/stack3d.py's StarDist stack (objects about 6 planes long), 3D F1@0.5 with AIS
# rose from 0.73 to 0.79 on average over five object scales (APG 0.83 -> 0.84); the synthetic
# stacks did not change. Wider windows (5 planes, or 1-2-1 weights) were no better.
CONTEXT = 3
RECORD = ".napari_sam"  # folder inside the output: run settings and one marker per plane
FRAGMENTS = "fragments"  # in RECORD: the planes' own labels (zarr), which assembly reads
OBJECTS = "objects"  # in RECORD of an OME-Zarr output: the assembled labels, before renumbering
SCORES = "scores"  # in RECORD of an OME-Zarr output: each plane's fragments' predicted IoUs


@dataclass(frozen=True)
class StackJob:
    """Everything a worker needs to segment one plane (picklable, for dask, unless ``loaded``)."""

    volume: Volume
    output: str
    model: str | None  # the registry name
    checkpoint: str | None
    device: str
    weights: str  # fingerprint of the model's weights
    source: str  # fingerprint of the volume (Volume.fingerprint)
    limits: list | None
    diameter: float | None
    estimated: bool  # the diameter is the volume's estimate (or None: too few objects)
    noise: float  # the planes' noise over contrast (volume_noise), 0 where it cannot matter
    tile: int | None
    halo: int | None
    cache: str | None
    stride: int
    mode: str = "amg"  # automatic mode (Segmenter.segment_all)
    context: int = 1  # planes whose instance maps label one plane (context_planes)
    output_format: str = "zarr"  # one of FORMATS
    predicted_iou: bool = False  # score each fragment (OME-Zarr output only)
    options: dict[str, Any] = field(default_factory=dict)
    loaded: Any = field(default=None, compare=False, repr=False)  # the model, in serial runs
    decoder: Any = field(default=None, compare=False, repr=False)  # "ais", "apg": read once

    def segmenter(self) -> Segmenter:
        """The one path (:class:`~napari_sam.Segmenter`) with this job's settings; the model
        is loaded once per process."""
        return self._segmenter(EmbeddingStore(self.cache) if self.cache else None)

    def check(self, plane: int) -> None:
        """Raise now what would otherwise fail on the first plane: the diameter for the model,
        the generator settings, tiles that do not fit the plane of index ``plane``, a cache
        that cannot be opened."""
        segmenter = self._segmenter(None)
        if self.mode == "amg":
            AutomaticMaskGenerator(segmenter.model, enlarge=False, **segmenter.automatic)
        segmenter.set_image(plane_rgb(self.volume, plane, self.limits))  # embeds nothing
        if self.cache:
            EmbeddingStore(self.cache)

    def _segmenter(self, store: EmbeddingStore | None) -> Segmenter:
        model = self.loaded
        if model is None:
            model = _loaded_model(self.model, self.checkpoint, self.device,
                                  _file_identity(self.checkpoint))
        return Segmenter(model, diameter=self.diameter, tile=self.tile, halo=self.halo,
                         store=store, automatic=self.options, estimated=self.estimated,
                         decoder=self.decoder, noise=self.noise)


@dataclass
class StackSummary:
    """What :func:`segment_stack` did."""

    planes: int
    segmented: int
    skipped: int
    objects: int  # 2D objects found in the planes segmented now
    seconds: float
    linked: bool  # the fragments were assembled into 3D objects
    objects_3d: int | None = None  # objects in the whole volume after assembly
    scale: str = ""  # the object diameter used, for a user (Segmenter.describe_scale)
    output: str = ""  # where the labels are
    method: str = ""  # the automatic mode and z context, for a user


def segment_stack(
    source,
    output: str | os.PathLike | None = None,
    *,
    model=None,
    checkpoint: str | os.PathLike | None = None,
    device: str = "auto",
    axes: str | None = None,
    z: slice | range | None = None,
    diameter: float | str | None = AUTO,
    tile: int | None = None,
    halo: int | None = None,
    cache: str | os.PathLike | None = None,
    resume: bool = False,
    link: bool = True,
    voxel_size=None,
    min_planes: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    mode: str | None = None,
    output_format: str = "ome-zarr",
    predicted_iou: bool = False,
    **amg_options,
) -> StackSummary:
    """Segment every plane of a stack automatically into an OME-Zarr label image (or a zarr
    array) of uint32 labels.

    Parameters
    ----------
    source : path, array or Volume
        Anything :func:`napari_sam.volume.open_volume` opens.
    output : path, optional
        Where to write the labels: same plane axes and plane size as ``source``, one chunk per
        plane. It must not exist unless ``resume`` is given, nor lie inside the source, but
        for the ``labels`` group of an OME-Zarr source. By default, for an OME-Zarr source,
        its labels ``napari-sam`` (:func:`default_output`).
    model : str or Sam, optional
        A registry name as in :func:`napari_sam.load_model`, or a model loaded already (serial
        runs only: workers load their own).
    checkpoint, device : str, optional
        As in :func:`napari_sam.load_model`; not with a loaded ``model``.
    axes : str, optional
        Axes of ``source`` when the guess is wrong.
    z : slice or range, optional
        Planes to segment along the plane axis (all by default); the others stay 0.
    diameter : float, "auto" or None
        Typical object diameter in pixels; ``"auto"`` estimates it once for the whole volume
        (:func:`volume_diameter`). See :class:`~napari_sam.Segmenter`.
    tile, halo : int, optional
        Tiles of the resampled planes and their context (default: the model's input size and
        an eighth of it).
    cache : path, optional
        An :class:`~napari_sam.engine.embeddings.EmbeddingStore` to reuse embeddings from; a
        folder of its own, apart from the source and the output.
    resume : bool
        Continue an output written before from the same source (by content) with the same
        model weights and settings, skipping finished planes.
    link : bool
        Assemble the planes' objects into 3D objects (z stacks only; see
        :func:`~napari_sam.volume.assembly.assemble_objects`): one id per object through z,
        out-of-focus light and pieces shorter than ``min_planes`` dropped.
    voxel_size : (z, y, x) floats, optional
        The voxel size, when the file's metadata lacks it or is wrong
        (:attr:`~napari_sam.volume.Volume.voxel_size`).
    min_planes : int, optional
        Fewest planes a 3D object spans; by default from the voxel size and the object
        diameter (:func:`~napari_sam.volume.assembly.assemble_objects`).
    workers : int, optional
        Segment planes in this many local processes with dask; they end if this process dies.
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler to run the planes on.
    progress : callable, optional
        ``progress(done, total)`` after each plane.
    mode : {"amg", "ais", "apg"}, optional
        Automatic mode (:meth:`~napari_sam.Segmenter.segment_all`); by default "amg" when
        generator settings are given, else the one that suits the model on a stack (its
        registry spec's ``stack_mode``: "apg" for ``nuclei_s``, whose planes segment alone
        with "ais"). "ais" and "apg" need a model with an instance decoder.
    output_format : {"ome-zarr", "zarr"}
        ``"ome-zarr"``: an OME-Zarr label image (NGFF 0.5; 0.4 when the source is 0.4), with
        the levels of an OME-Zarr source (without channels) or, for other sources, levels
        halving y and x down to about 512 pixels; object ids 1, 2, ... (in the order of the
        planes' ids), each object's area (voxels) and plane (its largest cross-section) in
        its ``image-label`` properties, and a colour per id. The labels are level 0
        (:func:`~napari_sam.volume.io.open_zarr_array` and
        :func:`~napari_sam.volume.open_volume` open it). ``"zarr"``: a plain zarr array.
    predicted_iou : bool
        With ``"ome-zarr"``: also give each object SAM's predicted IoU, the mean over its
        fragments (weighted by area) of the score of the fragment's box prompt
        (:func:`fragment_scores`). One decoder pass per fragment: it can double the time of
        a plane.
    **amg_options
        With ``mode="amg"``: settings of :class:`~napari_sam.AutomaticMaskGenerator`
        (``sampler``, ``points_per_side``, thresholds...) on top of those that suit the model.

    Returns
    -------
    StackSummary

    Raises
    ------
    FileExistsError
        ``output`` exists and ``resume`` is not given, or it does not fit this run (another
        source, other weights or settings).
    ValueError
        Bad axes, a plane range that selects no plane, bad settings, ``workers`` or
        ``scheduler``, a source that is not an image volume, or paths that overlap.

    No output is created when one of these is raised.
    """
    start = time.perf_counter()
    serial = _check_parallel(model, workers, scheduler)
    check_format(output_format)
    volume = source if isinstance(source, Volume) else open_volume(source, axes=axes)
    if voxel_size is not None:
        volume = replace(volume, voxel_size=voxel_size)
    if len(volume.planes) > 1:
        raise ValueError(
            f"segment_stack takes one plane axis (z), the volume has {volume.axes!r}: select a "
            "time point or channel first, e.g. open_volume(path).data[t]"
        )
    todo = _planes(volume, z)
    if output is None:
        if output_format != "ome-zarr":
            raise ValueError("give an output for a plain zarr array")
        output = default_output(volume)
    if predicted_iou and output_format != "ome-zarr":
        raise ValueError("predicted_iou is a property of OME-Zarr labels: leave it out, or "
                         "write output_format='ome-zarr'")
    check_paths(source=volume.path, output=output, cache=cache)
    job = _job(volume, output, model=model, checkpoint=checkpoint, device=device,
               diameter=diameter, tile=tile, halo=halo, cache=cache, mode=mode,
               options=amg_options, keep_model=serial, output_format=output_format,
               predicted_iou=predicted_iou)
    job.check(todo[0])
    record = _record(job)
    if Path(job.output).exists():
        _check_resumable(Path(job.output), record, resume)
    with _client(scheduler) as client:
        labels = _open_output(job, record)
        done = _done(job.output)
        remaining = [p for p in todo if p not in done]
        if progress is not None:
            progress(len(todo) - len(remaining), len(todo))
        objects = _run(job, remaining, workers, client, progress, len(todo) - len(remaining),
                       len(todo))
    linked = link and bool(volume.planes) and volume.n_planes > 1
    ome = job.output_format == "ome-zarr"
    objects_3d = None
    if linked:
        fragments = open_zarr_array(Path(job.output) / RECORD / FRAGMENTS)
        out = open_zarr_array(Path(job.output) / RECORD / OBJECTS, mode="r+") if ome else labels
        # the diameter of the objects as the planes drew them (the assembly measures it), not
        # the run's: on benchmarks/stack3d.py's StarDist stack the run's estimate (12.0 px)
        # gave 3D F1 0.786 where the fragments' own gave 0.849
        objects_3d = assemble_objects(fragments, volume, out=out, min_planes=min_planes).objects
    if ome:
        _finish_labels(job.output, Path(job.output) / RECORD / (OBJECTS if linked else FRAGMENTS))
    return StackSummary(planes=len(todo), segmented=len(remaining),
                        skipped=len(todo) - len(remaining), objects=objects,
                        seconds=time.perf_counter() - start, linked=linked, objects_3d=objects_3d,
                        scale=_describe_scale(job), output=job.output,
                        method=_describe_method(job))


def _finish_labels(output: str, found: Path) -> None:
    """Write the OME-Zarr labels from the run record's labels ``found``, ids numbered 1, 2, ...
    in their order there, each plane with its lower levels; then the objects' properties, with
    each object's predicted IoU: the mean of its fragments' scores weighted by the pixels they
    share with it. Everything is made from the record, so a resume makes it again whole.

    Small ids keep the labels' colours usable: napari without numba maps colours of ids up to
    2**16 only, and the planes' ids start at multiples of 2**32 / planes.
    """
    group = open_labels(output, mode="r+")
    level0 = group[level_paths(group)[0]]
    found = open_zarr_array(found)
    planes = tuple(found.shape[:-2])
    ids = np.unique(np.concatenate([np.unique(found[index]) for index in np.ndindex(planes)]))
    ids = ids[ids > 0]
    fragments = open_zarr_array(Path(output) / RECORD / FRAGMENTS)
    weighted, weights = np.zeros(ids.size + 1), np.zeros(ids.size + 1)
    for number, index in enumerate(np.ndindex(planes)):
        plane = np.asarray(found[index])
        labels = np.where(plane > 0, np.searchsorted(ids, plane) + 1, 0).astype(np.uint32)
        level0[index] = labels
        write_levels(group, index)
        scores = Path(output) / RECORD / SCORES / f"{number}.json"
        if scores.is_file():
            _add_scores(json.loads(scores.read_text()), np.asarray(fragments[index]), labels,
                        weighted, weights)
    properties = object_properties(level0)
    for entry in properties:
        value = entry["label-value"]
        if weights[value] > 0:
            entry["predicted_iou"] = round(weighted[value] / weights[value], 4)
    write_properties(group, properties)


def _add_scores(scores: dict, fragments: np.ndarray, labels: np.ndarray, weighted: np.ndarray,
                weights: np.ndarray) -> None:
    """Add each fragment's predicted IoU, times the pixels it shares with an object of
    ``labels``, to that object's ``weighted`` sum, and the pixels to its ``weights``."""
    ids = np.asarray(scores["ids"], np.uint64)
    if ids.size == 0:
        return
    both = (fragments > 0) & (labels > 0)
    pairs = (fragments[both].astype(np.uint64) << np.uint64(32)) | labels[both]
    pairs, shared = np.unique(pairs, return_counts=True)
    fragment, label = (pairs >> np.uint64(32)), (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
    position = np.searchsorted(ids, fragment).clip(0, ids.size - 1)
    known = ids[position] == fragment
    score = np.asarray(scores["predicted_iou"], float)
    np.add.at(weighted, label[known], shared[known] * score[position[known]])
    np.add.at(weights, label[known], shared[known])


def _job(volume: Volume, output, *, model, checkpoint, device, diameter, tile, halo, cache,
         options, keep_model: bool, mode: str | None = None,
         output_format: str = "zarr", predicted_iou: bool = False) -> StackJob:
    """The settings of a run over ``volume``: the model loaded (kept in the job when
    ``keep_model``), the source's limits, fingerprint and diameter resolved once."""
    loaded, checkpoint = _model(model, checkpoint, device)
    mode = automatic_mode(loaded, mode or ("amg" if options else None), stack=True)
    if mode != "amg" and options:
        raise ValueError(f"{', '.join(sorted(options))}: settings of mode 'amg', not of {mode!r}; "
                         "leave them out, or pass mode='amg'")
    # read once for every plane; a model without an instance decoder fails here, before output
    decoder = Segmenter(loaded).decoder if mode != "amg" else None
    sample = volume.sample()
    limits = volume_limits(volume, sample)
    spec = MODELS.get(getattr(loaded, "name", None) or "")
    estimated = isinstance(diameter, str) and diameter == AUTO
    if estimated:
        estimated = spec is not None and spec.diameter is not None
        diameter = volume_diameter(volume, limits) if estimated else None
    elif diameter is not None:
        diameter = check_diameter(diameter, volume.plane_shape)
    limited = spec is not None and enlargement_limited(diameter, spec.diameter,
                                                       spec.max_enlargement)
    context = context_planes(volume, diameter, mode)
    return StackJob(volume=volume, output=str(output), model=getattr(loaded, "name", None),
                    checkpoint=checkpoint,
                    device=device, weights=model_fingerprint(loaded),
                    source=volume.fingerprint(sample), limits=limits, diameter=diameter,
                    estimated=estimated, noise=volume_noise(volume, limits) if limited else 0.0,
                    tile=tile, halo=halo,
                    cache=None if cache is None else str(cache),
                    stride=2**32 // (volume.n_planes + 1), mode=mode, context=context,
                    decoder=decoder,
                    options=dict(options), output_format=output_format,
                    predicted_iou=predicted_iou,
                    loaded=loaded if keep_model else None)


def _model(model, checkpoint, device):
    """The loaded model of a run (``model`` itself when it is one) and the checkpoint path."""
    if model is None or isinstance(model, str):
        checkpoint = None if checkpoint is None else str(checkpoint)
        return _loaded_model(model, checkpoint, device, _file_identity(checkpoint)), checkpoint
    if checkpoint is not None:
        raise ValueError("give a loaded model or a checkpoint, not both: the model given is "
                         "used as it is")
    return model, None


def _planes(volume: Volume, z: slice | range | None) -> list[int]:
    """The planes selected by ``z``; a range that selects none is refused."""
    planes = list(range(volume.n_planes))
    if z is None:
        return planes
    if isinstance(z, range):
        z = slice(z.start, z.stop, z.step)
    selected = planes[z]
    if not selected:
        bounds = (z.start, z.stop) if z.step in (None, 1) else (z.start, z.stop, z.step)
        raise ValueError(
            f"the plane range {':'.join('' if b is None else str(b) for b in bounds)} selects no "
            f"plane of the {volume.n_planes} planes (0 to {volume.n_planes - 1}) of "
            f"{volume.source}: give a range within them"
        )
    return selected


def _check_parallel(model, workers, scheduler) -> bool:
    """Refuse a bad ``workers`` or ``scheduler`` now; returns whether the run is serial."""
    whole = isinstance(workers, (int, np.integer)) and not isinstance(workers, bool)
    if workers is not None and not (whole and workers >= 1):
        raise ValueError(f"workers must be a number of processes, 1 or more, not {workers!r} "
                         "(leave it out to segment in this process)")
    if workers is not None and scheduler is not None:
        raise ValueError("give workers (local processes) or scheduler (a dask.distributed "
                         "cluster), not both")
    if scheduler is not None and importlib.util.find_spec("distributed") is None:
        raise ValueError(f"scheduler={scheduler!r} needs dask.distributed, which is not "
                         "installed: pip install distributed, or use workers instead")
    serial = workers is None and scheduler is None
    if not serial and not (model is None or isinstance(model, str)):
        raise ValueError("a loaded model runs in this process only: give the model's name "
                         "(and checkpoint) for workers or a scheduler, which load their own")
    return serial


def check_paths(*, source: str | None, output: str | os.PathLike | None,
                 cache: str | os.PathLike | None) -> None:
    """Refuse a cache that is, holds or lies in the source or the output, and an output that
    is, holds or lies in the source: each would write into the other. The ``labels`` group of
    an OME-Zarr source is where its labels belong: an output there is allowed."""
    def overlap(inner, outer) -> str | None:
        if inner is None or outer is None:
            return None
        a, b = Path(inner).expanduser().resolve(), Path(outer).expanduser().resolve()
        return ("the same path as" if a == b else "inside" if b in a.parents
                else "a folder holding" if a in b.parents else None)

    in_labels = (overlap(output, source) == "inside" and read_image_pyramid(source) is not None
                 and Path(source).expanduser().resolve() / "labels"
                 in Path(output).expanduser().resolve().parents)
    for what, path, other, name, fix in (
        ("the cache", cache, source, "the source", "a cache folder of its own"),
        ("the cache", cache, output, "the output", "a cache folder of its own"),
        ("the output", None if in_labels else output, source, "the source",
         "an output outside the source"),
    ):
        relation = overlap(path, other)
        if relation is not None:
            raise ValueError(f"{what} {str(path)!r} is {relation} {name} {str(other)!r}: it "
                             f"would write into it; choose {fix}")


def _describe_scale(job: StackJob) -> str:
    if job.diameter is None:
        if job.estimated:
            return ("object diameter not estimated (fewer than 3 objects found): planes kept at "
                    "their own pixels; give --diameter to be sure")
        return "planes kept at their own pixels"
    return f"object diameter {job.diameter:.1f} px ({'estimated' if job.estimated else 'given'})"


def _describe_method(job: StackJob) -> str:
    if job.context == 1:
        return f"mode {job.mode}"
    return f"mode {job.mode}, each plane with its neighbours' maps (z context)"


def volume_diameter(volume: Volume, limits=None, *, max_planes: int = 3) -> float | None:
    """One object-diameter estimate for a whole volume (see
    :func:`~napari_sam.engine.scale.estimate_diameter`), from the objects of a few planes
    spread through it (the centres of ``max_planes`` equal parts), normalised with the volume's
    ``limits``. None when fewer than three objects are found.
    """
    found = [object_diameters(plane_rgb(volume, int(i), limits))
             for i in volume.sample_planes(max_planes)]
    return estimate_diameter(np.concatenate(found))


def volume_noise(volume: Volume, limits=None, *, max_planes: int = 3) -> float:
    """The pixel noise over the objects' contrast of a whole volume
    (:func:`~napari_sam.engine.detection.noise_to_contrast`): the median over the planes
    :func:`volume_diameter` measures, so that every plane is enlarged alike."""
    return float(np.median([noise_to_contrast(plane_rgb(volume, int(i), limits))
                            for i in volume.sample_planes(max_planes)]))


def context_planes(volume: Volume, diameter: float | None, mode: str) -> int:
    """How many planes' instance maps label one plane of ``volume``: :data:`CONTEXT` in the
    modes with an instance decoder ("ais", "apg") when the voxel size is known and an object of
    ``diameter`` pixels spans at least that many planes
    (:func:`~napari_sam.volume.assembly.expected_planes`), else 1 (each plane alone): where the
    planes lie farther apart than that, the planes beside an object hold other objects or
    none. The voxel size is trusted: planes farther apart than it says are blurred through z."""
    anisotropy = volume.anisotropy
    if mode == "amg" or anisotropy is None or diameter is None:
        return 1
    return CONTEXT if diameter / anisotropy >= CONTEXT else 1


def segment_planes(job: StackJob, planes: list[int],
                   finished: Callable[[int], object] | None = None) -> list[int]:
    """Segment the planes ``planes`` of ``job`` (ascending) into their chunks of the output,
    each marked done once written.

    With a :attr:`StackJob.context` of 3, each plane is labelled from its instance maps
    averaged with those of the planes beside it (the one above and below that exist, segmented
    by this run or not), so its labels do not depend on which planes a run takes. Consecutive
    planes share their embeddings: memory holds the planes of one window.

    Parameters
    ----------
    job : StackJob
    planes : list of int
    finished : callable, optional
        ``finished(count)`` after each plane, with the number of objects found in it.

    Returns
    -------
    list of int
        The number of objects found in each plane.
    """
    reach = job.context // 2
    last = job.volume.n_planes - 1 if job.volume.planes else 0
    window: dict[int, tuple[Segmenter, np.ndarray | None]] = {}
    counts = []
    for plane in planes:
        near = range(max(plane - reach, 0), min(plane + reach, last) + 1)
        window = {p: window[p] if p in window else _embedded(job, p, reach > 0) for p in near}
        segmenter = window[plane][0]
        maps = np.mean([window[p][1] for p in near], axis=0) if reach else None
        counts.append(_write_plane(job, plane, segmenter,
                                   segmenter.segment_all(mode=job.mode, maps=maps)))
        if finished is not None:
            finished(counts[-1])
    return counts


def _embedded(job: StackJob, plane: int, maps: bool) -> tuple[Segmenter, np.ndarray | None]:
    """The one path set to plane ``plane`` of ``job``, and with ``maps`` its instance maps."""
    segmenter = job.segmenter()
    segmenter.set_image(plane_rgb(job.volume, plane, job.limits))
    return segmenter, segmenter.instance_maps() if maps else None


def _write_plane(job: StackJob, plane: int, segmenter: Segmenter, labels: np.ndarray) -> int:
    """Write ``labels``, the objects of plane ``plane``, into its chunk of the output (ids from
    ``plane * stride + 1``), then mark it done; return the number of objects."""
    count = int(labels.max())
    if count >= job.stride:
        raise ValueError(f"plane {plane} has {count} objects, more than the {job.stride - 1} "
                         "ids a plane can use in this volume")
    scores = fragment_scores(segmenter, labels) if job.predicted_iou else None
    labels[labels > 0] += np.uint32(plane * job.stride)
    # opened anew (the folder may be new too); the fragments first, which assembly reads
    for path in (Path(job.output) / RECORD / FRAGMENTS, Path(job.output)):
        output = open_zarr_array(path, mode="r+")
        if job.volume.planes:
            output[plane] = labels
        else:
            output[...] = labels
    if job.output_format == "ome-zarr":
        write_levels(open_labels(job.output, mode="r+"), plane if job.volume.planes else ())
    if scores is not None:
        first = plane * job.stride + 1
        _write_json(Path(job.output) / RECORD / SCORES / f"{plane}.json",
                    {"ids": list(range(first, first + count)), "predicted_iou": scores})
    (Path(job.output) / RECORD / "done" / str(plane)).touch()
    return count


def fragment_scores(segmenter: Segmenter, labels: np.ndarray) -> list[float]:
    """SAM's predicted IoU of each object of ``labels`` (ids 1..n of the segmenter's plane),
    prompted by its bounding box: the score of the answer that overlaps the object most. The
    automatic modes do not keep one (``"ais"`` has none), so every mode is scored alike."""
    from scipy import ndimage

    scores = []
    for index, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
        masks, predicted, _ = segmenter.predict(
            box=(rows.start, cols.start, rows.stop - 1, cols.stop - 1), multimask=True)
        overlap = iou(masks, labels == index)
        scores.append(round(float(predicted[int(np.argmax(overlap))]), 4))
    return scores


def embed_stack(source, cache: str | os.PathLike, *, model=None,
                checkpoint: str | os.PathLike | None = None, device: str = "auto",
                axes: str | None = None, z: slice | range | None = None,
                diameter: float | str | None = AUTO, tile: int | None = None,
                halo: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[int, int, str]:
    """Compute the embeddings of every plane's tiles into an embedding store, ahead of time.

    Arguments as in :func:`segment_stack`; :func:`segment_stack` and the napari plugin with the
    same model, diameter, tiling and ``cache`` then compute no embedding again. ``cache`` must
    not be, hold or lie inside the source.

    Returns
    -------
    computed, reused : int
        Tiles embedded now, and tiles found in the store.
    scale : str
        The object diameter used, for a user.
    """
    volume = source if isinstance(source, Volume) else open_volume(source, axes=axes)
    planes = _planes(volume, z)
    check_paths(source=volume.path, output=None, cache=cache)
    job = _job(volume, "", model=model, checkpoint=checkpoint, device=device, diameter=diameter,
               tile=tile, halo=halo, cache=cache, options={}, keep_model=True)
    segmenter = job.segmenter()
    for done, plane in enumerate(planes, 1):
        segmenter.set_image(plane_rgb(volume, plane, job.limits))
        for tile_ in segmenter.tiles:
            segmenter.embed_tile(tile_)
        if progress is not None:
            progress(done, len(planes))
    return segmenter.store.misses, segmenter.store.hits, _describe_scale(job)


@functools.lru_cache(maxsize=2)
def _loaded_model(model, checkpoint, device, file_identity):
    """One model per process and weights: dask workers load it once. ``file_identity`` makes
    a checkpoint re-written at the same path a new entry."""
    return load_model(model, checkpoint, device)


def _file_identity(path: str | None) -> tuple | None:
    if path is None or not os.path.isfile(path):
        return None  # load_model says what is wrong with it
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _record(job: StackJob) -> dict:
    """What a resume must match, as JSON values: the source by content, the model by its
    weights, the settings that change labels; and, for people, the paths and device."""
    volume = job.volume
    record = {
        "source": {"path": os.path.abspath(volume.path) if volume.path else volume.source,
                   "shape": list(volume.shape),
                   "dtype": volume.dtype.str, "axes": volume.axes, "fingerprint": job.source},
        "shape": list(volume.planes) + list(volume.plane_shape),
        "model": job.model, "weights": job.weights, "checkpoint": job.checkpoint,
        "device": job.device, "cache": job.cache,
        "limits": job.limits, "diameter": job.diameter, "estimated": job.estimated,
        "tile": job.tile, "halo": job.halo, "stride": job.stride, "mode": job.mode,
        "context": job.context,
        "options": job.options, "layout": FRAGMENTS,  # runs before 3D assembly lack it
        "format": job.output_format, "predicted_iou": job.predicted_iou,
    }
    return json.loads(json.dumps(record, default=str))


def _open_output(job: StackJob, record: dict):
    """The output's level 0 (the array itself for a plain zarr output): the existing one
    (checked by :func:`_check_resumable`), or a new one made whole in a hidden sibling folder
    and renamed into place, so that no half-made output is ever seen at ``job.output``. An
    OME-Zarr output inside an image's ``labels`` group is listed there once in place."""
    import zarr

    path = Path(job.output)
    ome = job.output_format == "ome-zarr"
    if path.exists():
        if ome:
            register_labels(path)  # a run killed just after the rename did not list it
        return open_zarr_array(path, mode="r+")
    building = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.incomplete"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        building.mkdir()
    except OSError as error:
        raise OSError(f"cannot write the output {str(path)!r}: {error}") from error
    shape = tuple(record["shape"])
    chunks = (1,) * len(job.volume.planes) + tuple(job.volume.plane_shape)
    try:
        if ome:
            create_volume_labels(building, job.volume, name=path.name)
        stores = [building / RECORD / name for name in (FRAGMENTS, OBJECTS)] if ome else \
            [building, building / RECORD / FRAGMENTS]
        for store in stores:
            zarr.create_array(store=str(store), shape=shape, chunks=chunks, dtype="uint32",
                              fill_value=0)
        (building / RECORD / "done").mkdir(parents=True)
        if ome:
            (building / RECORD / SCORES).mkdir()
        _write_json(building / RECORD / "run.json", record)
        os.rename(building, path)  # fails if another run created the output meanwhile
        if ome:
            register_labels(path)
    except BaseException as error:
        shutil.rmtree(building, ignore_errors=True)
        if isinstance(error, OSError):
            raise OSError(f"cannot write the output {str(path)!r}: {error}") from error
        raise
    return open_zarr_array(path, mode="r+")


def _check_resumable(path: Path, record: dict, resume: bool) -> None:
    """Refuse to continue the existing output ``path`` unless ``resume`` and it was written
    from the same source with the same weights and settings as ``record``."""
    if not resume:
        raise FileExistsError(
            f"{str(path)!r} exists: pass resume=True (--resume) to continue it, or choose "
            "another output"
        )
    run_file = path / RECORD / "run.json"
    if not run_file.is_file():
        raise FileExistsError(f"{str(path)!r} exists but is not a napari-sam stack output; "
                              "choose another output")
    try:
        before = json.loads(run_file.read_text())
    except ValueError as error:  # also UnicodeDecodeError
        raise ValueError(
            f"the run record {str(run_file)!r} is damaged ({error}), so {str(path)!r} cannot be "
            "resumed safely: delete the output and run again, or choose another output"
        ) from error
    if not isinstance(before, dict):
        raise ValueError(f"the run record {str(run_file)!r} is not a napari-sam run record: "
                         "delete the output and run again, or choose another output")
    if before.get("shape") != record["shape"]:
        raise FileExistsError(
            f"{str(path)!r} holds a volume of shape {tuple(before.get('shape') or ())}, this run "
            f"writes {tuple(record['shape'])}: choose another output"
        )
    source = before.get("source")
    if not isinstance(source, dict) or source.get("fingerprint") != record["source"]["fingerprint"]:
        raise FileExistsError(
            f"{str(path)!r} was written from another source ({_describe_source(source)}) than "
            f"this run reads ({_describe_source(record['source'])}): the source differs; "
            "resume with the source it was written from, or choose another output"
        )
    # Paths may have moved (the fingerprints decide), and the cache and device do not change
    # the labels. Runs recorded before automatic modes existed were "amg" runs, those before
    # OME-Zarr output wrote plain arrays, and those before z context labelled planes alone.
    before = {"mode": "amg", "format": "zarr", "predicted_iou": False, "context": 1, **before}
    changed = sorted(k for k in record if k not in ("source", "checkpoint", "cache", "device")
                     and before.get(k) != record[k])
    if changed:
        raise FileExistsError(
            f"{str(path)!r} was written with other settings ({', '.join(changed)}): resume with "
            "the same settings, or choose another output"
        )


def _describe_source(source) -> str:
    if not isinstance(source, dict):
        return repr(source)
    return (f"{source.get('path')!r}, shape {tuple(source.get('shape') or ())}, "
            f"{np.dtype(source.get('dtype', '|V0')).name}")


def _done(output: str) -> set[int]:
    folder = Path(output) / RECORD / "done"
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def _write_json(path: Path, record: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1, default=str))
    os.replace(temporary, path)


@contextlib.contextmanager
def _client(scheduler: str | None):
    """A ``dask.distributed`` client of ``scheduler`` (None without one), connected before
    the output is created, so that a wrong address leaves nothing behind."""
    if scheduler is None:
        yield None
        return
    from distributed import Client

    with Client(scheduler) as client:
        yield client


def _run(job: StackJob, planes: list[int], workers, client, progress, done: int,
         total: int) -> int:
    """Segment ``planes`` serially, in local dask processes, or on a dask.distributed cluster:
    one task per plane, or per block of consecutive planes when planes share their neighbours'
    maps (:func:`_blocks`)."""
    if not planes:
        return 0
    counts: list[int] = []

    def finished(*found: int) -> None:
        counts.extend(found)
        if progress is not None:
            progress(done + len(counts), total)

    if client is not None:
        from distributed import as_completed

        blocks = _blocks(planes, job.context, len(client.scheduler_info()["workers"]))
        for future in as_completed(client.map(segment_planes, [job] * len(blocks), blocks,
                                              pure=False)):
            finished(*future.result())
    elif workers:
        import dask
        from dask.callbacks import Callback

        tasks = [dask.delayed(segment_planes, pure=False)(job, block)
                 for block in _blocks(planes, job.context, workers)]
        keys = {task.key for task in tasks}

        class Progress(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in keys:
                    finished(*result)

        with Progress():
            dask.compute(*tasks, scheduler="processes", num_workers=workers,
                         initializer=functools.partial(end_with_parent, os.getpid()))
    else:
        segment_planes(job, planes, finished)
    return sum(counts)


def _blocks(planes: list[int], context: int, workers: int) -> list[list[int]]:
    """``planes`` in tasks: one plane each for planes segmented alone; else runs of
    consecutive planes, about two per worker, 4 to 16 planes long, since each block embeds
    the planes beside it again."""
    if context == 1:
        return [[plane] for plane in planes]
    size = min(16, max(4, -(-len(planes) // (2 * max(workers, 1)))))
    blocks: list[list[int]] = []
    for plane in planes:
        if blocks and plane == blocks[-1][-1] + 1 and len(blocks[-1]) < size:
            blocks[-1].append(plane)
        else:
            blocks.append([plane])
    return blocks


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_parent(parent: int) -> None:
    """Make this (worker) process end when process ``parent`` ends, so that a killed run
    leaves no worker behind: the initializer of the local worker processes.

    On Linux the kernel kills it (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); where that is not
    available a daemon thread checks every second whether the parent is still there.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
                if os.getppid() != parent:  # it ended before prctl took effect
                    os._exit(1)
                return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="napari-sam: end with parent").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
