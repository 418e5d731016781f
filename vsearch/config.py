"""Configuration as frozen dataclasses with named presets.

Every stage takes one config object, and so does serving: the training stages
(:class:`ClassifierConfig`, :class:`SiameseConfig`, :class:`EvalConfig`), a search
(:class:`SearchConfig`, with :class:`RerankConfig` nested) and the web server
(:class:`ServerConfig`, with its searches' :class:`SearchConfig` nested). Presets are plain
functions returning a config; ``smoke`` shrinks everything so that a whole stage runs in
seconds on a CPU (tests use it). Each value is checked once, by its dataclass.

Command line::

    vsearch train --preset default --set fine_tune_epochs=6 --set data.batch_size=64
    vsearch serve --preset cosine --set search.k=10 --set decode_budget_mb=512
    vsearch serve --config serve.json      # any subset of the fields, as JSON

Overrides are ``key=value`` with dotted keys for nested configs; values are parsed
with the field's declared type and unknown keys are errors. An error names the key, dotted
from the top (``search.category_prior must be a number >= 0, got -1.0``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsearch.artifacts import write_json
from vsearch.errors import ConfigError
from vsearch.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

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
    max_image_pixels: int = DEFAULT_MAX_PIXELS
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
    instance_fraction: float = 0.5  # share of triplets whose positive is the anchor's product
    # With products of several photos (products.json): share of instance positives that are a
    # catalog photo of the product, when it has one besides other photos (vsearch.learn.mining).
    catalog_positive_fraction: float = 0.5
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
        _check(0.0 <= self.catalog_positive_fraction <= 1.0, "catalog_positive_fraction must be in [0, 1]")
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

    ``search`` is how the served road of ``vsearch eval --queries Q --catalog C`` answers
    (:mod:`vsearch.learn.query_eval`): the settings a server would search with, so that the
    road a shop serves is the road it measures (``--preset thorough``, ``--set search.regions=centre``).

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
    # the served road of `vsearch eval --queries` (SearchConfig is defined below, with serving's settings)
    search: SearchConfig = field(default_factory=lambda: SearchConfig())

    def __post_init__(self):
        _check_finite(self)
        _check(self.top_k >= 1, "top_k must be >= 1")
        _check(self.customer_queries >= 0, "customer_queries must be >= 0")
        _check(self.grid_queries >= 1, "grid_queries must be >= 1")
        _check(self.num_threads >= 0, "num_threads must be >= 0 (0: every core)")


# ---------------------------------------------------------------- serving

MB = 1024 * 1024
MAX_K = 100  # the most products one search over HTTP returns (the API's k is 1..MAX_K)
# `category=auto`: rank by cosine + this x the product's category's share of the vote
# (vsearch.catalog.prior; experiments/served.py chose it).
CATEGORY_PRIOR = 0.02
RERANK_DETECTORS = ("orb", "sift")
# The parts of a photo a search embeds beside it (vsearch.catalog.regions.REGION_BOXES holds them).
REGION_SETS = ("none", "centre")


@dataclass(frozen=True)
class RerankConfig:
    """How a search's short list is verified (:mod:`vsearch.catalog.rerank`; the defaults:
    ``experiments/rerank.py`` chose the rule; ``experiments/served.py`` compares 250 keypoints
    with 500; ``experiments/verify_real.py`` chose the side and threshold on real in-store
    photos (grocery): ORB on the model input at 512 px, 20 inliers, the first setting by real
    R@1 that keeps the clothing demo's synthetic R@1 >= 0.95 (0.952) and serves within 2x the
    cosine-only road; against 256 px and 12 inliers it wrongly verifies another product for
    2-4% of real photos instead of 5-8%, and an unrelated one for 5-6% instead of 8-12%).

    Attributes:
        depth: Candidates examined, best first by the embedding.
        min_inliers: Inliers that verify a candidate (unrelated photos keep about 0-8 on
            synthetic photos, up to 20-30 between look-alike real products that share a logo).
        side: Longer side, in pixels, photos are resized to before keypoint detection (the
            224 px model input is enlarged to it).
        detector: ``orb`` (binary descriptors, fast) or ``sift`` (float descriptors, slower).
        features: Keypoints kept per photo.
        ratio: Lowe's ratio test: best match distance below this share of the second best.
        reprojection: RANSAC reprojection threshold, in pixels at ``side``.
    """

    depth: int = 10
    min_inliers: int = 20
    side: int = 512
    detector: str = "orb"
    features: int = 250
    ratio: float = 0.8
    reprojection: float = 5.0

    def __post_init__(self):
        for name in ("depth", "min_inliers", "features"):
            value = getattr(self, name)
            _check(value >= 1, f"reranker.{name} must be >= 1, got {value}")
        _check(self.side >= 32, f"reranker.side must be >= 32 pixels to find keypoints, got {self.side}")
        _check(
            self.detector in RERANK_DETECTORS,
            f"reranker.detector must be one of {', '.join(RERANK_DETECTORS)}, got {self.detector!r}",
        )
        _check(0.0 < self.ratio <= 1.0, f"reranker.ratio must be in (0, 1], got {self.ratio}")
        _check(
            math.isfinite(self.reprojection) and self.reprojection > 0,
            f"reranker.reprojection must be a number of pixels > 0, got {self.reprojection}",
        )


@dataclass(frozen=True)
class SearchConfig:
    """How a photo is answered (:class:`vsearch.catalog.search.Searcher`): ``vsearch search``,
    and the server's searches (:attr:`ServerConfig.search`).

    ``vsearch search PHOTO --preset default --set category_prior=0.05 --set reranker.depth=20``

    Attributes:
        k: Products in an answer that does not say (the API's ``k``, ``vsearch search -k``).
        category: The category mode of a search that does not say: ``auto`` (cosine plus a
            soft prior for the category the nearest products vote for), ``any`` (cosine
            only) or a catalog category (only that one).
        category_prior: The weight of that vote under ``auto`` (0: the cosine's order).
        rerank: Whether a search that does not say verifies its short list (``reranker``).
        reranker: How it is verified (:class:`RerankConfig`).
        regions: The parts of the photo searched beside the whole photo, in the same model
            call (:mod:`vsearch.catalog.regions`): ``none`` or ``centre`` (its centre 80%);
            a product scores its best part. A search in a box searches the box alone.
        max_pixels: Larger photos are refused from their header, before decoding (bombs).
        max_bytes: Larger encoded photos are refused (a server also has ``max_upload_mb``).
    """

    k: int = 5
    category: str = "auto"
    category_prior: float = CATEGORY_PRIOR
    rerank: bool = True
    reranker: RerankConfig = field(default_factory=RerankConfig)
    regions: str = "none"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        _check(self.k >= 1, f"k must be >= 1, got {self.k}")
        _check(self.regions in REGION_SETS, f"regions must be one of {', '.join(REGION_SETS)}, got {self.regions!r}")
        _check(
            bool(self.category) and self.category == self.category.strip(),
            f"category must be auto, any or a category name, got {self.category!r}",
        )
        _check(
            math.isfinite(self.category_prior) and self.category_prior >= 0,
            f"category_prior must be a number >= 0, got {self.category_prior}",
        )
        _check(self.max_pixels >= 1, f"max_pixels must be >= 1, got {self.max_pixels}")
        _check(self.max_bytes >= 1, f"max_bytes must be >= 1, got {self.max_bytes}")


@dataclass(frozen=True)
class ServerConfig:
    """``vsearch serve``: the web server's settings, with its searches' (``search``) nested.

    Where it serves from (the model, the store, the folder of uploaded photos) and the admin
    token are not settings: they are ``vsearch serve``'s arguments.

    ``vsearch serve --preset default --set search.category_prior=0.05 --set decode_budget_mb=512``

    Attributes:
        host / port: The address to listen on (loopback by default: put a reverse proxy in
            front before exposing it).
        title: Shown in the page's header and the API docs.
        max_upload_mb: The largest photo accepted (413 over it; also at most ``search.max_bytes``).
        decode_budget_mb: Memory for decoding photos at once, across requests
            (:mod:`vsearch.web.budget`); a photo larger than all of it is refused (422).
        decode_wait_s: How long a photo waits for the budget before a 503.
        decode_max_waiting: How many photos may wait at once; the next gets a 503 at once.
        reload_interval_s: How often the store takes in other writers' changes (0: never).
        docs: Whether ``/docs`` and ``/redoc`` (the API's pages) are served; ``/openapi.json`` is.
        page_k: Results the upload page asks for at first.
        search: How photos are answered (:class:`SearchConfig`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    title: str = "vsearch"
    max_upload_mb: float = 10.0
    decode_budget_mb: float = 1024.0
    decode_wait_s: float = 5.0
    decode_max_waiting: int = 32
    reload_interval_s: float = 2.0
    docs: bool = True
    page_k: int = 8
    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self):
        _check(bool(self.host.strip()), "host must not be empty")
        _check(1 <= self.port <= 65535, f"port must be 1..65535, got {self.port}")
        _check(bool(self.title.strip()), "title must not be empty")
        for name in ("max_upload_mb", "decode_budget_mb"):
            value = getattr(self, name)
            _check(
                math.isfinite(value) and value * MB >= 1,
                f"{name} must be a positive number of MB (at least one byte), got {value}",
            )
        _check(
            math.isfinite(self.decode_wait_s) and self.decode_wait_s >= 0,
            f"decode_wait_s must be a number of seconds >= 0, got {self.decode_wait_s}",
        )
        _check(self.decode_max_waiting >= 0, f"decode_max_waiting must be >= 0, got {self.decode_max_waiting}")
        _check(
            math.isfinite(self.reload_interval_s) and self.reload_interval_s >= 0,
            f"reload_interval_s must be a number of seconds >= 0 (0: never), got {self.reload_interval_s}",
        )
        _check(1 <= self.page_k <= MAX_K, f"page_k must be 1..{MAX_K}, got {self.page_k}")
        _check(self.search.k <= MAX_K, f"search.k must be 1..{MAX_K} (the API's k), got {self.search.k}")

    @property
    def max_upload_bytes(self) -> int:
        """The largest photo accepted, in bytes: ``max_upload_mb``, and at most ``search.max_bytes``."""
        return min(int(self.max_upload_mb * MB), self.search.max_bytes)

    @property
    def decode_budget_bytes(self) -> int:
        return int(self.decode_budget_mb * MB)


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
    return DataConfig(data_dir=data_dir, image_size=32, batch_size=8, max_image_pixels=DEFAULT_MAX_PIXELS)


# The grocery set's training folders, from its product manifests (make grocery-train):
# vsearch data --catalog data/grocery/catalog.csv --photos data/grocery/train.csv --dest data/grocery/photos
GROCERY_DATA_DIR = "data/grocery/photos"
GROCERY_MODELS = "saved_models/grocery"


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
        # Products with several real photos each (vsearch train --preset grocery).
        "grocery": lambda: ClassifierConfig(
            data=DataConfig(data_dir=GROCERY_DATA_DIR), out_dir=f"{GROCERY_MODELS}/classifier"
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
        # Positives from other photos of the product (vsearch siamese --preset grocery).
        "grocery": lambda: SiameseConfig(
            data=DataConfig(data_dir=GROCERY_DATA_DIR),
            classifier_dir=f"{GROCERY_MODELS}/classifier",
            out_dir=f"{GROCERY_MODELS}/embedding",
            work_dir=f"{GROCERY_MODELS}/siamese",
            epochs=5,  # held-out product R@1 still rose from epoch 3 (0.886) to 5 (0.928)
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
        # --queries: the served road with the photo's centre searched too (SearchConfig's thorough)
        "thorough": lambda: EvalConfig(search=preset(SearchConfig, "thorough")),
    },
    # Serving: `smoke` keeps a test server small and quick (re-ranks 3 candidates on fewer
    # keypoints, takes small photos); `cosine` ranks by the cosine alone (no prior, no re-rank).
    SearchConfig: {
        "default": lambda: SearchConfig(),
        "smoke": lambda: _smoke_search(),
        "cosine": lambda: SearchConfig(category_prior=0.0, rerank=False),
        # Cluttered real photos, at about twice the defaults' latency on a CPU: the centre too
        # (grocery real photos: served R@1 0.753 -> 0.791; experiments/regions_served.py).
        "thorough": lambda: SearchConfig(regions="centre"),
    },
    ServerConfig: {
        "default": lambda: ServerConfig(),
        "smoke": lambda: ServerConfig(
            max_upload_mb=1.0,
            decode_budget_mb=64.0,
            decode_wait_s=1.0,
            decode_max_waiting=4,
            reload_interval_s=0.2,
            search=_smoke_search(),
        ),
        "cosine": lambda: ServerConfig(search=preset(SearchConfig, "cosine")),
        "thorough": lambda: ServerConfig(search=preset(SearchConfig, "thorough")),
    },
}


def _smoke_search() -> SearchConfig:
    return SearchConfig(reranker=RerankConfig(depth=3, features=100), max_pixels=4_000_000, max_bytes=4 * MB)


def preset(cls: type, name: str = "default"):
    """Returns the named preset of a config class (``default``, ``smoke``, ``grocery``)."""
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
        ConfigError: unknown key, a value of the wrong type, or a value the config rejects
            (its message names the key from the top: ``search.k must be >= 1, got 0``).
    """
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    not_finite: list[str] = []
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
            not_finite.append(key)
        direct[head] = value
    for head, sub in nested.items():
        try:
            direct[head] = apply_overrides(getattr(config, head), sub)
        except ConfigError as exc:
            raise _named_from(head, getattr(config, head), exc) from None
    out = dataclasses.replace(config, **direct)  # the config's own checks first: their message is the clearest
    if not_finite:
        raise ConfigError(f"{not_finite[0]}: expected a finite number, got {direct[not_finite[0]]}")
    return out


def _named_from(group: str, config, exc: ConfigError) -> ConfigError:
    """A nested config's error with its key named from the outside: ``k must be ...`` -> ``search.k must be ...``.

    Only a message that opens with one of the nested config's fields is renamed (one that
    names its key already, as ``data.image_size must be ...`` does, is left as it is).
    """
    message = str(exc)
    opening = re.match(r"[A-Za-z_]\w*(?=[ .:])", message)
    if opening and opening.group() in {f.name for f in dataclasses.fields(config)}:
        return ConfigError(f"{group}.{message}")
    return exc


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


def overrides_from(config, base=None) -> list[str]:
    """The ``KEY=VALUE`` overrides (``--set``) that turn ``base`` into ``config``, in field order:
    ``apply_overrides(base, parse_overrides(overrides_from(config, base)))`` is ``config``.

    Args:
        config: A config dataclass instance.
        base: One of the same class (default: the class's defaults).
    """
    was = _flatten(dataclasses.asdict(type(config)() if base is None else base))
    return [
        f"{key}={str(value).lower() if isinstance(value, bool) else value}"
        for key, value in _flatten(dataclasses.asdict(config)).items()
        if was.get(key) != value
    ]


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
    return apply_overrides(cls(), _flatten(data))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"search": {"reranker": {"depth": 5}}}`` -> ``{"search.reranker.depth": 5}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
