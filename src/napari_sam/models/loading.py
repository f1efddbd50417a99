"""``load_model``: a ready-to-use SAM from a registry name and/or a checkpoint file."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from napari_sam.models.instance_decoder import InstanceDecoder
from napari_sam.models.registry import DEFAULT_MODEL, MODELS
from napari_sam.models.sam import Sam
from napari_sam.models.weights import (
    architectures,
    check_shapes,
    closest_architecture,
    expected_shapes,
    fetch,
    identify,
    load_instance_decoder,
    read_decoder_state,
    read_state_dict,
)

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA, then MPS, then CPU, whichever is available first.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"``, or anything :class:`torch.device` accepts (``"cpu"``, ``"cuda:1"``, ...).
    """
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def weights_path(name: str) -> Path:
    """Local file of the weights of registry model ``name``: shipped, cached or downloaded."""
    spec = MODELS[name]
    if spec.packaged is None:
        return fetch(spec.url, spec.known_hash, fname=_cached_name(spec.url, name))
    return _packaged(spec.packaged, f"the weights of {name!r}")


def _packaged(file: str, what: str) -> Path:
    """A weights file shipped inside the package."""
    path = Path(str(resources.files("napari_sam") / "weights" / file))
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} ({file}) are missing from this installation of napari-sam: reinstall it, "
            "or pass another model name or a checkpoint file"
        )
    return path


def load_model(
    name: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    *,
    precision: str = "float32",
) -> Sam:
    """Build a SAM and load its weights.

    Parameters
    ----------
    name : str, optional
        Model from the registry: ``"nuclei_s"`` (shipped, the default), ``"vit_b"``,
        ``"vit_l"``, ``"vit_h"`` or ``"vit_t"``. Without ``checkpoint``, official weights are
        downloaded once into the cache (see :func:`napari_sam.models.weights.cache_dir`).
        Without ``name``, the architecture is recognised from ``checkpoint``, and with neither,
        the shipped default model is used.
    checkpoint : path, optional
        A local checkpoint file in the official layout; always used when given.
    device : str or torch.device
        ``"auto"`` picks CUDA, then MPS, then CPU.
    precision : {"float32", "bfloat16", "float16"}
        Weight and compute type. Reduced precision is meant for GPUs; results then differ
        slightly from the float32 reference.

    Returns
    -------
    Sam
        In evaluation mode, on ``device``.

    Examples
    --------
    >>> model = load_model("vit_t")  # doctest: +SKIP
    >>> model = load_model(checkpoint="sam_vit_b_01ec64.pth", device="cpu")  # doctest: +SKIP
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if name is not None and name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if checkpoint is not None:
        state_dict = read_state_dict(checkpoint)
        source = f"checkpoint {os.fspath(checkpoint)!r}"
        if name is None:
            name = identify(state_dict)
            if name is None:
                raise ValueError(_unknown_architecture(state_dict, source))
    else:
        name = name or DEFAULT_MODEL
        path = weights_path(name)
        state_dict = read_state_dict(path)
        source = f"weights file {str(path)!r} of {name!r}"

    check_shapes(state_dict, expected_shapes(name), name=name, source=source)  # before building
    model = MODELS[name].build()
    model.load_state_dict(state_dict, strict=True)
    model.name = name
    return model.to(device=resolve_device(device), dtype=PRECISIONS[precision]).eval()


def _unknown_architecture(state_dict: dict[str, torch.Tensor], source: str) -> str:
    """Why weights fit no registry architecture: the nearest one and how they differ from it."""
    known = f"{source} matches none of the known architectures ({', '.join(architectures())})"
    near, shared, details = closest_architecture(state_dict)
    if 2 * shared < len(state_dict):
        example = next(iter(state_dict))
        return (f"{known}: it is not a SAM checkpoint, or one of an architecture napari-sam does "
                f"not know (the closest, {near!r}, has only {shared} of its {len(state_dict)} "
                f"tensors; its first is {example!r})")
    return (f"{known}; it is closest to {near!r}, but differs from it ({details}): is it damaged, "
            f"or were keys renamed? If it is a {near!r} checkpoint, fix those keys")


def load_decoder(model: Sam, checkpoint: str | os.PathLike | None = None, *,
                 image_statistics: bool = True) -> InstanceDecoder:
    """The instance decoder (AIS) of a loaded model, from a file or from the registry.

    Parameters
    ----------
    model : Sam
        A model from :func:`load_model`; its decoder reads this model's image embeddings.
    checkpoint : path, optional
        micro-sam's decoder file, or one of its checkpoints with a ``"decoder_state"`` inside.
        By default the decoder of the registry model ``model.name``: shipped in the package
        (``nuclei_s``), or published with it (micro-sam's, downloaded once into the cache).
    image_statistics : bool
        Normalisation variant, see :class:`~napari_sam.models.instance_decoder.InstanceDecoder`.

    Returns
    -------
    InstanceDecoder
        In evaluation mode, on the model's device and in its precision.

    Raises
    ------
    ValueError
        The model has no published decoder and no ``checkpoint`` is given, or the file holds no
        decoder for this model (the message says what it holds).

    Examples
    --------
    >>> model = load_model("vit_b_lm")  # doctest: +SKIP
    >>> decoder = load_decoder(model)  # doctest: +SKIP
    """
    if checkpoint is None:
        spec = MODELS.get(getattr(model, "name", None) or "")
        if spec is not None and spec.decoder_packaged is not None:
            path = _packaged(spec.decoder_packaged, f"the instance decoder of {spec.name!r}")
        elif spec is not None and spec.decoder_url is not None:
            path = fetch(spec.decoder_url, spec.decoder_hash,
                         fname=_cached_name(spec.decoder_url, f"{spec.name}_decoder"))
        else:
            with_decoder = [name for name, other in MODELS.items()
                            if other.decoder_url or other.decoder_packaged]
            raise ValueError(
                f"the model {getattr(model, 'name', None)!r} has no instance decoder: pass a "
                f"decoder file (micro-sam's), or load a model that has one ({', '.join(with_decoder)})"
            )
        source = f"the instance decoder of {spec.name!r} ({str(path)!r})"
    else:
        path, source = checkpoint, f"decoder checkpoint {os.fspath(checkpoint)!r}"
    return load_instance_decoder(model, read_decoder_state(path), source=source,
                                 image_statistics=image_statistics)


def _cached_name(url: str, name: str) -> str:
    """The cache's name for a download: the file's own for Meta's and MobileSAM's (as cached
    before), the model's for files whose names repeat across models (micro-sam's ``vit_b.pt``)."""
    file = url.rsplit("/", 1)[-1]
    return file if file.startswith(("sam_", "mobile_sam")) else f"{name}.pt"
