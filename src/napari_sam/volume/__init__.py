"""Volumes on disk (zarr, OME-zarr, tiff) and in memory, read lazily one 2D plane at a time."""

from napari_sam.volume.io import Volume, intensity_limits, open_volume

__all__ = ["Volume", "intensity_limits", "open_volume"]
