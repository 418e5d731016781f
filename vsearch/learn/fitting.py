"""What both training stages share around Keras' ``fit``.

* :class:`StopOnNonFiniteLoss`: a loss that becomes NaN or infinite ends the stage with a
  :class:`~vsearch.errors.TrainingError` (the CLI prints it and exits 2) before anything
  is saved, instead of training and exporting NaN weights.
* :func:`fit_verbosity`: Keras' progress bar on a terminal only; in a log file (CI,
  ``make demo > log``) its carriage-return updates would fill the file, so a plain line
  per epoch is written there instead.
* :class:`Timings`: seconds per named step, for the stages' ``metrics.json``.
* :func:`distribution_strategy`: the ``tf.distribute`` strategy a stage builds, compiles
  and fits its trained model under (config ``strategy``). Keras' ``fit`` splits each
  global batch across the replicas and averages their gradients; the frozen-feature
  caches are made outside it. One host only: multi-worker training with Keras 3's ``fit``
  fails upstream (docs/training.md, "Training on several devices").
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf

from vsearch.config import STRATEGIES
from vsearch.errors import ConfigError, TrainingError


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
                f"stopped without saving a model or metrics ({self.remedy})"
            )


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


# One MirroredStrategy per set of devices and process: a second one over the same devices
# numbers its all-reduces from the start again, and they collide with the first one's
# ("Shape mismatch in the collective instance"), e.g. stage 2 run after stage 1 in one process.
_MIRRORED: dict[tuple[str, ...], tf.distribute.MirroredStrategy] = {}


def distribution_strategy(name: str, log: Callable[[str], None] | None = None) -> tf.distribute.Strategy:
    """The strategy a stage's trained model is built, compiled and fit under.

    Args:
        name: ``mirrored``: :class:`tf.distribute.MirroredStrategy` over the visible GPUs, or
            over the visible CPU devices when there is no GPU; ``none``: TensorFlow's default
            strategy (one replica); ``auto``: ``mirrored`` when more than one GPU is
            visible, else ``none``.
        log: Told which strategy it is and how many replicas it runs.

    Raises:
        ConfigError: an unknown name.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "none"
    if name == "none":
        strategy = tf.distribute.get_strategy()
    else:
        devices = tuple(device.name for device in gpus or tf.config.list_logical_devices("CPU"))
        if devices not in _MIRRORED:
            _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
        strategy = _MIRRORED[devices]
    if log:
        replicas = strategy.num_replicas_in_sync
        log(
            f"strategy {name}: {replicas} replica{'s' if replicas > 1 else ''}"
            + (f" ({', '.join(strategy.extended.worker_devices)})" if name == "mirrored" else "")
        )
    return strategy
