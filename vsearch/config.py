"""Configuration as frozen dataclasses with named presets.

Every stage takes one config object. Presets are plain functions returning a config;
``smoke`` shrinks everything so that a whole stage runs in seconds on a CPU (tests use it).

Command line::

    vsearch train --preset default --set fine_tune_epochs=6 --set data.batch_size=64

Overrides are ``key=value`` with dotted keys for nested configs; values are parsed
with the field's declared type and unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsearch.artifacts import write_json
from vsearch.errors import ConfigError

CLASS_NAMES = ("dress", "hat", "longsleeve", "pants", "shoes", "shorts", "t-shirt")

# What may run the frozen backbone for the feature caches (see vsearch.learn.features.resolve_runtime).
FEATURE_RUNTIMES = ("auto", "keras", "tflite")
# The classifier's augmented views (ClassifierConfig.augmentation).
AUGMENTATIONS = ("mild", "customer")
# What the training stages' fit runs under (vsearch.learn.fitting.distribution_strategy): auto is
# mirrored when more than one GPU is visible, else none (TensorFlow's default strategy).
STRATEGIES = ("auto", "none", "mirrored")


# Where `vsearch data` leaves the curated photos (train/ and validation/, a folder per
# category) and where training reads them: a shop's own photos as much as the clothing demo's.
DATA_DIR = "data/photos"


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are read.

    Attributes:
        data_dir: Root holding ``train/`` and ``validation/``, one sub-folder per class.
        image_size: Square input side in pixels (MobileNetV2's ImageNet weights: 224).
        batch_size: Batch size for reading and for feature extraction.
        seed: Seed for shuffling, augmentation and sampling.
        max_image_pixels: Larger images are rejected (decompression bombs).
        feature_cache_dir: Where work is kept between stages: frozen-backbone features, the
            LiteRT flatbuffer, image checks (``image-checks.json``, keyed by the files' bytes).
            Empty: features in memory only, every image decoded to check it.
        feature_runtime: What runs the frozen backbone to make those features: ``keras``,
            ``tflite`` (LiteRT + XNNPACK, faster on a CPU, same numbers) or ``auto``
            (``tflite`` unless TensorFlow sees a GPU or the images are too few to pay for the
            conversion: ``vsearch.learn.features.resolve_runtime``).
    """

    data_dir: str = DATA_DIR
    image_size: int = 224
    batch_size: int = 32
    seed: int = 1337
    max_image_pixels: int = 40_000_000
    feature_cache_dir: str = ".cache/features"
    feature_runtime: str = "auto"

    def __post_init__(self):
        _check_finite(self)
        _check(self.image_size >= 32, "data.image_size must be >= 32 (MobileNetV2's minimum)")
        _check(self.batch_size >= 1, "data.batch_size must be >= 1")
        _check(self.max_image_pixels > 0, "data.max_image_pixels must be > 0")
        _check(
            self.feature_runtime in FEATURE_RUNTIMES,
            f"data.feature_runtime must be one of {', '.join(FEATURE_RUNTIMES)}",
        )


@dataclass(frozen=True)
class ClassifierConfig:
    """Stage 1, ``vsearch train``: fine-tune MobileNetV2 as a category classifier.

    Training runs the frozen lower part of the backbone once per image view and caches
    its output, so both phases (head only, then the top blocks) cost only the top part.

    ``strategy`` (``auto``, ``none``, ``mirrored``) is the ``tf.distribute`` strategy the
    trained parts are built and fit under (:func:`vsearch.learn.fitting.distribution_strategy`);
    ``data.batch_size`` is the global batch, split across its replicas.

    ``vsearch train --preset default``
    """

    data: DataConfig = field(default_factory=DataConfig)
    out_dir: str = "saved_models/classifier"
    backbone_weights: str = "imagenet"  # imagenet | none | path to a .h5/.weights.h5 file
    alpha: float = 1.0
    fine_tune_from: str = "block_14"  # first trainable block; earlier layers stay frozen
    augment_views: int = 3  # augmented views cached per training image (plus the clean one)
    # mild: flips, small rotations, zoom, shifts, contrast, brightness (augment.classifier_view).
    # customer: the seeded customer-photo views stage 2 trains on (shared on disk), measured
    # worse for the classifier.
    augmentation: str = "mild"
    head_epochs: int = 6
    fine_tune_epochs: int = 8
    head_learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 2e-4
    lr_schedule: str = "cosine"  # cosine decay over each phase | constant
    dropout: float = 0.3
    label_smoothing: float = 0.1
    weight_decay: float = 1e-4
    patience: int = 5  # the best epoch often follows a dip
    class_weighting: bool = True
    strategy: str = "auto"  # auto | none | mirrored; data.batch_size is the global batch

    def __post_init__(self):
        _check_finite(self)
        _check_strategy(self.strategy)
        _check(self.augment_views >= 0, "augment_views must be >= 0")
        _check(self.augmentation in AUGMENTATIONS, f"augmentation must be one of {', '.join(AUGMENTATIONS)}")
        _check(self.lr_schedule in ("cosine", "constant"), "lr_schedule must be 'cosine' or 'constant'")
        _check(self.head_epochs >= 1, "head_epochs must be >= 1")
        _check(self.fine_tune_epochs >= 0, "fine_tune_epochs must be >= 0")
        _check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        _check(0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")
        _check(self.alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4), "alpha must be a MobileNetV2 width")


