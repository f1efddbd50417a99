"""Sample data for napari's File > Open Sample menu, from the project's synthetic generator."""

from __future__ import annotations

from napari_sam.synthetic import synthetic_nuclei


def nuclei_3d() -> list[tuple]:
    """A synthetic fluorescence stack of nuclei, 24 × 256 × 256, with its true labels."""
    image, labels = synthetic_nuclei((24, 256, 256), density=0.25, radius=(8, 14), seed=7)
    return [
        (image, {"name": "nuclei 3D", "scale": (2.0, 1.0, 1.0)}, "image"),
        (labels, {"name": "nuclei 3D (truth)", "scale": (2.0, 1.0, 1.0), "visible": False},
         "labels"),
    ]


def nuclei_2d() -> list[tuple]:
    """A synthetic 512 × 512 fluorescence image of nuclei, with its true labels."""
    image, labels = synthetic_nuclei((512, 512), density=0.3, radius=(7, 14), seed=3)
    return [
        (image, {"name": "nuclei 2D"}, "image"),
        (labels, {"name": "nuclei 2D (truth)", "visible": False}, "labels"),
    ]
