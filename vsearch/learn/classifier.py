"""Stage 1: fine-tune MobileNetV2 (ImageNet) as a category classifier.

:func:`train_classifier` reads as its steps: load the validated splits
(:mod:`vsearch.learn.datasets`), build the model in its parts, cache the frozen bottom's
features of the clean and augmented views (:func:`vsearch.learn.features.cache_views`), train
in two phases on those features:

1. head only (pooling, dropout, softmax) on the frozen backbone;
2. the top blocks from ``fine_tune_from`` on, BatchNormalization kept in inference mode;

then evaluate the full model on the validation photos and write the artifacts. The model
is built and both phases fit under ``config.strategy``
(:func:`vsearch.learn.fitting.distribution_strategy`); ``data.batch_size`` is the global batch. Class
imbalance is handled with inverse-frequency class weights; early stopping and a
best-on-validation checkpoint span both phases. Writes ``{out_dir}/``: ``classifier.keras``,
``config.json``, ``class_names.json``, ``metrics.json``, ``training_curves.png``,
``confusion_matrix.png``, ``logs/`` (TensorBoard).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from vsearch import config as cfg_mod
from vsearch.artifacts import write_atomic, write_json
from vsearch.augment import CUSTOMER_VIEW_SEED, classifier_view, customer_view
from vsearch.config import ClassifierConfig
from vsearch.errors import DataError
from vsearch.learn import metrics, models, plots
from vsearch.learn.datasets import image_dataset, load_splits
from vsearch.learn.features import TOP_PREDICT_BATCH, View, cache_views
from vsearch.learn.fitting import StopOnNonFiniteLoss, Timings, distribution_strategy, fit_verbosity


class Classifier(NamedTuple):
    """Stage 1's model in its parts; all four share the backbone's layers."""

    bottom: keras.Model  # pixels 0..255 -> feature maps at the cut (frozen, cached)
    top: keras.Model  # feature maps -> backbone output (fine-tuned in phase 2)
    head: models.ClassifierHead  # pooling, dropout, softmax
    model: keras.Model  # pixels 0..255 -> class probabilities (what is saved)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Inverse-frequency weights, normalised so the average sample weight is 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return {i: float(w) for i, w in enumerate(weights)}


def build_classifier(config: ClassifierConfig, num_classes: int) -> Classifier:
    """The backbone (``config.backbone_weights``), cut at ``config.fine_tune_from``, and a new head."""
    base = models.build_backbone(config.data.image_size, config.backbone_weights, config.alpha)
    bottom, top = models.split_backbone(base, config.fine_tune_from)
    head = models.ClassifierHead(num_classes, config.dropout, config.weight_decay)
    return Classifier(bottom, top, head, models.build_classifier(base, head, config.data.image_size))


def training_views(config: ClassifierConfig) -> list[View]:
    """The clean view and ``config.augment_views`` seeded augmented ones of every training image.

    ``customer`` augmentation uses the customer-photo views stage 2 trains on (so the
    caches are shared on disk); ``mild`` the milder :func:`vsearch.augment.classifier_view`.
    """
    view, seed = (
        (customer_view, CUSTOMER_VIEW_SEED + 1)
        if config.augmentation == "customer"
        else (classifier_view, config.data.seed + 1)
    )
    return [View("train clean")] + [View(f"train view {v + 1}", view, seed + v) for v in range(config.augment_views)]


def cache_features(
    bottom, train_ds, val_ds, config: ClassifierConfig, log: Callable[[str], None]
) -> tuple[np.ndarray, np.ndarray]:
    """(training views' feature maps, one block per view, validation feature maps)."""
    jobs = [(train_ds, view) for view in training_views(config)] + [(val_ds, View("validation"))]
    *train_views, x_val = cache_views(bottom, config.data, jobs, log)
    x_train = np.concatenate(train_views)
    return x_train, x_val


def top_model(classifier: Classifier) -> keras.Model:
    """Cached feature maps -> class probabilities: what phase 2 trains."""
    features = keras.Input(tuple(classifier.top.input.shape[1:]), name="features")
    return keras.Model(features, classifier.head(classifier.top(features)), name="classifier_top")


def pooled_features(classifier: Classifier, *feature_maps: np.ndarray) -> list[np.ndarray]:
    """The frozen top's pooled output of each array of feature maps: what phase 1 trains on.

    With the top frozen too, only the head trains in phase 1, so its input is computed
    once here instead of a pass through the top blocks in every step.
    """
    models.set_fine_tuning(classifier.top, False)
    pooled = keras.Sequential([classifier.top, classifier.head.pool])
    return [pooled.predict(x, batch_size=TOP_PREDICT_BATCH, verbose=0) for x in feature_maps]


def head_model(classifier: Classifier, pooled_dim: int) -> keras.Model:
    """Pooled vectors -> class probabilities (dropout and softmax of the head): phase 1's model."""
    pooled = keras.Input((pooled_dim,), name="pooled")
    return keras.Model(pooled, classifier.head.dense(classifier.head.dropout(pooled)), name="classifier_head")


def learning_rate(config: ClassifierConfig, initial: float, epochs: int, samples: int):
    """The phase's learning rate: constant, or cosine decay over the phase.

    With cosine decay late epochs take small steps, so the best-on-validation checkpoint
    is less a matter of which noisy epoch happened to be last.
    """
    if config.lr_schedule == "constant":
        return initial
    steps = epochs * int(np.ceil(samples / config.data.batch_size))
    return keras.optimizers.schedules.CosineDecay(initial, steps, alpha=0.05)


def fit_phase(
    model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    config: ClassifierConfig,
    epochs: int,
    initial_lr: float,
    class_weight: dict[int, float] | None,
    callbacks=(),
    verbose: int = 0,
) -> dict[str, list[float]]:
    """Compiles and fits one phase, early-stopped on validation accuracy; returns Keras' history.

    ``train`` and ``validation`` are (inputs, int labels); the model's output has one
    probability per class. Early stopping restores the phase's best weights; a loss that
    is no longer finite raises :class:`~vsearch.errors.TrainingError`.
    """
    onehot = lambda y: keras.utils.to_categorical(y, int(model.output.shape[-1]))  # noqa: E731
    early = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", mode="max", patience=config.patience, restore_best_weights=True
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate(config, initial_lr, epochs, len(train[0])), weight_decay=config.weight_decay
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    guard = StopOnNonFiniteLoss(
        f"training {model.name}", "lower head_learning_rate or fine_tune_learning_rate, or check the photos"
    )
    history = model.fit(
        train[0],
        onehot(train[1]),
        validation_data=(validation[0], onehot(validation[1])),
        epochs=epochs,
        batch_size=config.data.batch_size,
        class_weight=class_weight,
        shuffle=True,
        callbacks=[early, *callbacks, guard],
        verbose=verbose,
    ).history
    return {key: [float(v) for v in values] for key, values in history.items()}


def fit_classifier(
    classifier: Classifier,
    trainer,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    class_weight: dict[int, float] | None,
    config: ClassifierConfig,
    out: Path,
    timings: Timings,
    log: Callable[[str], None],
) -> list[dict[str, list[float]]]:
    """Phase 1, the head on the frozen top's pooled features; phase 2, the top blocks too.

    ``train``/``validation``: (cached feature maps, labels). ``trainer`` (:func:`top_model`)
    ends with the best weights on validation over both phases (kept in
    ``out/checkpoints/``). Returns each phase's Keras history.
    """
    checkpoint = out / "checkpoints" / "best.weights.h5"
    checkpoint.parent.mkdir(exist_ok=True)
    callbacks, verbose = [keras.callbacks.TensorBoard(str(out / "logs"))], fit_verbosity(log)
    with timings("pooled_cache_s"):
        p_train, p_val = pooled_features(classifier, train[0], validation[0])
    head = head_model(classifier, p_train.shape[1])
    with timings("head_s"):
        phases = [
            fit_phase(
                head,
                (p_train, train[1]),
                (p_val, validation[1]),
                config,
                config.head_epochs,
                config.head_learning_rate,
                class_weight,
                callbacks,
                verbose,
            )
        ]
    _log_phase(log, "head", phases[-1], timings["head_s"])
    del p_train, p_val
    trainer.save_weights(checkpoint)  # the best head (restored by early stopping)
    if config.fine_tune_epochs:
        models.set_fine_tuning(classifier.top, True)
        keep_best = keras.callbacks.ModelCheckpoint(
            str(checkpoint),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=max(phases[0]["val_accuracy"]),
        )
        with timings("fine_tune_s"):
            phases.append(
                fit_phase(
                    trainer,
                    train,
                    validation,
                    config,
                    config.fine_tune_epochs,
                    config.fine_tune_learning_rate,
                    class_weight,
                    [*callbacks, keep_best],
                    verbose,
                )
            )
        _log_phase(log, "fine_tune", phases[-1], timings["fine_tune_s"])
        with warnings.catch_warnings():  # optimizer state is not needed, and may differ
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            trainer.load_weights(str(checkpoint))  # best on validation over both phases
    return phases


def _log_phase(log: Callable[[str], None], name: str, history: dict[str, list[float]], seconds: float) -> None:
    log(
        f"  {name}: {len(history['loss'])} epochs, best val_accuracy {max(history['val_accuracy']):.4f}, {seconds:.0f}s"
    )


def joined_history(phases: list[dict[str, list[float]]]) -> tuple[dict[str, list[float]], list[int]]:
    """The phases' loss and accuracy curves end to end, and the epoch each phase starts at."""
    history: dict[str, list[float]] = {}
    starts = []
    for phase in phases:
        starts.append(len(history.get("loss", [])))
        for key, values in phase.items():
            if key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                history.setdefault(key, []).extend(values)
    return history, starts


def evaluate_classifier(classifier: Classifier, trainer, val_ds, x_val: np.ndarray, names: list[str]) -> dict:
    """Metrics of the full model on the validation photos, and how far it is from ``trainer``.

    The full model must compute what was trained on cached features: ``cache_max_abs_diff``
    is the largest difference of their probabilities (the float16 cache aside, zero).
    """
    probs = classifier.model.predict(val_ds, verbose=0)
    report = metrics.classification_report(val_ds.labels, probs.argmax(axis=1), names)
    cached_probs = trainer.predict(x_val, batch_size=TOP_PREDICT_BATCH, verbose=0)
    report["cache_max_abs_diff"] = float(np.abs(cached_probs - probs).max())
    return report


def write_classifier(
    out: Path, config: ClassifierConfig, names: list[str], model, result: dict, phase_starts: list[int]
) -> None:
    """The artifact folder: model, config, class names, metrics and their pictures."""
    model.save(out / "classifier.keras")
    cfg_mod.save_json(config, out / "config.json")
    write_json(out / "class_names.json", names)
    write_json(out / "metrics.json", result)
    save_png(plots.training_curves(result["history"], phase_starts[1:]), out / "training_curves.png")
    save_png(
        plots.confusion_matrix(
            np.asarray(result["confusion_matrix"]), names, f"validation accuracy {result['accuracy']:.3f}"
        ),
        out / "confusion_matrix.png",
    )


def save_png(figure, path: Path) -> None:
    """A matplotlib figure as a PNG at 100 dpi, written atomically."""
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def train_classifier(config: ClassifierConfig, log: Callable[[str], None] = print) -> dict:
    """Runs stage 1 end to end and writes the artifacts; returns the metrics dict."""
    keras.utils.set_random_seed(config.data.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings, started = Timings(), time.perf_counter()
    size, batch = config.data.image_size, config.data.batch_size
    strategy = distribution_strategy(config.strategy, log)

    with timings("load_s"):
        train, validation = load_splits(config.data, out / ".clean", log)
        names = train.class_names
        log(f"classes: {names}; train {train.report.counts()}; validation {validation.report.counts()}")
        train_ds = image_dataset(train.root, names, size, batch, cache=True)
        val_ds = image_dataset(validation.root, names, size, batch, cache=True)
        with strategy.scope():  # the variables the phases train, and the bottom sharing them
            classifier = build_classifier(config, len(names))
    with timings("feature_cache_s"):
        x_train, x_val = cache_features(classifier.bottom, train_ds, val_ds, config, log)
    y_train, y_val = train_ds.labels, val_ds.labels
    weights = class_weights(y_train, len(names)) if config.class_weighting else None
    with strategy.scope():  # models, optimizers and fit: Keras distributes each global batch
        trainer = top_model(classifier)
        phases = fit_classifier(
            classifier,
            trainer,
            (x_train, np.tile(y_train, config.augment_views + 1)),
            (x_val, y_val),
            weights,
            config,
            out,
            timings,
            log,
        )
    with timings("eval_s"):
        report = evaluate_classifier(classifier, trainer, val_ds, x_val, names)
    history, phase_starts = joined_history(phases)
    timings["total_s"] = time.perf_counter() - started
    result = {
        **report,
        "num_train": int(len(y_train)),
        "num_validation": int(len(y_val)),
        "train_counts": train.report.counts(),
        "validation_counts": validation.report.counts(),
        "excluded": {**train.report.bad, **validation.report.bad},
        "history": history,
        "timings": dict(timings),
        "replicas": trainer.distribute_strategy.num_replicas_in_sync,
    }  # what fit ran on
    write_classifier(out, config, names, classifier.model, result, phase_starts)
    log(
        f"validation accuracy {report['accuracy']:.4f} (balanced {report['balanced_accuracy']:.4f}); "
        f"total {timings['total_s']:.0f}s; wrote {out}"
    )
    return result


def load_classifier(out_dir: str | os.PathLike):
    """Loads a trained classifier and its class names from its artifact folder."""
    import vsearch.learn.losses  # noqa: F401  (registers custom objects)

    out = Path(out_dir)
    path = out / "classifier.keras"
    if not path.is_file():
        raise DataError(f"{path}: no trained classifier; run `vsearch train` (make train) first")
    model = keras.saving.load_model(path)
    names = json.loads((out / "class_names.json").read_text())
    return model, names


def load_classifier_config(out_dir: str | os.PathLike) -> ClassifierConfig:
    """The config a trained classifier was trained with (its ``config.json``)."""
    return cfg_mod.load_json(ClassifierConfig, Path(out_dir) / "config.json")