@dataclass(frozen=True)
class SiameseConfig:
    """Stage 2, ``vsearch siamese``: triplet training of the embedding tower and export.

    ``strategy`` as in :class:`ClassifierConfig`; ``batch_size`` is the global batch of
    triplets. The in-batch term's negatives are each replica's share of it, so with R
    replicas each anchor meets ``batch_size / R - 1`` of them.

    ``vsearch siamese --preset default``
    """

    data: DataConfig = field(default_factory=DataConfig)
    classifier_dir: str = "saved_models/classifier"
    out_dir: str = "saved_models/embedding"
    work_dir: str = "saved_models/siamese"
    embedding_dim: int = 256  # the instance branch's dimensions
    class_dim: int = 128  # the frozen class branch's dimensions (0: no class branch)
    class_weight: float = 0.3  # share of the class branch in the cosine similarity
    class_probs_weight: float = 1.0  # the classifier's probabilities in the class branch (0: off)
    instance_init: str = "imagenet"  # instance branch's top blocks start from: imagenet | classifier
    fine_tune_from: str = "block_14"
    views_per_image: int = 4  # cached views per catalog image: 1 clean + simulated customer photos
    triplets_per_epoch: int = 4096
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-4
    margin: float = 0.2
    instance_fraction: float = 0.5  # share of triplets whose positive is a view of the anchor
    instance_loss_weight: float = 1.0  # in-batch softmax term: every other item in the batch is a negative
    temperature: float = 0.1
    mining: str = "semihard"  # semihard | random
    weight_decay: float = 1e-4
    strategy: str = "auto"  # auto | none | mirrored; batch_size is the global batch

    def __post_init__(self):
        _check_finite(self)
        _check_strategy(self.strategy)
        _check(self.embedding_dim >= 2, "embedding_dim must be >= 2")
        _check(self.views_per_image >= 1, "views_per_image must be >= 1")
        _check(self.triplets_per_epoch >= self.batch_size, "triplets_per_epoch must be >= batch_size")
        _check(self.epochs >= 0, "epochs must be >= 0")
        _check(self.margin > 0, "margin must be > 0")
        _check(0.0 <= self.instance_fraction <= 1.0, "instance_fraction must be in [0, 1]")
        _check(self.mining in ("semihard", "random"), "mining must be 'semihard' or 'random'")
        _check(self.class_dim >= 0, "class_dim must be >= 0")
        _check(0.0 <= self.class_weight < 1.0, "class_weight must be in [0, 1)")
        _check(self.class_probs_weight >= 0, "class_probs_weight must be >= 0")
        _check(self.instance_init in ("imagenet", "classifier"), "instance_init must be 'imagenet' or 'classifier'")
        _check(self.instance_loss_weight >= 0, "instance_loss_weight must be >= 0")
        _check(self.temperature > 0, "temperature must be > 0")


