"""Automatic segmentation of a whole stack into a zarr label volume: resumable, tiled, linked in
3D, serial or on dask.

Every plane is segmented on its own (tiled if large) and written into its own chunk of the
output. Plane ``p`` numbers its objects from ``p * stride + 1``, so ids are unique in the volume
and do not depend on the order in which planes finish. A plane counts as done only once a
marker file is written after its chunk, so a run killed at any moment resumes where it stopped
and loses no finished plane. Linking then gives objects that continue through z one id, in
place and idempotently (:func:`napari_sam.volume.linking.link_slices`).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.engine.embeddings import EmbeddingStore
from napari_sam.engine.image import rescale_to_uint8, to_rgb_uint8
from napari_sam.engine.scale import check_diameter, estimate_diameter, object_diameters
from napari_sam.engine.segmenter import AUTO, Segmenter
from napari_sam.models.loading import load_model
from napari_sam.models.registry import DEFAULT_MODEL, MODELS
from napari_sam.models.weights import identify, read_state_dict
from napari_sam.volume.io import Volume, intensity_limits, open_volume
from napari_sam.volume.linking import link_slices

RECORD = ".napari_sam"  # folder inside the output array: run settings and one marker per plane


@dataclass(frozen=True)
class StackJob:
    """Everything a worker needs to segment one plane (picklable, for dask)."""

    volume: Volume
    output: str
    model: str | None
    checkpoint: str | None
    device: str
    limits: list | None
    diameter: float | None
    estimated: bool  # the diameter is the volume's estimate (or None: too few objects)
    tile: int | None
    halo: int | None
    cache: str | None
    stride: int
    options: dict[str, Any] = field(default_factory=dict)

    def segmenter(self) -> Segmenter:
        """The one path (:class:`~napari_sam.Segmenter`) with this job's settings; the model
        is loaded once per process."""
        model = _loaded_model(self.model, self.checkpoint, self.device,
                              _file_identity(self.checkpoint))
        store = EmbeddingStore(self.cache) if self.cache else None
        return Segmenter(model, diameter=self.diameter, tile=self.tile, halo=self.halo,
                         store=store, automatic=self.options, estimated=self.estimated)


@dataclass
class StackSummary:
    """What :func:`segment_stack` did."""

    planes: int
    segmented: int
    skipped: int
    objects: int  # 2D objects found in the planes segmented now
    seconds: float
    linked: bool
    objects_3d: int | None = None  # objects in the whole volume after linking
    scale: str = ""  # the object diameter used, for a user (Segmenter.describe_scale)


def segment_stack(
    source,
    output: str | os.PathLike,
    *,
    model: str | None = None,
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
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **amg_options,
) -> StackSummary:
    """Segment every plane of a stack automatically into a uint32 zarr label volume.

    Parameters
    ----------
    source : path, array or Volume
        Anything :func:`napari_sam.volume.open_volume` opens.
    output : path
        The zarr array to write: same plane axes and plane size as ``source``, one chunk per
        plane. It must not exist unless ``resume`` is given.
    model, checkpoint, device : str, optional
        As in :func:`napari_sam.load_model`.
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
        An :class:`~napari_sam.engine.embeddings.EmbeddingStore` to reuse embeddings from.
    resume : bool
        Continue an output written before with the same settings, skipping finished planes.
    link : bool
        Give objects continuing through neighbouring planes one id (z stacks only).
    workers : int, optional
        Segment planes in this many local processes with dask.
    scheduler : str, optional
        Address of a ``dask.distributed`` scheduler to run the planes on.
    progress : callable, optional
        ``progress(done, total)`` after each plane.
    **amg_options
        Settings of :class:`~napari_sam.AutomaticMaskGenerator` (``sampler``,
        ``points_per_side``, thresholds...) on top of those that suit the model.

    Returns
    -------
    StackSummary

    Raises
    ------
    FileExistsError
        ``output`` exists and ``resume`` is not given, or it does not fit this run.
    ValueError
        Bad axes or plane range, or a source that is not an image volume.
    """
    start = time.perf_counter()
    volume = source if isinstance(source, Volume) else open_volume(source, axes=axes)
    if len(volume.planes) > 1:
        raise ValueError(
            f"segment_stack takes one plane axis (z), the volume has {volume.axes!r}: select a "
            "time point or channel first, e.g. open_volume(path).data[t]"
        )
    n_planes = volume.n_planes
    todo = list(range(n_planes))[z] if z is not None else list(range(n_planes))
    job = _job(volume, output, model=model, checkpoint=checkpoint, device=device,
               diameter=diameter, tile=tile, halo=halo, cache=cache, options=amg_options)
    labels = _open_output(job, volume, resume)
    done = _done(job.output)
    remaining = [p for p in todo if p not in done]
    if progress is not None:
        progress(len(todo) - len(remaining), len(todo))
    objects = _run(job, remaining, workers, scheduler, progress, len(todo) - len(remaining), len(todo))
    linked = link and bool(volume.planes) and volume.n_planes > 1
    objects_3d = link_slices(labels).n_objects_3d if linked else None
    return StackSummary(planes=len(todo), segmented=len(remaining),
                        skipped=len(todo) - len(remaining), objects=objects,
                        seconds=time.perf_counter() - start, linked=linked, objects_3d=objects_3d,
                        scale=_describe_scale(job))


def _job(volume: Volume, output, *, model, checkpoint, device, diameter, tile, halo, cache,
         options) -> StackJob:
    """The settings of a run over ``volume``, with its limits and diameter resolved once."""
    checkpoint = None if checkpoint is None else str(checkpoint)
    limits = volume_limits(volume)
    spec = MODELS.get(model_name(model, checkpoint))
    estimated = isinstance(diameter, str) and diameter == AUTO
    if estimated:
        estimated = spec is not None and spec.diameter is not None
        diameter = volume_diameter(volume, limits) if estimated else None
    elif diameter is not None:
        diameter = check_diameter(diameter, volume.plane_shape)
    return StackJob(volume=volume, output=str(output), model=model, checkpoint=checkpoint,
                    device=device, limits=limits, diameter=diameter, estimated=estimated,
                    tile=tile, halo=halo,
                    cache=None if cache is None else str(cache),
                    stride=2**32 // (volume.n_planes + 1), options=dict(options))


def _describe_scale(job: StackJob) -> str:
    if job.diameter is None:
        if job.estimated:
            return ("object diameter not estimated (fewer than 3 objects found): planes kept at "
                    "their own pixels; give --diameter to be sure")
        return "planes kept at their own pixels"
    return f"object diameter {job.diameter:.1f} px ({'estimated' if job.estimated else 'given'})"


def model_name(model: str | None, checkpoint: str | os.PathLike | None) -> str | None:
    """The registry architecture of a run: ``model``, recognised from ``checkpoint``, or the
    default model."""
    if model is not None:
        return model
    return identify(read_state_dict(checkpoint)) if checkpoint is not None else DEFAULT_MODEL


def volume_diameter(volume: Volume, limits=None, *, max_planes: int = 3) -> float | None:
    """One object-diameter estimate for a whole volume (see
    :func:`~napari_sam.engine.scale.estimate_diameter`), from the objects of a few planes
    spread through it (the centres of ``max_planes`` equal parts), normalised with the volume's
    ``limits``. None when fewer than three objects are found.
    """
    count = min(volume.n_planes, max_planes)
    picked = ((np.arange(count) + 0.5) * volume.n_planes / count).astype(int)
    found = [object_diameters(plane_rgb(volume, int(i), limits)) for i in picked]
    return estimate_diameter(np.concatenate(found))


def segment_one(job: StackJob, plane: int) -> int:
    """Segment plane ``plane`` of ``job`` into its chunk of the output, then mark it done.

    Returns
    -------
    int
        The number of objects found.
    """
    segmenter = job.segmenter()
    segmenter.set_image(plane_rgb(job.volume, plane, job.limits))
    labels = segmenter.segment_all()
    count = int(labels.max())
    if count >= job.stride:
        raise ValueError(f"plane {plane} has {count} objects, more than the {job.stride - 1} "
                         "ids a plane can use in this volume")
    labels[labels > 0] += np.uint32(plane * job.stride)
    import zarr

    output = zarr.open_array(job.output, mode="r+")  # opened anew: the folder may be new too
    if job.volume.planes:
        output[plane] = labels
    else:
        output[...] = labels
    (Path(job.output) / RECORD / "done" / str(plane)).touch()
    return count


def volume_limits(volume: Volume) -> list | None:
    """Intensity limits for the whole volume (None for uint8, which SAM takes as it is)."""
    return None if volume.dtype == np.uint8 else np.asarray(intensity_limits(volume)).tolist()


def plane_rgb(volume: Volume, plane: int, limits) -> np.ndarray:
    """The 8-bit RGB image of one plane (numbered through all plane axes), with the volume's
    intensity limits."""
    image = volume.plane(tuple(int(i) for i in np.unravel_index(plane, volume.planes)))
    if limits is None:
        return to_rgb_uint8(image)
    return to_rgb_uint8(rescale_to_uint8(image if image.ndim == 3 else image[..., None], limits))


def embed_stack(source, cache: str | os.PathLike, *, model: str | None = None,
                checkpoint: str | os.PathLike | None = None, device: str = "auto",
                axes: str | None = None, z: slice | range | None = None,
                diameter: float | str | None = AUTO, tile: int | None = None,
                halo: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[int, int, str]:
    """Compute the embeddings of every plane's tiles into an embedding store, ahead of time.

    Arguments as in :func:`segment_stack`; :func:`segment_stack` and the napari plugin with the
    same model, diameter, tiling and ``cache`` then compute no embedding again.

    Returns
    -------
    computed, reused : int
        Tiles embedded now, and tiles found in the store.
    scale : str
        The object diameter used, for a user.
    """
    volume = source if isinstance(source, Volume) else open_volume(source, axes=axes)
    planes = list(range(volume.n_planes))[z] if z is not None else list(range(volume.n_planes))
    job = _job(volume, "", model=model, checkpoint=checkpoint, device=device, diameter=diameter,
               tile=tile, halo=halo, cache=cache, options={})
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


def _open_output(job: StackJob, volume: Volume, resume: bool):
    import zarr

    path = Path(job.output)
    shape = tuple(volume.planes) + tuple(volume.plane_shape)
    record = {k: v for k, v in asdict(job).items() if k not in ("volume", "output")}
    record["source"] = volume.source
    record["shape"] = list(shape)
    if path.exists():
        if not resume:
            raise FileExistsError(
                f"{str(path)!r} exists: pass resume=True (--resume) to continue it, or choose "
                "another output"
            )
        _check_resumable(path, shape, record)
        return zarr.open_array(str(path), mode="r+")
    chunks = (1,) * len(volume.planes) + tuple(volume.plane_shape)
    try:
        labels = zarr.create_array(store=str(path), shape=shape, chunks=chunks, dtype="uint32",
                                   fill_value=0)
        (path / RECORD / "done").mkdir(parents=True)
        _write_json(path / RECORD / "run.json", record)
    except OSError as error:
        raise OSError(f"cannot write the output {str(path)!r}: {error}") from error
    return labels


def _check_resumable(path: Path, shape: tuple, record: dict) -> None:
    run_file = path / RECORD / "run.json"
    if not run_file.is_file():
        raise FileExistsError(f"{str(path)!r} exists but is not a napari-sam stack output; "
                              "choose another output")
    before = json.loads(run_file.read_text())
    if before.get("shape") != list(shape):
        raise FileExistsError(
            f"{str(path)!r} holds a volume of shape {tuple(before.get('shape', ()))}, this run "
            f"writes {shape}: choose another output"
        )
    # The source may have moved, and the cache and device do not change the labels.
    changed = sorted(k for k in record
                     if k not in ("source", "cache", "device") and before.get(k) != record[k])
    if changed:
        raise FileExistsError(
            f"{str(path)!r} was written with other settings ({', '.join(changed)}): resume with "
            "the same settings, or choose another output"
        )


def _done(output: str) -> set[int]:
    folder = Path(output) / RECORD / "done"
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def _write_json(path: Path, record: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1, default=str))
    os.replace(temporary, path)


def _run(job: StackJob, planes: list[int], workers, scheduler, progress, done: int, total: int) -> int:
    """Segment ``planes`` serially, in local dask processes, or on a dask.distributed cluster."""
    if not planes:
        return 0
    counts: list[int] = []

    def finished(count: int) -> None:
        counts.append(count)
        if progress is not None:
            progress(done + len(counts), total)

    if scheduler is not None:
        from distributed import Client, as_completed

        with Client(scheduler) as client:
            for future in as_completed(client.map(segment_one, [job] * len(planes), planes,
                                                  pure=False)):
                finished(future.result())
    elif workers:
        import dask
        from dask.callbacks import Callback

        class Progress(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if isinstance(result, int):
                    finished(result)

        tasks = [dask.delayed(segment_one, pure=False)(job, plane) for plane in planes]
        with Progress():
            dask.compute(*tasks, scheduler="processes", num_workers=workers)
    else:
        for plane in planes:
            finished(segment_one(job, plane))
    return sum(counts)
