"""Reading and writing the 2D image files of the command line.

Images are read as the file means them: a palette PNG by its palette, grey with alpha as grey,
CMYK as RGB, a TIFF by its axes (a stack of planes is refused, the planes of one RGB image are
its channels). Outputs are checked before any work is done (format, existing file, input) and
written whole or not at all: to a temporary name in the same folder, then renamed.

Volumes (zarr, OME-zarr, stacks) are read by :mod:`napari_sam.volume.io`, not here.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

import numpy as np

#: Extensions of the files each kind of output can be written to.
MASK_FORMATS = (".tif", ".tiff", ".png", ".npy")  # 0/1 uint8; PNG 0/255
LABEL_FORMATS = (".tif", ".tiff", ".npy")  # uint32: more than PNG holds
IMAGE_FORMATS = (".tif", ".tiff", ".png", ".npy")  # one uint16 plane; PNG 16-bit grey
STACK_FORMATS = (".tif", ".tiff", ".npy")  # uint16 planes

_LOSSY = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".webp": "WebP",
          ".heic": "HEIC", ".avif": "AVIF"}
_CHANNEL_AXES = "SC"  # tifffile's axis codes for the samples of a pixel and for channels
_PILLOW_KEPT = {"L", "I", "F", "RGB", "RGBA"}  # read as they are; "I;16*" too


def read_image(path: Path) -> np.ndarray:
    """Read one 2D image, grey or with its channels last.

    Parameters
    ----------
    path : Path
        A ``.tif``/``.tiff`` (read with tifffile), a ``.npy`` array, or any image Pillow reads
        (``.png``, ``.jpg``, ...).

    Returns
    -------
    (H, W) or (H, W, C) ndarray
        Intensities: palette images are looked up in their palette (RGB, or RGBA with a
        transparent colour), an alpha channel beside grey is dropped, CMYK and other colour
        spaces become RGB, 1-bit images 0/255 uint8, 16-bit images stay uint16.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        ``path`` is not a file.
    ValueError
        The file holds a stack or an animation rather than one 2D image.
    """
    if path.is_dir():
        raise IsADirectoryError(
            f"{str(path)!r} is a directory: this command takes one 2D image file (.tif, .png, "
            ".jpg or .npy); for a volume (zarr folder, stack) use segment-stack"
        )
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    if suffix == ".npy":
        return np.load(path)
    return _read_with_pillow(path)


def _read_tiff(path: Path) -> np.ndarray:
    """The first series of a TIFF with its channel axis last; a stack of planes is refused."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, image = series.axes, series.asarray()
    kept = [i for i, size in enumerate(image.shape) if size > 1 or axes[i] in "YX"]
    image, axes = image.reshape([image.shape[i] for i in kept]), "".join(axes[i] for i in kept)
    planes = [f"{axis}={image.shape[i]}" for i, axis in enumerate(axes)
              if axis not in "YX" + _CHANNEL_AXES]
    if planes:
        raise ValueError(
            f"{str(path)!r} is a 3D stack ({', '.join(planes)}; TIFF axes {axes!r}), not one 2D "
            "image: save the plane you want as its own file, or segment every plane with "
            "napari-sam segment-stack"
        )
    channels = [i for i, axis in enumerate(axes) if axis in _CHANNEL_AXES]
    return np.moveaxis(image, channels, range(-len(channels), 0)) if channels else image


def _read_with_pillow(path: Path) -> np.ndarray:
    """A Pillow image as intensities, converted by its mode (see :func:`read_image`)."""
    from PIL import Image

    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ValueError(
                f"{str(path)!r} holds {frames} frames, not one 2D image: save the frame you "
                "want as its own file, or a stack as TIFF for napari-sam segment-stack"
            )
        mode = image.mode
        if mode in ("LA", "La"):
            image = image.getchannel(0)
        elif mode == "1":
            image = image.convert("L")
        elif mode in ("P", "PA"):
            image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
        elif mode not in _PILLOW_KEPT and not mode.startswith("I;16"):
            image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa
        return np.asarray(image)