@dataclass(frozen=True)
class EvalConfig:
    """Stage 3, ``vsearch eval``: retrieval metrics and pictures from the exported model.

    ``vsearch eval --preset default``
    """

    data: DataConfig = field(default_factory=DataConfig)
    model_dir: str = "saved_models/embedding"
    classifier_dir: str = "saved_models/classifier"
    reports_dir: str = "reports"
    top_k: int = 5
    grid_queries: int = 5
    customer_queries: int = 0  # 0: every validation image
    baselines: bool = True
    baseline_weights: str = "imagenet"  # weights of the frozen baseline (a); smoke: none
    seed: int = 7
    num_threads: int = 0  # TFLite model_dir: decoding and inference threads (0: every core)
    reference_dir: str = ""  # TFLite model_dir: SavedModel for parity (empty: the one it came from)

    def __post_init__(self):
        _check_finite(self)
        _check(self.top_k >= 1, "top_k must be >= 1")
        _check(self.customer_queries >= 0, "customer_queries must be >= 0")
        _check(self.grid_queries >= 1, "grid_queries must be >= 1")
        _check(self.num_threads >= 0, "num_threads must be >= 0 (0: every core)")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_strategy(strategy: str) -> None:
    _check(strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def _check_finite(config) -> None:
    """Refuses NaN and infinite numbers: a NaN learning rate trains NaN weights without an error."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}: expected a finite number, got {value}")


def _smoke_data(data_dir: str = "data/smoke") -> DataConfig:
    return DataConfig(data_dir=data_dir, image_size=32, batch_size=8, max_image_pixels=40_000_000)


PRESETS: dict[type, dict[str, Any]] = {
    ClassifierConfig: {
        "default": lambda: ClassifierConfig(),
        "smoke": lambda: ClassifierConfig(
            data=_smoke_data(),
            backbone_weights="none",
            alpha=0.35,
            augment_views=1,
            head_epochs=1,
            fine_tune_epochs=1,
            patience=1,
            out_dir="saved_models/smoke/classifier",
        ),
    },
    SiameseConfig: {
        "default": lambda: SiameseConfig(),
        "smoke": lambda: SiameseConfig(
            data=_smoke_data(),
            classifier_dir="saved_models/smoke/classifier",
            out_dir="saved_models/smoke/embedding",
            work_dir="saved_models/smoke/siamese",
            embedding_dim=8,
            class_dim=4,
            instance_init="classifier",
            views_per_image=2,
            triplets_per_epoch=16,
            epochs=1,
            batch_size=8,
        ),
    },
    EvalConfig: {
        "default": lambda: EvalConfig(),
        "smoke": lambda: EvalConfig(
            data=_smoke_data(),
            model_dir="saved_models/smoke/embedding",
            classifier_dir="saved_models/smoke/classifier",
            reports_dir="reports/smoke",
            top_k=3,
            grid_queries=2,
            baseline_weights="none",
        ),
    },
}


def preset(cls: type, name: str = "default"):
    """Returns the named preset of a config class (``default`` or ``smoke``)."""
    presets = PRESETS.get(cls, {})
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r} for {cls.__name__}; choose from {sorted(presets)}")
    return presets[name]()


def _parse_value(raw: str, annotation: Any, key: str) -> Any:
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {raw!r}")
    if annotation in (int, float):
        try:
            value = annotation(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {raw!r}")
        return value
    if annotation is str:
        return raw
    raise ConfigError(f"{key}: cannot be overridden from text")


def apply_overrides(config, overrides: Mapping[str, Any]):
    """Returns a copy of ``config`` with dotted-key overrides applied and type-checked.

    Args:
        config: A config dataclass instance.
        overrides: ``{"fine_tune_epochs": "4", "data.image_size": "160"}``; values may be
            strings (parsed with the field's type) or already-typed values.

    Raises:
        ConfigError: unknown key, a value of the wrong type, or a value the config rejects.
    """
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ConfigError(f"unknown config key {key!r} for {type(config).__name__}; known: {sorted(names)}")
        if rest:
            if not dataclasses.is_dataclass(getattr(config, head)):
                raise ConfigError(f"{head!r} has no sub-keys (got {key!r})")
            nested.setdefault(head, {})[rest] = value
            continue
        annotation = hints[head]
        if dataclasses.is_dataclass(annotation):
            raise ConfigError(f"{key!r} is a group; set its fields as {key}.FIELD=VALUE")
        if isinstance(value, str):
            value = _parse_value(value, annotation, key)
        elif annotation is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):  # e.g. NaN or Infinity in a config file
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        direct[head] = value
    for head, sub in nested.items():
        direct[head] = apply_overrides(getattr(config, head), sub)
    return dataclasses.replace(config, **direct)


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """Turns ``["a=1", "data.b=x"]`` into a dict, rejecting items without ``=``."""
    result: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not KEY=VALUE")
        result[key.strip()] = value.strip()
    return result


def to_dict(config) -> dict[str, Any]:
    """The config as plain JSON-able data, with its class name."""
    return {"__class__": type(config).__name__, **dataclasses.asdict(config)}


# Values renamed since a config.json may have been written: (class name, key) -> {old: new}.
# "keras": the classifier's augmentation, when it was made of Keras preprocessing layers.
RENAMED_VALUES = {("ClassifierConfig", "augmentation"): {"keras": "mild"}}


def from_dict(cls: type, data: Mapping[str, Any]):
    """Rebuilds a config from :func:`to_dict` output; unknown keys are errors.

    Values renamed since (:data:`RENAMED_VALUES`) are read under their new names, so the
    artifacts of an older run still load.
    """
    data = {k: v for k, v in data.items() if k != "__class__"}
    for (class_name, key), renamed in RENAMED_VALUES.items():
        if class_name == cls.__name__ and isinstance(data.get(key), str):
            data[key] = renamed.get(data[key], data[key])
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                flat[f"{key}.{sub_key}"] = sub_value
        else:
            flat[key] = value
    return apply_overrides(cls(), flat)


def save_json(config, path: str | Path) -> None:
    """The config as ``config.json`` (read back by :func:`load_json`, ``--config``), written atomically."""
    write_json(path, to_dict(config))


def load_json(cls: type, path: str | Path):
    """A config saved by :func:`save_json` (``--config``); unreadable or malformed: ConfigError."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"--config {path}: expected a JSON object of config fields, got {type(data).__name__}")
    return from_dict(cls, data)
