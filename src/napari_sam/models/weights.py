"""Checkpoints: download official weights, read files safely, and refuse the wrong ones."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from numbers import Number

import torch

from napari_sam.models.registry import MODELS
from napari_sam.models.sam import Sam

CACHE_ENV = "NAPARI_SAM_CACHE"


def cache_dir() -> Path:
    """Folder for downloaded checkpoints: ``$NAPARI_SAM_CACHE`` or the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-sam")) / "checkpoints"


def fetch(url: str, sha256: str, *, folder: Path | None = None) -> Path:
    """Download ``url`` into the cache unless a file with the right hash is already there.

    Parameters
    ----------
    url : str
        Address of the file.
    sha256 : str
        Expected SHA-256 of the file; a download that does not match it is deleted.
    folder : Path, optional
        Where to keep the file; :func:`cache_dir` by default.

    Returns
    -------
    Path
        The local file. With a cached, verified file the network is never touched.
    """
    import pooch

    folder = Path(folder) if folder is not None else cache_dir()
    path = pooch.retrieve(
        url,
        known_hash=f"sha256:{sha256}",
        fname=url.rsplit("/", 1)[-1],
        path=folder,
        progressbar=True,  # tqdm is a dependency
    )
    return Path(path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a state dict without executing code from it.

    Accepts a plain state dict (the official layout) or one wrapped under ``"model"`` or
    ``"state_dict"``.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not a PyTorch checkpoint, is truncated, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for broken files
        raise ValueError(
            f"{str(path)!r} is not a readable PyTorch checkpoint (is it truncated, or another kind "
            f"of file?): {error}. Pass the .pth/.pt file of a SAM model, e.g. sam_vit_b_01ec64.pth"
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not any(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(
            f"{str(path)!r} holds a {type(data).__name__}, not a state dict of tensors: pass the "
            "checkpoint file of a SAM model"
        )
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


class _ShapesOnly(torch.overrides.TorchFunctionMode):
    """Skip the initialisation ops while a model is built on the meta device for its shapes.

    On the meta device torch runs some ops (random draws, scalar products) as Python
    decompositions that import torch._dynamo, which imports triton; triton's LLVM crashes a
    process that already holds a Mesa OpenGL context (napari's canvas). Building a model needs
    none of their values: random tensors become empty ones, in-place initialisation is skipped,
    and a product with a number keeps its tensor's shape.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("randn", "rand"):
            return torch.empty(*args, dtype=kwargs.get("dtype"), device=kwargs.get("device"))
        if name.endswith("_") and not name.startswith("_"):  # in place: initialisation
            return args[0] if args else kwargs["tensor"]
        if name in ("mul", "__mul__", "__rmul__") and any(isinstance(a, Number) for a in args):
            return next(a for a in args if isinstance(a, torch.Tensor))
        return func(*args, **kwargs)


@cache
def expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the state dict of registry model ``name`` (built without memory)."""
    with torch.device("meta"), _ShapesOnly():
        model = MODELS[name].build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def identify(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the registry architecture whose keys and shapes ``state_dict`` has, if any."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in MODELS:
        if shapes == expected_shapes(name):
            return name
    return None


def check_shapes(
    state_dict: Mapping[str, torch.Tensor],
    wanted: Mapping[str, tuple[int, ...]],
    *,
    name: str,
    source: str,
) -> None:
    """Refuse weights whose keys or shapes differ from ``wanted``, explaining the mismatch.

    Parameters
    ----------
    state_dict : mapping
        Weights, e.g. from :func:`read_state_dict`.
    wanted : mapping
        Keys and shapes of the architecture, e.g. :func:`expected_shapes` of ``name``.
    name : str
        Architecture name, used in messages.
    source : str
        Where the weights come from, used in messages.

    Raises
    ------
    ValueError
        Keys or shapes differ; names the architecture the weights belong to when it is known.
    """
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    if found == dict(wanted):
        return
    other = identify(state_dict)
    if other is not None:
        raise ValueError(
            f"{source} is a {other!r} checkpoint, not {name!r}: pass name={other!r} "
            f"(napari-sam --model {other})"
        )
    missing = sorted(set(wanted) - set(found))
    unexpected = sorted(set(found) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(found) if wanted[k] != found[k])
    details = "; ".join(
        f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
        if keys
    )
    raise ValueError(
        f"{source} does not fit the {name!r} architecture ({details}). Known architectures: "
        f"{', '.join(MODELS)}; pass the matching name, or a checkpoint made for {name!r}"
    )


def load_weights(model: Sam, state_dict: Mapping[str, torch.Tensor], *, name: str, source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, explaining any mismatch (see :func:`check_shapes`)."""
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_shapes(state_dict, wanted, name=name, source=source)
    model.load_state_dict(state_dict, strict=True)


def automatic_settings(model: str | None = None, checkpoint=None, **overrides) -> dict:
    """Automatic-segmentation settings that suit a model (``ModelSpec.automatic``), with
    ``overrides`` on top; the model is named, recognised from ``checkpoint``, or the default."""
    from napari_sam.models.registry import DEFAULT_MODEL

    name = model or (identify(read_state_dict(checkpoint)) if checkpoint else DEFAULT_MODEL)
    settings = dict(MODELS[name].automatic) if name in MODELS else {}
    settings.update(overrides)
    return settings
