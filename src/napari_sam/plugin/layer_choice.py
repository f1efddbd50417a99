"""A combo box of a viewer's layers of one type that follows the layer list."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox


class LayerChoice(QComboBox):
    """Choose a layer of ``kind`` by name; optionally a first entry that means "a new layer".

    Parameters
    ----------
    viewer : napari.Viewer
    kind : type
        A napari layer class, e.g. ``napari.layers.Image``.
    new : str, optional
        Text of an entry for "make a new layer" (then :meth:`layer` gives None for it).
    exclude : callable, optional
        ``exclude(layer)`` true for layers not to offer (the plugin's own preview layers).
    """

    def __init__(self, viewer, kind, *, new: str | None = None, exclude=None) -> None:
        super().__init__()
        self.viewer, self.kind, self.new, self.exclude = viewer, kind, new, exclude
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self.refresh)
        self.refresh()

    def layers(self) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, self.kind)
                and not (self.exclude and self.exclude(layer))]

    def refresh(self, *_) -> None:
        """Rebuild the entries, keeping the current choice if it still exists."""
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        if self.new:
            self.addItem(self.new)
        self.addItems([layer.name for layer in self.layers()])
        index = self.findText(current)
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        """The chosen layer, or None (nothing to choose, or the "new layer" entry)."""
        name = self.currentText()
        return next((layer for layer in self.layers() if layer.name == name), None)

    def choose(self, layer) -> None:
        """Make ``layer`` the choice."""
        self.refresh()
        self.setCurrentText(layer.name)
