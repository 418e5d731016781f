"""What both training stages share around Keras' ``fit``.

* :class:`StopOnNonFiniteLoss`: a loss that becomes NaN or infinite ends the stage with a
  :class:`~vsearch.errors.TrainingError` (the CLI prints it and exits 2) before anything
  is saved, instead of training and exporting NaN weights.
* :func:`fit_verbosity`: Keras' progress bar on a terminal only; in a log file (CI,
  ``make demo > log``) its carriage-return updates would fill the file, so a plain line
  per epoch is written there instead.
* :class:`Timings`: seconds per named step, for the stages' ``metrics.json``.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Callable, Iterator

import keras

from vsearch.errors import TrainingError


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises :class:`TrainingError` at the first batch whose loss is NaN or infinite.

    Args:
        what: Names the training in the message (``training classifier_head``).
        remedy: What the user can change, e.g. the learning rate's config key.
    """

    def __init__(self, what: str, remedy: str):
        super().__init__()
        self.what = what
        self.remedy = remedy
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
            raise TrainingError(
                f"{self.what}: the loss became {float(loss)} at epoch {self._epoch + 1}, batch {batch + 1}; "
                f"stopped without saving a model or metrics ({self.remedy})")


def fit_verbosity(log: Callable[[str], None], line_per_epoch: bool = True) -> int:
    """Keras' ``verbose`` for a stage's ``fit``.

    A progress bar (1) when the stage prints (``log`` is ``print``) to a terminal; else one
    line per epoch (2) when it prints to a file or pipe and ``line_per_epoch``; else nothing
    (0): the stage's ``log`` is elsewhere, or the stage writes its own line per epoch.
    """
    if log is not print:
        return 0
    if sys.stdout.isatty():
        return 1
    return 2 if line_per_epoch else 0


class Timings(dict):
    """Seconds per named step, summed when a step repeats: ``with timings("fit_s"): ...``."""

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[key] = self.get(key, 0.0) + time.perf_counter() - start
