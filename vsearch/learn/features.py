"""Feature caching: run the frozen lower backbone once per image view, train on the result.

The frozen part of MobileNetV2 costs most of a forward pass and never changes during
training, so re-running it every epoch is waste. Each training image is passed through it
once clean and once per augmented view (:func:`cache_views`, which both stages call); the
trainable top blocks then train on those cached tensors.

:func:`extract_cached` also keeps those tensors on disk, keyed by the model's weights, the
images' bytes and the view: ``vsearch train`` and ``vsearch siamese`` share the same frozen
bottom and the same seeded customer-photo views, so stage 2 reads what stage 1 computed.

:class:`Frozen` runs that forward pass on Keras/TensorFlow or on LiteRT (XNNPACK), which
gives the same numbers (differences below the float16 cache's own rounding) and is faster
on a CPU, so ``auto`` picks it when no GPU is visible and there are enough images to pay
for converting the model (:data:`AUTO_TFLITE_MIN_IMAGES`).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vsearch.artifacts import write_atomic
from vsearch.config import FEATURE_RUNTIMES as RUNTIMES
from vsearch.config import DataConfig
from vsearch.errors import ConfigError

# LiteRT pays for its conversion above this many 224x224 images: converting the bottom
# costs about 30 s whatever the input side, and saves about 20 ms per 224x224 image against
# Keras on a CPU (bench/features.py: 48 against 24 img/s), so it breaks even near 1,500.
AUTO_TFLITE_MIN_IMAGES = 1500

# Batch for forward passes of the top blocks over cached feature maps (stage 1's pooled cache,
# stage 2's class-branch cache and its embeddings for mining). On a CPU 128 maps per batch
# measured faster than 256 (the batches outgrow the CPU caches) and than 32.
TOP_PREDICT_BATCH = 128


def resolve_runtime(runtime: str, images: int | None = None, image_size: int = 224) -> str:
    """``auto`` -> ``keras`` or ``tflite``; ``keras`` and ``tflite`` pass through.

    ``auto`` is ``keras`` when TensorFlow sees a GPU, or when the work (``images`` forward
    passes at ``image_size``, if given) is below :data:`AUTO_TFLITE_MIN_IMAGES` 224x224
    images' worth, too little to pay for a LiteRT conversion; else ``tflite``.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"feature runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime != "auto":
        return runtime
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "keras"
    if images is not None and images * (image_size / 224) ** 2 < AUTO_TFLITE_MIN_IMAGES:
        return "keras"
    return "tflite"


def tflite_flatbuffer(
    model, cache_dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None, refresh: bool = False
) -> bytes:
    """A Keras model's forward pass (inference mode) as a float32 TFLite flatbuffer.

    Kept under ``cache_dir`` keyed by the weights, the input shape and the TensorFlow
    version: ``vsearch siamese`` reuses what ``vsearch train`` converted. ``refresh``
    converts again even when an entry exists (replacing a damaged one).
    """
    import tensorflow as tf

    from vsearch.learn.export import weights_fingerprint

    shape = tuple(model.input.shape[1:])
    key = hashlib.sha256(
        "|".join(map(str, (weights_fingerprint(model), shape, tf.__version__, "frozen-v1"))).encode()
    ).hexdigest()[:24]
    path = Path(cache_dir) / f"{key}.tflite" if cache_dir else None
    if path is not None and path.is_file() and not refresh:
        return path.read_bytes()
    import keras

    start = time.perf_counter()
    # from_keras_model exports a SavedModel first, which freezes the weights into the
    # flatbuffer (from_concrete_functions kept them as uninitialised resource variables),
    # and prints its signatures: quiet while converting.
    chatty = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    finally:
        if chatty:
            keras.config.enable_interactive_logging()
    if log:
        log(f"  converted {model.name} to TFLite in {time.perf_counter() - start:.1f}s")
    if path is not None:
        write_atomic(path, flatbuffer)  # readers never see a half-written entry
    return flatbuffer


