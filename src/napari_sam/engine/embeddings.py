"""Image embeddings: what the encoder computed for one image, the sizes to map back, and an
on-disk store of them."""

from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Embedding:
    """The encoder's output for one 2D image.

    Attributes
    ----------
    features : (1, C, h, w) tensor
        Image embedding.
    original_size : tuple of int
        ``(H, W)`` of the image the user gave.
    input_size : tuple of int
        ``(H', W')`` of the image after resizing to the model input, before padding.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's weights (names, shapes, types, values): equal weights, equal hash.

    Computed once per model object (hashing vit_h's 2.5 GB takes a few seconds).
    """
    cached = _FINGERPRINTS.get(model)
    if cached is None:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        cached = _FINGERPRINTS[model] = digest.hexdigest()[:32]
    return cached


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class EmbeddingStore:
    """Embeddings cached on disk in a zarr group, so that no image is embedded twice.

    An entry's key hashes the model's weights and the exact 8-bit RGB image the encoder saw, so
    it changes with the model, the checkpoint, the intensity normalisation, the tile and the
    pixels, and with nothing else: a second run over a stack computes nothing, and a changed
    slice (or tile) is recomputed alone. Entries are written completely before they are marked
    valid, so a run killed while writing leaves no half entry behind. Processes may share a
    store: each entry is its own subgroup.

    Parameters
    ----------
    path : str or Path
        The zarr group (created if missing).

    Attributes
    ----------
    hits, misses : int
        Entries found and computed by this object.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import zarr

        self.path = Path(path)
        try:
            self._root = zarr.open_group(str(self.path), mode="a")
        except (OSError, ValueError) as error:
            raise OSError(f"cannot use {str(self.path)!r} as an embedding cache: {error}") from error
        self.hits = self.misses = 0

    def embed(self, predictor, rgb: np.ndarray) -> Embedding:
        """Give ``predictor`` the embedding of ``rgb`` (``(H, W, 3)`` uint8), from the store if
        it is there, else by encoding it (and storing the result)."""
        key = self.key(predictor.model, rgb)
        embedding = self.get(key, predictor.model.device)
        if embedding is None:
            self.misses += 1
            embedding = predictor.set_image(rgb)
            self.put(key, embedding)
        else:
            self.hits += 1
            predictor.set_embedding(embedding)
        return embedding

    @staticmethod
    def key(model: torch.nn.Module, rgb: np.ndarray) -> str:
        digest = hashlib.sha256(model_fingerprint(model).encode())
        digest.update(str(rgb.shape).encode())
        digest.update(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
        return digest.hexdigest()[:40]

    def get(self, key: str, device: torch.device | str = "cpu") -> Embedding | None:
        """The stored embedding of ``key``, or None."""
        if key not in self._root:
            return None
        entry = self._root[key]
        if not entry.attrs.get("complete"):
            return None
        features = torch.from_numpy(np.asarray(entry["features"][...])).to(device)
        return Embedding(features=features, original_size=tuple(entry.attrs["original_size"]),
                         input_size=tuple(entry.attrs["input_size"]))

    def put(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key``."""
        features = embedding.features.detach().float().cpu().numpy()
        entry = self._root.require_group(key)
        entry.create_array("features", data=features, chunks=features.shape, overwrite=True)
        entry.attrs.update(original_size=list(embedding.original_size),
                           input_size=list(embedding.input_size), complete=True)

    def __len__(self) -> int:
        return sum(1 for _ in self._root.group_keys())
