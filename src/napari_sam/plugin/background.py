"""Run engine work in napari thread workers; report failures as napari notifications.

napari relays an exception raised in a worker as an error notification with a traceback dialog.
Bad input is not a bug, so our workers never raise: a failure is returned as :class:`Failure`
and shown as a plain error message, and the traceback goes to the log for developers.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

log = logging.getLogger(__name__)


@dataclass
class Failure:
    """What a worker returns instead of raising."""

    error: Exception

    @property
    def message(self) -> str:
        return str(self.error) or type(self.error).__name__


class Cancelled(Exception):
    """Raised inside a job when the user pressed cancel."""


class CancelFlag:
    """A flag the UI sets and a job checks between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancel was pressed."""
        if self._event.is_set():
            raise Cancelled


def _guarded(function: Callable) -> Callable:
    """``function`` (plain or generator) returning a :class:`Failure` instead of raising."""
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def generator(*args, **kwargs):
            try:
                return (yield from function(*args, **kwargs))
            except Exception as error:  # noqa: BLE001 - every failure becomes a message
                log.debug("worker failed", exc_info=True)
                return Failure(error)
        return generator

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            log.debug("worker failed", exc_info=True)
            return Failure(error)
    return call


def run_in_background(function: Callable, *args, what: str, done: Callable | None = None,
                      yielded: Callable | None = None, finished: Callable | None = None):
    """Start ``function(*args)`` in a napari thread worker.

    Parameters
    ----------
    what : str
        What the job does, for the error message ("embedding slice (3,)").
    done : callable, optional
        Called on the UI thread with the result, unless the job failed.
    yielded : callable, optional
        Called on the UI thread with each value a generator job yields.
    finished : callable, optional
        Called on the UI thread when the job ends, whatever the outcome.

    Returns
    -------
    WorkerBase
        The started worker; its ``ended`` attribute turns true once its results and its
        ``finished`` signal have been handled on the UI thread.
    """
    worker = create_worker(_guarded(function), *args, _start_thread=False)
    worker.ended = False

    def returned(result) -> None:
        if isinstance(result, Failure):
            if not isinstance(result.error, Cancelled):
                show_error(f"napari-sam: {what} failed: {result.message}")
        elif done is not None:
            done(result)

    worker.returned.connect(returned)
    if yielded is not None:
        worker.yielded.connect(yielded)
    if finished is not None:
        worker.finished.connect(finished)
    worker.finished.connect(lambda: setattr(worker, "ended", True))
    worker.start()
    return worker
