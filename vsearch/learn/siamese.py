"""Stage 2: triplet training of the embedding tower, then the SavedModel export.

The trained classifier's MobileNetV2 base becomes the shared tower of a three-input
(anchor, positive, negative) model whose :class:`~vsearch.learn.losses.TripletLoss` layer adds
the margin loss. :func:`train_siamese` reads as its steps:

1. load the classifier, the validated splits and the product of each photo
   (:func:`vsearch.learn.product_folders.product_labels`: ``products.json`` when the data
   folder was written from product manifests, else each photo its own product);
2. cache the frozen bottom's features of each catalog image, clean and as
   ``views_per_image - 1`` simulated customer photos (:func:`vsearch.augment.customer_view`),
   and of the validation images (:func:`vsearch.learn.features.cache_views`);
3. build the branches: the class branch is the classifier's top, frozen, so its pooled
   vector is computed once per cached view; the instance branch is a trainable copy of the
   top blocks; each gets a projection started from PCA;
4. train with plain ``model.fit`` on triplets over the cached views (:mod:`vsearch.learn.mining`,
   instance and class triplets, negatives re-mined semi-hard from the current embeddings
   every epoch; a product's instance positives are its other photos), measuring both
   objectives on the validation split after every epoch: class retrieval (P@1, MAP@R
   against the catalog), customer-photo matching (R@1 of a simulated customer photo against
   catalog + validation originals) and, with products, product recall (R@1, R@10 of each
   validation photo's product among the catalog photos: the served task on real photos);
5. assemble the exported tower (pixels in, unit vector out), check it computes what was
   trained, and write the artifacts.

Steps 3 and 4 run under ``config.strategy`` (:func:`vsearch.learn.fitting.distribution_strategy`):
the trained branches, the triplet model and its optimizer are built there and ``fit``
splits each global batch of ``batch_size`` triplets across the replicas. The caches of
step 2 and the exported tower are made outside it.

Writes ``{work_dir}/`` (``tower.keras``, ``triplet.keras``, ``config.json``, ``metrics.json``,
``logs/``) and the SavedModel ``{out_dir}/`` (see :mod:`vsearch.learn.export`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from vsearch import config as cfg_mod
from vsearch.artifacts import read_json_object, write_json
from vsearch.augment import CUSTOMER_VIEW_SEED, customer_view
from vsearch.config import SiameseConfig
from vsearch.learn import models
from vsearch.learn.classifier import load_classifier, load_classifier_config
from vsearch.learn.datasets import image_dataset, load_splits
from vsearch.learn.export import export_embedding
from vsearch.learn.features import TOP_PREDICT_BATCH, View, cache_views
from vsearch.learn.fitting import StopOnNonFiniteLoss, Timings, distribution_strategy, fit_verbosity
from vsearch.learn.mining import Triplets, sample_triplets
from vsearch.learn.product_folders import ProductLabels, product_labels

# The validation photos' simulated customer photos: a seed no catalog view uses.
VALIDATION_VIEW_SEED = 99


class Views(NamedTuple):
    """The training tower's cached inputs. Class vectors are None without a class branch."""

    catalog: np.ndarray  # (items, views, h, w, c) feature maps; view 0 clean, the rest customer photos
    catalog_class: np.ndarray | None  # (items, views, d) the class branch's pooled vectors
    val_clean: np.ndarray  # validation feature maps, clean
    val_clean_class: np.ndarray | None
    val_customer: np.ndarray  # validation feature maps, one simulated customer photo each
    val_customer_class: np.ndarray | None


class Branches(NamedTuple):
    """The tower's parts above the frozen bottom (see :func:`vsearch.learn.models.two_branch_head`)."""

    instance_top: keras.Model  # a trainable copy of the top blocks
    instance_projection: keras.layers.Dense  # trainable, started from PCA
    class_projection: keras.layers.Dense | None  # frozen, from PCA; None: no class branch
    class_head: keras.layers.Dense  # the classifier's softmax, frozen


