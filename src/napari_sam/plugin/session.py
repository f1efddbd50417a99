"""What the widgets of one viewer share: the model settings, the loaded model, and the embedded
slices of image layers. No Qt here, so that it is tested and used like the rest of the core.

All model work goes through :attr:`Session.lock`: widgets call the engine from worker threads
(embedding, decoding, automatic segmentation), and one model must not run two jobs at once.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
from psygnal import Signal

from napari_sam.engine.embeddings import EmbeddingStore
from napari_sam.engine.scale import enlargement_limited
from napari_sam.engine.segmenter import AUTO, Segmenter
from napari_sam.models.registry import DEFAULT_MODEL, MODELS
from napari_sam.volume.io import Volume, volume_limits
from napari_sam.volume.stack import volume_diameter, volume_noise

# Layer axes by number of dimensions, for the engine's volume reader (napari has no axis names).
_LAYER_AXES = {2: "yx", 3: "zyx", 4: "tzyx"}


def _level0(layer):
    """A layer's full-resolution data (level 0 of a multiscale layer)."""
    data = getattr(layer, "data", None)
    return data[0] if getattr(layer, "multiscale", False) else data


class LayerError(ValueError):
    """A layer the plugin cannot work on; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSettings:
    """The model panel's choices.

    Attributes
    ----------
    model : str
        Registry name (used when ``checkpoint`` is None).
    checkpoint : str, optional
        A checkpoint file in the official layout; its architecture is recognised.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    diameter : float or "auto"
        Typical object diameter in pixels of the image; ``"auto"`` estimates it once per image
        layer (see :class:`~napari_sam.Segmenter`).
    tile, halo : int, optional
        Resampled slices larger than ``tile`` pixels are embedded tile by tile with ``halo`` of
        context; by default the model's input size and an eighth of it.
    cache : str, optional
        Folder of an on-disk embedding cache.
    """

    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    device: str = "auto"
    diameter: float | str = AUTO
    tile: int | None = None
    halo: int | None = None
    cache: str | None = None


@dataclass(frozen=True)
class ImageSource:
    """An image layer read as a volume of 2D slices (its last two axes)."""

    volume: Volume
    limits: list | None
    _estimate: list = field(default_factory=list, compare=False, repr=False)  # computed once
    _noise: list = field(default_factory=list, compare=False, repr=False)  # computed once

    @classmethod
    def from_layer(cls, layer) -> ImageSource:
        """Check a napari layer and wrap its data (level 0 of a multiscale layer), lazily.

        Raises
        ------
        LayerError
            Not an image layer, or not 2D to 4D (plus RGB), or not numeric.
        """
        from napari.layers import Image

        if not isinstance(layer, Image):
            raise LayerError(
                f"{getattr(layer, 'name', layer)!r} is not an image layer: choose an image layer, "
                "or open one (File > Open, or a sample: File > Open Sample > napari-sam)"
            )
        data = _level0(layer)
        ndim = layer.ndim
        if ndim not in _LAYER_AXES:
            raise LayerError(
                f"image layer {layer.name!r} has {ndim} dimension(s); SAM segments 2D slices of "
                "2D to 4D images (t, z, y, x). Open multichannel data as one layer per channel "
                "(channel_axis=) and choose one"
            )
        if not layer.rgb and ndim >= 3 and data.shape[-1] <= 4:
            raise LayerError(
                f"image layer {layer.name!r} has shape {tuple(data.shape)}: its last axis looks "
                "like channels, not x. Open it as RGB (rgb=True) or one layer per channel "
                "(channel_axis=-1), then choose a layer"
            )
        dtype = np.dtype(data.dtype)
        if dtype.kind not in "uifb":
            raise LayerError(f"image layer {layer.name!r} has data of type {dtype}, not numbers")
        axes = _LAYER_AXES[ndim] + ("c" if layer.rgb else "")
        # a layer's scale of all ones is napari's default, not a measured voxel size
        scale = [float(s) for a, s in zip(_LAYER_AXES[ndim], layer.scale) if a in "zyx"]
        voxel_size = None if all(s == 1 for s in scale) else scale
        volume = Volume(data, axes, source=f"layer {layer.name!r}", voxel_size=voxel_size)
        return cls(volume, volume_limits(volume))

    @property
    def labels_shape(self) -> tuple[int, ...]:
        """The shape of labels of this image: its planes, then ``(Y, X)``."""
        return self.volume.planes + self.volume.plane_shape

    def estimated_diameter(self) -> float | None:
        """The objects' diameter, estimated once for the whole volume (see
        :func:`~napari_sam.volume.stack.volume_diameter`); slow the first time."""
        if not self._estimate:
            self._estimate.append(volume_diameter(self.volume, self.limits))
        return self._estimate[0]

    def noise(self) -> float:
        """The planes' pixel noise over their objects' contrast, measured once for the whole
        volume (:func:`~napari_sam.volume.stack.volume_noise`), as for a stack."""
        if not self._noise:
            self._noise.append(volume_noise(self.volume, self.limits))
        return self._noise[0]

    def plane_index(self, position) -> tuple[int, ...]:
        """The slice shown at a viewer position in data coordinates (one value per layer axis)."""
        position = np.asarray(position, dtype=float)[: len(self.volume.planes)]
        index = np.clip(np.round(position).astype(int), 0, np.array(self.volume.planes) - 1)
        return tuple(int(i) for i in index)

    def neighbours(self, index: tuple[int, ...], count: int) -> list[tuple[int, ...]]:
        """Up to ``count`` slices on each side of ``index`` along the last slice axis (z),
        nearest first."""
        if not index or count <= 0:
            return []
        last = self.volume.planes[-1]
        steps = [s for d in range(1, count + 1) for s in (d, -d)]
        return [index[:-1] + (index[-1] + s,) for s in steps if 0 <= index[-1] + s < last]


class Session:
    """The model and embeddings shared by the widgets of one viewer.

    Parameters
    ----------
    max_slices : int
        Embedded slices kept in memory (least recently used go first; the disk cache, when
        set, keeps everything).
    """

    _by_viewer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    #: Emitted with the new :class:`ModelSettings` after each change, from the thread that
    #: made it (a worker's too: connect Qt widgets through a queued Qt signal).
    changed = Signal(object)

    def __init__(self, max_slices: int = 8) -> None:
        self.lock = threading.RLock()
        self.settings = ModelSettings()
        self.max_slices = max_slices
        self._model = None
        self._model_key: tuple | None = None  # (model, checkpoint, device) it was loaded with
        self._store: EmbeddingStore | None = None
        self._slices: OrderedDict[tuple, Segmenter] = OrderedDict()
        self._sources: dict[int, ImageSource] = {}

    @classmethod
    def for_viewer(cls, viewer) -> Session:
        """The session of ``viewer``, created on first use."""
        session = cls._by_viewer.get(viewer)
        if session is None:
            session = cls._by_viewer[viewer] = cls()
        return session

    def configure(self, **changes) -> None:
        """Change settings (fields of :class:`ModelSettings`); embeddings made with other
        settings are dropped, the model is reloaded on next use if it changed."""
        with self.lock:
            self.settings = replace(self.settings, **changes)
            self._slices.clear()
            if self._store is not None and str(self._store.path) != str(self.settings.cache):
                self._store = None
            settings = self.settings
        self.changed.emit(settings)

    def model(self):
        """The model of the current settings, loaded once.

        Raises
        ------
        ValueError, OSError, RuntimeError
            The checkpoint does not load or the device is not available (from
            :func:`napari_sam.load_model`).
        """
        from napari_sam.models.loading import load_model

        with self.lock:
            wanted = (self.settings.model, self.settings.checkpoint, self.settings.device)
            if self._model is None or self._model_key != wanted:
                self._model = None  # a failed load must not leave the old model in use
                self._slices.clear()
                name = None if self.settings.checkpoint else self.settings.model
                self._model = load_model(name, self.settings.checkpoint, self.settings.device)
                self._model_key = wanted
            return self._model

    def use_checkpoint(self, path) -> None:
        """Make a checkpoint file (e.g. one just fine-tuned) the session's model, loaded now;
        the previous settings stay when it does not load (the error is raised)."""
        with self.lock:
            previous = self.settings
            self.configure(checkpoint=str(path))
            try:
                self.model()
            except Exception:
                self.configure(**previous.__dict__)
                raise

    def source(self, layer) -> ImageSource:
        """The layer as an :class:`ImageSource`, made once per layer data (its intensity limits
        come from a sample of the whole volume, so that every slice is normalised alike)."""
        cached = self._sources.get(id(layer))
        if cached is None or cached.volume.data is not _level0(layer):
            cached = self._sources[id(layer)] = ImageSource.from_layer(layer)
        return cached

    def diameter(self, source: ImageSource) -> float | None:
        """The object diameter for ``source``: the setting, or one estimate per image layer
        (:func:`~napari_sam.volume.stack.volume_diameter`) when it is "auto" and the model has a
        preferred size."""
        setting = self.settings.diameter
        if not (isinstance(setting, str) and setting == AUTO):
            return setting
        spec = MODELS.get(self.model().name or "")
        return None if spec is None or spec.diameter is None else source.estimated_diameter()

    def segmenter(self, source: ImageSource, index: tuple[int, ...]) -> Segmenter:
        """The one path (:class:`~napari_sam.Segmenter`) set to one slice; embedded tiles are
        kept for the next call."""
        with self.lock:
            model = self.model()
            diameter = self.diameter(source)
            key = (id(source.volume.data), source.volume.shape, index, str(source.limits), diameter)
            segmenter = self._slices.pop(key, None)
            if segmenter is None:
                spec = MODELS.get(model.name or "")
                limited = spec is not None and enlargement_limited(diameter, spec.diameter,
                                                                   spec.max_enlargement)
                segmenter = Segmenter(
                    model, diameter=diameter, tile=self.settings.tile, halo=self.settings.halo,
                    store=self._embedding_store(), estimated=self.settings.diameter == AUTO,
                    noise=source.noise() if limited else None)
                segmenter.set_image(source.volume.plane(index), limits=source.limits)
            self._slices[key] = segmenter
            while len(self._slices) > self.max_slices:
                self._slices.popitem(last=False)
            return segmenter

    def predict(self, source: ImageSource, index: tuple[int, ...], **prompts):
        """Masks for prompts in one slice (see :meth:`~napari_sam.Segmenter.predict`),
        embedding the tiles it needs first."""
        with self.lock:
            return self.segmenter(source, index).predict(**prompts)

    def embed(self, source: ImageSource, index: tuple[int, ...], should_stop=None) -> int:
        """Embed every tile of a slice now (for a prompt later); returns tiles computed.

        The lock is released between tiles, so that a prompt on another slice gets its turn.
        """
        computed = 0
        with self.lock:
            segmenter = self.segmenter(source, index)
            tiles = segmenter.tiles
        for tile in tiles:
            if should_stop is not None and should_stop():
                break
            with self.lock:
                computed += segmenter.embed_tile(tile)
        return computed

    def _embedding_store(self) -> EmbeddingStore | None:
        cache = self.settings.cache
        if cache and self._store is None:
            self._store = EmbeddingStore(cache)
        return self._store if cache else None
