"""Synthetic fluorescence images of nuclei with exact instance labels: the plugin's sample data,
the training data of the shipped model, and the test images of the suite.

A leaf of the package: it imports nothing from the rest of napari_sam, so every layer may use it.
"""

from napari_sam.synthetic.nuclei import SyntheticNuclei, synthetic_dataset, synthetic_nuclei

__all__ = ["SyntheticNuclei", "synthetic_dataset", "synthetic_nuclei"]
