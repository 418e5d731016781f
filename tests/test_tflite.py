"""TFLite export and runtime on a tiny exported model (a few conv layers at 32x32, seconds to convert)."""
import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import awkward_files, jpeg_bytes, make_image_folder, png_bytes
from vsearch import cli, models, tflite
from vsearch.embedder import SavedModelEmbedder, load_embedder
from vsearch.errors import ConfigError, DataError, ImageError
from vsearch.export import export_embedding, read_metadata
from vsearch.images import decode_image, resize_pixels

SIZE = 32


def tiny_tower(seed: int = 0):
    """MobileNetV2's kinds of layers (conv, BatchNorm, ReLU6, depthwise, pooling, dense, L2), shallow.

    The last conv has 2,048 weights, above the converter's 1,024-element floor, so that
    ``dynamic`` really quantizes something.
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    base = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), layers.Conv2D(16, 3, strides=2, padding="same"), layers.BatchNormalization(),
        layers.ReLU(6.0), layers.DepthwiseConv2D(3, padding="same"), layers.ReLU(6.0), layers.Conv2D(128, 1),
    ], name=models.BACKBONE_NAME)
    return models.build_tower(base, 8, SIZE)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model exported as a SavedModel and converted three ways."""
    root = tmp_path_factory.mktemp("tflite")
    data = make_image_folder(root / "data")
    model_dir = export_embedding(tiny_tower(), root / "embedding", {"class_names": ["blue", "green", "red"]})
    files = {q: tflite.export_tflite(model_dir, None, q, data / "train", 12, log=lambda *_: None)
             for q in tflite.QUANTIZATIONS}
    photos = sorted(p for p in (data / "validation").rglob("*") if p.is_file())
    return {"root": root, "data": data, "model": model_dir, "files": files, "saved": SavedModelEmbedder(model_dir),
            "blobs": [p.read_bytes() for p in photos], "photos": photos}


def cosine(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_draft_decodes_big_jpegs_at_reduced_scale():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 200, 3), dtype=np.uint8))
    assert decode_image(jpeg_bytes(photo)).shape == (160, 200, 3)
    assert decode_image(jpeg_bytes(photo), draft_size=SIZE).shape == (40, 50, 3)  # 1/4, both sides >= 32
    assert decode_image(jpeg_bytes(photo), draft_size=80).shape == (80, 100, 3)  # 1/2 only
    assert decode_image(jpeg_bytes(photo), draft_size=81).shape == (160, 200, 3)  # 1/2 would be < 81
    assert decode_image(png_bytes(photo), draft_size=SIZE).shape == (160, 200, 3)  # not a JPEG: untouched
    assert tflite.decode_pixels(jpeg_bytes(photo), SIZE).shape == (SIZE, SIZE, 3)


def test_fp32_matches_the_saved_model(tiny):
    embedder = load_embedder(tiny["files"]["none"], num_threads=2)
    pixels = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 3)).astype(np.float32)
    assert np.abs(embedder.embed_pixels(pixels) - tiny["saved"].embed_pixels(pixels)).max() <= 1e-5
    ours, theirs = embedder.embed_bytes(tiny["blobs"]), tiny["saved"].embed_bytes(tiny["blobs"])
    png = np.array([p.suffix == ".png" for p in tiny["photos"]])
    assert np.abs(ours[png] - theirs[png]).max() <= 1e-5  # lossless: decoding + resize are exact
    # JPEG: Pillow's libjpeg runs the exact DCT, TensorFlow's the fast one (pixels differ by ~1 level).
    assert cosine(ours, theirs).min() > 0.999


def test_awkward_images_decode_like_the_graph(tmp_path):
    from vsearch.images import tf_decode_and_resize

    files = awkward_files(tmp_path)
    for name in ("gray", "rgba", "sixteen"):  # PNG: grayscale expanded, alpha over white, 16 -> 8 bit
        blob = files[name].read_bytes()
        graph = tf_decode_and_resize(blob, SIZE).numpy()
        assert np.abs(tflite.decode_pixels(blob, SIZE) - graph).max() <= 1.0, name
    # serving_default ignores EXIF orientation, so the TFLite path does too (the JPEG decoders
    # differ by a level or two; the upright photo would differ by far more).
    blob = files["exif"].read_bytes()
    graph = tf_decode_and_resize(blob, SIZE).numpy()
    assert np.abs(tflite.decode_pixels(blob, SIZE) - graph).mean() <= 2.0
    upright = resize_pixels(decode_image(blob), SIZE).numpy()
    assert np.abs(upright - graph).mean() > 10.0


