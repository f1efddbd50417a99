"""Checks of user settings, shared by the automatic modes: errors name the setting, its value
and what to pass instead."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 integer: bool = False) -> None:
    """Refuse a setting that is not a finite number (an integer if ``integer``) in
    ``[low, high]`` (either bound optional).

    Raises
    ------
    ValueError
        Naming the setting, its value and the valid range.

    Examples
    --------
    >>> check_number("batch_size", 0, low=1, integer=True)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an integer >= 1, got 0
    """
    kind = numbers.Integral if integer else numbers.Real
    valid = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if not (valid and (low is None or low <= value) and (high is None or value <= high)):
        what = "an integer" if integer else "a number"
        if low is None and high is None:
            what = f"a finite {what.split()[1]}"
        elif high is None:
            what = f"{what} >= {low}"
        elif low is None:
            what = f"{what} <= {high}"
        else:
            what = f"{what} in [{low}, {high}]"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_names(settings: dict, known: Iterable[str], mode: str) -> None:
    """Refuse settings that ``mode`` does not have, naming those it has.

    Raises
    ------
    TypeError
        Naming the unknown settings and the known ones.
    """
    known = list(known)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise TypeError(
            f"unknown {mode} settings {', '.join(unknown)}: choose from {', '.join(known)} "
            "(prompt-sampling settings such as 'sampler' belong to mode='amg')"
        )
