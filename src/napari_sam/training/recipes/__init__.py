"""Reproducible training recipes: ``python -m napari_sam.training.recipes.<name>``."""
