"""The walkthrough notebook runs top to bottom on the shared smoke run (SMOKE=1, SMOKE_DIR)."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_runs_in_smoke_mode(smoke_run, tmp_path):
    # The notebook reads the smoke run's models (the path a real run's artifacts take),
    # runs the evaluation itself and loads the SavedModel with plain TensorFlow.
    out = tmp_path / "executed.ipynb"
    run = smoke_run["root"]
    trained = {p: p.stat().st_mtime_ns for p in (run / "classifier" / "metrics.json", run / "siamese" / "metrics.json")}
    env = {**os.environ, "SMOKE": "1", "SMOKE_DIR": str(run), "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / "run_notebook.py"), "--out", str(out)],
        check=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    assert {p: p.stat().st_mtime_ns for p in trained} == trained  # read, not trained again
    assert (run / "reports" / "metrics.json").is_file()
    nb = nbformat.read(out, as_version=4)
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "mode: SMOKE" in text and "validation accuracy" in text
    assert any("image/png" in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", []))


def test_committed_notebook_outputs_stay_small():
    nb = nbformat.read(ROOT / "notebooks" / "visual_search.ipynb", as_version=4)
    images = sum(len(o.get("data", {}).get("image/png", "")) for cell in nb.cells for o in cell.get("outputs", []))
    assert images < 300 * 1024
