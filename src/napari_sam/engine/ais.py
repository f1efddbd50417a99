"""Automatic instance segmentation (AIS) of one 2D image: embedding, instance decoder, labels.

The image is embedded as for prompts (:class:`~napari_sam.Predictor`: Meta's resize of the
longer side to the model input, then padding), the instance decoder
(:class:`~napari_sam.models.instance_decoder.InstanceDecoder`) turns the embedding into three
maps, which are mapped to the image's pixels as SAM maps mask logits, and
:func:`~napari_sam.engine.instances.labels_from_maps` turns them into labels. The labels equal
micro-sam's ``InstanceSegmentationWithDecoder`` (1.8.14) on the same weights
(``tests/test_ais.py``). The one path (:meth:`napari_sam.Segmenter.segment_all` with
``mode="ais"``) tiles larger planes, stitches the maps and labels them once.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from napari_sam.engine.checks import check_names
from napari_sam.engine.denormals import flush_denormals
from napari_sam.engine.embeddings import Embedding
from napari_sam.engine.instances import labels_from_maps
from napari_sam.engine.predictor import Predictor

# The settings of labels_from_maps (all but the three maps), micro-sam's names and defaults.
SETTINGS = tuple(inspect.signature(labels_from_maps).parameters)[3:]


@flush_denormals
@torch.inference_mode()
def decoder_maps(model, decoder, embedding: Embedding) -> np.ndarray:
    """The instance decoder's maps of an embedded image, at the image's pixels.

    Parameters
    ----------
    model : Sam
        The model that computed ``embedding``.
    decoder : InstanceDecoder
        An instance decoder for ``model``'s embeddings
        (:func:`napari_sam.load_decoder`).
    embedding : Embedding
        One image's embedding (:meth:`napari_sam.Predictor.set_image`).

    Returns
    -------
    (3, H, W) float32 array
        Foreground probability, distance to the object's centre and to its boundary, for the
        ``(H, W)`` image the embedding was computed from.
    """
    features = embedding.features.to(device=model.device, dtype=model.dtype)
    maps = model.postprocess_masks(decoder(features), embedding.input_size,
                                   embedding.original_size)
    return maps[0].float().cpu().numpy()


def check_settings(settings: dict) -> dict:
    """``settings`` for :func:`~napari_sam.engine.instances.labels_from_maps`, checked before
    any image is embedded: an unknown name or a bad value raises the error that
    ``labels_from_maps`` would raise after all the work."""
    check_names(settings, SETTINGS, "AIS")
    labels_from_maps(*np.zeros((3, 0, 0), np.float32), **settings)  # checks the values
    return settings


class InstanceGenerator:
    """Label every object of one 2D image in one pass of an instance decoder (AIS).

    The counterpart of :class:`~napari_sam.AutomaticMaskGenerator` for models with an instance
    decoder, and of micro-sam's ``InstanceSegmentationWithDecoder``.

    Parameters
    ----------
    model : Sam
        A model from :func:`napari_sam.load_model`.
    decoder : InstanceDecoder
        Its instance decoder (:func:`napari_sam.load_decoder`).
    enlarge : bool
        Images smaller than the model input are enlarged to it (Meta's and micro-sam's
        preprocessing, the default), or only padded (see :class:`~napari_sam.Predictor`).

    Examples
    --------
    >>> model = load_model("vit_t_lm")  # doctest: +SKIP
    >>> generator = InstanceGenerator(model, load_decoder(model))  # doctest: +SKIP
    >>> labels = generator.generate(image, min_size=25)  # doctest: +SKIP
    """

    def __init__(self, model, decoder, *, enlarge: bool = True) -> None:
        self.predictor = Predictor(model, enlarge=enlarge)
        self.decoder = decoder.eval()

    def maps(self, image: np.ndarray | None = None, *, embedding: Embedding | None = None,
             channel_axis: int | None = None, limits=None) -> np.ndarray:
        """The decoder's ``(3, H, W)`` maps of ``image``, or of an image embedded before.

        Parameters
        ----------
        image : (H, W[, C]) array, optional
            Any 2D image (see :meth:`napari_sam.Predictor.set_image`).
        embedding : Embedding, optional
            The image's embedding, computed before (by a :class:`~napari_sam.Predictor` of the
            same model, or read from an embedding store): nothing is embedded again.
        channel_axis, limits
            As in :meth:`napari_sam.Predictor.set_image`.

        Raises
        ------
        ValueError
            Neither or both of ``image`` and ``embedding`` given.
        """
        if (image is None) == (embedding is None):
            raise ValueError("give either the image or its embedding (embedding=...), not "
                             f"{'both' if embedding is not None else 'neither'}")
        if embedding is None:
            embedding = self.predictor.set_image(image, channel_axis=channel_axis, limits=limits)
        return decoder_maps(self.predictor.model, self.decoder, embedding)

    def generate(self, image: np.ndarray | None = None, *, embedding: Embedding | None = None,
                 channel_axis: int | None = None, limits=None, **settings) -> np.ndarray:
        """A label image of every object of ``image`` (or of an image embedded before).

        Parameters
        ----------
        image, embedding, channel_axis, limits
            As in :meth:`maps`.
        **settings
            Thresholds, smoothing and ``min_size`` of
            :func:`~napari_sam.engine.instances.labels_from_maps` (micro-sam's defaults).

        Returns
        -------
        (H, W) uint32 array
            0 is background, objects are 1..n.
        """
        check_settings(settings)
        maps = self.maps(image, embedding=embedding, channel_axis=channel_axis, limits=limits)
        return labels_from_maps(*maps, **settings)
