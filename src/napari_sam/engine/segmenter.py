"""The one path from a 2D plane to masks, shared by every entry point.

plane -> 8-bit RGB (the volume's intensity limits) -> resampled so that objects arrive at the
model's size (``diameter``) -> tiles of the model's input size with a halo -> embeddings (an
optional :class:`~napari_sam.engine.embeddings.EmbeddingStore`) -> prompts or automatic
segmentation (``mode``: prompts sampled over each tile, "amg"; an instance decoder's maps
stitched across tiles, "ais"; prompts from those maps answered by SAM's decoder, "apg") ->
masks in the plane's own pixels.

The command line, the napari plugin, stack segmentation and the functions :func:`segment` and
:func:`segment_all` all go through :class:`Segmenter`, so the same plane gives the same masks
and the same cached embeddings whichever door a user comes in by. :class:`~napari_sam.Predictor`
and :class:`~napari_sam.AutomaticMaskGenerator` are the layer beneath: exact equivalents of
Meta's classes, on the image exactly as given.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_sam.engine import apg
from napari_sam.engine.ais import check_settings, decoder_maps
from napari_sam.engine.amg import AutomaticMaskGenerator
from napari_sam.engine.detection import noise_to_contrast
from napari_sam.engine.geometry import WindowMask
from napari_sam.engine.image import to_rgb_uint8
from napari_sam.engine.instances import labels_from_maps
from napari_sam.engine.mask_ops import paint_labels
from napari_sam.engine.outlines import snap_outlines
from napari_sam.engine.prompts import check_prompts
from napari_sam.engine.scale import (
    Resampling,
    check_diameter,
    enlargement_limited,
    estimate_diameter,
    object_diameters,
    resample_factor,
)
from napari_sam.engine.tiling import Tile, TiledPredictor, segment_tiles
from napari_sam.models.registry import MODELS, automatic_mode

AUTO = "auto"
# The instance decoder's maps where a tile shows nothing (no contrast): no foreground, and the
# largest distance to any object's centre and boundary.
BACKGROUND_MAPS = (0.0, 1.0, 1.0)


class Segmenter:
    """Prompted and automatic segmentation of 2D planes, at the objects' own scale, tiled.

    Parameters
    ----------
    model : Sam
        A loaded model (:func:`napari_sam.load_model`); its registry name (``model.name``)
        gives its preferred object diameter and automatic settings.
    diameter : float, "auto" or None
        Typical object diameter in pixels of the planes. ``"auto"`` (the default) estimates it
        from each plane without weights (:func:`~napari_sam.engine.scale.object_diameters`);
        for a volume, estimate it once (:func:`napari_sam.volume.stack.volume_diameter`) and
        pass the number. Planes are resampled so that objects arrive at the model's preferred
        diameter; masks come back in the plane's pixels. None keeps the plane's pixels, and so
        does ``"auto"`` for a model without a preferred size (Meta's) or a plane in which fewer
        than three objects are found.
    tile, halo : int, optional
        Resampled planes larger than ``tile`` pixels are cut into tiles with ``halo`` pixels of
        context. By default the model's input size and an eighth of it: a model sees objects at
        the scale it was trained at only when nothing is shrunk to its input.
    store : EmbeddingStore, optional
        Reuse and keep tile embeddings there.
    automatic : dict, optional
        :class:`~napari_sam.AutomaticMaskGenerator` settings for :meth:`segment_all` on top of
        those that suit the model (``MODELS[name].automatic``).
    decoder : InstanceDecoder, optional
        The model's instance decoder, for ``segment_all(mode="ais")``; by default loaded when
        first needed (:func:`napari_sam.load_decoder`) if the registry has one for the model.
    estimated : bool
        ``diameter`` (a number, or None when no estimate was possible) is an estimate made for
        a whole volume; this only changes what :meth:`describe_scale` says.
    snap : bool
        :meth:`segment_all` moves each object's outline to its blurred edge
        (:func:`~napari_sam.engine.outlines.snap_outlines`) for a model of fluorescent objects
        (``MODELS[name].edge_level``); False keeps the outlines as the model draws them.
    noise : float, optional
        The planes' pixel noise over their objects' contrast
        (:func:`~napari_sam.engine.detection.noise_to_contrast`), measured once for a whole
        volume, so that all its planes are enlarged alike (see
        :func:`~napari_sam.engine.scale.resample_factor`); by default measured on each plane
        where the model's enlargement limit could apply.

    Examples
    --------
    >>> segmenter = Segmenter(load_model())  # doctest: +SKIP
    >>> segmenter.set_image(image)  # doctest: +SKIP
    >>> masks, scores, _ = segmenter.predict(points=[[120, 64]])  # doctest: +SKIP
    >>> labels = segmenter.segment_all()  # doctest: +SKIP
    """

    def __init__(self, model, *, diameter: float | str | None = AUTO, tile: int | None = None,
                 halo: int | None = None, store=None, automatic: dict | None = None,
                 estimated: bool = False, decoder=None, snap: bool = True,
                 noise: float | None = None) -> None:
        spec = MODELS.get(getattr(model, "name", None) or "")
        self.model = model
        self.model_diameter = spec.diameter if spec is not None else None
        self.max_enlargement = spec.max_enlargement if spec is not None else None
        if diameter is not None and not (isinstance(diameter, str) and diameter == AUTO):
            diameter = check_diameter(diameter, (np.inf, np.inf))
            if self.model_diameter is None:
                raise ValueError(
                    f"the model {getattr(model, 'name', None) or '(unnamed)'!r} has no preferred "
                    "object size to resample to: pass diameter=None (keep the plane's pixels)"
                )
        self.diameter_setting = diameter
        self.tile = int(tile or model.img_size)
        self.halo = self.tile // 8 if halo is None else int(halo)
        self.automatic = {**(dict(spec.automatic) if spec is not None else {}), **(automatic or {})}
        self.edge_level = spec.edge_level if spec is not None and snap else None
        self.store = store
        self._decoder = decoder
        self._tiled = TiledPredictor(model, tile=self.tile, halo=self.halo, store=store)
        self._rgb: np.ndarray | None = None
        self.diameter: float | None = None
        self.estimated = estimated
        self.resampling: Resampling | None = None
        self.noise_setting = noise
        self.noise = 0.0  # the plane's pixel noise over its objects' contrast, where measured

    # -- the plane ---------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, *, channel_axis: int | None = None, limits=None) -> None:
        """Set the plane: any 2D image (see :meth:`napari_sam.Predictor.set_image`).

        Nothing is embedded until a prompt or :meth:`segment_all` needs a tile.

        Raises
        ------
        ValueError
            Not a 2D image, bad ``limits``, or a diameter larger than the plane.
        """
        rgb = to_rgb_uint8(image, channel_axis=channel_axis, limits=limits)
        shape = rgb.shape[:2]
        if isinstance(self.diameter_setting, str):  # AUTO
            self.estimated = self.model_diameter is not None
            self.diameter = estimate_diameter(object_diameters(rgb)) if self.estimated else None
        else:
            self.diameter = (None if self.diameter_setting is None
                             else check_diameter(self.diameter_setting, shape))
        self.noise = 0.0 if self.noise_setting is None else float(self.noise_setting)
        if self.noise_setting is None and enlargement_limited(
                self.diameter, self.model_diameter, self.max_enlargement):
            self.noise = noise_to_contrast(rgb)
        self.resampling = Resampling.by_factor(shape, self.factor)
        self._rgb = rgb
        self._tiled.set_image(self.resampling.image(rgb))

    @property
    def factor(self) -> float:
        """How much planes are enlarged (> 1) or shrunk (< 1) before the model sees them."""
        return resample_factor(self.diameter, self.model_diameter, self.max_enlargement,
                               noise=self.noise)

    @property
    def image(self) -> np.ndarray | None:
        """The plane as 8-bit RGB in its own pixels, ``(H, W, 3)``; None before :meth:`set_image`."""
        return self._rgb

    @property
    def tiles(self) -> list[Tile]:
        """The tiles of the resampled plane."""
        return self._tiled.tiles

    def embed_tile(self, tile: Tile) -> bool:
        """Embed one of :attr:`tiles` now; returns whether the encoder ran."""
        return self._tiled.embed_tile(tile)

    def describe_scale(self) -> str:
        """One line for a user: the diameter used and what it did to the plane."""
        if self.resampling is None:
            return "no image yet"
        if self.diameter is None:
            if self.model_diameter is None:
                return "planes kept at their own pixels (the model has no preferred object size)"
            if not self.estimated:
                return "planes kept at their own pixels (diameter=None)"
            return ("object diameter not estimated (fewer than 3 objects found): planes kept at "
                    "their own pixels; give the diameter to be sure")
        how = "estimated" if self.estimated else "given"
        limited = 1 < self.factor < resample_factor(self.diameter, self.model_diameter)
        limit = (f" (a noisy plane, enlarged at most x{self.max_enlargement:g}: objects at "
                 f"{self.diameter * self.factor:.0f} px)" if limited else "")
        return (f"object diameter {self.diameter:.1f} px ({how}); planes resampled "
                f"x{self.factor:.2f} for the model's {self.model_diameter:g} px{limit}")

    # -- prompts -----------------------------------------------------------------------------

    def predict(self, points=None, labels=None, box=None, multimask: bool = True, *, mask=None):
        """Masks for one object, in pixels of the plane.

        Parameters
        ----------
        points : (N, 2) array-like, optional
            ``(row, col)`` clicks in the plane.
        labels : (N,) array-like, optional
            1 for a click on the object, 0 off it (all 1 by default).
        box : (4,) array-like, optional
            ``(min_row, min_col, max_row, max_col)`` around the object, maxima inclusive.
        multimask : bool
            Three answers (for one ambiguous click) instead of one.
        mask : (H, W) bool array, optional
            A mask of the plane to refine (a mask prompt).

        Returns
        -------
        masks : (k, H, W) bool array
        scores : (k,) float array
            Predicted IoU.
        logits : (k, h, w) float array
            Low-resolution logits of the tile that answered (in its own frame).
        """
        resampling = self._require_image()
        if points is not None or box is not None:  # checked in the plane's own pixels
            check_prompts(points=points, labels=labels, boxes=box, mask_input=None,
                          image_shape=resampling.shape, mask_shape=(1, 1), batched=False)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != resampling.shape:
                raise ValueError(
                    f"mask has shape {mask.shape} but the plane has shape {resampling.shape}: "
                    "give a mask of the whole plane given to set_image"
                )
            mask = resampling.to_scaled(mask)
        if points is not None:
            points = resampling.points(np.asarray(points, dtype=float).reshape(-1, 2))
        if box is not None:
            box = resampling.box(box)
        masks, scores, logits = self._tiled.predict(points=points, labels=labels, box=box,
                                                    multimask=multimask, mask=mask)
        return resampling.dense_to_plane(masks), scores, logits

    # -- automatic ---------------------------------------------------------------------------

    def segment_all(self, mode: str | None = None, *, maps: np.ndarray | None = None,
                    **settings) -> np.ndarray:
        """Automatic segmentation of the plane, tile by tile, at the objects' scale.

        Parameters
        ----------
        mode : {"amg", "ais", "apg"}, optional
            The automatic mode; by default "amg" when generator settings are given, else the
            one that suits the model (its registry spec's ``mode``, "amg" for a model the
            registry does not name). ``"amg"``: prompts sampled
            over each tile, SAM's decoder, masks merged across
            tiles (:func:`~napari_sam.engine.tiling.segment_tiles`). ``"ais"``: the instance
            decoder's maps of each tile, each pixel taken from the tile whose core holds it (the
            halo cropped), then labelled once on the whole plane, so that an object across a
            seam comes out once and whole; a tile without contrast is background without
            running the decoder. ``"apg"``: point prompts from those stitched maps, each
            answered by SAM's decoder on the tile whose core holds it, then micro-sam's mask
            suppression and painting once on the whole plane
            (:mod:`~napari_sam.engine.apg`).
        maps : (3, h, w) array, optional
            ``"ais"`` and ``"apg"``: the instance maps to take instead of the plane's own
            (:meth:`instance_maps`), of the resampled plane's shape: a stack run gives each
            plane's maps averaged with its neighbours' (:mod:`~napari_sam.volume.stack`).
        **settings
            ``"amg"``: :class:`~napari_sam.AutomaticMaskGenerator` settings on top of this
            segmenter's. ``"ais"``: :func:`~napari_sam.engine.instances.labels_from_maps`
            settings, ``"apg"``: :func:`~napari_sam.engine.apg.prompted_masks` settings
            (micro-sam's defaults), in pixels of the resampled plane.

        Returns
        -------
        (H, W) uint32 array
            Labels 1..n in the plane's pixels, 0 for background; larger objects painted first,
            then, for a model of fluorescent objects, snapped to their blurred edges (see
            ``snap``).

        Raises
        ------
        ValueError
            An unknown mode or setting, ``"ais"`` or ``"apg"`` for a model without an
            instance decoder, or ``maps`` with mode ``"amg"`` or of another shape.
        """
        resampling = self._require_image()
        mode = automatic_mode(self.model, mode or ("amg" if settings else None))
        if maps is not None:
            expected = (3, *self._tiled.image.shape[:2])
            if mode == "amg" or np.shape(maps) != expected:
                raise ValueError(
                    f"maps of shape {np.shape(maps)} for mode {mode!r}: give the instance maps "
                    f"of this plane's shape {expected} (instance_maps()), with mode 'ais' or "
                    "'apg'")
        if mode == "amg":
            generator = AutomaticMaskGenerator(self.model, embedding_store=self.store,
                                               enlarge=False, **{**self.automatic, **settings})
            found = segment_tiles(generator, self._tiled.image, self._tiled.tiles)
        elif mode == "ais":
            check_settings(settings)
            maps = self.instance_maps() if maps is None else maps
            found = _label_masks(labels_from_maps(*maps, **settings))
        else:
            settings = apg.check_settings(settings)  # before any embedding
            maps = self.instance_maps() if maps is None else maps
            found = _label_masks(self._prompted_labels(maps, settings))
        masks = [m for m in (resampling.to_plane(mask) for mask in found) if m is not None]
        labels = paint_labels(masks, resampling.shape)
        if self.edge_level is not None:
            labels = snap_outlines(self._rgb, labels, share=self.edge_level)
        return labels

    @property
    def decoder(self):
        """The instance decoder for ``mode="ais"`` and ``"apg"``: the one given, else the
        registry's for this model (loaded on first use)."""
        if self._decoder is None:
            from napari_sam.models.loading import load_decoder

            try:
                self._decoder = load_decoder(self.model)
            except ValueError as error:
                raise ValueError(
                    f"mode='ais' and 'apg' need an instance decoder: {error}. Give it to the "
                    "segmenter (Segmenter(model, decoder=napari_sam.load_decoder(model, file))), "
                    "or use mode='amg'"
                ) from error
        return self._decoder

    def instance_maps(self) -> np.ndarray:
        """The instance decoder's maps of the resampled plane, stitched from its tiles.

        Returns
        -------
        (3, h, w) float32 array
            Foreground, centre distance and boundary distance at each pixel of the resampled
            plane, from the tile whose core holds it.
        """
        self._require_image()
        rgb, decoder = self._tiled.image, self.decoder
        maps = np.empty((3, *rgb.shape[:2]), np.float32)
        for tile in self.tiles:
            r0, c0, r1, c1 = tile.core
            if np.ptp(rgb[tile.slices]) == 0:  # nothing to see, nothing to embed
                maps[:, r0:r1, c0:c1] = np.reshape(BACKGROUND_MAPS, (3, 1, 1))
                continue
            top, left = tile.box[:2]
            tile_maps = decoder_maps(self.model, decoder, self._tiled.embedding(tile))
            maps[:, r0:r1, c0:c1] = tile_maps[:, r0 - top:r1 - top, c0 - left:c1 - left]
        return maps

    def _prompted_labels(self, maps: np.ndarray, settings: dict) -> np.ndarray:
        """APG labels of the resampled plane: prompts from its stitched ``maps``, each answered
        by SAM's decoder on the tile whose core holds it (with the halo as context), masks
        suppressed and painted on the whole plane, so that an object across a seam comes out
        once."""
        shape = maps.shape[1:]
        points = apg.point_prompts(*maps, **{name: settings[name] for name in (
            "foreground_threshold", "center_distance_threshold", "boundary_distance_threshold")})
        predictor, found = self._tiled.predictor, []
        for tile in self.tiles:
            r0, c0, r1, c1 = tile.core
            inside = points[(points[:, 0] >= r0) & (points[:, 0] < r1)
                            & (points[:, 1] >= c0) & (points[:, 1] < c1)]
            if not len(inside):  # nothing to ask, nothing to embed
                continue
            top, left = tile.box[:2]
            predictor.set_embedding(self._tiled.embedding(tile))
            answers = apg.answered_points(predictor, inside - [top, left], **{
                name: settings[name] for name in (
                    "multimasking", "batch_size", "mask_threshold", "refine_with_box_prompts")})
            found += [answer.moved(top, left, shape) for answer in answers]
        kept = apg.distinct_masks(found, min_size=settings["min_size"],
                                  nms_threshold=settings["nms_threshold"],
                                  intersection_over_min=settings["intersection_over_min"])
        return apg.painted_labels(kept, shape, min_size=settings["min_size"])

    def _require_image(self) -> Resampling:
        if self.resampling is None:
            raise RuntimeError("no image yet: call set_image(plane) first")
        return self.resampling


def _label_masks(labels: np.ndarray) -> list[WindowMask]:
    """The objects of a label image, each as a mask in the window that holds it."""
    return [WindowMask.trimmed(window[0].start, window[1].start, labels[window] == index,
                               labels.shape)
            for index, window in enumerate(ndimage.find_objects(labels), 1) if window is not None]


def _model(model):
    from napari_sam.models.loading import load_model

    return load_model(model) if model is None or isinstance(model, str) else model


def segment(image: np.ndarray, points=None, labels=None, box=None, *, mask=None, model=None,
            diameter: float | str | None = AUTO, channel_axis: int | None = None,
            limits=None) -> np.ndarray:
    """Segment one object of a 2D image from clicks and/or a box.

    Parameters
    ----------
    image : (H, W[, C]) array
        Any 2D image (uint8 as it is, other types scaled by percentiles or ``limits``).
    points, labels, box, mask
        Prompts as in :meth:`Segmenter.predict`, ``(row, col)`` pixels.
    model : Sam or str, optional
        A loaded model or a registry name; the shipped default model by default.
    diameter : float, "auto" or None
        Object diameter in pixels (see :class:`Segmenter`).
    channel_axis, limits
        As in :func:`~napari_sam.engine.image.to_rgb_uint8`.

    Returns
    -------
    (H, W) bool array
        The mask with the highest predicted IoU (of three for a single click).

    Examples
    --------
    >>> mask = napari_sam.segment(image, points=[[120, 64]])  # doctest: +SKIP
    """
    segmenter = Segmenter(_model(model), diameter=diameter)
    segmenter.set_image(image, channel_axis=channel_axis, limits=limits)
    n_points = 0 if points is None else len(np.asarray(points, dtype=float).reshape(-1, 2))
    masks, scores, _ = segmenter.predict(points=points, labels=labels, box=box, mask=mask,
                                         multimask=n_points == 1 and box is None and mask is None)
    return masks[int(np.argmax(scores))]


def segment_all(image: np.ndarray, *, model=None, diameter: float | str | None = AUTO,
                channel_axis: int | None = None, limits=None, mode: str | None = None,
                **settings) -> np.ndarray:
    """Segment every object of a 2D image into a label image.

    Parameters
    ----------
    image : (H, W[, C]) array
        Any 2D image.
    model, diameter, channel_axis, limits
        As in :func:`segment`.
    mode : {"amg", "ais", "apg"}, optional
        Prompt sampling, the model's instance decoder, or prompts from its maps (see
        :meth:`Segmenter.segment_all`); by default "amg" when generator settings are given,
        else the one that suits the model.
    **settings
        The mode's settings: for "amg" :class:`~napari_sam.AutomaticMaskGenerator` settings on
        top of those that suit the model (sampler, thresholds...), for "ais"
        :func:`~napari_sam.engine.instances.labels_from_maps` settings, for "apg"
        :func:`~napari_sam.engine.apg.prompted_masks` settings.

    Returns
    -------
    (H, W) uint32 array
        Labels 1..n, 0 for background.

    Examples
    --------
    >>> labels = napari_sam.segment_all(image)  # doctest: +SKIP
    """
    segmenter = Segmenter(_model(model), diameter=diameter)
    segmenter.set_image(image, channel_axis=channel_axis, limits=limits)
    return segmenter.segment_all(mode, **settings)
