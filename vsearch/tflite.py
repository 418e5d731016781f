"""TFLite (LiteRT) export and runtime: the embedding model for fast CPU inference.

``vsearch export --format tflite`` converts the SavedModel's ``embed_pixels`` signature
(float32 [None, S, S, 3] RGB 0..255 -> unit embedding) into a flatbuffer, with a sidecar
``<file>.tflite.json``: the SavedModel's metadata plus the format, the quantization, the
source model and the calibration set. Image decoding is not in the flatbuffer; it runs in
Python (Pillow, a thread pool), the same way the SavedModel's graph decodes.

Quantizations, and whether their vectors may be mixed with the source SavedModel's in one
index: only where every validation photo's cosine to the source stays >= 0.99 (measured
by ``vsearch eval --model FILE.tflite``, which reports it; numbers in ``bench/RESULTS.md``):

* ``none``: float32. The model gives the same numbers; what remains is the JPEG decoder
  (Pillow runs libjpeg's exact DCT, TensorFlow's graph the fast one): cosine >= 0.995,
  mean 0.999. Keeps the source fingerprint: an index built with the SavedModel serves its
  queries and the reverse. (Photos at least twice the input size are decoded at reduced
  scale by default, see :func:`decode_pixels`: that moves their vectors, cosine down to
  0.94 on 4x photos, without changing retrieval; ``draft=False`` keeps parity on them.)
* ``dynamic``: int8 weights, float activations, no calibration. Cosine down to 0.97, so
  its own fingerprint (``<source>:dynamic``); on XNNPACK it also ran slower than float32.
* ``int8``: integer weights and activations calibrated on catalog photos, except the first
  depthwise convolution (see :func:`float_nodes`); float32 input and output, so callers
  see the same interface. Cosine down to 0.96 (mean 0.99), so its own fingerprint
  (``<source>:int8``): a catalog built with it refuses the SavedModel's queries and the
  reverse; build the index with the model that answers the queries.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from vsearch.errors import ConfigError, DataError, ImageError
from vsearch.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image
from vsearch.resize import resize_bilinear

FORMAT = "vsearch-embedding-tflite/1"
QUANTIZATIONS = ("none", "dynamic", "int8")
SIGNATURE = "embed_pixels"
CALIBRATION_IMAGES = 300
CALIBRATION_SEED = 0
# Quantizations whose vectors are interchangeable with the source SavedModel's.
SHARES_SOURCE_FINGERPRINT = {"none": True, "dynamic": False, "int8": False}


def check_quantization(quantize: str) -> str:
    """Returns ``quantize`` if it is one of :data:`QUANTIZATIONS`, else raises ConfigError."""
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    return quantize


def default_out_path(model_dir: str | os.PathLike, quantize: str) -> Path:
    """``saved_models/embedding`` -> ``saved_models/embedding.tflite`` (``embedding-int8.tflite``...)."""
    model_dir = Path(model_dir)
    suffix = "" if quantize == "none" else f"-{quantize}"
    return model_dir.parent / f"{model_dir.name}{suffix}.tflite"


def sidecar_path(tflite_path: str | os.PathLike) -> Path:
    """The metadata JSON written next to a ``.tflite`` file."""
    path = Path(tflite_path)
    return path.with_name(path.name + ".json")


def derived_fingerprint(source_fingerprint: str, quantize: str) -> str:
    """The fingerprint an index records for vectors of this conversion (see the module doc)."""
    return source_fingerprint if SHARES_SOURCE_FINGERPRINT[quantize] else f"{source_fingerprint}:{quantize}"


def calibration_paths(folder: str | os.PathLike, count: int = CALIBRATION_IMAGES,
                      seed: int = CALIBRATION_SEED) -> list[Path]:
    """A seeded sample of ``count`` images found recursively under ``folder``, in sorted order.

    Sampling from the sorted list of every class folder keeps the classes in their catalog
    proportions, so the activation ranges int8 learns are the ones the catalog produces.

    Raises:
        DataError: the folder is missing or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: calibration folder not found; pass --calibration DIR with catalog photos")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise DataError(f"{root}: no images to calibrate int8 on ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)")
    if count <= 0:
        raise ConfigError(f"--calibration-images must be >= 1, got {count}")
    if count >= len(found):
        return found
    chosen = np.random.default_rng(seed).choice(len(found), size=count, replace=False)
    return [found[i] for i in sorted(chosen)]


