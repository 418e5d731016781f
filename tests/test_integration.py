"""Opt-in: a short real run on a slice of the shared data with the real ImageNet weights.

make test-integration      (or VSEARCH_INTEGRATION=1 pytest -m integration)
"""

import os
import shutil
from pathlib import Path

import pytest

from vsearch import config as c

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASET = SHARED / "datasets" / "clothing-dataset-small"
WEIGHTS = SHARED / "keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.environ.get("VSEARCH_INTEGRATION"), reason="opt-in: set VSEARCH_INTEGRATION=1"),
    pytest.mark.skipif(not DATASET.is_dir() or not WEIGHTS.is_file(), reason="needs ../shared data and weights"),
]


def _slice(dest: Path, per_class: dict[str, int]) -> Path:
    for split, count in per_class.items():
        for folder in sorted((DATASET / split).iterdir()):
            out = dest / split / folder.name
            out.mkdir(parents=True)
            for path in sorted(folder.iterdir())[:count]:
                shutil.copy(path, out / path.name)
    return dest


def test_short_real_run(tmp_path, monkeypatch):
    from vsearch.learn.classifier import train_classifier
    from vsearch.learn.evaluate import run_eval
    from vsearch.learn.siamese import train_siamese

    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    (keras_home / "models" / WEIGHTS.name).symlink_to(WEIGHTS)
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    data = _slice(tmp_path / "data", {"train": 24, "validation": 8})
    data_cfg = c.DataConfig(data_dir=str(data), image_size=128, batch_size=16)
    clf = c.ClassifierConfig(
        data=data_cfg, out_dir=str(tmp_path / "clf"), augment_views=1, head_epochs=4, fine_tune_epochs=2
    )
    clf_metrics = train_classifier(clf, log=print)
    assert clf_metrics["accuracy"] > 0.6  # 7 classes: chance is 0.14
    sia = c.SiameseConfig(
        data=data_cfg,
        classifier_dir=clf.out_dir,
        out_dir=str(tmp_path / "emb"),
        work_dir=str(tmp_path / "sia"),
        views_per_image=2,
        triplets_per_epoch=256,
        epochs=1,
    )
    sia_metrics = train_siamese(sia, log=print)
    assert sia_metrics["validation"]["val_precision@1"] > 0.6
    ev = c.EvalConfig(
        data=data_cfg, model_dir=sia.out_dir, classifier_dir=clf.out_dir, reports_dir=str(tmp_path / "reports")
    )
    summary = run_eval(ev, log=print)
    frozen = summary["models"]["frozen ImageNet MobileNetV2 (GAP)"]["overall"]["precision@1"]
    assert frozen > 0.5  # the real ImageNet weights were loaded (random weights: ~0.2)