def pca_projection(features: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of a Dense layer projecting onto the top ``dim`` principal components.

    Starting the projection head from PCA keeps the classifier's feature geometry, so
    epoch 0 is already a sensible embedding (a random projection would blur it).
    """
    features = np.asarray(features, np.float64)
    mean = features.mean(axis=0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    components = vt[:dim]
    if components.shape[0] < dim:  # fewer samples than dims: pad with random directions
        rng = np.random.default_rng(0)
        extra = rng.standard_normal((dim - components.shape[0], features.shape[1]))
        components = np.concatenate([components, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
    kernel = components.T.astype(np.float32)
    return kernel, (-mean @ kernel).astype(np.float32)


def quick_metrics(
    catalog: np.ndarray, catalog_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray, customer: np.ndarray
) -> dict:
    """Class retrieval of ``queries`` in ``catalog``, and instance R@1 of ``customer[i]`` -> ``queries[i]``.

    The instance pool is catalog + queries (originals), the target of customer photo i is query i.
    """
    from vsearch.learn.evaluate import class_retrieval, customer_matching

    names = [str(c) for c in range(int(max(catalog_labels.max(), query_labels.max())) + 1)]
    retrieval = class_retrieval(queries, query_labels, catalog, catalog_labels, names)["overall"]
    inst = customer_matching(customer, np.arange(len(queries)), catalog, queries)
    return {
        "precision@1": retrieval["precision@1"],
        "map@r": retrieval["map@r"],
        "customer_recall@1": inst["recall@1"],
        "customer_recall@10": inst["recall@10"],
    }


def product_recall(
    queries: np.ndarray,
    query_products: np.ndarray,
    gallery: np.ndarray,
    gallery_products: np.ndarray,
    ks: tuple[int, ...] = (1, 10),
) -> dict:
    """Share of queries with a photo of their product among the top k of ``gallery`` (cosine).

    Queries whose product (-1: none) has no photo in the gallery are left out.
    """
    known = np.isin(query_products, gallery_products) & (query_products >= 0)
    if not known.any():
        return {f"product_recall@{k}": float("nan") for k in ks}
    scores = queries[known] @ gallery.T
    same = gallery_products[None, :] == query_products[known][:, None]
    best_same = np.where(same, scores, -np.inf).max(axis=1)
    rank = (np.where(same, -np.inf, scores) > best_same[:, None]).sum(axis=1)  # other products ranked above
    return {f"product_recall@{k}": float(np.mean(rank < k)) for k in ks}


def load_stage1(config: SiameseConfig):
    """The trained classifier and its class names; refuses one trained at another image size."""
    classifier, names = load_classifier(config.classifier_dir)
    size = config.data.image_size
    if int(classifier.input.shape[1]) != size:
        raise cfg_mod.ConfigError(
            f"data.image_size={size} but the classifier in {config.classifier_dir} takes "
            f"{classifier.input.shape[1]}x{classifier.input.shape[1]}"
        )
    return classifier, names


def cache_features(
    bottom, train_ds, val_ds, config: SiameseConfig, log: Callable[[str], None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(catalog feature maps (items, views, h, w, c), validation clean, validation customer photos).

    Catalog view 0 is clean, the others are the seeded customer-photo views ``vsearch train``
    may have cached already (read from disk then). The validation customer photos are
    made every time.
    """
    jobs = [(train_ds, View("catalog clean"))]
    jobs += [
        (train_ds, View(f"catalog customer view {v}", customer_view, CUSTOMER_VIEW_SEED + v))
        for v in range(1, config.views_per_image)
    ]
    jobs += [
        (val_ds, View("validation clean")),
        (val_ds, View("validation customer view", customer_view, VALIDATION_VIEW_SEED, cached=False)),
    ]
    *catalog, val_clean, val_customer = cache_views(bottom, config.data, jobs, log)
    return np.stack(catalog, axis=1), val_clean, val_customer


def instance_top(config: SiameseConfig, top, alpha: float):
    """The instance branch's top blocks: a copy of ImageNet's or of the classifier's (``instance_init``)."""
    if config.instance_init == "imagenet":
        _, top = models.split_backbone(
            models.build_backbone(config.data.image_size, "imagenet", alpha), config.fine_tune_from
        )
    return models.clone_top(top, "instance_top")


def pooled(branch) -> keras.Model:
    """Feature maps -> the branch's globally pooled output."""
    features = keras.Input(tuple(branch.input.shape[1:]), name="features")
    return keras.Model(features, keras.layers.GlobalAveragePooling2D()(branch(features)))


def class_branch_vectors(top, catalog: np.ndarray, *feature_maps: np.ndarray) -> list[np.ndarray]:
    """The frozen class branch's pooled vectors of every cached view, computed once.

    Returns the catalog's as (items, views, d), then one array per ``feature_maps``.
    """
    branch = pooled(top)
    predict = lambda x: branch.predict(x, batch_size=TOP_PREDICT_BATCH, verbose=0)  # noqa: E731
    items, views = catalog.shape[:2]
    return [
        predict(catalog.reshape((-1,) + catalog.shape[2:])).reshape(items, views, -1),
        *(predict(x) for x in feature_maps),
    ]


def pca_dense(features: np.ndarray, dim: int, name: str, trainable: bool, weight_decay: float):
    """A Dense projection onto the top ``dim`` principal components of ``features``."""
    dense = keras.layers.Dense(
        dim, name=name, trainable=trainable, kernel_regularizer=keras.regularizers.L2(weight_decay)
    )
    dense.build((None, features.shape[1]))
    dense.set_weights(list(pca_projection(features, dim)))  # PCA start keeps the geometry
    return dense


def build_branches(config: SiameseConfig, classifier, top, instance: keras.Model, views: Views) -> Branches:
    """Projections started from PCA of the clean catalog views, and the frozen class head.

    Freezes the class branch (``top``) and makes ``instance`` trainable, BatchNormalization
    kept in inference mode in both.
    """
    instance_clean = pooled(instance).predict(views.catalog[:, 0], batch_size=TOP_PREDICT_BATCH, verbose=0)
    instance_projection = pca_dense(
        instance_clean, config.embedding_dim, "instance_projection", True, config.weight_decay
    )
    del instance_clean
    class_projection = (
        pca_dense(views.catalog_class[:, 0], config.class_dim, "class_projection", False, config.weight_decay)
        if views.catalog_class is not None  # computed when config.class_dim
        else None
    )
    models.set_fine_tuning(top, False)
    models.set_fine_tuning(instance, True)
    class_head = models.frozen_copy(classifier.get_layer("predictions"), "class_head")
    return Branches(instance, instance_projection, class_projection, class_head)


def embedding_head(branches: Branches, config: SiameseConfig, features, class_pooled):
    """Feature maps (and the class branch's pooled vector) -> the unit embedding."""
    return models.two_branch_head(
        class_pooled,
        branches.instance_top(features),
        branches.class_projection,
        branches.instance_projection,
        config.class_weight,
        branches.class_head,
        config.class_probs_weight,
    )


def training_tower(branches: Branches, config: SiameseConfig, views: Views) -> keras.Model:
    """What the triplets train: (cached feature maps, cached class vectors) -> unit embedding."""
    features = keras.Input(tuple(views.catalog.shape[2:]), name="features")
    class_in = (
        [keras.Input((views.catalog_class.shape[-1],), name="class_pooled")] if views.catalog_class is not None else []
    )
    return keras.Model(
        [features, *class_in],
        embedding_head(branches, config, features, class_in[0] if class_in else None),
        name="tower_top",
    )


def triplet_model(tower: keras.Model, config: SiameseConfig, product_ids: bool = False) -> keras.Model:
    """The three-input model around ``tower``, compiled; with ``product_ids``, the product of
    each role as a last input (see :func:`triplet_inputs`)."""
    model = models.build_triplet_model(
        tower,
        config.margin,
        instance_weight=config.instance_loss_weight,
        temperature=config.temperature,
        product_ids=product_ids,
    )
    model.compile(optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay))
    return model


