"""Embed the slice on screen, and its neighbours, in the background whenever the slice changes."""

from __future__ import annotations

import weakref

from napari.layers import Image
from qtpy.QtCore import QObject, QTimer, Signal

from napari_sam.plugin.background import CancelFlag, run_in_background
from napari_sam.plugin.layers import current_slice, describe
from napari_sam.plugin.session import LayerError, Session


class SliceEmbedder(QObject):
    """Keeps the embeddings of the shown slice ready, one per viewer.

    Scrolling through z starts one job per resting position (changes within ``delay_ms`` are
    merged); a new position cancels the job of the old one between tiles.

    Signals
    -------
    progress(done, total)
        Slices embedded by the current job.
    status(str)
        What happened, for the model panel.
    """

    progress = Signal(int, int)
    status = Signal(str)
    _by_viewer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, viewer, delay_ms: int = 150) -> None:
        super().__init__()
        self.viewer = viewer
        self.session = Session.for_viewer(viewer)
        self.layer: Image | None = None  # the interactive widget's image, else the active one
        self.neighbours = 1
        self.worker = None
        self._flag: CancelFlag | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.start)
        viewer.dims.events.current_step.connect(self.schedule)
        viewer.layers.selection.events.active.connect(self.schedule)

    @classmethod
    def for_viewer(cls, viewer) -> SliceEmbedder:
        """The embedder of ``viewer``, created on first use."""
        embedder = cls._by_viewer.get(viewer)
        if embedder is None:
            embedder = cls._by_viewer[viewer] = cls(viewer)
        return embedder

    def image_layer(self) -> Image | None:
        """The layer to embed: the chosen one, else the selected image, else the top image."""
        if self.layer is not None and self.layer in self.viewer.layers:
            return self.layer
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        return images[-1] if images else None

    def schedule(self, *_) -> None:
        """Embed the shown slice soon (after the slice stops changing)."""
        self._timer.start()

    def cancel(self) -> None:
        """Stop the running job after its current tile."""
        if self._flag is not None:
            self._flag.cancel()

    def start(self) -> None:
        """Embed the shown slice and its neighbours now, in a worker."""
        self.cancel()
        layer = self.image_layer()
        if layer is None:
            return
        try:
            source = self.session.source(layer)
            index = current_slice(self.viewer, layer, source)
        except LayerError as error:
            self.status.emit(str(error))
            return
        slices = [index, *source.neighbours(index, self.neighbours)]
        flag = self._flag = CancelFlag()
        session = self.session

        def job():
            for done, plane in enumerate(slices, start=1):
                if flag():
                    return
                computed = session.embed(source, plane, flag)
                yield done, len(slices), plane, computed, session.segmenter(source, plane).describe_scale()

        def yielded(step) -> None:
            done, total, plane, computed, scale = step
            self.progress.emit(done, total)
            how = "embedded" if computed else "ready (cached)"
            self.status.emit(f"{layer.name}, {describe(plane)}: {how} ({done}/{total}); {scale}")

        self.progress.emit(0, len(slices))
        self.worker = run_in_background(job, what=f"embedding {layer.name!r}", yielded=yielded)
