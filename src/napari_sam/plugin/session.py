"""What the widgets of one viewer share: the model settings, the loaded model, and the embedded
slices of image layers. No Qt here, so that it is tested and used like the rest of the core.

All model work goes through :attr:`Session.lock`: widgets call the engine from worker threads
(embedding, decoding, automatic segmentation), and one model must not run two jobs at once.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from napari_sam.engine.embeddings import EmbeddingStore
from napari_sam.models.registry import DEFAULT_MODEL
from napari_sam.volume.io import Volume
from napari_sam.volume.stack import volume_limits
from napari_sam.volume.tiling import TiledPredictor

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
    tile, halo : int, optional
        Slices larger than ``tile`` pixels are embedded tile by tile with ``halo`` of context.
        By default the tile is the model's input size and the halo an eighth of the tile: a
        model segments best at the scale it was trained at (a bigger tile is shrunk to its
        input; for nuclei_s on 1024 px slices, point mIoU 0.79 with 256 px tiles, 0.54 with
        512, 0.14 with the whole slice, measured with session 5's weights).
    cache : str, optional
        Folder of an on-disk embedding cache.
    """

    model: str = DEFAULT_MODEL
    checkpoint: str | None = None
    device: str = "auto"
    tile: int | None = None
    halo: int | None = None
    cache: str | None = None


@dataclass(frozen=True)
class ImageSource:
    """An image layer read as a volume of 2D slices (its last two axes)."""

    volume: Volume
    limits: list | None

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
        volume = Volume(data, axes, source=f"layer {layer.name!r}")
        return cls(volume, volume_limits(volume))

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

    def __init__(self, max_slices: int = 8) -> None:
        self.lock = threading.RLock()
        self.settings = ModelSettings()
        self.max_slices = max_slices
        self._model = None
        self._model_key: tuple | None = None  # (model, checkpoint, device) it was loaded with
        self._store: EmbeddingStore | None = None
        self._slices: OrderedDict[tuple, TiledPredictor] = OrderedDict()
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

    def source(self, layer) -> ImageSource:
        """The layer as an :class:`ImageSource`, made once per layer data (its intensity limits
        come from a sample of the whole volume, so that every slice is normalised alike)."""
        cached = self._sources.get(id(layer))
        if cached is None or cached.volume.data is not _level0(layer):
            cached = self._sources[id(layer)] = ImageSource.from_layer(layer)
        return cached

    def tiling(self) -> tuple[int, int]:
        """Tile and halo in pixels: the settings, or their defaults for the model."""
        tile = self.settings.tile or self.model().img_size
        return tile, tile // 8 if self.settings.halo is None else self.settings.halo

    def slice_predictor(self, source: ImageSource, index: tuple[int, ...]) -> TiledPredictor:
        """A predictor whose image is one slice; embedded tiles are kept for the next call."""
        with self.lock:
            model = self.model()
            key = (id(source.volume.data), source.volume.shape, index, str(source.limits))
            predictor = self._slices.pop(key, None)
            if predictor is None:
                tile, halo = self.tiling()
                predictor = TiledPredictor(model, tile=tile, halo=halo,
                                           store=self._embedding_store())
                predictor.set_image(source.volume.plane(index), limits=source.limits)
            self._slices[key] = predictor
            while len(self._slices) > self.max_slices:
                self._slices.popitem(last=False)
            return predictor

    def predict(self, source: ImageSource, index: tuple[int, ...], **prompts):
        """Masks for prompts in one slice (see :meth:`TiledPredictor.predict`), embedding the
        tiles it needs first."""
        with self.lock:
            return self.slice_predictor(source, index).predict(**prompts)

    def embed(self, source: ImageSource, index: tuple[int, ...], should_stop=None) -> int:
        """Embed every tile of a slice now (for a prompt later); returns tiles computed.

        The lock is released between tiles, so that a prompt on another slice gets its turn.
        """
        computed = 0
        with self.lock:
            predictor = self.slice_predictor(source, index)
            tiles = predictor.tiles
        for tile in tiles:
            if should_stop is not None and should_stop():
                break
            with self.lock:
                computed += predictor.embed_tile(tile)
        return computed

    def _embedding_store(self) -> EmbeddingStore | None:
        cache = self.settings.cache
        if cache and self._store is None:
            self._store = EmbeddingStore(cache)
        return self._store if cache else None
