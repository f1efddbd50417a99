"""Image embeddings: what the encoder computed for one image, the sizes to map back, and an
on-disk store of them."""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
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
    high_res : tuple of tensors
        Finer feature levels that the mask decoder also reads (SAM 2: two, at 4x and 2x the
        embedding's resolution); empty for SAM.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res: tuple[torch.Tensor, ...] = ()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's weights (names, shapes, types, values): equal weights, equal hash.

    Hashing vit_h's 2.5 GB takes a few seconds, so the hash is kept with the model and reused
    while its weights stay as they were: it is computed again when any parameter or buffer has
    been changed in place (an optimiser step, ``load_state_dict``, ``add_``) or replaced (a
    conversion to another type or device), which torch records in each tensor's version
    counter and storage.
    """
    state = _weights_state(model)
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    fingerprint = digest.hexdigest()[:32]
    _FINGERPRINTS[model] = (state, fingerprint)
    return fingerprint


def _weights_state(model: torch.nn.Module) -> tuple:
    """What changes whenever a weight of ``model`` may have changed: per tensor its storage,
    in-place version counter, type and shape."""
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return tuple((name, t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
                 for name, t in tensors)


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class EmbeddingStore:
    """Embeddings cached on disk in a zarr group, so that no image is embedded twice.

    An entry's key hashes the model's weights and the exact 8-bit RGB image the encoder saw, so
    it changes with the model, the checkpoint, the intensity normalisation, the tile and the
    pixels, and with nothing else: a second run over a stack computes nothing, and a changed
    slice (or tile) is recomputed alone. Entries are written completely before they are marked
    valid, so a run killed while writing leaves no half entry behind. Processes may share a
    store: each entry is its own subgroup.

    Each entry records its key and the shape and SHA-256 of its features, and is checked
    against them when read: an entry that is damaged (a chunk deleted, corrupt or copied from
    another entry, unreadable metadata) or moved under another key is never used; it is
    recomputed and overwritten, with a warning naming the store and the key.

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
        model = predictor.model
        key = self.key(model, rgb, predictor.long_side(rgb.shape[:2]))
        embedding = self.get(key, model.device, dtype=model.dtype)
        if embedding is None:
            self.misses += 1
            embedding = predictor.set_image(rgb)
            self.put(key, embedding)
        else:
            self.hits += 1
            predictor.set_embedding(embedding)
        return embedding

    @staticmethod
    def key(model: torch.nn.Module, rgb: np.ndarray, long_side: int | None = None) -> str:
        """The entry of ``rgb`` embedded by ``model``, resized so that its longer side is
        ``long_side`` (the model input by default) before padding."""
        digest = hashlib.sha256(model_fingerprint(model).encode())
        digest.update(str((rgb.shape, long_side or model.img_size)).encode())
        digest.update(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
        return digest.hexdigest()[:40]

    def get(self, key: str, device: torch.device | str = "cpu", *,
            dtype: torch.dtype = torch.float32) -> Embedding | None:
        """The stored embedding of ``key`` as ``dtype`` on ``device``, or None.

        None also when the entry is unfinished (its writer was stopped or is still writing), or
        damaged: then with a warning, and the entry is overwritten by the next :meth:`put`.
        """
        try:
            if key not in self._root:
                return None
            entry = self._root[key]
            attrs = dict(entry.attrs)
            if not attrs.get("complete"):
                return None
            problem = _check_attrs(attrs, key)
            if problem is None:
                features = np.asarray(entry["features"][...])
                problem = _check_features(features, attrs)
            levels = []
            for i, (shape, sha) in enumerate(zip(attrs.get("high_res_shapes", []),
                                                 attrs.get("high_res_sha256", []), strict=True)):
                if problem is None:
                    levels.append(np.asarray(entry[f"high_res_{i}"][...]))
                    problem = _check_features(levels[-1], {"shape": shape, "sha256": sha})
        except Exception as error:  # noqa: BLE001 - zarr and its codecs raise many types
            problem = f"it cannot be read ({type(error).__name__}: {error})"
        if problem is not None:
            warnings.warn(
                f"embedding cache {str(self.path)!r}: entry {key!r} is damaged, {problem}; "
                "computing it again and overwriting it",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(device=device, dtype=dtype)

        return Embedding(features=tensor(features), original_size=tuple(attrs["original_size"]),
                         input_size=tuple(attrs["input_size"]),
                         high_res=tuple(tensor(level) for level in levels))

    def put(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key``, replacing whatever was there."""
        def array(tensor: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().float().cpu().numpy())

        features = array(embedding.features)
        levels = [array(level) for level in embedding.high_res]
        entry = self._root.create_group(key, overwrite=True)
        entry.create_array("features", data=features, chunks=features.shape)
        for i, level in enumerate(levels):
            entry.create_array(f"high_res_{i}", data=level, chunks=level.shape)
        entry.attrs.update(key=key, shape=list(features.shape), sha256=_sha256(features),
                           high_res_shapes=[list(level.shape) for level in levels],
                           high_res_sha256=[_sha256(level) for level in levels],
                           original_size=list(embedding.original_size),
                           input_size=list(embedding.input_size), complete=True)

    def __len__(self) -> int:
        return sum(1 for _ in self._root.group_keys())


def _sha256(features: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(features, dtype=np.float32).tobytes()).hexdigest()


def _check_attrs(attrs: dict, key: str) -> str | None:
    """What is wrong with a complete entry's metadata, or None."""
    # Entries written before checksums were recorded cannot prove they are whole: they are
    # treated as damaged and recomputed once.
    if "sha256" not in attrs or "shape" not in attrs:
        return "it has no checksum (written by an older napari-sam)"
    if attrs.get("key") != key:
        return f"it holds the entry {attrs.get('key')!r} (copied or renamed)"
    return None


def _check_features(features: np.ndarray, attrs: dict) -> str | None:
    """What is wrong with an entry's features, or None."""
    if list(features.shape) != list(attrs["shape"]) or features.dtype != np.float32:
        return (f"its features are {features.dtype} of shape {features.shape}, "
                f"not float32 of shape {tuple(attrs['shape'])}")
    if _sha256(features) != attrs["sha256"]:
        return "its features do not match their checksum (a chunk is missing, corrupt or replaced)"
    return None
