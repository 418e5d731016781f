"""The LiteRT runtime: a converted ``.tflite`` embedding model, run without TensorFlow.

``vsearch export --format tflite`` (:mod:`vsearch.learn.litert_export`) writes the flatbuffer of the
SavedModel's ``embed_pixels`` signature and a sidecar ``<file>.tflite.json`` describing it.
This module reads them back and runs the model on the LiteRT interpreter with XNNPACK:
the serving wing's fast CPU path, which imports neither TensorFlow nor the learning wing.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

from vsearch.artifacts import read_json_object
from vsearch.errors import ConfigError, DataError
from vsearch.vectors import check_batch, unit_rows

FORMAT = "vsearch-embedding-tflite/1"


def sidecar_path(tflite_path: str | os.PathLike) -> Path:
    """The metadata JSON written next to a ``.tflite`` file."""
    path = Path(tflite_path)
    return path.with_name(path.name + ".json")


def read_tflite_metadata(path: str | os.PathLike) -> dict:
    """The sidecar of a ``.tflite`` file, checked against the file it describes.

    Raises:
        DataError: the file or its sidecar is missing, or the sidecar describes another file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such TFLite file; run `vsearch export --format tflite` first")
    side = sidecar_path(path)
    if not side.is_file():
        raise DataError(f"{side}: missing; this .tflite was not exported by `vsearch export` (keep the two together)")
    meta = read_json_object(side, "export again")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    tflite = meta.get("tflite")
    if meta.get("format") != FORMAT or not isinstance(tflite, dict) or tflite.get("sha256") != digest:
        raise DataError(f"{side}: does not describe {path.name} (another conversion?); export again")
    return meta


def source_model_dir(tflite_path: str | os.PathLike, metadata: dict) -> Path:
    """The SavedModel a ``.tflite`` was converted from (recorded relative to the file's folder)."""
    return Path(tflite_path).parent / metadata["source"]["path"]


class LiteRTRunner:
    """A LiteRT interpreter with one float32 input, called on whole batches: ``runner(x) -> y``.

    The AUTO op resolver applies the XNNPACK delegate with ``num_threads`` (default: every
    core). The input is resized only when the batch size changes; calls are serialised by
    a lock, since one interpreter is not thread-safe. Give ``model_path`` or ``model_content``
    (flatbuffer bytes); a damaged flatbuffer raises ``ValueError`` from LiteRT.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        model_content: bytes | None = None,
        num_threads: int | None = None,
    ):
        from ai_edge_litert.interpreter import Interpreter

        self.num_threads = num_threads or os.cpu_count() or 1
        self._interpreter = Interpreter(
            model_path=None if model_path is None else str(model_path),
            model_content=model_content,
            num_threads=self.num_threads,
        )
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            if self._batch != len(batch):
                self._interpreter.resize_tensor_input(self._input, batch.shape, strict=True)
                self._interpreter.allocate_tensors()
                self._batch = len(batch)
            self._interpreter.set_tensor(self._input, batch)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output)  # a copy already


class TFLiteEmbedder:
    """A converted ``.tflite`` embedding model on LiteRT (XNNPACK, CPU): the model call only.

    Implements :class:`vsearch.embedder.Embedder`; photos reach it through
    :func:`vsearch.embedder.embed_images`, which decodes the next batch while this one runs.

    Args:
        path: The ``.tflite`` file (its sidecar JSON beside it).
        num_threads: Inference threads (default: every core).
        max_batch: Images per interpreter call: larger batches' activations fall out of the
            CPU caches, and XNNPACK ran 8 at a time faster than 1 or 32 on the 2-core machines.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None, max_batch: int = 8):
        if num_threads is not None and num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        self.path = Path(path)
        self.metadata = read_tflite_metadata(path)
        self.image_size = int(self.metadata["image_size"])
        self.dim = int(self.metadata["embedding_dim"])
        self.fingerprint = self.metadata["fingerprint"]
        self.quantization = self.metadata["quantization"]
        self.name = f"exported embedding (TFLite {'fp32' if self.quantization == 'none' else self.quantization})"
        self._runner = LiteRTRunner(self.path, num_threads=num_threads)
        self.num_threads = self._runner.num_threads
        self.max_batch = max_batch

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 RGB 0..255 -> (N, dim) float32 unit vectors."""
        pixels = np.ascontiguousarray(check_batch(pixels, self.image_size))
        out = np.empty((len(pixels), self.dim), np.float32)
        for start in range(0, len(pixels), self.max_batch):
            stop = min(start + self.max_batch, len(pixels))
            out[start:stop] = self._runner(pixels[start:stop])
        # The graph ends in an L2 normalisation, but int8 rounds its output to a coarse grid;
        # renormalising keeps every variant's vectors exactly unit length.
        return unit_rows(out)