class Frozen:
    """A frozen model's forward pass for feature extraction: ``frozen(pixels) -> np.ndarray``.

    The runtime is chosen when it is built; the model is traced or converted (or its
    flatbuffer read) only on the first call, so a stage whose views are all on disk
    never pays for it.

    Args:
        model: The Keras model (also what cache keys are computed from).
        runtime: ``keras`` (TensorFlow), ``tflite`` (LiteRT + XNNPACK on the CPU) or
            ``auto`` (see :func:`resolve_runtime`).
        cache_dir: Where the converted flatbuffer is kept (``tflite``).
        num_threads: LiteRT threads (default: every core).
        images: How many images it is expected to run (``auto`` keeps small jobs on Keras).
    """

    def __init__(
        self,
        model,
        runtime: str = "keras",
        cache_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] | None = None,
        num_threads: int | None = None,
        images: int | None = None,
    ):
        self.model = model
        self.runtime = resolve_runtime(runtime, images, int(model.input.shape[1] or 224))
        self._cache_dir, self._log, self._num_threads = cache_dir, log, num_threads
        self._run: Callable | None = None  # built on first use: cached views never need it

    def _runner(self) -> Callable:
        if self.runtime == "keras":
            import tensorflow as tf

            model = self.model
            return tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        from vsearch.litert import LiteRTRunner

        convert = lambda refresh=False: tflite_flatbuffer(self.model, self._cache_dir, self._log, refresh)  # noqa: E731
        try:
            return LiteRTRunner(model_content=convert(), num_threads=self._num_threads)
        except ValueError:  # a damaged cache entry is converted again, not an error
            return LiteRTRunner(model_content=convert(refresh=True), num_threads=self._num_threads)

    def __call__(self, pixels) -> np.ndarray:
        if self._run is None:
            self._run = self._runner()
        return np.asarray(self._run(pixels))