def test_batch_sizes_one_and_five_agree(tiny):
    embedder = tflite.TFLiteEmbedder(tiny["files"]["none"], num_threads=1)
    together = embedder.embed_bytes(tiny["blobs"][:5])
    assert together.shape == (5, 8)
    one_by_one = np.concatenate([embedder.embed_bytes([b]) for b in tiny["blobs"][:5]])
    assert np.abs(together - one_by_one).max() <= 1e-5
    assert np.abs(embedder.embed_bytes(tiny["blobs"][:5]) - together).max() <= 1e-6  # resized back
    chunked = tflite.TFLiteEmbedder(tiny["files"]["none"], max_batch=2)  # interpreter calls of 2, 2, 1
    assert np.abs(chunked.embed_bytes(tiny["blobs"][:5]) - together).max() <= 1e-5
    assert embedder.embed_bytes([]).shape == (0, 8)


def test_quantized_models_are_smaller_and_close(tiny):
    sizes = {q: f.stat().st_size for q, f in tiny["files"].items()}
    assert sizes["dynamic"] < sizes["none"] and sizes["int8"] < sizes["none"]
    theirs = tiny["saved"].embed_bytes(tiny["blobs"])
    for quantize, bound in (("dynamic", 0.99), ("int8", 0.97)):
        ours = load_embedder(tiny["files"][quantize]).embed_bytes(tiny["blobs"])
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        # Measured on these 9 photos: dynamic ~0.9999, int8 >= 0.986; the bound leaves room
        # for other CPUs' kernels, and still fails if calibration or scales go wrong.
        assert cosine(ours, theirs).min() > bound, quantize


def op_output_types(model: bytes) -> list[tuple[str, str]]:
    """(op, output tensor type) of every op of a flatbuffer, in order."""
    from ai_edge_litert import schema_py_generated as schema

    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    root = schema.Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = root.OperatorCodes(op.OpcodeIndex())
        out.append((ops[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())],
                    types[graph.Tensors(op.Outputs(0)).Type()]))
    return out


def test_int8_keeps_only_the_first_depthwise_conv_in_float(tiny):
    computing = [(op, kind) for op, kind in op_output_types(tiny["files"]["int8"].read_bytes())
                 if op not in ("QUANTIZE", "DEQUANTIZE")]
    first_depthwise = [op for op, _ in computing].index("DEPTHWISE_CONV_2D")
    assert [(i, op) for i, (op, kind) in enumerate(computing) if kind != "INT8"] == [
        (first_depthwise, "DEPTHWISE_CONV_2D")]
    assert computing[first_depthwise][1] == "FLOAT32"


def test_bad_bytes_raise_image_error(tiny):
    embedder = load_embedder(tiny["files"]["int8"])
    truncated = jpeg_bytes(Image.new("RGB", (200, 200), (10, 200, 30)))[:300]
    for bad, reason in ((b"", "empty"), (b"not an image", "not a recognised"), (truncated, "corrupt")):
        with pytest.raises(ImageError, match=reason):
            embedder.embed_bytes([tiny["blobs"][0], bad])
    assert embedder.embed_bytes(tiny["blobs"][:2]).shape == (2, 8)  # still alive
    with pytest.raises(ImageError, match="expected"):
        embedder.embed_pixels(np.zeros((2, 16, 16, 3), np.float32))


def test_sidecar_round_trip_and_fingerprints(tiny, tmp_path):
    source = read_metadata(tiny["model"])
    for quantize, path in tiny["files"].items():
        assert path == tiny["model"].parent / f"embedding{'' if quantize == 'none' else '-' + quantize}.tflite"
        meta = tflite.read_tflite_metadata(path)
        assert meta == json.loads(tflite.sidecar_path(path).read_text())
        assert meta["format"] == tflite.FORMAT and meta["quantization"] == quantize
        assert meta["class_names"] == source["class_names"] and meta["image_size"] == SIZE
        assert meta["source"]["fingerprint"] == source["fingerprint"]
        assert tflite.source_model_dir(path, meta).resolve() == tiny["model"].resolve()
        assert meta["tflite"]["bytes"] == path.stat().st_size
        assert (meta["tflite"]["calibration"] or {}).get("images") == (12 if quantize == "int8" else None)
    fingerprints = {q: load_embedder(f).fingerprint for q, f in tiny["files"].items()}
    assert fingerprints == {"none": source["fingerprint"], "dynamic": source["fingerprint"] + ":dynamic",
                            "int8": source["fingerprint"] + ":int8"}

    copy = tmp_path / "copy.tflite"
    copy.write_bytes(tiny["files"]["none"].read_bytes())
    with pytest.raises(DataError, match="copy.tflite.json: missing"):
        tflite.read_tflite_metadata(copy)
    shutil.copy(tflite.sidecar_path(tiny["files"]["int8"]), tflite.sidecar_path(copy))
    with pytest.raises(DataError, match="does not describe copy.tflite"):
        tflite.read_tflite_metadata(copy)


