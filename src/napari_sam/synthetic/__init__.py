"""Synthetic fluorescence images of nuclei with exact instance labels: the plugin's sample data,
the training data of the shipped model, and the test images of the suite.

:func:`synthetic_nuclei` makes one image and describes the model of the generator;
:func:`synthetic_dataset` and :class:`SyntheticNuclei` draw varied images from it;
:func:`confocal_stack` makes a confocal-like z stack of its nuclei.

A leaf of the package: it imports nothing from the rest of napari_sam, so every layer may use it.
"""

from napari_sam.synthetic.confocal import confocal_stack
from napari_sam.synthetic.dataset import SyntheticNuclei, synthetic_dataset
from napari_sam.synthetic.nuclei import synthetic_nuclei

__all__ = ["SyntheticNuclei", "confocal_stack", "synthetic_dataset", "synthetic_nuclei"]
