"""Checkpoints: download official weights, read files safely, and refuse the wrong ones."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from functools import cache
from numbers import Number
from pathlib import Path

import torch

from napari_sam.models.instance_decoder import InstanceDecoder
from napari_sam.models.registry import MODELS, build_instance_decoder
from napari_sam.models.sam import Sam

CACHE_ENV = "NAPARI_SAM_CACHE"


def cache_dir() -> Path:
    """Folder for downloaded checkpoints: ``$NAPARI_SAM_CACHE`` or the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-sam")) / "checkpoints"


def fetch(url: str, known_hash: str, *, fname: str | None = None,
          folder: Path | None = None) -> Path:
    """Download ``url`` into the cache unless a file with the right hash is already there.

    Parameters
    ----------
    url : str
        Address of the file.
    known_hash : str
        Expected hash as ``"sha256:<hex>"`` or ``"xxh128:<hex>"`` (how the file's publisher gives
        it); a download that does not match it is deleted.
    fname : str, optional
        Name of the cached file; the last part of ``url`` by default.
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
        known_hash=known_hash,
        fname=fname or url.rsplit("/", 1)[-1],
        path=folder,
        progressbar=True,  # tqdm is a dependency
    )
    return Path(path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a state dict without executing code from it.

    Accepts a plain state dict (the official layout), one wrapped under ``"model"`` or
    ``"state_dict"``, and micro-sam's training checkpoints (``"model_state"`` with keys under
    ``"sam."``; the instance decoder beside it is read by :func:`read_decoder_state`).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file is not a PyTorch checkpoint, is truncated, holds Python objects besides
        tensors, holds no tensors, or holds NaN or infinite weights.
    """
    path = Path(path)
    data = _load(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if isinstance(data, Mapping) and isinstance(data.get("model_state"), Mapping):
        data = {k.removeprefix("sam."): v for k, v in data["model_state"].items()}
    return _tensors(data, path)


def read_decoder_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of an instance decoder without executing code from the file: micro-sam's
    separate decoder file, or the ``"decoder_state"`` inside one of its checkpoints. They are
    checked against a model by :func:`load_instance_decoder`.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`read_state_dict`.
    """
    path = Path(path)
    data = _load(path)
    if isinstance(data, Mapping) and isinstance(data.get("decoder_state"), Mapping):
        data = data["decoder_state"]
    return _tensors(data, path)


def _load(path: Path):
    """``torch.load`` of a file, refusing pickled code, with errors that say what to do."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for broken files
        reason, advice = _why_unreadable(path, error)
        raise ValueError(
            f"{str(path)!r} is not a readable PyTorch checkpoint ({reason}): {advice}"
        ) from None


def _tensors(data, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded state dict, refusing anything else and broken weights."""
    if not isinstance(data, Mapping) or not any(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(
            f"{str(path)!r} holds a {type(data).__name__}, not a state dict of tensors: pass the "
            "checkpoint file of a SAM model"
        )
    state_dict = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    broken = [k for k, v in state_dict.items()
              if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        examples = ", ".join(broken[:3]) + (" ..." if len(broken) > 3 else "")
        raise ValueError(
            f"{str(path)!r} holds NaN or infinite values in {len(broken)} of its "
            f"{len(state_dict)} tensors ({examples}): "
            "these weights are broken (e.g. saved from a training run that diverged); use "
            "another checkpoint"
        )
    return state_dict


def _why_unreadable(path: Path, error: Exception) -> tuple[str, str]:
    """Why ``torch.load`` refused a file, and what to do: never torch's advice to load it with
    ``weights_only=False``, which would run any code the file holds."""
    with path.open("rb") as file:
        head = file.read(4)
    any_sam = "pass the .pth/.pt file of a SAM model, e.g. sam_vit_b_01ec64.pth"
    if not head:
        return "the file is empty", any_sam
    if head == b"PK\x03\x04":  # the zip archive torch.save writes
        if isinstance(error, pickle.UnpicklingError):
            found = re.findall(r"GLOBAL ([\w.]+)", str(error))
            what = f" ({', '.join(dict.fromkeys(found))})" if found else ""
            return (f"besides tensors it holds Python objects{what}, which napari-sam does not "
                    "load because that could run code from the file",
                    "save only the weights, torch.save(model.state_dict(), path), and pass "
                    "that file")
        return ("is it truncated, or damaged in transfer? Its zip archive is incomplete or corrupt",
                "download or copy it again")
    if head[:1] == b"\x80":  # a pickle: the format of torch.save before PyTorch 1.6
        return ("an old-style pickle file that cannot be read as weights alone: truncated, or "
                "holding Python objects",
                "in a trusted environment, save torch.save(model.state_dict(), path) again")
    return "it is not a PyTorch file at all, neither a zip archive nor a pickle", any_sam


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


def architectures() -> list[str]:
    """The registry names that each introduce an architecture (micro-sam's models share Meta's
    and MobileSAM's: their weights name the first model of that architecture)."""
    builders = {}
    for name, spec in MODELS.items():
        builders.setdefault(spec.build, name)
    return list(builders.values())


def identify(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the registry architecture whose keys and shapes ``state_dict`` has, if any."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in architectures():
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
    details = _differences(found, wanted)[1]
    raise ValueError(
        f"{source} does not fit the {name!r} architecture ({details}). Known architectures: "
        f"{', '.join(architectures())}; pass the matching name, or a checkpoint made for {name!r}"
    )


def closest_architecture(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, int, str]:
    """The registry architecture whose keys and shapes differ least from ``state_dict``.

    Returns
    -------
    name : str
        Registry name of that architecture.
    shared : int
        Keys of ``state_dict`` that it has, with the same shape.
    details : str
        The keys missing, unexpected and of another shape, as in :func:`check_shapes`.
    """
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    scored = []
    for name in architectures():
        wanted = expected_shapes(name)
        count, details = _differences(found, wanted)
        shared = sum(1 for k, shape in found.items() if wanted.get(k) == shape)
        scored.append((count, name, shared, details))
    _, name, shared, details = min(scored)
    return name, shared, details


def _differences(found: Mapping[str, tuple], wanted: Mapping[str, tuple]) -> tuple[int, str]:
    """How many keys differ between two key-to-shape maps, and which (a few of each kind)."""
    missing = sorted(set(wanted) - set(found))
    unexpected = sorted(set(found) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(found) if wanted[k] != found[k])
    details = "; ".join(
        f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
        if keys
    )
    return len(missing) + len(unexpected) + len(wrong), details


def load_weights(model: Sam, state_dict: Mapping[str, torch.Tensor], *, name: str, source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, explaining any mismatch (see :func:`check_shapes`)."""
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_shapes(state_dict, wanted, name=name, source=source)
    model.load_state_dict(state_dict, strict=True)


def load_instance_decoder(
    sam: Sam,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    image_statistics: bool = True,
) -> InstanceDecoder:
    """Build the instance decoder for ``sam`` and load micro-sam decoder weights into it.

    Parameters
    ----------
    sam : Sam
        The model whose image embeddings the decoder reads.
    state_dict : mapping
        micro-sam's ``decoder_state``, unchanged; either upsampling variant (interpolation, or
        transposed convolutions) is recognised from its keys, the width from its output layer.
    source : str
        Where the weights come from, used in messages.
    image_statistics : bool
        Normalisation variant, see :class:`~napari_sam.models.instance_decoder.InstanceDecoder`.

    Returns
    -------
    InstanceDecoder
        In evaluation mode, on ``sam``'s device and in its precision.

    Raises
    ------
    ValueError
        The weights are not an instance decoder for this model: a SAM checkpoint, a decoder for
        embeddings of another width, or other keys or shapes; the message says which.
    """
    transposed = any(k.startswith("decoder.samplers.") and ".block." in k for k in state_dict)
    head = state_dict.get("out_conv.weight")  # (outputs, features, 1, 1)
    features = head.shape[1] if head is not None and head.ndim == 4 else 64
    decoder = build_instance_decoder(sam, features=features, transposed=transposed,
                                     image_statistics=image_statistics)
    wanted = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state_dict.items()} != wanted:
        raise ValueError(_not_a_decoder(state_dict, wanted, sam=sam, source=source))
    decoder.load_state_dict(state_dict, strict=True)
    return decoder.to(device=sam.device, dtype=sam.dtype).eval()


def _not_a_decoder(
    state_dict: Mapping[str, torch.Tensor],
    wanted: Mapping[str, tuple[int, ...]],
    *,
    sam: Sam,
    source: str,
) -> str:
    """Why weights do not fit the instance decoder of ``sam``: what they are, and what to pass."""
    model = f"the {sam.name!r} model" if sam.name else "this model"
    advice = ("pass micro-sam's decoder weights made for this model (the 'decoder_state' of its "
              "checkpoint, or its separate decoder file)")
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    other = identify(state_dict)
    if other is not None:
        return f"{source} is a {other!r} SAM checkpoint, not an instance decoder: {advice}"
    base, want_base = found.get("base.block.1.weight"), wanted["base.block.1.weight"]
    if base is not None and len(base) == 4 and base[1] != want_base[1]:
        return (f"{source} is an instance decoder for {base[1]}-channel image embeddings, but "
                f"{model} has {want_base[1]}-channel embeddings: {advice}")
    details = _differences(found, wanted)[1]
    return f"{source} is not an instance decoder for {model} ({details}): {advice}"