def test_load_embedder_dispatch_and_errors(tiny, tmp_path):
    assert isinstance(load_embedder(tiny["model"]), SavedModelEmbedder)
    assert isinstance(load_embedder(tiny["files"]["none"], num_threads=1), tflite.TFLiteEmbedder)
    with pytest.raises(DataError, match="no such file or folder"):
        load_embedder(tmp_path / "nowhere")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(DataError, match="not a SavedModel folder or a .tflite file"):
        load_embedder(tmp_path / "model.onnx")
    with pytest.raises(DataError, match="no such TFLite file"):
        load_embedder(tmp_path / "missing.tflite")
    with pytest.raises(ConfigError, match="num_threads"):
        tflite.TFLiteEmbedder(tiny["files"]["none"], num_threads=0)
    with pytest.raises(ConfigError, match="max_batch"):
        tflite.TFLiteEmbedder(tiny["files"]["none"], max_batch=0)


def test_calibration_sample(tiny, tmp_path):
    train = tiny["data"] / "train"
    sample = tflite.calibration_paths(train, 5)
    assert len(sample) == 5 and sample == sorted(sample) and sample == tflite.calibration_paths(train, 5)
    assert len(tflite.calibration_paths(train, 1000)) == 18  # all of them
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="no images to calibrate"):
        tflite.calibration_paths(tmp_path / "empty")
    with pytest.raises(DataError, match="calibration folder not found"):
        tflite.calibration_paths(tmp_path / "nowhere")


def test_cli_export(tiny, tmp_path, capsys):
    out = tmp_path / "cli.tflite"
    assert cli.main(["export", "--model", str(tiny["model"]), "--out", str(out)]) == 0
    assert out.is_file() and tflite.sidecar_path(out).is_file()
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--quantize", "fp16"], "--quantize must be one of none, dynamic, int8, got 'fp16'"),
    (["--format", "onnx"], "--format must be tflite"),
    (["--quantize", "none", "--calibration", "x"], "--calibration is only used by --quantize int8"),
    (["--quantize", "int8", "--calibration", "EMPTY"], "no images to calibrate int8 on"),
    (["--model", "MISSING"], "not a SavedModel"),
])
def test_cli_export_bad_args_exit_2_with_one_line(tiny, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    args = [{"EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "none")}.get(a, a) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny["model"])]
    assert cli.main(["export", *args, "--out", str(tmp_path / "x.tflite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x.tflite").exists()


def test_eval_reports_parity_with_the_source(tiny, tmp_path):
    from vsearch import config as c
    from vsearch.evaluate import run_eval

    cfg = c.apply_overrides(c.preset(c.EvalConfig, "smoke"), {
        "data.data_dir": str(tiny["data"]), "model_dir": str(tiny["files"]["none"]),
        "reports_dir": str(tmp_path / "r"), "baselines": "false", "num_threads": "1",
        "data.feature_cache_dir": str(tmp_path / "features")})
    summary = run_eval(cfg, log=lambda *_: None)
    assert list(summary["models"]) == ["exported embedding (SavedModel)", "exported embedding (TFLite fp32)"]
    assert summary["model"] == "exported embedding (TFLite fp32)"
    parity = summary["parity"]
    assert parity["bytes"]["num_images"] == 9 and parity["bytes"]["cosine_min"] > 0.999
    assert parity["pixels"]["cosine_min"] > 0.9999  # model alone: no decoder in the way
    assert parity["reference_fingerprint"] == read_metadata(tiny["model"])["fingerprint"]
    text = (tmp_path / "r" / "eval.md").read_text()
    assert "| exported embedding (TFLite fp32) |" in text and "Parity of exported embedding (TFLite fp32)" in text

    with pytest.raises(DataError, match="not a SavedModel"):
        run_eval(c.apply_overrides(cfg, {"reference_dir": str(tmp_path)}), log=lambda *_: None)
    other = export_embedding(tiny_tower(seed=1), tmp_path / "other", {"class_names": ["blue", "green", "red"]})
    with pytest.raises(DataError, match="was converted from"):
        run_eval(c.apply_overrides(cfg, {"reference_dir": str(other)}), log=lambda *_: None)


def test_search_with_tflite_never_imports_tensorflow(tiny, tmp_path):
    """A TFLite model serves search (decode, resize, embed, index) without TensorFlow."""
    import subprocess
    import sys

    code = f"""
import sys
from vsearch.search import Searcher, build_catalog
from vsearch.tflite import TFLiteEmbedder
embedder = TFLiteEmbedder({str(tiny["files"]["none"])!r})
catalog, _ = build_catalog(embedder, {str(tiny["data"] / "train")!r}, kind="exact")
result = Searcher(embedder, catalog).search({str(tiny["photos"][0])!r}, 3)
assert len(result.matches) == 3, result
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("LOADED", loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout


@pytest.mark.parametrize("text, message", [("{", "unreadable"), ("[]", "not vsearch metadata")])
def test_damaged_sidecar_is_a_data_error(tmp_path, text, message):
    model = tmp_path / "embedding.tflite"
    model.write_bytes(b"flatbuffer")
    tflite.sidecar_path(model).write_text(text)
    with pytest.raises(DataError, match=f"embedding.tflite.json: {message}"):
        tflite.read_tflite_metadata(model)