def decode_pixels(data: bytes, size: int, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                  draft: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """Encoded image -> (size, size, 3) float32 RGB 0..255, as the SavedModel's graph decodes it.

    Like ``serving_default``: no EXIF rotation, grayscale expanded, alpha over white, then
    :func:`resize_bilinear` (``out``: where to write). With ``draft``, a JPEG at least twice
    the model input on both sides is decoded at 1/2, 1/4 or 1/8 scale by libjpeg (Pillow's
    ``draft``), still at least ``size`` pixels per side: faster on large photos, at the cost
    of exact parity with the SavedModel on them (numbers in ``bench/RESULTS.md``).

    Raises:
        ImageError: empty, not an image, corrupt or over ``max_pixels``.
    """
    pixels = decode_image(data, source, max_pixels, upright=False, draft_size=size if draft else None)
    return resize_bilinear(pixels, size, out)


def _pixel_batches(paths: Sequence[Path], size: int) -> Iterator[list[np.ndarray]]:
    for path in paths:
        yield [decode_pixels(Path(path).read_bytes(), size, str(path))[None]]


def float_nodes(model: bytes) -> list[str]:
    """The ops int8 leaves in float: the first depthwise convolution's output, by tensor name.

    In MobileNetV2 that is ``expanded_conv_depthwise`` (32 channels at half the input
    resolution). On the real model it had by far the largest quantization error of any
    layer (1.3 quantization steps RMS, the next 0.76; ``tf.lite.experimental.
    QuantizationDebugger`` on 24 validation photos), and keeping it in float raised the worst
    per-image cosine to the SavedModel from 0.89 to 0.96 for about 3.6 M float
    multiply-adds per image (112 x 112 x 32 x 9).
    """
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = root.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == schema.BuiltinOperator.DEPTHWISE_CONV_2D:
            return [graph.Tensors(op.Outputs(0)).Name().decode()]
    return []


def convert_saved_model(model_dir: str | os.PathLike, quantize: str = "none",
                        calibration: Sequence[Path] = (), image_size: int | None = None) -> bytes:
    """Converts the ``embed_pixels`` signature of a vsearch SavedModel to a TFLite flatbuffer.

    Args:
        model_dir: The exported SavedModel folder.
        quantize: ``none``, ``dynamic`` or ``int8``.
        calibration: Images for ``int8`` (representative dataset), decoded like queries.
        image_size: The model's input side (needed for ``int8``).
    Returns:
        The flatbuffer bytes.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(model_dir), signature_keys=[SIGNATURE])
    if quantize == "none":
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "dynamic":
        return converter.convert()
    if not calibration or not image_size:
        raise ConfigError("int8 quantization needs calibration images and the image size")
    converter.representative_dataset = lambda: _pixel_batches(calibration, image_size)
    # int8 kernels everywhere except the nodes float_nodes() names (TFLITE_BUILTINS for those).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    # The quantization debugger is TensorFlow's way to quantize selectively: it calibrates
    # once, then quantizes the calibrated model with a denylist. Input and output stay float32.
    with warnings.catch_warnings():  # the debugger checks its work on tf.lite.Interpreter, deprecated
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: _pixel_batches(calibration[:1], image_size))
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=float_nodes(debugger.calibrated_model))
    return debugger.get_nondebug_quantized_model()


def tflite_metadata(source: dict, source_rel: str, quantize: str, model: bytes,
                    calibration: dict | None) -> dict:
    """The sidecar: the SavedModel's metadata, re-labelled for the flatbuffer it describes."""
    import tensorflow as tf

    size, dim = int(source["image_size"]), int(source["embedding_dim"])
    return {**source, "format": FORMAT, "quantization": quantize,
            "fingerprint": derived_fingerprint(source["fingerprint"], quantize),
            "signatures": {SIGNATURE: {"inputs": {"images": f"float32[None,{size},{size},3]"},
                                       "outputs": {"embedding": f"float32[None,{dim}]"}}},
            "source": {"path": source_rel, "format": source.get("format"), "fingerprint": source["fingerprint"]},
            "tflite": {"bytes": len(model), "sha256": hashlib.sha256(model).hexdigest(),
                       "converter": f"tensorflow {tf.__version__}", "calibration": calibration,
                       "converted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}


def write_tflite(model: bytes, metadata: dict, out: str | os.PathLike) -> Path:
    """Writes the flatbuffer and its sidecar, each replaced atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    for path, payload in ((out, model), (sidecar_path(out), (json.dumps(metadata, indent=2) + "\n").encode())):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the model from a server's user
        os.replace(tmp, path)
    return out


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
    from vsearch.export import read_json_object

    meta = read_json_object(side, "export again")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if meta.get("format") != FORMAT or meta.get("tflite", {}).get("sha256") != digest:
        raise DataError(f"{side}: does not describe {path.name} (another conversion?); export again")
    return meta


def source_model_dir(tflite_path: str | os.PathLike, metadata: dict) -> Path:
    """The SavedModel a ``.tflite`` was converted from (recorded relative to the file's folder)."""
    return Path(tflite_path).parent / metadata["source"]["path"]


def export_tflite(model_dir: str | os.PathLike, out: str | os.PathLike | None = None, quantize: str = "none",
                  calibration_dir: str | os.PathLike | None = None, calibration_images: int = CALIBRATION_IMAGES,
                  log: Callable[[str], None] = print) -> Path:
    """``vsearch export --format tflite``: SavedModel -> ``.tflite`` + sidecar; returns the file.

    Args:
        model_dir: The exported SavedModel folder.
        out: Output file (default :func:`default_out_path`).
        quantize: ``none``, ``dynamic`` or ``int8``.
        calibration_dir: int8 only: folder of catalog photos (searched recursively).
        calibration_images: int8 only: how many of them calibrate.
    Raises:
        DataError, ConfigError: a missing model, a bad quantization, no calibration images.
    """
    from vsearch.export import read_metadata

    check_quantization(quantize)
    source = read_metadata(model_dir)
    out = Path(out) if out else default_out_path(model_dir, quantize)
    calibration, info = [], None
    if quantize == "int8":
        folder = calibration_dir or "data/clothing/train"
        calibration = calibration_paths(folder, calibration_images)
        info = {"folder": str(folder), "images": len(calibration), "seed": CALIBRATION_SEED}
        log(f"calibrating int8 on {len(calibration)} images from {folder}")
    model = convert_saved_model(model_dir, quantize, calibration, int(source["image_size"]))
    rel = os.path.relpath(Path(model_dir).resolve(), out.parent.resolve())
    write_tflite(model, tflite_metadata(source, rel, quantize, model, info), out)
    log(f"wrote {out} ({len(model) / 2**20:.1f} MiB, quantization {quantize}) and {sidecar_path(out).name}")
    return out


class LiteRTRunner:
    """A LiteRT interpreter with one float32 input, called on whole batches: ``runner(x) -> y``.

    The AUTO op resolver applies the XNNPACK delegate with ``num_threads`` (default: every
    core). The input is resized only when the batch size changes; calls are serialised by
    a lock, since one interpreter is not thread-safe. Give ``model_path`` or ``model_content``
    (flatbuffer bytes); a damaged flatbuffer raises ``ValueError`` from LiteRT.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, model_content: bytes | None = None,
                 num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.num_threads = num_threads or os.cpu_count() or 1
        self._interpreter = Interpreter(model_path=None if model_path is None else str(model_path),
                                        model_content=model_content, num_threads=self.num_threads)
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
    """A converted ``.tflite`` embedding model on the LiteRT interpreter (XNNPACK, CPU).

    Implements :class:`vsearch.embedder.Embedder`. Bytes are decoded by a thread pool
    (Pillow and numpy release the GIL) straight into the batch array; each chunk of
    ``max_batch`` images runs through the interpreter on ``num_threads`` XNNPACK threads as
    soon as it is decoded, while the pool decodes the next (:class:`LiteRTRunner`).

    Args:
        path: The ``.tflite`` file (its sidecar JSON beside it).
        num_threads: Decoding and inference threads (default: every core).
        draft: Decode large JPEGs at reduced scale (see :func:`decode_pixels`).
        max_batch: Images per interpreter call. 8 was the fastest in one run on the
            shared 2-core machine (fp32 110 img/s against 91 at 1 and 81 at 32, int8 314
            against 232 and 216): larger batches' activations fall out of the CPU caches.
        max_pixels: Larger images are refused.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None, draft: bool = True,
                 max_batch: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS):
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
        self.num_threads = self._runner.num_threads  # resolved there (default: every core)
        self.draft = draft
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="tflite-decode")

    def embed_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> (N, dim) float32 unit vectors; a bad image raises ImageError.

        Decoding and inference overlap: each chunk of ``max_batch`` images runs through the
        interpreter as soon as it is decoded, while the pool decodes the next ones.
        """
        blobs = list(blobs)
        pixels = np.empty((len(blobs), self.image_size, self.image_size, 3), np.float32)

        def decode(i: int) -> None:
            decode_pixels(blobs[i], self.image_size, "<bytes>", self.max_pixels, self.draft, out=pixels[i])

        if len(blobs) == 1:  # no pool hop for single queries (latency)
            decode(0)
            return self.embed_pixels(pixels)
        futures = [self._pool.submit(decode, i) for i in range(len(blobs))]

        def decoded(start: int, stop: int) -> None:
            for future in futures[start:stop]:
                future.result()  # raises the first bad image's ImageError

        try:
            return self._run(pixels, decoded)
        finally:
            for future in futures:
                future.cancel()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 RGB 0..255 -> (N, dim) float32 unit vectors."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
            raise ImageError("<pixels>", f"expected (N, {self.image_size}, {self.image_size}, 3), got {pixels.shape}")
        return self._run(pixels)

    def _run(self, pixels: np.ndarray, ready: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``pixels`` through the interpreter ``max_batch`` at a time; ``ready(start, stop)``
        first waits until those rows are filled in."""
        out = np.empty((len(pixels), self.dim), np.float32)
        for start in range(0, len(pixels), self.max_batch):
            stop = min(start + self.max_batch, len(pixels))
            if ready is not None:
                ready(start, stop)
            out[start:stop] = self._runner(pixels[start:stop])
        # The graph ends in an L2 normalisation, but int8 rounds its output to a coarse grid;
        # renormalising keeps every variant's vectors exactly unit length.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def close(self) -> None:
        """Stops the decoding threads."""
        self._pool.shutdown(wait=False)
