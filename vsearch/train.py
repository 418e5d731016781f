"""Stage 1: fine-tune MobileNetV2 (ImageNet) as a category classifier.

Reads ``{data_dir}/train`` and ``{data_dir}/validation`` with
``keras.utils.image_dataset_from_directory``, then trains in two phases on cached
lower-backbone features (see :mod:`vsearch.features`):

1. head only (pooling, dropout, softmax) on the frozen backbone;
2. the top blocks from ``fine_tune_from`` on, BatchNormalization kept in inference mode.

Class imbalance is handled with inverse-frequency class weights; early stopping and a
best-on-validation checkpoint span both phases. Writes ``{out_dir}/``: ``classifier.keras``,
``config.json``, ``class_names.json``, ``metrics.json``, ``training_curves.png``,
``confusion_matrix.png``, ``logs/`` (TensorBoard).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from vsearch import config as cfg_mod
from vsearch.config import ClassifierConfig
from vsearch.checks import checks_path, clean_split
from vsearch.datasets import image_dataset
from vsearch.errors import DataError


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights, normalised so the average sample weight is 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return {i: float(w) for i, w in enumerate(weights)}


def load_splits(config: ClassifierConfig, cache_dir: Path, log: Callable[[str], None] = print):
    """Validates train and validation folders; returns clean roots, class names and reports."""
    root, checks = Path(config.data.data_dir), checks_path(config.data.feature_cache_dir)
    train_root, train_report = clean_split(root / "train", cache_dir, None, config.data.max_image_pixels, checks)
    names = train_report.class_names
    val_root, val_report = clean_split(root / "validation", cache_dir, names, config.data.max_image_pixels, checks)
    for split, report in (("train", train_report), ("validation", val_report)):
        for path, why in report.bad.items():
            log(f"  excluded ({split}): {path}: {why}")
        for path, why in report.convert.items():
            log(f"  normalised ({split}): {path}: {why}")
    return train_root, val_root, names, train_report, val_report


def train_classifier(config: ClassifierConfig, log: Callable[[str], None] = print) -> dict:
    """Runs stage 1 end to end and writes the artifacts; returns the metrics dict."""
    import keras

    from vsearch import metrics, models, plots
    from vsearch.augment import CUSTOMER_VIEW_SEED, classifier_view, customer_view
    from vsearch.features import TOP_PREDICT_BATCH, Frozen, extract_cached, files_digest

    keras.utils.set_random_seed(config.data.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    size, batch = config.data.image_size, config.data.batch_size

    train_root, val_root, names, train_report, val_report = load_splits(config, out / ".clean", log)
    log(f"classes: {names}; train {train_report.counts()}; validation {val_report.counts()}")
    train_ds = image_dataset(train_root, names, size, batch, cache=True)
    val_ds = image_dataset(val_root, names, size, batch, cache=True)
    y_train, y_val = train_ds.labels, val_ds.labels

    base = models.build_backbone(size, config.backbone_weights, config.alpha)
    bottom, top = models.split_backbone(base, config.fine_tune_from)
    head = models.ClassifierHead(len(names), config.dropout, config.weight_decay)
    classifier = models.build_classifier(base, head, size)
    timings["load_s"] = time.perf_counter() - t0

    # Cache the frozen bottom: one clean view and `augment_views` augmented views, all seeded
    # and kept on disk (`data.feature_cache_dir`): `vsearch siamese` reads the clean ones.
    t = time.perf_counter()
    cache_dir = config.data.feature_cache_dir or None
    digest = files_digest(train_ds.file_paths)
    frozen = Frozen(bottom, config.data.feature_runtime, cache_dir, log,
                    images=len(train_ds.file_paths) * (1 + config.augment_views) + len(val_ds.file_paths))
    x_views = [extract_cached(frozen, train_ds, train_ds.file_paths, cache_dir, log=log, label="train clean",
                              digest=digest)]
    view, view_seed = ((customer_view, CUSTOMER_VIEW_SEED + 1) if config.augmentation == "customer"
                       else (classifier_view, config.data.seed + 1))
    for v in range(config.augment_views):
        x_views.append(extract_cached(frozen, train_ds, train_ds.file_paths, cache_dir, transform=view,
                                      seed=view_seed + v, batch_size=batch, log=log, label=f"train view {v + 1}",
                                      digest=digest))
    x_train = np.concatenate(x_views)
    del x_views
    y_train_all = np.tile(y_train, config.augment_views + 1)
    x_val = extract_cached(frozen, val_ds, val_ds.file_paths, cache_dir, log=log, label="validation")
    timings["feature_cache_s"] = time.perf_counter() - t

    features_in = keras.Input(tuple(top.input.shape[1:]), name="features")
    trainer = keras.Model(features_in, head(top(features_in)), name="classifier_top")
    onehot = lambda y: keras.utils.to_categorical(y, len(names))  # noqa: E731
    weights = class_weights(y_train, len(names)) if config.class_weighting else None
    checkpoint_path = out / "checkpoints" / "best.weights.h5"
    checkpoint_path.parent.mkdir(exist_ok=True)
    tensorboard = keras.callbacks.TensorBoard(str(out / "logs"))
    history: dict[str, list[float]] = {}
    phase_starts = []

    def schedule(learning_rate: float, epochs: int, samples: int):
        # Cosine decay over the phase: late epochs take small steps, so the best-on-validation
        # checkpoint is less a matter of which noisy epoch happened to be last.
        if config.lr_schedule == "constant":
            return learning_rate
        steps = epochs * int(np.ceil(samples / batch))
        return keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)

    def fit(model, x, xv, epochs: int, learning_rate: float, phase: str, callbacks=()):
        early = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=config.patience,
                                              restore_best_weights=True)
        model.compile(
            optimizer=keras.optimizers.AdamW(schedule(learning_rate, epochs, len(x)),
                                             weight_decay=config.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=["accuracy"])
        t = time.perf_counter()
        h = model.fit(x, onehot(y_train_all), validation_data=(xv, onehot(y_val)),
                      epochs=epochs, batch_size=batch, class_weight=weights, shuffle=True,
                      callbacks=[early, tensorboard, *callbacks], verbose=2 if log is print else 0)
        timings[f"{phase}_s"] = time.perf_counter() - t
        phase_starts.append(len(history.get("loss", [])))
        for key, values in h.history.items():
            if key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                history.setdefault(key, []).extend(float(v) for v in values)
        log(f"  {phase}: {len(h.history['loss'])} epochs, best val_accuracy "
            f"{max(h.history['val_accuracy']):.4f}, {timings[f'{phase}_s']:.0f}s")
        return max(h.history["val_accuracy"])

    # Phase 1: the top is frozen too, so its pooled output is cached as well and only the
    # head trains (seconds per epoch instead of a pass through the top blocks).
    models.set_fine_tuning(top, False)
    t = time.perf_counter()
    pooled = keras.Sequential([top, head.pool])
    p_train = pooled.predict(x_train, batch_size=TOP_PREDICT_BATCH, verbose=0)
    p_val = pooled.predict(x_val, batch_size=TOP_PREDICT_BATCH, verbose=0)
    timings["pooled_cache_s"] = time.perf_counter() - t
    pooled_in = keras.Input((p_train.shape[1],), name="pooled")
    head_trainer = keras.Model(pooled_in, head.dense(head.dropout(pooled_in)), name="classifier_head")
    best = fit(head_trainer, p_train, p_val, config.head_epochs, config.head_learning_rate, "head")
    del p_train, p_val
    trainer.save_weights(checkpoint_path)  # the best head (restored by early stopping)
    if config.fine_tune_epochs:
        models.set_fine_tuning(top, True)
        checkpoint = keras.callbacks.ModelCheckpoint(
            str(checkpoint_path), monitor="val_accuracy", mode="max", save_best_only=True,
            save_weights_only=True, initial_value_threshold=best)
        fit(trainer, x_train, x_val, config.fine_tune_epochs, config.fine_tune_learning_rate, "fine_tune",
            [checkpoint])
        with warnings.catch_warnings():  # optimizer state is not needed, and may differ
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            trainer.load_weights(str(checkpoint_path))  # best on validation over both phases

    # Evaluate the assembled full model on real validation images.
    t = time.perf_counter()
    probs = classifier.predict(val_ds, verbose=0)
    timings["eval_s"] = time.perf_counter() - t
    y_pred = probs.argmax(axis=1)
    report = metrics.classification_report(y_val, y_pred, names)
    # The full model must compute what was trained on cached features (float16 cache aside).
    cached_probs = trainer.predict(x_val, batch_size=TOP_PREDICT_BATCH, verbose=0)
    report["cache_max_abs_diff"] = float(np.abs(cached_probs - probs).max())
    timings["total_s"] = time.perf_counter() - t0
    result = {**report, "num_train": int(len(y_train)), "num_validation": int(len(y_val)),
              "train_counts": train_report.counts(), "validation_counts": val_report.counts(),
              "excluded": {**train_report.bad, **val_report.bad},
              "history": history, "timings": timings}

    classifier.save(out / "classifier.keras")
    cfg_mod.save_json(config, out / "config.json")
    (out / "class_names.json").write_text(json.dumps(names) + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    fig = plots.training_curves(history, phase_starts[1:])
    fig.savefig(out / "training_curves.png", dpi=100)
    fig = plots.confusion_matrix(np.asarray(report["confusion_matrix"]), names,
                                 f"validation accuracy {report['accuracy']:.3f}")
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    log(f"validation accuracy {report['accuracy']:.4f} (balanced {report['balanced_accuracy']:.4f}); "
        f"total {timings['total_s']:.0f}s; wrote {out}")
    return result


def load_classifier(out_dir: str | os.PathLike):
    """Loads a trained classifier and its class names from its artifact folder."""
    import keras

    import vsearch.losses  # noqa: F401  (registers custom objects)
    import vsearch.models  # noqa: F401

    out = Path(out_dir)
    path = out / "classifier.keras"
    if not path.is_file():
        raise DataError(f"{path}: no trained classifier; run `vsearch train` (make train) first")
    model = keras.saving.load_model(path)
    names = json.loads((out / "class_names.json").read_text())
    return model, names
