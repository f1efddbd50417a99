"""Run engine work in napari thread workers; report failures as napari notifications.

napari relays an exception raised in a worker as an error notification with a traceback dialog.
Bad input is not a bug, so our workers never raise: a failure is returned as :class:`Failure`
and shown as a plain error message. Its traceback is appended to a log file in the user log
folder (:func:`error_log`), and logged: at ERROR level for a programming error, whose message
then says that it is a bug and where the traceback is, at WARNING level for bad input.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

log = logging.getLogger(__name__)

# Failures caused by the data, the settings, the files or the machine, which the message
# explains; anything else is a bug in napari-sam.
USER_ERRORS = (ValueError, OSError, MemoryError, ImportError, torch.cuda.OutOfMemoryError)
# The error log starts over when it grows beyond this many bytes.
MAX_LOG_BYTES = 1 << 20
_LOG_LOCK = threading.Lock()


def error_log() -> Path:
    """The file that keeps the tracebacks of failed jobs, in the user log folder."""
    import platformdirs

    return Path(platformdirs.user_log_dir("napari-sam")) / "errors.log"


@dataclass
class Failure:
    """What a worker returns instead of raising.

    Attributes
    ----------
    error : Exception
        What was raised.
    log_file : Path or None
        Where its traceback was written; None if that failed (it is then only in the log).
    """

    error: Exception
    log_file: Path | None = None

    @property
    def is_bug(self) -> bool:
        """Whether the error is a programming error rather than bad input."""
        return not isinstance(self.error, USER_ERRORS)

    @property
    def message(self) -> str:
        text = str(self.error) or type(self.error).__name__
        if not self.is_bug:
            return text
        where = self.log_file if self.log_file is not None else "the terminal output"
        return (f"{type(self.error).__name__}: {text}. This is a bug in napari-sam, not a problem "
                f"with your data or settings; the traceback is in {where} (please include it "
                "when you report the bug)")


def _failure(error: Exception, what: str) -> Failure:
    """Log ``error`` (being handled) and write its traceback to :func:`error_log`."""
    failure = Failure(error)
    if failure.is_bug:
        log.error("napari-sam: %s failed", what, exc_info=error)
    else:
        log.warning("napari-sam: %s failed: %s", what, failure.message)
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    path = error_log()
    try:
        with _LOG_LOCK:
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = "w" if path.is_file() and path.stat().st_size > MAX_LOG_BYTES else "a"
            with path.open(mode, encoding="utf-8") as file:
                file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {what} failed\n{text}\n")
        failure.log_file = path
    except OSError:
        log.warning("napari-sam: cannot write the error log %s", path, exc_info=True)
    return failure


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


def _guarded(function: Callable, what: str) -> Callable:
    """``function`` (plain or generator) returning a :class:`Failure` instead of raising."""
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def generator(*args, **kwargs):
            try:
                return (yield from function(*args, **kwargs))
            except Cancelled as error:
                return Failure(error)
            except Exception as error:  # noqa: BLE001 - every failure becomes a message
                return _failure(error, what)
        return generator

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Cancelled as error:
            return Failure(error)
        except Exception as error:  # noqa: BLE001
            return _failure(error, what)
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
    worker = create_worker(_guarded(function, what), *args, _start_thread=False)
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
