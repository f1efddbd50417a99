"""``load_model``: a ready-to-use SAM from a registry name and/or a checkpoint file."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from napari_sam.models.registry import DEFAULT_MODEL, MODELS
from napari_sam.models.sam import Sam
from napari_sam.models.weights import (
    check_shapes,
    closest_architecture,
    expected_shapes,
    fetch,
    identify,
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
        return fetch(spec.url, spec.sha256)
    path = Path(str(resources.files("napari_sam") / "weights" / spec.packaged))
    if not path.is_file():
        raise FileNotFoundError(
            f"the weights of {name!r} ({spec.packaged}) are missing from this installation of "
            "napari-sam: reinstall it, or pass another model name or a checkpoint file"
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
    known = f"{source} matches none of the known architectures ({', '.join(MODELS)})"
    near, shared, details = closest_architecture(state_dict)
    if 2 * shared < len(state_dict):
        example = next(iter(state_dict))
        return (f"{known}: it is not a SAM checkpoint, or one of an architecture napari-sam does "
                f"not know (the closest, {near!r}, has only {shared} of its {len(state_dict)} "
                f"tensors; its first is {example!r})")
    return (f"{known}; it is closest to {near!r}, but differs from it ({details}): is it damaged, "
            f"or were keys renamed? If it is a {near!r} checkpoint, fix those keys")