def tower_inputs(features: np.ndarray, class_vectors: np.ndarray | None) -> list[np.ndarray]:
    """The training tower's inputs: feature maps, and their class vectors with a class branch.

    The float16 feature maps go in as they are: Keras casts each batch to float32
    (exactly), where a float32 copy of every gathered view cost seconds per epoch.
    """
    return [features] + ([class_vectors] if class_vectors is not None else [])


def embed(tower: keras.Model, features: np.ndarray, class_vectors: np.ndarray | None) -> np.ndarray:
    return tower.predict(tower_inputs(features, class_vectors), batch_size=TOP_PREDICT_BATCH, verbose=0)


def embed_catalog(tower: keras.Model, views: Views, all_views: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """(embeddings of every catalog view for mining, or None; embeddings of the clean catalog)."""
    class_views = views.catalog_class
    if not all_views:
        return None, embed(tower, views.catalog[:, 0], class_views[:, 0] if class_views is not None else None)
    items, n_views = views.catalog.shape[:2]
    flat_class = class_views.reshape((items * n_views, -1)) if class_views is not None else None
    emb = embed(tower, views.catalog.reshape((-1,) + views.catalog.shape[2:]), flat_class).reshape(items, n_views, -1)
    return emb, emb[:, 0]


def validation_metrics(
    tower: keras.Model,
    views: Views,
    catalog_emb: np.ndarray,
    y_train: np.ndarray,
    y_val: np.ndarray,
    products: ProductLabels,
) -> dict:
    """:func:`quick_metrics` of the validation photos against the embedded catalog, and with
    listed products, their :func:`product_recall` among the catalog photos (all training
    photos when none is marked a catalog photo)."""
    val_emb = embed(tower, views.val_clean, views.val_clean_class)
    result = quick_metrics(
        catalog_emb, y_train, val_emb, y_val, embed(tower, views.val_customer, views.val_customer_class)
    )
    if products.listed:
        shop = products.catalog if products.catalog.any() else np.ones_like(products.catalog)
        result.update(product_recall(val_emb, products.validation, catalog_emb[shop], products.train[shop]))
    return result


def triplet_inputs(views: Views, triplets: Triplets, products: np.ndarray | None = None) -> list[np.ndarray]:
    """The triplet model's inputs: the tower's inputs for the anchors, positives and negatives,
    then with ``products`` (the product of each catalog item) the (T, 3) products of the three.

    Without products (each photo its own product) the in-batch term counts every other
    triplet's photo as a negative, as it always has.
    """

    def of(index: np.ndarray) -> list[np.ndarray]:
        items, view = index[:, 0], index[:, 1]
        return tower_inputs(
            views.catalog[items, view], views.catalog_class[items, view] if views.catalog_class is not None else None
        )

    roles = (triplets.anchor, triplets.positive, triplets.negative)
    inputs = [x for role in roles for x in of(role)]
    if products is not None:
        inputs.append(np.stack([products[role[:, 0]] for role in roles], axis=1).astype(np.int32))
    return inputs


def train_triplets(
    triplet: keras.Model,
    tower: keras.Model,
    views: Views,
    y_train: np.ndarray,
    y_val: np.ndarray,
    products: ProductLabels,
    config: SiameseConfig,
    rng: np.random.Generator,
    callbacks,
    timings: Timings,
    log: Callable[[str], None],
) -> tuple[dict[str, list[float]], dict]:
    """Measures epoch 0, then trains ``config.epochs`` epochs, each on freshly sampled triplets.

    Mining for epoch e+1 needs every view embedded after epoch e; the clean views among
    them serve the metrics of epoch e, so the catalog is embedded once per epoch.
    Returns the history (loss, active fraction, ``val_*`` metrics from epoch 0 on) and
    epoch 0's metrics.
    """
    mine = config.mining == "semihard"
    history: dict[str, list[float]] = {}
    emb, catalog_emb = embed_catalog(tower, views, mine and config.epochs > 0)
    start = validation_metrics(tower, views, catalog_emb, y_train, y_val, products)
    log(f"  epoch 0: {_fmt(start)}")
    for key, value in start.items():
        history.setdefault(f"val_{key}", []).append(value)
    verbose = fit_verbosity(log, line_per_epoch=False)  # the line per epoch is logged below
    with timings("triplet_training_s"):
        for epoch in range(config.epochs):
            with timings("sampling_s"):
                trip = sample_triplets(
                    y_train,
                    views.catalog.shape[1],
                    config.triplets_per_epoch,
                    rng,
                    config.instance_fraction,
                    emb,
                    config.margin,
                    **product_mining(products, config),
                )
                inputs = triplet_inputs(views, trip, products.train if products.listed else None)
            with timings("fit_s"):
                fitted = triplet.fit(
                    inputs,
                    epochs=epoch + 1,
                    initial_epoch=epoch,
                    batch_size=config.batch_size,
                    shuffle=True,
                    callbacks=callbacks,
                    verbose=verbose,
                ).history
                del inputs
            with timings("embed_catalog_s"):
                emb, catalog_emb = embed_catalog(tower, views, mine and epoch + 1 < config.epochs)
            with timings("validation_s"):
                quick = validation_metrics(tower, views, catalog_emb, y_train, y_val, products)
            for key, values in fitted.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            for key, value in quick.items():
                history.setdefault(f"val_{key}", []).append(value)
            log(
                f"  epoch {epoch + 1}: loss {fitted['loss'][-1]:.4f} active "
                f"{fitted['active_fraction'][-1]:.3f} | {_fmt(quick)}"
            )
    return history, start


def product_mining(products: ProductLabels, config: SiameseConfig) -> dict:
    """:func:`~vsearch.learn.mining.sample_triplets`' product arguments: none without listed
    products (each photo its own product, mined as it always was)."""
    if not products.listed:
        return {}
    return {
        "products": products.train,
        "catalog": products.catalog,
        "catalog_fraction": config.catalog_positive_fraction,
    }


def embedding_tower(bottom, top, branches: Branches, config: SiameseConfig) -> keras.Model:
    """The exported tower: pixels -> frozen bottom -> (class branch, instance branch) -> unit vector.

    Independent copies of the parts the classifier shares keep the saved model free of
    shared layers.
    """
    size = config.data.image_size
    pixels = keras.Input((size, size, 3), name="image")
    features = models.clone_top(bottom, "backbone_bottom")(pixels)
    class_pooled = (
        keras.layers.GlobalAveragePooling2D(name="class_pool")(models.clone_top(top, "class_top")(features))
        if branches.class_projection is not None
        else None
    )
    return keras.Model(pixels, embedding_head(branches, config, features, class_pooled), name="embedding")


def tower_parity(exported: keras.Model, tower: keras.Model, val_ds, views: Views) -> float:
    """Largest difference between the exported tower on the first validation batch's pixels and
    the training tower on their cached features (the float16 cache aside, zero)."""
    first = next(iter(val_ds))[0]
    n = len(first)
    trained = embed(
        tower, views.val_clean[:n], views.val_clean_class[:n] if views.val_clean_class is not None else None
    )
    return float(np.abs(exported.predict(first, verbose=0) - trained).max())


def export_metadata(config: SiameseConfig, names: list[str], final: dict) -> dict:
    """What the SavedModel's ``assets.extra/vsearch.json`` records besides what export adds."""
    classifier_metrics = read_json_object(
        Path(config.classifier_dir) / "metrics.json", "train the classifier again (vsearch train)"
    )
    clf = load_classifier_config(config.classifier_dir)
    return {
        "class_names": names,
        "backbone": f"MobileNetV2 alpha={clf.alpha} weights={clf.backbone_weights} fine_tune_from={clf.fine_tune_from}",
        "branches": {
            "class": config.class_dim,
            "instance": config.embedding_dim,
            "class_probabilities": len(names) if config.class_dim and config.class_probs_weight else 0,
            "class_weight": config.class_weight if config.class_dim else 0.0,
        },
        "training_config": cfg_mod.to_dict(config),
        "metrics": {"siamese_validation": final, "classifier_accuracy": classifier_metrics.get("accuracy")},
    }


def write_siamese(
    config: SiameseConfig, exported: keras.Model, triplet: keras.Model, result: dict, metadata: dict
) -> None:
    """``work_dir``'s artifacts, then the SavedModel in ``out_dir``."""
    work = Path(config.work_dir)
    exported.save(work / "tower.keras")
    triplet.save(work / "triplet.keras")
    cfg_mod.save_json(config, work / "config.json")
    write_json(work / "metrics.json", result)
    export_embedding(exported, config.out_dir, metadata)


def train_siamese(config: SiameseConfig, log: Callable[[str], None] = print) -> dict:
    """Runs stage 2 end to end: cache views, train triplets, export; returns the metrics."""
    keras.utils.set_random_seed(config.data.seed)
    rng = np.random.default_rng(config.data.seed)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    timings, started = Timings(), time.perf_counter()
    size, batch = config.data.image_size, config.data.batch_size
    strategy = distribution_strategy(config.strategy, log)

    with timings("load_s"):
        classifier, names = load_stage1(config)
        train, validation = load_splits(config.data, work / ".clean", log)
        if train.class_names != names:
            raise cfg_mod.ConfigError(
                f"classes {train.class_names} in {config.data.data_dir} differ from the classifier's {names}"
            )
        train_ds = image_dataset(train.root, names, size, batch, cache=True)
        val_ds = image_dataset(validation.root, names, size, batch, cache=True)
        products = product_labels(
            config.data.data_dir, (train.root, train_ds.file_paths), (validation.root, val_ds.file_paths)
        )
    if products.listed:
        log(f"products: {len(products.ids)}, {int(products.catalog.sum())} catalog photos")
    base = models.find_backbone(classifier)
    bottom, top = models.split_backbone(base, config.fine_tune_from)
    models.set_fine_tuning(base, False)
    with timings("feature_cache_s"):
        catalog, val_clean, val_customer = cache_features(bottom, train_ds, val_ds, config, log)
    with timings("class_branch_cache_s"):
        classes = class_branch_vectors(top, catalog, val_clean, val_customer) if config.class_dim else [None] * 3
    views = Views(catalog, classes[0], val_clean, classes[1], val_customer, classes[2])

    with strategy.scope():  # every variable the triplets train or read, the optimizer, fit
        instance = instance_top(config, top, load_classifier_config(config.classifier_dir).alpha)
        branches = build_branches(config, classifier, top, instance, views)
        tower = training_tower(branches, config, views)
        triplet = triplet_model(tower, config, product_ids=products.listed)
        callbacks = [
            keras.callbacks.TensorBoard(str(work / "logs")),
            StopOnNonFiniteLoss("training the triplet model", "lower learning_rate, or check the photos"),
        ]
        history, start = train_triplets(
            triplet, tower, views, train_ds.labels, val_ds.labels, products, config, rng, callbacks, timings, log
        )

    exported = embedding_tower(bottom, top, branches, config)
    final = {k: v[-1] for k, v in history.items() if k.startswith("val_")}
    metadata = export_metadata(config, names, final)
    cache_diff = tower_parity(exported, tower, val_ds, views)
    timings["total_s"] = time.perf_counter() - started
    result = {
        "validation": final,
        "start": start,
        "history": history,
        "timings": dict(timings),
        "cache_max_abs_diff": cache_diff,
        "replicas": triplet.distribute_strategy.num_replicas_in_sync,
        "num_catalog": int(catalog.shape[0]),
        "num_products": len(products.ids),
        "views_per_image": int(catalog.shape[1]),
    }
    write_siamese(config, exported, triplet, result, metadata)
    log(f"siamese: {_fmt(final)}; total {timings['total_s']:.0f}s; exported {config.out_dir}")
    return result


def _fmt(values: dict) -> str:
    return ", ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in values.items())
