"""napari-sam: Segment Anything for scientific imaging.

The engine runs without napari: load a model, embed an image, segment with prompts.

>>> import napari_sam
>>> model = napari_sam.load_model("vit_t")  # doctest: +SKIP
>>> predictor = napari_sam.Predictor(model)  # doctest: +SKIP
>>> labels = napari_sam.AutomaticMaskGenerator(model).generate_labels(image)  # doctest: +SKIP
"""

from napari_sam.engine.amg import AutomaticMaskGenerator
from napari_sam.engine.embeddings import Embedding
from napari_sam.engine.predictor import Predictor
from napari_sam.engine.segmenter import Segmenter, segment, segment_all
from napari_sam.engine.selection import select_mask
from napari_sam.engine.tracking import PlaneTracker
from napari_sam.models.loading import load_decoder, load_model, resolve_device
from napari_sam.models.registry import MODELS

__all__ = [
    "MODELS",
    "AutomaticMaskGenerator",
    "Embedding",
    "PlaneTracker",
    "Predictor",
    "Segmenter",
    "load_decoder",
    "load_model",
    "resolve_device",
    "segment",
    "segment_all",
    "select_mask",
]
__version__ = "0.1.0.dev0"
