"""Checks of the generator's arguments, with error messages that say how to fix them."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np


def check_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple of 2 or 3 positive ints, or a ValueError."""
    if isinstance(shape, numbers.Integral) or not isinstance(shape, Sequence | np.ndarray):
        raise ValueError(
            f"shape must be a tuple of 2 (Y, X) or 3 (Z, Y, X) positive integers, got {shape!r}; "
            "pass e.g. shape=(256, 256) or shape=(16, 256, 256)"
        )
    shape_t = tuple(shape)
    if len(shape_t) not in (2, 3):
        raise ValueError(
            f"shape must have 2 (Y, X) or 3 (Z, Y, X) dimensions, got {len(shape_t)}: {shape_t!r}; "
            "pass e.g. shape=(256, 256) or shape=(16, 256, 256)"
        )
    out = []
    for s in shape_t:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or int(s) < 1:
            raise ValueError(
                f"shape must contain positive integers, got {shape_t!r}; "
                "every axis needs at least 1 pixel, e.g. shape=(256, 256)"
            )
        out.append(int(s))
    return tuple(out)


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, hint: str = "") -> float:
    """``value`` as a finite float within the bounds, or a ValueError ending with ``hint``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}{hint}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        op = ">" if low_open else ">="
        raise ValueError(f"{name} must be {op} {low:g}, got {v:g}{hint}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high:g}, got {v:g}{hint}")
    return v


def check_range(name: str, value, *, low: float, low_open: bool = True,
                example: str = "") -> tuple[float, float]:
    """``value`` as a ``(min, max)`` pair of floats above ``low``; a single number is both."""
    hint = f"; pass e.g. {name}={example}" if example else ""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, Sequence | np.ndarray) or len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}{hint}")
    lo = check_number(f"{name}[0] (min)", value[0], low=low, low_open=low_open, hint=hint)
    hi = check_number(f"{name}[1] (max)", value[1], low=low, low_open=low_open, hint=hint)
    if lo > hi:
        raise ValueError(
            f"{name} minimum must not exceed its maximum, got {name}=({lo:g}, {hi:g}); "
            f"swap them: {name}=({hi:g}, {lo:g})"
        )
    return lo, hi