def image_batches(paths: list[str], image_size: int, batch_size: int):
    """A ``tf.data`` pipeline: file paths -> batches of float32 (S, S, 3) pixels 0..255.

    Decoding and resizing are :func:`vsearch.images.tf_decode_and_resize`, the same as the
    exported model's; files are expected to be validated already.
    """
    import tensorflow as tf

    from vsearch.images import tf_decode_and_resize

    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(
        lambda p: tf_decode_and_resize(tf.io.read_file(p), image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size)


def extract(
    model,
    batches,
    transform: Callable | None = None,
    seed: int = 0,
    batch_size: int = 32,
    dtype=np.float16,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> np.ndarray:
    """Runs ``model`` over a dataset of pixel batches and stacks the outputs.

    Args:
        model: A :class:`Frozen` forward pass, or a Keras model (run on Keras).
        batches: ``tf.data`` dataset yielding pixel batches (or ``(pixels, labels)``).
        transform: Optional per-image view ``fn(pixels, rng) -> pixels`` on numpy arrays
            (:mod:`vsearch.augment`); image ``i`` draws from ``np.random.default_rng((seed, i))``
            (:func:`vsearch.augment.view_batch`), so a view is reproducible whatever the batching.
        dtype: Storage dtype; float16 halves the cache at no measurable cost.
    """
    import tensorflow as tf

    from vsearch.augment import view_batch

    ds = batches.map(lambda x, *_: x) if isinstance(batches.element_spec, tuple) else batches
    if transform is not None:

        def views(b, x):
            out = tf.numpy_function(
                lambda b, x: view_batch(transform, x, seed, int(b) * batch_size), [b, x], tf.float32, stateful=False
            )
            out.set_shape(x.shape)
            return out

        # OpenCV releases the GIL: tf.data's threads make the views while the model runs.
        ds = (
            ds.unbatch()
            .batch(batch_size)
            .enumerate()
            .map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        )
    ds = ds.prefetch(tf.data.AUTOTUNE)
    run = model if isinstance(model, Frozen) else Frozen(model)
    start, out = time.perf_counter(), []
    for x in ds:
        out.append(run(x).astype(dtype))
    if log:
        n = sum(len(o) for o in out)
        log(f"  features {label}: {n} images in {time.perf_counter() - start:.1f}s ({run.runtime})")
    return np.concatenate(out) if out else np.zeros((0,) + tuple(run.model.output.shape[1:]), dtype)


def files_digest(paths: Sequence[str | os.PathLike]) -> str:
    """A hash of the files' names (within their folder) and bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(f"{path.parent.name}/{path.name}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def extract_cached(
    model,
    batches,
    paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike | None,
    transform: Callable | None = None,
    seed: int = 0,
    batch_size: int = 32,
    dtype=np.float16,
    log: Callable[[str], None] | None = None,
    label: str = "",
    digest: str | None = None,
) -> np.ndarray:
    """:func:`extract`, stored under ``cache_dir`` and reused when nothing it depends on changed.

    The key covers the model's weights, the input files' bytes (``digest``, see
    :func:`files_digest`), the input size, the transform's name and seed, and the dtype, so
    a stale entry cannot be read. ``cache_dir`` None or empty: no disk cache. The runtime
    (:class:`Frozen`) is not in the key: Keras and LiteRT agree far below float16's rounding.
    """
    if not cache_dir:
        return extract(model, batches, transform, seed, batch_size, dtype, log, label)
    from vsearch.augment import VIEWS_VERSION
    from vsearch.learn.export import weights_fingerprint

    keras_model = model.model if isinstance(model, Frozen) else model
    shape = tuple(keras_model.input.shape[1:])
    # Views made by code that has changed since (VIEWS_VERSION) are never read as current ones.
    name = "" if transform is None else f"{transform.__module__}.{transform.__qualname__}@v{VIEWS_VERSION}"
    key = hashlib.sha256(
        "|".join(
            map(
                str,
                (
                    weights_fingerprint(keras_model),
                    digest or files_digest(paths),
                    shape,
                    name,
                    seed,
                    np.dtype(dtype).name,
                    "v1",
                ),
            )
        ).encode()
    ).hexdigest()[:24]
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        try:
            out = np.load(path)
            if log:
                log(f"  features {label}: {len(out)} images from the cache {path}")
            return out
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged entry is recomputed
    out = extract(model, batches, transform, seed, batch_size, dtype, log, label)
    buffer = io.BytesIO()
    np.save(buffer, out)  # (np.save to a path would add ".npy" to write_atomic's temporary name)
    write_atomic(path, buffer.getvalue())
    return out


@dataclass(frozen=True)
class View:
    """One view of every image of a dataset, for :func:`cache_views`.

    Attributes:
        label: Names the view in the log (``train view 1``).
        transform: The per-image view (:mod:`vsearch.augment`); None: the clean images.
        seed: Image ``i`` of the view draws from ``np.random.default_rng((seed, i))``.
        cached: Kept on disk under ``data.feature_cache_dir``; False: computed every time.
    """

    label: str
    transform: Callable | None = None
    seed: int = 0
    cached: bool = True


def cache_views(
    bottom, data: DataConfig, jobs: Sequence[tuple[Any, View]], log: Callable[[str], None] | None = None
) -> list[np.ndarray]:
    """The frozen ``bottom``'s features of each ``(dataset, view)`` job, in order.

    The one road both stages take to their feature caches: one :class:`Frozen` forward pass
    on ``data.feature_runtime`` (sized by all the jobs' images, so ``auto`` can judge the
    work), entries under ``data.feature_cache_dir`` keyed by :func:`extract_cached`.

    Args:
        bottom: The frozen lower backbone (pixels 0..255 in, feature maps out).
        data: Where the cache is, which runtime runs the bottom, the batch size of views.
        jobs: ``(dataset, view)`` pairs; a dataset comes from
            :func:`vsearch.learn.datasets.image_dataset` (pixel batches with ``file_paths``).
        log: Where progress lines go.
    Returns:
        One float16 array of feature maps per job, images in dataset order.
    """
    cache_dir = data.feature_cache_dir or None
    frozen = Frozen(
        bottom, data.feature_runtime, cache_dir, log, images=sum(len(dataset.file_paths) for dataset, _ in jobs)
    )
    digests: dict[int, str] = {}  # hashing a dataset's files once, whatever its number of views
    out = []
    for dataset, view in jobs:
        where = cache_dir if view.cached else None
        if where and id(dataset) not in digests:
            digests[id(dataset)] = files_digest(dataset.file_paths)
        out.append(
            extract_cached(
                frozen,
                dataset,
                dataset.file_paths,
                where,
                transform=view.transform,
                seed=view.seed,
                batch_size=data.batch_size,
                log=log,
                label=view.label,
                digest=digests.get(id(dataset)),
            )
        )
    return out
