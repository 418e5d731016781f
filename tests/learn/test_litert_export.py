"""TFLite conversion (vsearch.learn.litert_export) of the tiny exported model of conftest's ``tiny`` fixture."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY_SIZE as SIZE
from conftest import cosine, tiny_tower

from vsearch import cli, litert
from vsearch.artifacts import read_metadata
from vsearch.embedder import embed_images, load_embedder
from vsearch.errors import DataError
from vsearch.learn import litert_export as tflite
from vsearch.learn.export import export_embedding


def test_quantized_models_are_smaller_and_close(tiny):
    sizes = {q: f.stat().st_size for q, f in tiny["files"].items()}
    assert sizes["dynamic"] < sizes["none"] and sizes["int8"] < sizes["none"]
    theirs = embed_images(tiny["saved"], tiny["blobs"]).vectors
    for quantize, bound in (("dynamic", 0.99), ("int8", 0.97)):
        ours = embed_images(load_embedder(tiny["files"][quantize]), tiny["blobs"]).vectors
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
        out.append(
            (ops[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())], types[graph.Tensors(op.Outputs(0)).Type()])
        )
    return out


def test_int8_keeps_only_the_first_depthwise_conv_in_float(tiny):
    computing = [
        (op, kind)
        for op, kind in op_output_types(tiny["files"]["int8"].read_bytes())
        if op not in ("QUANTIZE", "DEQUANTIZE")
    ]
    first_depthwise = [op for op, _ in computing].index("DEPTHWISE_CONV_2D")
    assert [(i, op) for i, (op, kind) in enumerate(computing) if kind != "INT8"] == [
        (first_depthwise, "DEPTHWISE_CONV_2D")
    ]
    assert computing[first_depthwise][1] == "FLOAT32"


def test_sidecar_round_trip_and_fingerprints(tiny, tmp_path):
    source = read_metadata(tiny["model"])
    for quantize, path in tiny["files"].items():
        assert path == tiny["model"].parent / f"embedding{'' if quantize == 'none' else '-' + quantize}.tflite"
        meta = litert.read_tflite_metadata(path)
        assert meta == json.loads(litert.sidecar_path(path).read_text())
        assert meta["format"] == litert.FORMAT and meta["quantization"] == quantize
        assert meta["class_names"] == source["class_names"] and meta["image_size"] == SIZE
        assert meta["source"]["fingerprint"] == source["fingerprint"]
        assert litert.source_model_dir(path, meta).resolve() == tiny["model"].resolve()
        assert meta["tflite"]["bytes"] == path.stat().st_size
        assert (meta["tflite"]["calibration"] or {}).get("images") == (12 if quantize == "int8" else None)
    fingerprints = {q: load_embedder(f).fingerprint for q, f in tiny["files"].items()}
    assert fingerprints == {
        "none": source["fingerprint"],
        "dynamic": source["fingerprint"] + ":dynamic",
        "int8": source["fingerprint"] + ":int8",
    }

    copy = tmp_path / "copy.tflite"
    copy.write_bytes(tiny["files"]["none"].read_bytes())
    with pytest.raises(DataError, match="copy.tflite.json: missing"):
        litert.read_tflite_metadata(copy)
    shutil.copy(litert.sidecar_path(tiny["files"]["int8"]), litert.sidecar_path(copy))
    with pytest.raises(DataError, match="does not describe copy.tflite"):
        litert.read_tflite_metadata(copy)


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
    assert out.is_file() and litert.sidecar_path(out).is_file()
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quantize", "fp16"], "--quantize must be one of none, dynamic, int8, got 'fp16'"),
        (["--format", "onnx"], "--format must be tflite"),
        (["--quantize", "none", "--calibration", "x"], "--calibration is only used by --quantize int8"),
        (["--quantize", "int8", "--calibration", "EMPTY"], "no images to calibrate int8 on"),
        (["--model", "MISSING"], "not a SavedModel"),
    ],
)
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
    from vsearch.learn.evaluate import run_eval

    cfg = c.apply_overrides(
        c.preset(c.EvalConfig, "smoke"),
        {
            "data.data_dir": str(tiny["data"]),
            "model_dir": str(tiny["files"]["none"]),
            "reports_dir": str(tmp_path / "r"),
            "baselines": "false",
            "num_threads": "1",
            "data.feature_cache_dir": str(tmp_path / "features"),
        },
    )
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
