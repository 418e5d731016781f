"""TFLite (LiteRT) conversion: the embedding model for fast CPU inference.

``vsearch export --format tflite`` converts the SavedModel's ``embed_pixels`` signature
(float32 [None, S, S, 3] RGB 0..255 -> unit embedding) into a flatbuffer, with a sidecar
``<file>.tflite.json``: the SavedModel's metadata plus the format, the quantization, the
source model and the calibration set. Running it is :mod:`vsearch.litert`'s job; photos
reach it through the same road as every other model (:mod:`vsearch.images`).

Quantizations, and whether their vectors may be mixed with the source SavedModel's in one
index: only where every validation photo's cosine to the source stays >= 0.99 (measured
by ``vsearch eval --model FILE.tflite``, which reports it):

* ``none``: float32, the same numbers as the SavedModel on the same pixels. Keeps the
  source fingerprint: an index built with the SavedModel serves its queries and the reverse.
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
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from vsearch.artifacts import write_atomic, write_json
from vsearch.errors import ConfigError, DataError
from vsearch.images import IMAGE_EXTENSIONS, model_input
from vsearch.litert import FORMAT, sidecar_path

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


def derived_fingerprint(source_fingerprint: str, quantize: str) -> str:
    """The fingerprint an index records for vectors of this conversion (see the module doc)."""
    return source_fingerprint if SHARES_SOURCE_FINGERPRINT[quantize] else f"{source_fingerprint}:{quantize}"


def calibration_paths(
    folder: str | os.PathLike, count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
) -> list[Path]:
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


def _pixel_batches(paths: Sequence[Path], size: int) -> Iterator[list[np.ndarray]]:
    """Calibration photos through the road the served queries take, one at a time."""
    for path in paths:
        yield [model_input(path, size)[None]]


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


def convert_saved_model(
    model_dir: str | os.PathLike,
    quantize: str = "none",
    calibration: Sequence[Path] = (),
    image_size: int | None = None,
) -> bytes:
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
            converter=converter, debug_dataset=lambda: _pixel_batches(calibration[:1], image_size)
        )
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=float_nodes(debugger.calibrated_model)
        )
    return debugger.get_nondebug_quantized_model()


def tflite_metadata(source: dict, source_rel: str, quantize: str, model: bytes, calibration: dict | None) -> dict:
    """The sidecar: the SavedModel's metadata, re-labelled for the flatbuffer it describes."""
    import tensorflow as tf

    size, dim = int(source["image_size"]), int(source["embedding_dim"])
    return {
        **source,
        "format": FORMAT,
        "quantization": quantize,
        "fingerprint": derived_fingerprint(source["fingerprint"], quantize),
        "signatures": {
            SIGNATURE: {
                "inputs": {"images": f"float32[None,{size},{size},3]"},
                "outputs": {"embedding": f"float32[None,{dim}]"},
            }
        },
        "source": {"path": source_rel, "format": source.get("format"), "fingerprint": source["fingerprint"]},
        "tflite": {
            "bytes": len(model),
            "sha256": hashlib.sha256(model).hexdigest(),
            "converter": f"tensorflow {tf.__version__}",
            "calibration": calibration,
            "converted": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }


def write_tflite(model: bytes, metadata: dict, out: str | os.PathLike) -> Path:
    """Writes the flatbuffer and its sidecar, each replaced atomically."""
    write_atomic(out, model)
    write_json(sidecar_path(out), metadata)
    return Path(out)


def export_tflite(
    model_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    quantize: str = "none",
    calibration_dir: str | os.PathLike | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    log: Callable[[str], None] = print,
) -> Path:
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
    from vsearch.artifacts import read_metadata

    check_quantization(quantize)
    source = read_metadata(model_dir)
    out = Path(out) if out else default_out_path(model_dir, quantize)
    calibration, info = [], None
    if quantize == "int8":
        folder = calibration_dir or "data/photos/train"
        calibration = calibration_paths(folder, calibration_images)
        info = {"folder": str(folder), "images": len(calibration), "seed": CALIBRATION_SEED}
        log(f"calibrating int8 on {len(calibration)} images from {folder}")
    model = convert_saved_model(model_dir, quantize, calibration, int(source["image_size"]))
    rel = os.path.relpath(Path(model_dir).resolve(), out.parent.resolve())
    write_tflite(model, tflite_metadata(source, rel, quantize, model, info), out)
    log(f"wrote {out} ({len(model) / 2**20:.1f} MiB, quantization {quantize}) and {sidecar_path(out).name}")
    return out