def check_output(
    path: Path,
    formats: tuple[str, ...],
    *,
    what: str,
    inputs: Iterable[Path | None] = (),
    overwrite: bool = False,
) -> None:
    """Refuse an output before any work is done, saying why and what to do instead.

    Parameters
    ----------
    path : Path
        The file to be written.
    formats : tuple of str
        Extensions allowed for this output, e.g. :data:`MASK_FORMATS`.
    what : str
        What is written, for the messages: ``"the mask"``, ``"the labels"``, ...
    inputs : iterable of Path or None
        Files read by the same command; ``path`` may be none of them, even with ``overwrite``.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    ValueError
        Wrong format, or ``path`` is one of ``inputs``.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    IsADirectoryError, FileNotFoundError
        ``path`` is a directory, or its folder does not exist.
    """
    suffix = path.suffix.lower()
    if suffix not in formats:
        lossy = f" ({_LOSSY[suffix]} is lossy: the values read back would not be the ones " \
                "written)" if suffix in _LOSSY else ""
        raise ValueError(f"write {what} to a {_listing(formats)} file, not {path.name!r}{lossy}")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise ValueError(
                f"{str(path)!r} is also an input of this command: write {what} to another file "
                "(inputs are never overwritten, not even with --overwrite)"
            )
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory: give a file name for {what}")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} exists: pass --overwrite to replace it, or choose another name"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"the folder {str(path.parent)!r} of {str(path)!r} does not exist: create it first"
        )


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (through links, ``..`` and letter case)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _listing(formats: tuple[str, ...]) -> str:
    names = [suffix for suffix in formats if suffix != ".tiff"]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a boolean mask whole: 0/1 uint8 for .tif/.npy, 0/255 for .png.

    Parameters
    ----------
    path : Path
        Checked beforehand with :func:`check_output` and :data:`MASK_FORMATS`.
    mask : (H, W) bool ndarray
    """
    mask = mask.astype(np.uint8)
    write_array(path, mask * 255 if path.suffix.lower() == ".png" else mask)


def write_array(path: Path, array: np.ndarray, *, z_step: float | None = None) -> None:
    """Write an array whole, in the format the extension of ``path`` names.

    Parameters
    ----------
    path : Path
        ``.tif``/``.tiff`` (tifffile), ``.npy``, or ``.png`` (Pillow: uint8, or 16-bit grey for
        uint16); checked beforehand with :func:`check_output`.
    array : ndarray
    z_step : float, optional
        For a uint8 or uint16 ``(Z, Y, X)`` stack written as a tiff: the distance between its
        planes in pixels, written as an ImageJ hyperstack's ``spacing`` (axes ZYX, unit pixel),
        which :func:`~napari_sam.volume.io.open_volume` reads back as the voxel size. Ignored
        by the other formats, which hold no voxel size.

    Notes
    -----
    The file is written under a temporary name in the same folder, then renamed onto ``path``:
    an interrupted or failed write leaves ``path`` as it was.
    """
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        calibration = {} if z_step is None else {
            "imagej": True, "metadata": {"axes": "ZYX", "spacing": z_step, "unit": "pixel"}}
        _atomic(path, lambda file: tifffile.imwrite(file, array, **calibration))
    elif suffix == ".npy":
        _atomic(path, lambda file: np.save(file, array))
    else:
        from PIL import Image

        _atomic(path, lambda file: Image.fromarray(array).save(file, format="PNG"))


def _atomic(path: Path, write: Callable) -> None:
    """Call ``write(file)`` on a new file beside ``path``, then rename it onto ``path``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    file = open(temporary, "xb")  # a new file, with the permissions of any other new file
    try:
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # also KeyboardInterrupt: no temporary file is left behind
        temporary.unlink(missing_ok=True)
        raise
